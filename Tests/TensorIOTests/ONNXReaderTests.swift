import Foundation
import XCTest
@testable import TensorIO
import TestSupport

/// Fixtures: golden/onnx_cases/, written by golden/generate_onnx_cases.py (manifest.json holds
/// each valid model's initializers as onnx.numpy_helper decodes them). Spec: formats/onnx.md.
private enum Cases {
    static func path(_ rel: String) -> String { Fixtures.golden("onnx_cases/" + rel) }

    static let manifest: [String: Any] = {
        let data = FileManager.default.contents(atPath: path("manifest.json"))!
        return try! JSONSerialization.jsonObject(with: data) as! [String: Any]
    }()

    static func read(_ rel: String) throws -> ONNXModel { try ONNXReader.read(ByteSource(mapping: path(rel))) }
}

/// Hand-encoded protobuf, for inputs Python's protobuf refuses to build.
private enum PB {
    static func varint(_ value: UInt64) -> [UInt8] {
        var v = value
        var out: [UInt8] = []
        while v >= 0x80 { out.append(UInt8(v & 0x7F) | 0x80); v >>= 7 }
        out.append(UInt8(v))
        return out
    }
    static func int(_ number: Int, _ value: UInt64) -> [UInt8] { varint(UInt64(number << 3)) + varint(value) }
    static func bytes(_ number: Int, _ payload: [UInt8]) -> [UInt8] {
        varint(UInt64(number << 3 | 2)) + varint(UInt64(payload.count)) + payload
    }
    static func string(_ number: Int, _ s: String) -> [UInt8] { bytes(number, Array(s.utf8)) }
    /// ModelProto { ir_version: 8, graph: `graph` }.
    static func model(graph: [UInt8]) -> [UInt8] { int(1, 8) + bytes(7, graph) }
}

final class ONNXReaderTests: XCTestCase {
    // MARK: - Valid models against the manifest

    func testEveryGoldenTensorMatchesManifest() throws {
        XCTAssertEqual(Set(Cases.manifest.keys), ["dtypes_raw.onnx", "dtypes_typed.onnx", "external/model.onnx"])
        for (rel, value) in Cases.manifest.sorted(by: { $0.key < $1.key }) {
            let entry = value as! [String: Any]
            let expected = entry["tensors"] as! [[String: Any]]
            let model = try Cases.read(rel)
            XCTAssertEqual(model.nodes.count, entry["nodes"] as? Int, rel)
            XCTAssertEqual(model.initializers.map(\.name), expected.map { $0["name"] as! String }, rel)
            for (t, e) in zip(model.initializers, expected) {
                XCTAssertEqual(t.dtype.rawValue, e["dtype"] as? String, "\(rel) \(t.name)")
                XCTAssertEqual(t.shape, e["shape"] as? [Int], "\(rel) \(t.name)")
                let bytes = try t.load()
                XCTAssertEqual(bytes.count, t.byteCount, "\(rel) \(t.name)")
                XCTAssertEqual(bytes.sha256(), e["sha256"] as? String, "\(rel) \(t.name) (\(t.origin))")
            }
        }
    }

    func testTypedFieldsDecodeToTheSameBytesAsRawData() throws {
        let raw = try Cases.read("dtypes_raw.onnx")
        let typed = try Cases.read("dtypes_typed.onnx")
        let byName = Dictionary(uniqueKeysWithValues: typed.initializers.map { ($0.name, $0) })
        XCTAssertEqual(byName.count, raw.initializers.count)
        for t in raw.initializers {
            let u = try XCTUnwrap(byName[t.name])
            XCTAssertEqual(u.dtype, t.dtype, t.name)
            XCTAssertEqual(u.shape, t.shape, t.name)
            XCTAssertEqual(try u.load().array, try t.load().array, t.name)
        }
        XCTAssertEqual(try XCTUnwrap(byName["w_f32"]).load().floats, [-1, -0.5, 0, 0.5, 1, 1.5])
        XCTAssertTrue(try XCTUnwrap(byName["w_f16"]).origin.hasPrefix("int32_data"))
    }

    func testModelFactsNodesAndAttributes() throws {
        let m = try Cases.read("dtypes_raw.onnx")
        XCTAssertEqual(m.irVersion, 8)
        XCTAssertEqual(m.producerName, "liteclip-golden")
        XCTAssertEqual(m.producerVersion, "1.0")
        XCTAssertEqual(m.opsets.map(\.domain), ["", "com.example"])
        XCTAssertEqual(m.opsets.map(\.version), [17, 1])
        XCTAssertEqual(m.graph.name, "golden")
        XCTAssertEqual(m.inputs.map(\.name), ["x"])
        XCTAssertEqual(m.inputs[0].dtype, .f32)
        XCTAssertEqual(m.inputs[0].dims, ["batch", "2"])
        XCTAssertEqual(m.outputs.map(\.name), ["z"])
        XCTAssertEqual(m.outputs[0].dims, ["batch", "3"])

        XCTAssertEqual(m.nodes.map(\.opType), ["Constant", "Gemm", "Custom"])
        let const0 = m.nodes[0]
        XCTAssertEqual(const0.name, "const0")
        XCTAssertEqual(const0.outputs, ["c0"])
        guard case .tensor(let value)? = const0.attributes["value"] else { return XCTFail("Constant value") }
        XCTAssertEqual(value.name, "c0_value")
        XCTAssertEqual(value.shape, [2])
        XCTAssertEqual(try value.load().floats, [1.5, -2.0])

        let gemm = m.nodes[1]
        XCTAssertEqual(gemm.name, "/m/fc1/Gemm")
        XCTAssertEqual(gemm.domain, "")
        XCTAssertEqual(gemm.inputs, ["x", "w_f32", "c0"])
        XCTAssertEqual(gemm.attributes["alpha"]?.float, 0.25)
        XCTAssertEqual(gemm.attributes["transB"]?.int, 1)
        XCTAssertEqual(gemm.metadataProps, ["pkg.torch.onnx.name_scopes": "['', 'm', 'm.fc1']"])
        XCTAssertEqual(const0.metadataProps, [:])

        let custom = m.nodes[2]
        XCTAssertEqual(custom.domain, "com.example")
        XCTAssertEqual(custom.attributes["ints"]?.ints, [1, -2, 3])
        XCTAssertEqual(custom.attributes["floats"]?.floats, [0.5, 2.0])
        guard case .strings(let strings)? = custom.attributes["strings"] else { return XCTFail("strings") }
        XCTAssertEqual(strings, ["a", "bc"])
        XCTAssertEqual(custom.attributes["mode"]?.string, "fast")
    }

    func testExternalDataIsAZeroCopyViewAndInlineTensorsMix() throws {
        let m = try Cases.read("external/model.onnx")
        XCTAssertEqual(m.initializers.map(\.name), ["enc.weight", "enc.index", "enc.bias"])
        let w = try m.initializers[0].load(), i = try m.initializers[1].load(), b = try m.initializers[2].load()
        XCTAssertTrue(w.isView)
        XCTAssertTrue(i.isView)
        XCTAssertFalse(b.isView)
        XCTAssertEqual(w.floats, (0..<12).map { Float($0) / 8 })
        XCTAssertEqual(i.withBytes { p in (0..<4).map { Int64(littleEndian: p.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self)) } },
                       [1, -2, 3, -4])
        XCTAssertEqual(b.floats, [0.5, -0.5, 1.0])
        XCTAssertEqual(m.initializers[1].origin, "'model.onnx.data' bytes 64..<96")
    }

    func testTensorFileDetectsAndOpensONNX() throws {
        XCTAssertEqual(try TensorFile.detect(ByteSource(mapping: Cases.path("dtypes_raw.onnx"))), .onnx)
        let ck = try TensorFile.open(Cases.path("external/model.onnx"))
        XCTAssertEqual(ck.format, .onnx)
        XCTAssertEqual(ck.format.rawValue, "onnx")
        XCTAssertEqual(ck.tensors.map(\.name), ["enc.weight", "enc.index", "enc.bias"])
        XCTAssertEqual(ck.metadata["onnx.ir_version"], "8")
        XCTAssertEqual(ck.metadata["onnx.producer"], "liteclip-golden 1.0")
        XCTAssertEqual(ck.metadata["onnx.opsets"], "ai.onnx:17,com.example:1")
        // Other formats are still told apart, and text is still not a checkpoint.
        assertReadError(.notACheckpoint) { try TensorFile.detect(source(Array("# hello".utf8))) }
    }

    func testLargeRawDataKeepsProtobufCsBuffer() throws {
        // 4096+ bytes of raw_data come from the arena's owned buffers (no second copy);
        // smaller ones are copied. Both must read back exactly.
        let big = (0..<2048).flatMap { le32(Float($0).bitPattern) }
        let small = (0..<3).flatMap { le32(Float($0 + 10).bitPattern) }
        func tensor(_ name: String, _ raw: [UInt8]) -> [UInt8] {
            PB.int(1, UInt64(raw.count / 4)) + PB.int(2, 1) + PB.string(8, name) + PB.bytes(9, raw)
        }
        let bytes = PB.model(graph: PB.bytes(5, tensor("big", big)) + PB.bytes(5, tensor("small", small)) + PB.string(2, "g"))
        let m = try ONNXReader.read(source(bytes, "crafted.onnx"))
        XCTAssertEqual(m.initializers.map(\.name), ["big", "small"])
        XCTAssertEqual(try m.initializers[0].load().array, big)
        XCTAssertEqual(try m.initializers[1].load().array, small)
        XCTAssertEqual(try m.initializers[0].load().withBytes { Int(bitPattern: $0.baseAddress) % 64 }, 0)
    }

    // MARK: - Hostile files (hostile-inputs.md 18-22)

    func testHostileFilesAreRefused() {
        let cases: [(String, ReadError.Code)] = [
            ("ext_parent.onnx", .unsafeEntryName),
            ("ext_absolute.onnx", .unsafeEntryName),
            ("ext_inner_dotdot.onnx", .unsafeEntryName),
            ("ext_directory.onnx", .unsafeEntryName),
            ("ext_missing.onnx", .ioError),
            ("ext_offset_past_eof.onnx", .outOfBounds),
            ("ext_range_past_eof.onnx", .outOfBounds),
            ("ext_length_mismatch.onnx", .shapeMismatch),
            ("ext_no_length_mismatch.onnx", .shapeMismatch),
            ("ext_negative_offset.onnx", .badHeader),
            ("ext_nonnumeric_length.onnx", .badHeader),
            ("ext_and_raw.onnx", .badHeader),
            ("raw_size_mismatch.onnx", .shapeMismatch),
            ("two_data_fields.onnx", .badHeader),
            ("negative_dim.onnx", .badHeader),
            ("dims_overflow.onnx", .overflow),
            ("dtype_string.onnx", .unknownDType),
            ("dtype_100.onnx", .unknownDType),
            ("duplicate_names.onnx", .duplicateName),
            ("typed_count_mismatch.onnx", .shapeMismatch),
            ("typed_wrong_field.onnx", .badHeader),
            ("typed_out_of_range.onnx", .badHeader),
            ("nest_101.onnx", .limitExceeded),
        ]
        for (rel, code) in cases {
            assertReadError(code, rel) { try Cases.read("hostile/" + rel) }
            // Every tensor-level error names the tensor.
            if code != .limitExceeded, let e = readError({ try Cases.read("hostile/" + rel) }) {
                XCTAssertTrue(e.place.contains("initializer 't'"), "\(rel): \(e)")
                XCTAssertTrue(e.file.hasSuffix(rel), "\(rel): \(e)")
            }
        }
    }

    func testSymlinkedDataFileAndFolderAreRefused() throws {
        let dir = Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fm = FileManager.default
        try fm.copyItem(atPath: Cases.path("hostile/ext_symlink.onnx"), toPath: dir + "/m.onnx")
        try fm.copyItem(atPath: Cases.path("hostile/ext_symlink_dir.onnx"), toPath: dir + "/d.onnx")
        let payload = Data(repeating: 0, count: 16)
        XCTAssertTrue(fm.createFile(atPath: dir + "/real.data", contents: payload))
        try fm.createDirectory(atPath: dir + "/realdir", withIntermediateDirectories: false)
        XCTAssertTrue(fm.createFile(atPath: dir + "/realdir/weights.data", contents: payload))
        try fm.createSymbolicLink(atPath: dir + "/link.data", withDestinationPath: "real.data")
        try fm.createSymbolicLink(atPath: dir + "/linkdir", withDestinationPath: "realdir")

        assertReadError(.unsafeEntryName, "symlinked file") { try ONNXReader.read(ByteSource(mapping: dir + "/m.onnx")) }
        assertReadError(.unsafeEntryName, "symlinked folder") { try ONNXReader.read(ByteSource(mapping: dir + "/d.onnx")) }

        // The same files read once the links are real: the refusal was the link, nothing else.
        try fm.removeItem(atPath: dir + "/link.data")
        try fm.removeItem(atPath: dir + "/linkdir")
        try fm.moveItem(atPath: dir + "/real.data", toPath: dir + "/link.data")
        try fm.moveItem(atPath: dir + "/realdir", toPath: dir + "/linkdir")
        XCTAssertEqual(try ONNXReader.read(ByteSource(mapping: dir + "/m.onnx")).initializers.first?.load().count, 16)
        XCTAssertEqual(try ONNXReader.read(ByteSource(mapping: dir + "/d.onnx")).initializers.first?.load().count, 16)
    }

    func testTruncatedFilesNeverCrash() throws {
        let whole = Array(try Data(contentsOf: URL(fileURLWithPath: Cases.path("dtypes_raw.onnx"))))
        // Cut inside the graph field: truncated, naming the file.
        assertReadError(.truncated, "half") { try ONNXReader.read(source(Array(whole[..<(whole.count / 2)]), "half.onnx")) }
        assertReadError(.truncated, "one byte short") { try ONNXReader.read(source(Array(whole.dropLast()), "short.onnx")) }
        // Every prefix: a ReadError or (when the cut falls between top-level fields) a model.
        for n in 0..<whole.count {
            do { _ = try ONNXReader.read(source(Array(whole[..<n]), "cut.onnx")) } catch is ReadError {} catch {
                XCTFail("prefix \(n): \(error)")
            }
        }
    }

    func testGarbageIsRefused() {
        assertReadError(.badHeader, "0xff bytes") { try ONNXReader.read(source([UInt8](repeating: 0xFF, count: 64), "garbage.onnx")) }
        assertReadError(.badHeader, "wire type 7") { try ONNXReader.read(source([0x0F, 0x00], "garbage.onnx")) }
        assertAnyReadError("text") { try ONNXReader.read(source(Array("hello, world: not a model".utf8), "text.onnx")) }
        assertReadError(.truncated, "empty") { try ONNXReader.read(source([], "empty.onnx")) }
        // Well-formed protobuf that is not a model.
        assertReadError(.badHeader, "no graph") { try ONNXReader.read(source(PB.int(1, 8), "nograph.onnx")) }
        // Pseudo-random bytes (fixed seed), some starting with the ONNX tag: errors, never crashes.
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for round in 0..<300 {
            var bytes: [UInt8] = []
            for _ in 0..<(1 + round % 97) {
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                bytes.append(UInt8(truncatingIfNeeded: state >> 33))
            }
            if round % 2 == 0 { bytes[0] = 0x08 }
            do { _ = try TensorFile.read(source(bytes, "random.onnx")) } catch is ReadError {} catch {
                XCTFail("round \(round): \(error)")
            }
        }
    }

    // MARK: - Limits

    func testGraphNestingLimit() throws {
        let m = try Cases.read("nest_100.onnx")
        var depth = 1
        var graph = m.graph
        while case .graph(let inner)? = graph.nodes.first?.attributes["then_branch"] {
            depth += 1
            graph = inner
        }
        XCTAssertEqual(depth, 100)
        XCTAssertEqual(m.graph.name, "g1")
        XCTAssertEqual(graph.name, "g100")
        assertReadError(.limitExceeded, "101 graphs") { try Cases.read("hostile/nest_101.onnx") }
    }

    func testDeepMessageNestingOutsideGraphsIsRefused() {
        // ValueInfo.type -> TypeProto.sequence_type -> Sequence.elem_type -> TypeProto ... 400 levels.
        var type = PB.bytes(1, PB.int(1, 1))  // TypeProto { tensor_type { elem_type: FLOAT } }
        for _ in 0..<200 { type = PB.bytes(4, PB.bytes(1, type)) }
        let graph = PB.bytes(11, PB.string(1, "x") + PB.bytes(2, type)) + PB.string(2, "g")
        assertReadError(.limitExceeded, "deep TypeProto") { try ONNXReader.read(source(PB.model(graph: graph), "deep.onnx")) }
    }

    func testSizeAndAllocationLimits() {
        let src = { try ByteSource(mapping: Cases.path("dtypes_raw.onnx")) }
        var tiny = ONNXReader.Limits()
        tiny.maxModelBytes = 100
        assertReadError(.limitExceeded, "file over the message limit") { try ONNXReader.read(src(), limits: tiny) }
        var stingy = ONNXReader.Limits()
        stingy.allocationFactor = 0
        stingy.allocationSlack = 256
        assertReadError(.limitExceeded, "allocation cap") { try ONNXReader.read(src(), limits: stingy) }
    }
}

private func readError<T>(_ body: () throws -> T) -> ReadError? {
    do { _ = try body(); return nil } catch { return error as? ReadError }
}
