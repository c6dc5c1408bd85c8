import Foundation
import XCTest
@testable import LiteCLIP
@testable import TensorIO
import TestSupport

/// The Swift model against PyTorch on the committed reference (golden/reference.safetensors,
/// made by golden/make_reference.py from golden/liteclip2.pt): every stage, printing max diffs.
final class ModelParityTests: XCTestCase {
    static var lcwPath: String = {
        let out = Fixtures.tempDir() + "/golden.lcw"
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        _ = try! Converter.convert(input: Fixtures.golden("liteclip2.pt"), output: out, options: o)
        return out
    }()
    static let reference = Fixtures.golden("reference.safetensors")

    func testVerifyPassesOnTheCommittedReference() throws {
        let model = try LiteCLIPModel(path: Self.lcwPath)
        let v = try Verification.run(model: model, reference: Self.reference)
        print(v.report)
        XCTAssertTrue(v.passed, v.report)
        XCTAssertEqual(v.rows.map(\.name), ["image_features", "text_features", "image_embeds", "text_embeds", "logits_per_image", "probs_per_image", "pixel_values"])
        XCTAssertTrue(v.notes.contains { $0.hasPrefix("tokenizer: ids equal") }, v.notes.joined(separator: "\n"))
    }

    /// Images decoded ahead (while the model opens) embed exactly as images decoded in the run,
    /// a file that does not decode is skipped for the same reason, and files not decoded ahead
    /// (past the first two, or named twice) are decoded as usual.
    func testDecodeAheadEqualsDecodingInTheRun() throws {
        let dir = Fixtures.tempDir()
        let bad = dir + "/broken.jpg"
        try Data([0xFF, 0xD8, 0xFF, 0x00, 0x01]).write(to: URL(fileURLWithPath: bad))
        let good = ["jpeg_progressive_333x250.jpg", "png_grey16_80x60.png", "jpeg_tall_250x700.jpg"].map { Fixtures.golden("images/" + $0) }
        let files = [good[0], bad, good[1], good[2], good[0]]
        let ahead = DecodeAhead(files)
        let model = try LiteCLIPModel(path: Self.lcwPath)
        let plain = try Embedder.images(files, model: model, batchSize: 2)
        let fast = try Embedder.images(files, model: model, batchSize: 2, ahead: ahead)
        XCTAssertEqual(fast.files, plain.files)
        XCTAssertEqual(fast.files, [good[0], good[1], good[2], good[0]])
        XCTAssertEqual(fast.skipped.map(\.file), [bad])
        XCTAssertEqual(fast.skipped.map(\.reason), plain.skipped.map(\.reason))
        XCTAssertEqual(fast.embeddings.values, plain.embeddings.values, "max diff \(zip(fast.embeddings.values, plain.embeddings.values).map { abs($0 - $1) }.max() ?? 0)")
        XCTAssertNil(ahead.take(good[0]), "each file decoded ahead is taken once")
    }

    /// f16 / bf16-stored weights against PyTorch running the same rounded weights.
    func testHalfPrecisionWeights() throws {
        for (dtype, ref) in [(DType.f16, "reference_f16.safetensors"), (.bf16, "reference_bf16.safetensors")] {
            let out = Fixtures.tempDir() + "/m.lcw"
            var o = Converter.Options()
            o.vocabPath = Fixtures.vocab
            o.dtype = dtype
            _ = try Converter.convert(input: Fixtures.golden("liteclip2.pt"), output: out, options: o)
            let v = try Verification.run(model: try LiteCLIPModel(path: out), reference: Fixtures.golden(ref))
            XCTAssertTrue(v.passed, "\(dtype):\n" + v.report)
        }
    }

    /// The image pipeline feeding the model: our pixels for the reference images equal PyTorch's.
    func testPipelinePixelsMatchTheReference() throws {
        let ref = try SafetensorsReader.read(ByteSource(mapping: Self.reference))
        let names = try JSONDecoder().decode([String].self, from: Data(ref.metadata["images"]!.utf8))
        let px = ref.tensors.first { $0.name == "pixel_values" }!
        let want = try px.load().withBytes { Array($0.bindMemory(to: Float.self)) }
        let model = try LiteCLIPModel(path: Self.lcwPath)
        let per = 3 * 224 * 224
        for (i, name) in names.enumerated() {
            let mine = try model.pixelValues(imagePath: Fixtures.root + "/golden/" + name)
            let maxDiff = zip(mine, want[(i * per)..<((i + 1) * per)]).map { abs($0 - $1) }.max() ?? .infinity
            XCTAssertLessThanOrEqual(maxDiff, 1e-6, "\(name): max abs diff \(maxDiff)")
        }
    }

    /// `zero-shot` on a real photo gives PyTorch's logits for the same labels.
    func testZeroShotMatchesPyTorch() throws {
        let ref = try SafetensorsReader.read(ByteSource(mapping: Self.reference))
        let names = try JSONDecoder().decode([String].self, from: Data(ref.metadata["images"]!.utf8))
        let texts = try JSONDecoder().decode([String].self, from: Data(ref.metadata["texts"]!.utf8))
        let logits = try ref.tensors.first { $0.name == "logits_per_image" }!.load().withBytes { Array($0.bindMemory(to: Float.self)) }
        let model = try LiteCLIPModel(path: Self.lcwPath)
        let i = try XCTUnwrap(names.firstIndex { $0.hasSuffix("cat.jpg") })
        let r = try model.zeroShot(imagePath: Fixtures.root + "/golden/" + names[i], labels: texts)
        let want = Array(logits[(i * texts.count)..<((i + 1) * texts.count)])
        let maxDiff = zip(r.logits, want).map { abs($0 - $1) }.max()!
        XCTAssertLessThanOrEqual(maxDiff, 1e-4, "logits \(r.logits) vs \(want)")
        XCTAssertEqual(r.ranking.count, texts.count)
        XCTAssertEqual(r.probabilities.reduce(0, +), 1, accuracy: 1e-5)
        XCTAssertTrue(zip(r.ranking, r.ranking.dropFirst()).allSatisfy { $0.probability >= $1.probability })
    }

    func testStrictLoading() throws {
        // A .lcw whose tensor set does not match its config is refused with every name listed.
        let lcw = try LCWReader.open(Self.lcwPath)
        let meta = try JSONDecoder().decode(LCWMetadata.self, from: lcw.metadataJSON)
        let out = Fixtures.tempDir() + "/broken.lcw"
        let kept = lcw.checkpoint.tensors.filter { $0.name != "txt_projection.ln.bias" }
        try LCWWriter.write(to: out, tensors: kept, metadata: meta)
        XCTAssertThrowsError(try LiteCLIPModel(path: out)) { e in
            XCTAssertEqual((e as? ModelError)?.missing, ["txt_projection.ln.bias [256]"], "\(e)")
        }
    }
}

extension Verification {
    /// Every compared output with its max abs error and tolerance, for failure messages.
    var report: String {
        (["reference \(reference)"] + notes + rows.map { "\($0.name): max abs \($0.maxAbs), max rel \($0.maxRel), tolerance \($0.tolerance) \($0.passed ? "ok" : "FAIL")" })
            .joined(separator: "\n")
    }
}
