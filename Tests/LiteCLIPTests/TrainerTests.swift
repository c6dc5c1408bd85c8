import Foundation
import XCTest
@testable import LiteCLIP
@testable import TensorIO
import TestSupport

/// The training loop: exact resume (at an epoch's end and inside one), max steps, warnings,
/// starting from a PyTorch checkpoint, freezing, dropout, early stopping; and every layer's
/// backward against central finite differences of its own forward.
final class TrainerTests: XCTestCase {
    /// A captions set over the seed's photos, and the small golden model converted.
    static func setUp() throws -> (dir: String, model: String) {
        let dir = Fixtures.tempDir()
        let rows = [("cat.jpg", "a cat sitting on a sofa"), ("car.jpg", "a red car parked on the street"),
                    ("dancing.jpg", "two people dancing on a stage"), ("catstuckindoor.jpeg", "a cat stuck in a door"),
                    ("cat.jpg", "a grey cat"), ("car.jpg", "a car"), ("dancing.jpg", "people on a stage")]
        let csv = "image,caption\n" + rows.map { "\($0.0),\"\($0.1)\"" }.joined(separator: "\n") + "\n"
        try csv.write(toFile: dir + "/captions.txt", atomically: true, encoding: .utf8)
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        o.textConfigPath = Fixtures.golden("config.json")
        _ = try Converter.convert(input: Fixtures.golden("liteclip2.pt"), output: dir + "/m.lcw", options: o)
        return (dir, dir + "/m.lcw")
    }

    /// Batches of 2; a quarter of the 4 images held out: with seed 7 catstuckindoor.jpeg (1 pair,
    /// so the validation loss is always 0: 6 training pairs in 3 batches of 2), with seed 1
    /// cat.jpg (2 pairs, a real validation loss: 5 training pairs in batches of 2, 2 and 1).
    static func options(epochs: Int, seed: UInt64 = 7) -> Trainer.Options {
        var o = Trainer.Options()
        o.epochs = epochs
        o.batchSize = 2
        o.valFraction = 0.25
        o.seed = seed
        o.workers = 1
        return o
    }

    /// Every tensor's bytes of a `.lcw` or a training checkpoint (whose moments and best weights are included).
    static func bytes(_ path: String) throws -> [String: [UInt8]] {
        Dictionary(uniqueKeysWithValues: try LCWReader.open(path).checkpoint.tensors.map { ($0.name, try $0.load().withBytes { Array($0) }) })
    }

    /// The names of the tensors whose bytes differ between two files (or that one lacks).
    static func differing(_ a: String, _ b: String) throws -> [String] {
        let x = try bytes(a), y = try bytes(b)
        return Set(x.keys).union(y.keys).filter { x[$0] != y[$0] }.sorted()
    }

    /// The `training` object of a checkpoint's metadata.
    static func trainingState(_ path: String) throws -> [String: Any] {
        let f = try LCWReader.open(path)
        return try XCTUnwrap((try JSONSerialization.jsonObject(with: f.metadataJSON) as? [String: Any])?["training"] as? [String: Any])
    }

    /// What a run reported: each optimiser step as [epoch, batch, global step, loss bits], each
    /// validation as [epoch, loss bits], the warnings and the interruption.
    struct Record {
        var summary: Trainer.Summary
        var steps: [[Int]]
        var validations: [[Int]]
        var warnings: [String]
        var interrupted: [String]
    }

    /// Runs `t`, asking it to stop once it has done `stopAfterSteps` steps, or at the
    /// `stopAtPoll`-th time it asks.
    static func record(_ t: Trainer, stopAfterSteps k: Int? = nil, stopAtPoll n: Int? = nil) throws -> Record {
        var steps: [[Int]] = [], validations: [[Int]] = [], warnings: [String] = [], interrupted: [String] = []
        var polls = 0
        let summary = try t.run(stop: {
            polls += 1
            return (k.map { steps.count >= $0 } ?? false) || (n.map { polls >= $0 } ?? false)
        }) { event in
            switch event {
            case let .step(epoch, _, step, _, global, loss, _, _): steps.append([epoch, step, global, Int(loss.bitPattern)])
            case let .validation(epoch, loss, _): validations.append([epoch, Int(loss.bitPattern)])
            case let .warning(w): warnings.append(w)
            case let .interrupted(epoch, step, checkpoint): interrupted.append("epoch \(epoch) step \(step) \(checkpoint)")
            default: break
            }
        }
        return Record(summary: summary, steps: steps, validations: validations, warnings: warnings, interrupted: interrupted)
    }

    /// Two runs agree on everything their summaries hold but the file names.
    static func assertSameHistory(_ a: Trainer.Summary, _ b: Trainer.Summary, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.epochsRun, b.epochsRun, "epochs", file: file, line: line)
        XCTAssertEqual(a.steps, b.steps, "steps", file: file, line: line)
        XCTAssertEqual(a.trainLosses.map(\.bitPattern), b.trainLosses.map(\.bitPattern), "train losses \(a.trainLosses) \(b.trainLosses)", file: file, line: line)
        XCTAssertEqual(a.valLosses.map(\.bitPattern), b.valLosses.map(\.bitPattern), "validation losses \(a.valLosses) \(b.valLosses)", file: file, line: line)
        XCTAssertEqual(a.skipped, b.skipped, "skipped", file: file, line: line)
        XCTAssertEqual(a.interrupted, b.interrupted, "interrupted", file: file, line: line)
    }

    /// Three epochs in one go equal one epoch, then a resume from its checkpoint to three: bit
    /// for bit (shuffle and dropout on, so the generator state must round-trip too; a real
    /// validation loss, so the best weights must too).
    func testResumeContinuesExactly() throws {
        let (dir, model) = try Self.setUp()
        let images = Fixtures.seed + "/examples"
        let straight = try Trainer(model: model, captions: dir + "/captions.txt", images: images, out: dir + "/a.lcw", options: Self.options(epochs: 3, seed: 1))
        let s = try straight.run { _ in }
        XCTAssertEqual(s.epochsRun, 3)
        let first = try Trainer(model: model, captions: dir + "/captions.txt", images: images, out: dir + "/b.lcw", options: Self.options(epochs: 1, seed: 1))
        _ = try first.run { _ in }
        let resumed = try Trainer(model: model, captions: dir + "/captions.txt", images: images, out: dir + "/c.lcw",
                                  options: Self.options(epochs: 3, seed: 1), resume: dir + "/b.lcw.ckpt")
        XCTAssertEqual(resumed.resumedEpoch, 1)
        let r = try resumed.run { _ in }
        XCTAssertEqual(r.valLosses, s.valLosses)
        XCTAssertEqual(r.trainLosses, s.trainLosses)
        let a = try Self.bytes(dir + "/a.lcw"), c = try Self.bytes(dir + "/c.lcw")
        XCTAssertEqual(a.count, 260)
        let differing = a.keys.filter { a[$0] != c[$0] }.sorted()
        XCTAssertTrue(differing.isEmpty, "resumed weights differ: \(differing.prefix(5))")
        XCTAssertNotEqual(a["logit_scale"], try Self.bytes(model)["logit_scale"], "training changed the weights")

        // A resume with other settings is refused, naming them.
        var other = Self.options(epochs: 3, seed: 1)
        other.optimizer.lr = 1e-3
        XCTAssertThrowsError(try Trainer(model: model, captions: dir + "/captions.txt", images: images, out: dir + "/d.lcw",
                                         options: other, resume: dir + "/b.lcw.ckpt")) { e in
            XCTAssertTrue("\(e)".contains("lr"), "\(e)")
        }
    }

    /// Stopped after 4 steps (inside the second epoch, 3 batches per epoch) and resumed, three
    /// epochs equal three in one go bit for bit: steps numbered and computed the same, the same
    /// loss history, the same result, checkpoint and optimiser moments (shuffle and dropout on).
    func testInterruptInsideAnEpochResumesExactly() throws {
        let (dir, model) = try Self.setUp()
        let captions = dir + "/captions.txt", images = Fixtures.seed + "/examples"
        let straight = try Trainer(model: model, captions: captions, images: images, out: dir + "/a.lcw", options: Self.options(epochs: 3, seed: 1))
        XCTAssertEqual(straight.stepsPerEpoch, 3)
        let s = try Self.record(straight)
        XCTAssertEqual(s.summary.steps, 9)
        XCTAssertFalse(s.summary.interrupted)

        let first = try Trainer(model: model, captions: captions, images: images, out: dir + "/b.lcw", options: Self.options(epochs: 3, seed: 1))
        let i = try Self.record(first, stopAfterSteps: 4)
        XCTAssertTrue(i.summary.interrupted)
        XCTAssertEqual(i.summary.steps, 4)
        XCTAssertEqual(i.summary.epochsRun, 1)
        XCTAssertEqual(i.interrupted, ["epoch 2 step 1 \(dir)/b.lcw.ckpt"])
        XCTAssertEqual(i.steps, Array(s.steps.prefix(4)))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/b.lcw"), "an interrupted run does not write OUT")
        let state = try Self.trainingState(dir + "/b.lcw.ckpt")
        XCTAssertEqual(state["epoch"] as? Int, 1)
        XCTAssertEqual(state["global_step"] as? Int, 4)
        let position = try XCTUnwrap(state["epoch_progress"] as? [String: Any])
        XCTAssertEqual(position["step"] as? Int, 1)
        XCTAssertEqual(position["steps_per_epoch"] as? Int, 3)
        XCTAssertEqual((position["rng_at_start"] as? [String])?.count, 4)

        let resumed = try Trainer(model: model, captions: captions, images: images, out: dir + "/c.lcw",
                                  options: Self.options(epochs: 3, seed: 1), resume: dir + "/b.lcw.ckpt")
        XCTAssertEqual(resumed.resumedEpoch, 1)
        XCTAssertEqual(resumed.resumedStep, 1)
        let r = try Self.record(resumed)
        XCTAssertEqual(r.steps, Array(s.steps.dropFirst(4)), "continues with epoch 2 batch 2, global step 5, the same losses")
        XCTAssertEqual(r.validations, Array(s.validations.dropFirst(1)))
        Self.assertSameHistory(r.summary, s.summary)
        XCTAssertEqual(try Self.differing(dir + "/a.lcw", dir + "/c.lcw"), [], "resumed result differs")
        XCTAssertEqual(try Self.differing(dir + "/a.lcw.ckpt", dir + "/c.lcw.ckpt"), [], "resumed checkpoint differs")
    }

    /// Batch k of an epoch is the same samples after a resume however many of the batches before
    /// it had unreadable images: a batch that loses one, and one that loses all (no step, but a
    /// batch number and a `stop` poll). Interrupted inside the first epoch after the all-skipped
    /// batch, resumed and interrupted again at the epoch's end, resumed again: as one run.
    func testResumeKeepsBatchBoundariesWithUnreadableImages() throws {
        let (dir, model) = try Self.setUp()
        let broken = dir + "/broken.jpg"
        try Data("not an image".utf8).write(to: URL(fileURLWithPath: broken))
        // Batches of 3, in file order: 2 readable | none | 3 | 2.
        let rows = [("cat.jpg", "a cat sitting on a sofa"), (broken, "nothing"), ("car.jpg", "a red car parked on the street"),
                    (broken, "still nothing"), (broken, "no"), (broken, "none"),
                    ("dancing.jpg", "two people dancing on a stage"), ("catstuckindoor.jpeg", "a cat stuck in a door"), ("cat.jpg", "a grey cat"),
                    ("car.jpg", "a car"), (broken, "empty"), ("dancing.jpg", "people on a stage")]
        let captions = dir + "/captions.txt", images = Fixtures.seed + "/examples"
        try ("image,caption\n" + rows.map { "\($0.0),\"\($0.1)\"" }.joined(separator: "\n") + "\n").write(toFile: captions, atomically: true, encoding: .utf8)
        var o = Self.options(epochs: 2)
        o.batchSize = 3
        o.valFraction = 0
        o.shuffle = false
        let straight = try Trainer(model: model, captions: captions, images: images, out: dir + "/a.lcw", options: o)
        XCTAssertEqual(straight.stepsPerEpoch, 4)
        let s = try Self.record(straight)
        XCTAssertEqual(s.steps.map { [$0[0], $0[1]] }, [[1, 1], [1, 3], [1, 4], [2, 1], [2, 3], [2, 4]], "batch 2 takes no step")
        XCTAssertEqual(s.summary.skipped, 10)

        // Polls: after batches 1, 2 and 3, at the end of epoch 1, ...
        let first = try Trainer(model: model, captions: captions, images: images, out: dir + "/b.lcw", options: o)
        let i = try Self.record(first, stopAtPoll: 2)
        XCTAssertEqual(i.interrupted, ["epoch 1 step 2 \(dir)/b.lcw.ckpt"])
        XCTAssertEqual(i.summary.skipped, 4)
        let second = try Trainer(model: model, captions: captions, images: images, out: dir + "/c.lcw", options: o, resume: dir + "/b.lcw.ckpt")
        let j = try Self.record(second, stopAtPoll: 2)
        XCTAssertEqual(j.interrupted, ["epoch 2 step 0 \(dir)/c.lcw.ckpt"], "at an epoch's end: the epoch's own checkpoint")
        XCTAssertTrue(try Self.trainingState(dir + "/c.lcw.ckpt")["epoch_progress"] is NSNull)
        let third = try Trainer(model: model, captions: captions, images: images, out: dir + "/d.lcw", options: o, resume: dir + "/c.lcw.ckpt")
        let r = try Self.record(third)
        XCTAssertEqual(i.steps + j.steps + r.steps, s.steps)
        Self.assertSameHistory(r.summary, s.summary)
        XCTAssertEqual(try Self.differing(dir + "/a.lcw", dir + "/d.lcw"), [])
        XCTAssertEqual(try Self.differing(dir + "/a.lcw.ckpt", dir + "/d.lcw.ckpt"), [])
    }

    /// `maxSteps` counts every step of the run: 2, then a resume with 3 does one more, and a
    /// resume at 3 with 3 does none. Stopped by `maxSteps` inside an epoch, the run validates and
    /// writes OUT, but keeps that validation out of the checkpoint: 2 then a resume with 4 equals
    /// 4 in one go, bit for bit.
    func testMaxStepsCountsEveryStepAndContinuesInsideTheEpoch() throws {
        let (dir, model) = try Self.setUp()
        let captions = dir + "/captions.txt", images = Fixtures.seed + "/examples"
        func options(_ maxSteps: Int) -> Trainer.Options {
            var o = Self.options(epochs: 3, seed: 1)
            o.maxSteps = maxSteps
            return o
        }
        let two = try Trainer(model: model, captions: captions, images: images, out: dir + "/m2.lcw", options: options(2))
        XCTAssertEqual(two.stepsPerEpoch, 3)
        let s2 = try Self.record(two)
        XCTAssertEqual(s2.summary.steps, 2)
        XCTAssertEqual(s2.steps.count, 2)
        XCTAssertEqual(s2.validations.map { $0[0] }, [1], "validated inside epoch 1")
        XCTAssertEqual(s2.summary.valLosses.count, 1)
        XCTAssertEqual(s2.summary.epochsRun, 1)
        XCTAssertNotNil(try LiteCLIPFile.open(dir + "/m2.lcw").metadata.source.trainedFrom?.bestValidationLoss)
        let state = try Self.trainingState(dir + "/m2.lcw.ckpt")
        XCTAssertEqual((state["epoch_progress"] as? [String: Any])?["step"] as? Int, 2)
        XCTAssertEqual(state["val_losses"] as? [Double], [], "the validation inside the epoch is not in the history")
        XCTAssertTrue(state["best"] is NSNull)

        let three = try Trainer(model: model, captions: captions, images: images, out: dir + "/m3.lcw", options: options(3),
                                resume: dir + "/m2.lcw.ckpt")
        let s3 = try Self.record(three)
        XCTAssertEqual(s3.steps.map { [$0[0], $0[1], $0[2]] }, [[1, 3, 3]], "one more step: the last batch of epoch 1")
        XCTAssertEqual(s3.summary.steps, 3)
        let again = try Trainer(model: model, captions: captions, images: images, out: dir + "/m3b.lcw", options: options(3),
                                resume: dir + "/m3.lcw.ckpt")
        let s3b = try Self.record(again)
        XCTAssertEqual(s3b.steps.count, 0, "the checkpoint has its 3 steps already")
        XCTAssertEqual(s3b.summary.steps, 3)
        XCTAssertEqual(try Self.differing(dir + "/m3.lcw", dir + "/m3b.lcw"), [])
        XCTAssertEqual(try Self.differing(dir + "/m3.lcw.ckpt", dir + "/m3b.lcw.ckpt"), [])

        let straight = try Trainer(model: model, captions: captions, images: images, out: dir + "/s4.lcw", options: options(4))
        let s4 = try Self.record(straight)
        XCTAssertEqual(s4.steps.last.map { [$0[0], $0[1], $0[2]] }, [2, 1, 4], "4 steps end inside epoch 2")
        let resumed = try Trainer(model: model, captions: captions, images: images, out: dir + "/r4.lcw", options: options(4),
                                  resume: dir + "/m2.lcw.ckpt")
        XCTAssertEqual(resumed.resumedStep, 2)
        let r4 = try Self.record(resumed)
        XCTAssertEqual(r4.steps, Array(s4.steps.dropFirst(2)))
        XCTAssertEqual(r4.validations, s4.validations, "epoch 1's end, then inside epoch 2")
        Self.assertSameHistory(r4.summary, s4.summary)
        XCTAssertEqual(try Self.differing(dir + "/s4.lcw", dir + "/r4.lcw"), [])
        XCTAssertEqual(try Self.differing(dir + "/s4.lcw.ckpt", dir + "/r4.lcw.ckpt"), [])
    }

    /// An empty validation split and batches of one pair (whose contrastive loss is 0) are warned
    /// about at init and when the run starts, with the batch size or fraction to use instead.
    func testWarnings() throws {
        let (dir, model) = try Self.setUp()
        let captions = dir + "/captions.txt", images = Fixtures.seed + "/examples"
        func trainer(seed: UInt64 = 1, _ change: (inout Trainer.Options) -> Void) throws -> Trainer {
            var o = Self.options(epochs: 1, seed: seed)
            change(&o)
            return try Trainer(model: model, captions: captions, images: images, out: dir + "/w.lcw", options: o)
        }
        func assertContains(_ warnings: [String], _ parts: [String], file: StaticString = #filePath, line: UInt = #line) {
            XCTAssertEqual(warnings.count, 1, "\(warnings)", file: file, line: line)
            for part in parts { XCTAssertTrue(warnings.first?.contains(part) == true, "\(part): \(warnings)", file: file, line: line) }
        }
        /// The batch size a warning suggests.
        func suggested(_ warning: String?) -> Int? { warning?.components(separatedBy: "use --batch-size ").last.flatMap { Int($0) } }

        XCTAssertEqual(try trainer { $0.batchSize = 5 }.warnings, [], "5 training pairs, 2 validation pairs")
        assertContains(try trainer { $0.valFraction = 0; $0.batchSize = 8 }.warnings,
                       ["validation split is empty", "4 images", "no early stopping", "last weights", "--val-fraction 0.25 or more"])
        assertContains(try trainer { $0.batchSize = 1 }.warnings, ["--batch-size 1", "use --batch-size 2 or more"])
        assertContains(try trainer(seed: 7) { $0.batchSize = 3 }.warnings, ["validation split holds a single pair", "always 0", "--val-fraction"])

        let t = try trainer { $0.batchSize = 4; $0.maxSteps = 1 }
        assertContains(t.warnings, ["last batch of each epoch holds a single pair", "5 training pairs in batches of 4", "use --batch-size 3"])
        XCTAssertEqual(try Self.record(t).warnings, t.warnings, "reported when the run starts")

        // The validation split's last batch; a suggestion that suits both splits.
        var o = Trainer.Options()
        o.batchSize = 2
        let both = Trainer.warnings(train: 9, val: 5, images: 14, options: o)
        XCTAssertEqual(both.count, 2, "\(both)")
        XCTAssertTrue(both.last?.contains("last validation batch holds a single pair") == true, "\(both)")
        XCTAssertTrue(both.last?.contains("5 validation pairs in batches of 2") == true, "\(both)")
        XCTAssertEqual(both.compactMap(suggested), [3, 3])
    }

    /// Training starts from the PyTorch checkpoint (converted in memory with the tokenizer files)
    /// exactly as from its `.lcw`.
    func testTrainsFromThePyTorchCheckpoint() throws {
        let (dir, model) = try Self.setUp()
        let captions = dir + "/captions.txt", images = Fixtures.seed + "/examples"
        var o = Self.options(epochs: 1)
        o.maxSteps = 1
        var c = Converter.Options()
        c.vocabPath = Fixtures.vocab
        c.textConfigPath = Fixtures.golden("config.json")
        let pt = try Trainer(model: Fixtures.golden("liteclip2.pt"), captions: captions, images: images, out: dir + "/pt.lcw", options: o, convert: c)
        XCTAssertTrue(pt.source.kind.hasPrefix("converted from"), pt.source.kind)
        let s = try Self.record(pt)
        XCTAssertEqual(s.summary.steps, 1)
        XCTAssertEqual(try LiteCLIPFile.open(dir + "/pt.lcw").metadata.source.trainedFrom?.model, "liteclip2.pt")
        let lcw = try Trainer(model: model, captions: captions, images: images, out: dir + "/lcw.lcw", options: o)
        XCTAssertEqual(try Self.record(lcw).steps, s.steps)
        XCTAssertEqual(try Self.differing(dir + "/pt.lcw", dir + "/lcw.lcw"), [])
        XCTAssertNotEqual(try Self.bytes(dir + "/pt.lcw")["logit_scale"], try Self.bytes(model)["logit_scale"], "one step changed the weights")
    }

    func testFreezeLeavesThatTowerUntouched() throws {
        let (dir, model) = try Self.setUp()
        var o = Self.options(epochs: 1)
        o.freeze = .image
        let t = try Trainer(model: model, captions: dir + "/captions.txt", images: Fixtures.seed + "/examples", out: dir + "/f.lcw", options: o)
        _ = try t.run { _ in }
        let before = try Self.bytes(model), after = try Self.bytes(dir + "/f.lcw")
        for (name, b) in before {
            if name.hasPrefix("image_encoder.") || name.contains(".pooler.") { XCTAssertEqual(after[name], b, "\(name) must not change") }
        }
        for name in ["img_projection.proj.weight", "text_encoder.backbone.encoder.layer.0.attention.self.query.weight", "logit_scale"] {
            XCTAssertNotEqual(after[name], before[name], "\(name) is trained")
        }
    }

    /// With weights that cannot move (lr 1e-30) the validation loss never improves: training
    /// stops after `patience` (2) epochs past the first.
    func testEarlyStoppingAfterPatience() throws {
        let (dir, model) = try Self.setUp()
        var o = Self.options(epochs: 10)
        o.optimizer.lr = 1e-30
        o.dropout = 0
        let t = try Trainer(model: model, captions: dir + "/captions.txt", images: Fixtures.seed + "/examples", out: dir + "/e.lcw", options: o)
        var stopped: Int? = nil
        let s = try t.run { if case let .earlyStop(e) = $0 { stopped = e } }
        XCTAssertEqual(stopped, 3)
        XCTAssertEqual(s.epochsRun, 3)
    }

    /// Dropout 0 is evaluation mode exactly; dropout > 0 is seeded and drops about p.
    func testDropout() throws {
        let g = try TrainingParityTests.read("training/grads.safetensors")
        let model = try TrainingParityTests.model()
        let (pixels, b, tokens) = TrainingParityTests.batch(g)
        var rng = SeededRNG(seed: 1)
        let grads = model.makeGradients()
        let off = model.trainStep(pixels: pixels, batch: b, tokens: tokens, grads: grads, options: .init(dropout: 0), rng: &rng).loss
        XCTAssertEqual(off, model.loss(pixels: pixels, batch: b, tokens: tokens), accuracy: 1e-6)
        var r1 = SeededRNG(seed: 5), r2 = SeededRNG(seed: 5), r3 = SeededRNG(seed: 6)
        let a = model.trainStep(pixels: pixels, batch: b, tokens: tokens, grads: grads, options: .init(dropout: 0.1), rng: &r1).loss
        let a2 = model.trainStep(pixels: pixels, batch: b, tokens: tokens, grads: grads, options: .init(dropout: 0.1), rng: &r2).loss
        let c = model.trainStep(pixels: pixels, batch: b, tokens: tokens, grads: grads, options: .init(dropout: 0.1), rng: &r3).loss
        XCTAssertEqual(a, a2, "same seed, same masks")
        XCTAssertNotEqual(a, off)
        XCTAssertNotEqual(a, c)
        var rng4 = SeededRNG(seed: 9)
        var mask = [Float](repeating: 0, count: 100_000)
        _ = mask.withUnsafeMutableBufferPointer { Kernels.dropoutMask($0.baseAddress!, count: $0.count, p: 0.1, rng: &rng4) }
        let dropped = Double(mask.filter { $0 == 0 }.count) / Double(mask.count)
        XCTAssertEqual(dropped, 0.1, accuracy: 0.005)
        XCTAssertTrue(mask.allSatisfy { $0 == 0 || $0 == Float(1) / Float(0.9) })
    }

    // MARK: - Per-op finite differences

    /// Central differences in float32 with step h on a random linear functional of the output,
    /// compared with the analytic input/weight gradient: |fd - analytic| <= 2e-2 * max|analytic| + 1e-4.
    func checkFD(_ name: String, params: inout [Float], h: Float = 1e-2, forward: ([Float]) -> [Float], analytic: [Float],
                 probe: [Float], file: StaticString = #filePath, line: UInt = #line) {
        let scale = analytic.reduce(0) { max($0, abs($1)) }
        XCTAssertGreaterThan(scale, 0, "\(name): zero gradient", file: file, line: line)
        var worst: Float = 0
        for i in stride(from: 0, to: params.count, by: max(1, params.count / 40)) {
            let keep = params[i]
            params[i] = keep + h
            let up = zip(forward(params), probe).reduce(Float(0)) { $0 + $1.0 * $1.1 }
            params[i] = keep - h
            let down = zip(forward(params), probe).reduce(Float(0)) { $0 + $1.0 * $1.1 }
            params[i] = keep
            worst = max(worst, abs((up - down) / (2 * h) - analytic[i]))
        }
        XCTAssertLessThanOrEqual(worst, 2e-2 * scale + 1e-4, "\(name): max |fd - analytic| \(worst), max |analytic| \(scale)", file: file, line: line)
    }

    static func random(_ n: Int, _ rng: inout SeededRNG, scale: Float = 1) -> [Float] { (0..<n).map { _ in (rng.nextFloat() * 2 - 1) * scale } }

    static func tensor(_ shape: [Int], _ v: [Float]) -> Tensor { Buffer(shape, v).view }

    /// Finite differences perturb a weight the kernels only read.
    static func overwrite(_ t: Tensor, _ v: [Float]) {
        v.withUnsafeBufferPointer { UnsafeMutablePointer(mutating: t.data).update(from: $0.baseAddress!, count: v.count) }
    }

    func testLayerNormRowsAndChannelsBackward() {
        var rng = SeededRNG(seed: 3)
        let rows = 3, n = 8
        var x = Self.random(rows * n, &rng)
        let w = Self.tensor([n], Self.random(n, &rng)), b = Self.tensor([n], Self.random(n, &rng))
        let probe = Self.random(rows * n, &rng)
        func fwd(_ x: [Float]) -> [Float] {
            var y = [Float](repeating: 0, count: rows * n), xh = y, rs = [Float](repeating: 0, count: rows)
            Kernels.layerNormRowsForward(x, rows: rows, n: n, weight: w, bias: b, eps: 1e-5, xhat: &xh, rstd: &rs, into: &y)
            return y
        }
        var xh = [Float](repeating: 0, count: rows * n), rs = [Float](repeating: 0, count: rows), y = xh, dx = xh
        Kernels.layerNormRowsForward(x, rows: rows, n: n, weight: w, bias: b, eps: 1e-5, xhat: &xh, rstd: &rs, into: &y)
        var dw = [Float](repeating: 0, count: n), db = dw
        Kernels.layerNormRowsBackward(xhat: xh, rstd: rs, dy: probe, rows: rows, n: n, weight: w, dWeight: &dw, dBias: &db, dx: &dx)
        checkFD("layerNormRows dx", params: &x, forward: fwd, analytic: dx, probe: probe)
        var wv = w.array
        checkFD("layerNormRows dw", params: &wv, forward: { v in
            Self.overwrite(w, v); return fwd(x) }, analytic: dw, probe: probe)

        // Channels: C = 5 over P = 6 columns.
        let c = 5, p = 6
        var xc = Self.random(c * p, &rng)
        let wc = Self.tensor([c], Self.random(c, &rng)), bc = Self.tensor([c], Self.random(c, &rng))
        let probeC = Self.random(c * p, &rng)
        func fwdC(_ x: [Float]) -> [Float] {
            var y = [Float](repeating: 0, count: c * p), xh = y, rs = [Float](repeating: 0, count: p)
            Kernels.layerNormChannelsForward(x, channels: c, columns: p, weight: wc, bias: bc, eps: 1e-6, xhat: &xh, rstd: &rs, into: &y)
            return y
        }
        var xhc = [Float](repeating: 0, count: c * p), rsc = [Float](repeating: 0, count: p), yc = xhc, dxc = xhc
        Kernels.layerNormChannelsForward(xc, channels: c, columns: p, weight: wc, bias: bc, eps: 1e-6, xhat: &xhc, rstd: &rsc, into: &yc)
        var dwc = [Float](repeating: 0, count: c), dbc = dwc
        Kernels.layerNormChannelsBackward(xhat: xhc, rstd: rsc, dy: probeC, channels: c, columns: p, weight: wc, dWeight: &dwc, dBias: &dbc, dx: &dxc)
        checkFD("layerNormChannels dx", params: &xc, forward: fwdC, analytic: dxc, probe: probeC)
        XCTAssertEqual(dbc[0], (0..<p).reduce(Float(0)) { $0 + probeC[$1] }, accuracy: 1e-5)
    }

    func testGELUAndDepthwiseAndPatchConvBackward() {
        var rng = SeededRNG(seed: 4)
        // GELU.
        var x = Self.random(50, &rng, scale: 3)
        let probe = Self.random(50, &rng)
        var g = probe
        Kernels.geluBackward(x, &g, count: 50)
        checkFD("gelu", params: &x, h: 1e-2, forward: { v in var y = v; Kernels.gelu(&y, count: y.count); return y }, analytic: g, probe: probe)

        // Depthwise 3x3 on 2 channels x 2 images of 5x9 (odd width exercises the strip tail).
        let ch = 2, bt = 2, h = 5, w = 9, k = 3, n = ch * bt * h * w
        var xi = Self.random(n, &rng)
        let weight = Self.tensor([ch, 1, k, k], Self.random(ch * k * k, &rng)), bias = Self.tensor([ch], Self.random(ch, &rng))
        let pr = Self.random(n, &rng)
        func fwd(_ v: [Float]) -> [Float] {
            var y = [Float](repeating: 0, count: n)
            Kernels.depthwiseConv(v, channels: ch, batch: bt, h: h, w: w, weight: weight, bias: bias, into: &y)
            return y
        }
        var dx = [Float](repeating: 0, count: n), scratch = dx, dw = [Float](repeating: 0, count: ch * k * k), db = [Float](repeating: 0, count: ch)
        Kernels.depthwiseConvBackward(x: xi, dy: pr, channels: ch, batch: bt, h: h, w: w, weight: weight, dWeight: &dw, dBias: &db,
                                      accumulateInto: &dx, scratch: &scratch)
        checkFD("depthwise dx", params: &xi, forward: fwd, analytic: dx, probe: pr)
        var wv = weight.array
        checkFD("depthwise dw", params: &wv, forward: { v in
            Self.overwrite(weight, v); return fwd(xi) }, analytic: dw, probe: pr)

        // Patch conv 2x2/2: 3 -> 4 channels, 2 images of 4x6.
        let cin = 3, cout = 4, hh = 4, ww = 6, s = 2, cols = bt * (hh / s) * (ww / s), kd = cin * s * s
        var xp = Self.random(cin * bt * hh * ww, &rng)
        let pw = Self.tensor([cout, cin, s, s], Self.random(cout * kd, &rng)), pb = Self.tensor([cout], Self.random(cout, &rng))
        let pp = Self.random(cout * cols, &rng)
        func fwdP(_ v: [Float]) -> [Float] {
            var y = [Float](repeating: 0, count: cout * cols)
            Kernels.patchConv(v, inChannels: cin, batch: bt, h: hh, w: ww, stride: s, weight: pw, bias: pb, into: &y)
            return y
        }
        var col = [Float](repeating: 0, count: kd * cols), dcol = col, dxp = [Float](repeating: 0, count: xp.count)
        Kernels.patchColumns(xp, inChannels: cin, batch: bt, h: hh, w: ww, stride: s, into: &col)
        var dpw = [Float](repeating: 0, count: cout * kd), dpb = [Float](repeating: 0, count: cout)
        Kernels.pointwiseBackward(x: col, dy: pp, columns: cols, weight: Tensor(shape: [cout, kd], sharing: pw), dWeight: &dpw, dBias: &dpb, dx: &dcol)
        Kernels.patchColumnsBackward(dcol, inChannels: cin, batch: bt, h: hh, w: ww, stride: s, into: &dxp)
        checkFD("patch conv dx", params: &xp, forward: fwdP, analytic: dxp, probe: pp)
        var pwv = pw.array
        checkFD("patch conv dw", params: &pwv, forward: { v in
            Self.overwrite(pw, v); return fwdP(xp) }, analytic: dpw, probe: pp)
    }

    func testNormalizeAndContrastiveLossBackward() {
        var rng = SeededRNG(seed: 5)
        let rows = 3, d = 4
        var y = Self.random(rows * d, &rng)
        let probe = Self.random(rows * d, &rng)
        func normalize(_ v: [Float]) -> (e: [Float], norms: [Float]) {
            var e = v
            let norms = e.withUnsafeMutableBufferPointer { Kernels.l2Normalize($0.baseAddress!, rows: rows, dim: d) }
            return (e, norms)
        }
        let (e, norms) = normalize(y)
        var dy = probe
        e.withUnsafeBufferPointer { E in dy.withUnsafeMutableBufferPointer {
            Kernels.l2NormalizeBackward(e: E.baseAddress!, norms: norms, rows: rows, dim: d, de: $0.baseAddress!)
        } }
        checkFD("normalize", params: &y, h: 1e-3, forward: { normalize($0).e }, analytic: dy, probe: probe)
        var logits = Self.random(9, &rng, scale: 3)
        let dl = Contrastive.loss(logits: logits, batch: 3).dLogits
        checkFD("contrastive loss", params: &logits, h: 1e-2, forward: { [Contrastive.loss(logits: $0, batch: 3).loss] }, analytic: dl, probe: [1])
    }
}

/// `liteclip train` as a user runs it: Ctrl-C (SIGINT) mid-run leaves the last complete
/// checkpoint intact (and no temporary file), and `--resume` continues from it; then
/// `liteclip export` of the result reads back equal to the trained weights.
final class TrainCLITests: XCTestCase {
    func testInterruptLeavesTheLastCheckpointAndResumeWorks() throws {
        let (dir, model) = try TrainerTests.setUp()
        let args = [model, "--captions", dir + "/captions.txt", "--images", Fixtures.seed + "/examples", "--out", dir + "/t.lcw",
                    "--batch-size", "2", "--epochs", "100000", "--val-fraction", "0", "--seed", "3", "-q"]   // no early stop: runs until the SIGINT
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLITests.binDir + "/liteclip")
        p.arguments = ["train"] + args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let ckpt = dir + "/t.lcw.ckpt"
        let deadline = Date().addingTimeInterval(120)
        while !FileManager.default.fileExists(atPath: ckpt) && Date() < deadline && p.isRunning { usleep(50_000) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: ckpt), "no checkpoint within 2 minutes")
        usleep(300_000)   // let it get into the next epoch (or the next checkpoint write)
        kill(p.processIdentifier, SIGINT)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 128 + SIGINT, "interrupted")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }
        XCTAssertEqual(leftovers, [], "no temporary files")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/t.lcw"), "the result is only written at the end")
        let saved = try LCWReader.open(ckpt)   // intact: opens and validates
        let state = try XCTUnwrap((try JSONSerialization.jsonObject(with: saved.metadataJSON) as? [String: Any])?["training"] as? [String: Any])
        let steps = try XCTUnwrap(state["global_step"] as? Int)
        XCTAssertGreaterThan(steps, 0)

        // Two more steps from where it stopped.
        let r = try CLITests.run("liteclip", ["train", model, "--captions", dir + "/captions.txt", "--images", Fixtures.seed + "/examples",
                                              "--out", dir + "/u.lcw", "--batch-size", "2", "--epochs", "100000", "--val-fraction", "0", "--seed", "3",
                                              "--resume", ckpt, "--max-steps", "\(steps + 2)"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("resumed from"), r.err)
        _ = try LiteCLIPFile.open(dir + "/u.lcw")
        let e = try CLITests.run("liteclip", ["export", dir + "/u.lcw", dir + "/u.pt"])
        XCTAssertEqual(e.status, 0, e.err)
        let back = try TensorFile.read(ByteSource(mapping: dir + "/u.pt")).tensors
        let trained = try LiteCLIPFile.open(dir + "/u.lcw").tensors
        XCTAssertEqual(back.map(\.name), trained.map(\.name))
        for (a, b) in zip(back, trained) { XCTAssertEqual(try a.load().sha256(), try b.load().sha256(), a.name) }
    }
}
