/// Poolings, forward beside backward: the seed's masked mean over tokens (text) and the global
/// average over each plane (timm's ConvNeXt head).
extension Kernels {
    // MARK: - Masked mean pooling (the seed's text pooling)

    /// `pooled[r] = sum_j x[r, j] mask[r, j] / clamp(sum_j mask[r, j], 1e-9)` over rows
    /// `(B*T, H)`, mask `(B, L)`. Returns the divisors for the backward.
    static func maskedMeanPool(_ x: UnsafePointer<Float>, mask: [Int32], batch b: Int, length l: Int, t: Int, hidden h: Int,
                               into pooled: UnsafeMutablePointer<Float>) -> [Float] {
        var counts = [Float](repeating: 0, count: b)
        for r in 0..<b {
            var n: Float = 0
            let out = pooled + r * h
            out.update(repeating: 0, count: h)
            for j in 0..<t where mask[r * l + j] != 0 {
                n += 1
                let row = x + (r * t + j) * h
                for e in 0..<h { out[e] += row[e] }
            }
            counts[r] = max(n, 1e-9)
            let inv = 1 / counts[r]
            for e in 0..<h { out[e] *= inv }
        }
        return counts
    }

    /// `dx[r, j] = dpooled[r] / count[r]` where the mask is set, 0 elsewhere.
    static func maskedMeanPoolBackward(_ dPooled: UnsafePointer<Float>, counts: [Float], mask: [Int32], batch b: Int, length l: Int,
                                       t: Int, hidden h: Int, dx: UnsafeMutablePointer<Float>) {
        dx.update(repeating: 0, count: b * t * h)
        for r in 0..<b { for j in 0..<t where mask[r * l + j] != 0 {
            for k in 0..<h { dx[(r * t + j) * h + k] = dPooled[r * h + k] / counts[r] }
        } }
    }

    // MARK: - Global average pooling (ConvNeXt head)

    /// `(B, C)` row-major means of each (channel, image) plane of `[C][B][hw]`.
    static func globalAveragePool(_ x: UnsafePointer<Float>, channels cl: Int, batch b: Int, hw: Int, into pooled: UnsafeMutablePointer<Float>) {
        for ch in 0..<cl { for n in 0..<b {
            let plane = x + (ch * b + n) * hw
            var s: Float = 0
            for j in 0..<hw { s += plane[j] }
            pooled[n * cl + ch] = s / Float(hw)
        } }
    }

    /// Every position of a plane gets `dpooled / hw`.
    static func globalAveragePoolBackward(_ dPooled: UnsafePointer<Float>, channels cl: Int, batch b: Int, hw: Int,
                                          dx: UnsafeMutablePointer<Float>) {
        for ch in 0..<cl { for n in 0..<b {
            let v = dPooled[n * cl + ch] / Float(hw), plane = dx + (ch * b + n) * hw
            for j in 0..<hw { plane[j] = v }
        } }
    }
}
