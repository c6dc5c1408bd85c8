import Foundation
import TensorIO

/// `liteclip train`: fine-tunes a liteCLIP on (image, caption) pairs with the seed's loss and
/// optimiser, on the same modules inference uses (formats/training.md).
///
/// The model may be any file `ModelSource.open` reads (`.lcw`, a training checkpoint, or a
/// `.pt` / `.ckpt` / `.safetensors` / `.onnx` converted in memory with the `convert` options).
/// Per epoch: a seeded shuffle of the training split (unless `shuffle` is off), batches decoded
/// ahead on worker threads, one Adam(W) step per batch, the validation loss, and an atomically
/// written checkpoint (`<out>.ckpt`: weights, optimiser moments, generator state, history) from
/// which `--resume` continues exactly. Early stopping after `patience` epochs without a better
/// validation loss, as the seed. The result `<out>` is a normal `.lcw` holding the weights with
/// the best validation loss (the last weights when there is no validation split).
///
/// A run can also end inside an epoch, and the checkpoint then holds the position in it (the
/// generator before the epoch's shuffle, the batches done, the epoch's running loss), so a
/// resume finishes that epoch exactly as an uninterrupted run would:
/// - `stop` (polled after every batch) returns true: the checkpoint is written, `.interrupted`
///   reported, `<out>` is NOT written, and the summary says `interrupted`.
/// - `maxSteps` (counting every optimiser step of the run, those before a resume included) is
///   reached: the weights are validated and `<out>` written as at an epoch's end, but that
///   validation is not part of the checkpoint's per-epoch history (no patience, no `best`).
///
/// `warnings` (reported first as `.warning`) name settings that defeat the loss on this data:
/// an empty validation split, or batches of a single pair (whose contrastive loss is always 0).
///
/// ```swift
/// let t = try Trainer(model: "liteclip2.pt", captions: "captions.txt", images: "Images", out: "tuned.lcw",
///                     options: options, convert: convertOptions)
/// let summary = try t.run(stop: { sigintReceived }) { event in print(event) }
/// if summary.interrupted { print("resume with --resume \(summary.checkpoint)") }
/// ```
public final class Trainer {
    public enum Freeze: String, Sendable, CaseIterable { case image, text }

    public struct Options: Sendable {
        public var epochs = 5
        public var batchSize = 64
        public var optimizer = AdamOptimizer.Settings(kind: .adam)
        public var valFraction = 0.2
        public var seed: UInt64 = 0
        public var shuffle = true
        public var dropout: Float = 0.1
        /// Stop once this many optimiser steps are done in all, steps before a resume included.
        public var maxSteps: Int? = nil
        public var freeze: Freeze? = nil
        public var patience = 2
        public var workers = 2
        public init() {}
    }

    public enum Event {
        /// Reported first, once per entry of `Trainer.warnings`.
        case warning(String)
        /// After each optimiser step. `step` is the batch of the epoch (1-based; a batch whose
        /// images all failed to decode takes a number but no step), `globalStep` counts every
        /// optimiser step of the run, those before a resume included.
        case step(epoch: Int, epochs: Int, step: Int, steps: Int, globalStep: Int, loss: Float, imagesPerSecond: Double, eta: Double)
        /// `epoch` is 1-based; a validation inside an epoch (at `maxSteps`) names the epoch in progress.
        case validation(epoch: Int, loss: Float, best: Bool)
        /// After every checkpoint write.
        case checkpoint(path: String)
        case skipped([String])
        case earlyStop(epoch: Int)
        /// `stop` returned true: the checkpoint at `checkpoint` holds epoch `epoch` (1-based, the
        /// one in progress) after `step` of its batches (0: the epoch has not begun); `<out>` is
        /// not written. `--resume checkpoint` continues with batch `step + 1`.
        case interrupted(epoch: Int, step: Int, checkpoint: String)
    }

    public struct Summary {
        /// Epochs begun in the whole run (before a resume too), the one a `maxSteps` stop ended
        /// inside included; an interrupted run counts only the completed ones.
        public var epochsRun: Int
        /// Optimiser steps in all (before a resume too).
        public var steps: Int
        /// Mean training loss per epoch (sample-weighted); after a `maxSteps` stop inside an
        /// epoch, the last entry is that epoch's mean so far.
        public var trainLosses: [Float]
        /// Validation loss per epoch; after a `maxSteps` stop inside an epoch, the last entry is
        /// the validation at that stop. Empty without a validation split.
        public var valLosses: [Float]
        /// Samples left out: rows of the captions file (this run's load) and images that failed
        /// to decode in training and validation batches (the whole run, before a resume too).
        public var skipped: Int
        /// `<out>` (not written when `interrupted`).
        public var output: String
        public var checkpoint: String
        /// True when `stop` ended the run: `<out>` was not written; resume from `checkpoint`.
        public var interrupted: Bool
    }

    /// Where the run stands inside an epoch it has begun but not finished: what a mid-epoch
    /// checkpoint saves so that a resume regenerates the epoch's order and goes on from the
    /// next batch.
    struct EpochProgress {
        /// The generator state at the start of the epoch, before its shuffle.
        var startState: [UInt64]
        /// Batches of the epoch consumed (the last `.step` event's `step`).
        var step = 0
        /// Sum over the epoch's trained rows of the batch loss (loss x rows) and the rows: the
        /// epoch's mean training loss is `lossSum / samples`.
        var lossSum: Double = 0
        var samples = 0
    }

    let modelPath: String
    let out: String
    let options: Options
    let file: ModelSource.Loaded
    public let model: TrainableModel
    let grads: Gradients
    let optimizer: AdamOptimizer
    let dataset: CaptionDataset
    let train: [CaptionSample]
    let val: [CaptionSample]
    /// What looks wrong with these settings on this data (also reported as `.warning` events
    /// when the run starts): an empty validation split, or batches of a single pair.
    public let warnings: [String]
    var rng: SeededRNG
    // Progress, saved in checkpoints.
    var epoch = 0                      // epochs completed
    var globalStep = 0
    var progress: EpochProgress? = nil // the epoch in progress, once begun
    var best: Float? = nil
    var bestWeights: [String: [Float]]? = nil
    var sinceBest = 0
    var trainLosses: [Float] = []
    var valLosses: [Float] = []
    var decodeSkipped = 0              // images that failed to decode in training and validation batches

    public var checkpointPath: String { out + ".ckpt" }
    /// Batches per epoch: ceil(training samples / batch size).
    public var stepsPerEpoch: Int { (train.count + options.batchSize - 1) / options.batchSize }

    /// - Parameters:
    ///   - path: the model to start from: any file `ModelSource.open` reads.
    ///   - resume: a training checkpoint (`<out>.ckpt`) to continue; its weights replace `path`'s.
    ///   - convert: how to convert `path` when it is not a `.lcw` (tokenizer files, BERT config).
    public init(model path: String, captions: String, images: String, out: String, options: Options, resume: String? = nil,
                convert: Converter.Options = .init()) throws {
        guard options.batchSize > 0, options.epochs > 0 else { throw ModelError(.badConfig, file: "options", "--batch-size and --epochs must be positive") }
        try CaptionDataset.validate(valFraction: options.valFraction)
        modelPath = path
        self.out = out
        self.options = options
        file = try ModelSource.open(path, options: convert)
        if let partial = file.metadata.source.partial {
            throw ModelError(.badConfig, file: path, "this model was rebuilt from a partial ONNX export (\(partial.joined(separator: "; "))); "
                             + "training it would not give weights PyTorch can load. Convert the .pt or a complete export instead")
        }
        model = try TrainableModel(file, file: path)
        let freeze = options.freeze
        grads = model.makeGradients { name in
            switch freeze {
            case .image?: return !name.hasPrefix("image_encoder.")
            case .text?: return !name.hasPrefix("text_encoder.")
            case nil: return true
            }
        }
        optimizer = AdamOptimizer(settings: options.optimizer, gradients: grads)
        dataset = try CaptionDataset.load(captions: captions, images: images)
        (train, val) = dataset.split(valFraction: options.valFraction, seed: options.seed)
        guard !train.isEmpty else { throw ModelError(.badConfig, file: captions, "no training samples after the validation split") }
        warnings = Self.warnings(train: train.count, val: val.count, images: dataset.imageCount, options: options)
        rng = SeededRNG(seed: options.seed)
        if let resume { try restore(resume) }
    }

    /// The model as opened (how it was read, and for a conversion in memory the files used).
    public var source: ModelSource.Loaded { file }
    public var datasetSkipped: [String] { dataset.skipped }
    public var trainCount: Int { train.count }
    public var valCount: Int { val.count }
    public var trainableParameters: Int { grads.trainableCount }

    /// What looks wrong before anything runs. The contrastive loss of a batch of one pair is
    /// exactly 0 (a softmax over one logit) with a zero gradient: such a training step teaches
    /// nothing (Adam still moves the weights by its momentum and weight decay), and such a
    /// validation batch adds a loss of 0 to the mean.
    static func warnings(train: Int, val: Int, images: Int, options: Options) -> [String] {
        var out: [String] = []
        if val == 0 {
            let f = options.valFraction
            var w = "the validation split is empty (--val-fraction \(f) of \(images) image\(images == 1 ? "" : "s") holds out none): "
                + "no validation loss, no early stopping, and OUT holds the last weights"
            if images >= 2 {
                let least = (100.0 / Double(images)).rounded(.up) / 100    // holds out at least one image
                w += "; --val-fraction \(least) or more holds out an image"
            }
            out.append(w)
        }
        let b = options.batchSize
        let single = "a single pair, whose contrastive loss is 0 with no gradient"
        if b == 1 {
            out.append("--batch-size 1: every batch holds \(single): training teaches nothing and the validation loss is always 0; "
                       + "use --batch-size 2 or more")
            return out
        }
        // The nearest batch size that leaves no batch of one pair in either split (one larger than
        // both splits always does, unless a split holds a single pair).
        func fits(_ c: Int) -> Bool { c >= 2 && train % c != 1 && (val < 2 || val % c != 1) }
        let better = (1...(train + val)).lazy.flatMap { d in [b - d, b + d] }.first(where: fits) ?? b
        if train == 1 {
            out.append("the training split holds \(single) (it teaches nothing); add pairs or lower --val-fraction")
        } else if train % b == 1 {
            out.append("the last batch of each epoch holds \(single) (\(train) training pairs in batches of \(b)), "
                       + "so that step teaches nothing; use --batch-size \(better)")
        }
        if val == 1 {
            out.append("the validation split holds \(single): the validation loss is always 0, so OUT holds the weights after the "
                       + "first epoch and early stopping ends the run \(options.patience) epochs later; raise --val-fraction to hold out more pairs")
        } else if val > 1 && val % b == 1 {
            out.append("the last validation batch holds \(single) (\(val) validation pairs in batches of \(b)), "
                       + "which lowers the validation loss; use --batch-size \(better)")
        }
        return out
    }

    // MARK: - The loop

    /// Trains until `options.epochs` epochs are complete, `options.maxSteps` steps are done,
    /// early stopping, or `stop` returns true. `stop` is polled after every batch of an epoch
    /// but its last (all-skipped ones too), and after each epoch's end (validation, checkpoint)
    /// when the run goes on.
    /// - Returns: the run as far as it got; `interrupted` when `stop` ended it (`<out>` is then
    ///   not written; the checkpoint holds the position, see `Event.interrupted`).
    public func run(stop: @escaping () -> Bool = { false }, _ report: (Event) -> Void) throws -> Summary {
        for w in warnings { report(.warning(w)) }
        if !dataset.skipped.isEmpty { report(.skipped(dataset.skipped)) }
        let stepsPerEpoch = self.stepsPerEpoch
        var reachedMaxSteps: Bool { options.maxSteps.map { globalStep >= $0 } ?? false }
        var checkpointed = false
        func checkpoint() throws {
            try writeCheckpoint()
            checkpointed = true
            report(.checkpoint(path: checkpointPath))
        }
        func summary(interrupted: Bool, epochs: Int? = nil, train: [Float]? = nil, val: [Float]? = nil) -> Summary {
            Summary(epochsRun: epochs ?? epoch, steps: globalStep, trainLosses: train ?? trainLosses, valLosses: val ?? valLosses,
                    skipped: dataset.skipped.count + decodeSkipped, output: out, checkpoint: checkpointPath, interrupted: interrupted)
        }

        while epoch < options.epochs && !reachedMaxSteps {
            // The epoch's order from the generator as it was before its shuffle: a fresh epoch
            // takes it from `rng` (which then goes on after the shuffle), a resumed one from the
            // checkpoint (whose `rng` already holds the state after its last step).
            let fresh = progress == nil
            var p = progress ?? EpochProgress(startState: rng.state)
            var shuffler = SeededRNG(state: p.startState)
            let order = options.shuffle ? train.seededShuffled(&shuffler) : train
            if fresh { rng = shuffler }
            // Batch k of the epoch is order[k*B ..< (k+1)*B] whatever decodes, so the batches not
            // yet done are those of the samples after the first `p.step * B`.
            let loader = BatchLoader(samples: Array(order.dropFirst(p.step * options.batchSize)), batchSize: options.batchSize,
                                     preprocess: model.preprocess, tokenizer: model.tokenizer, workers: options.workers)
            defer { loader.cancel() }
            let first = p.step, start = Date()
            var seen = 0
            var stopped = false                  // `stop` returned true before the epoch's last batch
            while let batch = loader.next() {
                p.step += 1
                if !batch.skipped.isEmpty { decodeSkipped += batch.skipped.count; report(.skipped(batch.skipped)) }
                if batch.count > 0 {
                    grads.zero()
                    let r = model.trainStep(pixels: batch.pixels, batch: batch.count, tokens: batch.tokens, grads: grads,
                                            options: .init(dropout: options.dropout), rng: &rng)
                    optimizer.apply(grads)
                    globalStep += 1
                    p.lossSum += Double(r.loss) * Double(batch.count)
                    p.samples += batch.count
                    seen += batch.count
                    let elapsed = Date().timeIntervalSince(start)
                    report(.step(epoch: epoch + 1, epochs: options.epochs, step: p.step, steps: stepsPerEpoch, globalStep: globalStep,
                                 loss: r.loss, imagesPerSecond: Double(seen) / max(elapsed, 1e-9),
                                 eta: elapsed / Double(p.step - first) * Double(stepsPerEpoch - p.step)))
                }
                progress = p
                if p.step == stepsPerEpoch || reachedMaxSteps { break }
                if stop() { stopped = true; break }
            }
            loader.cancel()
            if stopped {
                try checkpoint()
                report(.interrupted(epoch: epoch + 1, step: p.step, checkpoint: checkpointPath))
                return summary(interrupted: true)
            }
            guard p.step == stepsPerEpoch else { break }    // `maxSteps` inside the epoch: finished below

            // The epoch's end.
            epoch += 1
            progress = nil
            trainLosses.append(p.samples > 0 ? Float(p.lossSum / Double(p.samples)) : .nan)
            var earlyStop = false
            if !val.isEmpty {
                let (loss, bad) = validationLoss()
                decodeSkipped += bad.count
                if !bad.isEmpty { report(.skipped(bad)) }
                valLosses.append(loss)
                let improved = best.map { loss < $0 } ?? true
                if improved { best = loss; bestWeights = currentWeights(); sinceBest = 0 } else { sinceBest += 1 }
                report(.validation(epoch: epoch, loss: loss, best: improved))
                if sinceBest >= options.patience { earlyStop = true; report(.earlyStop(epoch: epoch)) }
            }
            try checkpoint()
            if earlyStop { break }
            if epoch < options.epochs && !reachedMaxSteps && stop() {
                report(.interrupted(epoch: epoch + 1, step: 0, checkpoint: checkpointPath))
                return summary(interrupted: true)
            }
        }

        guard let p = progress else {
            if !checkpointed { try checkpoint() }       // nothing left to do: still leave `<out>.ckpt` beside `<out>`
            try writeModel(to: out, weights: bestWeights ?? currentWeights(), epochs: epoch, bestLoss: best)
            return summary(interrupted: false)
        }
        // Ended inside an epoch (at `maxSteps`): validate the weights as they are and let them
        // be `<out>` if they beat the best so far, but keep this validation out of the checkpoint's
        // history (no `val_losses` entry, `best`, `since_best` or decode skips), which must read
        // as if the epoch were still running, so that a resume continues exactly.
        var trainHistory = trainLosses, valHistory = valLosses
        trainHistory.append(p.samples > 0 ? Float(p.lossSum / Double(p.samples)) : .nan)
        var weights = bestWeights ?? currentWeights()
        var bestLoss = best
        var runSkipped = 0
        if !val.isEmpty {
            let (loss, bad) = validationLoss()
            runSkipped = bad.count
            if !bad.isEmpty { report(.skipped(bad)) }
            valHistory.append(loss)
            let improved = best.map { loss < $0 } ?? true
            if improved { weights = currentWeights(); bestLoss = loss }
            report(.validation(epoch: epoch + 1, loss: loss, best: improved))
        }
        try checkpoint()
        try writeModel(to: out, weights: weights, epochs: epoch + 1, bestLoss: bestLoss)
        var s = summary(interrupted: false, epochs: epoch + 1, train: trainHistory, val: valHistory)
        s.skipped += runSkipped
        return s
    }

    /// Mean loss over the validation split in evaluation mode, batch by batch as training.
    func validationLoss() -> (Float, [String]) {
        let loader = BatchLoader(samples: val, batchSize: options.batchSize, preprocess: model.preprocess, tokenizer: model.tokenizer,
                                 workers: options.workers)
        defer { loader.cancel() }
        var sum: Double = 0, n = 0
        var bad: [String] = []
        while let b = loader.next() {
            bad += b.skipped
            guard b.count > 0 else { continue }
            sum += Double(model.loss(pixels: b.pixels, batch: b.count, tokens: b.tokens)) * Double(b.count)
            n += b.count
        }
        return (n > 0 ? Float(sum / Double(n)) : .nan, bad)
    }

    func currentWeights() -> [String: [Float]] {
        model.weights()
    }

    // MARK: - Files

    static func floatTensor(_ name: String, _ shape: [Int], _ values: [Float]) -> Checkpoint.Tensor {
        Checkpoint.Tensor(name: name, dtype: .f32, shape: shape, origin: "training") {
            TensorBytes(owning: values.withUnsafeBytes { Array($0) })
        }
    }

    /// The model tensors in the source file's order: trained weights as f32, the rest (BERT's
    /// pooler, which the loss never reaches) as they were.
    func modelTensors(_ weights: [String: [Float]]) -> [Checkpoint.Tensor] {
        file.tensors.map { t in
            guard let w = weights[t.name] else { return t }
            return Self.floatTensor(t.name, t.shape, w)
        }
    }

    func writeModel(to path: String, weights: [String: [Float]], epochs: Int, bestLoss: Float?) throws {
        var meta = file.metadata
        meta.source.trainedFrom = TrainingInfo(model: (modelPath as NSString).lastPathComponent, steps: globalStep, epochs: epochs,
                                               optimizer: options.optimizer.kind.rawValue, lr: options.optimizer.lr,
                                               freeze: options.freeze?.rawValue, bestValidationLoss: bestLoss.flatMap(Self.finite))
        _ = try LCWWriter.write(to: path, tensors: modelTensors(weights), metadata: meta)
    }

    /// `<out>.ckpt`: an `.lcw` container (formats/training.md) with the current weights, the
    /// optimiser's moments (`optimizer.exp_avg.<name>`, `optimizer.exp_avg_sq.<name>`), the best
    /// weights so far (`best.<name>`), and the loop state in metadata (with `epoch_progress`
    /// when it is written inside an epoch).
    func writeCheckpoint() throws {
        var tensors = modelTensors(currentWeights())
        let (step, m, v) = optimizer.state()
        for (i, name) in grads.names.enumerated() {
            guard let mt = m[i], let vt = v[i] else { continue }
            tensors.append(Self.floatTensor("optimizer.exp_avg." + name, mt.shape, mt.array))
            tensors.append(Self.floatTensor("optimizer.exp_avg_sq." + name, vt.shape, vt.array))
        }
        if let bw = bestWeights {
            for p in model.parameters { tensors.append(Self.floatTensor("best." + p.name, p.tensor.shape, bw[p.name]!)) }
        }
        // Decimal strings where a JSON number could lose bits: 64-bit generator words, the loss sum.
        let epochProgress = progress.map { p in
            CheckpointMetadata.EpochProgress(rngAtStart: p.startState.map { String($0) }, step: p.step, stepsPerEpoch: stepsPerEpoch,
                                             lossSum: "\(p.lossSum)", samples: p.samples)
        }
        let state = CheckpointMetadata.State(
            epoch: epoch, globalStep: globalStep, optimizerStep: step,
            rng: rng.state.map { String($0) }, best: best.flatMap(Self.finite),
            sinceBest: sinceBest, trainLosses: trainLosses.map(Self.finite), valLosses: valLosses.map(Self.finite),
            skipped: decodeSkipped, epochProgress: epochProgress,
            settings: settingsJSON())
        let meta = CheckpointMetadata(model: file.metadata, training: state)
        _ = try LCWWriter.write(to: checkpointPath, tensors: tensors, metadata: meta)
    }

    /// What must agree for a resume to continue the same run (as strings, so they compare the
    /// same before and after a JSON round trip). `epochs`, `maxSteps`, `patience` and `workers`
    /// may differ.
    func settingsJSON() -> [String: String] {
        let o = options.optimizer
        return ["optimizer": o.kind.rawValue, "lr": "\(o.lr)", "beta1": "\(o.beta1)", "beta2": "\(o.beta2)", "eps": "\(o.eps)",
                "weight_decay": "\(o.weightDecay)", "clip_norm": o.clipNorm.map { "\($0)" } ?? "none", "batch_size": "\(options.batchSize)",
                "val_fraction": "\(options.valFraction)", "seed": "\(options.seed)", "shuffle": "\(options.shuffle)",
                "dropout": "\(options.dropout)", "freeze": options.freeze?.rawValue ?? "none"]
    }

    /// Decimal strings of a generator state; nil unless it is a valid one.
    static func generatorState(_ any: Any?) -> [UInt64]? {
        guard let words = any as? [String] else { return nil }
        let state = words.compactMap(UInt64.init)
        return state.count == words.count && SeededRNG.isValid(state: state) ? state : nil
    }

    func restore(_ path: String) throws {
        let f = try LCWReader.open(path)
        guard let meta = try? JSONSerialization.jsonObject(with: f.metadataJSON) as? [String: Any],
              meta["architecture"] as? String == TrainingCheckpoint.architecture,
              let st = meta["training"] as? [String: Any] else {
            throw ModelError(.badConfig, file: path, "not a liteclip training checkpoint (write one with liteclip train; it is <out>.ckpt)")
        }
        func bad(_ why: String) -> ModelError { ModelError(.badConfig, file: path, "cannot resume: " + why) }
        guard let saved = st["settings"] as? [String: String] else { throw bad("the checkpoint does not record its settings") }
        let now = settingsJSON()
        let differing = now.keys.sorted().filter { saved[$0] != now[$0] }
        if !differing.isEmpty {
            throw bad("the checkpoint was made with different settings: "
                      + differing.map { "\($0) \(saved[$0] ?? "unset") (now \(now[$0]!))" }.joined(separator: ", "))
        }
        // The position inside an epoch (absent or null: the checkpoint was written at an epoch's end).
        var epochProgress: EpochProgress? = nil
        if let ep = st["epoch_progress"], !(ep is NSNull) {
            guard let ep = ep as? [String: Any], let start = Self.generatorState(ep["rng_at_start"]), let step = ep["step"] as? Int,
                  let sumText = ep["loss_sum"] as? String, let sum = Double(sumText), let samples = ep["samples"] as? Int,
                  let savedSteps = ep["steps_per_epoch"] as? Int else {
                throw bad("the position inside the epoch (epoch_progress) is incomplete")
            }
            guard savedSteps == stepsPerEpoch, step > 0, step < stepsPerEpoch, samples >= 0 else {
                throw bad("the checkpoint stopped after batch \(step) of \(savedSteps) per epoch, but these captions give \(stepsPerEpoch) "
                          + "batches per epoch: resume with the captions file (and images) it was made with")
            }
            epochProgress = EpochProgress(startState: start, step: step, lossSum: sum, samples: samples)
        }
        let byName = Dictionary(f.checkpoint.tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        func values(_ name: String, _ shape: [Int]) throws -> [Float] {
            guard let t = byName[name], t.shape == shape, t.dtype == .f32 else { throw bad("tensor \(name) \(shape) missing or of another shape") }
            return try t.load().withBytes { Array($0.bindMemory(to: Float.self)) }
        }
        for p in model.parameters {
            let v = try values(p.name, p.tensor.shape)
            v.withUnsafeBufferPointer { p.storage.data.update(from: $0.baseAddress!, count: v.count) }
        }
        var m: [Buffer?] = [], vv: [Buffer?] = []
        for (i, name) in grads.names.enumerated() {
            guard let g = grads.buffers[i] else { m.append(nil); vv.append(nil); continue }
            let a = Buffer(zeros: g.shape), b = Buffer(zeros: g.shape)
            let av = try values("optimizer.exp_avg." + name, g.shape), bv = try values("optimizer.exp_avg_sq." + name, g.shape)
            av.withUnsafeBufferPointer { a.data.update(from: $0.baseAddress!, count: av.count) }
            bv.withUnsafeBufferPointer { b.data.update(from: $0.baseAddress!, count: bv.count) }
            m.append(a); vv.append(b)
        }
        guard let step = st["optimizer_step"] as? Int, let ep = st["epoch"] as? Int, let gs = st["global_step"] as? Int,
              let state = Self.generatorState(st["rng"]) else { throw bad("the training state in the metadata is incomplete") }
        optimizer.restore(step: step, m: m, v: vv)
        rng = SeededRNG(state: state)
        epoch = ep
        globalStep = gs
        progress = epochProgress
        best = (st["best"] as? Double).map(Float.init)
        sinceBest = st["since_best"] as? Int ?? 0
        // null (a non-finite loss when saved) reads back as NaN.
        trainLosses = (st["train_losses"] as? [Any] ?? []).map { ($0 as? Double).map(Float.init) ?? .nan }
        valLosses = (st["val_losses"] as? [Any] ?? []).map { ($0 as? Double).map(Float.init) ?? .nan }
        decodeSkipped = st["skipped"] as? Int ?? 0
        if best != nil {
            var bw: [String: [Float]] = [:]
            for p in model.parameters { bw[p.name] = try values("best." + p.name, p.tensor.shape) }
            bestWeights = bw
        }
    }

    /// Epochs the resumed checkpoint had completed (0 without `resume`).
    public var resumedEpoch: Int { epoch }

    /// A loss for JSON: nil when it is not finite.
    static func finite(_ x: Float) -> Double? { x.isFinite ? Double(x) : nil }
    /// Batches of the next epoch the resumed checkpoint had already done (0 at an epoch's end):
    /// the run continues with batch `resumedStep + 1` of epoch `resumedEpoch + 1`.
    public var resumedStep: Int { progress?.step ?? 0 }
}

/// The metadata of `OUT.ckpt` (formats/training.md), written through `JSONCoding`; `restore`
/// reads it back. `best` and `epoch_progress` are written as null when absent.
struct CheckpointMetadata: Encodable {
    var architecture = TrainingCheckpoint.architecture
    var model: LCWMetadata
    var training: State

    init(model: LCWMetadata, training: State) { (self.model, self.training) = (model, training) }

    struct State: Encodable {
        var epoch, globalStep, optimizerStep: Int
        var rng: [String]
        var best: Double?
        var sinceBest: Int
        /// nil for a non-finite loss (JSON has no NaN): a diverged run still saves.
        var trainLosses, valLosses: [Double?]
        var skipped: Int
        var epochProgress: EpochProgress?
        var settings: [String: String]

        enum CodingKeys: String, CodingKey {
            case epoch, rng, best, skipped, settings
            case globalStep = "global_step", optimizerStep = "optimizer_step", sinceBest = "since_best"
            case trainLosses = "train_losses", valLosses = "val_losses", epochProgress = "epoch_progress"
        }

        func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(epoch, forKey: .epoch); try c.encode(globalStep, forKey: .globalStep)
            try c.encode(optimizerStep, forKey: .optimizerStep); try c.encode(rng, forKey: .rng)
            try c.encode(best, forKey: .best)                     // null before a validation loss
            try c.encode(sinceBest, forKey: .sinceBest)
            try c.encode(trainLosses, forKey: .trainLosses); try c.encode(valLosses, forKey: .valLosses)
            try c.encode(skipped, forKey: .skipped)
            try c.encode(epochProgress, forKey: .epochProgress)   // null at an epoch's end
            try c.encode(settings, forKey: .settings)
        }
    }

    struct EpochProgress: Encodable {
        var rngAtStart: [String]
        var step, stepsPerEpoch: Int
        var lossSum: String
        var samples: Int

        enum CodingKeys: String, CodingKey {
            case step, samples
            case rngAtStart = "rng_at_start", stepsPerEpoch = "steps_per_epoch", lossSum = "loss_sum"
        }
    }
}

/// Recorded in a trained model's `metadata.source.trained`.
public struct TrainingInfo: Codable, Equatable, Sendable {
    public var model: String
    public var steps: Int
    public var epochs: Int
    public var optimizer: String
    public var lr: Double
    public var freeze: String?
    public var bestValidationLoss: Double?

    enum CodingKeys: String, CodingKey {
        case model, steps, epochs, optimizer, lr, freeze
        case bestValidationLoss = "best_validation_loss"
    }
}
