import Dispatch
import Foundation
import TensorIO

/// What `liteclip inspect` reports about a file.
public struct Inspection: Encodable {
    public struct Row: Encodable {
        /// The full dotted path in the file (`state_dict.model.logit_scale`).
        public let name: String
        public let dtype: DType
        public let shape: [Int]
        public let sha256: String
        /// The containers holding it (the wrapper part of `name`) and its key inside them.
        public var container: [String] = []
        public var key: String
        /// ONNX: the `Constant` node holding it (nil for an initializer or any other file).
        public var constantNode: String? = nil

        enum CodingKeys: String, CodingKey { case name, dtype, shape, sha256, container, key, constantNode = "constant_node" }
    }

    /// What an ONNX file's graph holds besides its weights.
    public struct ONNXGraph: Encodable {
        public struct Opset: Encodable { public let domain: String; public let version: Int64 }
        public struct Value: Encodable {
            public let name: String
            public let elemType: String
            public let dims: [String]
            enum CodingKeys: String, CodingKey { case name, dims, elemType = "elem_type" }
        }
        public let irVersion: Int64
        public let producer: String
        public let nodes: Int
        public let opsets: [Opset]
        public let inputs: [Value]
        public let outputs: [Value]
        public let opCounts: [String: Int]
        enum CodingKeys: String, CodingKey {
            case producer, nodes, opsets, inputs, outputs
            case irVersion = "ir_version", opCounts = "op_counts"
        }
    }

    public let file: String
    public let format: Checkpoint.Format
    public let wrapper: String?
    public let metadata: [String: String]
    /// For liteCLIP `.lcw` files: the decoded metadata.
    public let lcw: LCWMetadata?
    /// For ONNX files: the graph's opsets, inputs, outputs and operator counts.
    public let onnx: ONNXGraph?
    public let rows: [Row]
    /// The top-level entries of a wrapped file (a training checkpoint), with their tensor counts.
    public var entries: [Checkpoint.Entry] = []
    /// Classes the file names that were kept as inert data, never imported or called.
    public var placeholders: [String] = []
    /// Tensors left out by the filter.
    public var filteredOut = 0

    /// Opens `path` with the reader its bytes call for and hashes every tensor (both cores).
    /// - Parameter filter: keep only tensors whose full path starts with this (the others are
    ///   not read).
    public static func inspect(_ path: String, filter: String? = nil) throws -> Inspection {
        let source = try ByteSource(mapping: path)
        var lcwMeta: LCWMetadata? = nil
        var onnx: ONNXGraph? = nil
        var ckpt: Checkpoint
        var constantNodes: [String: String] = [:]
        let kind = try TensorFile.detect(source)
        if kind == .lcw {
            let f = try LCWReader.read(source)
            ckpt = f.checkpoint
            lcwMeta = try? JSONDecoder().decode(LCWMetadata.self, from: f.metadataJSON)
        } else if kind == .onnx {
            let m = try ONNXReader.read(source)
            ckpt = m.checkpoint()
            // Weights some exporters keep in Constant nodes instead of initializers, also inside
            // the subgraphs of If / Loop / Scan nodes (depth-first, in node order).
            func constants(_ nodes: [ONNXNode]) {
                for n in nodes {
                    if n.opType == "Constant", n.domain.isEmpty, case .tensor(let t)? = n.attributes["value"],
                       let out = n.outputs.first, !out.isEmpty {
                        ckpt.tensors.append(Checkpoint.Tensor(name: out, dtype: t.dtype, shape: t.shape, origin: "Constant node '\(n.name)'") { try t.load() })
                        constantNodes[out] = n.name
                    }
                    for (_, a) in n.attributes.sorted(by: { $0.key < $1.key }) {
                        switch a {
                        case .graph(let g): constants(g.nodes)
                        case .graphs(let gs): for g in gs { constants(g.nodes) }
                        default: break
                        }
                    }
                }
            }
            constants(m.nodes)
            var ops: [String: Int] = [:]
            for n in m.nodes { ops[n.domain.isEmpty ? n.opType : "\(n.domain).\(n.opType)", default: 0] += 1 }
            func io(_ v: [ONNXValueInfo]) -> [ONNXGraph.Value] {
                v.map { .init(name: $0.name, elemType: $0.dtype?.rawValue ?? "type \($0.elemType)", dims: $0.dims ?? []) }
            }
            onnx = ONNXGraph(irVersion: Int64(m.irVersion), producer: "\(m.producerName) \(m.producerVersion)", nodes: m.nodes.count,
                             opsets: m.opsets.map { .init(domain: $0.domain, version: Int64($0.version)) },
                             inputs: io(m.inputs), outputs: io(m.outputs), opCounts: ops)
        } else {
            ckpt = try TensorFile.read(source)
        }
        let all = ckpt.tensors
        let tensors = filter.map { f in all.filter { $0.name.hasPrefix(f) } } ?? all
        var hashes = [Result<String, Error>](repeating: .success(""), count: tensors.count)
        hashes.withUnsafeMutableBufferPointer { out in
            let o = out
            DispatchQueue.concurrentPerform(iterations: tensors.count) { i in
                o[i] = Result { try tensors[i].load().sha256() }
            }
        }
        let rows = try zip(tensors, hashes).map { t, h in
            Row(name: t.name, dtype: t.dtype, shape: t.shape, sha256: try h.get(), container: t.container, key: t.key,
                constantNode: constantNodes[t.name])
        }
        var r = Inspection(file: path, format: ckpt.format, wrapper: ckpt.wrapper, metadata: ckpt.metadata, lcw: lcwMeta, onnx: onnx, rows: rows)
        r.entries = ckpt.entries
        r.placeholders = ckpt.placeholders
        r.filteredOut = all.count - tensors.count
        return r
    }

    enum CodingKeys: String, CodingKey { case file, format, wrapper, metadata, lcw, onnx, tensors, entries, placeholders, filteredOut = "filtered_out" }

    struct EntryJSON: Encodable { let key: String; let type: String; let tensors: Int }

    /// JSON: the file, its format, wrapper and metadata, each tensor (name, dtype, shape,
    /// sha256), and for a `.lcw` its decoded metadata with the vocabulary as a count and a hash.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(file, forKey: .file)
        try c.encode(format.rawValue, forKey: .format)
        try c.encode(wrapper, forKey: .wrapper)
        try c.encode(metadata, forKey: .metadata)
        try c.encodeIfPresent(onnx, forKey: .onnx)
        try c.encode(rows, forKey: .tensors)
        try c.encode(entries.map { EntryJSON(key: $0.key, type: $0.type, tensors: $0.tensors) }, forKey: .entries)
        try c.encode(placeholders, forKey: .placeholders)
        try c.encode(filteredOut, forKey: .filteredOut)
        if let m = lcw { try c.encode(LCWSummary(m), forKey: .lcw) }
    }

    /// The tokenizer's settings, with the vocabulary as its size and the SHA-256 of its lines.
    struct TokenizerSummary: Encodable {
        let doLowerCase: Bool, stripAccents: Bool?, tokenizeChineseChars: Bool, cleanText: Bool, maxLength: Int
        let continuingSubwordPrefix: String, maxInputCharsPerWord: Int
        let unkToken: String, clsToken: String, sepToken: String, padToken: String, maskToken: String
        let vocabSize: Int, vocabSHA256: String
        init(_ t: TokenizerSpec) {
            (doLowerCase, stripAccents, tokenizeChineseChars, cleanText, maxLength) = (t.doLowerCase, t.stripAccents, t.tokenizeChineseChars, t.cleanText, t.maxLength)
            (continuingSubwordPrefix, maxInputCharsPerWord) = (t.continuingSubwordPrefix, t.maxInputCharsPerWord)
            (unkToken, clsToken, sepToken, padToken, maskToken) = (t.unkToken, t.clsToken, t.sepToken, t.padToken, t.maskToken)
            vocabSize = t.vocab.count
            vocabSHA256 = Data(t.vocab.joined(separator: "\n").utf8).withUnsafeBytes { SHA256.hex($0) }
        }
        enum CodingKeys: String, CodingKey {
            case doLowerCase = "do_lower_case", stripAccents = "strip_accents", tokenizeChineseChars = "tokenize_chinese_chars"
            case cleanText = "clean_text", maxLength = "max_length", continuingSubwordPrefix = "continuing_subword_prefix"
            case maxInputCharsPerWord = "max_input_chars_per_word", unkToken = "unk_token", clsToken = "cls_token"
            case sepToken = "sep_token", padToken = "pad_token", maskToken = "mask_token"
            case vocabSize = "vocab_size", vocabSHA256 = "vocab_sha256"
        }
    }

    /// A `.lcw`'s metadata with the vocabulary summarised by its size and hash.
    struct LCWSummary: Encodable {
        let meta: LCWMetadata
        init(_ m: LCWMetadata) { meta = m }
        enum Keys: String, CodingKey {
            case architecture, model, tokenizer, preprocess, source, converter
        }
        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(meta.architecture, forKey: .architecture)
            try c.encode(meta.model, forKey: .model)
            try c.encode(meta.preprocess, forKey: .preprocess)
            try c.encode(meta.source, forKey: .source)
            try c.encode(meta.converter, forKey: .converter)
            try c.encode(TokenizerSummary(meta.tokenizer), forKey: .tokenizer)
        }
    }
}
