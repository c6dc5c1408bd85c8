import Foundation
import TensorIO

/// Training's own copy of a model: every weight an owned, writable f32 buffer that the
/// optimiser updates in place, and the same module tree (`CLIP`) as inference built over them
/// (without the fused inference path, whose derived weights would go stale). Not `Sendable`:
/// one training run owns it, and its scratch memory (the buffer pool) goes with it.
public final class TrainableModel {
    public let config: LiteCLIPConfig
    public let tokenizer: BertTokenizer
    public let preprocess: PreprocessConfig
    let network: CLIP
    /// Every weight the forward uses, by checkpoint name, in the modules' order: the modules'
    /// read-only view and the storage the optimiser writes.
    let parameters: [(name: String, tensor: Tensor, storage: Buffer)]
    /// A training step allocates the same sizes every step: recycle them (see `BufferPool`).
    let pool = BufferPool(maxCachedBytes: 4 << 30)

    /// Any model file `ModelSource.open` reads: a `.lcw`, a training checkpoint (its current
    /// weights), or a `.pt` / `.ckpt` / `.safetensors` / `.onnx` converted in memory with `options`.
    public convenience init(path: String, options: Converter.Options = .init()) throws {
        try self.init(ModelSource.open(path, options: options), file: path)
    }

    public convenience init(_ file: LiteCLIPFile) throws {
        try self.init(metadata: file.metadata, tensors: file.tensors, file: file.lcw.checkpoint.file)
    }

    /// Weights already opened with `ModelSource.open` (`file` names them in errors).
    public convenience init(_ loaded: ModelSource.Loaded, file: String) throws {
        try self.init(metadata: loaded.metadata, tensors: loaded.tensors, file: file)
    }

    /// The one place the trainable copy is built: every tensor the modules take is copied into
    /// an owned f32 buffer.
    init(metadata: LCWMetadata, tensors: [Checkpoint.Tensor], file: String) throws {
        config = metadata.model
        tokenizer = BertTokenizer(spec: metadata.tokenizer)
        preprocess = metadata.preprocess
        let source = ParameterSource(.copy(Dictionary(tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })), file: file)
        network = try CLIP(ParameterScope(source), config, fused: false)
        // BERT's optional pooler is never reached by the loss: like a parameter whose .grad stays
        // None in PyTorch, it gets no gradient and no optimiser update, and is written back as it was.
        let used = Set(source.specs.filter(\.required).map(\.name))
        parameters = zip(source.loaded, source.storage).filter { used.contains($0.0.name) }.map { ($0.0.name, $0.0.tensor, $0.1) }
    }

    /// What the step computed: loss and the logits (B x B).
    public struct StepResult { public let loss: Float; public let logits: [Float] }

    /// The trainer's knobs for one step.
    public struct StepOptions {
        /// Dropout for the projection heads and BERT (hidden and attention); 0 = evaluation mode.
        public var dropout: Float = 0.1
        public init(dropout: Float = 0.1) { self.dropout = dropout }
    }

    /// Gradients for this model's parameters; `trainable` says which are (e.g. not the frozen tower).
    public func makeGradients(trainable: (String) -> Bool = { _ in true }) -> Gradients {
        Gradients(parameters, trainable: trainable)
    }

    /// One forward and backward on a batch of matching (image, caption) pairs: the seed's loss,
    /// every trainable parameter's gradient ACCUMULATED into `grads`.
    public func trainStep(pixels: [Float], batch: Int, tokens: TokenBatch, grads: Gradients, options: StepOptions,
                          rng: inout SeededRNG) -> StepResult {
        let ws = Workspace(pool: pool, rng: rng)
        (ws.hiddenDropout, ws.attentionDropout) = (options.dropout, options.dropout)
        let r = network.trainStep(pixels: pixels, batch: batch, tokens: tokens, grads: grads, ws: ws)
        rng = ws.rng
        return StepResult(loss: r.loss, logits: r.logits)
    }

    /// The seed's loss in evaluation mode (no dropout, no gradients): validation.
    public func loss(pixels: [Float], batch: Int, tokens: TokenBatch) -> Float {
        let ws = Workspace(pool: pool)
        let (img, _) = network.project(network.imageFeatures(pixels: pixels, batch: batch, ws: ws), head: network.imgProjection, ws: ws)
        let (txt, _) = network.project(network.textFeatures(tokens, ws: ws), head: network.txtProjection, ws: ws)
        return Contrastive.loss(logits: network.logits(img, txt), batch: batch).loss
    }

    /// The current weights, by checkpoint name.
    public func weights() -> [String: [Float]] {
        Dictionary(uniqueKeysWithValues: parameters.map { ($0.name, $0.storage.array) })
    }
}
