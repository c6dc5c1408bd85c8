import Foundation
import XCTest
@testable import LiteCLIP
@testable import TensorIO
import TestSupport
import CKernels

/// int8 weights (issue 15): the int8 product equal to its scalar reference bit for bit on every
/// kernel this CPU runs, its fused epilogues equal to the separate passes, and the int8 golden
/// model in agreement with the f32 one and with PyTorch (verify's int8 tolerances).
final class Int8Tests: XCTestCase {
    /// Every int8 kernel this CPU can run: AVX-512 VNNI where present, and AVX2.
    func forEachInt8Kernel(_ body: (String) throws -> Void) rethrows {
        defer { lc_qgemm_force_isa(-1) }
        lc_qgemm_force_isa(-1)
        let top = lc_qgemm_isa()
        XCTAssertGreaterThan(top, 0, "this CPU has AVX2: the int8 kernels must run")
        for level in (1...max(top, 1)).reversed() where level == 1 || level == 2 {
            lc_qgemm_force_isa(level)
            XCTAssertEqual(lc_qgemm_isa(), level)
            try body(level == 2 ? "avx512-vnni" : "avx2")
        }
    }

    /// Owned memory for a test weight.
    final class Owned { let p: UnsafeMutableRawPointer; init(_ bytes: Int) { p = .allocate(byteCount: max(bytes, 1), alignment: 64) }; deinit { p.deallocate() } }

    static func weight(rows: Int, columns: Int, _ rng: inout SeededRNG) -> Int8Weight {
        let w = (0..<(rows * columns)).map { _ in rng.nextFloat() * 2 - 1 }
        let (q, s) = Quantizer.quantizeRows(w, rows: rows, columns: columns)
        let qv = Owned(q.count), sv = Owned(4 * s.count)
        q.withUnsafeBytes { qv.p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        s.withUnsafeBytes { sv.p.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return Int8Weight(rows: rows, columns: columns, values: UnsafePointer(qv.p.assumingMemoryBound(to: Int8.self)),
                          scales: UnsafePointer(sv.p.assumingMemoryBound(to: Float.self)), owners: [qv, sv])
    }

    /// Activations with an all-zero column (scale 0) and a column with one large value.
    static func activations(k: Int, n: Int, _ rng: inout SeededRNG) -> [Float] {
        var x = (0..<(k * n)).map { _ in rng.nextFloat() * 6 - 3 }
        if n > 2 { for p in 0..<k { x[p * n + 1] = 0 }; x[2] = 1e4 }
        return x
    }

    func mismatch(_ a: [Float], _ b: [Float]) -> (count: Int, maxDiff: Float) {
        var count = 0, maxDiff: Float = 0
        for (x, y) in zip(a, b) where x.bitPattern != y.bitPattern { count += 1; maxDiff = max(maxDiff, abs(x - y)) }
        return (count, maxDiff)
    }

    /// Mapping the image tower's pages ahead of its first forward reads an int8 weight's own
    /// bytes: its values (a byte each) and its scales (a float a row), not `count` floats from
    /// the scales, which run past them. Here the scales end where a page that may not be read
    /// begins, so reading a byte beyond them faults and the test process crashes.
    func testPrefaultOfAnInt8WeightStaysInsideItsBytes() throws {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let rows = 4, columns = 64
        // Two pages, then a page that may not be read (the next mapping could otherwise be right there).
        let base = try XCTUnwrap(mmap(nil, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        XCTAssertNotEqual(base, MAP_FAILED)
        defer { munmap(base, 3 * page) }
        XCTAssertEqual(mprotect(base + 2 * page, page, PROT_NONE), 0)
        let values = base.assumingMemoryBound(to: Int8.self)
        for i in 0..<(rows * columns) { values[i] = Int8(i % 100) }
        let scales = (base + 2 * page - rows * MemoryLayout<Float>.stride).assumingMemoryBound(to: Float.self)
        for r in 0..<rows { scales[r] = 0.5 }
        let q = Int8Weight(rows: rows, columns: columns, values: values, scales: scales, owners: [])
        CLIP.prefault(Tensor(shape: [rows, columns], int8: q))
        XCTAssertEqual(q.rowSums[0], Int32((0..<columns).reduce(0) { $0 + $1 % 100 }), "the weight is untouched")
    }

    /// Both layouts (columns contiguous, as image planes; K contiguous, as tokens), sizes that
    /// leave partial row tiles and panels, and a product large enough to be split over the cores.
    func testInt8ProductEqualsScalarReferenceBitForBit() {
        var rng = SeededRNG(seed: 5)
        forEachInt8Kernel { isa in
            for (m, k, n) in [(1, 4, 1), (7, 96, 5), (50, 388, 33), (13, 12, 100), (200, 256, 400)] {
                let w = Self.weight(rows: m, columns: k, &rng)
                let bias = (0..<m).map { _ in rng.nextFloat() }
                let x = Self.activations(k: k, n: n, &rng)
                for tokens in [false, true] {
                    // tokens: X stored N x K (element (p, j) at x[j*k + p]).
                    let xs = tokens ? (0..<(k * n)).map { i in x[(i % k) * n + i / k] } : x
                    let (rsx, csx) = tokens ? (1, k) : (n, 1)
                    var got = [Float](repeating: .nan, count: m * n), want = got
                    bias.withUnsafeBufferPointer { b in xs.withUnsafeBufferPointer { xp in
                        got.withUnsafeMutableBufferPointer {
                            Kernels.int8Product(w, xp.baseAddress!, rsx: rsx, csx: csx, n: n, into: $0.baseAddress!, epilogue: .store(bias: b.baseAddress!))
                        }
                        want.withUnsafeMutableBufferPointer {
                            Kernels.int8ProductReference(w, xp.baseAddress!, rsx: rsx, csx: csx, n: n, bias: b.baseAddress!, into: $0.baseAddress!)
                        }
                    } }
                    let (bad, diff) = mismatch(got, want)
                    XCTAssertEqual(bad, 0, "\(isa) M \(m) K \(k) N \(n) tokens \(tokens): \(bad) values differ, max abs diff \(diff)")
                }
            }
        }
    }

    /// Bias + GELU and layer scale + residual applied in the int8 epilogue equal the store
    /// followed by the separate Swift passes, bit for bit.
    func testInt8FusedEpiloguesEqualSeparatePasses() {
        var rng = SeededRNG(seed: 8)
        forEachInt8Kernel { isa in
            for (m, k, n) in [(12, 96, 64), (50, 388, 37), (96, 192, 300)] {
                let w = Self.weight(rows: m, columns: k, &rng)
                let bias = (0..<m).map { _ in rng.nextFloat() - 0.5 }, scale = (0..<m).map { _ in rng.nextFloat() }
                let x = Self.activations(k: k, n: n, &rng), d0 = (0..<(m * n)).map { _ in rng.nextFloat() }
                var store = [Float](repeating: 0, count: m * n)
                bias.withUnsafeBufferPointer { b in x.withUnsafeBufferPointer { xp in store.withUnsafeMutableBufferPointer {
                    Kernels.int8ProductReference(w, xp.baseAddress!, rsx: n, csx: 1, n: n, bias: b.baseAddress!, into: $0.baseAddress!)
                } } }
                var gelu = store
                gelu.withUnsafeMutableBufferPointer { Kernels.gelu($0.baseAddress!, count: m * n) }
                let residual = (0..<(m * n)).map { i in d0[i] + scale[i / n] * store[i] }
                var gotGELU = [Float](repeating: .nan, count: m * n), scratch = gotGELU, gotResidual = d0
                bias.withUnsafeBufferPointer { b in scale.withUnsafeBufferPointer { s in x.withUnsafeBufferPointer { xp in
                    gotGELU.withUnsafeMutableBufferPointer {
                        Kernels.int8Product(w, xp.baseAddress!, rsx: n, csx: 1, n: n, into: $0.baseAddress!, epilogue: .biasGELU(bias: b.baseAddress!))
                    }
                    gotResidual.withUnsafeMutableBufferPointer { d in scratch.withUnsafeMutableBufferPointer {
                        Kernels.int8Product(w, xp.baseAddress!, rsx: n, csx: 1, n: n, into: $0.baseAddress!,
                                            epilogue: .residual(bias: b.baseAddress!, scale: s.baseAddress!, into: d.baseAddress!))
                    } }
                } } }
                let g = mismatch(gotGELU, gelu), r = mismatch(gotResidual, residual)
                XCTAssertEqual(g.count, 0, "\(isa) M \(m) K \(k) N \(n) bias + GELU: \(g.count) differ, max abs diff \(g.maxDiff)")
                XCTAssertEqual(r.count, 0, "\(isa) M \(m) K \(k) N \(n) residual: \(r.count) differ, max abs diff \(r.maxDiff)")
            }
        }
    }

    static let int8Path: String = {
        let out = Fixtures.tempDir() + "/golden-int8.lcw"
        _ = try! Quantizer.quantize(input: ModelParityTests.lcwPath, output: out)
        return out
    }()

    /// The golden model's int8 file against its f32 one: embeddings of the reference images and
    /// texts at cosine 0.995 or more, the same top-1 text for every image, and `verify` against
    /// PyTorch's f32 outputs passes with the int8 tolerances.
    func testGoldenInt8AgreesWithF32AndPyTorch() throws {
        let f32 = try LiteCLIPModel(path: ModelParityTests.lcwPath), int8 = try LiteCLIPModel(path: Self.int8Path)
        XCTAssertTrue(int8.isInt8)
        XCTAssertFalse(f32.isInt8)
        let ref = try SafetensorsReader.read(ByteSource(mapping: ModelParityTests.reference))
        let names = try JSONDecoder().decode([String].self, from: Data(ref.metadata["images"]!.utf8))
        let texts = try JSONDecoder().decode([String].self, from: Data(ref.metadata["texts"]!.utf8))
        let paths = names.map { Fixtures.root + "/golden/" + $0 }
            + ["cat.jpg", "car.jpg", "dancing.jpg", "catstuckindoor.jpeg"].map { Fixtures.seed + "/examples/" + $0 }
        let labels = texts + ["a bowl of fruit", "a mountain at night", "an empty street in the rain"].filter { !texts.contains($0) }
        let d = f32.config.projectionDim
        func minCosine(_ a: Embeddings, _ b: Embeddings) -> Float {
            (0..<(a.values.count / d)).map { r in (0..<d).reduce(Float(0)) { $0 + a.values[r * d + $1] * b.values[r * d + $1] } }.min()!
        }
        let images = try paths.map { try RGBImage(contentsOf: URL(fileURLWithPath: $0)) }
        let ci = minCosine(try f32.embed(images: images), try int8.embed(images: images))
        let ct = minCosine(try f32.embed(texts: labels), try int8.embed(texts: labels))
        print("golden int8 vs f32: min cosine images \(ci), texts \(ct)")
        XCTAssertGreaterThanOrEqual(ci, 0.995, "image embeddings, min cosine \(ci)")
        XCTAssertGreaterThanOrEqual(ct, 0.995, "text embeddings, min cosine \(ct)")
        // Top-1 on the golden cases (the reference's images and texts). The golden model is small
        // and random: on other photos and labels its probabilities are near uniform (0.13 for 8
        // labels), where a top-1 says nothing of agreement.
        for p in paths.prefix(names.count) {
            let a = try f32.zeroShot(imagePath: p, labels: texts), b = try int8.zeroShot(imagePath: p, labels: texts)
            XCTAssertEqual(a.ranking.first?.label, b.ranking.first?.label, "\(p): top-1 f32 \(a.ranking[0]) int8 \(b.ranking[0])")
        }
        // A CPU without AVX2: OpenBLAS and the plain path for f32, the Swift loops for int8 (a
        // fresh model, so no tower is already built): the same embeddings up to float rounding.
        do {
            Kernels.forceOpenBLAS = true
            Kernels.forceSwiftInt8 = true
            defer { Kernels.forceOpenBLAS = false; Kernels.forceSwiftInt8 = false }
            let plain = try LiteCLIPModel(path: Self.int8Path)
            let a = try int8.embed(images: Array(images.prefix(3))), b = try plain.embed(images: Array(images.prefix(3)))
            let diff = zip(a.values, b.values).map { abs($0 - $1) }.max()!
            XCTAssertLessThanOrEqual(diff, 1e-4, "int8 on the Swift loops vs the C kernels: max abs diff \(diff)")
        }
        let v = try Verification.run(model: int8, reference: ModelParityTests.reference)
        print(v.report)
        XCTAssertTrue(v.passed, v.report)
        XCTAssertEqual(v.rows.map(\.name), ["image_features", "text_features", "image 1-cosine", "text 1-cosine", "logits_per_image",
                                            "probs_per_image", "top-1 differs", "pixel_values"])
        XCTAssertTrue(v.notes.contains { $0.hasPrefix("int8 weights: compared with the int8 tolerances") }, v.notes.joined(separator: "\n"))
        // The f32 model under the int8 tolerances' rows would not be asked to: it keeps its own.
        XCTAssertFalse(try Verification.run(model: f32, reference: ModelParityTests.reference).rows.contains { $0.name == "top-1 differs" })
    }

    /// What the int8 file holds, and the commands around it.
    func testQuantizeCommandAndWhatRefusesInt8() throws {
        let dir = Fixtures.tempDir(), q = dir + "/q.lcw"
        let r = try CLITests.run("liteclip", ["quantize", ModelParityTests.lcwPath, q, "--json"])
        XCTAssertEqual(r.status, 0, r.err)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any])
        XCTAssertEqual(json["quantized"] as? Int, 68)
        let file = try LiteCLIPFile.open(q)
        XCTAssertEqual(file.metadata.quantization?.tensors, 68)
        let byName = Dictionary(uniqueKeysWithValues: file.tensors.map { ($0.name, $0) })
        let quantizable = LiteCLIPParameters.expected(for: file.metadata.model).filter(\.quantizable).map(\.name)
        XCTAssertEqual(quantizable.count, 68)
        for name in quantizable {
            XCTAssertEqual(byName[name]?.dtype, .i8, name)
            XCTAssertEqual(byName[name + "_scale"]?.dtype, .f32, name)
            XCTAssertEqual(byName[name + "_scale"]?.shape, [byName[name]!.shape[0]], name)
        }
        for name in ["logit_scale", "image_encoder.backbone.stages.0.blocks.0.conv_dw.weight", "image_encoder.backbone.stages.0.blocks.0.gamma",
                     "text_encoder.backbone.embeddings.position_embeddings.weight", "img_projection.ln.weight"] {
            XCTAssertEqual(byName[name]?.dtype, .f32, name)
        }
        XCTAssertTrue(byName.keys.contains("text_encoder.backbone.embeddings.word_embeddings.weight_scale"))
        // liteclip-convert --dtype int8 writes the same tensors.
        let c = dir + "/c.lcw"
        let rc = try CLITests.run("liteclip-convert", [Fixtures.golden("liteclip2.pt"), c, "--dtype", "int8", "--vocab", Fixtures.vocab, "-q"])
        XCTAssertEqual(rc.status, 0, rc.err)
        let converted = try LiteCLIPFile.open(c)
        XCTAssertEqual(converted.tensors.map(\.name), file.tensors.map(\.name))
        for (a, b) in zip(converted.tensors, file.tensors) { XCTAssertEqual(try a.load().sha256(), try b.load().sha256(), a.name) }
        // inspect shows the int8 tensors; quantize again, export and train refuse.
        let i = try CLITests.run("liteclip", ["inspect", q])
        XCTAssertTrue(i.out.contains("i8"), i.out)
        XCTAssertTrue(i.out.contains("quantization: 68 weights int8, symmetric, one f32 scale per row in <weight>_scale"), i.out)
        let again = try CLITests.run("liteclip", ["quantize", q, dir + "/qq.lcw"])
        XCTAssertEqual(again.status, 1)
        XCTAssertTrue(again.err.contains("already int8"), again.err)
        let e = try CLITests.run("liteclip", ["export", q, dir + "/q.pt"])
        XCTAssertEqual(e.status, 1)
        XCTAssertTrue(e.err.contains("int8 model") && e.err.contains("not exported"), e.err)
        try "image,caption\ncat.jpg,a cat\ncar.jpg,a car\n".write(toFile: dir + "/captions.txt", atomically: true, encoding: .utf8)
        let t = try CLITests.run("liteclip", ["train", q, "--captions", dir + "/captions.txt", "--images", Fixtures.seed + "/examples",
                                              "--out", dir + "/t.lcw", "--epochs", "1", "-q"])
        XCTAssertEqual(t.status, 1)
        XCTAssertTrue(t.err.contains("int8") && t.err.contains("train the f32 model"), t.err)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("qq") || $0.hasPrefix("t.lcw") || $0.hasSuffix(".pt") }, [])
    }

    /// Strict loading of int8 files: a weight without its scales, and an int8 tensor where the
    /// model takes no int8 (a LayerNorm weight), are refused by name.
    func testStrictLoadingOfInt8Files() throws {
        let file = try LiteCLIPFile.open(Self.int8Path)
        let out = Fixtures.tempDir() + "/broken.lcw"
        let scale = "image_encoder.backbone.stages.1.blocks.2.mlp.fc2.weight_scale"
        try LCWWriter.write(to: out, tensors: file.tensors.filter { $0.name != scale }, metadata: file.metadata)
        XCTAssertThrowsError(try LiteCLIPModel(path: out)) { e in XCTAssertTrue("\(e)".contains(scale), "\(e)") }
        let norm = "img_projection.ln.weight"
        let tensors = file.tensors.map { t in
            t.name != norm ? t : Checkpoint.Tensor(name: t.name, dtype: .i8, shape: t.shape, origin: "test") {
                TensorBytes(owning: [UInt8](repeating: 1, count: t.elementCount))
            }
        }
        try LCWWriter.write(to: out, tensors: tensors, metadata: file.metadata)
        XCTAssertThrowsError(try LiteCLIPModel(path: out)) { e in
            XCTAssertTrue("\(e)".contains(norm) && "\(e)".contains("expected a floating-point tensor"), "\(e)")
        }
    }
}
