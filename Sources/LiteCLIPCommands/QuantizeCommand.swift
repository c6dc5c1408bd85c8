import ArgumentParser
import Foundation
import LiteCLIP
import TensorIO

/// Thin CLI over `Quantizer.quantize`.
struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write an int8 model: a quarter of the weights' size, and faster where the CPU has AVX-512 VNNI.",
        discussion: """
            The weights of every Linear, pointwise and patch convolution and the word embeddings \
            are stored as int8, symmetric, with one f32 scale per output channel (per token for \
            the embeddings); norms, biases, layer scales, the depthwise kernels, the position and \
            token-type embeddings and logit_scale stay f32 (formats/lcw.md, "int8 weights"). \
            Activations are quantised per image position or token as the model runs. Same as \
            liteclip-convert --dtype int8 on a checkpoint. An int8 model runs every inference \
            command; `train` refuses it (train the f32 model, then quantize) and `export` \
            refuses it (PyTorch's liteCLIP has no int8 weights). A failed run leaves no output file.
            """)

    @Argument(help: "The f32 (or f16 / bf16) .lcw model.") var model: String
    @Argument(help: "The int8 .lcw to write.") var out: String
    @OptionGroup var output: OutputOptions

    struct Report: Encodable {
        let input: String, output: String, quantized: Int, kept: Int, inputBytes: Int, fileBytes: Int, seconds: Double
        enum CodingKeys: String, CodingKey {
            case input, output, quantized, kept, seconds
            case inputBytes = "input_bytes", fileBytes = "file_bytes"
        }
    }

    func run() throws {
        let console = Console(command: "liteclip quantize", quiet: output.quiet)
        try Paths.checkInput(model, what: "model")
        try Paths.checkOutput(out, inputs: [model])
        AtomicFile.installSignalCleanup()
        let start = Date()
        let r = try Quantizer.quantize(input: model, output: out)
        let seconds = Date().timeIntervalSince(start)
        if output.json {
            try console.json(Report(input: r.input, output: r.output, quantized: r.quantized, kept: r.kept, inputBytes: r.inputBytes,
                                    fileBytes: r.fileBytes, seconds: seconds))
            return
        }
        print("quantized \(r.input) -> \(r.output) in \(String(format: "%.2f", seconds)) s")
        print("  int8:    \(r.quantized) weights (each with f32 per-row scales); \(r.kept) tensors kept f32")
        print("  size:    \(formatBytes(r.fileBytes)) (\(String(format: "%.1f", 100 * Double(r.fileBytes) / Double(max(r.inputBytes, 1))))% of \(formatBytes(r.inputBytes)))")
    }
}
