import CKernels
import Foundation

/// Products with int8 weights (an int8 `.lcw`, formats/lcw.md "int8 weights"; the kernels in
/// Sources/CKernels/qgemm.c, formats/kernels.md "int8"): the activations are quantised per column
/// (per image position, or per token) on the fly, multiplied in int32 and dequantised in the
/// epilogue. Integer sums are exact, so the C kernels and the Swift loops here give the same bits.
extension Kernels {
    /// True when the C int8 kernels run here (AVX2; AVX-512 VNNI where the CPU has it).
    static var int8Kernel: Bool { lc_qgemm_isa() > 0 && !forceSwiftInt8 }

    /// Tests: run int8 products on the Swift loops.
    nonisolated(unsafe) static var forceSwiftInt8 = false

    /// `C[M x N] = epilogue(W X)` for an int8 weight W (M x K): X's element (p, j) at
    /// `x[p*rsx + j*csx]`. C is row-major with N columns (and is scratch for the residual epilogue).
    static func int8Product(_ w: Int8Weight, _ x: UnsafePointer<Float>, rsx: Int, csx: Int, n: Int,
                            into c: UnsafeMutablePointer<Float>, epilogue: Epilogue) {
        let m = w.rows, k = w.columns
        guard n > 0, m > 0 else { return }
        guard int8Kernel else {
            guard case .store(let bias) = epilogue else { preconditionFailure("fused int8 epilogue without the C kernels") }
            int8ProductReference(w, x, rsx: rsx, csx: csx, n: n, bias: bias, into: c)
            return
        }
        let panels = (n + 31) / 32
        let packed = UnsafeMutableRawPointer.allocate(byteCount: lc_quantized_columns_bytes(Int32(k), Int32(n)), alignment: 64)
            .assumingMemoryBound(to: UInt8.self)
        let scales = UnsafeMutablePointer<Float>.allocate(capacity: panels * 32)
        defer { packed.deallocate(); scales.deallocate() }
        // Quantise whole panels per core.
        let parts = min(cores, panels)
        parallel(parts) { t in
            let p0 = panels * t / parts, p1 = panels * (t + 1) / parts
            guard p0 < p1 else { return }
            let j0 = p0 * 32, count = min(n, p1 * 32) - j0
            lc_quantize_columns(Int32(k), Int32(count), x + j0 * csx, rsx, csx, packed + j0 * k, scales + j0)
        }
        let e = epilogue.c(columns: n)
        split(m: m, n: n, k: k / 4) { rows, cols in
            let r0 = rows.lowerBound, j0 = cols.lowerBound
            withUnsafePointer(to: Epilogue.part(e, row: r0, column: j0, columns: n)) {
                lc_qgemm(Int32(rows.count), Int32(cols.count), Int32(k), w.values + r0 * k, k, w.scales + r0, w.rowSums + r0,
                         packed + j0 * k, scales + j0, c + r0 * n + j0, n, $0)
            }
        }
    }

    /// The int8 product by plain loops (CPUs without AVX2, and the tests' reference): the same
    /// quantisation, exact int32 sums, the same float steps in the same order.
    static func int8ProductReference(_ w: Int8Weight, _ x: UnsafePointer<Float>, rsx: Int, csx: Int, n: Int,
                                     bias: UnsafePointer<Float>?, into c: UnsafeMutablePointer<Float>) {
        let m = w.rows, k = w.columns
        var q = [Int32](repeating: 0, count: k * n), xs = [Float](repeating: 0, count: n)
        for j in 0..<n {
            var absmax: Float = 0
            for p in 0..<k { absmax = max(absmax, abs(x[p * rsx + j * csx])) }
            let inv: Float = absmax > 0 ? 127 / absmax : 0
            xs[j] = absmax / 127
            for p in 0..<k {
                let v = (x[p * rsx + j * csx] * inv).rounded(.toNearestOrEven)
                q[j * k + p] = Int32(min(max(v, -127), 127)) + 128        // stored offset, as the kernels do
            }
        }
        parallelFor(m, grain: 4) { rows in
            for r in rows {
                let wr = w.values + r * k, off = 128 &* w.rowSums[r], ws = w.scales[r]
                for j in 0..<n {
                    var acc: Int32 = 0
                    q.withUnsafeBufferPointer { qb in
                        let col = qb.baseAddress! + j * k
                        for p in 0..<k { acc &+= Int32(wr[p]) &* col[p] }
                    }
                    var v = (Float(acc &- off) * ws) * xs[j]
                    if let bias { v = v + bias[r] }
                    c[r * n + j] = v
                }
            }
        }
    }

    /// `y[rows x out] = x W^T + b` for an int8 Linear weight (tokens as the quantised columns).
    static func int8Linear(_ x: UnsafePointer<Float>, rows: Int, weight q: Int8Weight, bias: Tensor?, into y: UnsafeMutablePointer<Float>) {
        let out = q.rows, inp = q.columns
        let t = UnsafeMutablePointer<Float>.allocate(capacity: max(out * rows, 1))
        let xt = UnsafeMutablePointer<Float>.allocate(capacity: max(inp * rows, 1))
        defer { t.deallocate(); xt.deallocate() }
        // Tokens as contiguous columns (the vectorised quantisation): x^T, (in, rows).
        for r in 0..<rows { for k in 0..<inp { xt[k * rows + r] = x[r * inp + k] } }
        int8Product(q, xt, rsx: rows, csx: 1, n: rows, into: t, epilogue: .store(bias: bias?.data))
        for r in 0..<rows { for o in 0..<out { y[r * out + o] = t[o * rows + r] } }
    }

    /// `C = epilogue(W X)` with W f32 or int8 (the fused ConvNeXt path): X is K x N row-major.
    static func fusedProduct(_ weight: Tensor, _ x: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>, n: Int,
                             epilogue: Epilogue) {
        if let q = weight.int8 {
            int8Product(q, x, rsx: n, csx: 1, n: n, into: c, epilogue: epilogue)
        } else {
            fusedGEMM(weight.data, x, c, m: weight.shape[0], n: n, k: weight.shape[1], epilogue: epilogue)
        }
    }
}
