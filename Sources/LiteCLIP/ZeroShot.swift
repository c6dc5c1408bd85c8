import Foundation

/// The seed's `ZeroShotPipeline.predict`: one image against candidate labels, softmax over the
/// labels of `exp(logit_scale) * image_emb . text_emb`, sorted by probability.
public struct ZeroShotResult: Sendable {
    public struct Entry: Sendable {
        public let label: String
        public let logit: Float
        public let probability: Float
    }

    public let image: String
    /// In the order the labels were given.
    public let logits: [Float]
    public let probabilities: [Float]
    /// Sorted by probability, highest first, cut to top-k.
    public let ranking: [Entry]
}

extension LiteCLIPModel {
    /// Decodes and preprocesses one image file exactly as the seed does: `(3, S, S)` floats.
    public func pixelValues(imagePath: String) throws -> [Float] {
        ImagePreprocessor(preprocess).pixelValues(try ImageDecoder.decode(path: imagePath))
    }

    public func zeroShot(imagePath: String, labels: [String], topK: Int? = nil) throws -> ZeroShotResult {
        guard labels.count >= 2 else {
            throw ModelError(.badConfig, file: imagePath, "provide at least 2 labels (the seed asserts len(labels) >= 2)")
        }
        let img = imageEmbeddings(pixels: try pixelValues(imagePath: imagePath), batch: 1)
        let txt = textEmbeddings(tokenizer.encodeBatch(labels))
        let logits = self.logits(imageEmbeddings: img, textEmbeddings: txt)
        var probs = logits
        softmax(&probs, row: 0, n: labels.count)
        let k = min(topK ?? labels.count, labels.count)
        let order = labels.indices.sorted { probs[$0] != probs[$1] ? probs[$0] > probs[$1] : $0 < $1 }
        let ranking = order.prefix(k).map { ZeroShotResult.Entry(label: labels[$0], logit: logits[$0], probability: probs[$0]) }
        return ZeroShotResult(image: imagePath, logits: logits, probabilities: probs, ranking: Array(ranking))
    }
}
