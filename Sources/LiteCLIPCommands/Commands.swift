import ArgumentParser
import Foundation
@_spi(Benchmark) import LiteCLIP
import TensorIO

/// `liteclip`: every command (docs/cli.md).
public struct Liteclip: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "liteclip",
        abstract: "Run, check, fine-tune and convert liteCLIP models (a ConvNeXt image encoder and a BERT text encoder trained together) without Python.",
        discussion: """
            MODEL can be any of: \(CLI.formats). A checkpoint that is not .lcw is converted in memory \
            (nothing is written) with vocab.txt or tokenizer.json and config.json from its folder, or \
            from --vocab/--tokenizer and --text-config.

            Images: JPEG, PNG and WebP. Exit status: 0 success, 1 bad input or a failed check, \
            2 usage error, 130 interrupted.
            """,
        version: LiteCLIPVersion.string,
        subcommands: [Convert.self, Inspect.self, Verify.self, ZeroShotCommand.self, Embed.self, Train.self, Export.self, Quantize.self, IndexCommand.self, Search.self, Bench.self])

    public init() {}
}

/// Thin CLI over `Inspection.inspect`.
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List every tensor of a model file with its dtype, shape and SHA-256.",
        discussion: """
            FILE: .lcw, .pt/.pth/.bin/.ckpt (PyTorch zip or legacy format), .safetensors or .onnx. \
            The SHA-256 is of each tensor's contiguous little-endian bytes in its stored dtype, the \
            same as hashlib.sha256(t.contiguous().numpy().tobytes()) in PyTorch, so two files can \
            be compared tensor by tensor. Every tensor in the file is listed by its full dotted path \
            (dict keys and list indices, e.g. optimizer_states.0.state.3.exp_avg), grouped by \
            top-level entry; classes kept as inert placeholders are named. A .lcw also shows its \
            model, tokenizer and preprocessing settings; an ONNX file its opsets, inputs, outputs, \
            operator counts, and the tensors held in Constant nodes.
            """)

    @Argument(help: "The file to inspect.") var file: String
    @Option(help: ArgumentHelp("Only tensors whose full dotted path starts with this, e.g. state_dict. or optimizer_states.0.", valueName: "prefix"))
    var filter: String?
    @OptionGroup var output: OutputOptions

    func run() throws {
        let console = Console(command: "liteclip inspect", quiet: output.quiet)
        try Paths.checkInput(file)
        let r = try Inspection.inspect(file, filter: filter)
        if output.json { try console.json(r) } else { print(r.text()) }
    }
}

/// Thin CLI over `Verification.run`.
struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the model against PyTorch: run a reference file's inputs and compare every output.",
        discussion: """
            Make the reference in your PyTorch environment with golden/make_reference.py (it stores \
            the images' pixel values, the token ids, PyTorch's outputs and the image file names). \
            For each output the table shows the largest absolute and relative error; the tolerance \
            applies to the absolute error (logits 1e-4, embeddings and probabilities 1e-5, features \
            1e-4 x their largest magnitude). When the image files the reference names are found \
            (relative to the reference's folder), they are decoded and preprocessed here and the \
            pixel values compared too (tolerance 1e-5), which checks the image pipeline on this \
            machine. An int8 model (liteclip quantize) is checked against the same f32 reference             with its own tolerances, printed with the table: features 5% of their largest             magnitude, embeddings 1 - cosine at most 0.005 per row, logits 0.01 x exp(logit_scale),             probabilities 0.01, and each image's top-1 text the reference's. Exit status 1 when             any value is beyond its tolerance.
            """)

    @Argument(help: "The model: any format liteclip reads.") var model: String
    @Option(help: ArgumentHelp("Reference file written by golden/make_reference.py.", valueName: "file")) var reference: String
    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var output: OutputOptions

    func run() throws {
        let console = Console(command: "liteclip verify", quiet: output.quiet)
        try Paths.checkInput(reference, what: "reference file")
        let v = try Verification.run(model: modelOptions.model(model, console), reference: reference)
        if output.json { try console.json(v) } else { print(v.text()) }
        if !v.passed { throw ExitCode(CLI.failure) }
    }
}

/// Thin CLI over `InferenceBenchmark` and `TrainBenchmark`; scripts/bench-inference puts
/// PyTorch and ONNX Runtime beside it.
extension InferenceBenchmark.KernelChoice: ExpressibleByArgument {}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time inference (image encoder at batch 1 and 8, text encoder at batch 8 and 64, a full forward) or training steps.",
        discussion: "Use a full-size model for meaningful figures; each figure is the best of --reps runs.")

    @Argument(help: "The model: any format liteclip reads.") var model: String
    @Option(help: "Timed repetitions per workload (the best is reported).") var reps = 3
    @Option(name: .customLong("train-batch"), help: ArgumentHelp("Time training steps (forward, backward, Adam) at this batch size instead, after one untimed step; also reports peak memory.", valueName: "n"))
    var trainBatch: Int?
    @Flag(name: .customLong("no-fused"), help: "Run the image encoder's plain path instead of the fused inference path (to measure the fusion).")
    var noFused = false
    @Option(help: ArgumentHelp("Matrix kernels: best (our sgemm, widest micro-kernel the CPU has), avx512, avx2, or openblas.", valueName: "k"))
    var kernels: InferenceBenchmark.KernelChoice = .best
    @Option(help: ArgumentHelp("Run only the workloads whose name contains this text (e.g. 'batch 1').", valueName: "text"))
    var only: String?
    @Flag(help: "Time each layer type of the image tower at batch 1 and 8 instead (seconds and GFLOP/s, the fused path).")
    var layers = false
    @OptionGroup var modelOptions: ModelOptions
    @Option(name: .customLong("index-rows"), help: ArgumentHelp("Time the photo index instead, on this many synthetic vectors (comma-separated sizes, e.g. 10000,100000,1000000): writing, loading, and a query by vector and by text.", valueName: "n,..."))
    var indexRows: String?
    @OptionGroup var output: OutputOptions

    func validate() throws {
        if reps < 1 { throw ValidationError("--reps must be at least 1") }
        if let r = indexRows, r.split(separator: ",").contains(where: { Int($0).map { $0 < 1 } ?? true }) {
            throw ValidationError("--index-rows takes positive row counts separated by commas, not '\(r)'")
        }
        if let b = trainBatch, b < 1 { throw ValidationError("--train-batch must be at least 1") }
    }

    struct Figure: Encodable {
        let name: String
        let seconds: Double
        var gflop: Double? = nil
        var gflops: Double? = nil
        var peakRSSBytes: Int? = nil
        enum CodingKeys: String, CodingKey { case name, seconds, gflop, gflops, peakRSSBytes = "peak_rss_bytes" }
    }

    func run() throws {
        let console = Console(command: "liteclip bench", quiet: output.quiet)
        let inUse = InferenceBenchmark.select(kernels)
        if kernels == .avx512 && !inUse.hasPrefix("avx512") { throw CLIFailure("this CPU has no AVX-512", hint: "use --kernels avx2 or best") }
        console.note("kernels: \(inUse)")
        if let b = trainBatch {
            // The copy is made from a file released right after: its mapped pages stay out of the peak.
            let trainable = try TrainableModel(modelOptions.open(model, console), file: model)
            let r = try TrainBenchmark.run(trainable, batch: b, steps: reps)
            if output.json {
                try console.json(Figure(name: "train step, batch \(b)", seconds: r.seconds, peakRSSBytes: r.peakRSSBytes), pretty: false)
            } else {
                print(String(format: "train step, batch %d: %.3f s (best of %d), peak RSS %.2f GiB", b, r.seconds, r.steps, Double(r.peakRSSBytes) / Double(1 << 30)))
            }
            return
        }
        let m = try InferenceBenchmark.load(modelOptions.open(model, console), file: model, fused: !noFused)
        if let indexRows {
            for n in indexRows.split(separator: ",").compactMap({ Int($0) }) {
                let r = try IndexBenchmark.run(model: m, rows: n, reps: reps)
                if output.json {
                    for (name, s) in [("write", r.insertSeconds), ("load", r.loadSeconds), ("query by vector", r.queryByVectorSeconds),
                                      ("query by text", r.queryByTextSeconds)] {
                        try console.json(Figure(name: "index \(n) rows: \(name)", seconds: s), pretty: false)
                    }
                } else {
                    print(String(format: "index %8d rows: write %7.2f s, load %6.3f s, query by vector %7.4f s, by text (encoding included) %7.4f s; file %.0f MB",
                                 n, r.insertSeconds, r.loadSeconds, r.queryByVectorSeconds, r.queryByTextSeconds, Double(r.fileBytes) / 1e6))
                }
            }
            return
        }
        if layers {
            for b in [1, 8] {
                for r in InferenceBenchmark.layers(model: m, batch: b, reps: reps) {
                    if output.json {
                        try console.json(Figure(name: "batch \(b): " + r.name, seconds: r.seconds, gflops: r.gflops), pretty: false)
                    } else {
                        print("batch \(b): " + r.name.padding(toLength: 40, withPad: " ", startingAt: 0) + String(format: "%8.4f s  %7.1f GFLOP/s", r.seconds, r.gflops))
                    }
                }
            }
            return
        }
        for r in InferenceBenchmark.run(model: m, reps: reps, only: only) {
            if output.json {
                try console.json(Figure(name: r.name, seconds: r.seconds, gflop: r.gflop, gflops: r.gflops), pretty: false)
            } else {
                print(r.name.padding(toLength: 36, withPad: " ", startingAt: 0) + String(format: "%8.3f s  %7.1f GFLOP/s", r.seconds, r.gflops))
            }
        }
    }
}
