import Foundation

/// The kernels of training: each forward that keeps what its backward needs, beside that
/// backward. Layouts as in `Kernels`: images `[C][B*H*W]` planes, text row-major `[rows][n]`.
///
/// Gradient convention: `d*` buffers receive dL/d(that tensor). Weight gradients are
/// ACCUMULATED (`+=`) into the parameter's gradient buffer (a parameter may be used more than
/// once; the optimiser zeroes them per step); a nil weight gradient means the parameter is frozen.
/// Input gradients are written (`=`) unless a function says it accumulates.
extension Kernels {
    // MARK: - Matrix helpers

    /// `acc[r] += sum_j x[r][j]` over `rows x cols` (bias gradients of channels-first layers).
    static func addRowSums(_ x: UnsafePointer<Float>, rows: Int, cols: Int, into acc: UnsafeMutablePointer<Float>) {
        parallelFor(rows, grain: 4) { range in
            for r in range {
                let row = x + r * cols
                var s0 = SIMD8<Float>(), j = 0
                while j + 8 <= cols { s0 += UnsafeRawPointer(row + j).loadUnaligned(as: SIMD8<Float>.self); j += 8 }
                var s = s0.sum()
                while j < cols { s += row[j]; j += 1 }
                acc[r] += s
            }
        }
    }

    /// `acc[j] += sum_r x[r][j]` (bias gradients of row-major layers).
    static func addColumnSums(_ x: UnsafePointer<Float>, rows: Int, cols: Int, into acc: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let row = x + r * cols
            for j in 0..<cols { acc[j] += row[j] }
        }
    }

    /// nn.Linear backward on row-major activations `x (rows, in)`, `dy (rows, out)`:
    /// `dW += dy^T x`, `db += colsum(dy)`, `dx = dy W` (or `+=` with `accumulateInput`).
    static func linearBackward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, rows: Int, weight: Tensor,
                               dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
                               dx: UnsafeMutablePointer<Float>?, accumulateInput: Bool = false) {
        let out = weight.shape[0], inp = weight.shape[1]
        if let dWeight { gemm(dy, x, dWeight, m: out, n: inp, k: rows, transA: true, accumulate: true) }
        if let dBias { addColumnSums(dy, rows: rows, cols: out, into: dBias) }
        if let dx { gemm(dy, weight.data, dx, m: rows, n: inp, k: out, accumulate: accumulateInput) }
    }

    /// Channels-first pointwise backward, `y (out, P) = W (out, in) x (in, P) + b`:
    /// `dW += dy x^T`, `db += rowsum(dy)`, `dx = W^T dy`.
    static func pointwiseBackward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, columns p: Int, weight: Tensor,
                                  dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
                                  dx: UnsafeMutablePointer<Float>?) {
        let out = weight.shape[0], inp = weight.shape[1]
        if let dWeight { gemm(dy, x, dWeight, m: out, n: inp, k: p, transB: true, accumulate: true) }
        if let dBias { addRowSums(dy, rows: out, cols: p, into: dBias) }
        if let dx { gemm(weight.data, dy, dx, m: inp, n: p, k: out, transA: true) }
    }

    // MARK: - GELU

    /// `dx = dy * gelu'(x)`, `gelu'(x) = Phi(x) + x phi(x)`, in place on `dy`.
    static func geluBackward(_ x: UnsafePointer<Float>, _ dy: UnsafeMutablePointer<Float>, count: Int) {
        parallelFor(count, grain: 1 << 15) { range in
            var i = range.lowerBound
            while i + 8 <= range.upperBound {
                let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
                let g = UnsafeRawPointer(dy + i).loadUnaligned(as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(dy + i).storeBytes(of: g * geluDerivative(v), as: SIMD8<Float>.self)
                i += 8
            }
            while i < range.upperBound { dy[i] *= geluDerivative(SIMD8<Float>(repeating: x[i]))[0]; i += 1 }
        }
    }

    @inline(__always)
    static func geluDerivative(_ v: SIMD8<Float>) -> SIMD8<Float> {
        let cdf = 0.5 * (1 + erf8(v * 0.70710678118654752))
        return cdf + v * exp8(-0.5 * v * v) * 0.3989422804014327
    }

    /// `exp(x)` 8 wide (Cephes' expf: x = n ln2 + r, |r| <= ln2/2, a degree-5 polynomial for
    /// e^r, scaled by 2^n through the exponent bits); relative error ~2e-7; inputs below -87
    /// give 0.
    @inline(__always)
    static func exp8(_ xIn: SIMD8<Float>) -> SIMD8<Float> {
        var x = xIn
        x.replace(with: 88, where: x .> 88)
        let tiny = x .< -87
        x.replace(with: -87, where: tiny)
        // Round to nearest with the 1.5 * 2^23 trick (plain vector adds; the generic rounding
        // and Float -> Int32 conversions of SIMD8 go lane by lane).
        let magic = SIMD8<Float>(repeating: 12_582_912)
        let t = x * 1.44269504088896341 + magic
        let n = t - magic
        let r = x - n * 0.693359375 + n * 2.12194440e-4
        var p = SIMD8<Float>(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let er = p * r * r + r + 1
        let bits = ((unsafeBitCast(t, to: SIMD8<Int32>.self) &- 0x4B40_0000) &+ 127) &<< 23
        var out = er * unsafeBitCast(bits, to: SIMD8<Float>.self)
        out.replace(with: 0, where: tiny)
        return out
    }

    /// `y = gelu(x)` into a separate buffer.
    static func gelu(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        y.update(from: x, count: count)
        gelu(y, count: count)
    }

    // MARK: - LayerNorm over rows (BERT, projection heads, ConvNeXt head)

    /// Forward keeping `xhat (rows, n)` and `rstd (rows)` when given; `y = xhat * w + b`
    /// (in place allowed).
    static func layerNormRowsForward(_ x: UnsafePointer<Float>, rows: Int, n: Int, weight: Tensor, bias: Tensor, eps: Float,
                                     xhat: UnsafeMutablePointer<Float>?, rstd: UnsafeMutablePointer<Float>?,
                                     into y: UnsafeMutablePointer<Float>) {
        parallelFor(rows, grain: max(1, 4096 / max(n, 1))) { range in
            for r in range {
                let xr = x + r * n, yr = y + r * n
                var mean: Float = 0
                for i in 0..<n { mean += xr[i] }
                mean /= Float(n)
                var v: Float = 0
                for i in 0..<n { let d = xr[i] - mean; v += d * d }
                let rs = 1 / (v / Float(n) + eps).squareRoot()
                rstd?[r] = rs
                if let hr = xhat.map({ $0 + r * n }) {
                    for i in 0..<n { hr[i] = (xr[i] - mean) * rs; yr[i] = hr[i] * weight.data[i] + bias.data[i] }
                } else {
                    for i in 0..<n { yr[i] = (xr[i] - mean) * rs * weight.data[i] + bias.data[i] }
                }
            }
        }
    }

    /// `dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))`, `dxhat = dy w`;
    /// `dw += sum_r dy xhat`, `db += sum_r dy`. `dx` may alias `dy`.
    static func layerNormRowsBackward(xhat: UnsafePointer<Float>, rstd: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                      rows: Int, n: Int, weight: Tensor,
                                      dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
                                      dx: UnsafeMutablePointer<Float>) {
        if dWeight != nil || dBias != nil {
            for r in 0..<rows {
                let g = dy + r * n, h = xhat + r * n
                if let dWeight { for i in 0..<n { dWeight[i] += g[i] * h[i] } }
                if let dBias { for i in 0..<n { dBias[i] += g[i] } }
            }
        }
        parallelFor(rows, grain: max(1, 4096 / max(n, 1))) { range in
            for r in range {
                let g = dy + r * n, h = xhat + r * n, o = dx + r * n
                var a: Float = 0, b: Float = 0
                for i in 0..<n { let d = g[i] * weight.data[i]; a += d; b += d * h[i] }
                a /= Float(n); b /= Float(n)
                let rs = rstd[r]
                for i in 0..<n { o[i] = rs * (g[i] * weight.data[i] - a - h[i] * b) }
            }
        }
    }

    /// `y = xhat * w + b` from a kept `xhat` (recomputes a LayerNorm output for a backward).
    static func affineRows(_ xhat: UnsafePointer<Float>, rows: Int, n: Int, weight: Tensor, bias: Tensor, into y: UnsafeMutablePointer<Float>) {
        parallelFor(rows, grain: max(1, 4096 / max(n, 1))) { range in
            for r in range { for i in 0..<n { y[r * n + i] = xhat[r * n + i] * weight.data[i] + bias.data[i] } }
        }
    }

    // MARK: - LayerNorm over channels (ConvNeXt planes)

    /// Forward keeping `xhat (C, P)` and `rstd (P)` when given (in place allowed).
    static func layerNormChannelsForward(_ x: UnsafePointer<Float>, channels c: Int, columns p: Int, weight: Tensor, bias: Tensor,
                                         eps: Float, xhat: UnsafeMutablePointer<Float>?, rstd: UnsafeMutablePointer<Float>?,
                                         into y: UnsafeMutablePointer<Float>) {
        parallelFor(p, grain: 512) { range in
            let w = range.count, lo = range.lowerBound
            var mean = [Float](repeating: 0, count: w), sq = [Float](repeating: 0, count: w)
            mean.withUnsafeMutableBufferPointer { m in sq.withUnsafeMutableBufferPointer { s in
                for ch in 0..<c { let row = x + ch * p + lo; for j in 0..<w { m[j] += row[j] } }
                let inv = 1 / Float(c)
                for j in 0..<w { m[j] *= inv }
                for ch in 0..<c { let row = x + ch * p + lo; for j in 0..<w { let d = row[j] - m[j]; s[j] += d * d } }
                for j in 0..<w { s[j] = 1 / (s[j] * inv + eps).squareRoot() }
                if let rstd { for j in 0..<w { rstd[lo + j] = s[j] } }
                for ch in 0..<c {
                    let row = x + ch * p + lo, out = y + ch * p + lo
                    let g = weight.data[ch], b = bias.data[ch]
                    if let h = xhat.map({ $0 + ch * p + lo }) {
                        for j in 0..<w { h[j] = (row[j] - m[j]) * s[j]; out[j] = h[j] * g + b }
                    } else {
                        for j in 0..<w { out[j] = (row[j] - m[j]) * s[j] * g + b }
                    }
                }
            } }
        }
    }

    /// Channel LayerNorm backward; `dx` may alias `dy`.
    static func layerNormChannelsBackward(xhat: UnsafePointer<Float>, rstd: UnsafePointer<Float>, dy: UnsafePointer<Float>,
                                          channels c: Int, columns p: Int, weight: Tensor,
                                          dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
                                          dx: UnsafeMutablePointer<Float>) {
        if dWeight != nil || dBias != nil {
            parallelFor(c, grain: 1) { range in
                for ch in range {
                    let g = dy + ch * p, h = xhat + ch * p
                    var sw: Float = 0, sb: Float = 0
                    for j in 0..<p { sw += g[j] * h[j]; sb += g[j] }
                    dWeight?[ch] += sw
                    dBias?[ch] += sb
                }
            }
        }
        parallelFor(p, grain: 512) { range in
            let w = range.count, lo = range.lowerBound
            var a = [Float](repeating: 0, count: w), b = [Float](repeating: 0, count: w)
            for ch in 0..<c {
                let g = dy + ch * p + lo, h = xhat + ch * p + lo, wt = weight.data[ch]
                for j in 0..<w { let d = g[j] * wt; a[j] += d; b[j] += d * h[j] }
            }
            let inv = 1 / Float(c)
            for ch in 0..<c {
                let g = dy + ch * p + lo, h = xhat + ch * p + lo, o = dx + ch * p + lo, wt = weight.data[ch]
                for j in 0..<w { o[j] = rstd[lo + j] * (g[j] * wt - a[j] * inv - h[j] * b[j] * inv) }
            }
        }
    }

    /// `y = xhat * w[c] + b[c]` on planes.
    static func affineChannels(_ xhat: UnsafePointer<Float>, channels c: Int, columns p: Int, weight: Tensor, bias: Tensor,
                               into y: UnsafeMutablePointer<Float>) {
        parallelFor(c, grain: 1) { range in
            for ch in range {
                let g = weight.data[ch], b = bias.data[ch], h = xhat + ch * p, o = y + ch * p
                for j in 0..<p { o[j] = h[j] * g + b }
            }
        }
    }

    // MARK: - Depthwise convolution

    /// Depthwise conv backward. Input gradient: the correlation of `dy` with the kernel flipped
    /// (the forward kernel run with a flipped weight and no bias), ADDED into `dx`.
    /// `dW[c][ky][kx] += sum_{b,y,x} dy[c][b][y][x] * xpad[c][b][y+ky][x+kx]`, `db[c] += sum dy`.
    static func depthwiseConvBackward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, channels: Int, batch: Int, h: Int, w: Int,
                                      weight: Tensor, dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
                                      accumulateInto dx: UnsafeMutablePointer<Float>?, scratch: UnsafeMutablePointer<Float>) {
        let k = weight.shape[2], pad = k / 2
        if let dx {
            let flipped = Tensor(zeros: weight.shape)
            for c in 0..<channels { for i in 0..<(k * k) { flipped.data[c * k * k + i] = weight.data[c * k * k + (k * k - 1 - i)] } }
            depthwiseConv(dy, channels: channels, batch: batch, h: h, w: w, weight: flipped, bias: Tensor(zeros: [channels]), into: scratch)
            let n = channels * batch * h * w
            parallelFor(n, grain: 1 << 15) { range in for i in range { dx[i] += scratch[i] } }
        }
        if let dBias { addRowSums(dy, rows: channels, cols: batch * h * w, into: dBias) }
        guard let dWeight else { return }
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

    // MARK: - Patchify convolution (kernel = stride)

    /// im2col for a kernel = stride = s convolution: `[Cin*s*s][B*Ho*Wo]`.
    static func patchColumns(_ x: UnsafePointer<Float>, inChannels cin: Int, batch: Int, h: Int, w: Int, stride s: Int,
                             into cp: UnsafeMutablePointer<Float>) {
        let ho = h / s, wo = w / s, cols = batch * ho * wo
        parallelFor(cin * s * s, grain: 1) { rows in
            for row in rows {
                let ci = row / (s * s), ky = (row / s) % s, kx = row % s
                let dst = cp + row * cols
                for b in 0..<batch {
                    let plane = x + (ci * batch + b) * h * w
                    for oy in 0..<ho {
                        let src = plane + (oy * s + ky) * w + kx, d = dst + (b * ho + oy) * wo
                        for ox in 0..<wo { d[ox] = src[ox * s] }
                    }
                }
            }
        }
    }

    /// col2im: the inverse scatter (patches do not overlap, so it is a permutation): `dx = ...`.
    static func patchColumnsBackward(_ dcol: UnsafePointer<Float>, inChannels cin: Int, batch: Int, h: Int, w: Int, stride s: Int,
                                     into dx: UnsafeMutablePointer<Float>) {
        let ho = h / s, wo = w / s, cols = batch * ho * wo
        parallelFor(cin * s * s, grain: 1) { rows in
            for row in rows {
                let ci = row / (s * s), ky = (row / s) % s, kx = row % s
                let src = dcol + row * cols
                for b in 0..<batch {
                    let plane = dx + (ci * batch + b) * h * w
                    for oy in 0..<ho {
                        let d = plane + (oy * s + ky) * w + kx, sr = src + (b * ho + oy) * wo
                        for ox in 0..<wo { d[ox * s] = sr[ox] }
                    }
                }
            }
        }
    }

    // MARK: - Dropout

    /// Fills `mask` with 0 (dropped, probability p) or 1/(1-p) (kept), from `rng`; returns false
    /// (and leaves `mask` untouched) when p == 0.
    static func dropoutMask(_ mask: UnsafeMutablePointer<Float>, count: Int, p: Float, rng: inout SeededRNG) -> Bool {
        guard p > 0 else { return false }
        let keep = 1 / (1 - p)
        for i in 0..<count { mask[i] = rng.nextFloat() < p ? 0 : keep }
        return true
    }

    static func multiply(_ x: UnsafeMutablePointer<Float>, by mask: UnsafePointer<Float>, count: Int) {
        parallelFor(count, grain: 1 << 15) { range in for i in range { x[i] *= mask[i] } }
    }
}
