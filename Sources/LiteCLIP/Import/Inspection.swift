import Dispatch
import Foundation
import TensorIO

/// What `liteclip inspect` reports about a file.
public struct Inspection {
    public struct Row {
        public let name: String
        public let dtype: DType
        public let shape: [Int]
        public let sha256: String
    }

    public let file: String
    public let format: Checkpoint.Format
    public let wrapper: String?
    public let metadata: [String: String]
    /// For liteCLIP `.lcw` files: the decoded metadata.
    public let lcw: LCWMetadata?
    /// For ONNX files: the graph's opsets, inputs, outputs and operator counts.
    public let onnx: [String: Any]?
    public let rows: [Row]

    /// Opens `path` with the reader its bytes call for and hashes every tensor (both cores).
    public static func inspect(_ path: String) throws -> Inspection {
        let source = try ByteSource(mapping: path)
        var lcwMeta: LCWMetadata? = nil
        var onnx: [String: Any]? = nil
        let ckpt: Checkpoint
        let kind = try TensorFile.detect(source)
        if kind == .lcw {
            let f = try LCWReader.read(source)
            ckpt = f.checkpoint
            lcwMeta = try? JSONDecoder().decode(LCWMetadata.self, from: f.metadataJSON)
        } else if kind == .onnx {
            let m = try ONNXReader.read(source)
            ckpt = m.checkpoint()
            var ops: [String: Int] = [:]
            for n in m.nodes { ops[n.domain.isEmpty ? n.opType : "\(n.domain).\(n.opType)", default: 0] += 1 }
            func io(_ v: [ONNXValueInfo]) -> [[String: Any]] {
                v.map { ["name": $0.name, "elem_type": $0.dtype?.rawValue ?? "type \($0.elemType)", "dims": $0.dims ?? []] as [String: Any] }
            }
            onnx = ["ir_version": m.irVersion, "producer": "\(m.producerName) \(m.producerVersion)",
                    "opsets": m.opsets.map { ["domain": $0.domain, "version": $0.version] as [String: Any] },
                    "inputs": io(m.inputs), "outputs": io(m.outputs), "nodes": m.nodes.count, "op_counts": ops]
        } else {
            ckpt = try TensorFile.read(source)
        }
        let tensors = ckpt.tensors
        var hashes = [Result<String, Error>](repeating: .success(""), count: tensors.count)
        hashes.withUnsafeMutableBufferPointer { out in
            let o = out
            DispatchQueue.concurrentPerform(iterations: tensors.count) { i in
                o[i] = Result { try tensors[i].load().sha256() }
            }
        }
        let rows = try zip(tensors, hashes).map { t, h in Row(name: t.name, dtype: t.dtype, shape: t.shape, sha256: try h.get()) }
        return Inspection(file: path, format: ckpt.format, wrapper: ckpt.wrapper, metadata: ckpt.metadata, lcw: lcwMeta, onnx: onnx, rows: rows)
    }

    public func json() throws -> String {
        var obj: [String: Any] = [
            "file": file, "format": format.rawValue, "wrapper": wrapper ?? NSNull(), "metadata": metadata,
            "tensors": rows.map { ["name": $0.name, "dtype": $0.dtype.rawValue, "shape": $0.shape, "sha256": $0.sha256] as [String: Any] },
        ]
        if let m = lcw {
            var lm = try m.jsonObject()
            if var tok = lm["tokenizer"] as? [String: Any] {
                tok["vocab_size"] = m.tokenizer.vocab.count
                tok["vocab_sha256"] = Data(m.tokenizer.vocab.joined(separator: "\n").utf8).withUnsafeBytes { SHA256.hex($0) }
                tok.removeValue(forKey: "vocab")
                lm["tokenizer"] = tok
            }
            obj["lcw"] = lm
        }
        if let g = onnx { obj["onnx"] = g }
        let data = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }
}
