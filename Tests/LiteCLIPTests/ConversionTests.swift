import Foundation
import XCTest
@testable import LiteCLIP
@testable import TensorIO
import TestSupport

/// .pt / .ckpt / safetensors -> .lcw -> mmap: every tensor of every golden variant bit-exact.
final class ConversionTests: XCTestCase {
    static let variants: [(file: String, prefix: String)] = [
        ("liteclip2.pt", ""), ("liteclip2_legacy.pt", ""), ("liteclip2_f16.pt", ""),
        ("liteclip2_bf16_ddp_cuda.pt", "module."), ("liteclip2_lightning.ckpt", "model."), ("liteclip2.safetensors", ""),
    ]

    func convert(_ rel: String, dtype: DType? = nil, textConfig: Bool = true) throws -> (Converter.Report, LiteCLIPFile) {
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        o.dtype = dtype
        if !textConfig { o.textConfigPath = nil }
        let out = Fixtures.tempDir() + "/out.lcw"
        let r = try Converter.convert(input: Fixtures.golden(rel), output: out, options: o)
        return (r, try LiteCLIPFile.open(out))
    }

    func testEveryVariantConvertsBitExactly() throws {
        let m = (Fixtures.manifest["model"] as! [String: Any])["config"] as! [String: Any]
        for (rel, prefix) in Self.variants {
            let (report, lcw) = try convert(rel)
            XCTAssertEqual(report.keyPrefix, prefix, rel)
            XCTAssertEqual(lcw.tensors.count, 260, rel)
            let want = Fixtures.tensors(rel)
            let byName = Dictionary(uniqueKeysWithValues: want.map { (String(($0["name"] as! String).dropFirst(prefix.count)), $0) })
            var bad: [String] = []
            for t in lcw.tensors {
                guard let w = byName[t.name] else { bad.append("\(t.name): not in the manifest"); continue }
                let sha = try t.load().sha256()
                if sha != w["sha256"] as! String || t.dtype.rawValue != w["dtype"] as! String || t.shape != w["shape"] as! [Int] {
                    bad.append("\(t.name): \(t.dtype) \(t.shape) \(sha) vs \(w["dtype"]!) \(w["shape"]!) \(w["sha256"]!)")
                }
            }
            XCTAssertTrue(bad.isEmpty, "\(rel):\n" + bad.joined(separator: "\n"))
            // Canonical order is the seed's state-dict order, whatever the source's order.
            XCTAssertEqual(lcw.tensors.map(\.name), Fixtures.tensors("liteclip2.pt").map { $0["name"] as! String }, rel)
            let c = lcw.metadata.model
            XCTAssertEqual(c.image.dims, m["convnext_dims"] as! [Int])
            XCTAssertEqual(c.image.depths, m["convnext_depths"] as! [Int])
            XCTAssertEqual(c.text.hiddenSize, m["bert_hidden"] as! Int)
            XCTAssertEqual(c.text.numHiddenLayers, m["bert_layers"] as! Int)
            XCTAssertEqual(c.text.numAttentionHeads, m["bert_heads"] as! Int, "heads come from golden/config.json beside the checkpoint")
            XCTAssertEqual(c.text.intermediateSize, m["bert_intermediate"] as! Int)
            XCTAssertEqual(c.text.vocabSize, 30522)
            XCTAssertEqual(c.projectionDim, 256)
            XCTAssertTrue(c.hasPooler)
            XCTAssertEqual(lcw.metadata.tokenizer.vocab.count, 30522)
            XCTAssertEqual(lcw.metadata.tokenizer.vocab[101], "[CLS]")
            XCTAssertEqual(lcw.metadata.preprocess, .seed)
            XCTAssertEqual(lcw.metadata.source.file, (rel as NSString).lastPathComponent)
            XCTAssertEqual(lcw.metadata.source.sha256, try ByteSource(mapping: Fixtures.golden(rel)).withBytes { SHA256.hex($0) })
        }
    }

    /// Our f32 -> f16 / bf16 rounding equals PyTorch's `.half()` / `.bfloat16()` bit for bit.
    func testDTypeConversionMatchesPyTorch() throws {
        for (dtype, ref, prefix) in [(DType.f16, "liteclip2_f16.pt", ""), (.bf16, "liteclip2_bf16_ddp_cuda.pt", "module.")] {
            let (_, lcw) = try convert("liteclip2.pt", dtype: dtype)
            let want = Dictionary(uniqueKeysWithValues: Fixtures.tensors(ref).map { (String(($0["name"] as! String).dropFirst(prefix.count)), $0["sha256"] as! String) })
            for t in lcw.tensors {
                XCTAssertEqual(t.dtype, dtype)
                XCTAssertEqual(try t.load().sha256(), want[t.name], "\(dtype) \(t.name)")
            }
        }
        // And back up: f16 -> f32 widening is exact, so f16 -> f32 -> f16 is the identity.
        let (_, up) = try convert("liteclip2_f16.pt", dtype: .f32)
        let down = up.tensors.map { DTypeConversion.convert(try! $0.load(), from: .f32, to: .f16) }
        let ref = Fixtures.tensors("liteclip2_f16.pt")
        for (b, w) in zip(down, ref) { XCTAssertEqual(b.sha256(), w["sha256"] as! String) }
    }

    func testConversionIsReproducible() throws {
        let dir = Fixtures.tempDir()
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        _ = try Converter.convert(input: Fixtures.golden("liteclip2.pt"), output: dir + "/a.lcw", options: o)
        _ = try Converter.convert(input: Fixtures.golden("liteclip2.pt"), output: dir + "/b.lcw", options: o)
        XCTAssertEqual(FileManager.default.contents(atPath: dir + "/a.lcw"), FileManager.default.contents(atPath: dir + "/b.lcw"))
    }
}
