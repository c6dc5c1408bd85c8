import ArgumentParser
import Foundation
import LiteCLIP
import TensorIO

extension Exporter.Format: ExpressibleByArgument {}

/// Thin CLI over `Exporter.export`.
struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a model back as a PyTorch state dict (.pt) or safetensors that PyTorch's liteCLIP loads with strict=True.",
        discussion: """
            The format follows OUT's extension: .safetensors writes safetensors (load with \
            safetensors.torch.load_file), .pt, .pth or .bin a torch.save zip (load with \
            torch.load(OUT, weights_only=True)); --format overrides for other names, and an \
            extension that says otherwise is an error. The keys are liteCLIP's state_dict names in \
            its order, without any wrapper prefix; float tensors are written as --dtype (default \
            f32). A model without BERT's pooler (converted from ONNX) is refused unless \
            --allow-missing-pooler; a partial ONNX conversion is always refused. A failed export \
            leaves no output file.
            """)

    @Argument(help: "The model: any format liteclip reads (e.g. a fine-tuned .lcw, or a training checkpoint OUT.ckpt).") var model: String
    @Argument(help: "The file to write (.pt, .pth, .bin or .safetensors).") var out: String
    @Option(help: "The output format, when OUT's extension does not say it.") var format: Exporter.Format?
    @Option(help: "Storage type of the float tensors.") var dtype: FloatType = .f32
    @Flag(name: .customLong("allow-missing-pooler"), help: "Export a model without BERT's (unused) pooler; load it with strict=False.")
    var allowMissingPooler = false
    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var output: OutputOptions

    /// The format from the flag and the extension; a contradiction is a usage error.
    func resolvedFormat() throws -> Exporter.Format {
        let byName = Exporter.Format(fileName: out)
        switch (format, byName) {
        case let (f?, n?) where f != n:
            throw ValidationError("--format \(f.rawValue) contradicts the output name \(out) (\(n.rawValue)); change one of them")
        case let (f?, _): return f
        case let (nil, n?): return n
        case (nil, nil):
            throw ValidationError("cannot tell the format from the name \(out): use .pt or .safetensors, or give --format pt|safetensors")
        }
    }

    func validate() throws { _ = try resolvedFormat() }

    struct Report: Encodable {
        let input: String, output: String, format: Exporter.Format, dtypes: [String: Int]
        let tensors: Int, parameters: Int, dataBytes: Int, fileBytes: Int, notes: [String], seconds: Double
        enum CodingKeys: String, CodingKey {
            case input, output, format, dtypes, tensors, parameters, notes, seconds
            case dataBytes = "data_bytes", fileBytes = "file_bytes"
        }
    }

    func run() throws {
        let console = Console(command: "liteclip export", quiet: output.quiet)
        try Paths.checkInput(model, what: "model")
        try Paths.checkOutput(out, inputs: [model] + modelOptions.files)
        AtomicFile.installSignalCleanup()
        let start = Date()
        let loaded = try modelOptions.open(model, console)
        let r = try Exporter.export(loaded, file: model, to: out, format: resolvedFormat(), dtype: dtype.dtype,
                                    allowMissingPooler: allowMissingPooler)
        let seconds = Date().timeIntervalSince(start)
        if output.json {
            try console.json(Report(input: r.input, output: r.output, format: r.format,
                                    dtypes: Dictionary(uniqueKeysWithValues: r.dtypes.map { ($0.key.rawValue, $0.value) }),
                                    tensors: r.tensorCount, parameters: r.parameterCount, dataBytes: r.dataBytes, fileBytes: r.fileBytes,
                                    notes: r.notes, seconds: seconds))
            return
        }
        let dt = r.dtypes.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.value) \($0.key.rawValue)" }.joined(separator: ", ")
        print("exported \(r.input) -> \(r.output) in \(String(format: "%.2f", seconds)) s")
        print("  format:  \(r.format == .pt ? "pt (torch.save zip; torch.load(..., weights_only=True))" : "safetensors (safetensors.torch.load_file)")")
        print("  tensors: \(r.tensorCount) (\(dt)), \(r.parameterCount) parameters, \(formatBytes(r.dataBytes)) of data")
        print("  output:  \(formatBytes(r.fileBytes))")
        for n in r.notes { print("  note:    \(n)") }
    }
}
