import Foundation

/// `.lcw`, liteclip's self-contained, mmap-able weight file. Spec: formats/lcw.md.
///
/// ```
/// 0   8   magic "LITECLIP"
/// 8   4   version (u32 LE) = 1
/// 12  4   flags (u32 LE) = 0
/// 16  8   header length H (u64 LE), at most 64 MiB
/// 24  8   data length D (u64 LE)
/// 32  H   header: UTF-8 JSON {"tensors": [...], "metadata": {...}}
/// ..      zero padding up to data start S = align64(32 + H)
/// S   D   tensor data; every tensor 64-byte aligned; file size == S + D
/// ```
public enum LCW {
    public static let magic: [UInt8] = Array("LITECLIP".utf8)
    public static let version: UInt32 = 1
    public static let alignment = 64
    public static let fixedHeaderSize = 32
    public static let maxHeaderBytes = 64 << 20
    public static let maxTensors = 1 << 20
    public static let maxNameBytes = 1024
    public static let maxRank = 16

    static func align(_ n: Int) -> Int { (n + alignment - 1) / alignment * alignment }
}

/// An opened `.lcw`: its tensors (zero-copy views into the read-only mapping) and the
/// metadata object as JSON bytes, for the model layer to decode.
public struct LCWFile {
    public let checkpoint: Checkpoint
    /// The header's "metadata" object: its JSON text as stored.
    public let metadataJSON: Data
    public let version: UInt32
    public let headerBytes: Int
    public let dataOffset: Int
}

public enum LCWReader {
    public static func open(_ path: String) throws -> LCWFile {
        try read(ByteSource(mapping: path))
    }

    /// Validates every field before use (formats/lcw.md, "Validation").
    public static func read(_ source: ByteSource) throws -> LCWFile {
        let file = source.name
        let b = source.bytes
        func err(_ c: ReadError.Code, _ place: String, _ d: String) -> ReadError { ReadError(c, file: file, place: place, d) }
        guard b.count >= LCW.fixedHeaderSize else {
            throw err(.truncated, "byte 0", "file of \(b.count) bytes is shorter than the \(LCW.fixedHeaderSize)-byte .lcw preamble")
        }
        guard Array(b[0..<8]) == LCW.magic else { throw err(.badMagic, "byte 0", "not an .lcw file (magic is not \"LITECLIP\")") }
        let version = b.le32(8), flags = b.le32(12)
        guard version == LCW.version else {
            throw err(.unsupportedVersion, "byte 8", "format version \(version); this build reads version \(LCW.version). Re-convert the checkpoint with this liteclip-convert.")
        }
        guard flags == 0 else { throw err(.badHeader, "byte 12", "unknown flags 0x\(String(flags, radix: 16))") }
        let h64 = b.le64(16), d64 = b.le64(24)
        guard h64 <= UInt64(LCW.maxHeaderBytes) else { throw err(.limitExceeded, "byte 16", "header length \(h64) exceeds the \(LCW.maxHeaderBytes)-byte cap") }
        let h = Int(h64)
        guard LCW.fixedHeaderSize + h <= b.count else {
            throw err(.truncated, "byte 16", "header of \(h) bytes runs past the end of the \(b.count)-byte file")
        }
        let dataOffset = LCW.align(LCW.fixedHeaderSize + h)
        guard d64 <= UInt64(Int.max / 2), dataOffset + Int(d64) == b.count else {
            throw err(.truncated, "byte 24", "header says data is \(d64) bytes at offset \(dataOffset), so the file should be \(dataOffset &+ Int(truncatingIfNeeded: d64)) bytes, but it is \(b.count)")
        }
        let dataLength = Int(d64)
        let headerBytes = UnsafeRawBufferPointer(rebasing: b[LCW.fixedHeaderSize..<(LCW.fixedHeaderSize + h)])
        // The whole header is checked as JSON without building it; then only the tensor list is
        // decoded, and the metadata object is handed on as its own bytes for the model layer.
        if let f = JSONCheck.failure(in: headerBytes) {
            throw err(.badHeader, "header byte \(f.offset)", "header is not JSON: \(f.reason)")
        }
        let list: [LenientEntry]
        let members = JSONSpans.topLevelValues(["tensors", "metadata"], in: headerBytes)
        switch members[0] {
        case .absent:
            let isObject = headerBytes.first { ![0x20, 0x09, 0x0A, 0x0D].contains($0) } == UInt8(ascii: "{")
            throw err(.badHeader, "header", isObject ? "header has no \"tensors\" array" : "header is not a JSON object with a \"tensors\" array")
        case .duplicate: throw err(.duplicateName, "header", "two \"tensors\" keys")
        case .at(let span):
            guard headerBytes[span.lowerBound] == UInt8(ascii: "[") else { throw err(.badHeader, "header", "\"tensors\" is not an array") }
            do {
                list = try JSONDecoder().decode([LenientEntry].self, from: Data(UnsafeRawBufferPointer(rebasing: headerBytes[span])))
            } catch {
                throw err(.badHeader, "header", "the \"tensors\" list does not decode: \(error)")
            }
        }
        guard list.count <= LCW.maxTensors else { throw err(.limitExceeded, "header", "\(list.count) tensors exceed the cap of \(LCW.maxTensors)") }
        let metaJSON: Data
        switch members[1] {
        case .absent: metaJSON = Data("{}".utf8)
        case .duplicate: throw err(.duplicateName, "header", "two \"metadata\" keys")
        case .at(let span):
            guard headerBytes[span.lowerBound] == UInt8(ascii: "{") else { throw err(.badHeader, "header", "\"metadata\" is not a JSON object") }
            metaJSON = Data(UnsafeRawBufferPointer(rebasing: headerBytes[span]))
        }

        var tensors: [Checkpoint.Tensor] = []
        var spans: [(Int, Int, String)] = []
        var names = Set<String>()
        for (i, entry) in list.enumerated() {
            let place = "tensor #\(i)"
            guard let t = entry.entry else { throw err(.badHeader, place, "entry is not an object") }
            guard let name = t.name, !name.isEmpty, name.utf8.count <= LCW.maxNameBytes else {
                throw err(.badHeader, place, "missing, empty or over-long name")
            }
            let tp = "tensor '\(name)'"
            guard names.insert(name).inserted else { throw err(.duplicateName, tp, "two tensors are named '\(name)'") }
            guard let dn = t.dtype, let dtype = DType(rawValue: dn) else {
                throw err(.unknownDType, tp, "unknown dtype \(t.dtype ?? "nil")")
            }
            guard let shape = t.shape, shape.count <= LCW.maxRank else { throw err(.badHeader, tp, "shape missing, not integers, or rank over \(LCW.maxRank)") }
            guard shape.allSatisfy({ $0 >= 0 }) else { throw err(.badHeader, tp, "shape entries must be non-negative integers") }
            guard let offset = t.offset, let nbytes = t.nbytes, offset >= 0, nbytes >= 0 else {
                throw err(.badHeader, tp, "offset and nbytes must be non-negative integers")
            }
            guard let want = Checked.byteCount(shape, dtype) else { throw err(.overflow, tp, "shape \(shape) x \(dtype.size) bytes overflows") }
            guard want == nbytes else { throw err(.shapeMismatch, tp, "shape \(shape) of \(dtype.rawValue) needs \(want) bytes but nbytes is \(nbytes)") }
            guard offset % LCW.alignment == 0 else { throw err(.misaligned, tp, "offset \(offset) is not \(LCW.alignment)-byte aligned") }
            guard let end = Checked.add(offset, nbytes), end <= dataLength else {
                throw err(.outOfBounds, tp, "bytes \(offset)..<\(offset &+ nbytes) run past the \(dataLength)-byte data section")
            }
            spans.append((offset, end, name))
            let view = UnsafeRawBufferPointer(rebasing: b[(dataOffset + offset)..<(dataOffset + end)])
            let bytes = TensorBytes(viewOf: source, view)
            tensors.append(Checkpoint.Tensor(name: name, dtype: dtype, shape: shape, origin: "data offset \(offset)") { bytes })
        }
        spans.sort { $0.0 < $1.0 }
        for (a, c) in zip(spans, spans.dropFirst()) where a.1 > c.0 {
            throw err(.overlappingEntries, "tensors '\(a.2)' and '\(c.2)'", "tensors overlap (data bytes \(c.0)..<\(a.1))")
        }
        let ckpt = Checkpoint(file: file, format: .lcw, tensors: tensors, metadata: ["lcw_version": String(version)], source: source)
        return LCWFile(checkpoint: ckpt, metadataJSON: metaJSON, version: version, headerBytes: h, dataOffset: dataOffset)
    }
}

/// The header's tensor list, each entry decoded leniently so that `LCWReader.read` names what is
/// wrong with it; the "metadata" member is not decoded here (see `JSONSpans`).
private struct LenientEntry: Decodable {
    struct Fields: Decodable {
        var name: String?, dtype: String?, shape: [Int]?, offset: Int?, nbytes: Int?
        enum CodingKeys: String, CodingKey { case name, dtype, shape, offset, nbytes }
        init(from d: Decoder) throws {
            let c = try d.container(keyedBy: CodingKeys.self)   // throws when the entry is not an object
            name = try? c.decode(String.self, forKey: .name)
            dtype = try? c.decode(String.self, forKey: .dtype)
            shape = try? c.decode([Int].self, forKey: .shape)
            offset = try? c.decode(Int.self, forKey: .offset)
            nbytes = try? c.decode(Int.self, forKey: .nbytes)
        }
    }
    let entry: Fields?
    init(from d: Decoder) throws { entry = try? Fields(from: d) }
}
