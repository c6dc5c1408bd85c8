/// Hyper-parameters of liteCLIP, as value types with named presets. Encoded into every `.lcw`
/// (formats/lcw.md, "metadata.model"), so one file is enough to build and run the model.
///
/// Port of: the seed's `CLIP` (shreydan/liteCLIP model.py), timm `convnext_tiny`,
/// transformers `BertModel` with `BertConfig`.

/// timm ConvNeXt: stem conv 4x4/4 + LayerNorm2d, stages of blocks (dw 7x7, LN, MLP 4x, gamma).
public struct ConvNeXtConfig: Codable, Equatable, Sendable {
    public var dims: [Int]
    public var depths: [Int]
    public var inChannels = 3
    public var patchSize = 4
    public var kernelSize = 7
    public var mlpRatio = 4
    public var layerNormEps = 1e-6

    enum CodingKeys: String, CodingKey {
        case dims, depths
        case inChannels = "in_chans"
        case patchSize = "patch_size"
        case kernelSize = "kernel_size"
        case mlpRatio = "mlp_ratio"
        case layerNormEps = "layer_norm_eps"
    }

    public init(dims: [Int], depths: [Int]) {
        self.dims = dims
        self.depths = depths
    }

    /// `timm.create_model('convnext_tiny')`.
    public static let tiny = ConvNeXtConfig(dims: [96, 192, 384, 768], depths: [3, 3, 9, 3])

    /// Width of the pooled feature the head emits (the last stage's channels).
    public var outputDim: Int { dims.last ?? 0 }
}

/// Hugging Face `BertConfig`; coding keys are the Hugging Face names, so a `config.json`
/// decodes directly (unknown keys are ignored).
public struct BertConfig: Codable, Equatable, Sendable {
    public var hiddenSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var intermediateSize: Int
    public var vocabSize: Int
    public var maxPositionEmbeddings: Int
    public var typeVocabSize: Int
    public var layerNormEps: Double
    public var hiddenAct: String

    enum CodingKeys: String, CodingKey {
        case hiddenSize = "hidden_size"
        case numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads"
        case intermediateSize = "intermediate_size"
        case vocabSize = "vocab_size"
        case maxPositionEmbeddings = "max_position_embeddings"
        case typeVocabSize = "type_vocab_size"
        case layerNormEps = "layer_norm_eps"
        case hiddenAct = "hidden_act"
    }

    public init(hiddenSize: Int, numHiddenLayers: Int, numAttentionHeads: Int, intermediateSize: Int,
                vocabSize: Int = 30522, maxPositionEmbeddings: Int = 512, typeVocabSize: Int = 2,
                layerNormEps: Double = 1e-12, hiddenAct: String = "gelu") {
        self.hiddenSize = hiddenSize
        self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads
        self.intermediateSize = intermediateSize
        self.vocabSize = vocabSize
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.typeVocabSize = typeVocabSize
        self.layerNormEps = layerNormEps
        self.hiddenAct = hiddenAct
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        hiddenSize = try c.decode(Int.self, forKey: .hiddenSize)
        numHiddenLayers = try c.decode(Int.self, forKey: .numHiddenLayers)
        numAttentionHeads = try c.decode(Int.self, forKey: .numAttentionHeads)
        intermediateSize = try c.decode(Int.self, forKey: .intermediateSize)
        vocabSize = try c.decodeIfPresent(Int.self, forKey: .vocabSize) ?? 30522
        maxPositionEmbeddings = try c.decodeIfPresent(Int.self, forKey: .maxPositionEmbeddings) ?? 512
        typeVocabSize = try c.decodeIfPresent(Int.self, forKey: .typeVocabSize) ?? 2
        layerNormEps = try c.decodeIfPresent(Double.self, forKey: .layerNormEps) ?? 1e-12
        hiddenAct = try c.decodeIfPresent(String.self, forKey: .hiddenAct) ?? "gelu"
    }

    /// google/bert_uncased_L-4_H-256_A-4, liteCLIP's text encoder.
    public static let mini = BertConfig(hiddenSize: 256, numHiddenLayers: 4, numAttentionHeads: 4, intermediateSize: 1024)
}

/// The whole model: both towers and the shared projection width.
public struct LiteCLIPConfig: Codable, Equatable, Sendable {
    public var image: ConvNeXtConfig
    public var text: BertConfig
    public var projectionDim: Int
    /// Whether the weights carry BERT's `pooler.dense.*` (unused by mean pooling; kept so an
    /// export back to PyTorch loads with `strict=True`).
    public var hasPooler: Bool

    enum CodingKeys: String, CodingKey {
        case image, text
        case projectionDim = "projection_dim"
        case hasPooler = "has_pooler"
    }

    public init(image: ConvNeXtConfig, text: BertConfig, projectionDim: Int = 256, hasPooler: Bool = true) {
        self.image = image
        self.text = text
        self.projectionDim = projectionDim
        self.hasPooler = hasPooler
    }

    /// The seed's liteclip2.pt: convnext_tiny + bert-mini, 256-d projections.
    public static let seed = LiteCLIPConfig(image: .tiny, text: .mini)
}

/// The seed's image preprocessing (torchvision), stored in every `.lcw`.
public struct PreprocessConfig: Codable, Equatable, Sendable {
    public var resize = 224
    public var interpolation = "bicubic"
    public var centerCrop = 224
    public var mean: [Double] = [0.48145466, 0.4578275, 0.40821073]
    public var std: [Double] = [0.26862954, 0.26130258, 0.27577711]

    enum CodingKeys: String, CodingKey {
        case resize, interpolation, mean, std
        case centerCrop = "center_crop"
    }

    public init() {}
    public static let seed = PreprocessConfig()
}
