/// The values the allowlisted pickle interpreter can build. Nothing here can run code:
/// "callables" are only names on the allowlist, and REDUCE on one of them builds data.
public indirect enum PyValue {
    case none
    case bool(Bool)
    case int(Int64)
    /// An integer wider than 64 bits (LONG1/LONG4), little-endian two's complement.
    case bigInt([UInt8])
    case float(Double)
    case string(String)
    case bytes([UInt8])
    case tuple([PyValue])
    case list(PyList)
    case dict(PyDict)
    /// An allowlisted global such as `collections.OrderedDict` or `torch.float16`.
    case global(module: String, name: String)
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
    var depth = 1
    /// Set once the dict is placed inside another value (see `PyList.frozen`).
    var frozen = false

    init(ordered: Bool) { isOrdered = ordered }

    public func value(forKey key: String) -> PyValue? {
        for e in entries { if case .string(let k) = e.key, k == key { return e.value } }
        return nil
    }
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
