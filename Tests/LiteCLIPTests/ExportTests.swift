import Foundation
import XCTest
@testable import LiteCLIP
@testable import TensorIO
import TestSupport

/// .pt -> .lcw -> export (.pt, .safetensors) -> our readers: every tensor bit-exact, in the
/// seed's state-dict order; the .pt laid out as torch.save lays it out; refusals write nothing.
/// scripts/check-export does the PyTorch side (torch.load(weights_only=True), strict load).
final class ExportTests: XCTestCase {
    /// golden/liteclip2.pt converted once for the suite.
    static let lcw: String = {
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        let out = Fixtures.tempDir() + "/liteclip2.lcw"
        _ = try! Converter.convert(input: Fixtures.golden("liteclip2.pt"), output: out, options: o)
        return out
    }()

    static func bytes(_ t: Checkpoint.Tensor) throws -> [UInt8] { try t.load().array }

    func export(_ format: Exporter.Format, dtype: DType? = nil, name: String = "out", model: String = ExportTests.lcw) throws
        -> (Exporter.Report, Checkpoint) {
        let out = Fixtures.tempDir() + "/\(name).\(format == .pt ? "pt" : "safetensors")"
        let r = try Exporter.export(model: model, to: out, format: format, dtype: dtype)
        return (r, try TensorFile.read(ByteSource(mapping: out)))
    }

    /// Name, order, shape, dtype and bytes of every tensor equal the original checkpoint's.
    func testExportIsBitExactWithTheOriginalCheckpoint() throws {
        let original = try TensorFile.read(ByteSource(mapping: Fixtures.golden("liteclip2.pt")))
        XCTAssertEqual(original.tensors.count, 260)
        for format in Exporter.Format.allCases {
            let (report, back) = try export(format)
            XCTAssertEqual(back.format, format == .pt ? .torchZip : .safetensors)
            XCTAssertNil(back.wrapper, "\(format): the state dict is the top-level object")
            XCTAssertEqual(report.tensorCount, 260)
            XCTAssertEqual(report.dtypes, [.f32: 260])
            XCTAssertEqual(report.fileBytes, Int(try FileManager.default.attributesOfItem(atPath: report.output)[.size] as! UInt64))
            XCTAssertEqual(back.tensors.map(\.name), original.tensors.map(\.name), "\(format): names and order")
            var bad: [String] = []
            for (b, o) in zip(back.tensors, original.tensors) {
                let same = try Self.bytes(b) == Self.bytes(o)
                if b.dtype != o.dtype || b.shape != o.shape || !same {
                    bad.append("\(b.name): \(b.dtype) \(b.shape) vs \(o.dtype) \(o.shape)")
                }
            }
            XCTAssertTrue(bad.isEmpty, "\(format):\n" + bad.joined(separator: "\n"))
        }
    }

    /// f16/bf16 exports hold exactly DTypeConversion of the original (= PyTorch's .half() /
    /// .bfloat16(), checked against the golden f16/bf16 checkpoints' checksums).
    func testHalfAndBFloat16ExportsEqualTheConversionOfTheOriginal() throws {
        let original = try TensorFile.read(ByteSource(mapping: Fixtures.golden("liteclip2.pt")))
        for (dtype, ref, prefix) in [(DType.f16, "liteclip2_f16.pt", ""), (.bf16, "liteclip2_bf16_ddp_cuda.pt", "module.")] {
            let torchSHA = Dictionary(uniqueKeysWithValues: Fixtures.tensors(ref).map {
                (String(($0["name"] as! String).dropFirst(prefix.count)), $0["sha256"] as! String)
            })
            for format in Exporter.Format.allCases {
                let (report, back) = try export(format, dtype: dtype)
                XCTAssertEqual(report.dtypes, [dtype: 260])
                XCTAssertEqual(back.tensors.map(\.name), original.tensors.map(\.name))
                for (b, o) in zip(back.tensors, original.tensors) {
                    XCTAssertEqual(b.dtype, dtype)
                    XCTAssertEqual(b.shape, o.shape)
                    let want = DTypeConversion.convert(try o.load(), from: o.dtype, to: dtype)
                    XCTAssertEqual(try Self.bytes(b), want.array, "\(format) \(dtype) \(b.name)")
                    XCTAssertEqual(try b.load().sha256(), torchSHA[b.name], "\(format) \(dtype) \(b.name) vs PyTorch")
                }
            }
        }
        // An f16 .lcw exports to f32 by default: exact widening, so f32 -> f16 gives it back.
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        let f16 = Fixtures.tempDir() + "/f16.lcw"
        _ = try Converter.convert(input: Fixtures.golden("liteclip2_f16.pt"), output: f16, options: o)
        let (_, wide) = try export(.pt, model: f16)
        let half = try TensorFile.read(ByteSource(mapping: Fixtures.golden("liteclip2_f16.pt")))
        for (w, h) in zip(wide.tensors, half.tensors) {
            XCTAssertEqual(w.dtype, .f32)
            XCTAssertEqual(DTypeConversion.convert(try w.load(), from: .f32, to: .f16).array, try Self.bytes(h), w.name)
        }
    }

    /// The zip as torch.save writes it: records and order, 64-byte aligned payloads, libzip's
    /// consistency checks pass (ZipArchive opens with ZIP_CHECKCONS).
    func testPtLayoutIsTorchSaves() throws {
        let (report, back) = try export(.pt, name: "liteclip2")
        let archive = try ZipArchive(ByteSource(mapping: report.output))
        let names = archive.entries.map(\.name)
        XCTAssertEqual(Array(names.prefix(4)), ["liteclip2/data.pkl", "liteclip2/.format_version", "liteclip2/.storage_alignment", "liteclip2/byteorder"])
        XCTAssertEqual(Array(names.dropFirst(4).prefix(260)), (0..<260).map { "liteclip2/data/\($0)" })
        XCTAssertEqual(Array(names.suffix(2)), ["liteclip2/version", "liteclip2/.data/serialization_id"])
        for e in archive.entries {
            XCTAssertEqual(e.method, 0, e.name)
            XCTAssertEqual(e.payloadOffset % 64, 0, e.name)
        }
        XCTAssertEqual(back.metadata["byteorder"], "little")
        let id = try XCTUnwrap(archive.entry("liteclip2/.data/serialization_id"))
        let digits = String(decoding: UnsafeRawBufferPointer(rebasing: archive.source.bytes[id.payloadOffset..<(id.payloadOffset + id.size)]), as: UTF8.self)
        XCTAssertEqual(digits.count, 40)
        XCTAssertTrue(digits.allSatisfy(\.isASCII) && digits.allSatisfy(\.isNumber), digits)
    }

    /// A small state dict written by PyTorch 2.15's torch.save to `small.pt`:
    /// OrderedDict(a.weight=arange(6).reshape(2,3) f32, b=tensor(3.5) f32, c=ones(4) f16, d=ones(2) bf16).
    /// Our data.pkl is byte-identical, every payload sits at the same offset with the same CRC-32,
    /// and the file has the same size.
    func testSmallStateDictMatchesTorchSaveByteForByte() throws {
        let torchPickle = """
            800263636f6c6c656374696f6e730a4f726465726564446963740a710029527101285808000000612e776569676874710263746f7263682e5f7574\
            696c730a5f72656275696c645f74656e736f725f76320a71032828580700000073746f72616765710463746f7263680a466c6f617453746f7261\
            67650a71055801000000307106580300000063707571074b06747108514b004b024b038671094b034b0186710a8968002952710b74710c52710d\
            580100000062710e6803282868046805580100000031710f68074b01747110514b00292989680029527111747112527113580100000063711468\
            032828680463746f7263680a48616c6653746f726167650a7115580100000032711668074b04747117514b004b048571184b0185711989680029\
            52711a74711b52711c580100000064711d68032828680463746f7263680a42466c6f6174313653746f726167650a711e580100000033711f6807\
            4b02747120514b004b028571214b0185712289680029527123747124527125752e
            """
        let torchEntries: [(name: String, offset: Int, size: Int, crc: UInt32)] = [
            ("small/data.pkl", 64, 382, 0x3d7d_4bfa), ("small/.format_version", 576, 1, 0x83dc_efb7),
            ("small/.storage_alignment", 704, 2, 0xe971_773f), ("small/byteorder", 832, 6, 0x19e3_3d85),
            ("small/data/0", 960, 24, 0x91e7_9017), ("small/data/1", 1088, 4, 0x3265_f52b),
            ("small/data/2", 1216, 8, 0x6c2e_25bb), ("small/data/3", 1344, 4, 0x6ecf_7efc),
            ("small/version", 1472, 2, 0x5567_9ed1), ("small/.data/serialization_id", 1600, 40, 0),
        ]
        func tensor(_ name: String, _ dtype: DType, _ shape: [Int], _ bytes: [UInt8]) -> Checkpoint.Tensor {
            Checkpoint.Tensor(name: name, dtype: dtype, shape: shape, origin: "test") { TensorBytes(owning: bytes) }
        }
        let tensors = [
            tensor("a.weight", .f32, [2, 3], (0..<6).flatMap { le32(Float($0).bitPattern) }),
            tensor("b", .f32, [], le32(Float(3.5).bitPattern)),
            tensor("c", .f16, [4], (0..<4).flatMap { _ in le16(Float16(1).bitPattern) }),
            tensor("d", .bf16, [2], (0..<2).flatMap { _ in le16(0x3F80) }),
        ]
        let path = Fixtures.tempDir() + "/small.pt"
        let size = try TorchWriter.write(to: path, tensors: tensors)
        XCTAssertEqual(size, 2377)
        let source = try ByteSource(mapping: path)
        let archive = try ZipArchive(source)
        XCTAssertEqual(archive.entries.map(\.name), torchEntries.map(\.name))
        for (e, want) in zip(archive.entries, torchEntries) {
            XCTAssertEqual(e.payloadOffset, want.offset, e.name)
            XCTAssertEqual(e.size, want.size, e.name)
            let payload = UnsafeRawBufferPointer(rebasing: source.bytes[e.payloadOffset..<(e.payloadOffset + e.size)])
            if want.crc != 0 { XCTAssertEqual(crc32(Array(payload)), want.crc, e.name) }
        }
        let pkl = try XCTUnwrap(archive.entry("small/data.pkl"))
        let ours = Array(source.bytes[pkl.payloadOffset..<(pkl.payloadOffset + pkl.size)])
        XCTAssertEqual(ours.map { String(format: "%02x", $0) }.joined(), torchPickle)
        let back = try TensorFile.read(source)
        XCTAssertEqual(back.tensors.map(\.name), ["a.weight", "b", "c", "d"])
        for (b, t) in zip(back.tensors, tensors) {
            XCTAssertEqual(b.shape, t.shape)
            XCTAssertEqual(b.dtype, t.dtype)
            XCTAssertEqual(try Self.bytes(b), try Self.bytes(t))
        }
    }

    /// Pickle corners: memo slots past 255 (LONG_BINPUT/LONG_BINGET), batches of 1000 items
    /// (and a final batch of one: SETITEM), shapes of rank > 3, zero-size and large extents.
    func testManyTensorsAndOddShapesReadBack() throws {
        var tensors: [Checkpoint.Tensor] = []
        for i in 0..<1001 {
            tensors.append(Checkpoint.Tensor(name: "t\(i)", dtype: .f32, shape: [1], origin: "test") { TensorBytes(owning: le32(UInt32(i))) })
        }
        tensors.append(Checkpoint.Tensor(name: "rank5", dtype: .i64, shape: [1, 2, 1, 3, 1], origin: "test") {
            TensorBytes(owning: (0..<6).flatMap { le64(UInt64($0)) })
        })
        tensors.append(Checkpoint.Tensor(name: "empty", dtype: .f16, shape: [2, 0, 3], origin: "test") { TensorBytes(owning: []) })
        tensors.append(Checkpoint.Tensor(name: "wide", dtype: .u8, shape: [70000], origin: "test") {
            TensorBytes(owning: (0..<70000).map { UInt8(truncatingIfNeeded: $0) })
        })
        XCTAssertEqual(StatePickler.contiguousStrides([2, 0, 3]), [3, 3, 1], "torch counts a 0 extent as 1")
        let path = Fixtures.tempDir() + "/many.pt"
        try TorchWriter.write(to: path, tensors: tensors)
        let back = try TensorFile.read(ByteSource(mapping: path))
        XCTAssertEqual(back.tensors.map(\.name), tensors.map(\.name))
        for (b, t) in zip(back.tensors, tensors) {
            XCTAssertEqual(b.shape, t.shape, t.name)
            XCTAssertEqual(b.dtype, t.dtype, t.name)
            XCTAssertEqual(try Self.bytes(b), try Self.bytes(t), t.name)
        }
        // safetensors: the same, plus names that need JSON escapes.
        let odd = ["quote\"d", "back\\slash", "tab\tnew\nline", "ctl\u{1}", "ünï😀", ""].map { n in
            Checkpoint.Tensor(name: n, dtype: .bf16, shape: [1], origin: "test") { TensorBytes(owning: [1, 2]) }
        }
        let st = Fixtures.tempDir() + "/many.safetensors"
        try SafetensorsWriter.write(to: st, tensors: tensors + odd, metadata: ["format": "pt", "z\"": "é"])
        let sb = try TensorFile.read(ByteSource(mapping: st))
        XCTAssertEqual(sb.tensors.map(\.name), (tensors + odd).map(\.name))
        XCTAssertEqual(sb.metadata["z\""], "é")
        for (b, t) in zip(sb.tensors, tensors + odd) { XCTAssertEqual(try Self.bytes(b), try Self.bytes(t), t.name) }
        let stSource = try ByteSource(mapping: st)
        let headerLength = stSource.withBytes { $0.le64(0) }
        XCTAssertEqual(headerLength % 8, 0, "header padded to 8 bytes")
    }

    /// Exporting twice gives identical bytes (no timestamps, content-derived serialization id).
    func testExportIsDeterministic() throws {
        for format in Exporter.Format.allCases {
            for dtype in [DType.f32, .bf16] {
                let (a, _) = try export(format, dtype: dtype, name: "same")
                let (b, _) = try export(format, dtype: dtype, name: "same")
                XCTAssertNotEqual(a.output, b.output)
                XCTAssertEqual(FileManager.default.contents(atPath: a.output), FileManager.default.contents(atPath: b.output), "\(format) \(dtype)")
            }
        }
    }

    /// ONNX exporters drop BERT's pooler: strict=True would miss it, so export refuses unless
    /// allowed, and then says strict=False is needed.
    func testModelWithoutPoolerIsRefusedUnlessAllowed() throws {
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        o.textConfigPath = Fixtures.golden("config.json")
        let dir = Fixtures.tempDir()
        _ = try Converter.convert(input: Fixtures.golden("onnx/liteclip2_torchscript.onnx"), output: dir + "/onnx.lcw", options: o)
        for format in Exporter.Format.allCases {
            let out = dir + "/onnx.\(format)"
            XCTAssertThrowsError(try Exporter.export(model: dir + "/onnx.lcw", to: out, format: format, dtype: nil)) { e in
                let m = e as? ModelError
                XCTAssertEqual(m?.code, .mapping, "\(e)")
                let pooler = Fixtures.tensors("liteclip2.pt").filter { ($0["name"] as! String).contains(".pooler.") }
                XCTAssertEqual(m?.missing, pooler.map { "\($0["name"] as! String) \($0["shape"] as! [Int])" }, "\(e)")
                XCTAssertEqual(m?.missing.count, 2)
                XCTAssertTrue("\(e)".contains("--allow-missing-pooler") && "\(e)".contains("strict"), "\(e)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: out))
            let r = try Exporter.export(model: dir + "/onnx.lcw", to: out, format: format, dtype: nil, allowMissingPooler: true)
            XCTAssertFalse(r.hasPooler)
            XCTAssertEqual(r.tensorCount, 258)
            XCTAssertTrue(r.notes.contains { $0.contains("strict=False") }, "\(r.notes)")
            let back = try TensorFile.read(ByteSource(mapping: out))
            let want = Fixtures.tensors("liteclip2.pt").filter { !($0["name"] as! String).contains(".pooler.") }
            XCTAssertEqual(back.tensors.map(\.name), want.map { $0["name"] as! String })
            for (b, w) in zip(back.tensors, want) { XCTAssertEqual(try b.load().sha256(), w["sha256"] as! String, b.name) }
        }
    }

    /// A partial conversion (default-optimised dynamo ONNX, --allow-partial) has smaller
    /// embeddings than the seed's: always refused, with the missing rows listed.
    func testPartialModelIsRefused() throws {
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        o.textConfigPath = Fixtures.golden("config.json")
        o.allowPartial = true
        let dir = Fixtures.tempDir()
        _ = try Converter.convert(input: Fixtures.golden("onnx/liteclip2_dynamo_optimized.onnx"), output: dir + "/partial.lcw", options: o)
        for format in Exporter.Format.allCases {
            let out = dir + "/partial.\(format)"
            XCTAssertThrowsError(try Exporter.export(model: dir + "/partial.lcw", to: out, format: format, dtype: nil, allowMissingPooler: true)) { e in
                let m = e as? ModelError
                XCTAssertEqual(m?.code, .mapping, "\(e)")
                XCTAssertEqual(m?.mismatched.count, 2, "\(e)")
                XCTAssertTrue("\(e)".contains("optimize=False"), "\(e)")
            }
            XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        }
    }

    /// A loader failing mid-write, a tensor too big for a non-ZIP64 archive, the output being
    /// the input, a missing folder, a non-float dtype: an error, and nothing left behind.
    func testFailedExportLeavesNothing() throws {
        struct Boom: Error {}
        let dir = Fixtures.tempDir()
        let good = Checkpoint.Tensor(name: "a", dtype: .f32, shape: [4], origin: "test") { TensorBytes(owning: [UInt8](repeating: 1, count: 16)) }
        let failing = Checkpoint.Tensor(name: "b", dtype: .f32, shape: [4], origin: "test") { throw Boom() }
        let short = Checkpoint.Tensor(name: "c", dtype: .f32, shape: [4], origin: "test") { TensorBytes(owning: [1, 2, 3]) }
        for (label, write) in [("pt", { (p: String, t: [Checkpoint.Tensor]) in try TorchWriter.write(to: p, tensors: t) }),
                               ("safetensors", { (p: String, t: [Checkpoint.Tensor]) in try SafetensorsWriter.write(to: p, tensors: t) })] {
            let out = dir + "/x.\(label)"
            XCTAssertThrowsError(try write(out, [good, failing])) { XCTAssertTrue($0 is Boom, "\($0)") }
            assertReadError(.shapeMismatch, label) { try write(out, [good, short]) }
            assertReadError(.duplicateName, label) { try write(out, [good, good]) }
            XCTAssertFalse(FileManager.default.fileExists(atPath: out), label)
        }
        let huge = Checkpoint.Tensor(name: "huge", dtype: .f32, shape: [1 << 30, 2], origin: "test") { throw Boom() }
        assertReadError(.limitExceeded, "8 GiB needs ZIP64") { try TorchWriter.write(to: dir + "/huge.pt", tensors: [huge]) }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [], "no output, no temporary file")

        XCTAssertThrowsError(try Exporter.export(model: Self.lcw, to: Self.lcw, format: .pt, dtype: nil)) {
            XCTAssertEqual(($0 as? ModelError)?.code, .badConfig, "\($0)")
        }
        XCTAssertNoThrow(try LiteCLIPFile.open(Self.lcw), "the input is untouched")
        XCTAssertThrowsError(try Exporter.export(model: Self.lcw, to: dir + "/no/such/folder/x.pt", format: .pt, dtype: nil)) {
            XCTAssertEqual(($0 as? ReadError)?.code, .writeFailed, "\($0)")
        }
        XCTAssertThrowsError(try Exporter.export(model: Self.lcw, to: dir + "/x.pt", format: .pt, dtype: .i32)) {
            XCTAssertEqual(($0 as? ModelError)?.code, .badConfig, "\($0)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }

    /// `liteclip export` as a user runs it.
    func testCommandLine() throws {
        let dir = Fixtures.tempDir()
        let ok = try CLITests.run("liteclip", ["export", Self.lcw, dir + "/m.pt", "--dtype", "f16"])
        XCTAssertEqual(ok.status, 0, ok.err)
        XCTAssertTrue(ok.out.contains("tensors: 260 (260 f16)"), ok.out)
        XCTAssertTrue(ok.out.contains("format:  pt"), ok.out)
        let st = try CLITests.run("liteclip", ["export", Self.lcw, dir + "/m.safetensors", "--format", "safetensors"])
        XCTAssertEqual(st.status, 0, st.err)
        XCTAssertEqual(try TensorFile.read(ByteSource(mapping: dir + "/m.safetensors")).tensors.count, 260)
        let bad = try CLITests.run("liteclip", ["export", Fixtures.golden("liteclip2.pt"), dir + "/n.pt"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.err.hasPrefix("liteclip export: error: "), bad.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/n.pt"))
        let usage = try CLITests.run("liteclip", ["export", Self.lcw, dir + "/n.pt", "--dtype", "f64"])
        XCTAssertNotEqual(usage.status, 0)
        XCTAssertEqual(Set(try FileManager.default.contentsOfDirectory(atPath: dir)), ["m.pt", "m.safetensors"])
    }
}
