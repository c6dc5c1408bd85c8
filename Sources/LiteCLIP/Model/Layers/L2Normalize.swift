/// The seed's L2 normalisation of embeddings (`x / x.norm(dim=1, keepdim=True)`), forward
/// beside backward.
extension Kernels {
    /// `e = y / ||y||` per row `(rows, D)`, in place; returns the norms for the backward.
    @discardableResult
    static func l2Normalize(_ y: UnsafeMutablePointer<Float>, rows: Int, dim d: Int) -> [Float] {
        var norms = [Float](repeating: 0, count: rows)
        for r in 0..<rows {
            let row = y + r * d
            var s: Float = 0
            for i in 0..<d { s += row[i] * row[i] }
            norms[r] = s.squareRoot()
            let inv = 1 / norms[r]
            for i in 0..<d { row[i] *= inv }
        }
        return norms
    }

    /// `dy = (de - e (e . de)) / ||y||`, in place on `de`.
    static func l2NormalizeBackward(e: UnsafePointer<Float>, norms: [Float], rows: Int, dim d: Int, de: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let er = e + r * d, g = de + r * d
            var dot: Float = 0
            for i in 0..<d { dot += er[i] * g[i] }
            for i in 0..<d { g[i] = (g[i] - er[i] * dot) / norms[r] }
        }
    }
}
