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
    var m: [Buffer?]
    var v: [Buffer?]

    public init(settings: Settings, gradients: Gradients) {
        self.settings = settings
        m = gradients.buffers.map { $0.map { Buffer(zeros: $0.shape) } }
        v = gradients.buffers.map { $0.map { Buffer(zeros: $0.shape) } }
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
    /// before clipping when clipping (nil otherwise: it is not computed).
    @discardableResult
    public func apply(_ g: Gradients) -> Double? {
        var norm: Double? = nil
        if let maxNorm = settings.clipNorm {
            let n = Self.globalNorm(g)
            norm = n
            // clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1, always applied.
            let coef = Float(min(maxNorm / (n + 1e-6), 1))
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
            let p = g.parameters[i].data, gr = gb.data, mp = mt.data, vp = vt.data
            // The same arithmetic 8 wide, then the tail.
            @inline(__always) func update(_ pj: inout SIMD8<Float>, _ gj0: SIMD8<Float>, _ mj: inout SIMD8<Float>, _ vj: inout SIMD8<Float>) {
                var gj = gj0
                if l2 != 0 { gj += l2 * pj }
                if let decay { pj *= decay }
                mj = mj + w1 * (gj - mj)
                vj = vj * b2 + w2 * gj * gj
                let denom = vj.squareRoot() / bc2Sqrt + eps
                pj = pj + stepSize * mj / denom
            }
            Kernels.parallelFor(gb.count, grain: 1 << 14) { range in
                var j = range.lowerBound
                while j + 8 <= range.upperBound {
                    var pj = UnsafeRawPointer(p + j).loadUnaligned(as: SIMD8<Float>.self)
                    var mj = UnsafeRawPointer(mp + j).loadUnaligned(as: SIMD8<Float>.self)
                    var vj = UnsafeRawPointer(vp + j).loadUnaligned(as: SIMD8<Float>.self)
                    update(&pj, UnsafeRawPointer(gr + j).loadUnaligned(as: SIMD8<Float>.self), &mj, &vj)
                    UnsafeMutableRawPointer(p + j).storeBytes(of: pj, as: SIMD8<Float>.self)
                    UnsafeMutableRawPointer(mp + j).storeBytes(of: mj, as: SIMD8<Float>.self)
                    UnsafeMutableRawPointer(vp + j).storeBytes(of: vj, as: SIMD8<Float>.self)
                    j += 8
                }
                while j < range.upperBound {
                    var pj = SIMD8<Float>(repeating: p[j]), mj = SIMD8<Float>(repeating: mp[j]), vj = SIMD8<Float>(repeating: vp[j])
                    update(&pj, SIMD8<Float>(repeating: gr[j]), &mj, &vj)
                    p[j] = pj[0]; mp[j] = mj[0]; vp[j] = vj[0]
                    j += 1
                }
            }
        }
        return norm
    }

    /// Moments for a checkpoint, by parameter index.
    func state() -> (step: Int, m: [Buffer?], v: [Buffer?]) { (step, m, v) }

    func restore(step: Int, m: [Buffer?], v: [Buffer?]) {
        self.step = step
        self.m = m
        self.v = v
    }
}
