import Foundation

/// ConvNeXt in training: each module's forward that keeps what its backward needs, beside
/// that backward (same modules, same weights as inference; the inference path's folded
/// `gamma * fc2` is refreshed after each optimiser step by `refreshDerived`).

extension ConvNeXtBlock {
    /// What the block's backward needs: input (for the depthwise weight gradient), the block
    /// norm's `xhat` and `rstd`, the MLP pre-activation, and `z = fc2(...)` (for gamma's gradient).
    final class Cache {
        let x: Tensor, xhat: Tensor, rstd: Tensor, hpre: Tensor, z: Tensor
        init(x: Tensor, xhat: Tensor, rstd: Tensor, hpre: Tensor, z: Tensor) { (self.x, self.xhat, self.rstd, self.hpre, self.z) = (x, xhat, rstd, hpre, z) }
    }

    /// `out = x + gamma * fc2(gelu(fc1(norm(conv_dw(x)))))`; `a` is a `(4C, P)` scratch.
    func forwardTrain(_ x: Tensor, dim: Int, batch: Int, h: Int, w: Int, eps: Float, a: Tensor) -> (Tensor, Cache) {
        let p = batch * h * w, h4 = fc1.weight.shape[0]
        let t = Tensor(zeros: [dim, p]), xhat = Tensor(zeros: [dim, p]), rstd = Tensor(zeros: [p])
        Kernels.depthwiseConv(x.data, channels: dim, batch: batch, h: h, w: w, weight: convDW.weight, bias: convDW.bias, into: t.data)
        Kernels.layerNormChannelsForward(t.data, channels: dim, columns: p, weight: norm.weight, bias: norm.bias, eps: eps,
                                         xhat: xhat.data, rstd: rstd.data, into: t.data)
        let hpre = Tensor(zeros: [h4, p])
        Kernels.pointwise(t.data, columns: p, weight: fc1.weight, bias: fc1.bias, into: hpre.data)
        Kernels.gelu(hpre.data, into: a.data, count: h4 * p)
        let z = t   // reuse: t is not needed any more
        Kernels.pointwise(a.data, columns: p, weight: fc2.weight, bias: fc2.bias, into: z.data)
        let out = Tensor(zeros: [dim, p])
        Kernels.parallelFor(dim, grain: 1) { range in
            for c in range {
                let g = gamma.data[c], xr = x.data + c * p, zr = z.data + c * p, o = out.data + c * p
                for j in 0..<p { o[j] = xr[j] + g * zr[j] }
            }
        }
        return (out, Cache(x: x, xhat: xhat, rstd: rstd, hpre: hpre, z: z))
    }

    /// Returns dL/dx; accumulates every weight gradient. `a` is a `(4C, P)` scratch.
    func backward(_ cache: Cache, _ dOut: Tensor, dim: Int, batch: Int, h: Int, w: Int, grads: Gradients, a: Tensor) -> Tensor {
        let p = batch * h * w, h4 = fc1.weight.shape[0]
        let dx = Tensor(zeros: [dim, p])
        dx.data.update(from: dOut.data, count: dim * p)                      // residual
        let z = cache.z
        if let dg = grads.of(gamma) {
            Kernels.parallelFor(dim, grain: 1) { range in
                for c in range {
                    var s: Float = 0
                    let gr = dOut.data + c * p, zr = z.data + c * p
                    for j in 0..<p { s += gr[j] * zr[j] }
                    dg[c] += s
                }
            }
        }
        let dz = z                                                            // dz = gamma * dOut, over z
        Kernels.parallelFor(dim, grain: 1) { range in
            for c in range { let g = gamma.data[c]; for j in 0..<p { dz.data[c * p + j] = g * dOut.data[c * p + j] } }
        }
        Kernels.gelu(cache.hpre.data, into: a.data, count: h4 * p)
        Kernels.pointwiseBackward(x: a.data, dy: dz.data, columns: p, weight: fc2.weight,
                                  dWeight: grads.of(fc2.weight), dBias: grads.of(fc2.bias), dx: a.data)
        Kernels.geluBackward(cache.hpre.data, a.data, count: h4 * p)          // a = dL/dhpre
        let t = z                                                             // t = norm output, over dz
        Kernels.affineChannels(cache.xhat.data, channels: dim, columns: p, weight: norm.weight, bias: norm.bias, into: t.data)
        Kernels.pointwiseBackward(x: t.data, dy: a.data, columns: p, weight: fc1.weight,
                                  dWeight: grads.of(fc1.weight), dBias: grads.of(fc1.bias), dx: t.data)
        Kernels.layerNormChannelsBackward(xhat: cache.xhat.data, rstd: cache.rstd.data, dy: t.data, channels: dim, columns: p,
                                          weight: norm.weight, dWeight: grads.of(norm.weight), dBias: grads.of(norm.bias), dx: t.data)
        Kernels.depthwiseConvBackward(x: cache.x.data, dy: t.data, channels: dim, batch: batch, h: h, w: w, weight: convDW.weight,
                                      dWeight: grads.of(convDW.weight), dBias: grads.of(convDW.bias),
                                      accumulateInto: dx.data, scratch: cache.xhat.data)
        return dx
    }

    /// Recomputes the inference path's folded `gamma * fc2` after the weights changed.
    func refreshDerived() {
        let dim = gamma.count, hidden = fc2.weight.shape[1]
        for r in 0..<dim {
            let g = gamma.data[r]
            for k in 0..<hidden { scaledFC2Weight.data[r * hidden + k] = g * fc2.weight.data[r * hidden + k] }
            scaledFC2Bias.data[r] = g * fc2.bias.data[r]
        }
    }
}

extension ConvNeXt {
    /// Everything the tower's backward needs, released stage by stage as the backward runs.
    final class Cache {
        var pixels: Tensor                          // planes [Cin][B*S*S]
        var stem: (xhat: Tensor, rstd: Tensor)
        var downsample: [(xhat: Tensor, rstd: Tensor)?] = []
        var blocks: [[ConvNeXtBlock.Cache]] = []
        var sizes: [(h: Int, w: Int)] = []          // per stage, after its downsample
        var head: (xhat: Tensor, rstd: Tensor, hw: Int)
        let batch: Int, size: Int
        init(pixels: Tensor, batch: Int, size: Int) {
            self.pixels = pixels; self.batch = batch; self.size = size
            stem = (Tensor(zeros: [0]), Tensor(zeros: [0])); head = (Tensor(zeros: [0]), Tensor(zeros: [0]), 0)
        }
    }

    /// Pooled features `(B, C3)` and the cache for `backward`.
    func forwardTrain(pixels: UnsafePointer<Float>, batch b: Int, size: Int) -> ([Float], Cache) {
        let c = config, eps = Float(c.layerNormEps)
        var h = size, w = size
        let x0 = Tensor(zeros: [c.inChannels, b * h * w])
        for n in 0..<b { for ch in 0..<c.inChannels {
            (x0.data + (ch * b + n) * h * w).update(from: pixels + (n * c.inChannels + ch) * h * w, count: h * w)
        } }
        let cache = Cache(pixels: x0, batch: b, size: size)
        h /= c.patchSize; w /= c.patchSize
        var x = Tensor(zeros: [c.dims[0], b * h * w])
        Kernels.patchConv(x0.data, inChannels: c.inChannels, batch: b, h: size, w: size, stride: c.patchSize,
                          weight: stem.conv.weight, bias: stem.conv.bias, into: x.data)
        let sx = Tensor(zeros: x.shape), sr = Tensor(zeros: [b * h * w])
        Kernels.layerNormChannelsForward(x.data, channels: c.dims[0], columns: b * h * w, weight: stem.norm.weight, bias: stem.norm.bias,
                                         eps: eps, xhat: sx.data, rstd: sr.data, into: x.data)
        cache.stem = (sx, sr)
        for (i, stage) in stages.enumerated() {
            let dim = c.dims[i]
            if let ds = stage.downsample {
                let cin = c.dims[i - 1], p = b * h * w
                let xhat = Tensor(zeros: [cin, p]), rstd = Tensor(zeros: [p]), t = Tensor(zeros: [cin, p])
                Kernels.layerNormChannelsForward(x.data, channels: cin, columns: p, weight: ds.norm.weight, bias: ds.norm.bias, eps: eps,
                                                 xhat: xhat.data, rstd: rstd.data, into: t.data)
                let y = Tensor(zeros: [dim, b * (h / 2) * (w / 2)])
                Kernels.patchConv(t.data, inChannels: cin, batch: b, h: h, w: w, stride: 2, weight: ds.conv.weight, bias: ds.conv.bias, into: y.data)
                cache.downsample.append((xhat, rstd))
                h /= 2; w /= 2
                x = y
            } else {
                cache.downsample.append(nil)
            }
            cache.sizes.append((h, w))
            let a = Tensor(zeros: [c.mlpRatio * dim, b * h * w])
            var caches: [ConvNeXtBlock.Cache] = []
            for block in stage.blocks {
                let (out, bc) = block.forwardTrain(x, dim: dim, batch: b, h: h, w: w, eps: eps, a: a)
                caches.append(bc)
                x = out
            }
            cache.blocks.append(caches)
        }
        // Head: global average pool, LayerNorm (keeping xhat, rstd).
        let cl = c.outputDim, hw = h * w
        let pooled = Self.globalAveragePool(x, channels: cl, batch: b, hw: hw)
        let hx = Tensor(zeros: [b, cl]), hr = Tensor(zeros: [b])
        var out = [Float](repeating: 0, count: b * cl)
        pooled.withUnsafeBufferPointer { pb in out.withUnsafeMutableBufferPointer { ob in
            Kernels.layerNormRowsForward(pb.baseAddress!, rows: b, n: cl, weight: headNorm.weight, bias: headNorm.bias, eps: eps,
                                         xhat: hx.data, rstd: hr.data, into: ob.baseAddress!)
        } }
        cache.head = (hx, hr, hw)
        return (out, cache)
    }

    /// Accumulates the gradient of every (trainable) weight from dL/dfeatures `(B, C3)`.
    func backward(_ cache: Cache, dFeatures: [Float], grads: Gradients) {
        let c = config, b = cache.batch, cl = c.outputDim
        var dpooled = dFeatures
        dFeatures.withUnsafeBufferPointer { g in dpooled.withUnsafeMutableBufferPointer { d in
            Kernels.layerNormRowsBackward(xhat: cache.head.xhat.data, rstd: cache.head.rstd.data, dy: g.baseAddress!, rows: b, n: cl,
                                          weight: headNorm.weight, dWeight: grads.of(headNorm.weight), dBias: grads.of(headNorm.bias),
                                          dx: d.baseAddress!)
        } }
        // Pool backward: every position of a plane gets dpooled / hw.
        let hw = cache.head.hw
        var dx = Tensor(zeros: [cl, b * hw])
        for ch in 0..<cl { for n in 0..<b {
            let v = dpooled[n * cl + ch] / Float(hw), plane = dx.data + (ch * b + n) * hw
            for j in 0..<hw { plane[j] = v }
        } }
        for i in stride(from: stages.count - 1, through: 0, by: -1) {
            let dim = c.dims[i], (h, w) = cache.sizes[i]
            let a = Tensor(zeros: [c.mlpRatio * dim, b * h * w])
            for j in stride(from: stages[i].blocks.count - 1, through: 0, by: -1) {
                dx = stages[i].blocks[j].backward(cache.blocks[i][j], dx, dim: dim, batch: b, h: h, w: w, grads: grads, a: a)
                cache.blocks[i].removeLast()                    // release the block's activations
            }
            if let ds = stages[i].downsample, let dsc = cache.downsample[i] {
                let cin = c.dims[i - 1], hi = h * 2, wi = w * 2, p = b * hi * wi, kdim = cin * 4
                let t = Tensor(zeros: [cin, p])
                Kernels.affineChannels(dsc.xhat.data, channels: cin, columns: p, weight: ds.norm.weight, bias: ds.norm.bias, into: t.data)
                let col = Tensor(zeros: [kdim, b * h * w])
                Kernels.patchColumns(t.data, inChannels: cin, batch: b, h: hi, w: wi, stride: 2, into: col.data)
                let dcol = Tensor(zeros: [kdim, b * h * w])
                Kernels.pointwiseBackward(x: col.data, dy: dx.data, columns: b * h * w, weight: Tensor(shape: [dim, kdim], sharing: ds.conv.weight),
                                          dWeight: grads.of(ds.conv.weight), dBias: grads.of(ds.conv.bias), dx: dcol.data)
                let dt = t
                Kernels.patchColumnsBackward(dcol.data, inChannels: cin, batch: b, h: hi, w: wi, stride: 2, into: dt.data)
                Kernels.layerNormChannelsBackward(xhat: dsc.xhat.data, rstd: dsc.rstd.data, dy: dt.data, channels: cin, columns: p,
                                                  weight: ds.norm.weight, dWeight: grads.of(ds.norm.weight), dBias: grads.of(ds.norm.bias), dx: dt.data)
                cache.downsample[i] = nil
                dx = dt
            }
        }
        // Stem: LayerNorm2d, then the patch conv's weight gradient (pixels need none).
        let s = cache.size / c.patchSize, p = b * s * s, c0 = c.dims[0]
        Kernels.layerNormChannelsBackward(xhat: cache.stem.xhat.data, rstd: cache.stem.rstd.data, dy: dx.data, channels: c0, columns: p,
                                          weight: stem.norm.weight, dWeight: grads.of(stem.norm.weight), dBias: grads.of(stem.norm.bias), dx: dx.data)
        let kdim = c.inChannels * c.patchSize * c.patchSize
        let col = Tensor(zeros: [kdim, p])
        Kernels.patchColumns(cache.pixels.data, inChannels: c.inChannels, batch: b, h: cache.size, w: cache.size, stride: c.patchSize, into: col.data)
        Kernels.pointwiseBackward(x: col.data, dy: dx.data, columns: p, weight: Tensor(shape: [c0, kdim], sharing: stem.conv.weight),
                                  dWeight: grads.of(stem.conv.weight), dBias: grads.of(stem.conv.bias), dx: nil)
    }

    func refreshDerived() { for s in stages { for b in s.blocks { b.refreshDerived() } } }
}
