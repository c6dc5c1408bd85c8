import Foundation

/// Dropout: masks of 0 (dropped, probability p) and 1/(1-p) (kept) from the trainer's seeded
/// generator; the backward multiplies the gradient by the same mask.
extension Kernels {


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
