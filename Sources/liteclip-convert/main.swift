import ArgumentParser
import Foundation
import LiteCLIP
import TensorIO

/// Thin CLI over `Converter.convert`: parses, prints, picks exit codes.
@main
struct LiteclipConvert: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "liteclip-convert",
        abstract: "Convert a liteCLIP checkpoint (.pt zip or legacy, safetensors) to a self-contained .lcw file.",
        discussion: """
            The input format is detected from the file's bytes. Without --vocab/--tokenizer and \
            --text-config, vocab.txt (or tokenizer.json) and config.json are taken from the \
            checkpoint's folder. Nothing from the input is ever executed; a failed conversion \
            leaves no output file.
            """)

    @Argument(help: "Checkpoint to read (liteclip2.pt, .ckpt, .safetensors).") var input: String
    @Argument(help: "The .lcw file to write.") var output: String
    @Option(help: "Storage dtype for float tensors: f32, f16 or bf16 (default: keep the checkpoint's).")
    var dtype: String?
    @Option(help: "BERT WordPiece vocabulary (vocab.txt).") var vocab: String?
    @Option(help: "Hugging Face tokenizer.json (used instead of --vocab).") var tokenizer: String?
    @Option(name: .customLong("text-config"), help: "BERT config.json (attention heads, LayerNorm eps).") var textConfig: String?
    @Flag(name: .customLong("allow-unexpected"), help: "Drop (and list) tensors that are not liteCLIP parameters instead of failing.")
    var allowUnexpected = false
    @Flag(name: .customLong("allow-partial"), help: ArgumentHelp(
        "ONNX from torch.onnx.export(dynamo=True) with its default optimisation: rebuild the folded position and token-type embedding lookups instead of refusing the file.",
        discussion: "The result is exact for sequences up to the exported length with token type 0 (how liteCLIP runs); the missing rows are recorded in the .lcw."))
    var allowPartial = false
    @Flag(name: .shortAndLong, help: "No progress on stderr.") var quiet = false

    func validate() throws {
        if let d = dtype, !["f32", "f16", "bf16"].contains(d) { throw ValidationError("--dtype must be f32, f16 or bf16") }
        if vocab != nil && tokenizer != nil { throw ValidationError("give --vocab or --tokenizer, not both") }
    }

    func run() throws {
        AtomicFile.installSignalCleanup()
        var opts = Converter.Options()
        opts.dtype = dtype.flatMap(DType.init(rawValue:))
        opts.vocabPath = vocab
        opts.tokenizerPath = tokenizer
        opts.textConfigPath = textConfig
        opts.allowUnexpected = allowUnexpected
        opts.allowPartial = allowPartial
        let start = Date()
        let showProgress = !quiet
        let tty = isatty(2) != 0
        var lastPercent = -1
        let report: Converter.Report
        do {
            report = try Converter.convert(input: input, output: output, options: opts) { done, total in
                guard showProgress, total >= 32 << 20 else { return }
                let pct = total == 0 ? 100 : done * 100 / total
                let step = tty ? 2 : 25           // a live line on a terminal, a few lines in a log
                if pct / step != lastPercent / step {
                    lastPercent = pct
                    let line = "writing \(output): \(pct)% of \(formatBytes(total))"
                    FileHandle.standardError.write(((tty ? "\r" : "") + line + (tty && done < total ? "" : "\n")).data(using: .utf8)!)
                }
            }
        } catch {
            FileHandle.standardError.write("liteclip-convert: error: \(error)\n".data(using: .utf8)!)
            throw ExitCode(1)
        }
        let elapsed = Date().timeIntervalSince(start)
        print(summary(report, seconds: elapsed))
    }
}

func formatBytes(_ n: Int) -> String {
    if n >= 1 << 20 { return String(format: "%.1f MiB", Double(n) / 1048576) }
    if n >= 1 << 10 { return String(format: "%.1f KiB", Double(n) / 1024) }
    return "\(n) B"
}

func summary(_ r: Converter.Report, seconds: Double) -> String {
    let c = r.config
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
