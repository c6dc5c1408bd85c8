#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import LiteCLIP
import TensorIO

extension AdamOptimizer.Kind: ExpressibleByArgument {}
extension Trainer.Freeze: ExpressibleByArgument {}

/// Thin CLI over `Trainer`.
struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fine-tune a model on your own image-caption pairs.",
        discussion: """
            Captions: a Flickr8k-style captions.txt (CSV with the header image,caption) or JSON lines \
            {"image": "...", "caption": "..."}; image paths are relative to --images. The loss is \
            liteCLIP's contrastive loss (the mean of the image-to-text and text-to-image cross \
            entropies); Adam, learning rate 2e-4 and dropout 0.1 by default, 20% of the images held \
            out for validation, early stopping after 2 epochs without a better validation loss.

            Writes OUT.ckpt after every epoch (weights, optimiser state, position) and OUT at the \
            end: a .lcw with the weights of the best validation loss (the last weights without a \
            validation split). Ctrl-C stops after the current step, saves OUT.ckpt and prints the \
            command that resumes; --resume OUT.ckpt continues exactly where it stopped (with the \
            same settings). --max-steps counts every step of the run, resumed ones included.
            With --json, progress is printed as JSON lines, one event per line.
            """)

    @Argument(help: "The model to start from: any format liteclip reads.") var model: String
    @Option(help: ArgumentHelp("captions.txt (CSV image,caption) or a .jsonl file.", valueName: "file")) var captions: String
    @Option(help: ArgumentHelp("The folder the captions' image paths are relative to.", valueName: "folder")) var images: String
    @Option(help: ArgumentHelp("The trained .lcw to write (OUT.ckpt is written beside it).", valueName: "file")) var out: String
    @Option(help: "Epochs.") var epochs = 5
    @Option(name: .customLong("batch-size"), help: ArgumentHelp("Pairs per step.", valueName: "n")) var batchSize = 64
    @Option(help: "Learning rate.") var lr = 2e-4
    @Option(help: "The optimiser.") var optimizer: AdamOptimizer.Kind = .adam
    @Option(name: .customLong("weight-decay"), help: "Weight decay (default: 0 for adam, 0.01 for adamw).") var weightDecay: Double?
    @Option(name: .customLong("clip-norm"), help: "Clip the global gradient norm to this.") var clipNorm: Double?
    @Option(name: .customLong("val-fraction"), help: "Fraction of the images held out for validation.") var valFraction = 0.2
    @Option(help: "Seed of the shuffle, the split and dropout.") var seed: UInt64 = 0
    @Flag(name: .customLong("no-shuffle"), help: "Keep the captions file's order.") var noShuffle = false
    @Option(help: "Dropout of the projection heads and BERT (0 = off).") var dropout: Float = 0.1
    @Option(name: .customLong("max-steps"), help: ArgumentHelp("Stop after this many optimiser steps in all (resumed steps count).", valueName: "n"))
    var maxSteps: Int?
    @Option(help: "Freeze one encoder (its weights get no gradient).") var freeze: Trainer.Freeze?
    @Option(help: ArgumentHelp("Continue from a training checkpoint (OUT.ckpt) of a run with the same settings.", valueName: "file"))
    var resume: String?
    @Option(help: "Image decoding threads.") var workers = 2
    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        guard dropout >= 0, dropout < 1 else { throw ValidationError("--dropout must be in [0, 1)") }
        guard epochs > 0, batchSize > 0, workers > 0 else { throw ValidationError("--epochs, --batch-size and --workers must be positive") }
        guard lr > 0, lr.isFinite else { throw ValidationError("--lr must be positive") }
        if let m = maxSteps, m <= 0 { throw ValidationError("--max-steps must be positive") }
        guard valFraction >= 0, valFraction < 1 else { throw ValidationError("--val-fraction must be in [0, 1)") }
    }

    var checkpoint: String { out + ".ckpt" }

    /// This command line with `--resume CHECKPOINT`, quoted for a POSIX shell.
    func resumeCommand() -> String {
        var args = Array(CommandLine.arguments.dropFirst())
        if let i = args.firstIndex(of: "--resume"), i + 1 < args.count { args.removeSubrange(i...(i + 1)) }
        args.removeAll { $0.hasPrefix("--resume=") }
        args += ["--resume", checkpoint]
        return (["liteclip"] + args).map(shellQuote).joined(separator: " ")
    }

    func run() throws {
        let console = Console(command: "liteclip train", quiet: output.quiet)
        try Paths.checkInput(model, what: "model")
        try Paths.checkInput(captions, what: "captions file")
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: images, isDirectory: &isDir), isDir.boolValue else {
            throw CLIFailure("\(images): no such folder (--images is the folder the captions' image paths are relative to)")
        }
        if let r = resume { try Paths.checkInput(r, what: "checkpoint") }
        let inputs = [model, captions] + modelOptions.files
        try Paths.checkOutput(out, inputs: inputs)
        try Paths.checkOutput(checkpoint, inputs: inputs.filter { $0 != resume }, what: "checkpoint")

        var o = Trainer.Options()
        o.epochs = epochs
        o.batchSize = batchSize
        o.optimizer = AdamOptimizer.Settings(kind: optimizer)
        o.optimizer.lr = lr
        if let wd = weightDecay { o.optimizer.weightDecay = wd }
        o.optimizer.clipNorm = clipNorm
        o.valFraction = valFraction
        o.seed = seed
        o.shuffle = !noShuffle
        o.dropout = dropout
        o.maxSteps = maxSteps
        o.freeze = freeze
        o.workers = workers
        let trainer = try Trainer(model: model, captions: captions, images: images, out: out, options: o, resume: resume,
                                  convert: modelOptions.converter)
        modelOptions.describe(trainer.source, model, console)
        let json = output.json
        let events = EventPrinter(console: console, json: json, patience: o.patience)
        events.start(model: model, trainer: trainer, freeze: freeze, resume: resume)
        AtomicFile.installGracefulInterrupt()
        let summary = try trainer.run(stop: { AtomicFile.interruptRequested }) { events.print($0) }
        if summary.interrupted {
            let line = "resume with: " + resumeCommand()
            if json { try console.json(EventPrinter.Line(event: "resume", command: resumeCommand()), pretty: false) }
            standardError(line + "\n")
            throw ExitCode(CLI.interrupted)
        }
        if json {
            try console.json(EventPrinter.Line(event: "done", epochs: summary.epochsRun, steps: summary.steps, trainLosses: summary.trainLosses,
                                               valLosses: summary.valLosses, skipped: summary.skipped, output: summary.output,
                                               checkpoint: summary.checkpoint), pretty: false)
            return
        }
        let losses = summary.trainLosses.map { String(format: "%.4f", $0) }.joined(separator: ", ")
        let vals = summary.valLosses.map { String(format: "%.4f", $0) }.joined(separator: ", ")
        print("trained \(summary.epochsRun) epoch(s), \(summary.steps) steps; train loss per epoch [\(losses)]"
              + (vals.isEmpty ? "" : "; validation [\(vals)]") + "; \(summary.skipped) skipped")
        print("wrote \(summary.output) (checkpoint \(summary.checkpoint))")
    }
}

/// Prints training events: a progress line and messages on stderr, or JSON lines on stdout.
final class EventPrinter {
    /// One JSON line.
    struct Line: Encodable {
        var event: String
        var epoch: Int? = nil, epochs: Int? = nil, step: Int? = nil, steps: Int? = nil, globalStep: Int? = nil
        var loss: Float? = nil, imagesPerSecond: Double? = nil, eta: Double? = nil, best: Bool? = nil
        var message: String? = nil, files: [String]? = nil, command: String? = nil
        var trainLosses: [Float]? = nil, valLosses: [Float]? = nil, skipped: Int? = nil
        var output: String? = nil, checkpoint: String? = nil
        var pairs: Int? = nil, heldOut: Int? = nil, trainable: Int? = nil, resumedAfterEpoch: Int? = nil

        init(event: String) { self.event = event }
        init(event: String, command: String) { self.event = event; self.command = command }
        init(event: String, epochs: Int, steps: Int, trainLosses: [Float], valLosses: [Float], skipped: Int, output: String, checkpoint: String) {
            self.event = event
            (self.epochs, self.steps, self.trainLosses, self.valLosses) = (epochs, steps, trainLosses, valLosses)
            (self.skipped, self.output, self.checkpoint) = (skipped, output, checkpoint)
        }

        enum CodingKeys: String, CodingKey {
            case event, epoch, epochs, step, steps, loss, eta, best, message, files, command, skipped, output, checkpoint, pairs, trainable
            case globalStep = "global_step", imagesPerSecond = "images_per_second", trainLosses = "train_losses"
            case valLosses = "val_losses", heldOut = "held_out", resumedAfterEpoch = "resumed_after_epoch"
        }
    }

    let console: Console
    let json: Bool
    let patience: Int
    let tty = isatty(2) != 0
    var lastLine = Date.distantPast
    var lineOpen = false

    init(console: Console, json: Bool, patience: Int) { (self.console, self.json, self.patience) = (console, json, patience) }

    func emit(_ l: Line) { try? console.json(l, pretty: false) }

    /// Ends a live progress line before a message.
    func say(_ s: String) {
        if lineOpen { standardError("\n"); lineOpen = false }
        standardError(s + "\n")
    }

    func start(model: String, trainer: Trainer, freeze: Trainer.Freeze?, resume: String?) {
        if json {
            var l = Line(event: "start")
            (l.pairs, l.heldOut, l.trainable) = (trainer.trainCount, trainer.valCount, trainer.trainableParameters)
            if resume != nil { l.resumedAfterEpoch = trainer.resumedEpoch }
            emit(l)
        }
        if !console.quiet {
            say("training \(model): \(trainer.trainCount) pairs, \(trainer.valCount) held out; \(trainer.trainableParameters) trainable parameters"
                + (freeze.map { " (\($0.rawValue) encoder frozen)" } ?? "")
                + (resume.map { "; resumed from \($0) " + (trainer.resumedStep > 0 ? "in epoch \(trainer.resumedEpoch + 1) after step \(trainer.resumedStep)"
                                                                                   : "after epoch \(trainer.resumedEpoch)") } ?? ""))
        }
    }

    func print(_ event: Trainer.Event) {
        switch event {
        case let .step(epoch, epochs, step, steps, global, loss, ips, eta):
            if json {
                var l = Line(event: "step")
                (l.epoch, l.epochs, l.step, l.steps, l.globalStep, l.loss, l.imagesPerSecond, l.eta) = (epoch, epochs, step, steps, global, loss, ips, eta)
                emit(l)
                return
            }
            guard !console.quiet else { return }
            let now = Date()
            guard tty || step == steps || now.timeIntervalSince(lastLine) > 10 else { return }
            lastLine = now
            let width = 24, filled = steps > 0 ? min(width, step * width / steps) : width
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            let line = String(format: "epoch %d/%d step %d/%d [%@] loss %.4f  %.1f img/s  ETA %@",
                              epoch, epochs, step, steps, bar, loss, ips, formatDuration(eta))
            if tty { standardError("\r\u{1B}[K" + line); lineOpen = true } else { standardError(line + "\n") }
        case let .validation(epoch, loss, best):
            if json { var l = Line(event: "validation"); (l.epoch, l.loss, l.best) = (epoch, loss, best); emit(l); return }
            say(String(format: "epoch %d: validation loss %.4f%@", epoch, loss, best ? " (best)" : ""))
        case let .checkpoint(path):
            if json { var l = Line(event: "checkpoint"); l.checkpoint = path; emit(l); return }
            if !console.quiet { say("checkpoint: \(path)") }
        case let .skipped(lines):
            if json { var l = Line(event: "skipped"); l.files = lines; emit(l); return }
            say("\(console.command): warning: skipped \(lines.count):")
            for s in lines.prefix(10) { standardError("  " + s + "\n") }
            if lines.count > 10 { standardError("  ... and \(lines.count - 10) more\n") }
        case let .earlyStop(epoch):
            if json { var l = Line(event: "early_stop"); l.epoch = epoch; emit(l); return }
            say("early stop after epoch \(epoch): no better validation loss for \(patience) epochs")
        case let .warning(message):
            if json { var l = Line(event: "warning"); l.message = message; emit(l) }
            say("\(console.command): warning: \(message)")
        case let .interrupted(epoch, step, checkpoint):
            if json { var l = Line(event: "interrupted"); (l.epoch, l.step, l.checkpoint) = (epoch, step, checkpoint); emit(l) }
            say((step == 0 ? "interrupted after epoch \(epoch - 1)" : "interrupted in epoch \(epoch) at step \(step)")
                + "; \(checkpoint) holds the weights so far (every command can open it)")
        }
    }
}

/// Quotes an argument for a POSIX shell when it needs it.
func shellQuote(_ s: String) -> String {
    let safe = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%")
    if !s.isEmpty && s.allSatisfy({ safe.contains($0) }) { return s }
    return "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
}
