import Foundation
import CONNX

/// Reads ONNX models (`ModelProto`, https://github.com/onnx/onnx/blob/main/docs/IR.md):
/// model facts, the graph's nodes and attributes, inputs, outputs and initializers, with
/// external data. Spec of what is accepted and rejected: formats/onnx.md.
///
/// Decoding is protobuf-c's (`Sources/CONNX`, generated from formats/onnx.proto), behind two
/// guards: a wire-format walk that bounds nesting and reports truncation with a byte offset,
/// and an allocator with a total cap. Everything is copied out into Swift values and the
/// unpacked message is freed before `read` returns; raw_data payloads stay in the buffer
/// protobuf-c unpacked them into (owned by their tensor), typed fields are converted once.
public enum ONNXReader {
    /// Limits applied while decoding (internal so tests can lower them).
    struct Limits {
        /// Protobuf messages are limited to 2 GiB; larger models must use external data.
        var maxModelBytes = 1 << 31
        /// GraphProtos nested through node attributes (the main graph is level 1).
        var maxGraphDepth = 100
        /// Any protobuf message nesting; 100 graphs take ~300 levels (graph > node > attribute).
        var maxMessageDepth = 320
        /// protobuf-c may allocate at most `allocationFactor` x the file size + `allocationSlack`:
        /// packed int64_data of small values takes 1 byte in the file and 8 unpacked.
        var allocationFactor = 8
        var allocationSlack = 64 << 20
    }

    public static func read(_ source: ByteSource) throws -> ONNXModel {
        try read(source, limits: Limits())
    }

    static func read(_ source: ByteSource, limits: Limits) throws -> ONNXModel {
        let file = source.name
        return try source.withBytes { bytes in
            guard bytes.count <= limits.maxModelBytes else {
                throw ReadError(.limitExceeded, file: file,
                                "file is \(bytes.count) bytes; a protobuf message is at most \(limits.maxModelBytes) (large models keep their weights in external data)")
            }
            guard !bytes.isEmpty else { throw ReadError(.truncated, file: file, "empty file") }

            try ProtobufWireCheck(buf: bytes, file: file, maxMessageDepth: limits.maxMessageDepth,
                                  maxGraphDepth: limits.maxGraphDepth).checkModel()

            let cap = Checked.add(Checked.mul(bytes.count, limits.allocationFactor) ?? Int.max, limits.allocationSlack) ?? Int.max
            let arena = ProtobufArena(cap: cap)
            guard let model = onnx__model_proto__unpack(arena.allocator, bytes.count,
                                                        bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)) else {
                if let size = arena.refused {
                    throw ReadError(.limitExceeded, file: file,
                                    "decoding needs more memory than allowed: a request for \(size) bytes after \(arena.used) "
                                    + "(the limit is \(limits.allocationFactor) x the file size + \(limits.allocationSlack >> 20) MiB)")
                }
                throw ReadError(.badHeader, file: file, "not a valid ONNX ModelProto (protobuf-c could not decode it)")
            }
            defer { onnx__model_proto__free_unpacked(model, arena.allocator) }
            var decoder = ONNXDecoder(file: file, arena: arena, maxGraphDepth: limits.maxGraphDepth)
            return try decoder.model(model.pointee, source: source)
        }
    }
}

// MARK: - Message to Swift values

/// Turns the unpacked protobuf-c structs into Swift values. Lives only during `read`.
struct ONNXDecoder {
    let file: String
    let arena: ProtobufArena
    let maxGraphDepth: Int
    /// The model file's folder: external data locations are relative to it.
    let baseDir: String
    /// External data files, each mapped once.
    var mapped: [String: ByteSource] = [:]

    init(file: String, arena: ProtobufArena, maxGraphDepth: Int) {
        self.file = file
        self.arena = arena
        self.maxGraphDepth = maxGraphDepth
        let dir = (file as NSString).deletingLastPathComponent
        baseDir = dir.isEmpty ? "." : dir
    }

    mutating func model(_ m: Onnx__ModelProto, source: ByteSource) throws -> ONNXModel {
        guard m.has_ir_version != 0 else {
            throw ReadError(.badHeader, file: file, place: "ModelProto", "no ir_version: not an ONNX model")
        }
        guard let g = m.graph else {
            throw ReadError(.badHeader, file: file, place: "ModelProto", "no graph")
        }
        var opsets: [(domain: String, version: Int)] = []
        for o in items(m.n_opset_import, m.opset_import) {
            opsets.append((text(o.pointee.domain), Int(o.pointee.version)))
        }
        var props: [String: String] = [:]
        for p in items(m.n_metadata_props, m.metadata_props) {
            props[text(p.pointee.key)] = text(p.pointee.value)
        }
        let graph = try self.graph(g.pointee, depth: 1, place: "graph")
        return ONNXModel(file: file, irVersion: Int(m.ir_version), producerName: text(m.producer_name),
                         producerVersion: text(m.producer_version), domain: text(m.domain),
                         modelVersion: Int(m.model_version), opsets: opsets, metadataProps: props,
                         graph: graph, source: source)
    }

    mutating func graph(_ g: Onnx__GraphProto, depth: Int, place: String) throws -> ONNXGraph {
        guard depth <= maxGraphDepth else {
            throw ReadError(.limitExceeded, file: file, place: place, "graphs nested deeper than \(maxGraphDepth) levels")
        }
        let name = text(g.name)
        let here = place == "graph" ? "graph" : "\(place) (graph \(SafetensorsReader.show(name)))"
        var seen = Set<String>()
        var initializers: [Checkpoint.Tensor] = []
        for (i, t) in items(g.n_initializer, g.initializer).enumerated() {
            let tname = text(t.pointee.name)
            let tplace = (here == "graph" ? "" : here + ": ") + "initializer \(SafetensorsReader.show(tname))"
            guard !tname.isEmpty else {
                throw ReadError(.badHeader, file: file, place: (here == "graph" ? "" : here + ": ") + "initializer #\(i)", "initializer has no name")
            }
            guard seen.insert(tname).inserted else {
                throw ReadError(.duplicateName, file: file, place: tplace, "two initializers have this name")
            }
            initializers.append(try tensor(t.pointee, place: tplace))
        }
        if g.n_sparse_initializer > 0 {
            throw ReadError(.unsupportedFormat, file: file, place: here, "sparse initializers are not supported")
        }
        var nodes: [ONNXNode] = []
        for (i, n) in items(g.n_node, g.node).enumerated() {
            nodes.append(try node(n.pointee, index: i, depth: depth, graphPlace: here))
        }
        return ONNXGraph(name: name, nodes: nodes, initializers: initializers,
                         inputs: items(g.n_input, g.input).map { valueInfo($0.pointee) },
                         outputs: items(g.n_output, g.output).map { valueInfo($0.pointee) })
    }

    mutating func node(_ n: Onnx__NodeProto, index: Int, depth: Int, graphPlace: String) throws -> ONNXNode {
        let name = text(n.name)
        let place = (graphPlace == "graph" ? "" : graphPlace + ": ")
            + (name.isEmpty ? "node #\(index)" : "node \(SafetensorsReader.show(name))")
        var attributes: [String: ONNXAttribute] = [:]
        for a in items(n.n_attribute, n.attribute) {
            let aname = text(a.pointee.name)
            let aplace = "\(place) attribute \(SafetensorsReader.show(aname))"
            guard attributes[aname] == nil else {
                throw ReadError(.duplicateName, file: file, place: aplace, "the node has two attributes with this name")
            }
            attributes[aname] = try attribute(a.pointee, depth: depth, place: aplace)
        }
        var props: [String: String] = [:]
        for p in items(n.n_metadata_props, n.metadata_props) {
            props[text(p.pointee.key)] = text(p.pointee.value)
        }
        return ONNXNode(opType: text(n.op_type), name: name, domain: text(n.domain),
                        inputs: items(n.n_input, n.input).map { String(cString: $0) },
                        outputs: items(n.n_output, n.output).map { String(cString: $0) },
                        attributes: attributes, metadataProps: props)
    }

    mutating func attribute(_ a: Onnx__AttributeProto, depth: Int, place: String) throws -> ONNXAttribute {
        if let ref = a.ref_attr_name, ref.pointee != 0 {
            return .unsupported("reference to function attribute \(SafetensorsReader.show(String(cString: ref)))")
        }
        guard a.has_type != 0 else {
            throw ReadError(.badHeader, file: file, place: place, "attribute has no type")
        }
        func bytesText(_ b: ProtobufCBinaryData) -> String {
            b.len == 0 ? "" : String(decoding: UnsafeBufferPointer(start: b.data, count: b.len), as: UTF8.self)
        }
        switch a.type.rawValue {
        case 1: return .float(a.f)
        case 2: return .int(a.i)
        case 3: return .string(bytesText(a.s))
        case 4:
            guard let t = a.t else { throw ReadError(.badHeader, file: file, place: place, "TENSOR attribute without a tensor") }
            return .tensor(try tensor(t.pointee, place: place))
        case 5:
            guard let g = a.g else { throw ReadError(.badHeader, file: file, place: place, "GRAPH attribute without a graph") }
            return .graph(try graph(g.pointee, depth: depth + 1, place: place))
        case 6: return .floats(Array(UnsafeBufferPointer(start: a.floats, count: a.n_floats)))
        case 7: return .ints(Array(UnsafeBufferPointer(start: a.ints, count: a.n_ints)))
        case 8: return .strings(UnsafeBufferPointer(start: a.strings, count: a.n_strings).map(bytesText))
        case 9:
            var out: [Checkpoint.Tensor] = []
            for (i, t) in items(a.n_tensors, a.tensors).enumerated() { out.append(try tensor(t.pointee, place: "\(place) tensor #\(i)")) }
            return .tensors(out)
        case 10:
            var out: [ONNXGraph] = []
            for (i, g) in items(a.n_graphs, a.graphs).enumerated() {
                out.append(try graph(g.pointee, depth: depth + 1, place: "\(place) graph #\(i)"))
            }
            return .graphs(out)
        case 11: return .unsupported("SPARSE_TENSOR")
        case 12: return .unsupported("SPARSE_TENSORS")
        case 13: return .unsupported("TYPE_PROTO")
        case 14: return .unsupported("TYPE_PROTOS")
        case let t: throw ReadError(.badHeader, file: file, place: place, "unknown attribute type \(t)")
        }
    }

    func valueInfo(_ v: Onnx__ValueInfoProto) -> ONNXValueInfo {
        var elemType = 0
        var dims: [String]?
        if let type = v.type, type.pointee.value_case.rawValue == 1, let tt = type.pointee.tensor_type {
            elemType = tt.pointee.has_elem_type != 0 ? Int(tt.pointee.elem_type) : 0
            if let shape = tt.pointee.shape {
                dims = items(shape.pointee.n_dim, shape.pointee.dim).map { d in
                    switch d.pointee.value_case.rawValue {
                    case 1: return String(d.pointee.dim_value)
                    case 2: return text(d.pointee.dim_param)
                    default: return "?"
                    }
                }
            }
        }
        return ONNXValueInfo(name: text(v.name), elemType: elemType, dims: dims)
    }
}

// MARK: - protobuf-c helpers

/// A protobuf-c repeated message field (`n_x`, `x`) as a buffer of non-null element pointers.
func items<T>(_ n: Int, _ p: UnsafeMutablePointer<UnsafeMutablePointer<T>?>?) -> [UnsafeMutablePointer<T>] {
    guard n > 0, let p else { return [] }
    return UnsafeBufferPointer(start: p, count: n).compactMap { $0 }
}

/// A protobuf-c repeated string field.
func items(_ n: Int, _ p: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> [UnsafeMutablePointer<CChar>] {
    guard n > 0, let p else { return [] }
    return UnsafeBufferPointer(start: p, count: n).compactMap { $0 }
}

/// A protobuf-c string field; unset is empty.
func text(_ p: UnsafeMutablePointer<CChar>?) -> String {
    p.map { String(cString: $0) } ?? ""
}
