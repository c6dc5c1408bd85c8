import Foundation

/// One label of a zero-shot prediction.
public struct ZeroShotResult: Sendable, Equatable {
    public let label: String
    /// Softmax over the labels.
    public let probability: Float
    /// `exp(logit_scale) * image . label`.
    public let logit: Float
}

/// The seed's `ZeroShotPipeline.predict`: one image against candidate labels, softmax over the
/// labels of `exp(logit_scale) * image_emb . text_emb`, sorted by probability.
public struct ZeroShotReport: Sendable {
    public let image: String
    /// In the order the labels were given.
    public let logits: [Float]
    public let probabilities: [Float]
    /// Sorted by probability, highest first (ties: in label order), cut to top-k.
    public let ranking: [ZeroShotResult]
}

extension LiteCLIPModel {
    /// Decodes and preprocesses one image file exactly as the seed does: `(3, S, S)` floats.
    public func pixelValues(imagePath: String) throws -> [Float] {
        ImagePreprocessor(preprocess).pixelValues(try ImageDecoder.decode(path: imagePath))
    }

    public func zeroShot(imagePath: String, labels: [String], topK: Int? = nil) throws -> ZeroShotReport {
        try Self.checkLabels(labels, file: imagePath)
        return try zeroShot(pixels: pixelValues(imagePath: imagePath), image: imagePath, labels: labels, topK: topK)
    }

    func zeroShot(pixels: [Float], image: String, labels: [String], topK: Int? = nil) throws -> ZeroShotReport {
        try Self.checkLabels(labels, file: image)
        let img = imageEmbeddings(pixels: pixels, batch: 1)
        let txt = textEmbeddings(tokenizer.encodeBatch(labels))
        let logits = self.logits(imageEmbeddings: img, textEmbeddings: txt)
        var probs = logits
        softmax(&probs, row: 0, n: labels.count)
        let k = min(topK ?? labels.count, labels.count)
        let order = labels.indices.sorted { probs[$0] != probs[$1] ? probs[$0] > probs[$1] : $0 < $1 }
        let ranking = order.prefix(k).map { ZeroShotResult(label: labels[$0], probability: probs[$0], logit: logits[$0]) }
        return ZeroShotReport(image: image, logits: logits, probabilities: probs, ranking: Array(ranking))
    }

    static func checkLabels(_ labels: [String], file: String) throws {
        guard labels.count >= 2 else {
            throw ModelError(.badConfig, file: file, "provide at least 2 labels (the seed asserts len(labels) >= 2)")
        }
        if let i = labels.firstIndex(where: { $0.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty }) {
            throw ModelError(.badConfig, file: file, "label \(i + 1) is empty")
        }
    }
}
