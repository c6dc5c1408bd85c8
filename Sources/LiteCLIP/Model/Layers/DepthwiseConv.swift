import Foundation
import CKernels

/// Depthwise k x k convolution (ConvNeXt's `conv_dw`), forward beside backward, on planes.
extension Kernels {

    /// Depthwise k x k convolution, stride 1, zero padding k/2, per (channel, image) plane of
    /// `h x w`: `y[c][b] = conv(x[c][b], weight[c]) + bias[c]`. Planes are `[C][B][H*W]`.
    static func depthwiseConv(_ x: UnsafePointer<Float>, channels: Int, batch: Int, h: Int, w: Int,
                              weight: Tensor, bias: Tensor, into y: UnsafeMutablePointer<Float>) {
        if useOwnGEMM {   // our C loop (the same taps in the same order, fused multiply-adds), as the fused path uses
            rowBlocks(channels: channels, batch: batch, h: h, w: w) { image, r0, r1 in
                lc_dwconv_layernorm(x, Int32(channels), Int32(batch), Int32(h), Int32(w), Int32(weight.shape[2]), weight.data, bias.data,
                                    nil, nil, 0, y, Int32(image), Int32(r0), Int32(r1))
            }
            return
        }
        let k = weight.shape[2], pad = k / 2
        let pw = w + 2 * pad, ph = h + 2 * pad
        parallelFor(channels * batch, grain: 1) { range in
            var padded = [Float](repeating: 0, count: ph * pw + 8)   // + 8: slack for the last 8-wide load
            padded.withUnsafeMutableBufferPointer { pbuf in
                let pp = pbuf.baseAddress!
                for plane in range {
                    let c = plane / batch
                    let src = x + plane * h * w, dst = y + plane * h * w
                    for r in 0..<h { (pp + (r + pad) * pw + pad).update(from: src + r * w, count: w) }
                    let kw = weight.data + c * k * k
                    let b = bias.data[c]
                    // Each output strip of 8 stays in a register across all k*k taps.
                    for r in 0..<h {
                        let out = dst + r * w
                        @inline(__always) func strip(_ j: Int) -> SIMD8<Float> {
                            var acc = SIMD8<Float>(repeating: b)
                            for ky in 0..<k {
                                let inp = UnsafeRawPointer(pp + (r + ky) * pw + j)
                                let wr = kw + ky * k
                                for kx in 0..<k {
                                    acc += wr[kx] * inp.loadUnaligned(fromByteOffset: kx * 4, as: SIMD8<Float>.self)
                                }
                            }
                            return acc
                        }
                        var j = 0
                        while j + 8 <= w {
                            UnsafeMutableRawPointer(out + j).storeBytes(of: strip(j), as: SIMD8<Float>.self)
                            j += 8
                        }
                        if j < w {
                            if w >= 8 {
                                // Last strip overlaps the previous one; overlapping lanes get the same values.
                                UnsafeMutableRawPointer(out + w - 8).storeBytes(of: strip(w - 8), as: SIMD8<Float>.self)
                            } else {
                                // Narrow planes (7x7): lanes past w read padding/slack and are dropped.
                                let acc = strip(0)
                                for i in 0..<w { out[i] = acc[i] }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The inference block's first two layers in one pass (our C kernel, `useOwnGEMM` only):
    /// `y = LayerNorm_channels(depthwiseConv(x))`, per block of image rows so that the conv
    /// output of every channel is still in cache when the norm reads it. `y` must not be `x`.
    static func depthwiseConvLayerNorm(_ x: UnsafePointer<Float>, channels: Int, batch: Int, h: Int, w: Int,
                                       weight: Tensor, bias: Tensor, norm: LayerNorm, eps: Float,
                                       into y: UnsafeMutablePointer<Float>) {
        let k = weight.shape[2]
        if batch < cores {
            // Fewer images than cores (batch 1): the conv by chunks of channels, each core writing
            // whole planes, then the norm by chunks of columns. Split by rows, every core copied
            // the halo rows of every channel, the last group of four rows ran part empty, and the
            // cores wrote into the same cache lines wherever a plane's row block ended mid-line.
            let chunks = 4 * cores, p = batch * h * w
            parallel(batch * chunks) { t in
                let image = t / chunks, u = t % chunks
                lc_dwconv_channels(x, Int32(batch), Int32(h), Int32(w), Int32(k), weight.data, bias.data, y,
                                   Int32(image), Int32(channels * u / chunks), Int32(channels * (u + 1) / chunks))
            }
            let vectors = (p + 15) / 16, parts = min(cores, vectors)
            parallel(parts) { u in
                let q0 = vectors * u / parts * 16, q1 = min(p, vectors * (u + 1) / parts * 16)
                if q1 > q0 {
                    lc_layernorm_channels(y, Int32(channels), p, q0, Int32(q1 - q0), norm.weight.data, norm.bias.data, eps)
                }
            }
            return
        }
        rowBlocks(channels: channels, batch: batch, h: h, w: w) { image, r0, r1 in
            lc_dwconv_layernorm(x, Int32(channels), Int32(batch), Int32(h), Int32(w), Int32(k), weight.data, bias.data,
                                norm.weight.data, norm.bias.data, eps, y, Int32(image), Int32(r0), Int32(r1))
        }
    }

    /// The C depthwise pass's work units, (image, rows r0..<r1) blocks, claimed one at a time by
    /// the cores in interleaved order (0, half, 1, half + 1, ...): two cores at work at once are
    /// on units far apart, not on neighbouring images whose planes share a cache line at every
    /// channel (formats/kernels.md, "Depthwise conv + LayerNorm").
    private static func rowBlocks(channels: Int, batch: Int, h: Int, w: Int, _ body: (Int, Int, Int) -> Void) {
        let rows = min(h, Int(lc_dwconv_layernorm_rows(Int32(channels), Int32(h), Int32(w), Int32(batch), Int32(cores))))
        let blocks = (h + rows - 1) / rows
        let units = batch * blocks, half = (units + 1) / 2
        parallel(units) { t in
            let u = t % 2 == 0 ? t / 2 : half + t / 2
            let image = u / blocks, r0 = (u % blocks) * rows
            body(image, r0, min(h, r0 + rows))
        }
    }

    /// Patchify convolution with kernel = stride = s (ConvNeXt stem and downsampling):
    /// im2col into `[Cin*s*s x B*Ho*Wo]`, then one sgemm with the weight `[Cout x Cin*s*s]`.

    // MARK: - Depthwise convolution

    /// Depthwise conv backward. Input gradient: the correlation of `dy` with the kernel flipped
    /// (the forward kernel run with a flipped weight and no bias), ADDED into `dx`.
    /// `dW[c][ky][kx] += sum_{b,y,x} dy[c][b][y][x] * xpad[c][b][y+ky][x+kx]`, `db[c] += sum dy`.
    static func depthwiseConvBackward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, channels: Int, batch: Int, h: Int, w: Int,
                                      weight: Tensor, dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
                                      accumulateInto dx: UnsafeMutablePointer<Float>?, scratch: UnsafeMutablePointer<Float>) {
        let k = weight.shape[2], pad = k / 2
        if let dx {
            let flipped = Buffer(zeros: weight.shape)
            for c in 0..<channels { for i in 0..<(k * k) { flipped.data[c * k * k + i] = weight.data[c * k * k + (k * k - 1 - i)] } }
            depthwiseConv(dy, channels: channels, batch: batch, h: h, w: w, weight: flipped.view, bias: Buffer(zeros: [channels]).view, into: scratch)
            let n = channels * batch * h * w
            parallelFor(n, grain: 1 << 15) { range in for i in range { dx[i] += scratch[i] } }
        }
        if let dBias { addRowSums(dy, rows: channels, cols: batch * h * w, into: dBias) }
        guard let dWeight else { return }
        if useOwnGEMM && k <= 8 {   // our C loop (AVX-512 / AVX2): a float sum per image, added in double
            parallelFor(channels, grain: 1) { range in
                lc_dwconv_weight_grad(x, dy, Int32(channels), Int32(batch), Int32(h), Int32(w), Int32(k),
                                      Int32(range.lowerBound), Int32(range.upperBound), dWeight)
            }
            return
        }
        let pw = w + 2 * pad, ph = h + 2 * pad
        parallelFor(channels, grain: 1) { range in
            var padded = [Float](repeating: 0, count: ph * pw)
            var acc = [Double](repeating: 0, count: k * k)
            for c in range {
                for i in 0..<(k * k) { acc[i] = 0 }
                for b in 0..<batch {
                    let plane = (c * batch + b) * h * w
                    padded.withUnsafeMutableBufferPointer { pp in
                        for r in 0..<h { (pp.baseAddress! + (r + pad) * pw + pad).update(from: x + plane + r * w, count: w) }
                    }
                    let g = dy + plane
                    padded.withUnsafeBufferPointer { pp in
                        for ky in 0..<k { for kx in 0..<k {
                            var s = SIMD8<Float>(), tail: Float = 0
                            for r in 0..<h {
                                let src = pp.baseAddress! + (r + ky) * pw + kx, gr = g + r * w
                                var j = 0
                                while j + 8 <= w {
                                    s += UnsafeRawPointer(src + j).loadUnaligned(as: SIMD8<Float>.self)
                                        * UnsafeRawPointer(gr + j).loadUnaligned(as: SIMD8<Float>.self)
                                    j += 8
                                }
                                while j < w { tail += src[j] * gr[j]; j += 1 }
                            }
                            acc[ky * k + kx] += Double(s.sum() + tail)
                        } }
                    }
                }
                for i in 0..<(k * k) { dWeight[c * k * k + i] += Float(acc[i]) }
            }
        }
    }

}
