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
        /// The dynamo exporter's default optimisation folds `position_embeddings(position_ids[:, :S])`
        /// into a (B, S, H) constant: rows 0..<S of the parameter, repeated over the batch.
        case foldedPositions = "folded position lookup, rows 0..<S"
        /// ... and `token_type_embeddings(zeros)` into a (B, S, H) constant: row 0, repeated.
        case foldedTokenType = "folded token-type lookup, row 0"
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
        /// What the file does not hold (only with `allowPartial`): e.g. rows of the position
        /// embeddings the exporter folded away. Empty for a complete parameter set.
        public let missing: [String]
        /// The sizes the rebuilt parameters have when `missing` is not empty.
        public let partialPositions: Int?
        public let partialTokenTypes: Int?
    }

    static let embeddingsScope = "text_encoder.backbone.embeddings"

    /// - Parameter allowPartial: rebuild what an optimised dynamo export kept of the position and
    ///   token-type embeddings (rows 0..<S and row 0: exact for inference on sequences up to S
    ///   with token type 0, as the seed runs) instead of refusing the file.
    public static func stateDict(from model: ONNXModel, allowPartial: Bool = false) throws -> Result {
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
        var folded: [Checkpoint.Tensor] = []
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
            if t.dtype.isFloatingPoint, t.shape.count == 3,
               consumers[t.name]?.contains(where: { $0.node.opType == "Add"
                   && moduleScope($0.node, prefix: prefix) == prefix + embeddingsScope }) == true {
                folded.append(t)
                continue
            }
            if !t.dtype.isFloatingPoint || t.elementCount <= 1 { constants.append(t.name) } else { unplaced.append("\(t.name) \(t.shape)") }
        }
        var extra: [Checkpoint.Tensor] = []
        var missing: [String] = []
        var positions: Int? = nil, tokenTypes: Int? = nil
        if !folded.isEmpty {
            if allowPartial && unplaced.isEmpty {
                let r = try unfoldEmbeddings(folded, missingPositions: byName[prefix + embeddingsScope + ".position_embeddings.weight"] == nil,
                                             missingTokenTypes: byName[prefix + embeddingsScope + ".token_type_embeddings.weight"] == nil,
                                             prefix: prefix, file: model.file)
                extra = r.tensors
                placements += r.placements
                missing = r.missing
                positions = r.positions
                tokenTypes = r.tokenTypes
            } else {
                unplaced += folded.map { "\($0.name) \($0.shape)" }
            }
        }
        guard unplaced.isEmpty else {
            var why = "initializers that cannot be placed onto liteCLIP parameters"
            if !folded.isEmpty {
                why += ". This looks like a torch.onnx.export(..., dynamo=True) file with its default optimisation: the"
                    + " position and/or token-type embedding lookups were folded into constants for one input shape, so"
                    + " rows of those parameters are not in the file at all. Re-export with optimize=False (every parameter keeps its"
                    + " name), export with dynamo=False, convert the .pt, or pass --allow-partial to rebuild a model"
                    + " that is exact for sequences up to the exported length"
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
        for p in placements where p.layout != .foldedPositions && p.layout != .foldedTokenType && done.insert(p.parameter).inserted {
            let t = byName[p.initializer]!
            tensors.append(convert(t, to: p.parameter, layout: p.layout))
        }
        tensors += extra
        let ckpt = Checkpoint(file: model.file, format: .onnx, wrapper: "ONNX graph (\(model.producerName) \(model.producerVersion))",
                              tensors: tensors, metadata: [:], source: nil)
        return Result(checkpoint: ckpt, placements: placements, constants: constants, missing: missing,
                      partialPositions: positions, partialTokenTypes: tokenTypes)
    }

    /// Rebuilds the embedding parameters the exporter folded into (B, S, H) lookup constants. The
    /// optimiser folds a lookup only below a size limit, so one or both may be folded (the
    /// small golden model: both; full size: only the token types). Which is which is told by
    /// what is absent by name and by content: the token-type lookup repeats row 0 at every
    /// position, the position lookup does not.
    static func unfoldEmbeddings(_ folded: [Checkpoint.Tensor], missingPositions: Bool, missingTokenTypes: Bool,
                                 prefix: String, file: String) throws
        -> (tensors: [Checkpoint.Tensor], placements: [Placement], missing: [String], positions: Int?, tokenTypes: Int?) {
        func fail(_ why: String) -> ModelError {
            var e = ModelError(.mapping, file: file, "cannot rebuild the folded embedding lookups: " + why)
            e.unexpected = folded.map { "\($0.name) \($0.shape)" }.sorted()
            return e
        }
        let needed = (missingPositions ? 1 : 0) + (missingTokenTypes ? 1 : 0)
        guard folded.count == needed else {
            throw fail("\(folded.count) folded (B, S, H) lookups in \(embeddingsScope) but \(needed) embedding parameters absent by name")
        }
        var rows: [(t: Checkpoint.Tensor, values: [Float], constantOverPositions: Bool)] = []
        for t in folded {
            let v = DTypeConversion.convert(try t.load(), from: t.dtype, to: .f32).withBytes { Array($0.bindMemory(to: Float.self)) }
            let (b, s, h) = (t.shape[0], t.shape[1], t.shape[2])
            guard b > 0, s > 1, h > 0, v.count == b * s * h else { throw fail("\(t.name) has shape \(t.shape) (a sequence length of at least 2 is needed)") }
            // Every batch entry must be the same lookup (the ids were constants).
            for i in 1..<b where Array(v[(i * s * h)..<((i + 1) * s * h)]) != Array(v[0..<(s * h)]) {
                throw fail("\(t.name) differs across the batch, so it is not a constant lookup")
            }
            let constant = (1..<s).allSatisfy { j in Array(v[(j * h)..<((j + 1) * h)]) == Array(v[0..<h]) }
            rows.append((t, Array(v[0..<(s * h)]), constant))
        }
        var pos: (t: Checkpoint.Tensor, values: [Float], constantOverPositions: Bool)? = nil
        var typ: (t: Checkpoint.Tensor, values: [Float], constantOverPositions: Bool)? = nil
        if needed == 2 {
            guard rows[0].t.shape[1...] == rows[1].t.shape[1...] else { throw fail("the two lookups disagree in sequence length or width") }
            guard let i = rows.firstIndex(where: { $0.constantOverPositions }), !rows[1 - i].constantOverPositions else {
                throw fail("exactly one lookup should repeat one row at every position (token type 0)")
            }
            (pos, typ) = (rows[1 - i], rows[i])
        } else if missingTokenTypes {
            guard rows[0].constantOverPositions else { throw fail("the token-type lookup should repeat one row at every position (token type 0)") }
            typ = rows[0]
        } else {
            pos = rows[0]
        }
        func tensor(_ name: String, _ shape: [Int], _ values: [Float], _ origin: String) -> Checkpoint.Tensor {
            Checkpoint.Tensor(name: name, dtype: .f32, shape: shape, origin: origin) {
                TensorBytes(owning: values.withUnsafeBytes { Array($0) })
            }
        }
        var out: (tensors: [Checkpoint.Tensor], placements: [Placement], missing: [String], positions: Int?, tokenTypes: Int?) = ([], [], [], nil, nil)
        if let pos {
            let name = prefix + embeddingsScope + ".position_embeddings.weight"
            let s = pos.t.shape[1], h = pos.t.shape[2]
            out.tensors.append(tensor(name, [s, h], pos.values, "initializer '\(pos.t.name)' (folded lookup) rows 0..<\(s)"))
            out.placements.append(Placement(initializer: pos.t.name, parameter: name, layout: .foldedPositions))
            out.missing.append("\(embeddingsScope).position_embeddings.weight: rows \(s) and up (the export folded the lookup for sequence length \(s); the .lcw keeps \(s) positions)")
            out.positions = s
        }
        if let typ {
            let name = prefix + embeddingsScope + ".token_type_embeddings.weight"
            let h = typ.t.shape[2]
            out.tensors.append(tensor(name, [1, h], Array(typ.values[0..<h]), "initializer '\(typ.t.name)' (folded lookup) row 0"))
            out.placements.append(Placement(initializer: typ.t.name, parameter: name, layout: .foldedTokenType))
            out.missing.append("\(embeddingsScope).token_type_embeddings.weight: rows 1 and up (the export folded token type 0; the .lcw keeps 1 type)")
            out.tokenTypes = 1
        }
        return out
    }

    static func isParameterName(_ name: String, prefix: String) -> Bool {
        guard name.hasPrefix(prefix) else { return false }
        let rest = name.dropFirst(prefix.count)
        return rest == "logit_scale" || rest.hasPrefix("image_encoder.") || rest.hasPrefix("text_encoder.")
            || rest.hasPrefix("img_projection.") || rest.hasPrefix("txt_projection.")
    }

    /// The dotted module path a node runs in, with the wrapper prefix.
    static func moduleScope(_ node: ONNXNode, prefix: String) -> String? {
        // dynamo: the recorded name scopes, outermost first, ending with the FX node's own name:
        // ['', 'm.image_encoder', ..., 'm.image_encoder....fc1', 'linear_3']; the module is the last
        // scope before the node's name.
        if let list = node.metadataProps["pkg.torch.onnx.name_scopes"] {
            let scopes = pythonStringList(list).filter { !$0.isEmpty }
            guard scopes.count >= 2 else { return nil }
            let s = scopes[scopes.count - 2]
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

    /// `"['', 'a.b', 'c']"` -> ["", "a.b", "c"] (the exporter's repr of a list of plain names).
    static func pythonStringList(_ s: String) -> [String] {
        let body = s.trimmingCharacters(in: .whitespaces)
        guard body.hasPrefix("["), body.hasSuffix("]") else { return [] }
        return body.dropFirst().dropLast().split(separator: ",", omittingEmptySubsequences: false).map {
            $0.trimmingCharacters(in: .whitespaces).trimmingCharacters(in: CharacterSet(charactersIn: "'\""))
        }
    }

    static func convert(_ t: Checkpoint.Tensor, to name: String, layout: Layout) -> Checkpoint.Tensor {
        switch layout {
        case .foldedPositions, .foldedTokenType:
            preconditionFailure("folded lookups are rebuilt by unfoldEmbeddings")
        case .asIs:
            return Checkpoint.Tensor(name: name, dtype: t.dtype, shape: t.shape, origin: "initializer '\(t.name)'") { try t.load() }
        case .flattened:
            return Checkpoint.Tensor(name: name, dtype: t.dtype, shape: [t.shape[1]], origin: "initializer '\(t.name)' (1, C, 1, 1) -> (C)") { try t.load() }
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
