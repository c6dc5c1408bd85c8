import Foundation
import TensorIO

/// A liteCLIP model ready for inference: the module tree (`CLIP`) loaded strictly from a
/// `.lcw` (or converted in memory from any checkpoint we read), its tokenizer and its image
/// preprocessing. Immutable and `Sendable`: one model may serve several tasks at once; each
/// call has its own activations (recycled through the model's buffer pool).
///
/// ```swift
/// let model = try LiteCLIPModel(contentsOf: URL(fileURLWithPath: "liteclip2.lcw"))
/// let images = try model.embed(images: [try RGBImage(contentsOf: URL(fileURLWithPath: "cat.jpg"))])
/// let ranked = try model.classify(photo, labels: ["a photo of a cat", "a photo of a dog"])
/// ```
public final class LiteCLIPModel: Sendable {
    public let config: LiteCLIPConfig
    public let tokenizer: BertTokenizer
    public let preprocess: PreprocessConfig
    /// The `.lcw` metadata (for a model converted in memory, what the `.lcw` would hold).
    public let metadata: LCWMetadata
    /// Where the weights came from (the path given).
    public let file: String
    let network: CLIP
    /// SHA-256 of the model's tensors (names, dtypes, shapes, bytes, in file order), computed on
    /// first use: what a photo index records to refuse vectors of another model.
    private let fingerprintValue: Lazy<String>
    public var fingerprint: String { fingerprintValue.value }   // the tensors all loaded once already, at open
    /// Activation buffers of this model's calls (at most 1 GiB of free ones kept).
    let pool = BufferPool(maxCachedBytes: 1 << 30)

    /// Opens a `.lcw`, a training checkpoint (`OUT.ckpt`: its current weights), or a `.pt` /
    /// `.ckpt` / `.safetensors` / `.onnx` checkpoint converted in memory (nothing is written) with
    /// the tokenizer files (`vocab.txt` or `tokenizer.json`, and `config.json`) beside it.
    public convenience init(contentsOf url: URL) throws {
        try self.init(path: url.path)
    }

    /// As `init(contentsOf:)`, with conversion options for checkpoints that are not `.lcw`.
    public convenience init(path: String, options: Converter.Options = .init()) throws {
        let loaded = try ModelSource.open(path, options: options)
        try self.init(metadata: loaded.metadata, tensors: loaded.tensors, file: path, lazy: loaded.isMapped)
    }

    /// A model from weights already opened with `ModelSource.open` (`file` names them in errors).
    public convenience init(_ loaded: ModelSource.Loaded, file: String) throws {
        try self.init(metadata: loaded.metadata, tensors: loaded.tensors, file: file, lazy: loaded.isMapped)
    }

    public convenience init(_ file: LiteCLIPFile) throws {
        try self.init(metadata: file.metadata, tensors: file.tensors, file: file.lcw.checkpoint.file, lazy: true)
    }

    /// - Parameters:
    ///   - fused: run the fused inference path (`false`: the plain path, for benchmarks).
    ///   - lazy: build each tower on first use (weights that are views of a mapped `.lcw`, whose
    ///     loading cannot fail); a checkpoint converted in memory is built here, so that a tensor
    ///     that fails to load (a corrupt compressed entry) is an error of the open.
    init(metadata: LCWMetadata, tensors: [Checkpoint.Tensor], file: String, fused: Bool = true, lazy: Bool = false) throws {
        self.metadata = metadata
        self.file = file
        config = metadata.model
        preprocess = metadata.preprocess
        tokenizer = BertTokenizer(spec: metadata.tokenizer)
        let source = ParameterSource(.view(Dictionary(tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })), file: file)
        network = try CLIP(ParameterScope(source), config, fused: fused, lazy: lazy)
        fingerprintValue = Lazy(lock: NSLock()) { try Self.fingerprint(of: tensors) }
    }

    /// SHA-256 over each tensor's `name \0 dtype \0 shape \0` and then its bytes, in order.
    static func fingerprint(of tensors: [Checkpoint.Tensor]) throws -> String {
        var h = SHA256()
        for t in tensors {
            h.update(Array((t.name + "\0" + t.dtype.rawValue + "\0" + t.shape.map(String.init).joined(separator: ",") + "\0").utf8))
            try t.load().withBytes { h.update($0) }
        }
        return h.finalize().map { String(format: "%02x", $0) }.joined()
    }

    func workspace() -> Workspace { Workspace(pool: pool) }

    // MARK: - Embeddings

    /// L2-normalised embeddings `(N, D)` of images, in order; decoded images are resized and
    /// cropped as the model's preprocessing says. Batches of 16 run one after another.
    public func embed(images: [RGBImage]) throws -> Embeddings {
        let pre = ImagePreprocessor(preprocess)
        var values: [Float] = []
        values.reserveCapacity(images.count * config.projectionDim)
        for start in stride(from: 0, to: images.count, by: 16) {
            let batch = images[start..<min(start + 16, images.count)]
            var pixels: [Float] = []
            for img in batch { pixels += pre.pixelValues(img) }
            values += imageEmbeddings(pixels: pixels, batch: batch.count)
        }
        return Embeddings(values: values, dimension: config.projectionDim)
    }

    /// L2-normalised embeddings `(N, D)` of texts, in order (tokenized as the model's tokenizer
    /// says, cut at its maximum length).
    public func embed(texts: [String]) throws -> Embeddings {
        var values: [Float] = []
        values.reserveCapacity(texts.count * config.projectionDim)
        for start in stride(from: 0, to: texts.count, by: 64) {
            values += textEmbeddings(tokenizer.encodeBatch(Array(texts[start..<min(start + 64, texts.count)])))
        }
        return Embeddings(values: values, dimension: config.projectionDim)
    }

    /// Zero-shot classification as the seed's `ZeroShotPipeline.predict`: softmax over the labels
    /// of `exp(logit_scale) * image . label`, most probable first. At least 2 labels, none empty.
    public func classify(_ image: RGBImage, labels: [String]) throws -> [ZeroShotResult] {
        try zeroShot(pixels: ImagePreprocessor(preprocess).pixelValues(image), image: "<memory>", labels: labels).ranking
    }

    // MARK: - Flat arrays (row-major, shapes in the comments)

    /// ConvNeXt pooled features `(B, C3)` for pixel values `(B, 3, S, S)`.
    public func imageFeatures(pixels: [Float], batch: Int) -> [Float] {
        network.imageFeatures(pixels: pixels, batch: batch, ws: workspace()).array
    }

    /// Mean-pooled BERT features `(B, H)`.
    public func textFeatures(_ tokens: TokenBatch) -> [Float] {
        network.textFeatures(tokens, ws: workspace()).array
    }

    /// L2-normalised image embeddings `(B, D)` for pixel values `(B, 3, S, S)`.
    public func imageEmbeddings(pixels: [Float], batch: Int) -> [Float] {
        let ws = workspace()
        return network.project(network.imageFeatures(pixels: pixels, batch: batch, ws: ws), head: network.imgProjection, ws: ws).0.array
    }

    /// L2-normalised text embeddings `(B, D)`.
    public func textEmbeddings(_ tokens: TokenBatch) -> [Float] {
        let ws = workspace()
        return network.project(network.textFeatures(tokens, ws: ws), head: network.txtProjection, ws: ws).0.array
    }

    /// Image features `(rows, C3)` -> L2-normalised embeddings `(rows, D)`.
    public func projectImageFeatures(_ f: [Float], rows: Int) -> [Float] {
        network.project(Buffer([rows, f.count / max(rows, 1)], f), head: network.imgProjection, ws: workspace()).0.array
    }

    /// Text features `(rows, H)` -> L2-normalised embeddings `(rows, D)`.
    public func projectTextFeatures(_ f: [Float], rows: Int) -> [Float] {
        network.project(Buffer([rows, f.count / max(rows, 1)], f), head: network.txtProjection, ws: workspace()).0.array
    }

    /// `exp(logit_scale) * image @ text^T`, `(Bi, Bt)`.
    public func logits(imageEmbeddings img: [Float], textEmbeddings txt: [Float]) -> [Float] {
        let d = config.projectionDim
        return network.logits(Buffer([img.count / d, d], img), Buffer([txt.count / d, d], txt))
    }

    public var logitScaleExp: Float { expf(network.logitScale.scalar) }

    /// True for an int8 model (`liteclip quantize`): its weights are int8 with per-row scales.
    public var isInt8: Bool { metadata.quantization != nil }
}

/// L2-normalised embeddings: `count` rows of `dimension` floats, in input order.
public struct Embeddings: RandomAccessCollection, Sendable, Equatable {
    /// Row-major `(count, dimension)`.
    public let values: [Float]
    public let dimension: Int

    public init(values: [Float], dimension: Int) {
        precondition(dimension > 0 && values.count % dimension == 0, "Embeddings: \(values.count) values are not rows of \(dimension)")
        self.values = values
        self.dimension = dimension
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { values.count / dimension }
    public subscript(i: Int) -> [Float] { Array(values[(i * dimension)..<((i + 1) * dimension)]) }

    /// `(count, other.count)` cosine similarities (dot products of unit vectors).
    public func cosineSimilarity(to other: Embeddings) -> [[Float]] {
        precondition(dimension == other.dimension, "cosineSimilarity: dimensions \(dimension) and \(other.dimension) differ")
        var out = [Float](repeating: 0, count: count * other.count)
        if count > 0 && other.count > 0 {
            Kernels.gemm(values, other.values, &out, m: count, n: other.count, k: dimension, transB: true)
        }
        return (0..<count).map { Array(out[($0 * other.count)..<(($0 + 1) * other.count)]) }
    }
}
