import Dispatch
import Foundation
import Synchronization
import TensorIO

/// `liteclip embed` and `liteclip zero-shot` over many files: L2-normalised embeddings in input
/// order, batched; each batch of images is decoded and preprocessed (on both cores) while the
/// batch before it computes.
public enum Embedder {
    /// The result of embedding image files.
    public struct ImageRun: Sendable {
        /// The files that were embedded, in input order (one row each).
        public var files: [String]
        public var embeddings: Embeddings
        /// Files that could not be decoded, with the decoder's reason.
        public var skipped: [SkippedFile]
    }

    /// Embeds every file that decodes. A file that does not (corrupt, empty, not an image) is
    /// skipped and reported, or with `strict` its error is thrown and nothing is returned.
    /// `progress(done, total)` after each batch.
    /// `ahead`: files already being decoded (started before the model opened); their images are
    /// taken from it.
    public static func images(_ files: [String], model: LiteCLIPModel, batchSize: Int, strict: Bool = false,
                              ahead: DecodeAhead? = nil, progress: ((Int, Int) -> Void)? = nil) throws -> ImageRun {
        var values: [Float] = []
        values.reserveCapacity(files.count * model.config.projectionDim)
        var kept: [String] = [], skipped: [SkippedFile] = []
        var done = 0
        try forEachBatch(files, model: model, batchSize: batchSize, strict: strict, ahead: ahead) { b in
            kept += b.files
            values += b.values
            skipped += b.skipped
            done += b.files.count + b.skipped.count
            progress?(done, files.count)
        }
        return ImageRun(files: kept, embeddings: Embeddings(values: values, dimension: model.config.projectionDim), skipped: skipped)
    }

    /// One batch's result: the files embedded (rows of `values`, `(files.count, D)`) and those skipped.
    public struct ImageBatch: Sendable {
        public var files: [String]
        public var values: [Float]
        public var skipped: [SkippedFile]
    }

    /// As `images`, handing each batch to `body` as it is done (the photo index commits each
    /// one); the next batch decodes while `body` runs.
    public static func forEachBatch(_ files: [String], model: LiteCLIPModel, batchSize: Int, strict: Bool = false,
                                    ahead: DecodeAhead? = nil, _ body: (ImageBatch) throws -> Void) throws {
        let pre = ImagePreprocessor(model.preprocess)
        let s = model.preprocess.centerCrop, per = 3 * s * s
        let size = max(batchSize, 1)
        let batches = stride(from: 0, to: files.count, by: size).map { Array(files[$0..<min($0 + size, files.count)]) }

        // Pipelined: the next batch is decoded on another thread while this one computes.
        var next = batches.first.map { b in BackgroundValue { _ in decode(b, pre, per, ahead) } }
        defer { _ = next?.wait() }   // never leave a decode running past a thrown error
        for (index, batch) in batches.enumerated() {
            var kept: [String] = [], skipped: [SkippedFile] = []
            var (pixels, errors) = next!.wait()
            next = nil
            if strict, let e = errors.compactMap({ $0 }).first { throw e }
            if index + 1 < batches.count { let b = batches[index + 1]; next = BackgroundValue { _ in decode(b, pre, per) } }
            // Close the gaps the bad files left, then run the good ones.
            var good = 0
            for i in batch.indices {
                if let e = errors[i] {
                    skipped.append(SkippedFile(file: batch[i], reason: (e as? ImageError)?.detail ?? "\(e)"))
                    continue
                }
                if good != i {
                    pixels.withUnsafeMutableBufferPointer { p in
                        (p.baseAddress! + good * per).update(from: p.baseAddress! + i * per, count: per)
                    }
                }
                kept.append(batch[i])
                good += 1
            }
            errors.removeAll()
            let values = good > 0 ? model.imageEmbeddings(pixels: Array(pixels.prefix(good * per)), batch: good) : []
            try body(ImageBatch(files: kept, values: values, skipped: skipped))
        }
    }

    /// One batch decoded and preprocessed on both cores: pixels (`per` floats each), and each
    /// file's error.
    private static func decode(_ batch: [String], _ pre: ImagePreprocessor, _ per: Int,
                               _ ahead: DecodeAhead? = nil) -> (pixels: [Float], errors: [Error?]) {
        var pixels = [Float](repeating: 0, count: batch.count * per)
        var errors = [Error?](repeating: nil, count: batch.count)
        pixels.withUnsafeMutableBufferPointer { px in
            errors.withUnsafeMutableBufferPointer { errs in
                let pp = px.baseAddress!, ep = errs
                DispatchQueue.concurrentPerform(iterations: batch.count) { i in
                    do {
                        let image = try ahead?.take(batch[i])?.get() ?? ImageDecoder.decode(path: batch[i])
                        pre.normalize(pre.resizeAndCrop(image), into: pp + i * per)
                    }
                    catch { ep[i] = error }
                }
            }
        }
        return (pixels, errors)
    }

    /// Embeddings `(N, D)` row-major for `texts`, in order.
    public static func texts(_ texts: [String], model: LiteCLIPModel, batchSize: Int,
                             progress: ((Int, Int) -> Void)? = nil) -> [Float] {
        var out: [Float] = []
        var start = 0
        while start < texts.count {
            let batch = Array(texts[start..<min(start + max(batchSize, 1), texts.count)])
            out += model.textEmbeddings(model.tokenizer.encodeBatch(batch))
            start += batch.count
            progress?(start, texts.count)
        }
        return out
    }
}

/// The first image files of a run, decoded on another thread from the moment this is made: made
/// before the model opens (as the CLI does), their decoding overlaps the open. `Embedder` takes
/// each one's image from here instead of decoding it again. At most `limit` files (two: one
/// full-size photo per core, however large the batch) are decoded; each image is let go once
/// taken.
public final class DecodeAhead: Sendable {
    private final class Slot: @unchecked Sendable { var result: Result<RGBImage, Error>? }
    private let files: [String]
    private let slots: [Slot]          // written by the decoding thread before `decoded` is done
    private let decoded: BackgroundValue<Void>
    private let taken = Mutex<Set<Int>>([])

    public init(_ files: [String], limit: Int = 2) {
        let first = Array(files.prefix(limit)), slots = first.map { _ in Slot() }
        (self.files, self.slots) = (first, slots)
        decoded = BackgroundValue { _ in for (slot, f) in zip(slots, first) { slot.result = Result { try ImageDecoder.decode(path: f) } } }
    }

    /// The decoded image (or the decoder's error) of `path` if it is one of the files decoded
    /// ahead and not taken yet (waiting for it); nil otherwise.
    public func take(_ path: String) -> Result<RGBImage, Error>? {
        guard let i = files.firstIndex(of: path), taken.withLock({ $0.insert(i).inserted }) else { return nil }
        decoded.wait()
        defer { slots[i].result = nil }   // only this caller reads slot i
        return slots[i].result
    }
}
