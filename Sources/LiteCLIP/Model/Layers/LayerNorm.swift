import Foundation

/// LayerNorm over the last dimension of row-major activations (`nn.LayerNorm`: BERT, projection
/// heads, ConvNeXt's head) and over the channels of planes (timm's `LayerNorm2d` and the ConvNeXt
/// block norm), each forward (keeping `xhat` and `rstd` when the backward needs them) beside its
/// backward. `y = (x - mean) / sqrt(var + eps) * w + b`, biased variance.

/// `nn.LayerNorm` / timm `LayerNorm2d` parameters: weight and bias `(C)`.
struct LayerNorm {
    let weight: Tensor
    let bias: Tensor

    init(_ s: ParameterScope, _ n: Int) throws {
        weight = try s.tensor("weight", [n])
        bias = try s.tensor("bias", [n])
    }
}

extension Kernels {
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
            // Sums 8 wide (eight partial sums per channel, then added), the tail after.
            parallelFor(c, grain: 1) { range in
                for ch in range {
                    let g = UnsafeRawPointer(dy + ch * p), h = UnsafeRawPointer(xhat + ch * p)
                    var sw8 = SIMD8<Float>(), sb8 = SIMD8<Float>(), j = 0
                    while j + 8 <= p {
                        let gv = g.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self)
                        sw8 += gv * h.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self); sb8 += gv
                        j += 8
                    }
                    var sw = sw8.sum(), sb = sb8.sum()
                    while j < p { sw += dy[ch * p + j] * xhat[ch * p + j]; sb += dy[ch * p + j]; j += 1 }
                    dWeight?[ch] += sw
                    dBias?[ch] += sb
                }
            }
        }
        parallelFor(p, grain: 512) { range in
            let w = range.count, lo = range.lowerBound
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * w) { ab in
                let a = ab.baseAddress!, b = a + w
                a.initialize(repeating: 0, count: 2 * w)
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

}
