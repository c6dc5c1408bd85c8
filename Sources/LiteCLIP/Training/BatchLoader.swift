import Foundation

/// Training batches built ahead of the math: JPEG/PNG decoding, resize, crop and normalisation
/// run on worker threads while the model works on the previous batch.
///
/// Legend: B = samples in the batch, S = `preprocess.centerCrop`, L = the tokenizer's max length.
///
/// Work is handed out one image at a time, in sample order, to `workers` threads, never more
/// than `prefetch` batches ahead of the batch the consumer waits for; the worker that finishes
/// the last image of a batch assembles it (pixels in sample order, tokens). What a batch holds
/// depends only on the samples and on which images decode, never on thread timing.

/// One batch of `BatchLoader`.
public struct TrainingBatch: @unchecked Sendable {
    /// (B, 3, S, S) NCHW: `ImagePreprocessor(preprocess).pixelValues(image)` of each sample, in order.
    public let pixels: [Float]
    /// (B, L): `tokenizer.encodeBatch(samples.map(\.caption))`.
    public let tokens: TokenBatch
    /// The samples whose images decoded, in order (the batch's rows).
    public let samples: [CaptionSample]
    /// Samples of this batch dropped because their image failed to decode: `path: error`.
    public let skipped: [String]
    /// B. It is 0 when no image of the batch decoded (the batch is then only its `skipped`).
    public var count: Int { samples.count }

    public init(pixels: [Float], tokens: TokenBatch, samples: [CaptionSample], skipped: [String] = []) {
        self.pixels = pixels
        self.tokens = tokens
        self.samples = samples
        self.skipped = skipped
    }
}

public final class BatchLoader: @unchecked Sendable {
    /// Number of batches `next()` returns: ceil(samples / batchSize).
    public let batchCount: Int
    public let batchSize: Int
    private let shared: Shared

    /// Batches of `batchSize` consecutive samples of `samples` (the caller shuffles), the last
    /// one possibly smaller; a sample whose image fails to decode is dropped from its batch and
    /// reported in the batch's `skipped`. Workers start at once.
    /// - Parameters:
    ///   - preprocess: must pass `ImagePreprocessor.validate`.
    ///   - workers: decoding threads (at least 1).
    ///   - prefetch: how many batches, counting the one `next()` waits for, may be in the works
    ///     at a time (at least 1); memory is about `(prefetch + 1) * batchSize * 3 * S * S` floats.
    /// - Precondition: `batchSize > 0`.
    public init(samples: [CaptionSample], batchSize: Int, preprocess: PreprocessConfig, tokenizer: BertTokenizer,
                workers: Int = 2, prefetch: Int = 2) {
        precondition(batchSize > 0, "BatchLoader: batchSize must be positive, got \(batchSize)")
        self.batchSize = batchSize
        batchCount = (samples.count + batchSize - 1) / batchSize
        shared = Shared(samples: samples, batchSize: batchSize, batchCount: batchCount,
                        preprocessor: ImagePreprocessor(preprocess), tokenizer: tokenizer,
                        prefetch: max(1, prefetch))
        let threads = min(max(1, workers), samples.count)
        shared.running = threads
        for i in 0..<threads {
            let state = shared
            let t = Thread { state.work() }
            t.name = "liteclip-loader-\(i)"
            t.start()
        }
    }

    deinit { shared.cancel() }

    /// The next batch in order, or nil after the last one (or after `cancel()`). Blocks while
    /// the batch is still being decoded. Call from one thread.
    public func next() -> TrainingBatch? { shared.take() }

    /// Stops the workers: each finishes at most the image in its hands and exits; `next()`
    /// returns nil from now on. Returns at once.
    public func cancel() { shared.cancel() }

    /// For tests: samples handed to workers so far, batches returned, workers still running.
    var progress: (handedOut: Int, consumed: Int, running: Int) {
        shared.cond.lock()
        defer { shared.cond.unlock() }
        return (shared.nextSample, shared.consumed, shared.running)
    }

    /// The state the workers and the consumer share, guarded by `cond`'s lock. Workers hold
    /// this, not the loader, so dropping the loader cancels them.
    private final class Shared: @unchecked Sendable {
        let samples: [CaptionSample]
        let batchSize: Int
        let batchCount: Int
        let preprocessor: ImagePreprocessor
        let tokenizer: BertTokenizer
        let prefetch: Int

        enum Decoded {
            case pixels([Float])      // (3, S, S)
            case failed(String)
        }

        /// An assembling batch: one slot per sample, filled as workers finish.
        struct Pending {
            var slots: [Decoded?]
            var remaining: Int
        }

        let cond = NSCondition()
        // Guarded by `cond`:
        var nextSample = 0                       // next sample index to hand out
        var consumed = 0                         // batches returned by `take`
        var pending: [Int: Pending] = [:]        // batch index -> slots
        var ready: [Int: TrainingBatch] = [:]    // batch index -> assembled batch
        var cancelled = false
        var running = 0                          // worker threads not yet exited

        init(samples: [CaptionSample], batchSize: Int, batchCount: Int, preprocessor: ImagePreprocessor,
             tokenizer: BertTokenizer, prefetch: Int) {
            self.samples = samples
            self.batchSize = batchSize
            self.batchCount = batchCount
            self.preprocessor = preprocessor
            self.tokenizer = tokenizer
            self.prefetch = prefetch
        }

        func range(ofBatch b: Int) -> Range<Int> { (b * batchSize)..<min((b + 1) * batchSize, samples.count) }

        /// A worker: claim the next image, decode it outside the lock, store it; the worker that
        /// stores the last image of a batch assembles the batch.
        func work() {
            defer {
                cond.lock()
                running -= 1
                cond.broadcast()
                cond.unlock()
            }
            while let i = claim() {
                let decoded = decode(samples[i])
                guard let done = store(i, decoded) else { continue }
                let batch = assemble(done.batch, done.slots)
                cond.lock()
                if !cancelled { ready[done.batch] = batch }
                cond.broadcast()
                cond.unlock()
            }
        }

        /// The next sample index once it lies within `prefetch` batches of the one the consumer
        /// waits for; nil when there is none left or the loader is cancelled.
        func claim() -> Int? {
            cond.lock()
            defer { cond.unlock() }
            while !cancelled && nextSample < samples.count && nextSample / batchSize >= consumed + prefetch {
                cond.wait()
            }
            guard !cancelled, nextSample < samples.count else { return nil }
            nextSample += 1
            return nextSample - 1
        }

        /// Puts sample `i`'s result in its batch; returns the batch's slots when it was the last.
        func store(_ i: Int, _ decoded: Decoded) -> (batch: Int, slots: [Decoded?])? {
            let b = i / batchSize, r = range(ofBatch: b)
            cond.lock()
            defer { cond.unlock() }
            guard !cancelled else { return nil }
            var p = pending.removeValue(forKey: b) ?? Pending(slots: Array(repeating: nil, count: r.count), remaining: r.count)
            p.slots[i - r.lowerBound] = decoded
            p.remaining -= 1
            if p.remaining == 0 { return (b, p.slots) }
            pending[b] = p
            return nil
        }

        func decode(_ sample: CaptionSample) -> Decoded {
            do {
                let image = try ImageDecoder.decode(path: sample.image)
                return .pixels(preprocessor.pixelValues(image))
            } catch let e as ImageError {
                return .failed(e.file == sample.image ? e.description : "\(sample.image): \(e.detail)")
            } catch {
                return .failed("\(sample.image): \(error)")
            }
        }

        /// The batch from its decoded slots, in sample order, without the failures.
        func assemble(_ b: Int, _ slots: [Decoded?]) -> TrainingBatch {
            let r = range(ofBatch: b)
            let s = preprocessor.config.centerCrop, per = 3 * s * s
            var kept: [CaptionSample] = [], skipped: [String] = []
            var pixels: [Float] = []
            pixels.reserveCapacity(r.count * per)                  // (B, 3, S, S)
            for (k, slot) in slots.enumerated() {
                switch slot {
                case .pixels(let x)?:
                    kept.append(samples[r.lowerBound + k])
                    pixels += x
                case .failed(let why)?:
                    skipped.append(why)
                case nil:    // never: a batch is assembled once every slot is set
                    skipped.append("\(samples[r.lowerBound + k].image): not decoded")
                }
            }
            let tokens = tokenizer.encodeBatch(kept.map(\.caption))   // (B, L)
            return TrainingBatch(pixels: pixels, tokens: tokens, samples: kept, skipped: skipped)
        }

        /// The consumer: wait for batch `consumed`, hand it over, let the workers move on.
        func take() -> TrainingBatch? {
            cond.lock()
            defer { cond.unlock() }
            while !cancelled && consumed < batchCount && ready[consumed] == nil {
                cond.wait()
            }
            guard !cancelled, consumed < batchCount, let batch = ready.removeValue(forKey: consumed) else { return nil }
            consumed += 1
            cond.broadcast()
            return batch
        }

        func cancel() {
            cond.lock()
            cancelled = true
            pending.removeAll()
            ready.removeAll()
            cond.broadcast()
            cond.unlock()
        }
    }
}
