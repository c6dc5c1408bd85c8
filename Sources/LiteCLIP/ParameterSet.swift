/// The liteCLIP state-dict layout: every tensor name and shape for a given config, built by a
/// scoped walk that mirrors the seed's module tree (`image_encoder.backbone.stages.2.blocks.5.mlp.fc1`).
///
/// Legend: C_i = ConvNeXt stage width, H = BERT hidden, I = BERT intermediate,
/// V = vocabulary, P = max positions, T = token types, D = projection width.
public struct ParameterSpec: Equatable, Sendable {
    public let name: String
    public let shape: [Int]
    /// False for tensors the checkpoint may lack (BERT's pooler, unused by mean pooling).
    public let required: Bool
}

public enum LiteCLIPParameters {
    /// Tensors that a checkpoint may carry but the model never uses and conversion drops
    /// (and names): buffers older transformers saved.
    public static let ignorable: Set<String> = ["text_encoder.backbone.embeddings.position_ids"]

    /// All parameters in the seed's `state_dict()` order (260 for convnext_tiny + bert-mini).
    public static func expected(for c: LiteCLIPConfig) -> [ParameterSpec] {
        let root = Scope(prefix: "", list: SpecList())
        root.param("logit_scale", [])          // CLIP's own parameter comes before its children's
        convnext(root.child("image_encoder").child("backbone"), c.image)
        bert(root.child("text_encoder").child("backbone"), c.text)
        projection(root.child("img_projection"), input: c.image.outputDim, d: c.projectionDim)
        projection(root.child("txt_projection"), input: c.text.hiddenSize, d: c.projectionDim)
        return root.list.items
    }

    // MARK: - Module scopes

    /// timm ConvNeXt (head.fc replaced by Identity, so the head has only its norm).
    static func convnext(_ s: Scope, _ c: ConvNeXtConfig) {
        let stem = s.child("stem")
        stem.child("0").param("weight", [c.dims[0], c.inChannels, c.patchSize, c.patchSize])   // (C0, 3, 4, 4)
        stem.child("0").param("bias", [c.dims[0]])
        layerNorm(stem.child("1"), c.dims[0])                                                  // LayerNorm2d
        for (i, (dim, depth)) in zip(c.dims, c.depths).enumerated() {
            let stage = s.child("stages").child("\(i)")
            if i > 0 {
                let ds = stage.child("downsample")
                layerNorm(ds.child("0"), c.dims[i - 1])
                ds.child("1").param("weight", [dim, c.dims[i - 1], 2, 2])                      // (C_i, C_i-1, 2, 2)
                ds.child("1").param("bias", [dim])
            }
            for j in 0..<depth {
                let b = stage.child("blocks").child("\(j)")
                b.param("gamma", [dim])
                b.child("conv_dw").param("weight", [dim, 1, c.kernelSize, c.kernelSize])       // (C, 1, 7, 7)
                b.child("conv_dw").param("bias", [dim])
                layerNorm(b.child("norm"), dim)
                linear(b.child("mlp").child("fc1"), in: dim, out: c.mlpRatio * dim)
                linear(b.child("mlp").child("fc2"), in: c.mlpRatio * dim, out: dim)
            }
        }
        layerNorm(s.child("head").child("norm"), c.outputDim)
    }

    /// transformers BertModel (embeddings, encoder.layer.N, pooler).
    static func bert(_ s: Scope, _ c: BertConfig) {
        let h = c.hiddenSize
        let e = s.child("embeddings")
        e.child("word_embeddings").param("weight", [c.vocabSize, h])                           // (V, H)
        e.child("position_embeddings").param("weight", [c.maxPositionEmbeddings, h])           // (P, H)
        e.child("token_type_embeddings").param("weight", [c.typeVocabSize, h])                 // (T, H)
        layerNorm(e.child("LayerNorm"), h)
        for l in 0..<c.numHiddenLayers {
            let layer = s.child("encoder").child("layer").child("\(l)")
            let att = layer.child("attention")
            for proj in ["query", "key", "value"] { linear(att.child("self").child(proj), in: h, out: h) }
            linear(att.child("output").child("dense"), in: h, out: h)
            layerNorm(att.child("output").child("LayerNorm"), h)
            linear(layer.child("intermediate").child("dense"), in: h, out: c.intermediateSize)
            linear(layer.child("output").child("dense"), in: c.intermediateSize, out: h)
            layerNorm(layer.child("output").child("LayerNorm"), h)
        }
        linear(s.child("pooler").child("dense"), in: h, out: h, required: false)
    }

    /// The seed's ProjectionHead: `x = proj(x); return x + ln(drop(gelu(x)))`.
    static func projection(_ s: Scope, input: Int, d: Int) {
        linear(s.child("proj"), in: input, out: d)
        layerNorm(s.child("ln"), d)
    }

    static func linear(_ s: Scope, in i: Int, out o: Int, required: Bool = true) {
        s.param("weight", [o, i], required: required)      // (out, in), PyTorch's nn.Linear layout
        s.param("bias", [o], required: required)
    }

    static func layerNorm(_ s: Scope, _ n: Int) {
        s.param("weight", [n])
        s.param("bias", [n])
    }
}

final class SpecList { var items: [ParameterSpec] = [] }

/// A dotted-name scope: `child("stages").child("0")` is `stages.0.`.
struct Scope {
    let prefix: String
    let list: SpecList

    func child(_ name: String) -> Scope { Scope(prefix: prefix + name + ".", list: list) }

    func param(_ name: String, _ shape: [Int], required: Bool = true) {
        list.items.append(ParameterSpec(name: prefix + name, shape: shape, required: required))
    }
}
