/// ConvNeXt image tower, as timm builds `convnext_tiny` (timm/models/convnext.py: `ConvNeXt`,
/// `ConvNeXtStage`, `ConvNeXtBlock` with conv_mlp=False, `LayerNorm2d`, `NormMlpClassifierHead`),
/// with `head.fc` = Identity as in the seed. Property names mirror the checkpoint keys. One
/// forward serves inference and training: given a cache it keeps what the backward needs.
///
/// Legend: B = images, C = channels of the stage, H x W = spatial size, P = B*H*W columns.
/// Activations are channels-first planes `[C][B][H*W]`.

/// `blocks.N`: x + gamma * fc2(gelu(fc1(norm(conv_dw(x))))).
struct ConvNeXtBlock {
    let gamma: Tensor            // (C)
    let convDW: Conv2d           // conv_dw: (C, 1, 7, 7)
    let norm: LayerNorm          // norm: (C)
    let fc1: Linear              // mlp.fc1: (4C, C)
    let fc2: Linear              // mlp.fc2: (C, 4C)
    /// Inference runs the fused path (our sgemm with bias + GELU and layer scale + residual in
    /// its tile epilogues); off for training, benchmarks of the plain path, and CPUs without AVX2.
    let fused: Bool

    init(_ s: ParameterScope, dim: Int, config c: ConvNeXtConfig, fused: Bool) throws {
        gamma = try s.tensor("gamma", [dim])
        convDW = try Conv2d(s.child("conv_dw"), out: dim, in: 1, kernel: c.kernelSize)
        norm = try LayerNorm(s.child("norm"), dim)
        fc1 = try Linear(s.child("mlp").child("fc1"), in: dim, out: c.mlpRatio * dim)
        fc2 = try Linear(s.child("mlp").child("fc2"), in: c.mlpRatio * dim, out: dim)
        self.fused = fused
    }

    /// What the backward needs: the input (depthwise weight gradient), the norm's `xhat` and
    /// `rstd`, the MLP pre-activation and activation `a = gelu(hpre)`, and `z = fc2(...)`
    /// (gamma's gradient).
    final class Cache {
        var x: Buffer?, xhat: Buffer?, rstd: Buffer?, hpre: Buffer?, a: Buffer?, z: Buffer?
    }

    /// Per-stage buffers reused by every block: `t (C, P)` (inference only) and `hidden (4C, P)`,
    /// made on first use (the column-blocked MLP keeps its hidden block in a per-thread scratch
    /// and never asks for it: 38.5 MB at stage 0, batch 8).
    final class Scratch {
        let t: Buffer?
        private let makeHidden: () -> Buffer
        lazy var hidden: Buffer = makeHidden()

        init(t: Buffer?, hidden: @escaping @autoclosure () -> Buffer) {
            self.t = t
            makeHidden = hidden
        }
    }

    /// In place on `x` at inference; into a new buffer when a cache records (it keeps `x`).
    func forward(_ x: Buffer, dim: Int, batch: Int, h: Int, w: Int, eps: Float, scratch: Scratch, ws: Workspace,
                 cache: Cache?) -> Buffer {
        let p = batch * h * w, h4 = fc1.weight.shape[0]
        let t = scratch.t ?? ws.uninitialized([dim, p])   // every buffer below is written in full first
        let int8 = fc1.weight.int8 != nil || fc2.weight.int8 != nil
        if cache == nil && fused && Kernels.useOwnGEMM && (!int8 || Kernels.int8Kernel) {
            // Fused inference path: depthwise conv and LayerNorm in one pass per block of rows;
            // then each product's epilogue does the pass that follows it while the tile is in
            // cache: bias + GELU after fc1; after fc2, x += gamma * (fc2 + b2) (t holds partial
            // sums when K is split). FusedPathTests holds it equal to the plain path below.
            let k2 = Double(convDW.weight.shape[2] * convDW.weight.shape[3]), mlp = 2 * Double(p) * Double(dim) * Double(h4)
            Kernels.timed("depthwise conv 7x7 + LayerNorm", flops: 2 * Double(p * dim) * k2) {
                Kernels.depthwiseConvLayerNorm(x.data, channels: dim, batch: batch, h: h, w: w, weight: convDW.weight, bias: convDW.bias,
                                               norm: norm, eps: eps, into: t.data)
            }
            if !int8, let width = Kernels.mlpBlockColumns(hidden: h4, columns: p) {
                Kernels.timed("fc1 + fc2 per column block (both)", flops: 2 * mlp) {
                    Kernels.blockedMLP(t.data, x.data, dim: dim, hidden: h4, columns: p, blockColumns: width,
                                       w1: fc1.weight.data, b1: fc1.bias.data, w2: fc2.weight.data, b2: fc2.bias.data, gamma: gamma.data)
                }
                return x
            }
            let hidden = scratch.hidden
            // f32 weights: the hidden layer in the packed layout, written by fc1 as fc2 reads it
            // (when the scratch has room for its whole panels, as the tower's has).
            let packed = !int8 && hidden.count >= Kernels.PackedColumns.count(rows: h4, columns: p)
            Kernels.timed("fc1 C->4C + bias + GELU", flops: mlp) {
                if packed {
                    Kernels.fusedGEMM(fc1.weight.data, t.data, hidden.data, m: h4, n: p, k: dim, epilogue: .biasGELU(bias: fc1.bias.data),
                                      packedC: true)
                } else {
                    Kernels.fusedProduct(fc1.weight, t.data, hidden.data, n: p, epilogue: .biasGELU(bias: fc1.bias.data))
                }
            }
            Kernels.timed("fc2 4C->C + layer scale + residual", flops: mlp) {
                let e = Kernels.Epilogue.residual(bias: fc2.bias.data, scale: gamma.data, into: x.data)
                if packed {
                    Kernels.fusedGEMM(fc2.weight.data, hidden.data, t.data, m: dim, n: p, k: h4, epilogue: e, packedB: true)
                } else {
                    Kernels.fusedProduct(fc2.weight, hidden.data, t.data, n: p, epilogue: e)
                }
            }
            return x
        }
        Kernels.depthwiseConv(x.data, channels: dim, batch: batch, h: h, w: w, weight: convDW.weight, bias: convDW.bias, into: t.data)
        let xhat = cache.map { _ in ws.uninitialized([dim, p]) }, rstd = cache.map { _ in ws.uninitialized([p]) }
        Kernels.layerNormChannelsForward(t.data, channels: dim, columns: p, weight: norm.weight, bias: norm.bias, eps: eps,
                                         xhat: xhat?.data, rstd: rstd?.data, into: t.data)
        // Training keeps hpre (GELU's derivative) and a = gelu(hpre) (fc2's weight gradient), both
        // written by fc1's epilogue on our sgemm; inference runs GELU in place.
        let hpre = cache == nil ? scratch.hidden : ws.uninitialized([h4, p])
        let a = cache == nil ? scratch.hidden : ws.uninitialized([h4, p])
        if cache != nil && Kernels.useOwnGEMM && fc1.weight.int8 == nil {
            Kernels.fusedGEMM(fc1.weight.data, t.data, hpre.data, m: h4, n: p, k: dim,
                              epilogue: .biasGELUKeep(bias: fc1.bias.data, into: a.data))
        } else {
            Kernels.pointwise(t.data, columns: p, weight: fc1.weight, bias: fc1.bias, into: hpre.data)
            Kernels.gelu(hpre.data, into: a.data, count: h4 * p)
        }
        let z = t                                                                           // t is not needed any more
        Kernels.pointwise(a.data, columns: p, weight: fc2.weight, bias: fc2.bias, into: z.data)
        let out = cache == nil ? x : ws.uninitialized([dim, p])
        Kernels.parallelFor(dim, grain: 1) { range in
            for c in range {
                let g = gamma.data[c], xr = x.data + c * p, zr = z.data + c * p, o = out.data + c * p
                for j in 0..<p { o[j] = xr[j] + g * zr[j] }
            }
        }
        if let cache { (cache.x, cache.xhat, cache.rstd, cache.hpre, cache.a, cache.z) = (x, xhat, rstd, hpre, a, z) }
        return out
    }

    /// Returns dL/dx; accumulates every weight gradient. The cached activation `a` becomes dL/dhpre.
    func backward(_ cache: Cache, _ dOut: Buffer, dim: Int, batch: Int, h: Int, w: Int, grads: Gradients,
                  ws: Workspace) -> Buffer {
        guard let x = cache.x, let xhat = cache.xhat, let rstd = cache.rstd, let hpre = cache.hpre, let a = cache.a,
              let z = cache.z else {
            preconditionFailure("backward without a forward cache")
        }
        let p = batch * h * w, h4 = fc1.weight.shape[0]
        let dx = ws.uninitialized([dim, p])
        dx.data.update(from: dOut.data, count: dim * p)                      // residual
        if let dg = grads.of(gamma) {
            Kernels.parallelFor(dim, grain: 1) { range in
                for c in range {
                    let gr = dOut.data + c * p, zr = z.data + c * p
                    var s8 = SIMD8<Float>(), j = 0   // eight partial sums, then added; the tail after
                    while j + 8 <= p {
                        s8 += UnsafeRawPointer(gr + j).loadUnaligned(as: SIMD8<Float>.self) * UnsafeRawPointer(zr + j).loadUnaligned(as: SIMD8<Float>.self)
                        j += 8
                    }
                    var s = s8.sum()
                    while j < p { s += gr[j] * zr[j]; j += 1 }
                    dg[c] += s
                }
            }
        }
        let dz = z                                                            // dz = gamma * dOut, over z
        Kernels.parallelFor(dim, grain: 1) { range in
            for c in range { let g = gamma.data[c]; for j in 0..<p { dz.data[c * p + j] = g * dOut.data[c * p + j] } }
        }
        // a = dL/dhpre: fc2's input gradient times gelu'(hpre), in the product's epilogue where it can.
        let fusedGrad = Kernels.geluGradEpilogue
        Kernels.pointwiseBackward(x: a.data, dy: dz.data, columns: p, weight: fc2.weight,
                                  dWeight: grads.of(fc2.weight), dBias: grads.of(fc2.bias), dx: a.data,
                                  dxTimesGELUDerivativeOf: fusedGrad ? UnsafePointer(hpre.data) : nil)
        if !fusedGrad { Kernels.geluBackward(hpre.data, a.data, count: h4 * p) }
        let t = z                                                             // t = norm output, over dz
        Kernels.affineChannels(xhat.data, channels: dim, columns: p, weight: norm.weight, bias: norm.bias, into: t.data)
        Kernels.pointwiseBackward(x: t.data, dy: a.data, columns: p, weight: fc1.weight,
                                  dWeight: grads.of(fc1.weight), dBias: grads.of(fc1.bias), dx: t.data)
        Kernels.layerNormChannelsBackward(xhat: xhat.data, rstd: rstd.data, dy: t.data, channels: dim, columns: p,
                                          weight: norm.weight, dWeight: grads.of(norm.weight), dBias: grads.of(norm.bias), dx: t.data)
        Kernels.depthwiseConvBackward(x: x.data, dy: t.data, channels: dim, batch: batch, h: h, w: w, weight: convDW.weight,
                                      dWeight: grads.of(convDW.weight), dBias: grads.of(convDW.bias),
                                      accumulateInto: dx.data, scratch: xhat.data)
        return dx
    }
}

/// `stages.N`: optional downsample (LayerNorm2d + conv 2x2 stride 2), then blocks.
struct ConvNeXtStage {
    let downsample: (norm: LayerNorm, conv: Conv2d)?   // downsample.0, downsample.1 (C_i, C_i-1, 2, 2)
    let blocks: [ConvNeXtBlock]
}

public struct ConvNeXt: Sendable {
    public let config: ConvNeXtConfig
    let stem: (conv: Conv2d, norm: LayerNorm)         // stem.0 (C0, 3, 4, 4), stem.1
    let stages: [ConvNeXtStage]
    let headNorm: LayerNorm                           // head.norm (C3)

    init(_ s: ParameterScope, _ c: ConvNeXtConfig, fused: Bool) throws {
        config = c
        let st = s.child("stem")
        stem = (try Conv2d(st.child("0"), out: c.dims[0], in: c.inChannels, kernel: c.patchSize), try LayerNorm(st.child("1"), c.dims[0]))
        var stages: [ConvNeXtStage] = []
        for (i, (dim, depth)) in zip(c.dims, c.depths).enumerated() {
            let ss = s.child("stages").child("\(i)")
            var ds: (LayerNorm, Conv2d)? = nil
            if i > 0 {
                let d = ss.child("downsample")
                ds = (try LayerNorm(d.child("0"), c.dims[i - 1]), try Conv2d(d.child("1"), out: dim, in: c.dims[i - 1], kernel: 2))
            }
            let blocks = try (0..<depth).map { try ConvNeXtBlock(ss.child("blocks").child("\($0)"), dim: dim, config: c, fused: fused) }
            stages.append(ConvNeXtStage(downsample: ds, blocks: blocks))
        }
        self.stages = stages
        headNorm = try LayerNorm(s.child("head").child("norm"), c.outputDim)
    }

    /// Everything the tower's backward needs, released stage by stage as the backward runs.
    final class Cache {
        var pixels: Buffer?                         // planes [Cin][B*S*S]
        var stem: (xhat: Buffer, rstd: Buffer)?
        var downsample: [(xhat: Buffer, rstd: Buffer)?] = []
        var blocks: [[ConvNeXtBlock.Cache]] = []
        var sizes: [(h: Int, w: Int)] = []          // per stage, after its downsample
        var head: (xhat: Buffer, rstd: Buffer, hw: Int)?
        var batch = 0, size = 0
    }

    /// Pooled, normalised features `(B, C3)` for pixel values `(B, 3, S, S)` (NCHW, as PyTorch).
    func forward(pixels: UnsafePointer<Float>, batch b: Int, size: Int, ws: Workspace, cache: Cache?) -> Buffer {
        let c = config, eps = Float(c.layerNormEps)
        var h = size, w = size
        // NCHW -> planes [Cin][B][H*W]
        let x0 = ws.uninitialized([c.inChannels, b * h * w])   // every plane copied in below
        for n in 0..<b { for ch in 0..<c.inChannels {
            (x0.data + (ch * b + n) * h * w).update(from: pixels + (n * c.inChannels + ch) * h * w, count: h * w)
        } }
        cache?.pixels = x0
        if let cache { (cache.batch, cache.size) = (b, size) }
        // Stem: conv 4x4/4, LayerNorm2d.
        h /= c.patchSize; w /= c.patchSize
        var x = ws.uninitialized([c.dims[0], b * h * w])   // the patch conv's product writes it all
        let stemFlops = 2.0 * Double(b * h * w) * Double(c.dims[0] * c.inChannels * c.patchSize * c.patchSize)
        let stemKept = Kernels.timed("stem: patch conv 4x4 + LayerNorm", flops: stemFlops) {
            Kernels.patchConv(x0.data, inChannels: c.inChannels, batch: b, h: size, w: size, stride: c.patchSize,
                              weight: stem.conv.weight, bias: stem.conv.bias, into: x.data)
            return layerNormChannels(x, channels: c.dims[0], norm: stem.norm, eps: eps, ws: ws, keep: cache != nil)
        }
        cache?.stem = stemKept   // (evaluated first: an optional-chained assignment skips its right side when nil)
        for (i, stage) in stages.enumerated() {
            let dim = c.dims[i]
            if let ds = stage.downsample {
                let cin = c.dims[i - 1]
                let y = ws.uninitialized([dim, b * (h / 2) * (w / 2)])   // the patch conv's product writes it all
                let dsFlops = 2.0 * Double(b * (h / 2) * (w / 2)) * Double(dim * cin * 4)
                let kept = Kernels.timed("downsample: LayerNorm + patch conv 2x2", flops: dsFlops) { () -> (xhat: Buffer, rstd: Buffer)? in
                    // Inference: the norm written straight into the patch conv's columns (one pass).
                    if cache == nil && Kernels.normPatchConv2(x.data, inChannels: cin, batch: b, h: h, w: w, normWeight: ds.norm.weight,
                                                              normBias: ds.norm.bias, eps: eps, weight: ds.conv.weight,
                                                              bias: ds.conv.bias, into: y.data) {
                        return nil
                    }
                    let kept = layerNormChannels(x, channels: cin, norm: ds.norm, eps: eps, ws: ws, keep: cache != nil)
                    Kernels.patchConv(x.data, inChannels: cin, batch: b, h: h, w: w, stride: 2, weight: ds.conv.weight, bias: ds.conv.bias, into: y.data)
                    return kept
                }
                cache?.downsample.append(kept)
                h /= 2; w /= 2
                x = y
            } else {
                cache?.downsample.append(nil)
            }
            cache?.sizes.append((h, w))
            let p = b * h * w
            // Inference may keep the hidden layer packed: whole panels of columns (Kernels.PackedColumns).
            let paddedColumns = Kernels.useOwnGEMM ? Kernels.PackedColumns.count(rows: 1, columns: p) : p
            // Both are written in full before they are read (the depthwise pass writes t, fc1 or the
            // GELU writes hidden): not zeroed.
            let scratch = ConvNeXtBlock.Scratch(t: cache == nil ? ws.uninitialized([dim, p]) : nil,
                                                hidden: ws.uninitialized([c.mlpRatio * dim, cache == nil ? paddedColumns : p]))
            var caches: [ConvNeXtBlock.Cache] = []
            for block in stage.blocks {
                let bc = cache.map { _ in ConvNeXtBlock.Cache() }
                x = block.forward(x, dim: dim, batch: b, h: h, w: w, eps: eps, scratch: scratch, ws: ws, cache: bc)
                if let bc { caches.append(bc) }
            }
            cache?.blocks.append(caches)
        }
        // Head: global average pool, then LayerNorm over channels (fc is Identity).
        let cl = c.outputDim, hw = h * w
        let pooled = ws.zeros([b, cl]), out = ws.zeros([b, cl])
        Kernels.globalAveragePool(x.data, channels: cl, batch: b, hw: hw, into: pooled.data)
        let hx = cache.map { _ in ws.zeros([b, cl]) }, hr = cache.map { _ in ws.zeros([b]) }
        Kernels.layerNormRowsForward(pooled.data, rows: b, n: cl, weight: headNorm.weight, bias: headNorm.bias, eps: eps,
                                     xhat: hx?.data, rstd: hr?.data, into: out.data)
        if let hx, let hr { cache?.head = (hx, hr, hw) }
        return out
    }

    /// LayerNorm2d in place on planes, keeping `xhat` and `rstd` when asked.
    private func layerNormChannels(_ x: Buffer, channels: Int, norm: LayerNorm, eps: Float, ws: Workspace,
                                   keep: Bool) -> (xhat: Buffer, rstd: Buffer)? {
        let p = x.count / channels
        let kept = keep ? (ws.zeros([channels, p]), ws.zeros([p])) : nil
        Kernels.layerNormChannelsForward(x.data, channels: channels, columns: p, weight: norm.weight, bias: norm.bias, eps: eps,
                                         xhat: kept?.0.data, rstd: kept?.1.data, into: x.data)
        return kept
    }

    /// Accumulates the gradient of every (trainable) weight from dL/dfeatures `(B, C3)`.
    func backward(_ cache: Cache, dFeatures: Buffer, grads: Gradients, ws: Workspace) {
        guard let head = cache.head, let stemCache = cache.stem, let pixels = cache.pixels else {
            preconditionFailure("backward without a forward cache")
        }
        let c = config, b = cache.batch, cl = c.outputDim
        let dpooled = ws.zeros([b, cl])
        Kernels.layerNormRowsBackward(xhat: head.xhat.data, rstd: head.rstd.data, dy: dFeatures.data, rows: b, n: cl,
                                      weight: headNorm.weight, dWeight: grads.of(headNorm.weight), dBias: grads.of(headNorm.bias),
                                      dx: dpooled.data)
        var dx = ws.zeros([cl, b * head.hw])
        Kernels.globalAveragePoolBackward(dpooled.data, channels: cl, batch: b, hw: head.hw, dx: dx.data)
        for i in stride(from: stages.count - 1, through: 0, by: -1) {
            let dim = c.dims[i], (h, w) = cache.sizes[i]
            for j in stride(from: stages[i].blocks.count - 1, through: 0, by: -1) {
                dx = stages[i].blocks[j].backward(cache.blocks[i][j], dx, dim: dim, batch: b, h: h, w: w, grads: grads, ws: ws)
                cache.blocks[i].removeLast()                    // release the block's activations
            }
            if let ds = stages[i].downsample, let dsc = cache.downsample[i] {
                let cin = c.dims[i - 1], hi = h * 2, wi = w * 2, p = b * hi * wi
                let t = ws.uninitialized([cin, p])
                Kernels.affineChannels(dsc.xhat.data, channels: cin, columns: p, weight: ds.norm.weight, bias: ds.norm.bias, into: t.data)
                Kernels.patchConvBackward(x: t.data, dy: dx.data, inChannels: cin, batch: b, h: hi, w: wi, stride: 2, weight: ds.conv.weight,
                                          dWeight: grads.of(ds.conv.weight), dBias: grads.of(ds.conv.bias), dx: t.data, ws: ws)
                Kernels.layerNormChannelsBackward(xhat: dsc.xhat.data, rstd: dsc.rstd.data, dy: t.data, channels: cin, columns: p,
                                                  weight: ds.norm.weight, dWeight: grads.of(ds.norm.weight), dBias: grads.of(ds.norm.bias), dx: t.data)
                cache.downsample[i] = nil
                dx = t
            }
        }
        // Stem: LayerNorm2d, then the patch conv's weight gradient (pixels need none).
        let s = cache.size / c.patchSize, p = b * s * s, c0 = c.dims[0]
        Kernels.layerNormChannelsBackward(xhat: stemCache.xhat.data, rstd: stemCache.rstd.data, dy: dx.data, channels: c0, columns: p,
                                          weight: stem.norm.weight, dWeight: grads.of(stem.norm.weight), dBias: grads.of(stem.norm.bias), dx: dx.data)
        Kernels.patchConvBackward(x: pixels.data, dy: dx.data, inChannels: c.inChannels, batch: b, h: cache.size, w: cache.size,
                                  stride: c.patchSize, weight: stem.conv.weight,
                                  dWeight: grads.of(stem.conv.weight), dBias: grads.of(stem.conv.bias), dx: nil, ws: ws)
    }
}
