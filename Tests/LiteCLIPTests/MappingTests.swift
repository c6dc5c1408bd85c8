import Foundation
import TestSupport
import XCTest
@testable import LiteCLIP
@testable import TensorIO

/// Strict mapping (hostile-inputs.md item 28) and the converter's failure modes.
final class MappingTests: XCTestCase {
    let golden = try! TensorFile.open(Fixtures.golden("liteclip2.pt"))
    let textConfig = try! JSONDecoder().decode(BertConfig.self, from: FileManager.default.contents(atPath: Fixtures.golden("config.json"))!)

    func edited(_ edit: (inout [Checkpoint.Tensor]) -> Void) -> Checkpoint {
        var c = golden
        edit(&c.tensors)
        return c
    }

    func fake(_ name: String, _ shape: [Int], dtype: DType = .f32) -> Checkpoint.Tensor {
        Checkpoint.Tensor(name: name, dtype: dtype, shape: shape, origin: "test") {
            TensorBytes(owning: [UInt8](repeating: 0, count: shape.reduce(1, *) * dtype.size))
        }
    }

    func mappingError(_ c: Checkpoint, allow: Bool = false) -> ModelError? {
        do { _ = try CheckpointMapping(c, textConfig: textConfig, allowUnexpected: allow); return nil } catch { return error as? ModelError }
    }

    func testGoldenMapsWithTheSeedOrder() throws {
        let m = try CheckpointMapping(golden, textConfig: textConfig)
        XCTAssertEqual(m.tensors.count, 260)
        XCTAssertEqual(m.tensors.map(\.name), golden.tensors.map(\.name))
        XCTAssertEqual(m.keyPrefix, "")
        XCTAssertEqual(LiteCLIPParameters.expected(for: .seed).count, 260, "convnext_tiny + bert-mini with pooler")
    }

    func testEveryMissingAndMisShapedTensorIsListed() throws {
        let c = edited { ts in
            ts.removeAll { $0.name == "text_encoder.backbone.encoder.layer.2.attention.self.key.weight" || $0.name == "img_projection.ln.bias" }
            let i = ts.firstIndex { $0.name == "image_encoder.backbone.stages.3.blocks.1.mlp.fc2.weight" }!
            ts[i] = fake(ts[i].name, [64, 255])
        }
        let e = try XCTUnwrap(mappingError(c))
        XCTAssertEqual(e.code, .mapping)
        XCTAssertEqual(e.missing.sorted(), ["img_projection.ln.bias [256]", "text_encoder.backbone.encoder.layer.2.attention.self.key.weight [16, 16]"])
        XCTAssertEqual(e.mismatched, ["image_encoder.backbone.stages.3.blocks.1.mlp.fc2.weight: expected [64, 256], file has [64, 255]"])
        XCTAssertTrue(e.description.contains("missing (2)"), e.description)
    }

    func testUnexpectedTensorsFailUnlessAllowed() throws {
        let c = edited { $0.append(fake("text_encoder.backbone.extra.weight", [3])) }
        let e = try XCTUnwrap(mappingError(c))
        XCTAssertEqual(e.unexpected, ["text_encoder.backbone.extra.weight [3]"])
        let m = try CheckpointMapping(c, textConfig: textConfig, allowUnexpected: true)
        XCTAssertEqual(m.ignored, ["text_encoder.backbone.extra.weight"])
    }

    func testKnownUnusedBuffersAreDroppedAndNamed() throws {
        let c = edited { $0.append(fake("text_encoder.backbone.embeddings.position_ids", [1, 512], dtype: .i64)) }
        let m = try CheckpointMapping(c, textConfig: textConfig)
        XCTAssertEqual(m.ignored, ["text_encoder.backbone.embeddings.position_ids"])
        XCTAssertEqual(m.tensors.count, 260)
    }

    func testPoolerIsOptionalButNotHalfPresent() throws {
        let none = edited { $0.removeAll { $0.name.contains(".pooler.") } }
        let m = try CheckpointMapping(none, textConfig: textConfig)
        XCTAssertEqual(m.tensors.count, 258)
        XCTAssertFalse(m.config.hasPooler)
        let half = edited { $0.removeAll { $0.name.hasSuffix("pooler.dense.bias") } }
        XCTAssertEqual(mappingError(half)?.missing, ["text_encoder.backbone.pooler.dense.bias"])
    }

    func testPrefixesAreFoundOnceFromAnAnchor() throws {
        for prefix in ["module.", "model.", "_orig_mod.", "model._orig_mod.", "clip.module."] {
            let c = edited { ts in ts = ts.map { t in Checkpoint.Tensor(name: prefix + t.name, dtype: t.dtype, shape: t.shape, origin: t.origin, loader: t.load) } }
            let m = try CheckpointMapping(c, textConfig: textConfig)
            XCTAssertEqual(m.keyPrefix, prefix)
            XCTAssertEqual(m.tensors.map(\.name), golden.tensors.map(\.name))
        }
    }

    func testNotLiteCLIP() throws {
        var c = golden
        c.tensors = [fake("fc.weight", [2, 2]), fake("fc.bias", [2])]
        XCTAssertEqual(mappingError(c)?.code, .notLiteCLIP)
    }

    func testConfigIsInferredFromShapes() throws {
        let m = try CheckpointMapping(golden, textConfig: nil)
        XCTAssertEqual(m.config.image.dims, [8, 16, 32, 64])
        XCTAssertEqual(m.config.image.depths, [3, 3, 9, 3])
        XCTAssertEqual(m.config.text.hiddenSize, 16)
        XCTAssertEqual(m.config.text.numAttentionHeads, 1, "without a config: max(1, hidden/64)")
        var wrong = textConfig
        wrong.intermediateSize = 128
        XCTAssertThrowsError(try CheckpointMapping(golden, textConfig: wrong)) { XCTAssertEqual(($0 as? ModelError)?.code, .badConfig) }
    }

    // MARK: - Converter failure modes

    func testTokenizerIsRequiredAndMustMatch() throws {
        let dir = Fixtures.tempDir()
        try FileManager.default.copyItem(atPath: Fixtures.golden("liteclip2.pt"), toPath: dir + "/liteclip2.pt")
        XCTAssertThrowsError(try Converter.convert(input: dir + "/liteclip2.pt", output: dir + "/o.lcw", options: .init())) {
            XCTAssertEqual(($0 as? ModelError)?.code, .missingTokenizer)
        }
        try "[PAD]\n[UNK]\n[CLS]\n[SEP]\n".write(toFile: dir + "/vocab.txt", atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try Converter.convert(input: dir + "/liteclip2.pt", output: dir + "/o.lcw", options: .init())) {
            XCTAssertEqual(($0 as? ModelError)?.code, .badTokenizer, "\($0)")
        }
        // The seed's tokenizer.json beside it works as well as vocab.txt.
        try FileManager.default.removeItem(atPath: dir + "/vocab.txt")
        try FileManager.default.copyItem(atPath: Fixtures.seed + "/model/tokenizer.json", toPath: dir + "/tokenizer.json")
        let r = try Converter.convert(input: dir + "/liteclip2.pt", output: dir + "/o.lcw", options: .init())
        XCTAssertEqual(r.tokenizerFile, dir + "/tokenizer.json")
        let viaJSON = try LiteCLIPFile.open(dir + "/o.lcw").metadata.tokenizer
        XCTAssertEqual(viaJSON.vocab, try TokenizerSpec.load(vocabTxt: Fixtures.vocab).vocab)
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: dir)), ["liteclip2.pt", "tokenizer.json", "o.lcw"])
    }

    func testAFailureMidwayLeavesNoOutput() throws {
        struct DiskOnFire: Error {}
        let dir = Fixtures.tempDir()
        let c = edited { ts in
            let i = 200
            let t = ts[i]
            ts[i] = Checkpoint.Tensor(name: t.name, dtype: t.dtype, shape: t.shape, origin: t.origin) { throw DiskOnFire() }
        }
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        let src = try ByteSource(mapping: Fixtures.golden("liteclip2.pt"))
        var progressCalls = 0
        XCTAssertThrowsError(try Converter.convert(c, source: src, input: Fixtures.golden("liteclip2.pt"), output: dir + "/o.lcw",
                                                   options: o, progress: { _, _ in progressCalls += 1 }))
        XCTAssertGreaterThan(progressCalls, 100, "the failure came after writing had started")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }

    func testOutputMustNotBeTheInput() throws {
        let dir = Fixtures.tempDir()
        try FileManager.default.copyItem(atPath: Fixtures.golden("liteclip2.pt"), toPath: dir + "/m.pt")
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        XCTAssertThrowsError(try Converter.convert(input: dir + "/m.pt", output: dir + "/m.pt", options: o))
        XCTAssertEqual(FileManager.default.contents(atPath: dir + "/m.pt"), FileManager.default.contents(atPath: Fixtures.golden("liteclip2.pt")))
    }
}
