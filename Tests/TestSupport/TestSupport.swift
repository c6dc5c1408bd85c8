import Foundation
import TensorIO
import XCTest

// Shared by every test target: paths to the golden fixtures, error assertions, and builders
// for crafting hostile pickles and zip archives.

// MARK: - Paths and the golden manifest

public enum Fixtures {
    /// The repository root, found from this file's location.
    public static let root: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    public static func golden(_ rel: String) -> String { root + "/golden/" + rel }

    /// The seed's tokenizer files, from ../shared (never copied into the tree);
    /// `LITECLIP_SEED` overrides the location.
    public static let seed = ProcessInfo.processInfo.environment["LITECLIP_SEED"] ?? (root + "/../shared/liteclip-seed")
    public static let vocab = seed + "/model/vocab.txt"

    /// `golden/manifest.json`, written by golden/generate.py.
    public static let manifest: [String: Any] = {
        let data = FileManager.default.contents(atPath: golden("manifest.json"))!
        return try! JSONSerialization.jsonObject(with: data) as! [String: Any]
    }()

    public static func entry(_ rel: String) -> [String: Any] { manifest[rel] as! [String: Any] }
    public static func tensors(_ rel: String) -> [[String: Any]] { entry(rel)["tensors"] as! [[String: Any]] }

    /// A fresh, empty temporary folder.
    public static func tempDir() -> String {
        let p = NSTemporaryDirectory() + "liteclip-tests-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try! FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
        return p
    }
}

// MARK: - Assertions

/// Runs `body`, which must throw a `ReadError` with `code`; prints the error either way.
public func assertReadError<T>(_ code: ReadError.Code, _ what: String = "", file: StaticString = #filePath, line: UInt = #line,
                        _ body: () throws -> T) {
    do {
        _ = try body()
        XCTFail("\(what): expected ReadError.\(code), but it succeeded", file: file, line: line)
    } catch let e as ReadError {
        XCTAssertEqual(e.code, code, "\(what): got \(e)", file: file, line: line)
        XCTAssertFalse(e.file.isEmpty, "error must name the file", file: file, line: line)
    } catch {
        XCTFail("\(what): expected ReadError.\(code), got \(error)", file: file, line: line)
    }
}

/// Runs `body`, which must throw some `ReadError` (any code) and must not crash.
public func assertAnyReadError<T>(_ what: String, file: StaticString = #filePath, line: UInt = #line, _ body: () throws -> T) {
    do {
        _ = try body()
        XCTFail("\(what): expected a ReadError, but it succeeded", file: file, line: line)
    } catch is ReadError {
    } catch {
        XCTFail("\(what): expected a ReadError, got \(error)", file: file, line: line)
    }
}

public func source(_ bytes: [UInt8], _ name: String = "crafted") -> ByteSource { ByteSource(copying: bytes, name: name) }

// MARK: - Crafting pickles

/// Builds pickle byte streams opcode by opcode for hostile-input tests.
public struct PickleBuilder {
    public var bytes: [UInt8] = [0x80, 0x02]
    public init() {}

    public mutating func op(_ b: UInt8...) { bytes += b }
    public mutating func global(_ module: String, _ name: String) { bytes += [0x63] + Array("\(module)\n\(name)\n".utf8) }
    public mutating func str(_ s: String) { let u = Array(s.utf8); bytes += [0x58] + le32(UInt32(u.count)) + u }
    public mutating func int(_ v: Int32) { bytes += [0x4A] + le32(UInt32(bitPattern: v)) }
    public mutating func mark() { op(0x28) }
    public mutating func stop() { op(0x2E) }
    public mutating func tuple() { op(0x74) }
    public mutating func reduce() { op(0x52) }
    public mutating func emptyDict() { op(0x7D) }
    public mutating func emptyList() { op(0x5D) }
    public mutating func emptyTuple() { op(0x29) }
    public mutating func orderedDict() { global("collections", "OrderedDict"); emptyTuple(); reduce() }

    /// `('storage', torch.<cls>, key, 'cpu', numel)` + BINPERSID.
    public mutating func storage(_ cls: String, key: String, numel: Int32) {
        mark(); str("storage"); global("torch", cls); str(key); str("cpu"); int(numel); tuple(); op(0x51)
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`.
    public mutating func tensor(_ cls: String, key: String, numel: Int32, offset: Int32, size: [Int32], stride: [Int32]) {
        global("torch._utils", "_rebuild_tensor_v2")
        mark()
        storage(cls, key: key, numel: numel)
        int(offset)
        mark(); size.forEach { int($0) }; tuple()
        mark(); stride.forEach { int($0) }; tuple()
        op(0x89)
        orderedDict()
        tuple()
        reduce()
    }
}

public func le32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
public func le16(_ v: UInt16) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
public func le64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

// MARK: - Crafting zip archives

public func crc32(_ data: [UInt8]) -> UInt32 {
    var table = [UInt32](repeating: 0, count: 256)
    for i in 0..<256 {
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        table[i] = c
    }
    var crc: UInt32 = 0xFFFF_FFFF
    for b in data { crc = table[Int((crc ^ UInt32(b)) & 0xFF)] ^ (crc >> 8) }
    return crc ^ 0xFFFF_FFFF
}

/// A minimal STORED zip writer (no zip64) for building torch-like archives in tests.
public struct ZipBuilder {
    public var entries: [(name: String, data: [UInt8])] = []
    public init() {}

    public mutating func add(_ name: String, _ data: [UInt8]) { entries.append((name, data)) }

    /// - Parameter patchCentral: edits a central-directory record (entry index, record bytes).
    public func build(patchCentral: ((Int, inout [UInt8]) -> Void)? = nil) -> [UInt8] {
        var out: [UInt8] = []
        var central: [UInt8] = []
        for (i, e) in entries.enumerated() {
            let name = Array(e.name.utf8)
            let crc = crc32(e.data)
            let offset = UInt32(out.count)
            out += le32(0x0403_4b50) + le16(20) + le16(0) + le16(0) + le16(0) + le16(0x21)
            out += le32(crc) + le32(UInt32(e.data.count)) + le32(UInt32(e.data.count))
            out += le16(UInt16(name.count)) + le16(0) + name + e.data
            var rec = le32(0x0201_4b50) + le16(20) + le16(20) + le16(0) + le16(0) + le16(0) + le16(0x21)
            rec += le32(crc) + le32(UInt32(e.data.count)) + le32(UInt32(e.data.count))
            rec += le16(UInt16(name.count)) + le16(0) + le16(0) + le16(0) + le16(0) + le32(0) + le32(offset) + name
            patchCentral?(i, &rec)
            central += rec
        }
        let cdOffset = UInt32(out.count)
        out += central
        out += le32(0x0605_4b50) + le16(0) + le16(0) + le16(UInt16(entries.count)) + le16(UInt16(entries.count))
        out += le32(UInt32(central.count)) + le32(cdOffset) + le16(0)
        return out
    }
}

/// A well-formed torch-style zip holding a one-tensor state dict {"w": f32[2,3]} unless told otherwise.
public func torchZip(folder: String = "archive", pickle: [UInt8]? = nil, storages: [String: [UInt8]]? = nil,
              extra: [(String, [UInt8])] = [], byteorder: String? = "little") -> ZipBuilder {
    var z = ZipBuilder()
    var p = PickleBuilder()
    if let pickle { p.bytes = pickle } else {
        p.orderedDict()
        p.str("w")
        p.tensor("FloatStorage", key: "0", numel: 6, offset: 0, size: [2, 3], stride: [3, 1])
        p.op(0x73)
        p.stop()
    }
    z.add("\(folder)/data.pkl", p.bytes)
    if let byteorder { z.add("\(folder)/byteorder", Array(byteorder.utf8)) }
    let data = storages ?? ["0": (0..<6).flatMap { le32(Float(Double($0) + 0.5).bitPattern) }]
    for (k, v) in data.sorted(by: { $0.key < $1.key }) { z.add("\(folder)/data/\(k)", v) }
    for (n, d) in extra { z.add(n, d) }
    z.add("\(folder)/version", Array("3\n".utf8))
    return z
}

extension TensorBytes {
    public var floats: [Float] {
        withBytes { b in (0..<(count / 4)).map { Float(bitPattern: UInt32(littleEndian: b.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) } }
    }
}
