import TensorIO

/// A checkpoint's tensors placed onto the liteCLIP parameter set, strictly.
///
/// 1. The weights are found at any depth of the file by their anchor tensors (`logit_scale`,
///    the projections, the stems): the container holding the first anchor (a Lightning
///    `state_dict`, a `{"step", "model_state", "optimizer_state"}` dict, a list, ...) and the key
///    prefix inside it (`module.`, `model.`, `_orig_mod.`, any combination) are found once and
///    removed from every key that carries it. There are no per-key string rewrites and no list of
///    wrapper names. Tensors in other containers (optimizer state, EMA copies) are left alone
///    and counted in `elsewhere`.
/// 2. The config is read off the tensor shapes (and, for what shapes cannot tell, the BERT config).
/// 3. Every expected tensor must be present with its exact shape; anything else in the weights'
///    container is an error, except the known-unused buffers the modules declare, which are named
///    and dropped (`Strictness`).
public struct CheckpointMapping {
    public let config: LiteCLIPConfig
    /// Tensors in liteCLIP state-dict order, with canonical (prefix-free) names.
    public let tensors: [Checkpoint.Tensor]
    /// The prefix removed from the checkpoint's keys ("" when none).
    public let keyPrefix: String
    /// Where the weights were inside the file ("nested under key 'state_dict'"), nil at the top level.
    public let wrapper: String?
    /// Source names that were dropped as known-unused.
    public let ignored: [String]
    /// Tensors of the file outside the weights' container, by container: "'optimizer_states' (520 tensors)".
    public let elsewhere: [String]

    static let anchors = [
        "logit_scale", "img_projection.proj.weight", "txt_projection.proj.weight",
        "image_encoder.backbone.stem.0.weight", "text_encoder.backbone.embeddings.word_embeddings.weight",
    ]

    /// Where the liteCLIP weights are in a file.
    public struct Location: Equatable {
        /// The keys of the containers holding them (empty: the top-level object).
        public let container: [String]
        /// The key prefix inside that container.
        public let prefix: String
        /// Other places the anchors were also found (an EMA copy, a second model), not used.
        public var others: [String] = []
        public var wrapper: String? { container.isEmpty ? nil : "nested under key '\(container.joined(separator: "."))'" }
    }

    /// Finds the weights by their anchors; throws "not a liteCLIP checkpoint" when none is present.
    public static func locate(_ ckpt: Checkpoint) throws -> Location {
        for anchor in anchors {
            var found: [Location] = []
            var known = Set<[String]>()
            for t in ckpt.tensors {
                let k = t.key
                let p: String
                if k == anchor { p = "" } else if k.hasSuffix("." + anchor) { p = String(k.dropLast(anchor.count)) } else { continue }
                if known.insert(t.container + [p]).inserted { found.append(Location(container: t.container, prefix: p)) }
            }
            if var first = found.first {
                first.others = found.dropFirst().prefix(5).map { ($0.container + [$0.prefix + anchor]).joined(separator: ".") }
                if found.count > 6 { first.others.append("... and \(found.count - 6) more") }
                return first
            }
        }
        throw ModelError(.notLiteCLIP, file: ckpt.file,
                         "not a liteCLIP checkpoint: none of \(anchors.joined(separator: ", ")) is anywhere in it. First tensors: "
                         + (ckpt.tensors.isEmpty ? "none" : ckpt.tensors.prefix(5).map(\.name).joined(separator: ", ")))
    }

    /// - Parameters:
    ///   - textConfig: a BERT config (from `config.json`) that supplies the attention heads and
    ///     LayerNorm eps; its sizes must agree with the tensors. Without one, heads = hidden/64.
    ///   - allowUnexpected: drop (and name) unknown tensors instead of failing.
    public init(_ ckpt: Checkpoint, textConfig: BertConfig?, allowUnexpected: Bool = false) throws {
        let file = ckpt.file
        // 1. The weights' container and key prefix, from the first anchor found.
        let location = try Self.locate(ckpt)
        let prefix = location.prefix
        var byName: [String: Checkpoint.Tensor] = [:]
        var unexpected: [Checkpoint.Tensor] = []
        var elsewhereOrder: [String] = [], elsewhereCount: [String: Int] = [:]
        for t in ckpt.tensors {
            guard t.container == location.container else {
                let c = t.container.isEmpty ? "the top level" : "'" + t.container.joined(separator: ".") + "'"
                if elsewhereCount[c] == nil { elsewhereOrder.append(c) }
                elsewhereCount[c, default: 0] += 1
                continue
            }
            let k = t.key
            guard k.hasPrefix(prefix) else { unexpected.append(t); continue }
            byName[String(k.dropFirst(prefix.count))] = t
        }

        // 2. Config from shapes.
        let config = try Self.inferConfig(byName, textConfig: textConfig, file: file)

        // 3. Strict placement.
        let declared = LiteCLIPParameters.declared(config)
        let placed = try Strictness.place(byName, expected: declared.specs, ignorable: Set(declared.ignorable), file: file,
                                          context: "the checkpoint does not match liteCLIP (\(Self.describe(config)))",
                                          sourcePrefix: (location.container + [prefix]).joined(separator: "."),
                                          unexpected: unexpected, allowUnexpected: allowUnexpected)
        let hasPooler = !placed.groups.isEmpty
        var cfg = config
        cfg.hasPooler = hasPooler
        self.config = cfg
        self.tensors = placed.tensors
        self.keyPrefix = prefix
        self.wrapper = location.wrapper
        self.ignored = placed.ignored
        self.elsewhere = elsewhereOrder.map { c in "\(c) (\(elsewhereCount[c]!) tensor\(elsewhereCount[c]! == 1 ? "" : "s"))" }
            + location.others.map { "\($0) (another copy of the weights; not used)" }
    }

    static func describe(_ c: LiteCLIPConfig) -> String {
        "ConvNeXt dims \(c.image.dims) depths \(c.image.depths); BERT hidden \(c.text.hiddenSize), layers \(c.text.numHiddenLayers), "
            + "heads \(c.text.numAttentionHeads), intermediate \(c.text.intermediateSize), vocab \(c.text.vocabSize); projection \(c.projectionDim)"
    }

    /// Reads the architecture off tensor shapes. Missing anchors fall back to the seed's sizes so
    /// that the strict placement afterwards reports every missing tensor at once.
    static func inferConfig(_ t: [String: Checkpoint.Tensor], textConfig: BertConfig?, file: String) throws -> LiteCLIPConfig {
        func shape(_ n: String) -> [Int]? { t[n]?.shape }
        let cb = "image_encoder.backbone."
        var dims: [Int] = []
        var depths: [Int] = []
        var stage = 0
        while let s = shape("\(cb)stages.\(stage).blocks.0.conv_dw.weight"), s.count == 4 {
            dims.append(s[0])
            var d = 0
            while t["\(cb)stages.\(stage).blocks.\(d).conv_dw.weight"] != nil { d += 1 }
            depths.append(d)
            stage += 1
        }
        var image = ConvNeXtConfig.tiny
        if !dims.isEmpty { image = ConvNeXtConfig(dims: dims, depths: depths) }
        if let s = shape("\(cb)blocks.0.conv_dw.weight") ?? shape("\(cb)stages.0.blocks.0.conv_dw.weight"), s.count == 4 { image.kernelSize = s[2] }
        if let s = shape("\(cb)stem.0.weight"), s.count == 4 { image.inChannels = s[1]; image.patchSize = s[2] }
        if let s = shape("\(cb)stages.0.blocks.0.mlp.fc1.weight"), s.count == 2, let d0 = dims.first, d0 > 0, s[0] % d0 == 0 {
            image.mlpRatio = s[0] / d0
        }

        let tb = "text_encoder.backbone."
        var text = BertConfig.mini
        if let s = shape("\(tb)embeddings.word_embeddings.weight"), s.count == 2 { text.vocabSize = s[0]; text.hiddenSize = s[1] }
        if let s = shape("\(tb)embeddings.position_embeddings.weight"), s.count == 2 { text.maxPositionEmbeddings = s[0] }
        if let s = shape("\(tb)embeddings.token_type_embeddings.weight"), s.count == 2 { text.typeVocabSize = s[0] }
        var layers = 0
        while t["\(tb)encoder.layer.\(layers).attention.self.query.weight"] != nil { layers += 1 }
        if layers > 0 { text.numHiddenLayers = layers }
        if let s = shape("\(tb)encoder.layer.0.intermediate.dense.weight"), s.count == 2 { text.intermediateSize = s[0] }
        if let tc = textConfig {
            let pairs: [(String, Int, Int)] = [
                ("hidden_size", tc.hiddenSize, text.hiddenSize), ("num_hidden_layers", tc.numHiddenLayers, text.numHiddenLayers),
                ("intermediate_size", tc.intermediateSize, text.intermediateSize), ("vocab_size", tc.vocabSize, text.vocabSize),
                ("max_position_embeddings", tc.maxPositionEmbeddings, text.maxPositionEmbeddings),
            ]
            for (key, cfgValue, tensorValue) in pairs where cfgValue != tensorValue {
                throw ModelError(.badConfig, file: file, "the BERT config says \(key) = \(cfgValue) but the checkpoint's tensors have \(tensorValue)")
            }
            text.numAttentionHeads = tc.numAttentionHeads
            text.layerNormEps = tc.layerNormEps
            text.hiddenAct = tc.hiddenAct
        } else {
            text.numAttentionHeads = max(1, text.hiddenSize / 64)
        }
        guard text.numAttentionHeads > 0, text.hiddenSize % text.numAttentionHeads == 0 else {
            throw ModelError(.badConfig, file: file, "hidden size \(text.hiddenSize) is not divisible by \(text.numAttentionHeads) attention heads")
        }
        var proj = 256
        if let s = shape("img_projection.proj.weight"), s.count == 2 { proj = s[0] }
        return LiteCLIPConfig(image: image, text: text, projectionDim: proj)
    }
}
