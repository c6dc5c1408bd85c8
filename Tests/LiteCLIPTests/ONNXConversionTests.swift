import Foundation
import XCTest
@testable import LiteCLIP
@testable import TensorIO
import TestSupport

/// Both PyTorch exporters' files (golden/onnx/, made by golden/generate_onnx.py from
/// golden/liteclip2.pt) give the same parameters as the .pt, bit for bit, and the same model.
final class ONNXConversionTests: XCTestCase {
    static let files = ["onnx/liteclip2_torchscript.onnx", "onnx/liteclip2_dynamo.onnx"]

    func convert(_ rel: String) throws -> (Converter.Report, LiteCLIPFile) {
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        o.textConfigPath = Fixtures.golden("config.json")
        let out = Fixtures.tempDir() + "/onnx.lcw"
        let r = try Converter.convert(input: Fixtures.golden(rel), output: out, options: o)
        return (r, try LiteCLIPFile.open(out))
    }

    func testParametersEqualThePtBitForBit() throws {
        let want = Dictionary(uniqueKeysWithValues: Fixtures.tensors("liteclip2.pt").map { ($0["name"] as! String, $0) })
        for rel in Self.files {
            let (report, lcw) = try convert(rel)
            XCTAssertEqual(report.keyPrefix, "m.", rel)
            XCTAssertFalse(lcw.metadata.model.hasPooler, "both exporters drop BERT's unused pooler")
            XCTAssertEqual(lcw.tensors.count, 258, rel)
            var bad: [String] = []
            for t in lcw.tensors {
                guard let w = want[t.name] else { bad.append("\(t.name): not a .pt tensor"); continue }
                if try t.load().sha256() != w["sha256"] as! String || t.shape != w["shape"] as! [Int] { bad.append(t.name) }
            }
            XCTAssertTrue(bad.isEmpty, "\(rel): tensors differing from the .pt:\n" + bad.joined(separator: "\n"))
            let wantNames = Fixtures.tensors("liteclip2.pt").map { $0["name"] as! String }.filter { !$0.contains(".pooler.") }
            XCTAssertEqual(lcw.tensors.map(\.name), wantNames, "\(rel): canonical order")
        }
    }

    func testTorchScriptLayoutsAreReported() throws {
        let (report, _) = try convert("onnx/liteclip2_torchscript.onnx")
        XCTAssertTrue(report.notes.contains { $0.hasPrefix("m.image_encoder.backbone.stages.0.blocks.0.mlp.fc1.weight <- onnx::MatMul_") && $0.hasSuffix("(transposed)") }, report.notes.joined(separator: "\n"))
        XCTAssertTrue(report.notes.contains { $0.hasPrefix("m.image_encoder.backbone.stages.0.blocks.0.gamma <- onnx::Mul_") && $0.hasSuffix("(flattened)") })
        XCTAssertTrue(report.notes.contains { $0.hasPrefix("m.text_encoder.backbone.encoder.layer.3.attention.self.query.weight <- ") })
    }

    func testOnnxConvertedModelVerifiesAgainstPyTorch() throws {
        for rel in Self.files {
            let (_, lcw) = try convert(rel)
            let v = try Verification.run(model: try LiteCLIPModel(lcw), reference: Fixtures.golden("reference.safetensors"))
            XCTAssertTrue(v.passed, "\(rel):\n" + v.text())
        }
    }

    func testInspectListsTheGraphAndEveryInitializer() throws {
        let i = try Inspection.inspect(Fixtures.golden("onnx/liteclip2_torchscript.onnx"))
        XCTAssertEqual(i.format, .onnx)
        XCTAssertEqual(i.rows.count, try ONNXReader.read(ByteSource(mapping: Fixtures.golden("onnx/liteclip2_torchscript.onnx"))).initializers.count)
        let text = i.text()
        XCTAssertTrue(text.contains("input: pixel_values f32"), text)
        XCTAssertTrue(text.contains("ops: "), text)
        XCTAssertNotNil(i.onnx?["op_counts"])
    }

    func testNotLiteCLIPGraph() throws {
        XCTAssertThrowsError(try ONNXParameters.stateDict(from: ONNXReader.read(ByteSource(mapping: Fixtures.golden("onnx_cases/dtypes_raw.onnx"))))) {
            XCTAssertEqual(($0 as? ModelError)?.code, .notLiteCLIP, "\($0)")
        }
    }
}
