import XCTest
@testable import TensorIO
import TestSupport

/// `.lcw` round trips, the atomic writer, and hostile-inputs.md items 23-27.
final class LCWTests: XCTestCase {
    func tensor(_ name: String, _ dtype: DType, _ shape: [Int], fill: UInt8 = 1) -> Checkpoint.Tensor {
        let n = shape.reduce(1, *) * dtype.size
        let bytes = TensorBytes(owning: (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(fill)) })
        return Checkpoint.Tensor(name: name, dtype: dtype, shape: shape, origin: "test") { bytes }
    }

    /// A valid file's bytes and the parts hostile tests edit.
    func validFile(_ tensors: [Checkpoint.Tensor]? = nil) throws -> [UInt8] {
        let dir = Fixtures.tempDir()
        let path = dir + "/a.lcw"
        try LCWWriter.write(to: path, tensors: tensors ?? [tensor("a", .f32, [3, 5]), tensor("b", .bf16, [7]), tensor("c", .i64, [])],
                            metadata: Meta())
        return Array(try Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Metadata with a string, a path and an array.
    struct Meta: Encodable {
        var k = "v"
        var n = [1, 2]
        var path = "a/b.pt"
    }

    func read(_ bytes: [UInt8]) throws -> LCWFile { try LCWReader.read(source(bytes, "t.lcw")) }

    /// Rewrites the header JSON (keeping the data section) with `edit` applied to the tensor list.
    func withHeader(_ file: [UInt8], _ edit: (inout [[String: Any]]) -> Void, raw: ((inout Data) -> Void)? = nil) throws -> [UInt8] {
        let h = Int(file.withUnsafeBytes { $0.le64(16) }), d = Int(file.withUnsafeBytes { $0.le64(24) })
        let start = LCW.align(32 + h)
        var obj = try JSONSerialization.jsonObject(with: Data(file[32..<(32 + h)])) as! [String: Any]
        var list = obj["tensors"] as! [[String: Any]]
        edit(&list)
        obj["tensors"] = list
        var header = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
        raw?(&header)
        var out = Array(file[0..<16]) + le64(UInt64(header.count)) + le64(UInt64(d)) + Array(header)
        out += [UInt8](repeating: 0, count: LCW.align(out.count) - out.count)
        out += Array(file[start...])
        return out
    }

    func testRoundTripIsBitExactAndAligned() throws {
        let ts = [tensor("a", .f32, [3, 5]), tensor("b", .bf16, [7]), tensor("c", .i64, []), tensor("empty", .f16, [0, 4]), tensor("d", .bool, [3])]
        let bytes = try validFile(ts)
        let f = try read(bytes)
        XCTAssertEqual(f.checkpoint.tensors.map(\.name), ts.map(\.name))
        for (a, b) in zip(ts, f.checkpoint.tensors) {
            XCTAssertEqual(a.shape, b.shape); XCTAssertEqual(a.dtype, b.dtype)
            XCTAssertEqual(try a.load().array, try b.load().array, a.name)
            let loaded = try b.load()
            XCTAssertTrue(loaded.isView)
            if loaded.count > 0 { XCTAssertEqual(loaded.withBytes { Int(bitPattern: $0.baseAddress!) } % 64, 0, "\(a.name) is 64-byte aligned in memory") }
        }
        XCTAssertEqual(f.dataOffset % 64, 0)
        let meta = try JSONSerialization.jsonObject(with: f.metadataJSON) as! [String: Any]
        XCTAssertEqual(meta["k"] as? String, "v")
    }

    func testWritingIsDeterministic() throws {
        XCTAssertEqual(try validFile(), try validFile())
    }

    /// The header goes through `JSONCoding`: keys sorted, `/` not escaped.
    func testHeaderIsSortedCompactJSON() throws {
        let bytes = try validFile([tensor("a", .f32, [2])])
        let h = Int(bytes.withUnsafeBytes { $0.le64(16) })
        XCTAssertEqual(String(decoding: bytes[32..<(32 + h)], as: UTF8.self),
                       #"{"metadata":{"k":"v","n":[1,2],"path":"a/b.pt"},"tensors":[{"dtype":"f32","name":"a","nbytes":8,"offset":0,"shape":[2]}]}"#)
    }

    /// Metadata that is not a JSON object, or not JSON at all, is refused before anything is written.
    func testMetadataMustBeAJSONObject() throws {
        let dir = Fixtures.tempDir()
        assertReadError(.writeFailed, "array") { try LCWWriter.write(to: dir + "/a.lcw", tensors: [], metadata: [1, 2]) }
        assertReadError(.writeFailed, "NaN") { try LCWWriter.write(to: dir + "/a.lcw", tensors: [], metadata: ["x": Double.nan]) }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }

    func testPreambleChecks() throws {
        let good = try validFile()
        assertReadError(.truncated, "short") { try read(Array(good[0..<20])) }
        var m = good; m[0] = UInt8(ascii: "X")
        assertReadError(.badMagic) { try read(m) }
        var v = good; v[8] = 2
        assertReadError(.unsupportedVersion) { try read(v) }
        var fl = good; fl[12] = 1
        assertReadError(.badHeader, "flags") { try read(fl) }
        var big = good; big.replaceSubrange(16..<24, with: le64(UInt64(LCW.maxHeaderBytes + 1)))
        assertReadError(.limitExceeded, "header cap") { try read(big) }
        var past = good; past.replaceSubrange(16..<24, with: le64(UInt64(good.count)))
        assertReadError(.truncated, "header past EOF") { try read(past) }
        var dl = good; dl.replaceSubrange(24..<32, with: le64(UInt64.max))
        assertReadError(.truncated, "absurd data length") { try read(dl) }
        assertReadError(.truncated, "file cut short") { try read(Array(good.dropLast(64))) }
        assertReadError(.truncated, "one byte extra") { try read(good + [0]) }
        for cut in stride(from: 0, to: good.count, by: 5) { assertAnyReadError("cut at \(cut)") { try read(Array(good[0..<cut])) } }
    }

    func testHeaderChecks() throws {
        let good = try validFile()
        assertReadError(.badHeader, "not JSON") { try read(withHeader(good, { _ in }, raw: { $0[0] = UInt8(ascii: "[") })) }
        // The whole header is JSON, the metadata too, though the reader decodes only the tensor list.
        assertReadError(.badHeader, "bad metadata") { try read(withHeader(good, { _ in }, raw: { h in
            h = Data(String(decoding: h, as: UTF8.self).replacingOccurrences(of: "\"metadata\":{", with: "\"metadata\":{,").utf8)
        })) }
        assertReadError(.badHeader, "control character") { try read(withHeader(good, { _ in }, raw: { h in
            h = Data(String(decoding: h, as: UTF8.self).replacingOccurrences(of: "\"metadata\":{", with: "\"metadata\":{\"x\":\"\u{1}\",").utf8)
        })) }
        assertReadError(.badHeader, "trailing bytes") { try read(withHeader(good, { _ in }, raw: { $0.append(contentsOf: " {}".utf8) })) }
        assertReadError(.badHeader, "no tensors") { try read(withHeader(good, { _ in }, raw: { h in
            h = Data(String(decoding: h, as: UTF8.self).replacingOccurrences(of: "\"tensors\":", with: "\"tensorz\":").utf8)
        })) }
        assertReadError(.duplicateName, "two tensor lists") { try read(withHeader(good, { _ in }, raw: { h in
            h = Data(String(decoding: h, as: UTF8.self).replacingOccurrences(of: "{\"metadata\"", with: "{\"tensors\":[],\"metadata\"").utf8)
        })) }
        assertReadError(.unknownDType) { try read(withHeader(good) { $0[0]["dtype"] = "f8" }) }
        assertReadError(.shapeMismatch) { try read(withHeader(good) { $0[0]["shape"] = [3, 6] }) }
        assertReadError(.overflow) { try read(withHeader(good) { $0[0]["shape"] = [Int.max / 2, 3] }) }
        assertReadError(.badHeader, "negative dim") { try read(withHeader(good) { $0[0]["shape"] = [-3, -5] }) }
        assertReadError(.badHeader, "fractional dim") { try read(withHeader(good) { $0[0]["shape"] = [3.5, 5] }) }
        assertReadError(.badHeader, "rank") { try read(withHeader(good) { $0[1]["shape"] = [Int](repeating: 1, count: 17) + [7] }) }
        assertReadError(.misaligned) { try read(withHeader(good) { $0[1]["offset"] = 65 }) }
        assertReadError(.outOfBounds) { try read(withHeader(good) { $0[2]["offset"] = 1 << 20 }) }
        assertReadError(.overlappingEntries) { try read(withHeader(good) { $0[1]["offset"] = 0 }) }
        assertReadError(.duplicateName) { try read(withHeader(good) { $0[1]["name"] = "a" }) }
        assertReadError(.badHeader, "empty name") { try read(withHeader(good) { $0[1]["name"] = "" }) }
        assertReadError(.badHeader, "long name") { try read(withHeader(good) { $0[1]["name"] = String(repeating: "x", count: 2000) }) }
        assertReadError(.badHeader, "missing offset") { try read(withHeader(good) { $0[1].removeValue(forKey: "offset") }) }
    }

    /// The metadata object is handed on as its own JSON text (not parsed and re-serialised), found
    /// by skipping values: strings with escaped quotes and brackets, nested containers, a key
    /// written with escapes; two "metadata" keys are refused.
    func testMetadataIsPassedThroughAsStored() throws {
        let good = try validFile()
        XCTAssertEqual(String(decoding: try read(good).metadataJSON, as: UTF8.self), #"{"k":"v","n":[1,2],"path":"a/b.pt"}"#)
        func header(_ json: String) -> [UInt8] {
            var out = Array(good[0..<16]) + le64(UInt64(json.utf8.count)) + le64(0) + Array(json.utf8)
            out += [UInt8](repeating: 0, count: LCW.align(out.count) - out.count)
            return out
        }
        let tricky = #"{"a":"}\"{[","tensors":[] , "\u006detadata" : {"x":["]",{"y":"\\"}]} ,"z":1}"#
        XCTAssertEqual(String(decoding: try read(header(tricky)).metadataJSON, as: UTF8.self), #"{"x":["]",{"y":"\\"}]}"#)
        XCTAssertEqual(String(decoding: try read(header(#"{"tensors":[]}"#)).metadataJSON, as: UTF8.self), "{}")
        assertReadError(.badHeader, "metadata not an object") { try read(header(#"{"tensors":[],"metadata":[1]}"#)) }
        assertReadError(.duplicateName, "two metadata keys") { try read(header(#"{"metadata":{},"tensors":[],"metadata":{}}"#)) }
        assertReadError(.badHeader, "no tensors") { try read(header(#"{"metadata":{}}"#)) }
        assertReadError(.badHeader, "entry not an object") { try read(header(#"{"tensors":[1]}"#)) }
        assertReadError(.badHeader, "trailing garbage") { try read(header(#"{"tensors":[]} x"#)) }
    }

    /// Tensors that are views of a mapped file are copied by the kernel (copy_file_range): the
    /// file is byte for byte the one written from owned buffers, and a copy cut short by the end
    /// of its source returns what it copied so the writer finishes from memory.
    func testKernelCopyEqualsWrite() throws {
        let dir = Fixtures.tempDir()
        let raw = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        try Data(raw).write(to: URL(fileURLWithPath: dir + "/src.bin"))
        let src = try ByteSource(mapping: dir + "/src.bin")
        XCTAssertGreaterThanOrEqual(src.descriptor, 0)
        let parts = [(5, 4000), (4001, 3), (4100, 5900)]
        let views = parts.enumerated().map { i, p in
            Checkpoint.Tensor(name: "v\(i)", dtype: .u8, shape: [p.1], origin: "test") {
                TensorBytes(viewOf: src, UnsafeRawBufferPointer(rebasing: src.bytes[p.0..<(p.0 + p.1)]))
            }
        }
        let owned = parts.enumerated().map { i, p in
            Checkpoint.Tensor(name: "v\(i)", dtype: .u8, shape: [p.1], origin: "test") { TensorBytes(owning: Array(raw[p.0..<(p.0 + p.1)])) }
        }
        XCTAssertEqual(try views[2].load().fileRange?.offset, 4100)
        XCTAssertNil(try owned[2].load().fileRange)
        try LCWWriter.write(to: dir + "/a.lcw", tensors: views, metadata: Meta())
        try LCWWriter.write(to: dir + "/b.lcw", tensors: owned, metadata: Meta())
        let a = try Data(contentsOf: URL(fileURLWithPath: dir + "/a.lcw"))
        XCTAssertEqual(a, try Data(contentsOf: URL(fileURLWithPath: dir + "/b.lcw")))
        XCTAssertEqual(try read(Array(a)).checkpoint.tensors.map { try $0.load().array }, parts.map { Array(raw[$0.0..<($0.0 + $0.1)]) })

        let out = try AtomicFile(path: dir + "/c.bin")
        XCTAssertEqual(try out.copy(from: src.descriptor, offset: 9_990, count: 30), 10, "stops at the source's end")
        XCTAssertEqual(out.bytesWritten, 10)
        try out.commit()
        XCTAssertEqual(Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/c.bin"))), Array(raw[9_990...]))
    }

    /// A mapped file keeps one descriptor open, closed with the mapping.
    func testByteSourceClosesItsFile() throws {
        let dir = Fixtures.tempDir()
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: dir + "/x.bin"))
        func open() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1 }
        let before = open()
        do {
            let s = try ByteSource(mapping: dir + "/x.bin")
            XCTAssertEqual(open(), before + 1)
            withExtendedLifetime(s) {}
        }
        XCTAssertEqual(open(), before)
        try Data().write(to: URL(fileURLWithPath: dir + "/empty.bin"))
        XCTAssertEqual(try ByteSource(mapping: dir + "/empty.bin").descriptor, -1)
        XCTAssertEqual(open(), before)
    }

    func testFailedWriteLeavesNothing() throws {
        struct Boom: Error {}
        let dir = Fixtures.tempDir()
        let path = dir + "/out.lcw"
        let bad = Checkpoint.Tensor(name: "bad", dtype: .f32, shape: [4], origin: "test") { throw Boom() }
        XCTAssertThrowsError(try LCWWriter.write(to: path, tensors: [tensor("a", .f32, [1000]), bad], metadata: [String: String]()))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [], "no output and no temporary file")
        // A loader that returns the wrong number of bytes is caught too.
        let short = Checkpoint.Tensor(name: "short", dtype: .f32, shape: [4], origin: "test") { TensorBytes(owning: [1, 2]) }
        assertReadError(.shapeMismatch) { try LCWWriter.write(to: path, tensors: [short], metadata: [String: String]()) }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
        // An existing file is replaced only on success.
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try LCWWriter.write(to: path, tensors: [bad], metadata: [String: String]()))
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), Data([1, 2, 3]))
    }
}
