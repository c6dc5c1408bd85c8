/// Element types a tensor can be stored in. Raw values are the names used in `.lcw`
/// headers, `inspect` output and error messages.
public enum DType: String, CaseIterable, Sendable, Codable {
    case f32, f64, f16, bf16, i64, i32, i16, i8, u8, bool

    /// Bytes per element.
    public var size: Int {
        switch self {
        case .f64, .i64: return 8
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .i8, .u8, .bool: return 1
        }
    }

    public var isFloatingPoint: Bool {
        switch self {
        case .f32, .f64, .f16, .bf16: return true
        default: return false
        }
    }

    /// The PyTorch storage class that holds this dtype (`torch.FloatStorage`, ...).
    public init?(torchStorageClass name: String) {
        switch name {
        case "FloatStorage": self = .f32
        case "DoubleStorage": self = .f64
        case "HalfStorage": self = .f16
        case "BFloat16Storage": self = .bf16
        case "LongStorage": self = .i64
        case "IntStorage": self = .i32
        case "ShortStorage": self = .i16
        case "CharStorage": self = .i8
        case "ByteStorage": self = .u8
        case "BoolStorage": self = .bool
        default: return nil
        }
    }

    /// A `torch.<name>` dtype object as pickled by `_rebuild_tensor_v3`.
    public init?(torchDTypeName name: String) {
        switch name {
        case "float32", "float": self = .f32
        case "float64", "double": self = .f64
        case "float16", "half": self = .f16
        case "bfloat16": self = .bf16
        case "int64", "long": self = .i64
        case "int32", "int": self = .i32
        case "int16", "short": self = .i16
        case "int8": self = .i8
        case "uint8": self = .u8
        case "bool": self = .bool
        default: return nil
        }
    }

    /// safetensors dtype names (`F32`, `BF16`, ...).
    public init?(safetensorsName name: String) {
        switch name {
        case "F32": self = .f32
        case "F64": self = .f64
        case "F16": self = .f16
        case "BF16": self = .bf16
        case "I64": self = .i64
        case "I32": self = .i32
        case "I16": self = .i16
        case "I8": self = .i8
        case "U8": self = .u8
        case "BOOL": self = .bool
        default: return nil
        }
    }

    public var safetensorsName: String {
        switch self {
        case .f32: return "F32"
        case .f64: return "F64"
        case .f16: return "F16"
        case .bf16: return "BF16"
        case .i64: return "I64"
        case .i32: return "I32"
        case .i16: return "I16"
        case .i8: return "I8"
        case .u8: return "U8"
        case .bool: return "BOOL"
        }
    }
}

// MARK: - Checked arithmetic for sizes read from files

enum Checked {
    /// Product of non-negative extents; nil on overflow or a negative extent.
    static func product(_ values: [Int]) -> Int? {
        var p = 1
        for v in values {
            guard v >= 0 else { return nil }
            let (r, o) = p.multipliedReportingOverflow(by: v)
            if o { return nil }
            p = r
        }
        return p
    }

    static func mul(_ a: Int, _ b: Int) -> Int? {
        let (r, o) = a.multipliedReportingOverflow(by: b)
        return o ? nil : r
    }

    static func add(_ a: Int, _ b: Int) -> Int? {
        let (r, o) = a.addingReportingOverflow(b)
        return o ? nil : r
    }

    /// Byte length of a tensor of `shape` and `dtype`, nil on overflow or negative dims.
    static func byteCount(_ shape: [Int], _ dtype: DType) -> Int? {
        guard let n = product(shape) else { return nil }
        return mul(n, dtype.size)
    }
}
