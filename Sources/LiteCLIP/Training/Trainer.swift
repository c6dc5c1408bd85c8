import Foundation
import TensorIO

/// `liteclip train`: fine-tunes a converted liteCLIP on (image, caption) pairs with the seed's
/// loss and optimiser, on the same modules inference uses (formats/training.md).
///
/// Per epoch: a seeded shuffle of the training split (unless `shuffle` is off), batches decoded
/// ahead on worker threads, one Adam(W) step per batch, the validation loss, and an atomically
/// written checkpoint (`<out>.ckpt`: weights, optimiser moments, generator state, history) from
/// which `--resume` continues exactly. Early stopping after `patience` epochs without a better
/// validation loss, as the seed. The result `<out>` is a normal `.lcw` holding the weights with
/// the best validation loss (the last weights when there is no validation split).
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
        public var maxSteps: Int? = nil
        public var freeze: Freeze? = nil
        public var patience = 2
        public var workers = 2
        public init() {}
    }

    public enum Event {
        /// After each optimiser step.
        case step(epoch: Int, epochs: Int, step: Int, steps: Int, globalStep: Int, loss: Float, imagesPerSecond: Double, eta: Double)
        case validation(epoch: Int, loss: Float, best: Bool)
        case checkpoint(path: String)
        case skipped([String])
        case earlyStop(epoch: Int)
    }

    public struct Summary {
        public var epochsRun: Int
        public var steps: Int
        public var trainLosses: [Float]        // mean per epoch
        public var valLosses: [Float]
        public var skipped: Int
        public var output: String
        public var checkpoint: String
    }

    let modelPath: String
    let out: String
    let options: Options
    let file: LiteCLIPFile
    public let model: TrainableModel
    let grads: Gradients
    let optimizer: AdamOptimizer
    let dataset: CaptionDataset
    let train: [CaptionSample]
    let val: [CaptionSample]
    var rng: SeededRNG
    // Progress, saved in checkpoints.
    var epoch = 0                      // epochs completed
    var globalStep = 0
    var best: Float? = nil
    var bestWeights: [String: [Float]]? = nil
    var sinceBest = 0
    var trainLosses: [Float] = []
    var valLosses: [Float] = []

    public var checkpointPath: String { out + ".ckpt" }

    public init(model path: String, captions: String, images: String, out: String, options: Options, resume: String? = nil) throws {
        guard options.batchSize > 0, options.epochs > 0 else { throw ModelError(.badConfig, file: "options", "--batch-size and --epochs must be positive") }
        try CaptionDataset.validate(valFraction: options.valFraction)
        modelPath = path
        self.out = out
        self.options = options
        file = try LiteCLIPFile.open(path)
        if let partial = file.metadata.source.partial {
            throw ModelError(.badConfig, file: path, "this model was rebuilt from a partial ONNX export (\(partial.joined(separator: "; "))); "
                             + "training it would not give weights PyTorch can load. Convert the .pt or a complete export instead")
        }
        model = try TrainableModel(file)
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
        rng = SeededRNG(seed: options.seed)
        if let resume { try restore(resume) }
    }

    public var datasetSkipped: [String] { dataset.skipped }
    public var trainCount: Int { train.count }
    public var valCount: Int { val.count }
    public var trainableParameters: Int { grads.trainableCount }

    public func run(_ report: (Event) -> Void) throws -> Summary {
        if !dataset.skipped.isEmpty { report(.skipped(dataset.skipped)) }
        var skipped = dataset.skipped.count
        let stepsPerEpoch = (train.count + options.batchSize - 1) / options.batchSize
        var stopped = false
        while epoch < options.epochs && !stopped {
            let order = options.shuffle ? train.seededShuffled(&rng) : train
            let loader = BatchLoader(samples: order, batchSize: options.batchSize, preprocess: model.preprocess,
                                     tokenizer: model.tokenizer, workers: options.workers)
            defer { loader.cancel() }
            var sum: Double = 0, seen = 0, step = 0
            let start = Date()
            while let batch = loader.next() {
                step += 1
                if !batch.skipped.isEmpty { skipped += batch.skipped.count; report(.skipped(batch.skipped)) }
                guard batch.count > 0 else { continue }
                grads.zero()
                let r = model.trainStep(pixels: batch.pixels, batch: batch.count, tokens: batch.tokens, grads: grads,
                                        options: .init(dropout: options.dropout), rng: &rng)
                optimizer.apply(grads)
                globalStep += 1
                sum += Double(r.loss) * Double(batch.count)
                seen += batch.count
                let elapsed = Date().timeIntervalSince(start)
                let ips = Double(seen) / max(elapsed, 1e-9)
                report(.step(epoch: epoch + 1, epochs: options.epochs, step: step, steps: stepsPerEpoch, globalStep: globalStep,
                             loss: r.loss, imagesPerSecond: ips, eta: elapsed / Double(step) * Double(stepsPerEpoch - step)))
                if let m = options.maxSteps, globalStep >= m { stopped = true; break }
            }
            loader.cancel()
            epoch += 1
            trainLosses.append(seen > 0 ? Float(sum / Double(seen)) : .nan)
            if !val.isEmpty {
                let (loss, bad) = validationLoss()
                skipped += bad.count
                if !bad.isEmpty { report(.skipped(bad)) }
                valLosses.append(loss)
                let improved = best.map { loss < $0 } ?? true
                if improved { best = loss; bestWeights = currentWeights(); sinceBest = 0 } else { sinceBest += 1 }
                report(.validation(epoch: epoch, loss: loss, best: improved))
                if sinceBest >= options.patience { stopped = true; report(.earlyStop(epoch: epoch)) }
            }
            try writeCheckpoint()
            report(.checkpoint(path: checkpointPath))
        }
        try writeModel(to: out, weights: bestWeights ?? currentWeights())
        return Summary(epochsRun: epoch, steps: globalStep, trainLosses: trainLosses, valLosses: valLosses, skipped: skipped,
                       output: out, checkpoint: checkpointPath)
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

    func writeModel(to path: String, weights: [String: [Float]]) throws {
        var meta = file.metadata
        meta.source.trainedFrom = TrainingInfo(model: (modelPath as NSString).lastPathComponent, steps: globalStep, epochs: epoch,
                                               optimizer: options.optimizer.kind.rawValue, lr: options.optimizer.lr,
                                               freeze: options.freeze?.rawValue, bestValidationLoss: best.map(Double.init))
        _ = try LCWWriter.write(to: path, tensors: modelTensors(weights), metadata: try meta.jsonObject())
    }

    /// `<out>.ckpt`: an `.lcw` container (formats/training.md) with the current weights, the
    /// optimiser's moments (`optimizer.exp_avg.<name>`, `optimizer.exp_avg_sq.<name>`), the best
    /// weights so far (`best.<name>`), and the loop state in metadata.
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
        let state: [String: Any] = [
            "epoch": epoch, "global_step": globalStep, "optimizer_step": step,
            "rng": rng.state.map { String($0) }, "best": best.map { Double($0) } as Any? ?? NSNull(),
            "since_best": sinceBest, "train_losses": trainLosses.map(Double.init), "val_losses": valLosses.map(Double.init),
            "settings": settingsJSON(),
        ]
        let meta: [String: Any] = ["architecture": TrainingCheckpoint.architecture, "model": try file.metadata.jsonObject(), "training": state]
        _ = try LCWWriter.write(to: checkpointPath, tensors: tensors, metadata: meta)
    }

    /// What must agree for a resume to continue the same run (as strings, so they compare the
    /// same before and after a JSON round trip).
    func settingsJSON() -> [String: String] {
        let o = options.optimizer
        return ["optimizer": o.kind.rawValue, "lr": "\(o.lr)", "beta1": "\(o.beta1)", "beta2": "\(o.beta2)", "eps": "\(o.eps)",
                "weight_decay": "\(o.weightDecay)", "clip_norm": o.clipNorm.map { "\($0)" } ?? "none", "batch_size": "\(options.batchSize)",
                "val_fraction": "\(options.valFraction)", "seed": "\(options.seed)", "shuffle": "\(options.shuffle)",
                "dropout": "\(options.dropout)", "freeze": options.freeze?.rawValue ?? "none"]
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
              let words = st["rng"] as? [String], case let state = words.compactMap(UInt64.init), state.count == 4,
              SeededRNG.isValid(state: state) else { throw bad("the training state in the metadata is incomplete") }
        optimizer.restore(step: step, m: m, v: vv)
        rng = SeededRNG(state: state)
        epoch = ep
        globalStep = gs
        best = (st["best"] as? Double).map(Float.init)
        sinceBest = st["since_best"] as? Int ?? 0
        trainLosses = (st["train_losses"] as? [Double] ?? []).map(Float.init)
        valLosses = (st["val_losses"] as? [Double] ?? []).map(Float.init)
        if best != nil {
            var bw: [String: [Float]] = [:]
            for p in model.parameters { bw[p.name] = try values("best." + p.name, p.tensor.shape) }
            bestWeights = bw
        }
    }

    public var resumedEpoch: Int { epoch }
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
