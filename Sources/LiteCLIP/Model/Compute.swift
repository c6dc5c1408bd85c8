import CBLAS
import Dispatch
import Foundation

/// The shared compute primitives every layer uses: a split of work over the cores, OpenBLAS
/// sgemm for every matrix product, and the row/column sums of bias gradients. The layers
/// themselves (Layers/) are `Kernels` extensions, one file per op family, forward beside backward.
///
/// Layouts: images are channels-first per batch, `[C][B*H*W]` ("planes"), so a pointwise
/// (1x1) layer is one sgemm `W[Cout x Cin] * X[Cin x P]` and the depthwise conv works on
/// contiguous planes; text is row-major `[B*T][H]`.
///
/// Gradient convention: `d*` buffers receive dL/d(that tensor). Weight gradients are
/// ACCUMULATED (`+=`) into the parameter's gradient buffer (a parameter may be used more than
/// once; the optimiser zeroes them per step); a nil weight gradient means the parameter is frozen.
/// Input gradients are written (`=`) unless a function says it accumulates.
public enum Kernels {
    /// Work split over the cores: `body` gets disjoint ranges of `0..<count`.
    static func parallelFor(_ count: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
        let threads = min(ProcessInfo.processInfo.activeProcessorCount, max(1, count / max(grain, 1)))
        if threads <= 1 { body(0..<count); return }
        let chunk = (count + threads - 1) / threads
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            let lo = t * chunk, hi = min(count, lo + chunk)
            if lo < hi { body(lo..<hi) }
        }
    }

    // MARK: - Matrix products

    /// OpenBLAS runs single-threaded; `gemm` splits large products over the cores itself.
    /// (OpenBLAS's own worker threads keep spinning after each call and steal the core the
    /// element-wise passes between products need; measured with perf: ~15% of the time.)
    static let singleThreadedBLAS: Void = { openblas_set_num_threads(1) }()

    /// `C[M x N] = A[M x K] * op(B) (+ C if accumulate)`, row-major; `transB` means B is stored
    /// `[N x K]` (a PyTorch Linear weight). Large products are split into one block of rows
    /// (or of columns, when M is small) per core.
    static func gemm(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
                     m: Int, n: Int, k: Int, transA: Bool = false, transB: Bool = false, accumulate: Bool = false) {
        _ = singleThreadedBLAS
        let lda = transA ? m : k, ldb = transB ? k : n, ldc = n
        func call(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>, _ m: Int, _ n: Int) {
            cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                        Int32(m), Int32(n), Int32(k), 1, a, Int32(lda), b, Int32(ldb), accumulate ? 1 : 0, c, Int32(max(ldc, 1)))
        }
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let work = Double(m) * Double(n) * Double(k)
        if cores < 2 || work < 4e6 { call(a, b, c, m, n); return }
        if m >= 2 * cores && (m >= n || n < 64) {
            // Split rows of A and C.
            let chunk = (m + cores - 1) / cores
            DispatchQueue.concurrentPerform(iterations: cores) { t in
                let lo = t * chunk, hi = min(m, lo + chunk)
                guard lo < hi else { return }
                let aOff = transA ? a + lo : a + lo * lda
                call(aOff, b, c + lo * ldc, hi - lo, n)
            }
        } else {
            // Split columns of B and C (multiples of 16 keep the kernels' panels whole).
            let chunk = ((n + cores - 1) / cores + 15) / 16 * 16
            DispatchQueue.concurrentPerform(iterations: cores) { t in
                let lo = t * chunk, hi = min(n, lo + chunk)
                guard lo < hi else { return }
                let bOff = transB ? b + lo * ldb : b + lo
                cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                            Int32(m), Int32(hi - lo), Int32(k), 1, a, Int32(lda), bOff, Int32(ldb), accumulate ? 1 : 0, c + lo, Int32(ldc))
            }
        }
    }

    /// `Y[rows x out] = X[rows x in] * W^T + b` (nn.Linear on row-major activations).
    // MARK: - Matrix helpers

    /// `acc[r] += sum_j x[r][j]` over `rows x cols` (bias gradients of channels-first layers).
    static func addRowSums(_ x: UnsafePointer<Float>, rows: Int, cols: Int, into acc: UnsafeMutablePointer<Float>) {
        parallelFor(rows, grain: 4) { range in
            for r in range {
                let row = x + r * cols
                var s0 = SIMD8<Float>(), j = 0
                while j + 8 <= cols { s0 += UnsafeRawPointer(row + j).loadUnaligned(as: SIMD8<Float>.self); j += 8 }
                var s = s0.sum()
                while j < cols { s += row[j]; j += 1 }
                acc[r] += s
            }
        }
    }

    /// `acc[j] += sum_r x[r][j]` (bias gradients of row-major layers).
    static func addColumnSums(_ x: UnsafePointer<Float>, rows: Int, cols: Int, into acc: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let row = x + r * cols
            for j in 0..<cols { acc[j] += row[j] }
        }
    }

}
