/// An allowlist pickle interpreter for PyTorch checkpoints.
///
/// It understands the opcodes of pickle protocols 0-5 that build strings, numbers, containers
/// and objects (formats/pytorch.md, "The pickle subset"), Python 2 pickles included, and builds
/// `PyValue`s. Only the globals on the allowlist mean anything: `collections.OrderedDict`, the
/// tensor-rebuilding functions and torch's storage classes and dtypes, implemented here as data
/// constructors. Any other global becomes an inert placeholder: its name is kept and what the
/// pickle "calls" it with and "fills" it with is recorded as data (`PyObject`). No name from a
/// file is ever looked up in a runtime, nothing is imported, called, or has an attribute read,
/// so loading never executes code. A few globals that only exist to run code, reach the
/// operating system or load another pickle are refused outright, so that a hostile file is
/// reported as such instead of read quietly.
///
/// Every length is checked against the remaining bytes before anything is allocated; values
/// are capped in nesting depth, object count and size walked as a tree.
///
/// Containers are filled before they are placed. A list or dict is frozen the moment it goes
/// inside another value (APPEND, SETITEM, a tuple, BUILD's state, an object's arguments), and
/// filling a frozen one is refused. `pickle` only writes a container's contents after it when
/// the container is recursive, and `torch.save`'s state dicts never are, so this costs nothing on
/// real files. It is what makes the limits sound: no list or dict can reach itself (a reference
/// cycle would never be freed), and a container's recorded depth is final once it is placed, so
/// the nesting cap (`maxDepth`) holds for the whole value, not only where it was checked (an
/// unbounded nesting would overflow the stack when the value is freed). Placeholder objects do
/// take state after they were placed (omegaconf configs are recursive: a child's `_parent` is
/// its config before the config's BUILD); every place such an object had when it is filled
/// becomes a back-reference that does not own it (`PyObjectRef`), which keeps both properties.
///
/// Reference: CPython Lib/pickle.py (opcode table) and torch/_utils.py (`_rebuild_*`).
public struct PickleMachine {
    public struct Limits {
        public var maxDepth = 100
        public var maxObjects = 2_000_000
        public var maxStack = 1_000_000
        /// Values one value may expand to when walked as a tree (a shared value counted at each
        /// place it sits): at most the larger of this and 16 x the pickle bytes read so far.
        /// Shared references are legal, so without it 60 tuples of two references to the
        /// previous one would make a 2^60-node tree for any code that walks the result.
        public var minTreeValues = 1_000_000
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
    private var memo: [Int: Item] = [:]
    private var objects = 0
    /// Owning places of each placeholder object, released when the object is filled afterwards.
    private var places: [ObjectIdentifier: [PyObjectRef]] = [:]
    /// Every storage the pickle referenced, by key, to check dtype consistency and records.
    public private(set) var storages: [String: StorageRef] = [:]
    public private(set) var storageOrder: [String] = []
    /// `module.name` of every global the pickle named that is not on the allowlist and was kept
    /// as an inert placeholder (e.g. `omegaconf.dictconfig.DictConfig`, `argparse.Namespace`).
    public private(set) var placeholderNames: Set<String> = []

    /// A stack slot: the value, the nesting depth of immutable containers (tuples) and its size
    /// walked as a tree. Lists, dicts and objects keep theirs in themselves.
    private struct Item {
        var value: PyValue
        var depth: Int
        var size: Int
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

    private func fail(_ m: PickleText.Message, at offset: Int) -> ReadError {
        fail(m.limit ? .limitExceeded : .malformedPickle, m.text, at: offset)
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

    /// A signed 32-bit length (BINSTRING, LONG4); negative is an error, as in CPython.
    private mutating func length32(_ what: String, at opAt: Int) throws -> Int {
        let n = Int32(bitPattern: try u32())
        guard n >= 0 else { throw fail(.malformedPickle, "\(what) with a negative length (\(n))", at: opAt) }
        return Int(n)
    }

    private mutating func utf8(_ n: Int) throws -> String {
        let start = pos
        let b = try take(n)
        guard let s = String(validating: b, as: UTF8.self) else {
            throw fail(.malformedPickle, "string is not valid UTF-8", at: start)
        }
        return s
    }

    /// A Python 2 `str` of `n` bytes, decoded as `torch.load` decodes it (`PickleText.python2String`).
    private mutating func python2String(_ n: Int) throws -> String {
        let start = pos
        let b = try take(n)
        guard let s = PickleText.python2String(b) else {
            throw fail(.malformedPickle,
                       "Python 2 string is not valid UTF-8 (torch.load decodes Python 2 strings with encoding='utf-8', errors='strict', and fails on it too)",
                       at: start)
        }
        return s
    }

    /// A text line for GLOBAL and INST (`module\n`), bounded to 256 bytes.
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

    /// The argument of a text-protocol opcode: the bytes up to the next newline (not included),
    /// at most `max` of them.
    private mutating func textArgument(_ what: String, max: Int) throws -> ArraySlice<UInt8> {
        let start = pos
        let limit = frameEnd ?? data.count
        var i = pos
        while i < limit, data[i] != 0x0A {
            i += 1
            guard i - start <= max else { throw fail(.limitExceeded, "\(what) argument longer than \(max) bytes", at: start) }
        }
        guard i < limit else {
            if limit < data.count { throw fail(.malformedPickle, "\(what) argument crosses the end of the current FRAME", at: start) }
            throw fail(.truncated, "\(what) argument without its closing newline", at: start)
        }
        return Array(try take(i - start + 1).dropLast())[...]
    }

    // MARK: - Stack

    private mutating func push(_ v: PyValue, depth: Int = 0, size: Int = 1) throws {
        guard stack.count < limits.maxStack else { throw fail(.limitExceeded, "stack deeper than \(limits.maxStack)") }
        try checkNesting(depth)
        stack.append(Item(value: v, depth: depth, size: size))
    }

    private mutating func push(_ item: Item) throws { try push(item.value, depth: item.depth, size: item.size) }

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
        case .object(let r): return r.object?.depth ?? 0
        default: return item.depth
        }
    }

    private func size(_ item: Item) -> Int {
        switch item.value {
        case .list(let l): return l.size
        case .dict(let d): return d.size
        case .object(let r): return r.object?.size ?? 1
        default: return item.size
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
                guard v <= 5 else { throw fail(.malformedPickle, "unsupported pickle protocol \(v)", at: opAt) }
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
                try checkTopLevel(top.value, at: opAt)
                return top.value
            case 0x28: // MARK
                guard marks.count < limits.maxDepth * 10 else { throw fail(.limitExceeded, "too many open MARKs") }
                marks.append(stack.count)
            case 0x29: // EMPTY_TUPLE
                try push(.tuple([]), depth: 1)
            case 0x74: // TUPLE
                try push(try tuple(try popToMark(), at: opAt))
            case 0x85, 0x86, 0x87: // TUPLE1..3
                let n = Int(op - 0x84)
                var items: [Item] = []
                for _ in 0..<n { items.insert(try pop(), at: 0) }
                try push(try tuple(items, at: opAt))
            case 0x7D: // EMPTY_DICT
                try countObject()
                try push(.dict(PyDict(ordered: false)))
            case 0x64: // DICT (protocol 0): MARK k v k v ... DICT
                let items = try popToMark()
                guard items.count % 2 == 0 else { throw fail(.malformedPickle, "DICT with an odd number of items", at: opAt) }
                try countObject()
                let d = PyDict(ordered: false)
                try fill(d, items, opAt: opAt)
                try push(.dict(d))
            case 0x5D: // EMPTY_LIST
                try countObject()
                try push(.list(PyList()))
            case 0x6C: // LIST (protocol 0): MARK items... LIST
                let items = try popToMark()
                try countObject()
                let l = PyList()
                try fill(l, items, opAt: opAt)
                try push(.list(l))
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

            // Numbers
            case 0x4A: // BININT
                try push(.int(Int64(Int32(bitPattern: try u32()))))
            case 0x4B: // BININT1
                try push(.int(Int64(try u8())))
            case 0x4D: // BININT2
                try push(.int(Int64(try u16())))
            case 0x49: // INT (text; "00" and "01" are Python 2's False and True)
                let t = try textArgument("INT", max: PickleText.maxDigits + 1)
                if t.elementsEqual([0x30, 0x30]) { try push(.bool(false)) }
                else if t.elementsEqual([0x30, 0x31]) { try push(.bool(true)) }
                else { try push(try integer(t, "INT", at: opAt)) }
            case 0x4C: // LONG (text, Python 2 writes a trailing 'L')
                var t = try textArgument("LONG", max: PickleText.maxDigits + 2)
                if t.last == UInt8(ascii: "L") { t = t.dropLast() }
                try push(try integer(t, "LONG", at: opAt))
            case 0x8A: // LONG1
                let n = Int(try u8())
                try push(PickleText.long(Array(try take(n))))
            case 0x8B: // LONG4
                let n = try length32("LONG4", at: opAt)
                try push(PickleText.long(Array(try take(n))))
            case 0x47: // BINFLOAT (big-endian)
                let raw = try take(8)
                var bits: UInt64 = 0
                for i in 0..<8 { bits = bits << 8 | UInt64(raw[i]) }
                try push(.float(Double(bitPattern: bits)))
            case 0x46: // FLOAT (text)
                let t = try textArgument("FLOAT", max: PickleText.maxDigits)
                guard let v = PickleText.float(t) else {
                    throw fail(.malformedPickle, "FLOAT argument '\(PickleText.show(t))' is not a number", at: opAt)
                }
                try push(.float(v))

            // Strings
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
            case 0x56: // UNICODE (text, raw-unicode-escape)
                let t = try textArgument("UNICODE", max: data.count)
                switch PickleText.rawUnicodeEscape(t) {
                case .success(let s): try push(.string(s))
                case .failure(let m): throw fail(m, at: opAt)
                }
            case 0x55: // SHORT_BINSTRING (a Python 2 str)
                let n = Int(try u8())
                try push(.string(try python2String(n)))
            case 0x54: // BINSTRING (a Python 2 str)
                let n = try length32("BINSTRING", at: opAt)
                try push(.string(try python2String(n)))
            case 0x53: // STRING (text: a quoted, escaped Python 2 str)
                let t = try textArgument("STRING", max: data.count)
                switch PickleText.quotedString(t) {
                case .success(let b):
                    guard let s = b.withUnsafeBytes({ PickleText.python2String($0) }) else {
                        throw fail(.malformedPickle,
                                   "Python 2 string is not valid UTF-8 (torch.load decodes Python 2 strings with encoding='utf-8', errors='strict', and fails on it too)",
                                   at: opAt)
                    }
                    try push(.string(s))
                case .failure(let m): throw fail(m, at: opAt)
                }
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

            // Globals and objects
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
                if case .placeholder(let m, let n) = fn.value {
                    guard case .tuple = args.value else { throw fail(.malformedPickle, "REDUCE arguments are \(args.value.typeName), not a tuple", at: opAt) }
                    try push(try object(m, n, .reduce, args: args, kwargs: nil, at: opAt))
                } else {
                    let result = try reduce(fn.value, args.value, argsDepth: depth(args), argsSize: size(args), at: opAt)
                    if case .tuple = result { try push(result, depth: depth(args), size: size(args)) }   // torch.Size
                    else { try push(result, depth: depth(args)) }                                       // a leaf, or a dict that knows its own
                }
            case 0x81: // NEWOBJ: cls.__new__(cls, *args)
                let args = try pop()
                let cls = try pop()
                try countObject()
                let (m, n) = try placeholderClass(cls.value, "NEWOBJ", at: opAt)
                guard case .tuple = args.value else { throw fail(.malformedPickle, "NEWOBJ arguments are \(args.value.typeName), not a tuple", at: opAt) }
                try push(try object(m, n, .newobj, args: args, kwargs: nil, at: opAt))
            case 0x92: // NEWOBJ_EX: cls.__new__(cls, *args, **kwargs)
                let kwargs = try pop()
                let args = try pop()
                let cls = try pop()
                try countObject()
                let (m, n) = try placeholderClass(cls.value, "NEWOBJ_EX", at: opAt)
                guard case .tuple = args.value, case .dict = kwargs.value else {
                    throw fail(.malformedPickle, "NEWOBJ_EX needs an argument tuple and a keyword dict, got \(args.value.typeName) and \(kwargs.value.typeName)", at: opAt)
                }
                try push(try object(m, n, .newobjEx, args: args, kwargs: kwargs, at: opAt))
            case 0x69: // INST (protocol 0): MARK args... INST module\nname\n
                let module = try line()
                let name = try line()
                let cls = try resolveGlobal(module, name, at: opAt)
                let args = try tuple(try popToMark(), at: opAt)
                try countObject()
                let (m, n) = try placeholderClass(cls, "INST", at: opAt)
                try push(try object(m, n, .inst, args: args, kwargs: nil, at: opAt))
            case 0x6F: // OBJ (protocol 1): MARK cls args... OBJ
                var items = try popToMark()
                guard !items.isEmpty else { throw fail(.malformedPickle, "OBJ without a class", at: opAt) }
                let cls = items.removeFirst()
                let args = try tuple(items, at: opAt)
                try countObject()
                let (m, n) = try placeholderClass(cls.value, "OBJ", at: opAt)
                try push(try object(m, n, .obj, args: args, kwargs: nil, at: opAt))
            case 0x62: // BUILD
                let state = try pop()
                try build(state, opAt: opAt)
            case 0x51: // BINPERSID
                let pid = try pop()
                try push(.storage(try persistentStorage(pid.value, at: opAt)))

            // Memo
            case 0x71: // BINPUT
                try put(Int(try u8()), opAt)
            case 0x72: // LONG_BINPUT
                try put(Int(try u32()), opAt)
            case 0x70: // PUT (text)
                try put(try memoIndex("PUT", at: opAt), opAt)
            case 0x94: // MEMOIZE
                try put(memo.count, opAt)
            case 0x68: // BINGET
                try get(Int(try u8()), opAt)
            case 0x6A: // LONG_BINGET
                try get(Int(try u32()), opAt)
            case 0x67: // GET (text)
                try get(try memoIndex("GET", at: opAt), opAt)
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

    /// `a + b` for tree sizes, within `maxTreeValues`.
    private func grow(_ a: Int, _ b: Int, at opAt: Int) throws -> Int {
        let cap = max(limits.minTreeValues, pos.multipliedReportingOverflow(by: 16).overflow ? Int.max : pos * 16)
        let (s, o) = a.addingReportingOverflow(b)
        guard !o, s <= cap else {
            throw fail(.limitExceeded, "a value that expands to more than \(cap) values when walked as a tree (shared references multiply it)", at: opAt)
        }
        return s
    }

    private mutating func integer(_ t: ArraySlice<UInt8>, _ what: String, at opAt: Int) throws -> PyValue {
        switch PickleText.integer(t) {
        case .success(let v): return v
        case .failure(let m): throw fail(PickleText.Message("\(what): \(m.text)", limit: m.limit), at: opAt)
        }
    }

    private mutating func memoIndex(_ what: String, at opAt: Int) throws -> Int {
        let t = try textArgument(what, max: 20)
        guard let i = PickleText.memoIndex(t) else {
            throw fail(.malformedPickle, "\(what) index '\(PickleText.show(t))' is not a decimal number", at: opAt)
        }
        return i
    }

    /// Places a value inside another one: a list or dict becomes final (frozen), and a
    /// placeholder object gets a new owning place, which becomes a back-reference if the
    /// object is filled later (see `PyObjectRef`).
    private mutating func place(_ v: PyValue) throws -> PyValue {
        switch v {
        case .list(let l): l.frozen = true
        case .dict(let d): d.frozen = true
        case .object(let r):
            guard let o = r.object else { return v }   // already a back-reference
            try countObject()
            let placed = PyObjectRef(o)
            places[ObjectIdentifier(o), default: []].append(placed)
            return .object(placed)
        default: break
        }
        return v
    }

    /// The object a stack slot holds (stack and memo slots always own theirs).
    private func owned(_ r: PyObjectRef, _ op: String, at opAt: Int) throws -> PyObject {
        guard let o = r.object else { throw fail(.malformedPickle, "\(op) on a back-reference to \(r.qualifiedName)", at: opAt) }
        return o
    }

    /// An object is being filled: every place it already has becomes a back-reference.
    private mutating func filled(_ o: PyObject) {
        for r in places.removeValue(forKey: ObjectIdentifier(o)) ?? [] { r.releaseOwnership() }
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

    private mutating func tuple(_ items: [Item], at opAt: Int) throws -> Item {
        try countObject()
        var s = 1
        for it in items { s = try grow(s, size(it), at: opAt) }
        let d = 1 + (items.map { depth($0) }.max() ?? 0)
        try checkNesting(d, at: opAt)
        var values: [PyValue] = []
        values.reserveCapacity(items.count)
        for it in items { values.append(try place(it.value)) }
        return Item(value: .tuple(values), depth: d, size: s)
    }

    private mutating func append(_ items: [Item], opAt: Int) throws {
        guard let target = stack.last else { throw fail(.malformedPickle, "APPEND on an empty stack", at: opAt) }
        switch target.value {
        case .list(let list):
            guard !list.frozen else { throw refilled("APPEND", "list", at: opAt) }
            try fill(list, items, opAt: opAt)
        case .object(let r):   // a list subclass: the items are recorded
            let o = try owned(r, "APPEND", at: opAt)
            for it in items {
                let d = depth(it) + 1
                try checkNesting(d, at: opAt)
                o.size = try grow(o.size, size(it), at: opAt)
                o.depth = max(o.depth, d)
                o.listItems.append(try place(it.value))
            }
            filled(o)
        default:
            throw fail(.malformedPickle, "APPEND on \(target.value.typeName); only lists (and placeholder objects) accept it", at: opAt)
        }
    }

    private mutating func fill(_ list: PyList, _ items: [Item], opAt: Int) throws {
        for it in items {
            guard !isSame(it.value, list) else { throw fail(.malformedPickle, "APPEND of a list to itself (a reference cycle)", at: opAt) }
            let d = depth(it) + 1
            try checkNesting(d, at: opAt)
            list.size = try grow(list.size, size(it), at: opAt)
            list.depth = max(list.depth, d)
            list.items.append(try place(it.value))
        }
    }

    private mutating func setItems(_ items: [Item], opAt: Int) throws {
        guard let target = stack.last else { throw fail(.malformedPickle, "SETITEM on an empty stack", at: opAt) }
        switch target.value {
        case .dict(let dict):
            guard !dict.frozen else { throw refilled("SETITEM", "dict", at: opAt) }
            try fill(dict, items, opAt: opAt)
        case .object(let r):   // a dict subclass (Lightning's AttributeDict, ...): the items are recorded
            let o = try owned(r, "SETITEM", at: opAt)
            var i = 0
            while i < items.count {
                let k = items[i], v = items[i + 1]
                let d = max(depth(k), depth(v)) + 1
                try checkNesting(d, at: opAt)
                o.size = try grow(try grow(o.size, size(k), at: opAt), size(v), at: opAt)
                o.depth = max(o.depth, d)
                Self.insert(&o.dictItems, &o.dictIndex, try place(k.value), try place(v.value))
                i += 2
            }
            filled(o)
        default:
            throw fail(.malformedPickle, "SETITEM on \(target.value.typeName); only dicts (and placeholder objects) accept it", at: opAt)
        }
    }

    private mutating func fill(_ dict: PyDict, _ items: [Item], opAt: Int) throws {
        var i = 0
        while i < items.count {
            let k = items[i], v = items[i + 1]
            guard !isSame(k.value, dict), !isSame(v.value, dict) else {
                throw fail(.malformedPickle, "SETITEM of a dict into itself (a reference cycle)", at: opAt)
            }
            let d = max(depth(k), depth(v)) + 1
            try checkNesting(d, at: opAt)
            dict.size = try grow(try grow(dict.size, size(k), at: opAt), size(v), at: opAt)
            dict.depth = max(dict.depth, d)
            Self.insert(&dict.entries, &dict.keyIndex, try place(k.value), try place(v.value))
            i += 2
        }
    }

    /// Python semantics: a repeated key (same type and text) overwrites.
    /// Sets `k` to `v` as Python would (a later value replaces an earlier one for the same
    /// str/int key), through `index` (key -> position) so that filling a dict stays linear.
    private static func insert(_ entries: inout [(key: PyValue, value: PyValue)], _ index: inout [String: Int], _ k: PyValue, _ v: PyValue) {
        guard let kt = k.keyText else { entries.append((k, v)); return }
        let id = k.typeName + "\u{0}" + kt
        if let idx = index[id] {
            entries[idx].value = v
        } else {
            index[id] = entries.count
            entries.append((k, v))
        }
    }

    private mutating func build(_ state: Item, opAt: Int) throws {
        guard let target = stack.last else { throw fail(.malformedPickle, "stack underflow", at: opAt) }
        switch target.value {
        case .dict(let d) where d.isOrdered:   // a state dict's `_metadata`: kept, never interpreted
            guard !d.frozen else { throw refilled("BUILD", "OrderedDict", at: opAt) }
            guard !isSame(state.value, d) else { throw fail(.malformedPickle, "BUILD of an OrderedDict with itself as state (a reference cycle)", at: opAt) }
            let nested = depth(state) + 1
            try checkNesting(nested, at: opAt)
            d.size = try grow(d.size, size(state), at: opAt)
            d.depth = max(d.depth, nested)
            d.buildState = try place(state.value)
        case .object(let r):   // `__setstate__(state)` or `__dict__.update(state)`: recorded
            let o = try owned(r, "BUILD", at: opAt)
            guard o.state == nil else { throw fail(.malformedPickle, "a second BUILD on one \(o.qualifiedName) object", at: opAt) }
            let nested = depth(state) + 1
            try checkNesting(nested, at: opAt)
            o.size = try grow(o.size, size(state), at: opAt)
            o.depth = max(o.depth, nested)
            o.state = try place(state.value)
            filled(o)
        default:
            throw fail(.malformedPickle, "BUILD on \(target.value.typeName); only an OrderedDict's or a placeholder object's state is accepted", at: opAt)
        }
    }

    private mutating func put(_ index: Int, _ opAt: Int) throws {
        guard let top = stack.last else { throw fail(.malformedPickle, "PUT on an empty stack", at: opAt) }
        guard memo.count < limits.maxObjects || memo[index] != nil else { throw fail(.limitExceeded, "memo larger than \(limits.maxObjects)", at: opAt) }
        memo[index] = top
    }

    private mutating func get(_ index: Int, _ opAt: Int) throws {
        guard let v = memo[index] else { throw fail(.malformedPickle, "GET of undefined memo slot \(index)", at: opAt) }
        try push(v)
    }

    /// The pickle's result must be data liteclip can look into, not a placeholder.
    private func checkTopLevel(_ v: PyValue, at opAt: Int) throws {
        let name: String, module: String?
        switch v {
        case .placeholder(let m, let n): (name, module) = ("\(m).\(n)", m)
        case .object(let r): (name, module) = (r.qualifiedName, r.object?.module)
        default: return
        }
        if module == "__main__" {
            throw fail(.wholeModule,
                       "the pickle's top-level object is a \(name): this file is a whole pickled model, not a state dict. "
                       + "Save the weights with torch.save(model.state_dict(), path) and convert that file.", at: opAt)
        }
        throw fail(.noStateDict,
                   "the pickle's top-level object is a \(name), a class liteclip keeps only as an inert placeholder, not a dict of tensors. "
                   + "If it is a whole pickled model, save model.state_dict() with torch.save and convert that file.", at: opAt)
    }

    // MARK: - Allowlist

    static let rebuildFunctions: Set<String> = [
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
        "_rebuild_parameter", "_rebuild_parameter_with_state",
    ]

    private mutating func resolveGlobal(_ module: String, _ name: String, at: Int) throws -> PyValue {
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
        if module.hasPrefix("torch.nn.") || module.hasPrefix("torch.jit") {
            throw fail(.wholeModule,
                       "the pickle names \(module).\(name): this file is a whole pickled model, not a state dict. "
                       + "Save the weights with torch.save(model.state_dict(), path) and convert that file.", at: at)
        }
        if let why = Self.refusal(module, name) {
            throw fail(.disallowedGlobal, "global \(module).\(name) is not on the allowlist and \(why); refusing to load", at: at)
        }
        placeholderNames.insert("\(module).\(name)")
        return .placeholder(module: module, name: name)
    }

    /// Modules whose purpose is to run code, start processes, reach files or the network, or
    /// load another pickle.
    static let refusedModules: Set<String> = [
        "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "pty", "shutil", "socket", "ssl",
        "runpy", "code", "codeop", "marshal", "pickle", "_pickle", "cPickle", "dill", "cloudpickle",
        "joblib", "shelve", "ctypes", "_ctypes", "importlib", "imp", "pkgutil", "zipimport", "new",
        "multiprocessing", "threading", "_thread", "thread", "signal", "asyncio", "webbrowser", "timeit",
        "pdb", "bdb", "trace", "profile", "cProfile", "commands", "popen2", "io", "_io", "tempfile", "glob",
        "functools", "_functools", "urllib", "urllib2", "urllib3", "http", "httplib", "requests",
        "ftplib", "smtplib", "telnetlib", "platform",
    ]

    /// Builtins that evaluate code or reach into objects or files.
    static let refusedBuiltins: Set<String> = [
        "eval", "exec", "execfile", "compile", "open", "file", "input", "raw_input", "__import__",
        "getattr", "setattr", "delattr", "globals", "locals", "vars", "breakpoint", "apply", "reload",
        "exit", "quit", "help", "memoryview", "__loader__", "__build_class__",
    ]

    /// Why a global that is not on the allowlist is refused rather than kept as a placeholder,
    /// or nil. Placeholders are inert whatever their name; these names only ever appear in a
    /// file made to attack `torch.load`, and refusing them says so.
    static func refusal(_ module: String, _ name: String) -> String? {
        let root = module.split(separator: ".", maxSplits: 1).first.map(String.init) ?? module
        if refusedModules.contains(root) {
            return "\(root) is a module for running code, processes, files, the network or nested pickles: a checkpoint never needs it"
        }
        if (module == "builtins" || module == "__builtin__") && refusedBuiltins.contains(name) {
            return "\(name) evaluates code or reaches into objects or files: a checkpoint never needs it"
        }
        if (module == "operator" || module == "_operator") && ["attrgetter", "itemgetter", "methodcaller"].contains(name) {
            return "operator getters reach into objects: a checkpoint never needs them"
        }
        if module == "types" && ["FunctionType", "LambdaType", "CodeType", "MethodType", "ModuleType"].contains(name) {
            return "it builds functions or code: a checkpoint never needs it"
        }
        if root == "numpy" && ["load", "loads", "fromfile"].contains(name) {
            return "it loads files or nested pickles: a checkpoint never needs it"
        }
        if root == "torch" && !(module == "torch.torch_version" || module == "torch.optim" || module.hasPrefix("torch.optim.")) {
            return "torch's own functions and classes are allowlisted one by one: tensors and storages are only rebuilt by the allowlisted functions"
        }
        return nil
    }

    /// The class a NEWOBJ, NEWOBJ_EX, INST or OBJ instantiates: only a placeholder.
    private func placeholderClass(_ v: PyValue, _ op: String, at opAt: Int) throws -> (String, String) {
        switch v {
        case .placeholder(let m, let n): return (m, n)
        case .global(let m, let n):
            throw fail(.malformedPickle, "\(op) of \(m).\(n), which torch.save never writes (it is rebuilt with REDUCE)", at: opAt)
        default:
            throw fail(.malformedPickle, "\(op) on \(v.typeName), which is not a class", at: opAt)
        }
    }

    /// A placeholder object: the name and the arguments, as data.
    private mutating func object(_ module: String, _ name: String, _ how: PyObject.Construction,
                                 args: Item, kwargs: Item?, at opAt: Int) throws -> Item {
        guard case .tuple(let a) = args.value else { throw fail(.malformedPickle, "\(how.rawValue) arguments are not a tuple", at: opAt) }
        var d = max(1, depth(args))
        var s = try grow(1, size(args), at: opAt)
        var kw: PyValue? = nil
        if let kwargs {
            d = max(d, depth(kwargs) + 1)
            s = try grow(s, size(kwargs), at: opAt)
            kw = try place(kwargs.value)
        }
        try checkNesting(d, at: opAt)
        let o = PyObject(module: module, name: name, construction: how, args: a, kwargs: kw, depth: d, size: s)
        return Item(value: .object(PyObjectRef(o)), depth: d, size: s)
    }

    /// An error for a placeholder (or other wrong value) where the pickle must have `what`.
    private func misplaced(_ v: PyValue, _ what: String, at: Int) -> ReadError {
        switch v {
        case .placeholder, .object:
            return fail(.disallowedGlobal, "\(what) is \(v.typeName): a class that is not on the allowlist cannot stand for it", at: at)
        default:
            return fail(.malformedPickle, "\(what) is \(v.typeName)", at: at)
        }
    }

    // MARK: - Persistent ids (storages)

    private mutating func persistentStorage(_ pid: PyValue, at: Int) throws -> StorageRef {
        if case .tuple(let t) = pid, case .string("module")? = t.first {
            throw fail(.wholeModule,
                       "a ('module', class, source file, source) persistent id: this legacy file is a whole pickled model, not a state dict. "
                       + "Save the weights with torch.save(model.state_dict(), path) and convert that file.", at: at)
        }
        guard case .tuple(let t) = pid, t.count == 5 || t.count == 6,
              case .string("storage") = t[0] else {
            throw fail(.malformedPickle, "persistent id is not a ('storage', type, key, location, numel) tuple", at: at)
        }
        guard case .global("torch", let cls) = t[1] else { throw misplaced(t[1], "the storage type", at: at) }
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

    // MARK: - REDUCE on an allowlisted global: the only calls, all data constructors

    private mutating func reduce(_ fn: PyValue, _ args: PyValue, argsDepth: Int, argsSize: Int, at: Int) throws -> PyValue {
        guard case .global(let module, let name) = fn else {
            throw fail(.malformedPickle, "REDUCE on \(fn.typeName), which is not callable", at: at)
        }
        guard case .tuple(let a) = args else { throw fail(.malformedPickle, "REDUCE arguments are \(args.typeName), not a tuple", at: at) }
        switch (module, name) {
        case ("collections", "OrderedDict"):
            let d = PyDict(ordered: true)
            switch a.count {
            case 0: break
            case 1:   // Python 2's OrderedDict.__reduce__: OrderedDict([[key, value], ...])
                let pairs: [PyValue]
                switch a[0] {
                case .list(let l): pairs = l.items
                case .tuple(let t): pairs = t
                default: throw fail(.malformedPickle, "OrderedDict(\(a[0].typeName)): only a list of (key, value) pairs is accepted", at: at)
                }
                for p in pairs {
                    let kv: [PyValue]
                    switch p {
                    case .list(let l): kv = l.items
                    case .tuple(let t): kv = t
                    default: kv = []
                    }
                    guard kv.count == 2 else { throw fail(.malformedPickle, "OrderedDict item is not a (key, value) pair", at: at) }
                    Self.insert(&d.entries, &d.keyIndex, kv[0], kv[1])   // already placed inside the argument
                }
                // The argument tuple holds a list (or tuple) of pairs around each key and value.
                d.depth = max(1, argsDepth - 2)
                d.size = argsSize
            default:
                throw fail(.malformedPickle, "OrderedDict() with \(a.count) arguments", at: at)
            }
            return .dict(d)
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
            guard case .tensor = a[0] else { throw misplaced(a[0], "the tensor of \(name)", at: at) }
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
        guard case .tuple(let t) = v else { throw misplaced(v, "tensor \(what)", at: at) }
        guard t.count <= 64 else { throw fail(.limitExceeded, "tensor with \(t.count) dimensions", at: at) }
        return try t.map {
            guard case .int(let i) = $0 else { throw misplaced($0, "an element of tensor \(what)", at: at) }
            return Int(i)
        }
    }

    /// Validates the strided view against its storage with checked arithmetic:
    /// `offset + sum((size_i - 1) * stride_i) < numel` for non-empty tensors.
    private func tensor(_ s: PyValue, _ o: PyValue, _ size: PyValue, _ stride: PyValue,
                        dtypeOverride: DType?, at: Int) throws -> TensorRef {
        guard case .storage(let storage) = s else { throw misplaced(s, "the tensor's storage", at: at) }
        guard case .int(let off64) = o else { throw misplaced(o, "the tensor offset", at: at) }
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
