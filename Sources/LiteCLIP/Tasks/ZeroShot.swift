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
        return rank(image: image, logits: logits(imageEmbeddings: img, textEmbeddings: textEmbeddings(tokenizer.encodeBatch(labels))),
                    labels: labels, topK: topK)
    }

    /// Classifies many image files against the same labels in one batched run (the labels are
    /// embedded once). Files that do not decode are skipped and reported, unless `strict`.
    public func zeroShot(imageFiles: [String], labels: [String], topK: Int? = nil, batchSize: Int = 16, strict: Bool = false,
                         ahead: DecodeAhead? = nil, progress: ((Int, Int) -> Void)? = nil) throws -> ZeroShotBatch {
        try Self.checkLabels(labels, file: "labels")
        // The labels are embedded, and the image tower built and mapped, on another thread while
        // the first images decode.
        let labelEmbeddings = BackgroundValue { [self] _ in
            _ = network.imageEncoder
            return textEmbeddings(tokenizer.encodeBatch(labels))
        }
        defer { _ = labelEmbeddings.wait() }
        let run = try Embedder.images(imageFiles, model: self, batchSize: batchSize, strict: strict, ahead: ahead, progress: progress)
        let txt = labelEmbeddings.wait()
        let all = run.files.isEmpty ? [] : logits(imageEmbeddings: run.embeddings.values, textEmbeddings: txt)
        let n = labels.count
        let results = run.files.enumerated().map { i, f in rank(image: f, logits: Array(all[(i * n)..<((i + 1) * n)]), labels: labels, topK: topK) }
        return ZeroShotBatch(labels: labels, results: results, skipped: run.skipped)
    }

    /// Softmax over one image's label logits, most probable first (ties in label order), cut to top-k.
    func rank(image: String, logits: [Float], labels: [String], topK: Int?) -> ZeroShotReport {
        var probs = logits
        softmax(&probs, row: 0, n: labels.count)
        let k = min(topK ?? labels.count, labels.count)
        let order = labels.indices.sorted { probs[$0] != probs[$1] ? probs[$0] > probs[$1] : $0 < $1 }
        let ranking = order.prefix(k).map { ZeroShotResult(label: labels[$0], probability: probs[$0], logit: logits[$0]) }
        return ZeroShotReport(image: image, logits: logits, probabilities: probs, ranking: Array(ranking))
    }

    /// At least 2 labels, none empty, no two the same (the softmax would split one class in two).
    static func checkLabels(_ labels: [String], file: String) throws {
        guard labels.count >= 2 else {
            throw ModelError(.badConfig, file: file, "give at least 2 labels (zero-shot picks among them; got \(labels.count))")
        }
        if let i = labels.firstIndex(where: { $0.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty }) {
            throw ModelError(.badConfig, file: file, "label \(i + 1) is empty")
        }
        var seen: [String: Int] = [:]
        for (i, l) in labels.enumerated() {
            let key = l.trimmingCharacters(in: .whitespacesAndNewlines)
            if let j = seen[key] {
                throw ModelError(.badConfig, file: file, "labels \(j + 1) and \(i + 1) are the same ('\(key)')")
            }
            seen[key] = i
        }
    }

    /// A warning for each text longer than the tokenizer reads (it is cut to its first
    /// `maxLength - 2` word pieces, as the seed's tokenizer does).
    public func truncationWarnings(_ texts: [String], what: String = "label") -> [String] {
        let limit = tokenizer.spec.maxLength
        return texts.enumerated().compactMap { i, t in
            let n = tokenizer.tokenize(t).count + 2
            guard n > limit else { return nil }
            let shown = t.count > 60 ? String(t.prefix(57)) + "..." : t
            return "\(what) \(i + 1) ('\(shown)') is \(n) tokens; only the first \(limit) are read (the rest is cut)"
        }
    }
}

/// Zero-shot results for many images against the same labels.
public struct ZeroShotBatch: Sendable {
    public let labels: [String]
    /// One per image that decoded, in input order.
    public let results: [ZeroShotReport]
    public let skipped: [SkippedFile]
}
