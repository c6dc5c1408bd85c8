import ArgumentParser
import Foundation
import LiteCLIP
import TensorIO

/// Thin CLI over `Exporter.export`.
struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a .lcw back as a PyTorch state dict (.pt) or safetensors that the seed's CLIP loads with strict=True.",
        discussion: """
            The keys are the seed's state_dict names in its order, without any wrapper prefix; \
            float tensors are written as --dtype (default f32). The .pt is what torch.save writes \
            (zip format) and loads with torch.load(OUT, weights_only=True). A model without BERT's \
            pooler (converted from ONNX) is refused unless --allow-missing-pooler; a partial ONNX \
            conversion is always refused. A failed export leaves no output file (formats/export.md).
            """)

    @Argument(help: "The .lcw model.") var model: String
    @Argument(help: "The file to write.") var out: String
    @Option(help: "pt (torch.save zip) or safetensors.") var format = "pt"
    @Option(help: "Storage dtype for float tensors: f32, f16 or bf16.") var dtype = "f32"
    @Flag(name: .customLong("allow-missing-pooler"), help: "Export a model without BERT's (unused) pooler; load it with strict=False.")
    var allowMissingPooler = false

    func validate() throws {
        if Exporter.Format(rawValue: format) == nil { throw ValidationError("--format must be pt or safetensors") }
        if !["f32", "f16", "bf16"].contains(dtype) { throw ValidationError("--dtype must be f32, f16 or bf16") }
    }

    func run() throws {
        AtomicFile.installSignalCleanup()
        let start = Date()
        let r: Exporter.Report
        do {
            r = try Exporter.export(model: model, to: out, format: Exporter.Format(rawValue: format) ?? .pt,
                                    dtype: DType(rawValue: dtype), allowMissingPooler: allowMissingPooler)
        } catch {
            throw fail("export", error)
        }
        let dt = r.dtypes.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.value) \($0.key.rawValue)" }.joined(separator: ", ")
        print("exported \(r.input) -> \(r.output) in \(String(format: "%.2f", Date().timeIntervalSince(start))) s")
        print("  format:  \(r.format == .pt ? "pt (torch.save zip; torch.load(..., weights_only=True))" : "safetensors")")
        print("  tensors: \(r.tensorCount) (\(dt)), \(r.parameterCount) parameters, \(byteString(r.dataBytes)) of data")
        print("  output:  \(byteString(r.fileBytes))")
        for n in r.notes { print("  note:    \(n)") }
    }

    private func byteString(_ n: Int) -> String {
        if n >= 1 << 20 { return String(format: "%.1f MiB", Double(n) / 1048576) }
        if n >= 1 << 10 { return String(format: "%.1f KiB", Double(n) / 1024) }
        return "\(n) B"
    }
}
