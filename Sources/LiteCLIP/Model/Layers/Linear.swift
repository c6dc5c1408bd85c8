import CKernels
import Foundation

/// `nn.Linear`: `y = x W^T + b`, weight `(out, in)`, bias `(out)`, on row-major activations
/// (BERT, projection heads) and on channels-first planes (ConvNeXt's pointwise MLP, where it is
/// `Y = W X + b` per column), each forward beside its backward.

/// `nn.Linear`'s parameters.
struct Linear {
    let weight: Tensor   // (out, in)
    let bias: Tensor     // (out)

    init(_ s: ParameterScope, in i: Int, out o: Int) throws {
        weight = try s.quantizable("weight", [o, i])      // PyTorch's nn.Linear layout
        bias = try s.tensor("bias", [o])
    }
}

extension Kernels {

    /// `Y[rows x out] = X[rows x in] * W^T + b` (nn.Linear on row-major activations).
    static func linear(_ x: UnsafePointer<Float>, rows: Int, weight: Tensor, bias: Tensor?, into y: UnsafeMutablePointer<Float>) {
        if let q = weight.int8 { int8Linear(x, rows: rows, weight: q, bias: bias, into: y); return }
        let out = weight.shape[0], inp = weight.shape[1]
        if let bias {
            for r in 0..<rows { (y + r * out).update(from: bias.data, count: out) }
        }
        gemm(x, weight.data, y, m: rows, n: out, k: inp, transB: true, accumulate: bias != nil)
    }

    /// Channels-first pointwise layer: `Y[out x P] = W[out x in] * X[in x P] + b` (bias per row).
    static func pointwise(_ x: UnsafePointer<Float>, columns p: Int, weight: Tensor, bias: Tensor, into y: UnsafeMutablePointer<Float>) {
        if let q = weight.int8 { int8Product(q, x, rsx: p, csx: 1, n: p, into: y, epilogue: .store(bias: bias.data)); return }
        let out = weight.shape[0], inp = weight.shape[1]
        // The bias added to each tile as it is stored, instead of a pass that fills y with it first.
        if useOwnGEMM { fusedGEMM(weight.data, x, y, m: out, n: p, k: inp, epilogue: .store(bias: bias.data)); return }
        parallelFor(out, grain: 8) { rows in
            for r in rows { (y + r * p).update(repeating: bias.data[r], count: p) }
        }
        gemm(weight.data, x, y, m: out, n: p, k: inp, accumulate: true)
    }


    /// nn.Linear backward on row-major activations `x (rows, in)`, `dy (rows, out)`:
    /// `dW += dy^T x`, `db += colsum(dy)`, `dx = dy W` (or `+=` with `accumulateInput`).
    static func linearBackward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, rows: Int, weight: Tensor,
                               dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
                               dx: UnsafeMutablePointer<Float>?, accumulateInput: Bool = false) {
        let out = weight.shape[0], inp = weight.shape[1]
        if let dWeight { gemm(dy, x, dWeight, m: out, n: inp, k: rows, transA: true, accumulate: true) }
        if let dBias { addColumnSums(dy, rows: rows, cols: out, into: dBias) }
        if let dx { gemm(dy, weight.data, dx, m: rows, n: inp, k: out, accumulate: accumulateInput) }
    }

    /// Channels-first pointwise backward, `y (out, P) = W (out, in) x (in, P) + b`:
    /// `dW += dy x^T`, `db += rowsum(dy)`, `dx = W^T dy`.
    /// `dxTimesGELUDerivativeOf`: dx is multiplied by gelu'(H) in the product's epilogue (H the
    /// pre-activation whose GELU was x; callers check `geluGradEpilogue`), which saves the pass.
    static func pointwiseBackward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, columns p: Int, weight: Tensor,
                                  dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
                                  dx: UnsafeMutablePointer<Float>?, dxTimesGELUDerivativeOf h: UnsafePointer<Float>? = nil) {
        let out = weight.shape[0], inp = weight.shape[1]
        if let dWeight {
            // The product packs its B: x^T (inp x P) read this way. With fewer outputs than inputs
            // and many columns (fc2, the downsampling convs; not stage 3's few columns), dW^T =
            // x dy^T packs dy^T (out x P) instead, out / inp of it, and dW takes the transpose.
            if useOwnGEMM && out < inp && p >= 4 * out {
                WeightTranspose.gradient.scratch(count: inp * out) { t in
                    gemm(x, dy, t, m: inp, n: out, k: p, transB: true)
                    addTransposed(t, rows: inp, columns: out, into: dWeight)
                }
            } else {
                gemm(dy, x, dWeight, m: out, n: inp, k: p, transB: true, accumulate: true)
            }
        }
        if let dBias { addRowSums(dy, rows: out, cols: p, into: dBias) }
        guard let dx else { return }
        // dx = W^T dy. Our sgemm reads A in place: read transposed, each step down K is a new
        // cache line of W (a quarter of it used), so a large W is transposed first.
        if useOwnGEMM && inp * out >= 1 << 16 && p >= 256 {
            WeightTranspose.shared.with(weight.data, rows: out, columns: inp) { wt in
                gemm(wt, dy, dx, m: inp, n: p, k: out, timesGELUDerivativeOf: h)
            }
        } else {
            gemm(weight.data, dy, dx, m: inp, n: p, k: out, transA: true, timesGELUDerivativeOf: h)
        }
    }

    /// `acc[c][r] += t[r][c]` for `t` of `rows x columns` (`acc` is `columns x rows`), by 32 x 32 tiles.
    static func addTransposed(_ t: UnsafePointer<Float>, rows: Int, columns: Int, into acc: UnsafeMutablePointer<Float>) {
        parallelFor((columns + 31) / 32, grain: 1) { bands in
            for band in bands {
                let c0 = band * 32, c1 = min(columns, c0 + 32)
                for r0 in stride(from: 0, to: rows, by: 32) {
                    let r1 = min(rows, r0 + 32)
                    for c in c0..<c1 { for r in r0..<r1 { acc[c * rows + r] += t[r * columns + c] } }
                }
            }
        }
    }

    /// `y[r][j] += bias[r]`.
    static func addRowBias(_ y: UnsafeMutablePointer<Float>, rows: Int, columns: Int, bias: Tensor) {
        parallelFor(rows, grain: 4) { range in
            for r in range {
                let row = y + r * columns, b = bias.data[r]
                for j in 0..<columns { row[j] += b }
            }
        }
    }
}

/// A grow-only buffer for a weight's transpose (training's input-gradient products), one at a
/// time: the backward runs its products one after another. `gradient` holds a weight
/// gradient's transpose (`pointwiseBackward`) while `shared` holds the weight's.
final class WeightTranspose: @unchecked Sendable {
    static let shared = WeightTranspose()
    static let gradient = WeightTranspose()
    private let lock = NSLock()
    private var buffer: UnsafeMutablePointer<Float>?
    private var capacity = 0

    /// `body(buffer)` with room for `count` floats (contents undefined).
    func scratch(count: Int, _ body: (UnsafeMutablePointer<Float>) -> Void) {
        lock.lock(); defer { lock.unlock() }
        if capacity < count {
            buffer?.deallocate()
            buffer = .allocate(capacity: count)
            capacity = count
        }
        body(buffer!)
    }

    /// `body(wt)` with `wt[c][r] = w[r][c]`, `(columns, rows)` row-major.
    func with(_ w: UnsafePointer<Float>, rows: Int, columns: Int, _ body: (UnsafePointer<Float>) -> Void) {
        scratch(count: rows * columns) { wt in
            // 32 x 32 tiles, a band of 32 output rows per task.
            Kernels.parallelFor((columns + 31) / 32, grain: 1) { bands in
                for band in bands {
                    let c0 = band * 32, c1 = min(columns, c0 + 32)
                    if lc_transpose_columns(w, Int32(rows), Int32(columns), Int32(c0), Int32(c1), wt) != 0 { continue }   // 8 x 8 in registers
                    for r0 in stride(from: 0, to: rows, by: 32) {
                        let r1 = min(rows, r0 + 32)
                        for c in c0..<c1 { for r in r0..<r1 { wt[c * rows + r] = w[r * columns + c] } }
                    }
                }
            }
            body(wt)
        }
    }
}
