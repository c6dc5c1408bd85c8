import Foundation

/// Reads `torch.save` files: the zip format (torch >= 1.6) and the legacy pickle-stream format.
/// Spec of what is accepted: formats/pytorch.md.
public enum TorchReader {

    // MARK: - Zip format

    public static func readZip(_ source: ByteSource) throws -> Checkpoint {
        let file = source.name
        let zip = try ZipArchive(source)
        let names = zip.entries.map(\.name)
        if names.contains(where: { $0.hasSuffix("constants.pkl") || $0.contains("/code/") || $0.hasPrefix("code/") }) {
            throw ReadError(.torchScript, file: file,
                            "this is a TorchScript archive (torch.jit.save), which can carry code; it is refused. "
                            + "Load it in PyTorch and save model.state_dict() with torch.save instead.")
        }
        let pkls = names.filter { $0.hasSuffix("/data.pkl") && $0.split(separator: "/").count == 2 }
        guard pkls.count == 1, let pklName = pkls.first else {
            throw ReadError(.notACheckpoint, file: file,
                            pkls.isEmpty ? "zip archive without a top-level '<folder>/data.pkl': not a PyTorch checkpoint"
                                         : "zip archive with several data.pkl entries: \(pkls)")
        }
        let prefix = String(pklName.dropLast("data.pkl".count))   // "liteclip2/"
        for n in names where !n.hasPrefix(prefix) {
            throw ReadError(.unsafeEntryName, file: file, place: "entry '\(n)'", "entry outside the archive's single top-level folder '\(prefix)'")
        }
        var bigEndianFile = false
        if let bo = zip.entry(prefix + "byteorder") {
            let t = try zip.bytes(of: bo)
            switch t.withBytes({ String(decoding: $0, as: UTF8.self) }) {
            case "little": bigEndianFile = false
            case "big": bigEndianFile = true
            case let other: throw ReadError(.badHeader, file: file, place: "entry '\(bo.name)'", "unknown byte order '\(other.prefix(20))'")
            }
        }
        let pkl = try zip.bytes(of: zip.entry(pklName)!)
        var machine = PickleMachine(data: pkl.buffer, file: file, entry: "entry '\(pklName)'")
        let top = try withExtendedLifetime(pkl) { try machine.run() }

        // Every storage the pickle names must have a record of exactly numel x element size bytes.
        var records: [String: ZipArchive.Entry] = [:]
        for key in machine.storageOrder {
            let s = machine.storages[key]!
            let recName = prefix + "data/" + key
            guard let rec = zip.entry(recName) else {
                throw ReadError(.missingRecord, file: file, place: "storage '\(key)'", "the pickle references storage '\(key)' but the archive has no entry '\(recName)'")
            }
            guard let want = Checked.mul(s.numel, s.dtype.size), want == rec.size else {
                throw ReadError(.storageSizeMismatch, file: file, place: "entry '\(recName)'",
                                "storage declares \(s.numel) x \(s.dtype.size) bytes but the entry holds \(rec.size)")
            }
            records[key] = rec
        }
        let bigEndian = bigEndianFile
        let cache = StorageCache()
        let (found, wrapper, entries) = try findTensors(top, file: file)
        let tensors: [Checkpoint.Tensor] = found.map { f in
            let t = f.ref, name = f.name
            let rec = records[t.storage.key]!
            return Checkpoint.Tensor(name: name, dtype: t.dtype, shape: t.shape, origin: "entry '\(rec.name)'", container: f.container) {
                let storage = try cache.get(rec.name) { try zip.bytes(of: rec) }
                return try materialize(t, storage: storage, bigEndian: bigEndian, file: file, name: name)
            }
        }
        var meta: [String: String] = ["byteorder": bigEndian ? "big" : "little", "archive_folder": String(prefix.dropLast())]
        if let v = zip.entry(prefix + "version"), let t = try? zip.bytes(of: v) {
            meta["version"] = t.withBytes { String(decoding: $0, as: UTF8.self) }.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        meta["storage_locations"] = Set(machine.storages.values.map(\.location)).sorted().joined(separator: ",")
        var ckpt = Checkpoint(file: file, format: .torchZip, wrapper: wrapper, tensors: tensors, metadata: meta, source: source)
        ckpt.entries = entries
        ckpt.placeholders = machine.placeholderNames.sorted()
        return ckpt
    }

    // MARK: - Legacy format

    /// `0x1950a86a20f9469cfc6c` as LONG1 bytes (little-endian two's complement).
    static let legacyMagic: [UInt8] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]

    public static func readLegacy(_ source: ByteSource) throws -> Checkpoint {
        let file = source.name
        let b = source.bytes
        var pos = 0
        func nextPickle(_ what: String) throws -> (PyValue, PickleMachine) {
            let rest = UnsafeRawBufferPointer(rebasing: b[pos...])
            var m = PickleMachine(data: rest, file: file, entry: "legacy \(what) (file offset \(pos))")
            let v = try m.run(requireEnd: false)
            pos += m.consumed
            return (v, m)
        }
        let (magic, _) = try nextPickle("magic number")
        guard case .bigInt(let mb) = magic, mb == legacyMagic else {
            // A whole pickle that is not the magic number: pickle.dump output, not torch.save's.
            throw ReadError(.notACheckpoint, file: file, place: "byte 0",
                            "a plain Python pickle (a \(magic.typeName), as pickle.dump writes), not a torch.save checkpoint: "
                            + "it does not start with PyTorch's magic number")
        }
        let (proto, _) = try nextPickle("protocol version")
        guard case .int(1001) = proto else {
            throw ReadError(.badLegacyHeader, file: file, "legacy protocol version is not 1001")
        }
        let (sysInfo, _) = try nextPickle("sys_info")
        guard case .dict(let si) = sysInfo else { throw ReadError(.badLegacyHeader, file: file, "legacy sys_info is not a dict") }
        let (top, machine) = try nextPickle("object")
        let (keyList, _) = try nextPickle("storage keys")
        guard case .list(let kl) = keyList else { throw ReadError(.badLegacyHeader, file: file, "legacy storage key list is not a list") }
        let keys: [String] = try kl.items.map {
            guard let k = $0.keyText else { throw ReadError(.badLegacyHeader, file: file, "legacy storage key is \($0.typeName)") }
            return k
        }
        guard Set(keys) == Set(machine.storages.keys), keys.count == Set(keys).count else {
            throw ReadError(.missingRecord, file: file, place: "storage key list",
                            "keys listed \(keys.count) do not match the \(machine.storages.count) storages the pickle uses")
        }
        // Raw storages follow in key-list order: int64 LE element count, then little-endian data.
        var regions: [String: UnsafeRawBufferPointer] = [:]
        for key in keys {
            let s = machine.storages[key]!
            let hdr = try source.slice(pos, 8, place: "storage '\(key)' header @ byte \(pos)")
            let n = Int64(bitPattern: hdr.le64(0))
            guard n == Int64(s.numel) else {
                throw ReadError(.storageSizeMismatch, file: file, place: "storage '\(key)' @ byte \(pos)",
                                "record says \(n) elements but the pickle declares \(s.numel)")
            }
            guard let len = Checked.mul(s.numel, s.dtype.size) else { throw ReadError(.overflow, file: file, place: "storage '\(key)'", "size overflows") }
            regions[key] = try source.slice(pos + 8, len, place: "storage '\(key)' data @ byte \(pos + 8)")
            pos += 8 + len
        }
        guard pos == b.count else {
            throw ReadError(.malformedPickle, file: file, place: "byte \(pos)", "\(b.count - pos) trailing bytes after the last storage")
        }
        let (found, wrapper, entries) = try findTensors(top, file: file)
        let tensors: [Checkpoint.Tensor] = try found.map { f in
            let t = f.ref, name = f.name
            var ref = t
            var region = regions[t.storage.key]!
            if let v = t.storage.view {
                // A legacy storage view: elements [offset, offset+numel) of another storage.
                guard let base = regions[v.key], let s = machine.storages[v.key],
                      let end = Checked.add(v.offset, v.numel), end <= s.numel else {
                    throw ReadError(.viewOutOfBounds, file: file, place: "tensor '\(name)'", "legacy storage view outside its base storage")
                }
                region = UnsafeRawBufferPointer(rebasing: base[(v.offset * s.dtype.size)..<(end * s.dtype.size)])
                ref = TensorRef(storage: t.storage, dtype: t.dtype, offset: t.offset, shape: t.shape, stride: t.stride)
            }
            let storageBytes = TensorBytes(viewOf: source, region), tr = ref
            return Checkpoint.Tensor(name: name, dtype: t.dtype, shape: t.shape, origin: "storage '\(t.storage.key)'", container: f.container) {
                try materialize(tr, storage: storageBytes, bigEndian: false, file: file, name: name)
            }
        }
        var meta: [String: String] = ["byteorder": "little"]
        if case .bool(let le)? = si.value(forKey: "little_endian") { meta["saved_on_little_endian"] = le ? "true" : "false" }
        meta["storage_locations"] = Set(machine.storages.values.map(\.location)).sorted().joined(separator: ",")
        var ckpt = Checkpoint(file: file, format: .torchLegacy, wrapper: wrapper, tensors: tensors, metadata: meta, source: source)
        ckpt.entries = entries
        ckpt.placeholders = machine.placeholderNames.sorted()
        return ckpt
    }

    // MARK: - Finding the tensors

    /// Containers and tensors one file's object tree may hold (a large real checkpoint has a
    /// few hundred thousand).
    static let maxWalkVisits = 4_000_000

    /// A tensor found in the object tree: the containers' keys leading to it, and its own key.
    struct Found {
        let container: [String]
        let key: String
        let ref: TensorRef
        var name: String { (container + [key]).joined(separator: ".") }
    }

    /// Every tensor in the file's object tree, at any depth, in pickle order: dict values by
    /// their key, list and tuple items by their index. Where they sit decides nothing here (the
    /// caller picks the weights it wants by what they are, not by a list of key names).
    static func findTensors(_ top: PyValue, file: String) throws -> (found: [Found], wrapper: String?, entries: [Checkpoint.Entry]) {
        var found: [Found] = []
        // Shared containers (memo references) can make a small pickle a huge tree: visits are
        // capped, and a container object met again is not walked again.
        var visits = 0
        var seen = Set<ObjectIdentifier>()
        var tooBig = false
        func key(_ k: PyValue) -> String {
            switch k {
            case .string(let s): return s
            case .int(let i): return String(i)
            case .bool(let b): return b ? "True" : "False"
            default: return "<\(k.typeName)>"
            }
        }
        func walk(_ v: PyValue, _ path: [String], as name: String?) {
            guard !tooBig else { return }
            switch v {
            case .tensor, .dict, .list, .tuple, .object:
                visits += 1
                if visits > maxWalkVisits { tooBig = true; return }
            default: return
            }
            switch v {
            case .tensor(let t):
                if let name { found.append(Found(container: path, key: name, ref: t)) }
                else { found.append(Found(container: [], key: "tensor", ref: t)) }
            case .dict(let d):
                guard seen.insert(ObjectIdentifier(d)).inserted else { return }
                let here = name.map { path + [$0] } ?? path
                for e in d.entries { walk(e.value, here, as: key(e.key)) }
            case .list(let l):
                guard seen.insert(ObjectIdentifier(l)).inserted else { return }
                let here = name.map { path + [$0] } ?? path
                for (i, item) in l.items.enumerated() { walk(item, here, as: String(i)) }
            case .tuple(let items):
                let here = name.map { path + [$0] } ?? path
                for (i, item) in items.enumerated() { walk(item, here, as: String(i)) }
            case .object(let ref):
                // An inert placeholder (a config object, a dataclass): what it was filled with,
                // its state's keys read like attribute names. Back-references are not followed.
                guard let o = ref.object, seen.insert(ObjectIdentifier(o)).inserted else { break }
                let here = name.map { path + [$0] } ?? path
                for e in o.dictItems { walk(e.value, here, as: key(e.key)) }
                for (i, item) in o.listItems.enumerated() { walk(item, here, as: String(i)) }
                if let st = o.state {
                    if case .dict = st { walk(st, here, as: nil) } else { walk(st, here, as: "state") }
                }
            default:
                break
            }
        }
        walk(top, [], as: nil)
        guard !tooBig else {
            throw ReadError(.limitExceeded, file: file, "the object tree has more than \(maxWalkVisits) containers and tensors (shared references expand it)")
        }
        guard !found.isEmpty else {
            var what = "the file holds a \(top.typeName) without any tensor"
            if case .dict(let d) = top {
                what += "; top-level keys: \(d.entries.prefix(12).map { key($0.key) })"
            }
            throw ReadError(.noStateDict, file: file, what)
        }
        // Where they are, in words, and the top-level entries of a wrapped file.
        var order: [String] = [], byContainer: [String: Int] = [:]
        var byEntry: [String: Int] = [:]
        for f in found {
            let c = f.container.joined(separator: ".")
            if byContainer[c] == nil { order.append(c) }
            byContainer[c, default: 0] += 1
            byEntry[f.container.first ?? f.key, default: 0] += 1
        }
        let counts = order.map { ($0, byContainer[$0]!) }
        let wrapper: String?
        if counts.count == 1 {
            wrapper = counts[0].0.isEmpty ? nil : "nested under key '\(counts[0].0)'"
        } else {
            wrapper = "tensors in " + counts.map { $0.0.isEmpty ? "the top level (\($0.1))" : "'\($0.0)' (\($0.1))" }.joined(separator: ", ")
        }
        var entries: [Checkpoint.Entry] = []
        if case .dict(let d) = top, found.contains(where: { !$0.container.isEmpty }) {
            for e in d.entries {
                let k = key(e.key)
                entries.append(.init(key: k, type: e.value.typeName, tensors: byEntry[k] ?? 0))
            }
        }
        return (found, wrapper, entries)
    }

    // MARK: - Materialising a strided view

    /// Contiguous little-endian bytes of a tensor: a zero-copy slice when the view is contiguous
    /// and the storage little-endian, else a gather (with byte swap for big-endian storages).
    static func materialize(_ t: TensorRef, storage: TensorBytes, bigEndian: Bool, file: String, name: String) throws -> TensorBytes {
        let es = t.dtype.size
        let count = t.shape.reduce(1, *)
        // The pickle machine checked the view against the declared numel and the container
        // checked the record against numel; this re-checks against the bytes actually present.
        if count > 0 {
            let last = t.offset + zip(t.shape, t.stride).reduce(0) { $0 + ($1.0 - 1) * $1.1 }
            guard (last + 1) * es <= storage.count else {
                throw ReadError(.viewOutOfBounds, file: file, place: "tensor '\(name)'", "view reaches past its storage's \(storage.count) bytes")
            }
        }
        if count == 0 { return TensorBytes(owning: []) }
        if isContiguous(t.shape, t.stride) && !(bigEndian && es > 1) {
            let start = t.offset * es
            let view = UnsafeRawBufferPointer(rebasing: storage.buffer[start..<(start + count * es)])
            return storage.subview(view)
        }
        let out = OwnedBuffer(count: count * es)
        let src = storage.buffer.baseAddress!
        let dst = out.mutable.baseAddress!
        let rank = t.shape.count
        var index = [Int](repeating: 0, count: rank)
        var srcElem = t.offset
        for i in 0..<count {
            let from = src + srcElem * es, to = dst + i * es
            if bigEndian { for k in 0..<es { to.storeBytes(of: from.load(fromByteOffset: es - 1 - k, as: UInt8.self), toByteOffset: k, as: UInt8.self) } }
            else { to.copyMemory(from: from, byteCount: es) }
            // Advance the multi-index (last dimension fastest).
            var d = rank - 1
            while d >= 0 {
                index[d] += 1
                srcElem += t.stride[d]
                if index[d] < t.shape[d] { break }
                srcElem -= t.stride[d] * t.shape[d]
                index[d] = 0
                d -= 1
            }
        }
        return TensorBytes(owning: out)
    }

    static func isContiguous(_ shape: [Int], _ stride: [Int]) -> Bool {
        var expected = 1
        for (n, s) in zip(shape, stride).reversed() {
            if n != 1 && s != expected { return false }
            expected *= n
        }
        return true
    }
}

/// Inflated (DEFLATED) storages, kept so tensors sharing one storage inflate it once.
final class StorageCache: @unchecked Sendable {
    private var items: [String: TensorBytes] = [:]
    private let lock = NSLock()
    func get(_ key: String, _ make: () throws -> TensorBytes) throws -> TensorBytes {
        lock.lock(); defer { lock.unlock() }
        if let v = items[key] { return v }
        let v = try make()
        if !v.isView { items[key] = v }
        return v
    }
}
