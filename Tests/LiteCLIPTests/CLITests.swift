import Foundation
import TestSupport
import XCTest

/// Runs the built executables as a user would and checks their output.
final class CLITests: XCTestCase {
    static let binDir: String = {
        URL(fileURLWithPath: Bundle.main.executablePath ?? CommandLine.arguments[0]).deletingLastPathComponent().path
    }()

    struct Result { let status: Int32; let out: String; let err: String }

    func run(_ tool: String, _ args: [String]) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binDir + "/" + tool)
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
            let rows = obj["tensors"] as! [[String: Any]]
            let want = Dictionary(uniqueKeysWithValues: Fixtures.tensors("liteclip2_lightning.ckpt").map {
                (String(($0["name"] as! String).dropFirst("model.".count)), $0["sha256"] as! String)
            })
            XCTAssertEqual(rows.count, 260)
            for row in rows {
                let name = (row["name"] as! String).replacingOccurrences(of: "model.", with: "", options: .anchored)
                XCTAssertEqual(row["sha256"] as? String, want[name], "\(file): \(name)")
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
            (dir + "/missing.pt", "cannot open"),
        ]
        for (input, message) in cases {
            let r = try run("liteclip-convert", [input, dir + "/o.lcw", "--vocab", Fixtures.vocab])
            XCTAssertEqual(r.status, 1, input)
            XCTAssertTrue(r.err.contains(message), "\(input): \(r.err)")
            XCTAssertTrue(r.err.contains(input), "error names the file: \(r.err)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/o.lcw"))
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
        let bad = try run("liteclip-convert", [Fixtures.golden("liteclip2.pt"), dir + "/o.lcw", "--dtype", "f8"])
        XCTAssertNotEqual(bad.status, 0)
    }
}
