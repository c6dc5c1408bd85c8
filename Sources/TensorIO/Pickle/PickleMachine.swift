/// An allowlist pickle interpreter for PyTorch state dicts.
///
/// It understands the opcodes `torch.save` emits (protocols 2-5) and builds `PyValue`s. Globals
/// are checked against an allowlist the moment they are named (GLOBAL / STACK_GLOBAL), and the
/// only "calls" it performs are the handful of tensor-rebuilding functions below, implemented
/// here as data constructors. No name from a file is ever looked up in a runtime, so loading
/// never executes code. Every length is checked against the remaining bytes before anything
/// is allocated; containers are capped in nesting depth and object count.
///
/// Containers are filled before they are placed. A list or dict is frozen the moment it goes
/// inside another value (APPEND, SETITEM, a tuple, BUILD's state), and filling a frozen one is
/// refused. `pickle` only writes a container's contents after it when the container is recursive,
/// and `torch.save`'s state dicts never are, so this costs nothing on real files. It is what makes
/// the limits sound: no container can reach itself (a reference cycle would never be freed), and
/// a container's recorded depth is final once it is placed, so the nesting cap (`maxDepth`) holds
/// for the whole value, not only where it was checked (an unbounded nesting would overflow the
/// stack when the value is freed).
///
/// Reference: CPython Lib/pickle.py (opcode table) and torch/_utils.py (`_rebuild_*`).
public struct PickleMachine {
    public struct Limits {
        public var maxDepth = 100
        public var maxObjects = 2_000_000
        public var maxStack = 1_000_000
        public init() {}
    }

    let data: UnsafeRawBufferPointer
    let file: String
    let entry: String
    let limits: Limits

    private var pos = 0
    private var frameEnd: Int? = nil
    private var stack: [Item] = []
    private var marks: [Int] = []
    private var memo: [UInt32: Item] = [:]
    private var objects = 0
    /// Every storage the pickle referenced, by key, to check dtype consistency and records.
    public private(set) var storages: [String: StorageRef] = [:]
    public private(set) var storageOrder: [String] = []

    /// A stack slot: the value and the nesting depth of immutable containers (tuples).
    private struct Item {
        var value: PyValue
        var depth: Int
    }

    /// Bytes consumed so far (after `run`, the pickle's length).
    public var consumed: Int { pos }

    public init(data: UnsafeRawBufferPointer, file: String, entry: String, limits: Limits = Limits()) {
        self.data = data
        self.file = file
        self.entry = entry
        self.limits = limits
    }

    // MARK: - Errors

    private func fail(_ code: ReadError.Code, _ detail: String, at offset: Int? = nil) -> ReadError {
        ReadError(code, file: file, place: "\(entry) @ byte \(offset ?? pos)", detail)
    }

    // MARK: - Reading bytes

    private mutating func take(_ n: Int) throws -> UnsafeRawBufferPointer {
        guard n >= 0, let end = Checked.add(pos, n), end <= data.count else {
            throw fail(.truncated, "needs \(n) more bytes but only \(data.count - pos) remain")
        }
        if let fe = frameEnd, end > fe {
            throw fail(.malformedPickle, "read crosses the end of the current FRAME (ends at byte \(fe))")
        }
        let r = UnsafeRawBufferPointer(rebasing: data[pos..<end])
        pos = end
        if let fe = frameEnd, pos == fe { frameEnd = nil }
        return r
    }

    private mutating func u8() throws -> UInt8 { try take(1)[0] }
    private mutating func u16() throws -> Int { Int(try take(2).le16(0)) }
    private mutating func u32() throws -> UInt32 { try take(4).le32(0) }
    private mutating func u64() throws -> UInt64 { try take(8).le64(0) }

    private mutating func utf8(_ n: Int) throws -> String {
        let start = pos
        let b = try take(n)
        guard let s = String(validating: b, as: UTF8.self) else {
            throw fail(.malformedPickle, "string is not valid UTF-8", at: start)
        }
        return s
    }

    /// A text line for GLOBAL (`module\n`), bounded to 256 bytes, ASCII identifiers only.
    private mutating func line() throws -> String {
        let start = pos
        var bytes: [UInt8] = []
        while true {
            let c = try u8()
            if c == 0x0A { break }
            bytes.append(c)
            guard bytes.count <= 256 else { throw fail(.malformedPickle, "GLOBAL name longer than 256 bytes", at: start) }
        }
        guard let s = String(validating: bytes, as: UTF8.self) else {
            throw fail(.malformedPickle, "GLOBAL name is not valid UTF-8", at: start)
        }
        return s
    }

    // MARK: - Stack

    private mutating func push(_ v: PyValue, depth: Int = 0) throws {
        guard stack.count < limits.maxStack else { throw fail(.limitExceeded, "stack deeper than \(limits.maxStack)") }
        try checkNesting(depth)
        stack.append(Item(value: v, depth: depth))
    }

    private mutating func pop() throws -> Item {
        guard let top = stack.popLast() else { throw fail(.malformedPickle, "stack underflow") }
        if let m = marks.last, stack.count < m { throw fail(.malformedPickle, "stack underflow across a MARK") }
        return top
    }

    private mutating func popToMark() throws -> [Item] {
        guard let m = marks.popLast() else { throw fail(.malformedPickle, "no MARK on the stack") }
        guard m <= stack.count else { throw fail(.malformedPickle, "MARK beyond the stack") }
        let items = Array(stack[m...])
        stack.removeSubrange(m...)
        return items
    }

    private func depth(_ item: Item) -> Int {
        switch item.value {
        case .list(let l): return l.depth
        case .dict(let d): return d.depth
        default: return item.depth
        }
    }

    private mutating func countObject() throws {
        objects += 1
        guard objects <= limits.maxObjects else { throw fail(.limitExceeded, "more than \(limits.maxObjects) objects") }
    }

    // MARK: - Run

    /// Interprets one pickle from the current position up to and including STOP.
    /// With `requireEnd`, bytes after STOP are an error.
    public mutating func run(requireEnd: Bool = true) throws -> PyValue {
        while true {
            let opAt = pos
            let op = try u8()
            switch op {
            case 0x80: // PROTO
                let v = try u8()
                guard v >= 2 && v <= 5 else { throw fail(.malformedPickle, "unsupported pickle protocol \(v)", at: opAt) }
            case 0x95: // FRAME
                let n = try u64()
                guard frameEnd == nil else { throw fail(.malformedPickle, "FRAME inside an unfinished frame", at: opAt) }
                guard n <= UInt64(data.count - pos) else {
                    throw fail(.truncated, "FRAME of \(n) bytes but only \(data.count - pos) remain", at: opAt)
                }
                if n > 0 { frameEnd = pos + Int(n) }
            case 0x2E: // STOP
                let top = try pop()
                guard stack.isEmpty, marks.isEmpty else { throw fail(.malformedPickle, "STOP with \(stack.count) items left on the stack", at: opAt) }
                if requireEnd && pos != data.count {
                    throw fail(.malformedPickle, "\(data.count - pos) bytes after STOP", at: pos)
                }
                return top.value
            case 0x28: // MARK
                guard marks.count < limits.maxDepth * 10 else { throw fail(.limitExceeded, "too many open MARKs") }
                marks.append(stack.count)
            case 0x29: // EMPTY_TUPLE
                try push(.tuple([]), depth: 1)
            case 0x74: // TUPLE
                let items = try popToMark()
                try makeTuple(items)
            case 0x85, 0x86, 0x87: // TUPLE1..3
                let n = Int(op - 0x84)
                var items: [Item] = []
                for _ in 0..<n { items.insert(try pop(), at: 0) }
                try makeTuple(items)
            case 0x7D: // EMPTY_DICT
                try countObject()
                try push(.dict(PyDict(ordered: false)))
            case 0x5D: // EMPTY_LIST
                try countObject()
                try push(.list(PyList()))
            case 0x61: // APPEND
                let v = try pop()
                try append([v], opAt: opAt)
            case 0x65: // APPENDS
                let items = try popToMark()
                try append(items, opAt: opAt)
            case 0x73: // SETITEM
                let v = try pop()
                let k = try pop()
                try setItems([k, v], opAt: opAt)
            case 0x75: // SETITEMS
                let items = try popToMark()
                guard items.count % 2 == 0 else { throw fail(.malformedPickle, "SETITEMS with an odd number of items", at: opAt) }
                try setItems(items, opAt: opAt)
            case 0x4A: // BININT
                try push(.int(Int64(Int32(bitPattern: try u32()))))
            case 0x4B: // BININT1
                try push(.int(Int64(try u8())))
            case 0x4D: // BININT2
                try push(.int(Int64(try u16())))
            case 0x8A: // LONG1
                let n = Int(try u8())
                let b = Array(try take(n))
                try push(Self.long(b))
            case 0x47: // BINFLOAT (big-endian)
                let raw = try take(8)
                var bits: UInt64 = 0
                for i in 0..<8 { bits = bits << 8 | UInt64(raw[i]) }
                try push(.float(Double(bitPattern: bits)))
            case 0x58: // BINUNICODE
                let n = try u32()
                try push(.string(try utf8(Int(n))))
            case 0x8C: // SHORT_BINUNICODE
                let n = Int(try u8())
                try push(.string(try utf8(n)))
            case 0x8D: // BINUNICODE8
                let n = try u64()
                guard n <= UInt64(data.count - pos) else { throw fail(.truncated, "string of \(n) bytes past the end", at: opAt) }
                try push(.string(try utf8(Int(n))))
            case 0x42: // BINBYTES
                let n = try u32()
                try push(.bytes(Array(try take(Int(n)))))
            case 0x43: // SHORT_BINBYTES
                let n = Int(try u8())
                try push(.bytes(Array(try take(n))))
            case 0x8E: // BINBYTES8
                let n = try u64()
                guard n <= UInt64(data.count - pos) else { throw fail(.truncated, "bytes of \(n) past the end", at: opAt) }
                try push(.bytes(Array(try take(Int(n)))))
            case 0x88: try push(.bool(true))   // NEWTRUE
            case 0x89: try push(.bool(false))  // NEWFALSE
            case 0x4E: try push(.none)         // NONE
            case 0x63: // GLOBAL
                let module = try line()
                let name = try line()
                try push(try resolveGlobal(module, name, at: opAt))
            case 0x93: // STACK_GLOBAL
                let n = try pop()
                let m = try pop()
                guard case .string(let module) = m.value, case .string(let name) = n.value else {
                    throw fail(.malformedPickle, "STACK_GLOBAL needs two strings", at: opAt)
                }
                try push(try resolveGlobal(module, name, at: opAt))
            case 0x52: // REDUCE
                let args = try pop()
                let fn = try pop()
                try countObject()
                let result = try reduce(fn.value, args.value, at: opAt)
                try push(result, depth: depth(args))
            case 0x62: // BUILD
                let state = try pop()
                guard let target = stack.last else { throw fail(.malformedPickle, "stack underflow", at: opAt) }
                guard case .dict(let d) = target.value, d.isOrdered else {
                    throw fail(.malformedPickle, "BUILD on \(target.value.typeName); only an OrderedDict's state is accepted", at: opAt)
                }
                guard !d.frozen else { throw refilled("BUILD", "OrderedDict", at: opAt) }
                guard !isSame(state.value, d) else { throw fail(.malformedPickle, "BUILD of an OrderedDict with itself as state (a reference cycle)", at: opAt) }
                let nested = depth(state) + 1
                try checkNesting(nested, at: opAt)
                freeze(state.value)
                d.depth = max(d.depth, nested)
                d.buildState = state.value
            case 0x51: // BINPERSID
                let pid = try pop()
                try push(.storage(try persistentStorage(pid.value, at: opAt)))
            case 0x71: // BINPUT
                try put(UInt32(try u8()), opAt)
            case 0x72: // LONG_BINPUT
                try put(try u32(), opAt)
            case 0x94: // MEMOIZE
                try put(UInt32(truncatingIfNeeded: memo.count), opAt)
            case 0x68: // BINGET
                try get(UInt32(try u8()), opAt)
            case 0x6A: // LONG_BINGET
                try get(try u32(), opAt)
            case 0x30: // POP
                _ = try pop()
            case 0x31: // POP_MARK
                _ = try popToMark()
            default:
                throw fail(.disallowedOpcode, "opcode 0x\(String(op, radix: 16)) is not allowed in a state dict", at: opAt)
            }
        }
    }

    // MARK: - Opcode helpers

    private func checkNesting(_ depth: Int, at opAt: Int? = nil) throws {
        guard depth <= limits.maxDepth else { throw fail(.limitExceeded, "containers nested deeper than \(limits.maxDepth)", at: opAt) }
    }

    /// Marks a list or dict as placed inside another value: its contents are final from now on.
    private func freeze(_ v: PyValue) {
        switch v {
        case .list(let l): l.frozen = true
        case .dict(let d): d.frozen = true
        default: break
        }
    }

    /// Whether `v` is the container `target` itself.
    private func isSame(_ v: PyValue, _ target: AnyObject) -> Bool {
        switch v {
        case .list(let l): return l === target
        case .dict(let d): return d === target
        default: return false
        }
    }

    private func refilled(_ op: String, _ what: String, at opAt: Int) -> ReadError {
        fail(.malformedPickle, "\(op) on a \(what) that is already inside another object (a recursive or re-opened container; torch.save never writes one)", at: opAt)
    }

    private mutating func makeTuple(_ items: [Item]) throws {
        try countObject()
        for it in items { freeze(it.value) }
        let d = 1 + (items.map { depth($0) }.max() ?? 0)
        try push(.tuple(items.map(\.value)), depth: d)
    }

    private mutating func append(_ items: [Item], opAt: Int) throws {
        guard let target = stack.last, case .list(let list) = target.value else {
            throw fail(.malformedPickle, "APPEND on \(stack.last?.value.typeName ?? "nothing"); only lists accept it", at: opAt)
        }
        guard !list.frozen else { throw refilled("APPEND", "list", at: opAt) }
        for it in items {
            guard !isSame(it.value, list) else { throw fail(.malformedPickle, "APPEND of a list to itself (a reference cycle)", at: opAt) }
            let d = depth(it) + 1
            try checkNesting(d, at: opAt)
            freeze(it.value)
            list.depth = max(list.depth, d)
            list.items.append(it.value)
        }
    }

    private mutating func setItems(_ items: [Item], opAt: Int) throws {
        guard let target = stack.last, case .dict(let dict) = target.value else {
            throw fail(.malformedPickle, "SETITEM on \(stack.last?.value.typeName ?? "nothing"); only dicts accept it", at: opAt)
        }
        guard !dict.frozen else { throw refilled("SETITEM", "dict", at: opAt) }
        var i = 0
        while i < items.count {
            let k = items[i], v = items[i + 1]
            guard !isSame(k.value, dict), !isSame(v.value, dict) else {
                throw fail(.malformedPickle, "SETITEM of a dict into itself (a reference cycle)", at: opAt)
            }
            let d = max(depth(k), depth(v)) + 1
            try checkNesting(d, at: opAt)
            freeze(k.value)
            freeze(v.value)
            dict.depth = max(dict.depth, d)
            if let kt = k.value.keyText, let idx = dict.entries.firstIndex(where: { $0.key.keyText == kt && $0.key.typeName == k.value.typeName }) {
                dict.entries[idx].value = v.value   // Python semantics: a repeated key overwrites
            } else {
                dict.entries.append((k.value, v.value))
            }
            i += 2
        }
    }

    private mutating func put(_ index: UInt32, _ opAt: Int) throws {
        guard let top = stack.last else { throw fail(.malformedPickle, "PUT on an empty stack", at: opAt) }
        guard memo.count < limits.maxObjects || memo[index] != nil else { throw fail(.limitExceeded, "memo larger than \(limits.maxObjects)", at: opAt) }
        memo[index] = top
    }

    private mutating func get(_ index: UInt32, _ opAt: Int) throws {
        guard let v = memo[index] else { throw fail(.malformedPickle, "GET of undefined memo slot \(index)", at: opAt) }
        try push(v.value, depth: v.depth)
    }

    static func long(_ b: [UInt8]) -> PyValue {
        if b.isEmpty { return .int(0) }
        if b.count <= 8 {
            var v: UInt64 = 0
            for (i, byte) in b.enumerated() { v |= UInt64(byte) << (8 * UInt64(i)) }
            if b.count < 8, b.last! & 0x80 != 0 { v |= ~0 << (8 * UInt64(b.count)) }   // sign-extend
            return .int(Int64(bitPattern: v))
        }
        return .bigInt(b)
    }

    // MARK: - Allowlist

    static let rebuildFunctions: Set<String> = [
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
        "_rebuild_parameter", "_rebuild_parameter_with_state",
    ]

    private func resolveGlobal(_ module: String, _ name: String, at: Int) throws -> PyValue {
        let ok: Bool
        switch module {
        case "collections": ok = name == "OrderedDict"
        case "torch._utils": ok = Self.rebuildFunctions.contains(name)
        case "torch":
            ok = DType(torchStorageClass: name) != nil || name == "UntypedStorage"
                || DType(torchDTypeName: name) != nil || name == "Size" || name == "device"
        default: ok = false
        }
        if ok { return .global(module: module, name: name) }
        if module == "__main__" || module.hasPrefix("torch.nn.") || module.hasPrefix("torch.jit") {
            throw fail(.wholeModule,
                       "the pickle names \(module).\(name): this file is a whole pickled model, not a state dict. "
                       + "Save the weights with torch.save(model.state_dict(), path) and convert that file.", at: at)
        }
        throw fail(.disallowedGlobal, "global \(module).\(name) is not on the allowlist; refusing to load", at: at)
    }

    // MARK: - Persistent ids (storages)

    private mutating func persistentStorage(_ pid: PyValue, at: Int) throws -> StorageRef {
        guard case .tuple(let t) = pid, t.count == 5 || t.count == 6,
              case .string("storage") = t[0] else {
            throw fail(.malformedPickle, "persistent id is not a ('storage', type, key, location, numel) tuple", at: at)
        }
        guard case .global("torch", let cls) = t[1] else {
            throw fail(.malformedPickle, "storage type is \(t[1].typeName), not a torch storage class", at: at)
        }
        let untyped = cls == "UntypedStorage"
        guard let dtype = untyped ? .u8 : DType(torchStorageClass: cls) else {
            throw fail(.malformedPickle, "torch.\(cls) is not a storage class", at: at)
        }
        guard let key = t[2].keyText else { throw fail(.malformedPickle, "storage key is \(t[2].typeName)", at: at) }
        guard case .string(let location) = t[3] else { throw fail(.malformedPickle, "storage location is \(t[3].typeName)", at: at) }
        guard case .int(let n) = t[4], n >= 0 else { throw fail(.malformedPickle, "storage numel is not a non-negative int", at: at) }
        var view: StorageRef.LegacyView? = nil
        if t.count == 6 {
            switch t[5] {
            case .none: break
            case .tuple(let v) where v.count == 3:
                guard let vk = v[0].keyText, case .int(let off) = v[1], case .int(let vn) = v[2], off >= 0, vn >= 0 else {
                    throw fail(.malformedPickle, "malformed legacy view metadata", at: at)
                }
                view = .init(key: vk, offset: Int(off), numel: Int(vn))
            default: throw fail(.malformedPickle, "malformed legacy view metadata", at: at)
            }
        }
        let ref = StorageRef(key: key, dtype: dtype, isUntyped: untyped, location: location, numel: Int(n), view: view)
        if let prev = storages[key] {
            guard prev.dtype == ref.dtype, prev.numel == ref.numel else {
                throw fail(.storageDTypeConflict,
                           "storage '\(key)' is used as \(prev.dtype.rawValue)[\(prev.numel)] and as \(ref.dtype.rawValue)[\(ref.numel)]", at: at)
            }
        } else {
            storages[key] = ref
            storageOrder.append(key)
        }
        return ref
    }

    // MARK: - REDUCE: the only calls, all data constructors

    private func reduce(_ fn: PyValue, _ args: PyValue, at: Int) throws -> PyValue {
        guard case .global(let module, let name) = fn else {
            throw fail(.malformedPickle, "REDUCE on \(fn.typeName), which is not callable", at: at)
        }
        guard case .tuple(let a) = args else { throw fail(.malformedPickle, "REDUCE arguments are \(args.typeName), not a tuple", at: at) }
        switch (module, name) {
        case ("collections", "OrderedDict"):
            guard a.isEmpty else { throw fail(.malformedPickle, "OrderedDict() with arguments is not supported", at: at) }
            return .dict(PyDict(ordered: true))
        case ("torch._utils", "_rebuild_tensor"):
            guard a.count == 4 else { throw badArgs(name, a.count, at) }
            return .tensor(try tensor(a[0], a[1], a[2], a[3], dtypeOverride: nil, at: at))
        case ("torch._utils", "_rebuild_tensor_v2"):
            guard a.count == 6 || a.count == 7 else { throw badArgs(name, a.count, at) }
            return .tensor(try tensor(a[0], a[1], a[2], a[3], dtypeOverride: nil, at: at))
        case ("torch._utils", "_rebuild_tensor_v3"):
            guard a.count == 7 || a.count == 8 else { throw badArgs(name, a.count, at) }
            guard case .global("torch", let dn) = a[6], let dt = DType(torchDTypeName: dn) else {
                throw fail(.unknownDType, "_rebuild_tensor_v3 with dtype \(a[6].typeName)", at: at)
            }
            return .tensor(try tensor(a[0], a[1], a[2], a[3], dtypeOverride: dt, at: at))
        case ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"):
            guard a.count == (name == "_rebuild_parameter" ? 3 : 4) else { throw badArgs(name, a.count, at) }
            guard case .tensor = a[0] else { throw fail(.malformedPickle, "\(name) of \(a[0].typeName)", at: at) }
            return a[0]
        case ("torch", "Size"):
            guard a.count == 1, case .tuple = a[0] else { throw badArgs(name, a.count, at) }
            return a[0]
        case ("torch", "device"):
            guard let first = a.first, case .string(let s) = first else { throw badArgs(name, a.count, at) }
            if a.count == 2, case .int(let i) = a[1] { return .string("\(s):\(i)") }
            return .string(s)
        default:
            throw fail(.disallowedGlobal, "\(module).\(name) cannot be called here", at: at)
        }
    }

    private func badArgs(_ name: String, _ n: Int, _ at: Int) -> ReadError {
        fail(.malformedPickle, "\(name) called with \(n) arguments", at: at)
    }

    private func ints(_ v: PyValue, _ what: String, at: Int) throws -> [Int] {
        guard case .tuple(let t) = v else { throw fail(.malformedPickle, "tensor \(what) is \(v.typeName), not a tuple", at: at) }
        guard t.count <= 64 else { throw fail(.limitExceeded, "tensor with \(t.count) dimensions", at: at) }
        return try t.map {
            guard case .int(let i) = $0 else { throw fail(.malformedPickle, "tensor \(what) holds \($0.typeName)", at: at) }
            return Int(i)
        }
    }

    /// Validates the strided view against its storage with checked arithmetic:
    /// `offset + sum((size_i - 1) * stride_i) < numel` for non-empty tensors.
    private func tensor(_ s: PyValue, _ o: PyValue, _ size: PyValue, _ stride: PyValue,
                        dtypeOverride: DType?, at: Int) throws -> TensorRef {
        guard case .storage(let storage) = s else { throw fail(.malformedPickle, "tensor storage is \(s.typeName)", at: at) }
        guard case .int(let off64) = o else { throw fail(.malformedPickle, "tensor offset is \(o.typeName)", at: at) }
        let shape = try ints(size, "size", at: at)
        let strides = try ints(stride, "stride", at: at)
        guard shape.count == strides.count else {
            throw fail(.malformedPickle, "size has \(shape.count) dims but stride has \(strides.count)", at: at)
        }
        var dtype = storage.dtype
        var numel = storage.numel
        if let d = dtypeOverride {
            dtype = d
            if storage.isUntyped {
                guard numel % d.size == 0 else {
                    throw fail(.storageSizeMismatch, "untyped storage of \(numel) bytes is not a whole number of \(d.rawValue)", at: at)
                }
                numel /= d.size
            } else if d != storage.dtype {
                throw fail(.storageDTypeConflict, "tensor of \(d.rawValue) on a \(storage.dtype.rawValue) storage", at: at)
            }
        } else if storage.isUntyped {
            throw fail(.malformedPickle, "untyped storage without a dtype", at: at)
        }
        let offset = Int(off64)
        guard offset >= 0, shape.allSatisfy({ $0 >= 0 }), strides.allSatisfy({ $0 >= 0 }) else {
            throw fail(.viewOutOfBounds, "negative size, stride or offset (offset \(offset), size \(shape), stride \(strides))", at: at)
        }
        guard Checked.product(shape) != nil else { throw fail(.overflow, "tensor size \(shape) overflows", at: at) }
        if !shape.contains(0) {
            var last = offset
            for (n, st) in zip(shape, strides) {
                guard let span = Checked.mul(n - 1, st), let l = Checked.add(last, span) else {
                    throw fail(.overflow, "tensor view (offset \(offset), size \(shape), stride \(strides)) overflows", at: at)
                }
                last = l
            }
            guard last < numel else {
                throw fail(.viewOutOfBounds,
                           "view (offset \(offset), size \(shape), stride \(strides)) reaches element \(last) of storage '\(storage.key)' which has \(numel)", at: at)
            }
        } else {
            guard offset <= numel else { throw fail(.viewOutOfBounds, "offset \(offset) past storage of \(numel)", at: at) }
        }
        return TensorRef(storage: storage, dtype: dtype, offset: offset, shape: shape, stride: strides)
    }
}
