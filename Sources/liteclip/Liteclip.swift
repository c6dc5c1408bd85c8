import ArgumentParser
import Foundation
@_spi(Benchmark) import LiteCLIP
import TensorIO

@main
struct Liteclip: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "liteclip",
        abstract: "liteCLIP in Swift: inspect, verify against PyTorch, zero-shot classify, embed, benchmark, fine-tune, export back to PyTorch.",
        subcommands: [Inspect.self, Verify.self, ZeroShotCommand.self, Embed.self, Bench.self, Train.self, Export.self])
}

/// Thin CLI over `Inspection.inspect`.
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List every tensor of a .pt, .ckpt, .safetensors or .lcw file with dtype, shape and SHA-256.",
        discussion: """
            The SHA-256 is of each tensor's contiguous little-endian bytes in its stored dtype, \
            the same as hashlib.sha256(t.contiguous().numpy().tobytes()) in PyTorch, so two files \
            can be compared tensor by tensor without PyTorch.
            """)

    @Argument(help: "File to inspect.") var file: String
    @Flag(help: "Print JSON instead of a table.") var json = false

    func run() throws {
        do {
            let r = try Inspection.inspect(file)
            print(json ? try r.json() : r.text())
        } catch {
            FileHandle.standardError.write("liteclip inspect: error: \(error)\n".data(using: .utf8)!)
            throw ExitCode(1)
        }
    }
}

func fail(_ command: String, _ error: Error) -> ExitCode {
    FileHandle.standardError.write("liteclip \(command): error: \(error)\n".data(using: .utf8)!)
    return ExitCode(1)
}

/// Thin CLI over `Verification.run`.
struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the model on a reference file's inputs and compare with PyTorch's outputs.",
        discussion: """
            Prints max abs and max rel error per output; exits 1 beyond tolerance (logits 1e-4, \
            embeddings 1e-5). Make a reference for your own checkpoint with golden/make_reference.py.
            """)

    @Argument(help: "The .lcw model.") var model: String
    @Option(help: "Reference file written by golden/make_reference.py.") var reference: String

    func run() throws {
        let v: Verification
        do { v = try Verification.run(model: try LiteCLIPModel(path: model), reference: reference) } catch { throw fail("verify", error) }
        print(v.text())
        if !v.passed { throw ExitCode(1) }
    }
}

/// Thin CLI over `LiteCLIPModel.zeroShot`.
struct ZeroShotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "zero-shot",
        abstract: "Classify an image against text labels, as the seed's ZeroShotPipeline.predict.")

    @Argument(help: "The .lcw model.") var model: String
    @Argument(help: "A JPEG or PNG image.") var image: String
    @Argument(help: "Two or more labels, e.g. \"a photo of a cat\".") var labels: [String]
    @Option(name: .customLong("top-k"), help: "Show the best N labels (default: all).") var topK: Int?
    @Flag(help: "Print JSON: labels, logits, probabilities and the ranking.") var json = false

    func validate() throws {
        if labels.count < 2 { throw ValidationError("provide at least 2 labels") }
        if let k = topK, k < 1 { throw ValidationError("--top-k must be at least 1") }
    }

    func run() throws {
        let r: ZeroShotReport
        do { r = try LiteCLIPModel(path: model).zeroShot(imagePath: image, labels: labels, topK: topK) } catch { throw fail("zero-shot", error) }
        if json {
            let obj: [String: Any] = [
                "image": image, "labels": labels,
                "logits": r.logits.map(Double.init), "probabilities": r.probabilities.map(Double.init),
                "ranking": r.ranking.map { ["label": $0.label, "logit": Double($0.logit), "probability": Double($0.probability)] as [String: Any] },
            ]
            let data = try JSONSerialization.data(withJSONObject: obj, options: [.prettyPrinted, .sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            for e in r.ranking { print("\(e.label): \(String(format: "%.2f", e.probability * 100))%") }
        }
    }
}

/// Thin CLI over `Embedder`.
struct Embed: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write L2-normalised embeddings of images or texts to a float32 .npy (one row per input, in order).",
        discussion: "The input names go to OUT with the extension .names.json beside it (formats/embeddings.md).")

    @Argument(help: "The .lcw model.") var model: String
    @Option(parsing: .upToNextOption, help: "Image files or folders (JPEG, PNG; folders are read in sorted order).") var images: [String] = []
    @Option(parsing: .upToNextOption, help: "Texts to embed.") var texts: [String] = []
    @Option(name: .customLong("batch-size"), help: "Inputs per forward pass.") var batchSize = 16
    @Option(help: "Output .npy file.") var out: String
    @Flag(name: .shortAndLong, help: "No progress on stderr.") var quiet = false

    func validate() throws {
        if images.isEmpty == texts.isEmpty { throw ValidationError("give --images or --texts (one of them)") }
        if batchSize < 1 { throw ValidationError("--batch-size must be at least 1") }
    }

    func run() throws {
        AtomicFile.installSignalCleanup()
        do {
            let m = try LiteCLIPModel(path: model)
            let show = !quiet
            let report: (Int, Int) -> Void = { done, total in
                if show && total > batchSize { FileHandle.standardError.write("embedded \(done)/\(total)\n".data(using: .utf8)!) }
            }
            let names = images.isEmpty ? texts : try Embedder.imageFiles(images)
            let rows = images.isEmpty ? Embedder.texts(texts, model: m, batchSize: batchSize, progress: report)
                                      : try Embedder.images(names, model: m, batchSize: batchSize, progress: report)
            try NPYWriter.write(rows, rows: names.count, columns: m.config.projectionDim, to: out)
            let namesPath = (out as NSString).deletingPathExtension + ".names.json"
            let data = try JSONSerialization.data(withJSONObject: names, options: [.prettyPrinted])
            let f = try AtomicFile(path: namesPath)
            try data.withUnsafeBytes { try f.write($0) }
            try f.commit()
            print("wrote \(names.count) x \(m.config.projectionDim) embeddings to \(out) and their names to \(namesPath)")
        } catch {
            throw fail("embed", error)
        }
    }
}

/// Thin CLI over `InferenceBenchmark.run`; scripts/bench-inference puts PyTorch and ONNX
/// Runtime beside it.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time the inference workloads (image tower batch 1/8, text tower batch 8/64, a full forward).")

    @Argument(help: "The .lcw model (full size for meaningful figures).") var model: String
    @Option(help: "Timed repetitions per workload (best is reported).") var reps = 3
    @Flag(help: "One JSON object per line.") var json = false
    @Option(name: .customLong("train-batch"), help: "Instead: time training steps (forward, backward, Adam) at this batch size; reports the best of --reps steps after one untimed step, and peak memory.")
    var trainBatch: Int?
    @Flag(name: .customLong("no-fused"), help: "Run ConvNeXt's plain path instead of the fused inference path (to measure the fusion).")
    var noFused = false

    func run() throws {
        if let b = trainBatch {
            let r: TrainBenchmark.Result
            do { r = try TrainBenchmark.run(modelPath: model, batch: b, steps: reps) } catch { throw fail("bench", error) }
            if json {
                print("{\"name\": \"train step, batch \(b)\", \"seconds\": \(r.seconds), \"peak_rss_bytes\": \(r.peakRSSBytes)}")
            } else {
                print(String(format: "train step, batch %d: %.3f s (best of %d), peak RSS %.2f GiB", b, r.seconds, r.steps, Double(r.peakRSSBytes) / Double(1 << 30)))
            }
            return
        }
        let m: LiteCLIPModel
        do { m = try InferenceBenchmark.load(path: model, fused: !noFused) } catch { throw fail("bench", error) }
        for r in InferenceBenchmark.run(model: m, reps: reps) {
            if json {
                print("{\"name\": \"\(r.name)\", \"seconds\": \(r.seconds), \"gflop\": \(r.gflop), \"gflops\": \(r.gflops)}")
            } else {
                print(r.name.padding(toLength: 36, withPad: " ", startingAt: 0) + String(format: "%8.3f s  %7.1f GFLOP/s", r.seconds, r.gflops))
            }
        }
    }
}
