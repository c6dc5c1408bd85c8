import ArgumentParser
import Foundation
import LiteCLIP
import TensorIO

/// Thin CLI over `Trainer`.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fine-tune a converted model on image-caption pairs with the seed's loss and Adam.",
        discussion: """
            Captions: a Flickr8k captions.txt (CSV with header image,caption) or JSON lines \
            {"image": ..., "caption": ...}; image paths relative to --images (formats/captions.md). \
            Each epoch writes OUT.ckpt (weights, optimiser state; --resume OUT.ckpt continues exactly); \
            OUT is a normal .lcw with the weights of the best validation loss (the last ones without \
            a validation split). Ctrl-C leaves the last complete checkpoint intact.
            """)

    @Argument(help: "The .lcw model to start from.") var model: String
    @Option(help: "captions.txt (CSV image,caption) or a .jsonl file.") var captions: String
    @Option(help: "Folder the image paths are relative to.") var images: String
    @Option(help: "The trained .lcw to write.") var out: String
    @Option(help: "Epochs.") var epochs = 5
    @Option(name: .customLong("batch-size"), help: "Pairs per step.") var batchSize = 64
    @Option(help: "Learning rate.") var lr = 2e-4
    @Option(help: "adam or adamw.") var optimizer = "adam"
    @Option(name: .customLong("weight-decay"), help: "Weight decay (default: 0 for adam, 0.01 for adamw).") var weightDecay: Double?
    @Option(name: .customLong("clip-norm"), help: "Clip the global gradient norm to this.") var clipNorm: Double?
    @Option(name: .customLong("val-fraction"), help: "Fraction of the images held out for validation.") var valFraction = 0.2
    @Option(help: "Seed of the shuffle, the split and dropout.") var seed: UInt64 = 0
    @Flag(name: .customLong("no-shuffle"), help: "Keep the captions file's order.") var noShuffle = false
    @Option(help: "Dropout of the projection heads and BERT (the seed's 0.1; 0 = off).") var dropout: Float = 0.1
    @Option(name: .customLong("max-steps"), help: "Stop after this many optimiser steps.") var maxSteps: Int?
    @Option(help: "Freeze the image or the text tower (its weights get no gradient).") var freeze: String?
    @Option(help: "Continue from a checkpoint (OUT.ckpt) of a run with the same settings.") var resume: String?
    @Option(help: "Image decoding threads.") var workers = 2
    @Flag(name: .shortAndLong, help: "No progress line.") var quiet = false

    func validate() throws {
        guard AdamOptimizer.Kind(rawValue: optimizer) != nil else { throw ValidationError("--optimizer must be adam or adamw") }
        if let f = freeze, Trainer.Freeze(rawValue: f) == nil { throw ValidationError("--freeze must be image or text") }
        guard dropout >= 0, dropout < 1 else { throw ValidationError("--dropout must be in [0, 1)") }
        guard epochs > 0, batchSize > 0, workers > 0 else { throw ValidationError("--epochs, --batch-size and --workers must be positive") }
        guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be positive") }
        if let m = maxSteps, m <= 0 { throw ValidationError("--max-steps must be positive") }
    }

    func run() throws {
        AtomicFile.installSignalCleanup()
        var o = Trainer.Options()
        o.epochs = epochs
        o.batchSize = batchSize
        o.optimizer = AdamOptimizer.Settings(kind: AdamOptimizer.Kind(rawValue: optimizer)!)
        o.optimizer.lr = lr
        if let wd = weightDecay { o.optimizer.weightDecay = wd }
        o.optimizer.clipNorm = clipNorm
        o.valFraction = valFraction
        o.seed = seed
        o.shuffle = !noShuffle
        o.dropout = dropout
        o.maxSteps = maxSteps
        o.freeze = freeze.flatMap(Trainer.Freeze.init(rawValue:))
        o.workers = workers
        let trainer: Trainer
        do {
            trainer = try Trainer(model: model, captions: captions, images: images, out: out, options: o, resume: resume)
        } catch { throw fail("train", error) }
        let err = FileHandle.standardError
        func say(_ s: String) { err.write((s + "\n").data(using: .utf8)!) }
        say("training \(model): \(trainer.trainCount) pairs, \(trainer.valCount) held out; \(trainer.trainableParameters) trainable parameters"
            + (o.freeze.map { " (\($0.rawValue) tower frozen)" } ?? "") + (resume.map { "; resumed from \($0) after epoch \(trainer.resumedEpoch)" } ?? ""))
        let tty = isatty(2) != 0
        var lastLine = Date.distantPast
        do {
            let summary = try trainer.run { event in
                switch event {
                case let .step(epoch, epochs, step, steps, _, loss, ips, eta):
                    guard !quiet else { return }
                    let now = Date()
                    guard tty || step == steps || now.timeIntervalSince(lastLine) > 10 else { return }
                    lastLine = now
                    let width = 24, filled = steps > 0 ? min(width, step * width / steps) : width
                    let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
                    let line = String(format: "epoch %d/%d step %d/%d [%@] loss %.4f  %.1f img/s  ETA %@",
                                      epoch, epochs, step, steps, bar, loss, ips, formatDuration(eta))
                    err.write(((tty ? "\r\u{1B}[K" : "") + line + (tty ? "" : "\n")).data(using: .utf8)!)
                case let .validation(epoch, loss, best):
                    if tty && !quiet { err.write("\n".data(using: .utf8)!) }
                    say(String(format: "epoch %d: validation loss %.4f%@", epoch, loss, best ? " (best)" : ""))
                case let .checkpoint(path):
                    if tty && !quiet { err.write("\r\u{1B}[K".data(using: .utf8)!) }
                    say("checkpoint: \(path)")
                case let .skipped(lines):
                    if tty && !quiet { err.write("\n".data(using: .utf8)!) }
                    say("skipped \(lines.count):")
                    for l in lines.prefix(10) { say("  " + l) }
                    if lines.count > 10 { say("  ... and \(lines.count - 10) more") }
                case let .earlyStop(epoch):
                    say("early stop after epoch \(epoch): no better validation loss for \(o.patience) epochs")
                }
            }
            let losses = summary.trainLosses.map { String(format: "%.4f", $0) }.joined(separator: ", ")
            let vals = summary.valLosses.map { String(format: "%.4f", $0) }.joined(separator: ", ")
            print("trained \(summary.epochsRun) epoch(s), \(summary.steps) steps; train loss per epoch [\(losses)]"
                  + (vals.isEmpty ? "" : "; validation [\(vals)]") + "; \(summary.skipped) skipped")
            print("wrote \(summary.output) (checkpoint \(summary.checkpoint))")
        } catch { throw fail("train", error) }
    }
}

func formatDuration(_ s: Double) -> String {
    guard s.isFinite, s >= 0 else { return "?" }
    let t = Int(s.rounded())
    return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t % 3600 / 60) : String(format: "%dm%02ds", t / 60, t % 60)
}
