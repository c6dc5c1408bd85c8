import Foundation
import LiteCLIP
import TestSupport
import XCTest

/// Runs the built executables as a user would and checks their output.
final class CLITests: XCTestCase {
    static let binDir: String = {
        URL(fileURLWithPath: Bundle.main.executablePath ?? CommandLine.arguments[0]).deletingLastPathComponent().path
    }()

    struct Result { let status: Int32; let out: String; let err: String }

    func run(_ tool: String, _ args: [String]) throws -> Result { try Self.run(tool, args) }

    static func run(_ tool: String, _ args: [String]) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool.hasPrefix("/") ? tool : Self.binDir + "/" + tool)
        p.arguments = args
        let o = Pipe(), e = Pipe()
        p.standardOutput = o
        p.standardError = e
        try p.run()
        let out = o.fileHandleForReading.readDataToEndOfFile()
        let err = e.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, out: String(decoding: out, as: UTF8.self), err: String(decoding: err, as: UTF8.self))
    }

    func testBinariesWereBuilt() {
        for tool in ["liteclip-convert", "liteclip"] {
            XCTAssertTrue(FileManager.default.isExecutableFile(atPath: Self.binDir + "/" + tool), "\(tool) in \(Self.binDir)")
        }
    }

    func testConvertThenInspectAgreesWithPyTorch() throws {
        let dir = Fixtures.tempDir()
        let r = try run("liteclip-convert", [Fixtures.golden("liteclip2_lightning.ckpt"), dir + "/m.lcw", "--vocab", Fixtures.vocab])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("nested under key 'state_dict'"), r.out)
        XCTAssertTrue(r.out.contains("key prefix 'model.' (removed)"), r.out)
        XCTAssertTrue(r.out.contains("tensors:    260 (260 f16)"), r.out)
        for file in [dir + "/m.lcw", Fixtures.golden("liteclip2_lightning.ckpt")] {
            let i = try run("liteclip", ["inspect", file, "--json"])
            XCTAssertEqual(i.status, 0, i.err)
            let obj = try JSONSerialization.jsonObject(with: Data(i.out.utf8)) as! [String: Any]
            // Every tensor by its full path; the weights are those in the state dict's container
            // (the .ckpt also lists its optimizer moments), compared by their key there.
            let all = obj["tensors"] as! [[String: Any]]
            let rows = all.filter { ($0["container"] as! [String]) == (file.hasSuffix(".ckpt") ? ["state_dict"] : []) }
            let want = Dictionary(uniqueKeysWithValues: Fixtures.tensors("liteclip2_lightning.ckpt").map {
                (String(($0["name"] as! String).dropFirst("model.".count)), $0["sha256"] as! String)
            })
            XCTAssertEqual(rows.count, 260)
            XCTAssertEqual(all.count, file.hasSuffix(".ckpt") ? 263 : 260)
            for row in rows {
                let name = (row["key"] as! String).replacingOccurrences(of: "model.", with: "", options: .anchored)
                XCTAssertEqual(row["sha256"] as? String, want[name], "\(file): \(name)")
                XCTAssertEqual(row["name"] as? String, ((row["container"] as! [String]) + [row["key"] as! String]).joined(separator: "."))
            }
        }
        let text = try run("liteclip", ["inspect", dir + "/m.lcw"])
        XCTAssertTrue(text.out.contains("format: lcw"), text.out)
        XCTAssertTrue(text.out.contains("tokenizer: 30522 tokens"), text.out)
    }

    func testBadInputFailsCleanlyAndWritesNothing() throws {
        let dir = Fixtures.tempDir()
        let cases: [(String, String)] = [
            (Fixtures.golden("cases/torchscript.pt"), "TorchScript"),
            (Fixtures.golden("cases/whole_module.pt"), "whole pickled model"),
            (Fixtures.golden("cases/views.pt"), "not a liteCLIP checkpoint"),
            (Fixtures.golden("README.md"), "not a PyTorch checkpoint"),
            (dir + "/missing.pt", "no such checkpoint"),
        ]
        for (input, message) in cases {
            let r = try run("liteclip-convert", [input, dir + "/o.lcw", "--vocab", Fixtures.vocab])
            XCTAssertEqual(r.status, 1, input)
            XCTAssertTrue(r.err.contains(message), "\(input): \(r.err)")
            XCTAssertTrue(r.err.contains(input), "error names the file: \(r.err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/o.lcw"))
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
        // Every hostile ONNX file: exit 1, an error naming the file, nothing written.
        let hostile = try FileManager.default.contentsOfDirectory(atPath: Fixtures.golden("onnx_cases/hostile")).filter { $0.hasSuffix(".onnx") }
        XCTAssertGreaterThan(hostile.count, 20)
        for h in hostile.sorted() {
            let input = Fixtures.golden("onnx_cases/hostile/" + h)
            let r = try run("liteclip-convert", [input, dir + "/o.lcw", "--vocab", Fixtures.vocab])
            XCTAssertEqual(r.status, 1, h)
            XCTAssertTrue(r.err.contains("liteclip-convert: error: "), "\(h): \(r.err)")
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [], h)
        }
        let bad = try run("liteclip-convert", [Fixtures.golden("liteclip2.pt"), dir + "/o.lcw", "--dtype", "f8"])
        XCTAssertNotEqual(bad.status, 0)
    }
}

/// verify, zero-shot and embed as a user runs them.
final class InferenceCLITests: XCTestCase {
    static let lcw: String = {
        let out = Fixtures.tempDir() + "/golden.lcw"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLITests.binDir + "/liteclip-convert")
        p.arguments = [Fixtures.golden("liteclip2.pt"), out, "--vocab", Fixtures.vocab, "-q"]
        p.standardOutput = FileHandle.nullDevice
        try! p.run()
        p.waitUntilExit()
        return out
    }()

    func run(_ args: [String]) throws -> CLITests.Result { try CLITests.run("liteclip", args) }

    func testVerify() throws {
        let ok = try run(["verify", Self.lcw, "--reference", Fixtures.golden("reference.safetensors")])
        XCTAssertEqual(ok.status, 0, ok.out + ok.err)
        XCTAssertTrue(ok.out.contains("PASS"), ok.out)
        XCTAssertTrue(ok.out.contains("logits_per_image"), ok.out)
        // The bf16 reference was computed with rounded weights: an f32 model must fail it.
        let bad = try run(["verify", Self.lcw, "--reference", Fixtures.golden("reference_bf16.safetensors")])
        XCTAssertEqual(bad.status, 1, bad.out)
        XCTAssertTrue(bad.out.contains("FAIL"), bad.out)
    }

    func testZeroShotPrintsTheSeedFormatAndJSON() throws {
        let cat = Fixtures.seed + "/examples/cat.jpg"
        let labels = ["a photo of a dog", "a photo of a cat", "the photo of a human baby"]
        let r = try run(["zero-shot", Self.lcw, cat] + labels)
        XCTAssertEqual(r.status, 0, r.err)
        let lines = r.out.split(separator: "\n")
        XCTAssertEqual(lines.count, 3)
        XCTAssertTrue(lines.allSatisfy { $0.range(of: #"^.+: \d+\.\d\d%$"#, options: .regularExpression) != nil }, r.out)
        let j = try run(["zero-shot", Self.lcw, cat] + labels + ["--json", "--top-k", "2"])
        let top = try JSONSerialization.jsonObject(with: Data(j.out.utf8)) as! [String: Any]
        let obj = (top["results"] as! [[String: Any]])[0]
        XCTAssertEqual(obj["image"] as? String, cat)
        XCTAssertEqual((obj["logits"] as! [Double]).count, 3)
        XCTAssertEqual((obj["ranking"] as! [[String: Any]]).count, 2)
        XCTAssertEqual((obj["probabilities"] as! [Double]).reduce(0, +), 1, accuracy: 1e-5)
        let one = try run(["zero-shot", Self.lcw, cat, "only one label"])
        XCTAssertNotEqual(one.status, 0)
        let missing = try run(["zero-shot", Self.lcw, "/nonexistent.jpg", "a", "b"])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.err.contains("/nonexistent.jpg"), missing.err)
    }

    func testEmbedWritesNpyInInputOrder() throws {
        let dir = Fixtures.tempDir()
        let texts = ["a dog", "a cat on a mat", "two people dancing"]
        let r = try run(["embed", Self.lcw, "--texts"] + texts + ["--out", dir + "/t.npy", "--batch-size", "2"])
        XCTAssertEqual(r.status, 0, r.err)
        let npy = try Data(contentsOf: URL(fileURLWithPath: dir + "/t.npy"))
        XCTAssertEqual(Array(npy.prefix(6)), [0x93] + Array("NUMPY".utf8))
        let headerLen = Int(npy[8]) | Int(npy[9]) << 8
        XCTAssertEqual((10 + headerLen) % 64, 0)
        let header = String(decoding: npy[10..<(10 + headerLen)], as: UTF8.self)
        XCTAssertTrue(header.contains("'shape': (3, 256)"), header)
        let rows = npy[(10 + headerLen)...].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        XCTAssertEqual(rows.count, 3 * 256)
        // Each row is unit length and equals the same text embedded alone.
        let model = try LiteCLIPModel(path: Self.lcw)
        for (i, t) in texts.enumerated() {
            let alone = model.textEmbeddings(model.tokenizer.encodeBatch([t]))
            let row = Array(rows[(i * 256)..<((i + 1) * 256)])
            XCTAssertEqual(row.map { $0 * $0 }.reduce(0, +), 1, accuracy: 1e-5)
            XCTAssertLessThan(zip(row, alone).map { abs($0 - $1) }.max()!, 1e-6, t)
        }
        let names = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/t.names.json"))) as! [String: Any]
        XCTAssertEqual(names["names"] as? [String], texts)
        XCTAssertEqual((names["skipped"] as? [Any])?.count, 0)
        let img = try run(["embed", Self.lcw, "--images", Fixtures.golden("images"), "--out", dir + "/i.npy", "--batch-size", "8"])
        XCTAssertEqual(img.status, 0, img.err)
        let inames = (try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: dir + "/i.names.json"))) as! [String: Any])["names"] as! [String]
        XCTAssertEqual(inames, inames.sorted())
        XCTAssertGreaterThan(inames.count, 20)
    }
}
