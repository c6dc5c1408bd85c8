/// The values the allowlisted pickle interpreter can build. Nothing here can run code:
/// "callables" are only names, and REDUCE on one of them builds data (formats/pytorch.md,
/// "Placeholders").
public indirect enum PyValue {
    case none
    case bool(Bool)
    case int(Int64)
    /// An integer outside Int64 (LONG, LONG1, LONG4), minimal little-endian two's complement.
    case bigInt([UInt8])
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case tuple([PyValue])
    case list(PyList)
    case dict(PyDict)
    /// An allowlisted global such as `collections.OrderedDict` or `torch.float16`.
    case global(module: String, name: String)
    /// A global that is NOT on the allowlist (`argparse.Namespace`, `omegaconf.dictconfig.DictConfig`,
    /// ...), kept as its name only: never imported, never looked up, never called.
    case placeholder(module: String, name: String)
    /// What a pickle built by "calling" a placeholder (REDUCE, NEWOBJ, NEWOBJ_EX, INST, OBJ) and
    /// filling it (BUILD, SETITEM(S), APPEND(S)): the name and those arguments, kept as data.
    case object(PyObjectRef)
    /// A storage reference produced by BINPERSID.
    case storage(StorageRef)
    case tensor(TensorRef)

    var typeName: String {
        switch self {
        case .none: return "None"
        case .bool: return "bool"
        case .int, .bigInt: return "int"
        case .float: return "float"
        case .string: return "str"
        case .bytes: return "bytes"
        case .tuple: return "tuple"
        case .list: return "list"
        case .dict(let d): return d.isOrdered ? "OrderedDict" : "dict"
        case .global(let m, let n): return "\(m).\(n)"
        case .placeholder(let m, let n): return "\(m).\(n) (placeholder)"
        case .object(let r): return "\(r.qualifiedName) object (placeholder)"
        case .storage: return "storage"
        case .tensor: return "tensor"
        }
    }

    /// The key text for dictionary keys that are strings or ints (state dicts, optimizer state).
    var keyText: String? {
        switch self {
        case .string(let s): return s
        case .int(let i): return String(i)
        default: return nil
        }
    }
}

public final class PyList {
    public var items: [PyValue] = []
    var depth = 1
    /// Values in the list walked as a tree (shared references counted each time), itself included.
    var size = 1
    /// Set once the list is placed inside another value; it is never changed after that
    /// (PickleMachine: "Containers are filled before they are placed").
    var frozen = false
}

public final class PyDict {
    public var entries: [(key: PyValue, value: PyValue)] = []
    /// True for `collections.OrderedDict`, false for a plain `{}`.
    public let isOrdered: Bool
    /// The state BUILD gave an OrderedDict (a state dict's `_metadata`); kept, never interpreted.
    public var buildState: PyValue?
    /// Position of each str/int key in `entries`, while the pickle fills the dict.
    var keyIndex: [String: Int] = [:]
    var depth = 1
    var size = 1
    /// Set once the dict is placed inside another value (see `PyList.frozen`).
    var frozen = false

    init(ordered: Bool) { isOrdered = ordered }

    public func value(forKey key: String) -> PyValue? {
        for e in entries { if case .string(let k) = e.key, k == key { return e.value } }
        return nil
    }
}

/// An instance of a class that is not on the allowlist, as inert data: the class's name, the
/// arguments the pickle would have called it with, and what it would have filled it with.
/// Nothing is imported or called; no attribute is ever looked up.
public final class PyObject {
    /// The opcode that "called" the placeholder.
    public enum Construction: String, Sendable {
        /// `REDUCE`: `callable(*args)` (`args` are the call's arguments).
        case reduce = "REDUCE"
        /// `NEWOBJ`: `cls.__new__(cls, *args)`.
        case newobj = "NEWOBJ"
        /// `NEWOBJ_EX`: `cls.__new__(cls, *args, **kwargs)`.
        case newobjEx = "NEWOBJ_EX"
        /// `INST` / `OBJ` (protocols 0 and 1; Python 2 classic classes): `cls(*args)`.
        case inst = "INST", obj = "OBJ"
    }

    public let module: String
    public let name: String
    public var qualifiedName: String { "\(module).\(name)" }
    public let construction: Construction
    public let args: [PyValue]
    /// NEWOBJ_EX's keyword arguments (a dict), nil for the other constructions.
    public let kwargs: PyValue?
    /// What BUILD gave it (`__setstate__`'s argument or the `__dict__` update), if anything.
    public internal(set) var state: PyValue?
    /// What APPEND(S) gave it (a list subclass's items).
    public internal(set) var listItems: [PyValue] = []
    /// What SETITEM(S) gave it (a dict subclass's items, e.g. Lightning's `AttributeDict`).
    public internal(set) var dictItems: [(key: PyValue, value: PyValue)] = []
    var dictIndex: [String: Int] = [:]
    var depth: Int
    var size: Int

    init(module: String, name: String, construction: Construction, args: [PyValue], kwargs: PyValue?, depth: Int, size: Int) {
        self.module = module
        self.name = name
        self.construction = construction
        self.args = args
        self.kwargs = kwargs
        self.depth = depth
        self.size = size
    }
}

/// One place where a `PyObject` sits (a tuple item, a list item, a dict value, an argument...).
///
/// Usually an owning reference. An object that is filled (BUILD, SETITEM(S), APPEND(S)) after
/// it was already placed somewhere is part of a recursive structure (omegaconf's `_parent`
/// links point back at a config before its state is set): every place it had at that moment
/// becomes a back-reference, which does not own it, so no reference cycle can form and the
/// nesting and size caps hold for everything reachable through owning references.
/// Code that walks values must not descend into `backReferenceTarget` (that is how a cycle would
/// be followed); `object` is nil for a back-reference.
public final class PyObjectRef {
    private var owned: PyObject?
    private weak var target: PyObject?
    /// The object's `module.name`, available even for a back-reference.
    public let qualifiedName: String

    init(_ object: PyObject) {
        owned = object
        target = object
        qualifiedName = object.qualifiedName
    }

    /// The object, unless this is a back-reference.
    public var object: PyObject? { owned }
    /// True when this place points back at an enclosing object (see the type's comment).
    public var isBackReference: Bool { owned == nil }
    /// For a back-reference, the object it points at while something else still owns it.
    /// Never walk into it.
    public var backReferenceTarget: PyObject? { owned == nil ? target : nil }

    /// Turns this place into a back-reference.
    func releaseOwnership() { owned = nil }
}

/// `('storage', torch.FloatStorage, '0', 'cuda:0', 1234[, view_metadata])` as BINPERSID sees it.
public struct StorageRef: Equatable {
    public let key: String
    /// Element type of the storage class; `.u8` for `torch.UntypedStorage` (numel counts bytes).
    public let dtype: DType
    public let isUntyped: Bool
    public let location: String
    /// Elements of `dtype` the storage declares.
    public let numel: Int
    /// Legacy format only: `(view_key, offset, view_numel)` when this is a view of another storage.
    public let view: LegacyView?

    public struct LegacyView: Equatable {
        public let key: String
        public let offset: Int
        public let numel: Int
    }
}

/// A tensor as `_rebuild_tensor_v2/v3` describes it: a strided view of a storage.
/// Offsets and strides count elements of `dtype`.
public struct TensorRef {
    public let storage: StorageRef
    public let dtype: DType
    public let offset: Int
    public let shape: [Int]
    public let stride: [Int]
}
