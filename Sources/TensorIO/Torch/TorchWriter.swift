import Foundation

/// Writes a state dict as `torch.save(state_dict, path)` does (torch >= 1.6 zip format), so
/// that `torch.load(path, weights_only=True)` returns an `OrderedDict` of the tensors in order.
///
/// Mirrors PyTorch's writer (torch/serialization.py `_save`, caffe2/serialize/inline_container.cc
/// `PyTorchStreamWriter` over miniz): the same records in the same order, the same 64-byte
/// payload alignment through a `FB` padding field in each local header, data descriptors after
/// each payload, and a protocol-2 `data.pkl` with the opcodes CPython's pickler emits for
/// torch's reduction of an `OrderedDict` of tensors. formats/export.md specifies the output.
///
/// Deterministic: no timestamps (fixed DOS date 1980-01-01 00:00), and `.data/serialization_id`
/// is derived from the records' names, sizes and CRC-32s rather than drawn at random.
/// Streaming: one tensor's bytes are held at a time; the file is written through `AtomicFile`,
/// so a failure leaves no partial file (an existing `path` is left as it was).
public enum TorchWriter {
    /// Payload alignment in the file (torch's default `.storage_alignment`).
    public static let alignment = 64

    /// Writes `tensors`, in order, as storages `data/0`, `data/1`, ... of one state dict.
    ///
    /// - Parameters:
    ///   - path: destination; its file name without the last extension names the archive's
    ///     top-level folder, as `torch.save` does (`archive` when that name is unusable).
    ///   - tensors: contiguous tensors with unique names; each becomes one storage of exactly
    ///     its size, viewed with offset 0 and contiguous strides.
    /// - Returns: the number of bytes in the finished file.
    /// - Throws: `ReadError` (`duplicateName`, `overflow`, `limitExceeded` for archives that
    ///   would need ZIP64, `shapeMismatch` when a loader returns the wrong byte count,
    ///   `writeFailed`), or whatever a tensor's loader throws; `path` is then left as it was.
    @discardableResult
    public static func write(to path: String, tensors: [Checkpoint.Tensor]) throws -> Int {
        var names = Set<String>()
        var sizes: [Int] = []
        for t in tensors {
            guard names.insert(t.name).inserted else {
                throw ReadError(.duplicateName, file: path, place: "tensor '\(t.name)'", "two tensors are named '\(t.name)'")
            }
            guard let n = Checked.byteCount(t.shape, t.dtype) else {
                throw ReadError(.overflow, file: path, place: "tensor '\(t.name)'", "size overflows")
            }
            sizes.append(n)
        }
        let folder = archiveName(for: path)
        let pickle = StatePickler.pickle(tensors)

        // Records in torch.save's order; the serialization id is computed when it is reached.
        enum Payload { case bytes([UInt8]), tensor(Int), serializationID }
        var records: [(name: String, size: Int, payload: Payload)] = [
            ("data.pkl", pickle.count, .bytes(pickle)),
            (".format_version", 1, .bytes(Array("1".utf8))),
            (".storage_alignment", 2, .bytes(Array(String(alignment).utf8))),
            ("byteorder", 6, .bytes(Array("little".utf8))),
        ]
        for (i, n) in sizes.enumerated() { records.append(("data/\(i)", n, .tensor(i))) }
        records.append(("version", 2, .bytes(Array("3\n".utf8))))
        records.append((".data/serialization_id", 40, .serializationID))

        // Lay the whole file out first so an archive that would need ZIP64 is refused before
        // anything is written.
        let entries = records.map { Zip.Entry(name: Array("\(folder)/\($0.name)".utf8), size: $0.size) }
        let centralOffset = try Zip.layout(entries, file: path)

        let out = try AtomicFile(path: path)
        do {
            var central: [Zip.CentralRecord] = []
            var idHash = SHA256()
            for (r, e) in zip(records, entries) {
                let localOffset = out.bytesWritten
                try out.write(Zip.localHeader(e, at: localOffset))
                var crc = CRC32()
                switch r.payload {
                case .bytes(let b):
                    crc.update(b)
                    try out.write(b)
                case .tensor(let i):
                    let bytes = try tensors[i].load()
                    guard bytes.count == r.size else {
                        throw ReadError(.shapeMismatch, file: path, place: "tensor '\(tensors[i].name)'",
                                        "loader produced \(bytes.count) bytes, expected \(r.size)")
                    }
                    try bytes.withBytes { b in
                        crc.update(b)
                        try out.write(b)
                    }
                    bytes.releasePages()   // streamed: keep resident memory to about one tensor
                case .serializationID:
                    let id = serializationID(idHash.finalize())
                    crc.update(id)
                    try out.write(id)
                }
                if e.size > 0 { try out.write(Zip.dataDescriptor(crc: crc.value, size: e.size)) }
                idHash.update(e.name + [0] + le(UInt64(e.size)) + le(crc.value))
                central.append(.init(entry: e, crc: crc.value, localOffset: localOffset))
            }
            guard out.bytesWritten == centralOffset else {
                throw ReadError(.writeFailed, file: path, "internal error: wrote \(out.bytesWritten) bytes before the central directory, laid out \(centralOffset)")
            }
            try out.write(Zip.centralDirectory(central, at: centralOffset))
            try out.commit()
            return out.bytesWritten
        } catch {
            out.abort()
            throw error
        }
    }

    /// The archive's top-level folder: the destination's file name without its last extension,
    /// as `torch.save` names it; `archive` (torch's name for in-memory saves) when that is empty
    /// or would be an unsafe entry name.
    static func archiveName(for path: String) -> String {
        var name = (path as NSString).lastPathComponent
        if let dot = name.lastIndex(of: ".") { name = String(name[..<dot]) }
        let unsafe = name.isEmpty || name == "." || name == ".." || name.contains("\\") || name.contains("\0")
        return unsafe ? "archive" : name
    }

    /// 40 decimal digits like torch's id (two zero-padded 20-digit numbers), taken from a
    /// SHA-256 of every earlier record's name, size and CRC-32: the same content gives the same id.
    static func serializationID(_ digest: [UInt8]) -> [UInt8] {
        func u64(_ at: Int) -> UInt64 { digest[at..<at + 8].reduce(0) { $0 << 8 | UInt64($1) } }
        func pad20(_ v: UInt64) -> String { let s = String(v); return String(repeating: "0", count: 20 - s.count) + s }
        return Array((pad20(u64(0)) + pad20(u64(8))).utf8)
    }

    /// The storage class torch pickles for `dtype` (`torch.FloatStorage`, ...): the inverse of
    /// `DType(torchStorageClass:)`.
    static func storageClass(_ dtype: DType) -> String {
        switch dtype {
        case .f32: return "FloatStorage"
        case .f64: return "DoubleStorage"
        case .f16: return "HalfStorage"
        case .bf16: return "BFloat16Storage"
        case .i64: return "LongStorage"
        case .i32: return "IntStorage"
        case .i16: return "ShortStorage"
        case .i8: return "CharStorage"
        case .u8: return "ByteStorage"
        case .bool: return "BoolStorage"
        }
    }
}

// MARK: - data.pkl

/// The pickle CPython's `pickle.Pickler(protocol=2)` writes for torch's reduction of an
/// `OrderedDict` of contiguous tensors, opcode for opcode and memo slot for memo slot:
///
/// ```
/// PROTO 2
/// GLOBAL 'collections OrderedDict'; BINPUT; EMPTY_TUPLE; REDUCE; BINPUT
/// MARK                                     (a batch of up to 1000 items; one item: no MARK, SETITEM)
///   BINUNICODE name; BINPUT
///   GLOBAL 'torch._utils _rebuild_tensor_v2' (then BINGET); BINPUT
///   MARK
///     MARK 'storage' GLOBAL 'torch FloatStorage' 'key' 'cpu' numel TUPLE; BINPUT; BINPERSID
///     storage_offset 0; size tuple; stride tuple; NEWFALSE
///     BINGET OrderedDict; EMPTY_TUPLE; REDUCE; BINPUT   (backward_hooks = OrderedDict())
///   TUPLE; BINPUT; REDUCE; BINPUT
/// SETITEMS
/// STOP
/// ```
/// Strings `'storage'` and `'cpu'` and each GLOBAL are memoised once and fetched with BINGET
/// afterwards; non-empty tuples are memoised; integers use the smallest of BININT1, BININT2,
/// BININT, LONG1.
struct StatePickler {
    private(set) var bytes: [UInt8] = [0x80, 0x02]   // PROTO 2
    private var memoSize = 0
    private var memo: [String: Int] = [:]            // globals and shared strings -> memo slot

    static func pickle(_ tensors: [Checkpoint.Tensor]) -> [UInt8] {
        var p = StatePickler()
        p.global("collections", "OrderedDict")
        p.op(0x29)                                   // EMPTY_TUPLE
        p.op(0x52)                                   // REDUCE
        p.put()
        // pickle._batch_setitems: batches of 1000; a batch of one is a bare SETITEM.
        var start = 0
        while start < tensors.count {
            let batch = tensors[start..<min(start + 1000, tensors.count)]
            if batch.count > 1 { p.op(0x28) }        // MARK
            for (i, t) in zip(batch.indices, batch) {
                p.string(t.name)
                p.tensor(t, key: String(i))
            }
            p.op(batch.count > 1 ? 0x75 : 0x73)      // SETITEMS | SETITEM
            start += batch.count
        }
        p.op(0x2E)                                   // STOP
        return p.bytes
    }

    /// `_rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`, reduced and memoised.
    private mutating func tensor(_ t: Checkpoint.Tensor, key: String) {
        global("torch._utils", "_rebuild_tensor_v2")
        op(0x28)                                     // MARK (the 6 arguments)
        op(0x28)                                     // MARK (the persistent id)
        sharedString("storage")
        global("torch", TorchWriter.storageClass(t.dtype))
        string(key)
        sharedString("cpu")
        int(t.elementCount)
        op(0x74)                                     // TUPLE
        put()
        op(0x51)                                     // BINPERSID
        int(0)                                       // storage_offset
        tuple(t.shape)
        tuple(Self.contiguousStrides(t.shape))
        op(0x89)                                     // NEWFALSE: requires_grad
        global("collections", "OrderedDict")         // backward_hooks
        op(0x29)
        op(0x52)
        put()
        op(0x74)                                     // TUPLE (MARK'd arguments)
        put()
        op(0x52)                                     // REDUCE
        put()
    }

    /// Row-major strides in elements, as torch computes them (a 0 extent counts as 1).
    static func contiguousStrides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var s = 1
        for i in shape.indices.reversed() {
            strides[i] = s
            s *= max(shape[i], 1)
        }
        return strides
    }

    private mutating func op(_ code: UInt8) { bytes.append(code) }

    private mutating func put() {
        if memoSize < 256 { bytes += [0x71, UInt8(memoSize)] }          // BINPUT
        else { bytes += [0x72] + le(UInt32(memoSize)) }                 // LONG_BINPUT
        memoSize += 1
    }

    private mutating func get(_ slot: Int) {
        if slot < 256 { bytes += [0x68, UInt8(slot)] }                  // BINGET
        else { bytes += [0x6A] + le(UInt32(slot)) }                     // LONG_BINGET
    }

    private mutating func global(_ module: String, _ name: String) {
        let key = "global \(module) \(name)"
        if let slot = memo[key] { get(slot); return }
        bytes += [0x63] + Array("\(module)\n\(name)\n".utf8)            // GLOBAL
        memo[key] = memoSize
        put()
    }

    /// BINUNICODE, memoised (a fresh string object each time).
    private mutating func string(_ s: String) {
        let u = Array(s.utf8)
        bytes += [0x58] + le(UInt32(u.count)) + u
        put()
    }

    /// A string torch passes as the same object every time: written once, then fetched.
    private mutating func sharedString(_ s: String) {
        let key = "string \(s)"
        if let slot = memo[key] { get(slot); return }
        memo[key] = memoSize
        string(s)
    }

    private mutating func int(_ v: Int) {
        switch v {
        case 0...0xFF: bytes += [0x4B, UInt8(v)]                        // BININT1
        case 0x100...0xFFFF: bytes += [0x4D] + le(UInt16(v))            // BININT2
        case Int(Int32.min)...Int(Int32.max): bytes += [0x4A] + le(UInt32(bitPattern: Int32(v)))  // BININT
        default:                                                        // LONG1: minimal two's complement
            var b = withUnsafeBytes(of: Int64(v).littleEndian) { Array($0) }
            while b.count > 1, (b[b.count - 1] == 0 && b[b.count - 2] & 0x80 == 0) || (b[b.count - 1] == 0xFF && b[b.count - 2] & 0x80 != 0) {
                b.removeLast()
            }
            bytes += [0x8A, UInt8(b.count)] + b
        }
    }

    private mutating func tuple(_ values: [Int]) {
        switch values.count {
        case 0: op(0x29); return                                        // EMPTY_TUPLE (not memoised)
        case 1...3:
            values.forEach { int($0) }
            op([0x85, 0x86, 0x87][values.count - 1])                    // TUPLE1..3
        default:
            op(0x28)
            values.forEach { int($0) }
            op(0x74)
        }
        put()
    }
}

// MARK: - Zip container

/// The parts of a STORED zip that torch's writer (miniz) produces, written forward only.
enum Zip {
    struct Entry {
        var name: [UInt8]
        var size: Int
    }

    struct CentralRecord {
        var entry: Entry
        var crc: UInt32
        var localOffset: Int
    }

    static let versionNeeded: UInt16 = 20       // 2.0: stored entries, data descriptors
    static let dosDate: UInt16 = 0x0021         // 1980-01-01 (time 00:00:00 = 0): fixed, reproducible
    static let utf8Names: UInt16 = 0x0800       // bit 11
    static let hasDescriptor: UInt16 = 0x0008   // bit 3: CRC and sizes follow the payload
    static let maxOffset = Int(UInt32.max) - 1  // miniz switches to ZIP64 at 0xFFFFFFFF

    /// Local header size for an entry whose header starts at `offset`: 30 + name + extra, where
    /// the extra field `FB <len> ZZZ...` pads the payload to `TorchWriter.alignment` (as torch's
    /// `getPadding`: the 4-byte field header is always present).
    static func localHeaderSize(_ e: Entry, at offset: Int) -> Int {
        30 + e.name.count + 4 + padding(e, at: offset)
    }

    static func padding(_ e: Entry, at offset: Int) -> Int {
        let start = offset + 30 + e.name.count + 4
        return (TorchWriter.alignment - start % TorchWriter.alignment) % TorchWriter.alignment
    }

    /// Offsets of everything; refuses what would need ZIP64 (an offset or size of 4 GiB or
    /// more, 65,535 entries or more) before a byte is written.
    /// - Returns: the offset of the central directory.
    static func layout(_ entries: [Entry], file: String) throws -> Int {
        guard entries.count < 0xFFFF else {
            throw ReadError(.limitExceeded, file: file, "\(entries.count) zip entries need ZIP64, which this writer does not produce")
        }
        var offset = 0
        var centralSize = 0
        for e in entries {
            guard offset <= maxOffset, e.size <= maxOffset else {
                throw ReadError(.limitExceeded, file: file, place: "entry '\(String(decoding: e.name, as: UTF8.self))'",
                                "the archive would pass 4 GiB, which needs ZIP64; this writer does not produce ZIP64 (export as safetensors instead)")
            }
            offset += localHeaderSize(e, at: offset) + e.size + (e.size > 0 ? 16 : 0)
            centralSize += 46 + e.name.count
        }
        guard offset <= maxOffset, centralSize <= maxOffset else {
            throw ReadError(.limitExceeded, file: file, "the archive would pass 4 GiB, which needs ZIP64; this writer does not produce ZIP64 (export as safetensors instead)")
        }
        return offset
    }

    /// Flags, as miniz sets them: a data descriptor follows every non-empty payload.
    static func flags(_ e: Entry) -> UInt16 { e.size > 0 ? utf8Names | hasDescriptor : utf8Names }

    /// Local file header; CRC and sizes are zero (they follow in the data descriptor).
    static func localHeader(_ e: Entry, at offset: Int) -> [UInt8] {
        let pad = padding(e, at: offset)
        var h = le(UInt32(0x0403_4B50)) + le(versionNeeded) + le(flags(e)) + le(UInt16(0)) + le(UInt16(0)) + le(dosDate)
        h += le(UInt32(0)) + le(UInt32(0)) + le(UInt32(0))
        h += le(UInt16(e.name.count)) + le(UInt16(4 + pad)) + e.name
        h += Array("FB".utf8) + le(UInt16(pad)) + [UInt8](repeating: UInt8(ascii: "Z"), count: pad)
        return h
    }

    /// Data descriptor with signature, 32-bit sizes (16 bytes).
    static func dataDescriptor(crc: UInt32, size: Int) -> [UInt8] {
        le(UInt32(0x0807_4B50)) + le(crc) + le(UInt32(size)) + le(UInt32(size))
    }

    /// Central directory, then (as torch's files always have) a ZIP64 end record and locator,
    /// then the end of central directory record.
    static func centralDirectory(_ records: [CentralRecord], at offset: Int) -> [UInt8] {
        var cd: [UInt8] = []
        for r in records {
            let e = r.entry
            cd += le(UInt32(0x0201_4B50)) + le(versionNeeded) + le(versionNeeded) + le(flags(e)) + le(UInt16(0)) + le(UInt16(0)) + le(dosDate)
            cd += le(r.crc) + le(UInt32(e.size)) + le(UInt32(e.size))
            cd += le(UInt16(e.name.count)) + le(UInt16(0)) + le(UInt16(0)) + le(UInt16(0)) + le(UInt16(0)) + le(UInt32(0))
            cd += le(UInt32(r.localOffset)) + e.name
        }
        let n = UInt64(records.count)
        let zip64End = offset + cd.count
        var tail = le(UInt32(0x0606_4B50)) + le(UInt64(44)) + le(UInt16(45)) + le(UInt16(45)) + le(UInt32(0)) + le(UInt32(0))
        tail += le(n) + le(n) + le(UInt64(cd.count)) + le(UInt64(offset))
        tail += le(UInt32(0x0706_4B50)) + le(UInt32(0)) + le(UInt64(zip64End)) + le(UInt32(1))
        tail += le(UInt32(0x0605_4B50)) + le(UInt16(0)) + le(UInt16(0)) + le(UInt16(n)) + le(UInt16(n))
        tail += le(UInt32(cd.count)) + le(UInt32(offset)) + le(UInt16(0))
        return cd + tail
    }
}

fileprivate func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
