import Foundation

/// The seed's `ProjectionHead`: `x = proj(x); return x + ln(dropout(gelu(x)))` (eval: no dropout).
struct ProjectionHead {
    let proj: Linear              // proj: (D, in)
    let ln: LayerNormParams       // ln: (D), eps 1e-5 (nn.LayerNorm default)

    init(_ s: WeightScope, input: Int, dim: Int) throws {
        proj = try Linear(s.child("proj"), in: input, out: dim)
        ln = try LayerNormParams(s.child("ln"), dim)
    }

    /// `(rows, in)` -> `(rows, D)`.
    func forward(_ x: [Float], rows: Int) -> [Float] {
        let d = proj.weight.shape[0]
        var y = [Float](repeating: 0, count: rows * d)
        var a = y
        x.withUnsafeBufferPointer { X in y.withUnsafeMutableBufferPointer { Y in a.withUnsafeMutableBufferPointer { A in
            Kernels.linear(X.baseAddress!, rows: rows, weight: proj.weight, bias: proj.bias, into: Y.baseAddress!)
            A.baseAddress!.update(from: Y.baseAddress!, count: rows * d)
            Kernels.gelu(A.baseAddress!, count: rows * d)
            Kernels.layerNormRows(A.baseAddress!, rows: rows, n: d, weight: ln.weight, bias: ln.bias, eps: 1e-5, into: A.baseAddress!)
            for i in 0..<(rows * d) { Y[i] += A[i] }
        } } }
        return y
    }
}

/// liteCLIP (the seed's `CLIP`), loaded strictly from a `.lcw`.
///
/// ```
/// image_embeds = normalize(img_projection(image_encoder(pixels)))
/// text_embeds  = normalize(txt_projection(text_encoder(tokens)))
/// logits_per_image = exp(logit_scale) * image_embeds @ text_embeds^T
/// ```
public final class LiteCLIPModel: @unchecked Sendable {
    public let config: LiteCLIPConfig
    public let tokenizer: BertTokenizer
    public let preprocess: PreprocessConfig
    let logitScale: Tensor                // logit_scale: ()
    let imageEncoder: ConvNeXt            // image_encoder.backbone
    let textEncoder: Bert                 // text_encoder.backbone
    let imgProjection: ProjectionHead     // img_projection
    let txtProjection: ProjectionHead     // txt_projection
    /// The weights the modules hold, by checkpoint name (BERT's unused pooler is not loaded).
    let parameters: [(name: String, tensor: Tensor)]
    /// Whether the weights are owned, writable copies (training) rather than views of the file.
    public let trainable: Bool

    public convenience init(path: String, trainable: Bool = false) throws {
        try self.init(try LiteCLIPFile.open(path), trainable: trainable)
    }

    public init(_ file: LiteCLIPFile, trainable: Bool = false) throws {
        let m = file.metadata
        config = m.model
        preprocess = m.preprocess
        tokenizer = BertTokenizer(spec: m.tokenizer)
        self.trainable = trainable
        let store = WeightStore(file.tensors, file: file.lcw.checkpoint.file, copies: trainable)
        let root = WeightScope(store: store, prefix: "")
        logitScale = try root.tensor("logit_scale", [])
        imageEncoder = try ConvNeXt(root.child("image_encoder").child("backbone"), config.image)
        textEncoder = try Bert(root.child("text_encoder").child("backbone"), config.text)
        imgProjection = try ProjectionHead(root.child("img_projection"), input: config.image.outputDim, dim: config.projectionDim)
        txtProjection = try ProjectionHead(root.child("txt_projection"), input: config.text.hiddenSize, dim: config.projectionDim)
        try store.finish()
        parameters = store.loaded
    }

    public var logitScaleExp: Float { expf(logitScale.scalar) }

    // MARK: - Towers

    /// ConvNeXt pooled features `(B, C3)` for pixel values `(B, 3, S, S)`.
    public func imageFeatures(pixels: [Float], batch: Int) -> [Float] {
        let size = Int((Double(pixels.count / max(batch, 1) / config.image.inChannels)).squareRoot())
        return pixels.withUnsafeBufferPointer { imageEncoder.forward(pixels: $0.baseAddress!, batch: batch, size: size) }
    }

    /// Mean-pooled BERT features `(B, H)`.
    public func textFeatures(_ tokens: TokenBatch) -> [Float] {
        textEncoder.forward(ids: tokens.ids, mask: tokens.attentionMask, batch: tokens.batchSize, length: tokens.length)
    }

    /// L2-normalised image embeddings `(B, D)`.
    public func imageEmbeddings(pixels: [Float], batch: Int) -> [Float] {
        normalized(imgProjection.forward(imageFeatures(pixels: pixels, batch: batch), rows: batch), rows: batch)
    }

    /// L2-normalised text embeddings `(B, D)`.
    public func textEmbeddings(_ tokens: TokenBatch) -> [Float] {
        normalized(txtProjection.forward(textFeatures(tokens), rows: tokens.batchSize), rows: tokens.batchSize)
    }

    public func projectImageFeatures(_ f: [Float], rows: Int) -> [Float] { normalized(imgProjection.forward(f, rows: rows), rows: rows) }
    public func projectTextFeatures(_ f: [Float], rows: Int) -> [Float] { normalized(txtProjection.forward(f, rows: rows), rows: rows) }

    /// `exp(logit_scale) * image @ text^T`, `(Bi, Bt)`.
    public func logits(imageEmbeddings img: [Float], textEmbeddings txt: [Float]) -> [Float] {
        let d = config.projectionDim, bi = img.count / d, bt = txt.count / d
        var out = [Float](repeating: 0, count: bi * bt)
        Kernels.gemm(img, txt, &out, m: bi, n: bt, k: d, transB: true)
        let s = logitScaleExp
        for i in out.indices { out[i] *= s }
        return out
    }

    /// `x / ||x||` per row, as the seed (`x / x.norm(dim=1, keepdim=True)`).
    func normalized(_ x: [Float], rows: Int) -> [Float] {
        let d = x.count / max(rows, 1)
        var y = x
        for r in 0..<rows {
            var s: Float = 0
            for i in 0..<d { s += x[r * d + i] * x[r * d + i] }
            let inv = 1 / s.squareRoot()
            for i in 0..<d { y[r * d + i] *= inv }
        }
        return y
    }
}
