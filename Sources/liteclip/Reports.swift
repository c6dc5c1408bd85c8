import Foundation
import LiteCLIP
import TensorIO

// The CLI's text reports: the library returns values, the CLI decides how they read.

extension Inspection {
    public func text() -> String {
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
        }
        if let g = onnx {
            out.append("onnx: ir_version \(g["ir_version"]!), producer \(g["producer"]!), \(g["nodes"]!) nodes")
            out.append("opsets: " + ((g["opsets"] as? [[String: Any]]) ?? []).map { "\(($0["domain"] as? String).flatMap { $0.isEmpty ? nil : $0 } ?? "ai.onnx") \($0["version"]!)" }.joined(separator: ", "))
            for key in ["inputs", "outputs"] {
                for v in (g[key] as? [[String: Any]]) ?? [] {
                    out.append("\(key.dropLast()): \(v["name"]!) \(v["elem_type"]!) [\(((v["dims"] as? [String]) ?? []).joined(separator: ", "))]")
                }
            }
            let ops = ((g["op_counts"] as? [String: Int]) ?? [:]).sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
            out.append("ops: " + ops.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        let params = rows.reduce(0) { $0 + $1.shape.reduce(1, *) }
        out.append("tensors: \(rows.count), parameters: \(params)")
        let w = rows.map(\.name.count).max() ?? 4
        for r in rows {
            let shape = "[" + r.shape.map(String.init).joined(separator: ", ") + "]"
            out.append(r.name.padding(toLength: w, withPad: " ", startingAt: 0) + "  " + r.dtype.rawValue.padding(toLength: 4, withPad: " ", startingAt: 0)
                       + "  " + shape.padding(toLength: 22, withPad: " ", startingAt: 0) + "  " + r.sha256)
        }
        return out.joined(separator: "\n")
    }
}

extension Verification {
    public func text() -> String {
        var out = ["reference: \(reference) (\(images) images x \(texts) texts, PyTorch weights \(weightsDType))"]
        out += notes.map { "  " + $0 }
        out.append("  " + "output".padding(toLength: 18, withPad: " ", startingAt: 0) + "values    max abs err   max rel err   tolerance   result")
        for r in rows {
            out.append("  " + r.name.padding(toLength: 18, withPad: " ", startingAt: 0)
                       + String(format: "%6d   %11.3e   %11.3e   %9.1e   %@", r.count, r.maxAbs, r.maxRel, r.tolerance, r.passed ? "ok" : "FAIL"))
        }
        out.append(passed ? "PASS: Swift matches PyTorch within tolerance" : "FAIL: Swift differs from PyTorch beyond tolerance")
        return out.joined(separator: "\n")
    }
}
