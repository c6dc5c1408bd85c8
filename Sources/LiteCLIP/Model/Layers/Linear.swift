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
    static func pointwiseBackward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, columns p: Int, weight: Tensor,
                                  dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
                                  dx: UnsafeMutablePointer<Float>?) {
        let out = weight.shape[0], inp = weight.shape[1]
        if let dWeight { gemm(dy, x, dWeight, m: out, n: inp, k: p, transB: true, accumulate: true) }
        if let dBias { addRowSums(dy, rows: out, cols: p, into: dBias) }
        if let dx { gemm(weight.data, dy, dx, m: inp, n: p, k: out, transA: true) }
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
