/// BERT's embedding lookup (transformers' `BertEmbeddings` before its LayerNorm):
/// `x[r, j] = word[ids[r, j]] + token_type[0] + position[j]`, forward beside backward.
/// Legend: B = texts, L = padded length, T = positions computed (T <= L), H = hidden.
extension Kernels {
    /// Rows `(B*T, H)` for the first T positions of ids `(B, L)`. Ids must be in `0..<V` (the
    /// tokenizer guarantees it; they are clamped defensively), token type 0 as the seed runs.
    static func bertEmbedding(ids: [Int32], batch b: Int, length l: Int, t: Int, word: Tensor, position: Tensor, tokenType: Tensor,
                              into x: UnsafeMutablePointer<Float>) {
        let v = word.shape[0], h = word.shape[1], positions = position.shape[0]
        for r in 0..<b { for j in 0..<t {
            let id = Int(min(max(ids[r * l + j], 0), Int32(v - 1)))
            let pos = min(j, positions - 1)
            let dst = x + (r * t + j) * h, pr = position.data + pos * h
            if let q = word.int8 {
                q.row(id, into: dst)
                for k in 0..<h { dst[k] = dst[k] + tokenType.data[k] + pr[k] }
                continue
            }
            let wr = word.data + id * h
            for k in 0..<h { dst[k] = wr[k] + tokenType.data[k] + pr[k] }
        } }
    }

    /// Scatters `dx (B*T, H)` into the three tables' gradients (nil: frozen).
    static func bertEmbeddingBackward(ids: [Int32], batch b: Int, length l: Int, t: Int, word: Tensor, position: Tensor,
                                      dx: UnsafePointer<Float>, dWord: UnsafeMutablePointer<Float>?,
                                      dPosition: UnsafeMutablePointer<Float>?, dTokenType: UnsafeMutablePointer<Float>?) {
        let v = word.shape[0], h = word.shape[1], positions = position.shape[0]
        for r in 0..<b { for j in 0..<t {
            let g = dx + (r * t + j) * h
            if let dWord {
                let id = Int(min(max(ids[r * l + j], 0), Int32(v - 1)))
                for k in 0..<h { dWord[id * h + k] += g[k] }
            }
            if let dPosition { let pos = min(j, positions - 1); for k in 0..<h { dPosition[pos * h + k] += g[k] } }
            if let dTokenType { for k in 0..<h { dTokenType[k] += g[k] } }
        } }
    }
}
