import Foundation

/// Adam and AdamW exactly as PyTorch's single-tensor implementation (torch/optim/adam.py,
/// adamw.py, the CPU default) computes them, so that Swift and PyTorch weights agree step by step:
///
/// ```
/// (Adam, weight_decay != 0)  g = g + wd * p
/// (AdamW)                    p = p * (1 - lr * wd)
/// m = lerp(m, g, 1 - beta1)            # m + (1 - beta1) (g - m)
/// v = v * beta2 + (1 - beta2) g g
/// step_size = lr / (1 - beta1^t)                    (double)
/// denom = sqrt(v) / sqrt(1 - beta2^t) + eps         (float32, the scalars rounded to float)
/// p = p + (-step_size * m) / denom
/// ```
/// Parameters without a gradient (frozen, or BERT's pooler, which the loss never reaches) are
/// left untouched, as PyTorch skips parameters whose `.grad` is None.
public final class AdamOptimizer {
    public enum Kind: String, Sendable, CaseIterable { case adam, adamw }

    public struct Settings: Equatable, Sendable {
        public var kind: Kind = .adam
        public var lr: Double = 2e-4
        public var beta1: Double = 0.9
        public var beta2: Double = 0.999
        public var eps: Double = 1e-8
        /// Adam: L2 added to the gradient (PyTorch default 0); AdamW: decoupled (default 0.01).
        public var weightDecay: Double = 0
        /// Clip the global gradient norm to this before the step (torch.nn.utils.clip_grad_norm_).
        public var clipNorm: Double? = nil
        public init(kind: Kind = .adam) {
            self.kind = kind
            weightDecay = kind == .adamw ? 0.01 : 0
        }
    }

    public let settings: Settings
    /// Steps taken so far (PyTorch's `state['step']`).
    public private(set) var step = 0
    /// First and second moments, per trainable parameter (index = `Gradients` index).
    var m: [Tensor?]
    var v: [Tensor?]

    public init(settings: Settings, gradients: Gradients) {
        self.settings = settings
        m = gradients.buffers.map { $0.map { Tensor(zeros: $0.shape) } }
        v = gradients.buffers.map { $0.map { Tensor(zeros: $0.shape) } }
    }

    /// The global L2 norm of the gradients (before clipping).
    public static func globalNorm(_ g: Gradients) -> Double {
        var total = 0.0
        for b in g.buffers {
            guard let b else { continue }
            var s = 0.0
            for i in 0..<b.count { s += Double(b.data[i]) * Double(b.data[i]) }
            total += s
        }
        return total.squareRoot()
    }

    /// Applies one step to the parameters from their gradients. Returns the gradient norm
    /// before clipping.
    @discardableResult
    public func apply(_ g: Gradients) -> Double {
        let norm = Self.globalNorm(g)
        if let maxNorm = settings.clipNorm {
            // clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1, always applied.
            let coef = Float(min(maxNorm / (norm + 1e-6), 1))
            for b in g.buffers { if let b { for i in 0..<b.count { b.data[i] *= coef } } }
        }
        step += 1
        let s = settings
        let bc1 = 1 - pow(s.beta1, Double(step)), bc2 = 1 - pow(s.beta2, Double(step))
        let stepSize = Float(-(s.lr / bc1)), bc2Sqrt = Float(bc2.squareRoot()), eps = Float(s.eps)
        let w1 = Float(1 - s.beta1), b2 = Float(s.beta2), w2 = Float(1 - s.beta2)
        let l2 = s.kind == .adam ? Float(s.weightDecay) : 0
        let decay: Float? = s.kind == .adamw && s.weightDecay != 0 ? Float(1 - s.lr * s.weightDecay) : nil
        for (i, gb) in g.buffers.enumerated() {
            guard let gb, let mt = m[i], let vt = v[i] else { continue }
            let p = g.tensors[i].data, gr = gb.data, mp = mt.data, vp = vt.data
            Kernels.parallelFor(gb.count, grain: 1 << 14) { range in
                for j in range {
                    var gj = gr[j]
                    if l2 != 0 { gj += l2 * p[j] }
                    if let decay { p[j] *= decay }
                    // torch.lerp with weight < 0.5: self + weight * (end - self).
                    mp[j] = mp[j] + w1 * (gj - mp[j])
                    vp[j] = vp[j] * b2 + w2 * gj * gj
                    let denom = vp[j].squareRoot() / bc2Sqrt + eps
                    p[j] = p[j] + stepSize * mp[j] / denom
                }
            }
        }
        return norm
    }

    /// Moments for a checkpoint, by parameter index.
    func state() -> (step: Int, m: [Tensor?], v: [Tensor?]) { (step, m, v) }

    func restore(step: Int, m: [Tensor?], v: [Tensor?]) {
        self.step = step
        self.m = m
        self.v = v
    }
}
