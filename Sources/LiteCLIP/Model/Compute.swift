import CKernels
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
        let threads = min(cores, max(1, count / max(grain, 1)))
        if threads <= 1 { body(0..<count); return }
        let chunk = (count + threads - 1) / threads
        parallel(threads) { t in
            let lo = t * chunk, hi = min(count, lo + chunk)
            if lo < hi { body(lo..<hi) }
        }
    }

    /// The threads the compute passes use (the CKernels pool's workers and the caller).
    static let cores = Int(lc_pool_threads())

    /// Runs `body(0..<count)` on the CKernels pool (Sources/CKernels/pool.c): its workers spin
    /// between jobs, so a call costs microseconds where `concurrentPerform` costs 150-200 us.
    /// A call made while the pool is busy runs its tasks in order on the calling thread.
    static func parallel(_ count: Int, _ body: (Int) -> Void) {
        withoutActuallyEscaping(body) { task in
            var task = task
            withUnsafeMutablePointer(to: &task) { context in
                lc_parallel(count, { ctx, i in ctx!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(i) }, context)
            }
        }
    }

    // MARK: - Matrix products

    /// `C[M x N] = A[M x K] * op(B) (+ C if accumulate)`, row-major; `transA` means A is stored
    /// `[K x M]`, `transB` that B is stored `[N x K]` (a PyTorch Linear weight). On our sgemm
    /// where the CPU has AVX2 (`ownGEMMAvailable`), else OpenBLAS; large products are split into
    /// one block of rows (or of columns, when M is small) per core.
    /// `timesGELUDerivativeOf`: C = (A op(B)) * gelu'(H) elementwise, H `M x N` row-major (our
    /// sgemm's GELU_GRAD epilogue; callers check `geluGradEpilogue`).
    static func gemm(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
                     m: Int, n: Int, k: Int, transA: Bool = false, transB: Bool = false, accumulate: Bool = false,
                     timesGELUDerivativeOf h: UnsafePointer<Float>? = nil) {
        var e = lc_epilogue()
        e.kind = Int32(accumulate ? LC_EPILOGUE_ACCUMULATE : LC_EPILOGUE_STORE)
        if let h {
            precondition(geluGradEpilogue && !accumulate, "the GELU_GRAD epilogue needs our AVX-512 sgemm")
            e.kind = Int32(LC_EPILOGUE_GELU_GRAD); e.dst = UnsafeMutablePointer(mutating: h); e.ldd = n
        }
        product(a, b, c, m: m, n: n, k: k, transA: transA, transB: transB, epilogue: e)
    }

    /// Whether products can apply GELU's derivative in their epilogue (AVX-512 micro-kernel).
    static var geluGradEpilogue: Bool { useOwnGEMM && lc_sgemm_isa() == 2 }

    // MARK: - Our sgemm with fused epilogues (Sources/CKernels, formats/kernels.md)

    /// True when this CPU runs our sgemm (AVX2 + FMA, or AVX-512); else OpenBLAS and separate passes.
    static let ownGEMMAvailable: Bool = lc_sgemm_available() != 0

    /// Benchmarks: run every product on OpenBLAS instead of our sgemm (the fused ConvNeXt path
    /// then falls back to the plain one).
    nonisolated(unsafe) static var forceOpenBLAS = false

    static var useOwnGEMM: Bool { ownGEMMAvailable && !forceOpenBLAS }

    /// What follows the product, applied to each tile while it is in cache.
    enum Epilogue {
        /// `C = A B + bias`.
        case store(bias: UnsafePointer<Float>?)
        /// `C = gelu(A B + bias)`.
        case biasGELU(bias: UnsafePointer<Float>)
        /// `D += scale * (A B + bias)` per row; C is scratch for partial sums (D is `M x N`, ldd = N).
        case residual(bias: UnsafePointer<Float>, scale: UnsafePointer<Float>, into: UnsafeMutablePointer<Float>)
        /// `C = A B + bias` and `D = gelu(C)` (D is `M x N`, ldd = N): training's fc1.
        case biasGELUKeep(bias: UnsafePointer<Float>, into: UnsafeMutablePointer<Float>)

        /// The C kernels' description, for a product with `n` columns.
        func c(columns n: Int) -> lc_epilogue {
            var e = lc_epilogue()
            switch self {
            case .store(let bias): e.kind = Int32(LC_EPILOGUE_STORE); e.bias = bias
            case .biasGELU(let bias): e.kind = Int32(LC_EPILOGUE_BIAS_GELU); e.bias = bias
            case .residual(let bias, let scale, let d):
                e.kind = Int32(LC_EPILOGUE_RESIDUAL); e.bias = bias; e.scale = scale; e.dst = d; e.ldd = n
            case .biasGELUKeep(let bias, let d):
                e.kind = Int32(LC_EPILOGUE_BIAS_GELU_KEEP); e.bias = bias; e.dst = d; e.ldd = n
            }
            return e
        }

        /// The part of it that applies to rows from `r` and columns from `j` (a product split over cores).
        static func part(_ e: lc_epilogue, row r: Int, column j: Int, columns n: Int) -> lc_epilogue {
            var part = e
            if let bias = part.bias { part.bias = bias + r }
            if let scale = part.scale { part.scale = scale + r }
            if part.dst != nil { part.dst = part.dst + r * n + j }
            return part
        }
    }

    /// `C[M x N] = epilogue(A[M x K] * B[K x N])`, row-major, on our sgemm (callers check
    /// `useOwnGEMM`). `packedC`: C is written in the packed layout a product reads its B in
    /// (`PackedColumns`; store and bias + GELU only); `packedB`: B arrives in it (so fc1 writes the
    /// hidden layer as fc2 reads it, and fc2 does not pack it again).
    static func fusedGEMM(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
                          m: Int, n: Int, k: Int, epilogue: Epilogue, packedB: Bool = false, packedC: Bool = false) {
        var e = epilogue.c(columns: n)
        precondition(!packedB || Int(bitPattern: b) % 64 == 0, "a packed B must be 64-byte aligned (the kernels' aligned loads)")
        if packedC {
            precondition(e.kind == Int32(LC_EPILOGUE_STORE) || e.kind == Int32(LC_EPILOGUE_BIAS_GELU), "packed C with a residual epilogue")
            e.packed = Int32(PackedColumns.width)
            e.panel = m * PackedColumns.width
        }
        product(a, b, c, m: m, n: n, k: k, transA: false, transB: false, epilogue: e, packedB: packedB)
    }

    /// The packed layout of a product's B (`lc_sgemm_panel_width`): panels of `width` columns,
    /// each all K rows of `width` floats, the last one's missing columns zero. A hidden layer
    /// written this way by fc1 is read by fc2 where it lies (formats/kernels.md, "Packed hidden").
    enum PackedColumns {
        static var width: Int { Int(lc_sgemm_panel_width()) }   // (tests switch the micro-kernel)

        /// Floats of a `rows x columns` matrix in the packed layout.
        static func count(rows: Int, columns: Int) -> Int { rows * ((columns + width - 1) / width * width) }
    }

    /// The one driver: splits the product over the cores (columns in multiples of 32 when there
    /// are enough, else rows in multiples of 6) and runs each part on our sgemm, or on OpenBLAS
    /// for the plain store / accumulate epilogues when ours is not in use.
    private static func product(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
                                m: Int, n: Int, k: Int, transA: Bool, transB: Bool, epilogue e: lc_epilogue, packedB: Bool = false) {
        let own = useOwnGEMM
        precondition(own || (e.bias == nil && (e.kind == Int32(LC_EPILOGUE_STORE) || e.kind == Int32(LC_EPILOGUE_ACCUMULATE))),
                     "fused epilogue without our sgemm")
        precondition(own || (!packedB && e.packed == 0), "packed operands without our sgemm")
        precondition(own || e.dst == nil, "an epilogue with D without our sgemm")
        // OpenBLAS (loaded on first use, one thread: the split below uses the cores) where ours cannot run.
        if !own && lc_blas_available() == 0 {
            fatalError("this CPU has no AVX2 and OpenBLAS (libopenblas0) is not installed: install it to run liteclip here")
        }
        // Element (i, p) of A at a[i*rsa + p*csa]; (p, j) of B at b[p*rsb + j*csb].
        let (rsa, csa) = transA ? (1, m) : (k, 1)
        let (rsb, csb) = transB ? (1, k) : (n, 1)
        func run(_ rows: Range<Int>, _ cols: Range<Int>) {
            guard !rows.isEmpty, !cols.isEmpty else { return }
            // Parts split by columns start on a multiple of 32: a whole panel of a packed B or C.
            let ap = a + rows.lowerBound * rsa, bp = b + cols.lowerBound * (packedB ? k : csb)
            let cp = e.packed != 0 ? c + (cols.lowerBound / Int(e.packed)) * e.panel + rows.lowerBound * Int(e.packed)
                                   : c + rows.lowerBound * n + cols.lowerBound
            if own {
                withUnsafePointer(to: Epilogue.part(e, row: rows.lowerBound, column: cols.lowerBound, columns: n)) {
                    if packedB {
                        lc_sgemm_packed_b(Int32(rows.count), Int32(cols.count), Int32(k), ap, rsa, csa, bp, cp, n, $0)
                    } else {
                        lc_sgemm_strided(Int32(rows.count), Int32(cols.count), Int32(k), ap, rsa, csa, bp, rsb, csb, cp, n, $0)
                    }
                }
            } else {
                lc_blas_sgemm(transA ? 1 : 0, transB ? 1 : 0, Int32(rows.count), Int32(cols.count), Int32(k), ap, Int32(transA ? m : k),
                              bp, Int32(transB ? k : n), e.kind == Int32(LC_EPILOGUE_ACCUMULATE) ? 1 : 0, cp, Int32(max(n, 1)))
            }
        }
        // Products that stream a large A over few columns: B packed once, rows claimed in chunks (sgemm.c).
        if own && m * n * k >= 2_000_000, withUnsafePointer(to: e, {
            packedB ? lc_sgemm_parallel_rows_packed_b(Int32(m), Int32(n), Int32(k), a, rsa, csa, b, c, n, $0)
                    : lc_sgemm_parallel_rows(Int32(m), Int32(n), Int32(k), a, rsa, csa, b, rsb, csb, c, n, $0)
        }) != 0 {
            return
        }
        split(m: m, n: n, k: k, run)
    }

    /// Runs `run` over parts of an M x N product, one per core: the dimension whose parts come
    /// out most even (whole 32-column panels, whole 6-row tiles); columns win ties (each part
    /// then packs only its own columns). Small products run whole on the calling thread. Split by
    /// columns, products of at least 5e8 multiply-adds (batch 8's later stages) are cut into two
    /// parts per core, claimed one at a time, so that a core slowed by another thread or process
    /// takes fewer of them (column parts pack disjoint columns: no packing is repeated).
    static func split(m: Int, n: Int, k: Int, _ run: (Range<Int>, Range<Int>) -> Void) {
        guard m > 0 && n > 0 else { return }
        let work = Double(m) * Double(n) * Double(k)
        if cores < 2 || work < 2e6 { run(0..<m, 0..<n); return }
        let colChunk = ((n + cores - 1) / cores + 31) / 32 * 32, rowChunk = ((m + cores - 1) / cores + 5) / 6 * 6
        let colWaste = Double(colChunk * cores) / Double(n), rowWaste = Double(rowChunk * cores) / Double(m)
        if colWaste <= rowWaste * 1.02 {
            let parts = work >= 5e8 && n >= 4 * cores * 32 ? 2 * cores : cores
            let chunk = ((n + parts - 1) / parts + 31) / 32 * 32
            parallel((n + chunk - 1) / chunk) { t in run(0..<m, t * chunk..<min(n, (t + 1) * chunk)) }
        } else {
            parallel(cores) { t in
                let rows = min(m, t * rowChunk)..<min(m, (t + 1) * rowChunk)
                if !rows.isEmpty { run(rows, 0..<n) }
            }
        }
    }

    /// ConvNeXt's MLP by blocks of columns, each core taking whole blocks: fc1 (+ bias, GELU) of
    /// a block into a hidden block that stays in the core's L2, then fc2 (+ layer scale, residual)
    /// from it into `x`; `t` (the block's input) holds fc2's partial sums. Nil when the columns
    /// are too few for every core to get several blocks (the per-product split is used then).
    /// Also nil when the two weight matrices (`2 x C x 4C` floats) would not stay in a core's L2
    /// between blocks: every block would then read them again from L3 or memory, more traffic than
    /// the hidden block it keeps out of memory (`C / width` times as much; stages 2 and 3 here).
    static func mlpBlockColumns(hidden h4: Int, columns p: Int) -> Int? {
        guard useOwnGEMM else { return nil }
        let width = max(32, (131_072 / h4) / 32 * 32)          // a 512 KiB hidden block
        let weightBytes = 2 * (h4 / 4) * h4 * MemoryLayout<Float>.size
        guard weightBytes + h4 * width * MemoryLayout<Float>.size <= l2Bytes else { return nil }
        return p >= 4 * cores * width ? width : nil
    }

    /// One core's L2 cache (glibc's sysconf; 1 MiB where it does not say).
    static let l2Bytes: Int = {
        let n = sysconf(Int32(_SC_LEVEL2_CACHE_SIZE))
        return n > 0 ? n : 1 << 20
    }()

    static func blockedMLP(_ t: UnsafeMutablePointer<Float>, _ x: UnsafeMutablePointer<Float>, dim: Int, hidden h4: Int, columns p: Int,
                           blockColumns width: Int, w1: UnsafePointer<Float>, b1: UnsafePointer<Float>,
                           w2: UnsafePointer<Float>, b2: UnsafePointer<Float>, gamma: UnsafePointer<Float>) {
        let blocks = (p + width - 1) / width
        // Blocks are claimed one at a time, so a core that loses time to another thread (image
        // decoding in a pipelined folder) takes fewer of them instead of holding up the pass.
        parallel(blocks) { b in
            // The hidden block in the packed layout: fc1 writes it as fc2 reads it (width is a
            // multiple of 32, so a block holds whole panels but the last block's last one).
            let h = lc_task_scratch(h4 * width)!
            let j0 = b * width, n = min(width, p - j0)
            var e1 = Epilogue.biasGELU(bias: b1).c(columns: n)
            (e1.packed, e1.panel) = (Int32(PackedColumns.width), h4 * PackedColumns.width)
            withUnsafePointer(to: e1) {
                lc_sgemm_strided(Int32(h4), Int32(n), Int32(dim), w1, dim, 1, t + j0, p, 1, h, n, $0)
            }
            withUnsafePointer(to: Epilogue.residual(bias: b2, scale: gamma, into: x + j0).c(columns: p)) {   // D's row stride: p
                lc_sgemm_packed_b(Int32(dim), Int32(n), Int32(h4), w2, h4, 1, h, t + j0, p, $0)
            }
        }
    }

    // MARK: - Per-layer timing (liteclip bench --layers)

    /// Seconds and flops per layer type, summed while a profile is installed (benchmarks only:
    /// one forward at a time).
    final class LayerProfile: @unchecked Sendable {
        var seconds: [String: Double] = [:]
        var flops: [String: Double] = [:]
        var order: [String] = []
    }

    nonisolated(unsafe) static var profile: LayerProfile?

    /// Runs `body`, adding its wall time and `flops` to the installed profile under `name`.
    @inline(__always)
    static func timed<T>(_ name: String, flops: Double, _ body: () -> T) -> T {
        guard let p = profile else { return body() }
        let t0 = DispatchTime.now().uptimeNanoseconds
        let r = body()
        let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        if p.seconds[name] == nil { p.order.append(name) }
        p.seconds[name, default: 0] += dt
        p.flops[name, default: 0] += flops
        return r
    }

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
