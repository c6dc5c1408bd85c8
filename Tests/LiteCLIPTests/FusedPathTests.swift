import Foundation
import XCTest
@testable import LiteCLIP
@testable import TensorIO
import TestSupport
import CKernels

/// ConvNeXt's fused inference path (gamma folded into fc2, bias + GELU in one pass, the residual
/// as the sgemm's accumulate) against the plain path training also runs, on weights with a
/// layer scale far from timm's 1e-6 initial value, so the MLP branch matters.
final class FusedPathTests: XCTestCase {
    /// A block with random weights on the fused path (our sgemm, fused epilogues) and on the
    /// plain one. dim 8: tiny products on one core; dim 100: fc2's K = 400 is split into two
    /// blocks (partial sums in t), rows are not a multiple of 6 nor columns of 16, and both
    /// cores split the columns; dim 32 over 8320 columns: the MLP by column blocks (8 whole
    /// blocks of 1024 and a part).
    /// Every micro-kernel this CPU can run: AVX2 (6 x 16), and AVX-512 (6 x 32) where present.
    static var kernelLevels: [Int32] {
        lc_sgemm_force_isa(-1)
        return lc_sgemm_isa() == 2 ? [2, 1] : [1]
    }

    /// Runs `body` once per micro-kernel, named in the failure messages.
    func forEachKernel(_ body: (String) throws -> Void) rethrows {
        defer { lc_sgemm_force_isa(-1) }
        for level in Self.kernelLevels {
            lc_sgemm_force_isa(level)
            XCTAssertEqual(lc_sgemm_isa(), level)
            try body(level == 2 ? "avx512" : "avx2")
        }
    }

    func testFusedBlockEqualsPlainPath() throws {
        XCTAssertTrue(Kernels.ownGEMMAvailable, "this CPU has AVX2 and FMA: the fused path must run")
        try forEachKernel { isa in
        // Batch 1: each image's depthwise rows split between the cores; 7 x 7 (8-wide vectors).
        for (dim, b, h, w) in [(8, 2, 9, 11), (100, 2, 9, 11), (32, 2, 64, 65), (24, 1, 7, 7), (16, 1, 30, 29)] {
            let c = ConvNeXtConfig(dims: [dim, dim, dim, dim], depths: [1, 1, 1, 1])
            var rng = SeededRNG(seed: 11)
            var tensors: [String: Checkpoint.Tensor] = [:]
            let record = ParameterSource(.record, file: "")
            _ = try ConvNeXtBlock(ParameterScope(record), dim: dim, config: c, fused: false)
            for spec in record.specs {
                // Layer scale far from timm's 1e-6 initial value, so the MLP branch matters.
                let values = (0..<spec.shape.reduce(1, *)).map { _ in (rng.nextFloat() * 2 - 1) * (spec.name == "gamma" ? 1 : 1 / Float(spec.shape.last!).squareRoot()) }
                tensors[spec.name] = Checkpoint.Tensor(name: spec.name, dtype: .f32, shape: spec.shape, origin: "test") {
                    TensorBytes(owning: values.withUnsafeBytes { Array($0) })
                }
            }
            let fused = try ConvNeXtBlock(ParameterScope(ParameterSource(.view(tensors), file: "t")), dim: dim, config: c, fused: true)
            let plain = try ConvNeXtBlock(ParameterScope(ParameterSource(.view(tensors), file: "t")), dim: dim, config: c, fused: false)
            XCTAssertTrue(fused.fused)
            XCTAssertFalse(plain.fused)
            let p = b * h * w
            let input = (0..<(dim * p)).map { _ in rng.nextFloat() * 4 - 2 }
            func run(_ block: ConvNeXtBlock) -> [Float] {
                let ws = Workspace(pool: nil)
                let x = Buffer([dim, p], input)
                // Room for the hidden layer's whole panels: the fused path keeps it packed.
                let scratch = ConvNeXtBlock.Scratch(t: ws.zeros([dim, p]), hidden: ws.zeros([4 * dim, Kernels.PackedColumns.count(rows: 1, columns: p)]))
                return block.forward(x, dim: dim, batch: b, h: h, w: w, eps: 1e-6, scratch: scratch, ws: ws, cache: nil).array
            }
            let a = run(fused), e = run(plain)
            let maxDiff = zip(a, e).map { abs($0 - $1) }.max() ?? .infinity
            let scale = e.map(abs).max() ?? 0
            let change = zip(e, input).map { abs($0 - $1) }.max() ?? 0
            print("\(isa) dim \(dim): fused vs plain block: max abs diff \(maxDiff), max |out| \(scale), max |out - in| \(change)")
            XCTAssertGreaterThan(change, 0.1, "the MLP branch must change the output for the comparison to mean anything")
            XCTAssertLessThanOrEqual(maxDiff, 1e-5 * max(scale, 1), "\(isa) dim \(dim): fused vs plain: max abs diff \(maxDiff)")
            if dim == 32 { XCTAssertEqual(Kernels.mlpBlockColumns(hidden: 4 * dim, columns: b * h * w), 1024, "the column-block MLP must run") }
        }
        }
    }

    /// The C loops that replace Swift ones (GELU, its derivative, the depthwise conv alone that
    /// training runs and its weight gradient) against those Swift loops, on lengths that leave
    /// vector tails.
    func testCLoopsEqualSwiftLoops() {
        var rng = SeededRNG(seed: 9)
        let n = 16 * 37 + 11
        let x = (0..<n).map { _ in (rng.nextFloat() * 2 - 1) * 8 }, dy = (0..<n).map { _ in rng.nextFloat() * 2 - 1 }
        func both<T>(_ body: () -> T) -> (c: T, swift: T) {
            let c = body()
            Kernels.forceOpenBLAS = true
            defer { Kernels.forceOpenBLAS = false }
            return (c, body())
        }
        func maxDiff(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max() ?? .infinity }
        let g = both { () -> [Float] in var v = x; Kernels.gelu(&v, count: n); return v }
        let gb = both { () -> [Float] in var d = dy; Kernels.geluBackward(x, &d, count: n); return d }
        print("gelu: max abs diff \(maxDiff(g.c, g.swift)); gelu backward: \(maxDiff(gb.c, gb.swift))")
        XCTAssertLessThanOrEqual(maxDiff(g.c, g.swift), 1e-6, "gelu")
        XCTAssertLessThanOrEqual(maxDiff(gb.c, gb.swift), 1e-6, "gelu backward")
        forEachKernel { isa in
        // k = 3: the C kernel's generic path (ConvNeXt's 7 x 7 has its own unrolled one).
        for (c, b, h, w, k) in [(5, 2, 9, 11, 7), (3, 1, 7, 7, 7), (4, 2, 20, 37, 7), (3, 2, 6, 19, 3)] {
            let wt = Buffer([c, 1, k, k], (0..<(c * k * k)).map { _ in rng.nextFloat() * 2 - 1 }).view
            let bias = Buffer([c], (0..<c).map { _ in rng.nextFloat() }).view
            let input = (0..<(c * b * h * w)).map { _ in rng.nextFloat() * 2 - 1 }
            let conv = both { () -> [Float] in
                var y = [Float](repeating: .nan, count: input.count)
                Kernels.depthwiseConv(input, channels: c, batch: b, h: h, w: w, weight: wt, bias: bias, into: &y)
                return y
            }
            print("\(isa) depthwise conv \(c)x\(b)x\(h)x\(w) k \(k): max abs diff \(maxDiff(conv.c, conv.swift))")
            XCTAssertLessThanOrEqual(maxDiff(conv.c, conv.swift), 1e-5, "\(isa) depthwise conv \(c)x\(b)x\(h)x\(w)")
            // The weight gradient (training's backward).
            let g = (0..<input.count).map { _ in rng.nextFloat() * 2 - 1 }
            let dw = both { () -> [Float] in
                var d = [Float](repeating: 0.5, count: c * k * k)
                var scratch = [Float](repeating: 0, count: input.count)
                Kernels.depthwiseConvBackward(x: input, dy: g, channels: c, batch: b, h: h, w: w, weight: wt, dWeight: &d, dBias: nil,
                                              accumulateInto: nil, scratch: &scratch)
                return d
            }
            print("\(isa) depthwise conv weight gradient \(c)x\(b)x\(h)x\(w): max abs diff \(maxDiff(dw.c, dw.swift))")
            XCTAssertNotEqual(dw.c, [Float](repeating: 0.5, count: c * k * k))
            XCTAssertLessThanOrEqual(maxDiff(dw.c, dw.swift), 1e-4, "\(isa) depthwise conv weight gradient \(c)x\(b)x\(h)x\(w)")
        }
        }
    }

    /// Inference's downsampling pass (LayerNorm written straight into the patch conv's columns)
    /// against the two passes it replaces: the same bits, and x left as it was.
    func testNormPatchConvEqualsPasses() {
        var rng = SeededRNG(seed: 21)
        for (cin, cout, b, h, w) in [(5, 7, 2, 6, 10), (16, 8, 1, 14, 14), (3, 4, 3, 2, 34), (96, 12, 1, 8, 56)] {
            let p = b * h * w, cols = b * (h / 2) * (w / 2)
            let input = (0..<(cin * p)).map { _ in rng.nextFloat() * 4 - 2 }
            let nw = Buffer([cin], (0..<cin).map { _ in rng.nextFloat() + 0.5 }).view
            let nb = Buffer([cin], (0..<cin).map { _ in rng.nextFloat() - 0.5 }).view
            let cw = Buffer([cout, cin, 2, 2], (0..<(cout * cin * 4)).map { _ in rng.nextFloat() * 2 - 1 }).view
            let cb = Buffer([cout], (0..<cout).map { _ in rng.nextFloat() }).view
            var fused = [Float](repeating: .nan, count: cout * cols), x = input
            let ran = x.withUnsafeBufferPointer { xp in
                Kernels.normPatchConv2(xp.baseAddress!, inChannels: cin, batch: b, h: h, w: w, normWeight: nw, normBias: nb, eps: 1e-6,
                                       weight: cw, bias: cb, into: &fused)
            }
            XCTAssertTrue(ran)
            XCTAssertEqual(x, input, "the input must not change")
            var normed = input, plain = [Float](repeating: .nan, count: cout * cols)
            normed.withUnsafeMutableBufferPointer { np in
                Kernels.layerNormChannelsForward(np.baseAddress!, channels: cin, columns: p, weight: nw, bias: nb, eps: 1e-6,
                                                 xhat: nil, rstd: nil, into: np.baseAddress!)
                Kernels.patchConv(np.baseAddress!, inChannels: cin, batch: b, h: h, w: w, stride: 2, weight: cw, bias: cb, into: &plain)
            }
            let diff = zip(fused, plain).map { abs($0 - $1) }.max() ?? .infinity
            print("norm + patch conv \(cin)x\(b)x\(h)x\(w): max abs diff \(diff)")
            XCTAssertEqual(fused, plain, "norm + patch conv \(cin)x\(b)x\(h)x\(w): max abs diff \(diff)")
        }
    }

    /// Training's input gradient through the transposed weight (`WeightTranspose`, for large
    /// weights) against the product reading the weight transposed in place: the same dot
    /// products in the same order, so the same bits; and the weight and bias gradients as well.
    func testTransposedWeightInputGradientEqualsTransposedRead() {
        forEachKernel { isa in
            var rng = SeededRNG(seed: 13)
            // (300, 227, 260): neither dimension of W a multiple of 8 (the transpose's edges);
            // (128, 640, 520): dW as the transpose of x dy^T (fewer outputs, many columns).
            for (out, inp, p) in [(384, 192, 300), (96, 768, 257), (1536, 384, 40), (300, 227, 260), (128, 640, 520)] {
                XCTAssertTrue(inp * out >= 1 << 16)
                let w = Buffer([out, inp], (0..<(out * inp)).map { _ in rng.nextFloat() * 2 - 1 }).view
                let x = (0..<(inp * p)).map { _ in rng.nextFloat() * 2 - 1 }
                let dy = (0..<(out * p)).map { _ in rng.nextFloat() * 2 - 1 }
                var dx = [Float](repeating: .nan, count: inp * p), plain = dx
                var dw = [Float](repeating: 0.5, count: out * inp), db = [Float](repeating: 0.25, count: out)
                Kernels.pointwiseBackward(x: x, dy: dy, columns: p, weight: w, dWeight: &dw, dBias: &db, dx: &dx)
                Kernels.gemm(w.data, dy, &plain, m: inp, n: p, k: out, transA: true)
                var dwRef = [Float](repeating: 0.5, count: out * inp)
                Kernels.gemm(dy, x, &dwRef, m: out, n: inp, k: p, transB: true, accumulate: true)
                let diff = zip(dx, plain).map { abs($0 - $1) }.max() ?? .infinity
                XCTAssertEqual(dx, plain, "\(isa) dx \(out)x\(inp)x\(p): max abs diff \(diff)")
                if out < inp && p >= 4 * out {
                    // The same sums per K block; the blocks' partial sums are added to dW at once
                    // instead of one by one (a rounding apart).
                    let dwDiff = zip(dw, dwRef).map { abs($0 - $1) }.max() ?? .infinity
                    XCTAssertLessThanOrEqual(dwDiff, 1e-5 * Float(p).squareRoot(), "\(isa) dW \(out)x\(inp)x\(p): max abs diff \(dwDiff)")
                    XCTAssertNotEqual(dw, [Float](repeating: 0.5, count: out * inp), "\(isa) dW \(out)x\(inp)x\(p): accumulated")
                } else {
                    XCTAssertEqual(dw, dwRef, "\(isa) dW \(out)x\(inp)x\(p)")
                }
                let dbRef = (0..<out).map { r in 0.25 + (0..<p).reduce(Float(0)) { $0 + dy[r * p + $1] } }
                let dbDiff = zip(db, dbRef).map { abs($0 - $1) }.max() ?? .infinity
                XCTAssertLessThan(dbDiff, 1e-3, "\(isa) db \(out)x\(inp)x\(p): max abs diff \(dbDiff)")
            }
        }
    }

    /// Each epilogue of our sgemm against the product by definition plus the separate pass it
    /// replaces (and `Kernels.gemm` with transposed operands, which training uses), on shapes
    /// that cover edge tiles (M not a multiple of 6, N not of 16), K split into blocks (K > 384),
    /// the row split (few columns) and the column split over the cores, and K = 0.
    func testFusedGEMMEqualsBLASAndPasses() {
        forEachKernel { isa in
        var rng = SeededRNG(seed: 5)
        func random(_ n: Int) -> [Float] { (0..<n).map { _ in rng.nextFloat() * 2 - 1 } }
        // (1400, 37, 400): each core's rows of A exceed 1 MiB with few columns, the row-tile path
        // (K whole, every panel per tile of A, the next tile prefetched), with an edge tile;
        // (1400, 50, 400): its last panel as 16 columns and two dot-product columns (K not a
        // multiple of 16); (1400, 36, 400) and (1400, 3, 400): a last panel of 4 or 3 columns, all
        // dot products; (500, 700, 600), (450, 690, 600) and (450, 676, 600): B too large to pack
        // whole, so in two chunks of columns, the second ending in an edge panel, in 16 + 2
        // columns, or in 4 columns.
        for (m, n, k) in [(1, 1, 1), (7, 5, 3), (6, 16, 96), (13, 37, 400), (96, 49, 768), (40, 300, 1000), (200, 130, 64), (5, 9, 0),
                          (1400, 37, 400), (1400, 50, 400), (1400, 36, 400), (1400, 3, 400), (500, 700, 600), (450, 690, 600),
                          (450, 676, 600)] {
            let a = random(m * k), b = random(k * n), bias = random(m), scale = random(m), d0 = random(m * n)
            // The reference product in double precision, by the definition (independent of every kernel).
            var want = [Float](repeating: 0, count: m * n)
            for i in 0..<m { for j in 0..<n {
                var acc = 0.0
                for p in 0..<k { acc += Double(a[i * k + p]) * Double(b[p * n + j]) }
                want[i * n + j] = Float(acc)
            } }
            var worst: [String: Float] = [:]
            func check(_ name: String, _ got: [Float], _ ref: [Float]) {
                let diff = zip(got, ref).map { abs($0 - $1) }.max() ?? 0
                worst[name] = diff
                XCTAssertLessThanOrEqual(diff, 2e-5 * Float(max(k, 1)).squareRoot(), "\(isa) \(name) m \(m) n \(n) k \(k): max abs diff \(diff)")
            }
            var c = [Float](repeating: .nan, count: m * n)
            Kernels.fusedGEMM(a, b, &c, m: m, n: n, k: k, epilogue: .store(bias: nil))
            check("store", c, want)
            bias.withUnsafeBufferPointer { bp in
                Kernels.fusedGEMM(a, b, &c, m: m, n: n, k: k, epilogue: .store(bias: bp.baseAddress!))
                check("store+bias", c, (0..<(m * n)).map { want[$0] + bias[$0 / n] })
                Kernels.fusedGEMM(a, b, &c, m: m, n: n, k: k, epilogue: .biasGELU(bias: bp.baseAddress!))
                var g = (0..<(m * n)).map { want[$0] + bias[$0 / n] }
                Kernels.gelu(&g, count: g.count)
                check("bias+gelu", c, g)
                // Training's fc1: the pre-activation in C, the activation in D.
                var act = [Float](repeating: .nan, count: m * n)
                act.withUnsafeMutableBufferPointer { ap in
                    Kernels.fusedGEMM(a, b, &c, m: m, n: n, k: k, epilogue: .biasGELUKeep(bias: bp.baseAddress!, into: ap.baseAddress!))
                }
                check("bias+gelu keep: C", c, (0..<(m * n)).map { want[$0] + bias[$0 / n] })
                check("bias+gelu keep: D", act, g)
                // Training's dL/dhpre: the product times gelu'(H) (AVX-512's epilogue only).
                if Kernels.geluGradEpilogue {
                    let hp = random(m * n).map { $0 * 3 }
                    var grad = want
                    Kernels.geluBackward(hp, &grad, count: grad.count)
                    Kernels.gemm(a, b, &c, m: m, n: n, k: k, timesGELUDerivativeOf: hp)
                    check("times gelu'", c, grad)
                }
                var d = d0
                scale.withUnsafeBufferPointer { sp in
                    d.withUnsafeMutableBufferPointer { dp in
                        Kernels.fusedGEMM(a, b, &c, m: m, n: n, k: k, epilogue: .residual(bias: bp.baseAddress!, scale: sp.baseAddress!, into: dp.baseAddress!))
                    }
                }
                check("residual", d, (0..<(m * n)).map { d0[$0] + scale[$0 / n] * (want[$0] + bias[$0 / n]) })
            }
            // The packed layout: C written packed (bias + GELU, as fc1 writes the hidden layer),
            // and B read packed (as fc2 reads it), with NaN where the products must not look.
            let width = Kernels.PackedColumns.width, padded = Kernels.PackedColumns.count(rows: 1, columns: n)
            func unpack(_ q: [Float], rows: Int) -> [Float] {
                (0..<(rows * n)).map { q[($0 % n) / width * rows * width + ($0 / n) * width + ($0 % n) % width] }
            }
            // (Buffers: 64-byte aligned, as the kernels read packed panels.)
            let packedC = Buffer([m, padded], [Float](repeating: .nan, count: m * padded))
            bias.withUnsafeBufferPointer { bp in   // (packedC is used below: alive throughout)
                Kernels.fusedGEMM(a, b, packedC.data, m: m, n: n, k: k, epilogue: .biasGELU(bias: bp.baseAddress!), packedC: true)
            }
            var g = (0..<(m * n)).map { want[$0] + bias[$0 / n] }
            Kernels.gelu(&g, count: g.count)
            check("bias+gelu packed C", unpack(packedC.array, rows: m), g)
            XCTAssertEqual(packedC.array.filter { $0.isNaN }.count, 0, "\(isa) m \(m) n \(n): the padding is zeroed")
            var packedB = [Float](repeating: 0, count: k * padded)
            for p in 0..<k { for j in 0..<n { packedB[j / width * k * width + p * width + j % width] = b[p * n + j] } }
            let packedBBuffer = Buffer([k, padded], packedB)
            withExtendedLifetime(packedBBuffer) {
                Kernels.fusedGEMM(a, packedBBuffer.data, &c, m: m, n: n, k: k, epilogue: .store(bias: nil), packedB: true)
            }
            check("packed B", c, want)
            // Transposed operands (training's products): A stored [K x M], B stored [N x K].
            let at = (0..<(k * m)).map { a[($0 % m) * k + $0 / m] }, bt = (0..<(n * k)).map { b[($0 % k) * n + $0 / k] }
            Kernels.gemm(at, bt, &c, m: m, n: n, k: k, transA: true, transB: true)
            check("transposed", c, want)
            var acc = d0
            Kernels.gemm(at, b, &acc, m: m, n: n, k: k, transA: true, accumulate: true)
            check("accumulate", acc, (0..<(m * n)).map { d0[$0] + want[$0] })
            print("\(isa) m \(m) n \(n) k \(k): max abs diff \(worst.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))")
        }
        }
    }
}

/// The compute thread pool (Sources/CKernels/pool.c): every task runs exactly once, back-to-back
/// jobs never mix, and nested or concurrent callers still finish (their tasks run in order on the
/// calling thread).
final class ThreadPoolTests: XCTestCase {
    func testEveryTaskRunsOnceAcrossManyJobs() {
        for count in [1, 2, 3, 7, 64, 1000] {
            for _ in 0..<200 {
                let hits = UnsafeMutablePointer<Int>.allocate(capacity: count)
                hits.initialize(repeating: 0, count: count)
                Kernels.parallel(count) { i in hits[i] += 1 }
                let wrong = (0..<count).filter { hits[$0] != 1 }
                hits.deallocate()
                if !wrong.isEmpty { XCTFail("count \(count): tasks \(wrong.prefix(5)) ran \(wrong.count) times other than once"); return }
            }
        }
    }

    /// Many short jobs back to back, the pattern of the batch-1 tower (a hundred jobs per
    /// forward) and of a packing job followed at once by a product job: a worker that read the
    /// previous job's ticket must never claim a task of the next (it once could, while the next
    /// job's fields were being written: a task ran twice and lc_parallel returned early). Each
    /// job checks that every task ran exactly once by the time the call returned.
    func testBackToBackJobsNeverRunATaskTwice() {
        let slots = UnsafeMutablePointer<Int>.allocate(capacity: 8)
        defer { slots.deallocate() }
        var bad = 0, jobs = 0
        let start = Date()
        while jobs < 300_000 && Date().timeIntervalSince(start) < 3 {
            let count = 2 + jobs % 2
            slots.initialize(repeating: 0, count: count)
            Kernels.parallel(count) { i in slots[i] += 1 }
            for i in 0..<count where slots[i] != 1 { bad += 1 }
            jobs += 1
        }
        print("back-to-back jobs: \(jobs), tasks not run exactly once \(bad)")
        XCTAssertGreaterThan(jobs, 10_000)
        XCTAssertEqual(bad, 0, "\(bad) tasks of \(jobs) jobs ran other than once")
    }

    func testNestedAndConcurrentCallsFinish() {
        let n = 16
        let sums = UnsafeMutablePointer<Int>.allocate(capacity: 2 * n)
        sums.initialize(repeating: 0, count: 2 * n)
        defer { sums.deallocate() }
        // Two threads each run jobs whose tasks start nested jobs.
        DispatchQueue.concurrentPerform(iterations: 2) { t in
            for _ in 0..<50 {
                Kernels.parallel(n) { i in
                    var inner = [Int](repeating: 0, count: 4)
                    inner.withUnsafeMutableBufferPointer { b in Kernels.parallel(4) { j in b[j] = j + 1 } }
                    sums[t * n + i] += inner.reduce(0, +)
                }
            }
        }
        for i in 0..<(2 * n) { XCTAssertEqual(sums[i], 50 * 10, "task \(i)") }
    }
}
