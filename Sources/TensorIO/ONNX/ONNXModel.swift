/// An ONNX model as `ONNXReader` decoded it: model facts, the main graph's nodes (with their
/// attributes), inputs, outputs and initializers. Nothing here points into protobuf-c memory:
/// the unpacked message is freed before `ONNXReader.read` returns.
public struct ONNXModel: Sendable {
    public let file: String
    /// `ModelProto.ir_version`.
    public let irVersion: Int
    public let producerName: String
    public let producerVersion: String
    public let domain: String
    public let modelVersion: Int
    /// Operator sets the model imports; the default ONNX domain is the empty string.
    public let opsets: [(domain: String, version: Int)]
    /// `ModelProto.metadata_props`.
    public let metadataProps: [String: String]
    /// The main graph.
    public let graph: ONNXGraph
    /// Keeps the model file alive as long as the model is (the external data files are kept
    /// alive by the tensors that view them).
    let source: ByteSource

    public var inputs: [ONNXValueInfo] { graph.inputs }
    public var outputs: [ONNXValueInfo] { graph.outputs }
    public var nodes: [ONNXNode] { graph.nodes }
    public var initializers: [Checkpoint.Tensor] { graph.initializers }

    /// The main graph's initializers as a checkpoint (format `.onnx`), in file order, with the
    /// model facts as metadata (`onnx.ir_version`, `onnx.producer`, `onnx.opsets`, `onnx.graph`,
    /// and each `metadata_props` entry under `onnx.metadata.<key>`).
    public func checkpoint() -> Checkpoint {
        var meta: [String: String] = [
            "onnx.ir_version": String(irVersion),
            "onnx.producer": producerVersion.isEmpty ? producerName : "\(producerName) \(producerVersion)",
            "onnx.opsets": opsets.map { "\($0.domain.isEmpty ? "ai.onnx" : $0.domain):\($0.version)" }.joined(separator: ","),
            "onnx.graph": graph.name,
        ]
        for (k, v) in metadataProps { meta["onnx.metadata." + k] = v }
        return Checkpoint(file: file, format: .onnx, tensors: initializers, metadata: meta, source: source)
    }
}

/// A `GraphProto`: the main graph, or a subgraph held by a node attribute (`If`, `Loop`, `Scan`).
public struct ONNXGraph: Sendable {
    public let name: String
    public let nodes: [ONNXNode]
    /// In file order; names are unique within the graph.
    public let initializers: [Checkpoint.Tensor]
    public let inputs: [ONNXValueInfo]
    public let outputs: [ONNXValueInfo]
}

/// A `NodeProto`.
public struct ONNXNode: Sendable {
    public let opType: String
    public let name: String
    /// Empty for the default ONNX domain.
    public let domain: String
    /// Value names; an empty string marks an omitted optional input or output.
    public let inputs: [String]
    public let outputs: [String]
    public let attributes: [String: ONNXAttribute]
    /// `NodeProto.metadata_props` (e.g. the dynamo exporter's `pkg.torch.onnx.name_scopes`).
    public let metadataProps: [String: String]
}

/// An `AttributeProto` value. Strings are decoded as UTF-8 (invalid sequences replaced).
public indirect enum ONNXAttribute: Sendable {
    case float(Float)
    case int(Int64)
    case string(String)
    case tensor(Checkpoint.Tensor)
    case graph(ONNXGraph)
    case floats([Float])
    case ints([Int64])
    case strings([String])
    case tensors([Checkpoint.Tensor])
    case graphs([ONNXGraph])
    /// Kinds this reader does not decode (sparse tensors, type protos, references to a function's
    /// attributes), named by their ONNX type.
    case unsupported(String)

    public var int: Int64? { if case .int(let v) = self { return v }; return nil }
    public var float: Float? { if case .float(let v) = self { return v }; return nil }
    public var string: String? { if case .string(let v) = self { return v }; return nil }
    public var ints: [Int64]? { if case .ints(let v) = self { return v }; return nil }
    public var floats: [Float]? { if case .floats(let v) = self { return v }; return nil }
}

/// A graph input or output (`ValueInfoProto`).
public struct ONNXValueInfo: Sendable {
    public let name: String
    /// ONNX `TensorProto.DataType` code of a tensor value; 0 when unknown or not a tensor.
    public let elemType: Int
    /// Each dimension as text: its size (`"3"`), its symbolic name (`"batch"`), or `"?"` when
    /// neither is given. Nil when the rank is unknown (or the value is not a tensor).
    public let dims: [String]?

    /// `elemType` as a TensorIO dtype, nil when it has none.
    public var dtype: DType? { ONNXDataType.dtype(elemType) }
}

/// ONNX `TensorProto.DataType` codes.
enum ONNXDataType {
    static func dtype(_ code: Int) -> DType? {
        switch code {
        case 1: return .f32
        case 2: return .u8
        case 3: return .i8
        case 5: return .i16
        case 6: return .i32
        case 7: return .i64
        case 9: return .bool
        case 10: return .f16
        case 11: return .f64
        case 16: return .bf16
        default: return nil
        }
    }

    static func name(_ code: Int) -> String {
        let names = [0: "UNDEFINED", 1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32",
                     7: "INT64", 8: "STRING", 9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32",
                     13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128", 16: "BFLOAT16",
                     17: "FLOAT8E4M3FN", 18: "FLOAT8E4M3FNUZ", 19: "FLOAT8E5M2", 20: "FLOAT8E5M2FNUZ",
                     21: "UINT4", 22: "INT4", 23: "FLOAT4E2M1", 24: "FLOAT8E8M0", 25: "UINT2", 26: "INT2"]
        return names[code].map { "\(code) (\($0))" } ?? "\(code) (unknown)"
    }
}
