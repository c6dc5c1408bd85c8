import Foundation

/// The seed's contrastive loss: `logits = exp(s) I T^T` (B x B), loss = (CE over rows + CE over
/// columns) / 2 with labels 0..<B, as `F.cross_entropy` computes it (log-softmax).
enum Contrastive {
    /// The loss and, beside it, dL/dlogits.
    static func loss(logits: [Float], batch b: Int) -> (loss: Float, dLogits: [Float]) {
        var d = [Float](repeating: 0, count: b * b)
        var total: Double = 0
        // Rows (image -> texts) and columns (text -> images).
        for pass in 0..<2 {
            for i in 0..<b {
                @inline(__always) func at(_ j: Int) -> Int { pass == 0 ? i * b + j : j * b + i }
                var mx = -Float.infinity
                for j in 0..<b { mx = max(mx, logits[at(j)]) }
                var sum: Float = 0
                for j in 0..<b { sum += expf(logits[at(j)] - mx) }
                let lse = mx + logf(sum)
                total += Double(lse - logits[at(i)])
                for j in 0..<b { d[at(j)] += 0.5 * (expf(logits[at(j)] - lse) - (j == i ? 1 : 0)) / Float(b) }
            }
        }
        return (Float(total / Double(b) / 2), d)
    }
}
