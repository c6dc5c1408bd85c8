#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import LiteCLIP
import TensorIO

/// What `liteclip convert` and `liteclip-convert` take.
struct ConvertArguments: ParsableArguments {
    @Argument(help: "The checkpoint to read: .pt/.pth/.bin/.ckpt (PyTorch zip or legacy format, also Lightning and DDP wrappers), .safetensors or .onnx.")
    var input: String
    @Argument(help: "The .lcw file to write.") var output: String
    @Option(help: "Storage type of the float tensors (default: keep the checkpoint's); int8: the weights of every Linear, pointwise and patch layer and the word embeddings as int8 with per-row scales, the rest f32 (as liteclip quantize).") var dtype: StorageType?
    @OptionGroup var modelOptions: ModelOptions
    @Flag(name: .customLong("allow-unexpected"), help: "Drop (and list) tensors that are not liteCLIP parameters instead of failing.")
    var allowUnexpected = false
    @OptionGroup var output_: OutputOptions

    static let discussion = """
        The input format is read from the file's bytes, never from its name, and nothing in it is \
        ever executed. Without --vocab/--tokenizer and --text-config, vocab.txt (or tokenizer.json) \
        and config.json are taken from the checkpoint's folder. The .lcw holds the weights, the \
        model's sizes, the tokenizer and the image preprocessing, so it runs on its own. A failed \
        or interrupted conversion leaves no output file.
        """

    func run(command: String) throws {
        let console = Console(command: command, quiet: output_.quiet)
        try Paths.checkInput(input, what: "checkpoint")
        for f in modelOptions.files { try Paths.checkInput(f) }
        try Paths.checkOutput(output, inputs: [input] + modelOptions.files)
        AtomicFile.installSignalCleanup()
        var opts = modelOptions.converter
        opts.dtype = dtype?.dtype
        opts.allowUnexpected = allowUnexpected
        let start = Date()
        let tty = isatty(2) != 0
        var lastPercent = -1
        let report = try Converter.convert(input: input, output: output, options: opts) { done, total in
            guard !console.quiet, !output_.json || tty, total >= 32 << 20 else { return }
            let pct = total == 0 ? 100 : done * 100 / total
            let step = tty ? 2 : 25           // a live line on a terminal, a few lines in a log
            if pct / step != lastPercent / step {
                lastPercent = pct
                let line = "writing \(output): \(pct)% of \(formatBytes(total))"
                standardError((tty ? "\r" : "") + line + (tty && done < total ? "" : "\n"))
            }
        }
        let seconds = Date().timeIntervalSince(start)
        if output_.json { try console.json(ConvertReport(report, seconds: seconds)) } else { print(report.text(seconds: seconds)) }
    }
}

/// `liteclip convert IN OUT`.
struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a checkpoint (.pt, .ckpt, .safetensors, .onnx) to a self-contained .lcw model file.",
        discussion: ConvertArguments.discussion)
    @OptionGroup var arguments: ConvertArguments
    func run() throws { try arguments.run(command: "liteclip convert") }
}

/// `liteclip-convert IN OUT`: the same as `liteclip convert`.
public struct LiteclipConvert: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "liteclip-convert",
        abstract: "Convert a liteCLIP checkpoint (.pt, .ckpt, .safetensors, .onnx) to a self-contained .lcw model file.",
        discussion: ConvertArguments.discussion + "\n\nExit status: 0 success, 1 bad input, 2 usage error, 130 interrupted.",
        version: LiteCLIPVersion.string)
    @OptionGroup var arguments: ConvertArguments
    public init() {}
    public func run() throws { try arguments.run(command: "liteclip-convert") }
}

/// `--json` output of a conversion.
struct ConvertReport: Encodable {
    let input: String, output: String, format: String, wrapper: String?, keyPrefix: String
    let sourceSHA256: String, sourceBytes: Int, tokenizer: String, textConfig: String?
    let config: LiteCLIPConfig, tensors: Int, parameters: Int, dtypes: [String: Int], dataBytes: Int, fileBytes: Int
    let ignored: [String], elsewhere: [String], notes: [String], partial: [String], seconds: Double

    init(_ r: Converter.Report, seconds: Double) {
        (input, output, format, wrapper, keyPrefix) = (r.input, r.output, r.format.rawValue, r.wrapper, r.keyPrefix)
        (sourceSHA256, sourceBytes, tokenizer, textConfig) = (r.sourceSHA256, r.sourceBytes, r.tokenizerFile, r.textConfigFile)
        (config, tensors, parameters, dataBytes, fileBytes) = (r.config, r.tensorCount, r.parameterCount, r.dataBytes, r.fileBytes)
        dtypes = Dictionary(uniqueKeysWithValues: r.dtypes.map { ($0.key.rawValue, $0.value) })
        (ignored, elsewhere, notes, partial, self.seconds) = (r.ignored, r.elsewhere, r.notes, r.partial, seconds)
    }

    enum CodingKeys: String, CodingKey {
        case input, output, format, wrapper, config, tensors, parameters, dtypes, ignored, elsewhere, notes, partial, seconds, tokenizer
        case keyPrefix = "key_prefix", sourceSHA256 = "source_sha256", sourceBytes = "source_bytes", textConfig = "text_config"
        case dataBytes = "data_bytes", fileBytes = "file_bytes"
    }
}

extension Converter.Report {
    func text(seconds: Double) -> String {
        let r = self, c = r.config
        let dt = r.dtypes.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.value) \($0.key.rawValue)" }.joined(separator: ", ")
        var lines = [
            "converted \(r.input) -> \(r.output) in \(String(format: "%.2f", seconds)) s",
            "  source:     \(r.format.rawValue), \(formatBytes(r.sourceBytes)), sha256 \(r.sourceSHA256)",
            "  weights:    \(r.wrapper ?? "at the top level"); key prefix \(r.keyPrefix.isEmpty ? "none" : "'\(r.keyPrefix)' (removed)")",
            "  tokenizer:  \(r.tokenizerFile)",
            "  text config: \(r.textConfigFile ?? "none found; attention heads = hidden/64 = \(c.text.numAttentionHeads)")",
            "  image:      ConvNeXt dims \(c.image.dims) depths \(c.image.depths)",
            "  text:       BERT hidden \(c.text.hiddenSize), layers \(c.text.numHiddenLayers), heads \(c.text.numAttentionHeads), intermediate \(c.text.intermediateSize), vocab \(c.text.vocabSize), positions \(c.text.maxPositionEmbeddings), eps \(c.text.layerNormEps)",
            "  projection: \(c.projectionDim)\(c.hasPooler ? "" : "; no BERT pooler in the checkpoint")",
            "  tensors:    \(r.tensorCount) (\(dt)), \(r.parameterCount) parameters, \(formatBytes(r.dataBytes)) of data",
            "  output:     \(formatBytes(r.fileBytes))",
        ]
        lines.append("  ignored:    " + (r.ignored.isEmpty ? "none" : r.ignored.joined(separator: ", ")))
        if !r.elsewhere.isEmpty { lines.append("  elsewhere:  " + r.elsewhere.joined(separator: ", ") + ": not part of the weights, left out") }
        if !r.notes.isEmpty {
            lines.append("  from the graph (\(r.notes.count)):")
            lines += r.notes.prefix(8).map { "    " + $0 }
            if r.notes.count > 8 { lines.append("    ... and \(r.notes.count - 8) more") }
        }
        if !r.partial.isEmpty {
            lines.append("  PARTIAL: the source does not hold these; inference up to \(c.text.maxPositionEmbeddings) tokens with token type 0 is exact:")
            lines += r.partial.map { "    " + $0 }
        }
        return lines.joined(separator: "\n")
    }
}
