/// The memory and randomness of one forward (and backward) run: activation buffers come from
/// the pool of the model or training run that owns the workspace; dropout masks come from the
/// run's seeded generator. Inference workspaces have dropout 0, which is evaluation mode exactly.
final class Workspace {
    let pool: BufferPool?
    /// Dropout for BERT's hidden states, the embeddings and the projection heads.
    var hiddenDropout: Float = 0
    /// Dropout on BERT's attention probabilities.
    var attentionDropout: Float = 0
    var rng: SeededRNG

    init(pool: BufferPool?, rng: SeededRNG = SeededRNG(seed: 0)) {
        self.pool = pool
        self.rng = rng
    }

    func zeros(_ shape: [Int]) -> Buffer { Buffer(zeros: shape, pool: pool) }

    /// A buffer the caller writes in full before reading it (not zeroed).
    func uninitialized(_ shape: [Int]) -> Buffer { Buffer(uninitialized: shape, pool: pool) }

    /// `scratch` when given (inference reuses buffers across layers), else a fresh buffer (a
    /// cache will keep it for the backward).
    func reuse(_ scratch: Buffer?, _ shape: [Int]) -> Buffer { scratch ?? zeros(shape) }

    /// A dropout mask of `shape` drawn from the generator; nil when `p` is 0.
    func dropoutMask(_ shape: [Int], p: Float) -> Buffer? {
        guard p > 0 else { return nil }
        let m = zeros(shape)
        _ = Kernels.dropoutMask(m.data, count: m.count, p: p, rng: &rng)
        return m
    }

    /// Applies dropout to `x` in place; returns the mask for the backward (nil when p is 0).
    func dropout(_ x: Buffer, p: Float) -> Buffer? {
        guard let m = dropoutMask(x.shape, p: p) else { return nil }
        Kernels.multiply(x.data, by: m.data, count: x.count)
        return m
    }
}
