import XCTest
@testable import TensorIO
import TestSupport

/// Builds safetensors files in memory: 8-byte LE header length, header bytes, data.
private enum ST {
    static let name = "crafted.safetensors"

    /// A file from raw header bytes; `length` overrides the length field.
    static func file(header: [UInt8], data: [UInt8] = [], length: UInt64? = nil) -> ByteSource {
        let n = length ?? UInt64(header.count)
        var out: [UInt8] = []
        withUnsafeBytes(of: n.littleEndian) { out += $0 }
        out += header
        out += data
        return ByteSource(copying: out, name: name)
    }

    /// A file from header text, padded with spaces to a multiple of 8 like the reference writer.
    static func file(_ json: String, data: [UInt8] = [], pad: Bool = true) -> ByteSource {
        var h = Array(json.utf8)
        if pad { while h.count % 8 != 0 { h.append(0x20) } }
        return file(header: h, data: data)
    }

    struct T {
        var name: String
        var dtype: String
        var shape: [Int]
        var begin: Int
        var end: Int
    }

    static func json(_ tensors: [T], metadata: [String: String]? = nil) -> String {
        var parts: [String] = []
        if let metadata {
            let m = metadata.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\"\($0.value)\"" }
            parts.append("\"__metadata__\":{\(m.joined(separator: ","))}")
        }
        for t in tensors {
            let shape = t.shape.map(String.init).joined(separator: ",")
            parts.append("\"\(t.name)\":{\"dtype\":\"\(t.dtype)\",\"shape\":[\(shape)],\"data_offsets\":[\(t.begin),\(t.end)]}")
        }
        return "{" + parts.joined(separator: ",") + "}"
    }

    static func file(_ tensors: [T], metadata: [String: String]? = nil, data: [UInt8]) -> ByteSource {
        file(json(tensors, metadata: metadata), data: data)
    }

    /// One F32 tensor "x" of `shape` over `data` bytes.
    static func one(_ dtype: String = "F32", shape: [Int], _ begin: Int, _ end: Int, dataSize: Int) -> ByteSource {
        file([T(name: "x", dtype: dtype, shape: shape, begin: begin, end: end)],
             data: [UInt8](repeating: 0, count: dataSize))
    }
}

private func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

final class SafetensorsTests: XCTestCase {

    /// `read` must throw a ReadError with `code` that names the crafted file.
    private func expect(_ code: ReadError.Code, _ source: ByteSource, _ what: String = "",
                        file: StaticString = #filePath, line: UInt = #line) {
        do {
            let c = try SafetensorsReader.read(source)
            XCTFail("\(what): expected .\(code), but read \(c.tensors.count) tensors", file: file, line: line)
        } catch let e as ReadError {
            XCTAssertEqual(e.code, code, "\(what): \(e)", file: file, line: line)
            XCTAssertEqual(e.file, ST.name, file: file, line: line)
            XCTAssertFalse(e.detail.isEmpty, file: file, line: line)
        } catch {
            XCTFail("\(what): not a ReadError: \(error)", file: file, line: line)
        }
    }

    // MARK: - Valid files

    /// Several dtypes, listed in the header out of data order, with metadata and padding.
    private func validFile() -> ByteSource {
        var data: [UInt8] = []
        for v: Float in [0, 1.5, -2, 3.25, 4, -5] { data += le(v.bitPattern) }     // F32 [2,3]   0..<24
        for v: Int64 in [-1, 0, 1 << 40] { data += le(v) }                          // I64 [3]    24..<48
        data += le(UInt16(0x3C00)) + le(UInt16(0xC000))                             // F16 [2]    48..<52
        data += [1, 0, 1, 1]                                                        // BOOL [2,2] 52..<56
        data += le(UInt16(0x3F80))                                                  // BF16 []    56..<58
        data += [0xFF, 0x7F]                                                        // I8 [2]     58..<60 (an empty U8 [0,5] at 58 too)
        data += le(Int32(-7))                                                       // I32 [1,1]  60..<64
        data += le(Double.pi.bitPattern)                                            // F64 [1]    64..<72
        let tensors: [ST.T] = [
            .init(name: "model.ids", dtype: "I64", shape: [3], begin: 24, end: 48),
            .init(name: "mask", dtype: "BOOL", shape: [2, 2], begin: 52, end: 56),
            .init(name: "w", dtype: "F32", shape: [2, 3], begin: 0, end: 24),
            .init(name: "scale", dtype: "BF16", shape: [], begin: 56, end: 58),
            .init(name: "i8", dtype: "I8", shape: [2], begin: 58, end: 60),
            .init(name: "empty", dtype: "U8", shape: [0, 5], begin: 58, end: 58),
            .init(name: "half", dtype: "F16", shape: [2], begin: 48, end: 52),
            .init(name: "f64", dtype: "F64", shape: [1], begin: 64, end: 72),
            .init(name: "i32", dtype: "I32", shape: [1, 1], begin: 60, end: 64),
        ]
        return ST.file(tensors, metadata: ["format": "pt", "note": "hello"], data: data)
    }

    /// The bytes of `validFile()`, copied out while the source is alive.
    private func validBytes() -> [UInt8] {
        let src = validFile()
        return withExtendedLifetime(src) { Array(src.bytes) }
    }

    func testValidRoundTrip() throws {
        let src = validFile()
        let c = try SafetensorsReader.read(src)
        XCTAssertEqual(c.format, .safetensors)
        XCTAssertEqual(c.file, ST.name)
        XCTAssertNil(c.wrapper)
        XCTAssertEqual(c.metadata, ["format": "pt", "note": "hello"])
        // Data-offset order; the empty tensor at 58 (header index 5) sorts before i8 [58, 60).
        XCTAssertEqual(c.tensors.map(\.name), ["w", "model.ids", "half", "mask", "scale", "empty", "i8", "i32", "f64"])
        XCTAssertEqual(c.tensors.map(\.dtype), [.f32, .i64, .f16, .bool, .bf16, .u8, .i8, .i32, .f64])
        XCTAssertEqual(c.tensors.map(\.shape), [[2, 3], [3], [2], [2, 2], [], [0, 5], [2], [1, 1], [1]])

        func load(_ name: String) throws -> TensorBytes {
            let t = try XCTUnwrap(c.tensors.first { $0.name == name })
            let b = try t.load()
            XCTAssertEqual(b.count, t.byteCount, name)
            XCTAssertTrue(b.isView, "\(name) must be a zero-copy view")
            if b.count > 0 {
                let base = src.bytes.baseAddress!, p = b.buffer.baseAddress!
                XCTAssertTrue(p >= base && p + b.count <= base + src.count, "\(name) points into the source")
            }
            return b
        }
        let w32 = try load("w").buffer
        XCTAssertEqual((0..<6).map { Float(bitPattern: w32.le32($0 * 4)) }, [0, 1.5, -2, 3.25, 4, -5])
        let ids = try load("model.ids").buffer
        XCTAssertEqual((0..<3).map { Int64(bitPattern: ids.le64($0 * 8)) }, [-1, 0, 1 << 40])
        let half = try load("half").buffer
        XCTAssertEqual([half.le16(0), half.le16(2)], [0x3C00, 0xC000])
        XCTAssertEqual(Array(try load("mask").buffer), [1, 0, 1, 1])
        XCTAssertEqual(try load("scale").buffer.le16(0), 0x3F80)
        XCTAssertEqual(try load("empty").count, 0)
        XCTAssertEqual(Array(try load("i8").buffer).map { Int8(bitPattern: $0) }, [-1, 127])
        XCTAssertEqual(Int32(bitPattern: try load("i32").buffer.le32(0)), -7)
        XCTAssertEqual(Double(bitPattern: try load("f64").buffer.le64(0)), .pi)

        let w = try XCTUnwrap(c.tensors.first)
        XCTAssertTrue(w.origin.contains("0..<24"), w.origin)
    }

    func testEmptyAndMinimalHeaders() throws {
        XCTAssertEqual(try SafetensorsReader.read(ST.file("{}")).tensors.count, 0)
        XCTAssertEqual(try SafetensorsReader.read(ST.file("{}", pad: false)).tensors.count, 0)
        let m = try SafetensorsReader.read(ST.file("{\"__metadata__\":{}}"))
        XCTAssertEqual(m.metadata, [:])
        XCTAssertEqual(try SafetensorsReader.read(ST.file("{\"__metadata__\":null}")).metadata, [:])
        // Whitespace inside, trailing newline / tab padding, unknown per-tensor fields ignored.
        let s = ST.file("{ \"a\" : { \"dtype\" : \"U8\", \"extra\": [1, {\"k\": null}], \"shape\" : [ 2 ] ,\n \"data_offsets\" : [ 0 , 2 ] } }\n\t ",
                        data: [7, 8], pad: false)
        let c = try SafetensorsReader.read(s)
        XCTAssertEqual(c.tensors.map(\.name), ["a"])
        XCTAssertEqual(Array(try c.tensors[0].load().buffer), [7, 8])
    }

    func testEscapedNames() throws {
        // "a\u0062" is "ab"; "\ud83d\ude00" is U+1F600; "\"" and "\\" and "/" escapes.
        let json = #"{"a\u0062":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"\ud83d\ude00\"\\\/":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#
        let c = try SafetensorsReader.read(ST.file(json, data: [1, 2]))
        XCTAssertEqual(c.tensors.map(\.name), ["ab", "\u{1F600}\"\\/"])
    }

    // MARK: - Header length

    func testShortFile() {
        for n in 0..<8 {
            expect(.truncated, ByteSource(copying: [UInt8](repeating: 0, count: n), name: ST.name), "\(n)-byte file")
        }
    }

    func testHeaderLengthPastEOF() {
        let h = Array("{}      ".utf8)
        expect(.truncated, ST.file(header: h, length: 9), "one byte past the end")
        expect(.truncated, ST.file(header: h, length: 1_000_000), "far past the end")
        expect(.truncated, ST.file(header: h, length: UInt64(SafetensorsReader.maxHeaderSize)), "at the limit, past the end")
    }

    func testHeaderOverLimit() {
        let h = Array("{}      ".utf8)
        expect(.limitExceeded, ST.file(header: h, length: 100_000_001), "100 MB + 1")
        expect(.limitExceeded, ST.file(header: h, length: UInt64(Int.max)), "Int.max")
        expect(.limitExceeded, ST.file(header: h, length: .max), "UInt64.max")
    }

    // MARK: - Header JSON

    func testInvalidJSON() {
        let bad: [String] = [
            "", "x", " {}", "[]", "\"{}\"", "{", "{\"a\"", "{\"a\":", "{\"a\":}", "{\"a\":1,}", "{,}", "{}x", "{} {}",
            "{\"a\":tru}", "{\"a\":nul}", "{'a':1}", "{a:1}", "{\"a\":01}", "{\"a\":1.}", "{\"a\":-}", "{\"a\":1e}",
            "{\"a\":+1}", "{\"a\":[1,]}", "{\"a\":[1 2]}", "{\"a\":\"unterminated}", "{\"a\":\"bad \\x escape\"}",
            "{\"a\":\"\\u12\"}", "{\"a\":\"\\ud800\"}", "{\"a\":\"\\udc00\"}", "{\"a\":\"\\ud800\\u0041\"}",
            "{\"a\":\"tab\there\"}", "{\"a\":\"nl\nhere\"}", "{\"a\" 1}", "{\"a\":1 \"b\":2}",
            String(repeating: "{\"a\":", count: 100) + "1" + String(repeating: "}", count: 100),
            "{\"a\":" + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "}",
        ]
        for json in bad {
            expect(.badHeader, ST.file(json, pad: false), "header \(json.prefix(40).debugDescription)")
        }
        // Invalid UTF-8 inside a string, and NUL padding instead of spaces.
        expect(.badHeader, ST.file(header: Array("{\"".utf8) + [0xFF, 0xFE] + Array("\":1}".utf8)), "invalid UTF-8")
        expect(.badHeader, ST.file(header: Array("{\"".utf8) + [0xED, 0xA0, 0x80] + Array("\":1}".utf8)), "UTF-8 surrogate")
        expect(.badHeader, ST.file(header: Array("{}".utf8) + [0, 0, 0, 0, 0, 0]), "NUL padding")
    }

    func testMalformedEntries() {
        let cases: [String] = [
            #"{"a":1}"#,
            #"{"a":null}"#,
            #"{"a":{"shape":[1],"data_offsets":[0,4]}}"#,
            #"{"a":{"dtype":"F32","data_offsets":[0,4]}}"#,
            #"{"a":{"dtype":"F32","shape":[1]}}"#,
            #"{"a":{"dtype":32,"shape":[1],"data_offsets":[0,4]}}"#,
            #"{"a":{"dtype":"F32","shape":1,"data_offsets":[0,4]}}"#,
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}"#,
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4]}}"#,
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":{"0":0,"1":4}}}"#,
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0.0,4]}}"#,
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}"#,
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,"4"]}}"#,
            #"{"__metadata__":{"k":1}}"#,
            #"{"__metadata__":{"k":null}}"#,
            #"{"__metadata__":["k","v"]}"#,
            #"{"__metadata__":"k"}"#,
        ]
        for json in cases {
            expect(.badHeader, ST.file(json, data: [0, 0, 0, 0]), json)
        }
    }

    // MARK: - Tensor rules

    func testUnknownDType() {
        for d in ["U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "float32", "f32", "", "F32 "] {
            expect(.unknownDType, ST.one(d, shape: [1], 0, 4, dataSize: 4), "dtype \(d.debugDescription)")
        }
    }

    func testShapeLengthMismatch() {
        expect(.shapeMismatch, ST.one(shape: [2, 2], 0, 12, dataSize: 12), "16 bytes declared, 12 spanned")
        expect(.shapeMismatch, ST.one(shape: [2], 0, 12, dataSize: 12), "8 bytes declared, 12 spanned")
        expect(.shapeMismatch, ST.one(shape: [], 0, 0, dataSize: 0), "a scalar is one element")
        expect(.shapeMismatch, ST.one("BF16", shape: [3], 0, 3, dataSize: 3), "BF16 is 2 bytes")
        expect(.shapeMismatch, ST.one(shape: [0], 0, 4, dataSize: 4), "zero elements, 4 bytes")
    }

    func testShapeOverflow() {
        expect(.overflow, ST.one(shape: [1 << 62, 4], 0, 4, dataSize: 4), "product overflows")
        expect(.overflow, ST.one(shape: [1 << 61], 0, 4, dataSize: 4), "times element size overflows")
        expect(.overflow, ST.one(shape: [Int.max, Int.max, 0], 0, 0, dataSize: 0), "overflow before the zero")
        // Integers beyond Int are not integers we accept.
        expect(.badHeader, ST.file(#"{"x":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]))
    }

    func testNegativeOrNonIntegerShape() {
        for dims in ["-1", "-1,2", "2,-4", "1.0", "1e0", "\"1\"", "true", "null", "[1]", "-0.5"] {
            let json = "{\"x\":{\"dtype\":\"F32\",\"shape\":[\(dims)],\"data_offsets\":[0,4]}}"
            expect(.badHeader, ST.file(json, data: [0, 0, 0, 0]), "shape [\(dims)]")
        }
    }

    func testOffsetsOutOfBounds() {
        expect(.outOfBounds, ST.one(shape: [4], 0, 16, dataSize: 8), "ends past the data")
        expect(.outOfBounds, ST.one(shape: [1], 8, 12, dataSize: 8), "begins at the end")
        expect(.outOfBounds, ST.one(shape: [1], 1 << 40, (1 << 40) + 4, dataSize: 8), "far past")
        expect(.outOfBounds, ST.one(shape: [0], 8, 4, dataSize: 8), "end before begin")
        expect(.outOfBounds, ST.one(shape: [1], Int.max - 4, Int.max, dataSize: 8), "near Int.max")
    }

    func testOverlappingTensors() {
        let t: [ST.T] = [.init(name: "a", dtype: "F32", shape: [2], begin: 0, end: 8),
                         .init(name: "b", dtype: "F32", shape: [2], begin: 4, end: 12)]
        expect(.overlappingEntries, ST.file(t, data: [UInt8](repeating: 0, count: 12)), "partial overlap")
        let same: [ST.T] = [.init(name: "a", dtype: "F32", shape: [2], begin: 0, end: 8),
                            .init(name: "b", dtype: "I32", shape: [2], begin: 0, end: 8)]
        expect(.overlappingEntries, ST.file(same, data: [UInt8](repeating: 0, count: 8)), "same bytes twice")
        let inside: [ST.T] = [.init(name: "a", dtype: "F32", shape: [4], begin: 0, end: 16),
                              .init(name: "b", dtype: "F32", shape: [1], begin: 4, end: 8)]
        expect(.overlappingEntries, ST.file(inside, data: [UInt8](repeating: 0, count: 16)), "one inside another")
    }

    func testGapsAndUncoveredBytes() {
        let gap: [ST.T] = [.init(name: "a", dtype: "F32", shape: [2], begin: 0, end: 8),
                           .init(name: "b", dtype: "F32", shape: [2], begin: 12, end: 20)]
        expect(.outOfBounds, ST.file(gap, data: [UInt8](repeating: 0, count: 20)), "gap between tensors")
        expect(.outOfBounds, ST.one(shape: [1], 4, 8, dataSize: 8), "data before the first tensor")
        expect(.outOfBounds, ST.one(shape: [1], 0, 4, dataSize: 8), "trailing bytes after the last tensor")
        expect(.outOfBounds, ST.file("{}", data: [1]), "data but no tensors")
        expect(.outOfBounds, ST.file("{\"__metadata__\":{\"a\":\"b\"}}", data: [1, 2, 3]), "metadata only, with data")
    }

    func testDuplicateNames() {
        let t = #"{"dtype":"U8","shape":[1],"data_offsets":[0,1]}"#
        let t2 = #"{"dtype":"U8","shape":[1],"data_offsets":[1,2]}"#
        expect(.duplicateName, ST.file("{\"a\":\(t),\"a\":\(t2)}", data: [1, 2]), "same name twice")
        expect(.duplicateName, ST.file("{\"ab\":\(t),\"a\\u0062\":\(t2)}", data: [1, 2]), "same name, escaped")
        expect(.duplicateName, ST.file("{\"__metadata__\":{},\"__metadata__\":{}}"), "metadata twice")
        expect(.duplicateName, ST.file("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}"), "metadata key twice")
        expect(.duplicateName, ST.file(#"{"a":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}}"#, data: [1]),
               "field twice in one tensor")
        do {
            _ = try SafetensorsReader.read(ST.file("{\"a\":\(t),\"a\":\(t2)}", data: [1, 2]))
        } catch let e as ReadError {
            XCTAssertTrue(e.description.contains("tensor 'a'"), e.description)
        } catch {
            XCTFail("\(error)")
        }
    }

    func testErrorsNameFileAndTensor() {
        do {
            _ = try SafetensorsReader.read(ST.one("Q7", shape: [1], 0, 4, dataSize: 4))
            XCTFail("must throw")
        } catch let e as ReadError {
            XCTAssertEqual(e.file, ST.name)
            XCTAssertEqual(e.place, "tensor 'x'")
            XCTAssertTrue(e.description.contains("'Q7'"), e.description)
        } catch {
            XCTFail("\(error)")
        }
        do {
            _ = try SafetensorsReader.read(ST.file("{\"a\":[1,]}"))
            XCTFail("must throw")
        } catch let e as ReadError {
            XCTAssertEqual(e.place, "header byte 16")   // 8 + offset of ']' in the header
        } catch {
            XCTFail("\(error)")
        }
    }

    // MARK: - Robustness

    /// A valid file cut at every length is always a ReadError, never a crash or a success.
    func testTruncatedAtEveryPoint() throws {
        let full = validBytes()
        _ = try SafetensorsReader.read(ByteSource(copying: full, name: ST.name))
        for cut in 0..<full.count {
            do {
                let c = try SafetensorsReader.read(ByteSource(copying: full[0..<cut], name: ST.name))
                XCTFail("cut at \(cut) of \(full.count): read \(c.tensors.count) tensors")
            } catch is ReadError {
            } catch {
                XCTFail("cut at \(cut): \(error)")
            }
        }
    }

    /// Random byte corruption: either a clean read whose views stay inside the file, or a
    /// ReadError. Deterministic.
    func testRandomCorruptionNeverCrashes() throws {
        let full = validBytes()
        var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> Int {
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            return Int(truncatingIfNeeded: rng >> 33)
        }
        var accepted = 0
        for _ in 0..<3000 {
            var b = full
            for _ in 0...(next() % 3) {
                // Mostly the header (where the structure is), sometimes the length field.
                let at = next() % 4 == 0 ? next() % 8 : 8 + next() % (b.count - 8)
                b[at] = UInt8(truncatingIfNeeded: next())
            }
            let src = ByteSource(copying: b, name: ST.name)
            do {
                let c = try SafetensorsReader.read(src)
                accepted += 1
                for t in c.tensors {
                    let v = try t.load()
                    XCTAssertEqual(v.count, t.byteCount)
                    if v.count > 0 {
                        XCTAssertTrue(v.buffer.baseAddress! >= src.bytes.baseAddress!
                                      && v.buffer.baseAddress! + v.count <= src.bytes.baseAddress! + src.count)
                    }
                }
            } catch is ReadError {
            } catch {
                XCTFail("\(error)")
            }
        }
        XCTAssertGreaterThan(accepted, 0, "some corruptions (e.g. in a name or metadata) stay valid")
    }
}
