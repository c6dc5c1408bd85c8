import Foundation
import TensorIO

/// Turns the initializers of a PyTorch-exported ONNX graph back into the state dict the `.pt`
/// holds, reading the graph where names alone do not say which parameter a tensor is.
///
/// What the two exporters write (checked with torch 2.15; see formats/onnx.md):
/// - `dynamo=False` (TorchScript): most parameters keep their names (`m.image_encoder...`);
///   Linear weights used through MatMul are stored transposed as `onnx::MatMul_N`, layer-scale
///   `gamma` reshaped to (1, C, 1, 1) as `onnx::Mul_N`; the consuming node's name carries the
///   module scope (`/image_encoder/backbone/stages/stages.0/blocks/blocks.0/mlp/fc1/MatMul`,
///   without the wrapper's attribute); identical tensors may share one initializer.
/// - `dynamo=True`: names are kept where the parameter is used as is; folded constants get
///   generated names (`val_4`, `view_1`) and the consuming node's `pkg.torch.onnx.name_scopes`
///   metadata gives the module (`m.image_encoder.backbone.stages.0.blocks.0.mlp.fc1`).
/// BERT's pooler is dead code in both exports and is absent.
public enum ONNXParameters {
    /// The layout conversions between an exported initializer and its parameter, declared once.
    public enum Layout: String, Sendable {
        case asIs = "as is"
        /// Linear weight used through MatMul: stored (in, out), parameter (out, in).
        case transposed
        /// Layer scale multiplied into an NCHW tensor: stored (1, C, 1, 1), parameter (C).
        case flattened
        /// The dynamo exporter folds `logit_scale.exp()` into a constant named `exp`; the
        /// parameter is recovered as its logarithm, which is exact only up to float rounding
        /// (reported by the converter; `liteclip verify` judges the effect on the logits).
        case exponentiated = "log of the folded exp"
    }

    public struct Placement: Sendable {
        public let initializer: String
        public let parameter: String
        public let layout: Layout
    }

    public struct Result {
        /// State-dict-like tensors (names as the exporter's wrapper saw them, e.g. `m.` prefixed).
        public let checkpoint: Checkpoint
        public let placements: [Placement]
        /// Initializers recognised as non-parameters (shape constants, folded scalars).
        public let constants: [String]
    }

    public static func stateDict(from model: ONNXModel) throws -> Result {
        let inits = model.initializers
        let byName = Dictionary(inits.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var consumers: [String: [(node: ONNXNode, index: Int)]] = [:]
        for n in model.nodes {
            for (i, input) in n.inputs.enumerated() where byName[input] != nil { consumers[input, default: []].append((n, i)) }
        }
        // The wrapper prefix, from a parameter every export keeps by name (the stem conv).
        let stem = "image_encoder.backbone.stem.0.weight"
        guard let stemName = inits.first(where: { $0.name == stem || $0.name.hasSuffix("." + stem) })?.name else {
            throw ModelError(.notLiteCLIP, file: model.file,
                             "not a liteCLIP graph: no initializer named \(stem) (with any prefix); initializers: "
                             + inits.prefix(5).map(\.name).joined(separator: ", "))
        }
        let prefix = String(stemName.dropLast(stem.count))

        var placements: [Placement] = []
        var constants: [String] = []
        var unplaced: [String] = []
        for t in inits {
            if isParameterName(t.name, prefix: prefix) {
                placements.append(Placement(initializer: t.name, parameter: t.name, layout: .asIs))
                continue
            }
            var placed = false
            for (node, index) in consumers[t.name] ?? [] {
                guard let scope = moduleScope(node, prefix: prefix) else { continue }
                if node.opType == "MatMul", index == 1, t.shape.count == 2 {
                    placements.append(Placement(initializer: t.name, parameter: scope + ".weight", layout: .transposed))
                    placed = true
                } else if node.opType == "Mul", t.shape.count == 4, t.shape[0] == 1, t.shape[2] == 1, t.shape[3] == 1 {
                    placements.append(Placement(initializer: t.name, parameter: scope + ".gamma", layout: .flattened))
                    placed = true
                }
            }
            if placed { continue }
            if t.name == "exp", t.dtype.isFloatingPoint, t.elementCount == 1, byName[prefix + "logit_scale"] == nil,
               consumers[t.name]?.contains(where: { $0.node.opType == "Mul" }) == true {
                placements.append(Placement(initializer: t.name, parameter: prefix + "logit_scale", layout: .exponentiated))
                continue
            }
            if !t.dtype.isFloatingPoint || t.elementCount <= 1 { constants.append(t.name) } else { unplaced.append("\(t.name) \(t.shape)") }
        }
        guard unplaced.isEmpty else {
            var why = "initializers that cannot be placed onto liteCLIP parameters"
            if byName[prefix + "text_encoder.backbone.embeddings.position_embeddings.weight"] == nil {
                why += ". This looks like a torch.onnx.export(..., dynamo=True) file with its default optimisation: the"
                    + " position and token-type embedding lookups were folded for one sequence length, so rows of those"
                    + " parameters are not in the file at all. Re-export with optimize=False (every parameter keeps its"
                    + " name), export with dynamo=False, or convert the .pt"
            }
            var e = ModelError(.mapping, file: model.file, why)
            e.unexpected = unplaced
            throw e
        }
        // One parameter must come from one place (de-duplicated tensors may feed several).
        var seen: [String: String] = [:]
        for p in placements {
            if let other = seen[p.parameter], other != p.initializer {
                throw ModelError(.mapping, file: model.file, "parameter \(p.parameter) is given by both \(other) and \(p.initializer)")
            }
            seen[p.parameter] = p.initializer
        }
        var tensors: [Checkpoint.Tensor] = []
        var done = Set<String>()
        for p in placements where done.insert(p.parameter).inserted {
            let t = byName[p.initializer]!
            tensors.append(convert(t, to: p.parameter, layout: p.layout))
        }
        let ckpt = Checkpoint(file: model.file, format: .onnx, wrapper: "ONNX graph (\(model.producerName) \(model.producerVersion))",
                              tensors: tensors, metadata: [:], source: nil)
        return Result(checkpoint: ckpt, placements: placements, constants: constants)
    }

    static func isParameterName(_ name: String, prefix: String) -> Bool {
        guard name.hasPrefix(prefix) else { return false }
        let rest = name.dropFirst(prefix.count)
        return rest == "logit_scale" || rest.hasPrefix("image_encoder.") || rest.hasPrefix("text_encoder.")
            || rest.hasPrefix("img_projection.") || rest.hasPrefix("txt_projection.")
    }

    /// The dotted module path a node runs in, with the wrapper prefix.
    static func moduleScope(_ node: ONNXNode, prefix: String) -> String? {
        // dynamo: the innermost of the recorded name scopes, e.g. "m.image_encoder....fc1".
        if let scopes = node.metadataProps["pkg.torch.onnx.name_scopes"],
           let last = scopes.split(separator: "'").filter({ $0 != "[" && $0 != "]" && $0 != ", " && !$0.isEmpty }).last {
            let s = String(last)
            return s.hasPrefix(prefix) || prefix.isEmpty ? s : prefix + s
        }
        // TorchScript: "/image_encoder/backbone/stages/stages.0/blocks/blocks.0/mlp/fc1/MatMul".
        guard node.name.hasPrefix("/") else { return nil }
        var parts = node.name.split(separator: "/").map(String.init)
        parts.removeLast()   // the op's own name
        var path: [String] = []
        for p in parts {
            // "stages" followed by "stages.0": a container and its child; keep the child.
            if let dot = p.lastIndex(of: "."), path.last == String(p[..<dot]), Int(p[p.index(after: dot)...]) != nil {
                path.removeLast()
            }
            path.append(p)
        }
        guard !path.isEmpty else { return nil }
        let joined = path.joined(separator: ".")
        return joined.hasPrefix(prefix) ? joined : prefix + joined
    }

    static func convert(_ t: Checkpoint.Tensor, to name: String, layout: Layout) -> Checkpoint.Tensor {
        switch layout {
        case .asIs:
            return Checkpoint.Tensor(name: name, dtype: t.dtype, shape: t.shape, origin: "initializer '\(t.name)'", loader: t.load)
        case .flattened:
            return Checkpoint.Tensor(name: name, dtype: t.dtype, shape: [t.shape[1]], origin: "initializer '\(t.name)' (1, C, 1, 1) -> (C)", loader: t.load)
        case .exponentiated:
            return Checkpoint.Tensor(name: name, dtype: .f32, shape: [], origin: "initializer '\(t.name)' = exp(logit_scale)") {
                let v = DTypeConversion.convert(try t.load(), from: t.dtype, to: .f32).withBytes { $0.loadUnaligned(as: Float.self) }
                return TensorBytes(owning: withUnsafeBytes(of: logf(v).bitPattern.littleEndian) { Array($0) })
            }
        case .transposed:
            let rows = t.shape[0], cols = t.shape[1], es = t.dtype.size
            return Checkpoint.Tensor(name: name, dtype: t.dtype, shape: [cols, rows], origin: "initializer '\(t.name)' transposed") {
                let src = try t.load()
                let out = OwnedBuffer(count: rows * cols * es)
                src.withBytes { s in
                    let d = out.mutable
                    for r in 0..<rows { for c in 0..<cols {
                        d.baseAddress!.advanced(by: (c * rows + r) * es).copyMemory(from: s.baseAddress!.advanced(by: (r * cols + c) * es), byteCount: es)
                    } }
                }
                return TensorBytes(owning: out)
            }
        }
    }
}
