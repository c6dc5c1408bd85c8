import Foundation
@testable import LiteCLIP
@testable import TensorIO
import TestSupport
import XCTest

/// Issue 13: the weights are found at any depth by their anchor tensors (not by a list of wrapper
/// names), every other tensor of the file is listed by its full path, placeholders and plain
/// pickles are reported, and "not a liteCLIP checkpoint" comes before complaints about the files
/// beside it.
final class CheckpointsInTheWildTests: XCTestCase {
    static func storageClass(_ d: DType) -> String {
        switch d {
        case .f32: return "FloatStorage"
        case .f16: return "HalfStorage"
        case .i64: return "LongStorage"
        default: return "FloatStorage"
        }
    }

    /// `{"step": 7, "model_state": <the golden state dict>, "optimizer_state": {"state": {0: {"exp_avg": t}}},
    ///   "config": <an inert placeholder>}` as a torch zip: a wrapper no list of names knows.
    static func wrapped() throws -> (path: String, source: Checkpoint) {
        let src = try TensorFile.open(Fixtures.golden("liteclip2.pt"))
        var p = PickleBuilder()
        var storages: [String: [UInt8]] = [:]
        p.op(0x80, 2)
        p.emptyDict(); p.mark()
        p.str("step"); p.int(7)
        p.str("model_state"); p.orderedDict(); p.mark()
        for (i, t) in src.tensors.enumerated() {
            let strides = t.shape.indices.map { d in Int32(t.shape[(d + 1)...].reduce(1, *)) }
            p.str(t.name)
            p.tensor(storageClass(t.dtype), key: "\(i)", numel: Int32(t.elementCount), offset: 0, size: t.shape.map { Int32($0) }, stride: strides)
            storages["\(i)"] = try t.load().withBytes { Array($0) }
        }
        p.op(0x75)                                   // SETITEMS into model_state
        p.str("optimizer_state"); p.emptyDict(); p.str("state"); p.emptyDict(); p.int(0); p.emptyDict()
        p.str("exp_avg"); p.tensor("FloatStorage", key: "m", numel: 2, offset: 0, size: [2], stride: [1])
        p.op(0x73); p.op(0x73); p.op(0x73)            // SETITEM x3
        storages["m"] = le32(Float(1).bitPattern) + le32(Float(2).bitPattern)
        p.str("config"); p.global("omegaconf.dictconfig", "DictConfig"); p.emptyTuple(); p.reduce()
        p.emptyDict(); p.str("lr"); p.int(3); p.op(0x73); p.op(0x62)   // BUILD({"lr": 3})
        p.op(0x75)                                   // SETITEMS into the top dict
        p.stop()
        let path = Fixtures.tempDir() + "/wrapped.pt"
        try Data(torchZip(pickle: p.bytes, storages: storages).build()).write(to: URL(fileURLWithPath: path))
        return (path, src)
    }

    func testEveryTensorIsListedByItsPathAndTheWeightsAreFoundByTheirAnchors() throws {
        let (path, src) = try Self.wrapped()
        let c = try TensorFile.open(path)
        XCTAssertEqual(c.tensors.count, src.tensors.count + 1)
        XCTAssertEqual(c.tensors.last?.name, "optimizer_state.state.0.exp_avg")
        XCTAssertEqual(c.tensors[0].name, "model_state." + src.tensors[0].name)
        XCTAssertEqual(c.entries.map(\.key), ["step", "model_state", "optimizer_state", "config"])
        XCTAssertEqual(c.entries.map(\.tensors), [0, src.tensors.count, 1, 0])
        XCTAssertEqual(c.placeholders, ["omegaconf.dictconfig.DictConfig"])
        // Converted by anchors: the same .lcw tensors as from the plain state dict.
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        o.textConfigPath = Fixtures.golden("config.json")
        let dir = Fixtures.tempDir()
        let r = try Converter.convert(input: path, output: dir + "/w.lcw", options: o)
        XCTAssertEqual(r.wrapper, "nested under key 'model_state'")
        XCTAssertEqual(r.elsewhere, ["'optimizer_state.state.0' (1 tensor)"])
        _ = try Converter.convert(input: Fixtures.golden("liteclip2.pt"), output: dir + "/p.lcw", options: o)
        let a = try LiteCLIPFile.open(dir + "/w.lcw").tensors, b = try LiteCLIPFile.open(dir + "/p.lcw").tensors
        XCTAssertEqual(a.map(\.name), b.map(\.name))
        for (x, y) in zip(a, b) { XCTAssertEqual(try x.load().sha256(), try y.load().sha256(), x.name) }
        // inspect: grouped by entry, filterable, placeholders named.
        let i = try Inspection.inspect(path, filter: "optimizer_state.")
        XCTAssertEqual(i.rows.map(\.name), ["optimizer_state.state.0.exp_avg"])
        XCTAssertEqual(i.rows[0].container, ["optimizer_state", "state", "0"])
        XCTAssertEqual(i.rows[0].key, "exp_avg")
        XCTAssertEqual(i.filteredOut, src.tensors.count)
        let text = try CLITests.run("liteclip", ["inspect", path]).out
        XCTAssertTrue(text.contains("entries: step (int), model_state (OrderedDict, \(src.tensors.count) tensors), optimizer_state (dict, 1 tensor), config (omegaconf.dictconfig.DictConfig object (placeholder))"), text)
        XCTAssertTrue(text.contains("placeholders: omegaconf.dictconfig.DictConfig (kept as inert data"), text)
        XCTAssertTrue(text.contains("[optimizer_state] 1 tensor\n"), text)
    }

    func testNotLiteCLIPComesBeforeComplaintsAboutFilesBesideIt() throws {
        let dir = Fixtures.tempDir()
        try Data(torchZip().build()).write(to: URL(fileURLWithPath: dir + "/other.pt"))
        try Data(#"{"model_type": "gpt2", "n_embd": 768}"#.utf8).write(to: URL(fileURLWithPath: dir + "/config.json"))
        XCTAssertThrowsError(try Converter.convert(input: dir + "/other.pt", output: dir + "/o.lcw", options: .init())) { e in
            XCTAssertEqual((e as? ModelError)?.code, .notLiteCLIP, "\(e)")
            XCTAssertTrue("\(e)".contains("not a liteCLIP checkpoint"), "\(e)")
        }
        // A BERT config of the wrong kind, beside a real liteCLIP checkpoint: a sentence, not a DecodingError dump.
        try FileManager.default.copyItem(atPath: Fixtures.golden("liteclip2.pt"), toPath: dir + "/liteclip2.pt")
        XCTAssertThrowsError(try Converter.convert(input: dir + "/liteclip2.pt", output: dir + "/o.lcw", options: .init())) { e in
            XCTAssertTrue("\(e)".contains("not a BERT config.json: it has no 'hidden_size'"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/o.lcw"))
    }

    func testAPlainPickleSaysSo() throws {
        var p = PickleBuilder()
        p.op(0x80, 2); p.emptyDict(); p.str("a"); p.int(1); p.op(0x73); p.stop()
        assertReadError(.notACheckpoint, "plain pickle") { try TensorFile.read(source(p.bytes, "plain.pkl")) }
        do { _ = try TensorFile.read(source(p.bytes, "plain.pkl")) } catch {
            XCTAssertTrue("\(error)".contains("a plain Python pickle (a dict, as pickle.dump writes), not a torch.save checkpoint"), "\(error)")
        }
    }

    /// Shared references (memo GETs) can make a small pickle a huge tree: the walk is capped.
    func testASharedReferenceBombIsRefused() throws {
        var p = PickleBuilder()
        p.op(0x80, 2)
        p.op(0x42); p.bytes += le32(1 << 20) + [UInt8](repeating: 0, count: 1 << 20); p.op(0x30)   // BINBYTES 1 MiB, POP: raises the machine's size cap
        p.emptyDict(); p.str("a")
        p.tensor("FloatStorage", key: "0", numel: 6, offset: 0, size: [2, 3], stride: [3, 1])
        p.op(0x71, 0); p.op(0x30)                                        // BINPUT 0, POP
        for level in 0..<23 {                                            // 2^23 tensors by reference
            p.op(0x68, UInt8(level)); p.op(0x68, UInt8(level)); p.op(0x86); p.op(0x71, UInt8(level + 1))
            if level < 22 { p.op(0x30) }                                 // keep only the last level on the stack
        }
        p.op(0x73); p.stop()
        let bytes = torchZip(pickle: p.bytes).build()
        let start = Date()
        XCTAssertThrowsError(try TensorFile.read(source(bytes, "bomb.pt"))) { e in
            XCTAssertTrue([.limitExceeded].contains((e as? ReadError)?.code), "\(e)")
        }
        XCTAssertLessThan(Date().timeIntervalSince(start), 20, "refused without expanding the whole tree")
    }
}
