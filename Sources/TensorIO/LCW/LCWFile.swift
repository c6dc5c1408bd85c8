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
    /// The header's "metadata" object, re-serialised as JSON.
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
        let headerData = Data(b[LCW.fixedHeaderSize..<(LCW.fixedHeaderSize + h)])
        guard let obj = try? JSONSerialization.jsonObject(with: headerData), let top = obj as? [String: Any] else {
            throw err(.badHeader, "header", "header is not a JSON object")
        }
        guard let list = top["tensors"] as? [Any] else { throw err(.badHeader, "header", "header has no \"tensors\" array") }
        guard list.count <= LCW.maxTensors else { throw err(.limitExceeded, "header", "\(list.count) tensors exceed the cap of \(LCW.maxTensors)") }
        let meta = top["metadata"] ?? [String: Any]()
        guard meta is [String: Any], let metaJSON = try? JSONSerialization.data(withJSONObject: meta, options: [.sortedKeys]) else {
            throw err(.badHeader, "header", "\"metadata\" is not a JSON object")
        }

        var tensors: [Checkpoint.Tensor] = []
        var spans: [(Int, Int, String)] = []
        var names = Set<String>()
        for (i, any) in list.enumerated() {
            let place = "tensor #\(i)"
            guard let t = any as? [String: Any] else { throw err(.badHeader, place, "entry is not an object") }
            guard let name = t["name"] as? String, !name.isEmpty, name.utf8.count <= LCW.maxNameBytes else {
                throw err(.badHeader, place, "missing, empty or over-long name")
            }
            let tp = "tensor '\(name)'"
            guard names.insert(name).inserted else { throw err(.duplicateName, tp, "two tensors are named '\(name)'") }
            guard let dn = t["dtype"] as? String, let dtype = DType(rawValue: dn) else {
                throw err(.unknownDType, tp, "unknown dtype \(String(describing: t["dtype"] ?? "nil"))")
            }
            guard let shapeAny = t["shape"] as? [Any], shapeAny.count <= LCW.maxRank else { throw err(.badHeader, tp, "shape missing or rank over \(LCW.maxRank)") }
            let shape: [Int] = try shapeAny.map {
                guard let n = ($0 as? NSNumber).flatMap({ Int(exactly: $0.doubleValue) }), n >= 0 else {
                    throw err(.badHeader, tp, "shape entries must be non-negative integers")
                }
                return n
            }
            guard let offset = (t["offset"] as? NSNumber).flatMap({ Int(exactly: $0.doubleValue) }),
                  let nbytes = (t["nbytes"] as? NSNumber).flatMap({ Int(exactly: $0.doubleValue) }), offset >= 0, nbytes >= 0 else {
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
