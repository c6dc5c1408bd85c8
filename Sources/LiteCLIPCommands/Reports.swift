import Foundation
import LiteCLIP
import TensorIO

// The CLI's text reports: the library returns values, the CLI decides how they read.

extension Inspection {
    func text() -> String {
        var out = ["file: \(file)", "format: \(format.rawValue)", "weights: \(wrapper ?? "at the top level")"]
        for (k, v) in metadata.sorted(by: { $0.key < $1.key }) { out.append("\(k): \(v)") }
        if let m = lcw {
            let c = m.model
            out.append("model: liteCLIP; ConvNeXt dims \(c.image.dims) depths \(c.image.depths); BERT hidden \(c.text.hiddenSize) layers \(c.text.numHiddenLayers) heads \(c.text.numAttentionHeads) intermediate \(c.text.intermediateSize); projection \(c.projectionDim)")
            out.append("tokenizer: \(m.tokenizer.vocab.count) tokens, lower-case \(m.tokenizer.doLowerCase), max length \(m.tokenizer.maxLength)")
            out.append("preprocess: resize \(m.preprocess.resize) \(m.preprocess.interpolation), center crop \(m.preprocess.centerCrop), mean \(m.preprocess.mean), std \(m.preprocess.std)")
            out.append("source: \(m.source.file) (\(m.source.format)) sha256 \(m.source.sha256)")
            for line in m.source.partial ?? [] { out.append("partial: " + line) }
            out.append("converter: \(m.converter.name) \(m.converter.version)")
            if let q = m.quantization {
                out.append("quantization: \(q.tensors) weights \(q.weights), symmetric, one f32 scale per row in <weight>\(q.scaleSuffix); the rest f32")
            }
        }
        if let g = onnx {
            out.append("onnx: ir_version \(g.irVersion), producer \(g.producer), \(g.nodes) nodes")
            out.append("opsets: " + g.opsets.map { "\($0.domain.isEmpty ? "ai.onnx" : $0.domain) \($0.version)" }.joined(separator: ", "))
            for (key, values) in [("input", g.inputs), ("output", g.outputs)] {
                for v in values { out.append("\(key): \(v.name) \(v.elemType) [\(v.dims.joined(separator: ", "))]") }
            }
            let ops = g.opCounts.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
            out.append("ops: " + ops.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        if !entries.isEmpty {
            out.append("entries: " + entries.map { "\($0.key) (\($0.type)\($0.tensors > 0 ? ", \(plural($0.tensors, "tensor"))" : ""))" }.joined(separator: ", "))
        }
        if !placeholders.isEmpty {
            out.append("placeholders: " + placeholders.joined(separator: ", ") + " (kept as inert data: never imported or called)")
        }
        let constants = rows.filter { $0.constantNode != nil }
        if !constants.isEmpty {
            out.append("constants: \(constants.count) tensors (\(constants.reduce(0) { $0 + $1.shape.reduce(1, *) }) values) are held in Constant nodes, not initializers")
        }
        let params = rows.reduce(0) { $0 + $1.shape.reduce(1, *) }
        out.append("tensors: \(rows.count), parameters: \(params)" + (filteredOut > 0 ? " (\(filteredOut) more not matching the filter)" : ""))
        let w = rows.map(\.name.count).max() ?? 4
        var group: String? = nil
        for r in rows {
            // Grouped by top-level entry when the file wraps its tensors.
            if !entries.isEmpty, let g = r.container.first ?? Optional(r.key), g != group {
                group = g
                out.append("[\(g)] " + plural(rows.filter { ($0.container.first ?? $0.key) == g }.count, "tensor"))
            }
            let shape = "[" + r.shape.map(String.init).joined(separator: ", ") + "]"
            out.append(r.name.padding(toLength: w, withPad: " ", startingAt: 0) + "  " + r.dtype.rawValue.padding(toLength: 4, withPad: " ", startingAt: 0)
                       + "  " + shape.padding(toLength: 22, withPad: " ", startingAt: 0) + "  " + r.sha256
                       + (r.constantNode.map { "  (Constant node '\($0)')" } ?? ""))
        }
        return out.joined(separator: "\n")
    }
}

extension Verification {
    func text() -> String {
        var out = ["reference: \(reference) (\(images) images x \(texts) texts, PyTorch weights \(weightsDType))"]
        out += notes.map { "  " + $0 }
        out.append("  " + "output".padding(toLength: 18, withPad: " ", startingAt: 0)
                   + "values   max abs error   abs tolerance   result   max rel error (not checked)")
        for r in rows {
            out.append("  " + r.name.padding(toLength: 18, withPad: " ", startingAt: 0)
                       + String(format: "%6d   %13.3e   %13.1e   %-6@   %11.3e", r.count, r.maxAbs, r.tolerance, r.passed ? "ok" : "FAIL", r.maxRel))
        }
        out.append(passed ? "PASS: every output is within its tolerance of PyTorch's" : "FAIL: some output differs from PyTorch's beyond its tolerance")
        return out.joined(separator: "\n")
    }
}

func plural(_ n: Int, _ word: String) -> String { "\(n) \(word)\(n == 1 ? "" : "s")" }
