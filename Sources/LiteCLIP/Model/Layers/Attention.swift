import Foundation

/// Scaled dot-product attention (transformers' eager `BertSelfAttention`), forward beside backward.
extension Kernels {
    // MARK: - Attention

    /// Scaled dot-product attention per (text, head) on row-major `[B*T][H]` q, k, v (heads are
    /// column blocks of D = H / A): `probs[bh] = softmax(q k^T / sqrt(D) + maskBias[text])`
    /// (kept, `(B*A, T, T)`), `ctx = (probs * dropMask) v`. As transformers' eager attention.
    static func attention(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, batch b: Int, t: Int,
                          heads: Int, hidden h: Int, maskBias: [Float], probs: UnsafeMutablePointer<Float>,
                          dropMask: UnsafePointer<Float>?, ctx: UnsafeMutablePointer<Float>) {
        let d = h / heads, scale = 1 / Float(d).squareRoot()
        parallelFor(b * heads, grain: 1) { range in
            var qh = [Float](repeating: 0, count: t * d), kh = qh, vh = qh, ch = qh
            var pd = [Float](repeating: 0, count: dropMask == nil ? 0 : t * t)
            for bh in range {
                let r = bh / heads, hd = bh % heads
                gatherHeads(q, k, v, text: r, head: hd, t: t, d: d, hidden: h, into: &qh, &kh, &vh)
                let sp = probs + bh * t * t
                gemm(qh, kh, sp, m: t, n: t, k: d, transB: true)
                for i in 0..<t {
                    let row = sp + i * t
                    var mx = -Float.infinity
                    for j in 0..<t { row[j] = row[j] * scale + maskBias[r * t + j]; mx = max(mx, row[j]) }
                    var sum: Float = 0
                    for j in 0..<t { row[j] = expf(row[j] - mx); sum += row[j] }
                    let inv = 1 / sum
                    for j in 0..<t { row[j] *= inv }
                }
                if let m = dropMask {
                    for i in 0..<(t * t) { pd[i] = sp[i] * m[bh * t * t + i] }
                    gemm(pd, vh, &ch, m: t, n: d, k: t)
                } else {
                    gemm(sp, vh, &ch, m: t, n: d, k: t)
                }
                for j in 0..<t { for e in 0..<d { ctx[(r * t + j) * h + hd * d + e] = ch[j * d + e] } }
            }
        }
    }


    /// Attention backward per (text, head), from the kept q, k, v and `probs` (before dropout):
    /// `dv = pd^T dctx`, `dpd = dctx v^T` (times the dropout mask), softmax backward
    /// `ds = p (dpd - sum_j dpd p) / sqrt(D)`, `dq = ds k`, `dk = ds^T q` (pd = p * mask).
    static func attentionBackward(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                  probs: UnsafePointer<Float>, dropMask: UnsafePointer<Float>?, dctx: UnsafePointer<Float>,
                                  batch b: Int, t: Int, heads: Int, hidden h: Int,
                                  dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>) {
        let d = h / heads, scale = 1 / Float(d).squareRoot()
        parallelFor(b * heads, grain: 1) { range in
            var qh = [Float](repeating: 0, count: t * d), kh = qh, vh = qh, dch = qh, dqh = qh, dkh = qh, dvh = qh
            var pd = [Float](repeating: 0, count: t * t), dp = pd
            for bh in range {
                let r = bh / heads, hd = bh % heads
                gatherHeads(q, k, v, text: r, head: hd, t: t, d: d, hidden: h, into: &qh, &kh, &vh)
                gatherHead(dctx, text: r, head: hd, t: t, d: d, hidden: h, into: &dch)
                let p = probs + bh * t * t
                let m = dropMask.map { $0 + bh * t * t }
                if let m { for i in 0..<(t * t) { pd[i] = p[i] * m[i] } } else { for i in 0..<(t * t) { pd[i] = p[i] } }
                gemm(pd, dch, &dvh, m: t, n: d, k: t, transA: true)          // dv = pd^T dctx
                gemm(dch, vh, &dp, m: t, n: t, k: d, transB: true)           // dpd = dctx v^T
                if let m { for i in 0..<(t * t) { dp[i] *= m[i] } }
                for i in 0..<t {                                               // softmax backward, * scale
                    var s: Float = 0
                    for j in 0..<t { s += dp[i * t + j] * p[i * t + j] }
                    for j in 0..<t { dp[i * t + j] = p[i * t + j] * (dp[i * t + j] - s) * scale }
                }
                gemm(dp, kh, &dqh, m: t, n: d, k: t)                          // dq = ds k
                gemm(dp, qh, &dkh, m: t, n: d, k: t, transA: true)            // dk = ds^T q
                for j in 0..<t { for e in 0..<d {
                    let dst = (r * t + j) * h + hd * d + e
                    dq[dst] = dqh[j * d + e]; dk[dst] = dkh[j * d + e]; dv[dst] = dvh[j * d + e]
                } }
            }
        }
    }

    /// The (text, head) blocks of q, k and v.
    @inline(__always)
    static func gatherHeads(_ q: UnsafePointer<Float>, _ k: UnsafePointer<Float>, _ v: UnsafePointer<Float>, text r: Int, head hd: Int,
                            t: Int, d: Int, hidden h: Int, into qh: inout [Float], _ kh: inout [Float], _ vh: inout [Float]) {
        gatherHead(q, text: r, head: hd, t: t, d: d, hidden: h, into: &qh)
        gatherHead(k, text: r, head: hd, t: t, d: d, hidden: h, into: &kh)
        gatherHead(v, text: r, head: hd, t: t, d: d, hidden: h, into: &vh)
    }

    /// One (text, head) block `(T, D)` of row-major `[B*T][H]` (heads are column blocks of D).
    @inline(__always)
    static func gatherHead(_ x: UnsafePointer<Float>, text r: Int, head hd: Int, t: Int, d: Int, hidden h: Int, into out: inout [Float]) {
        out.withUnsafeMutableBufferPointer { o in
            for j in 0..<t { (o.baseAddress! + j * d).update(from: x + (r * t + j) * h + hd * d, count: d) }
        }
    }
}
