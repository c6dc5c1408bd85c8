#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TensorIO

/// `liteclip export`: a model (a `.lcw`, a training checkpoint, or any checkpoint we read) back to a PyTorch state dict (`torch.save` zip) or safetensors
/// that the seed's `CLIP` loads with `load_state_dict(strict=True)` (formats/export.md).
///
/// The tensors are exactly the `.lcw`'s: the seed's `state_dict()` names (no wrapper prefix)
/// in its order, with their shapes; float tensors are written in the requested dtype.
public enum Exporter {
    public enum Format: String, CaseIterable, Sendable, Codable {
        /// `torch.save` zip format, for `torch.load(path, weights_only=True)`.
        case pt
        /// `.safetensors`, for `safetensors.torch.load_file(path)`.
        case safetensors

        /// The format a file name calls for: `.safetensors`, or `.pt` / `.pth` / `.bin`; nil for others.
        public init?(fileName: String) {
            switch (fileName as NSString).pathExtension.lowercased() {
            case "safetensors": self = .safetensors
            case "pt", "pth", "bin": self = .pt
            default: return nil
            }
        }
    }

    public struct Report {
        public var input: String
        public var output: String
        public var format: Format
        public var dtypes: [DType: Int]
        public var tensorCount: Int
        public var parameterCount: Int
        public var dataBytes: Int
        public var fileBytes: Int
        /// False when BERT's pooler was absent and the export was allowed anyway.
        public var hasPooler: Bool
        /// What the user must know to load the result (e.g. strict=False without the pooler).
        public var notes: [String] = []
    }

    /// Writes the model at `path` to `out`.
    ///
    /// - Parameters:
    ///   - dtype: storage dtype of the float tensors: f32, f16, bf16 or f64; nil is f32, the
    ///     seed's dtype (widening an f16/bf16 `.lcw` is exact).
    ///   - allowMissingPooler: export a model without BERT's pooler (e.g. converted from ONNX,
    ///     whose exporters drop it) instead of refusing; the result then needs
    ///     `load_state_dict(sd, strict=False)`.
    /// - Throws: `ModelError.mapping` for a model the seed's `CLIP` cannot load strictly (a
    ///   partial ONNX conversion; no pooler unless allowed), `ModelError.badConfig` for a non-float
    ///   dtype or an output that is the input; `ReadError` from reading or writing. A failed
    ///   export leaves nothing at `out`.
    public static func export(model path: String, to out: String, format: Format, dtype: DType?,
                              allowMissingPooler: Bool = false, options: Converter.Options = .init()) throws -> Report {
        try export(ModelSource.open(path, options: options), file: path, to: out, format: format, dtype: dtype,
                   allowMissingPooler: allowMissingPooler)
    }

    /// As `export(model:...)`, for a model already opened (`file` names it in errors and the report).
    public static func export(_ model: ModelSource.Loaded, file path: String, to out: String, format: Format, dtype: DType?,
                              allowMissingPooler: Bool = false) throws -> Report {
        let to = dtype ?? .f32
        guard to.isFloatingPoint else {
            throw ModelError(.badConfig, file: out, "export dtype must be a float type (f32, f16, bf16), not \(to.rawValue)")
        }
        if sameFile(path, out) { throw ModelError(.badConfig, file: out, "output would overwrite the input") }
        let meta = model.metadata
        if meta.quantization != nil || model.tensors.contains(where: { $0.dtype == .i8 }) {
            throw ModelError(.badConfig, file: path,
                             "an int8 model (liteclip quantize) is not exported: PyTorch's liteCLIP has no int8 weights, and "
                             + "dequantised weights would pass for trained ones while differing from them; export the f32 model it came from")
        }

        // The seed's CLIP must accept the tensors as they are.
        if let partial = meta.source.partial {
            var e = ModelError(.mapping, file: path,
                               "converted with --allow-partial from a default-optimised dynamo ONNX export (\(meta.source.file)): "
                               + "its embeddings were rebuilt smaller than the seed's, so the seed's CLIP cannot load them; "
                               + "convert the original .pt, or an ONNX exported with optimize=False, and export that")
            e.mismatched = partial
            throw e
        }
        var notes: [String] = []
        if !meta.model.hasPooler {
            let pooler = LiteCLIPParameters.expected(for: meta.model).filter { !$0.required }.map { "\($0.name) \($0.shape)" }
            guard allowMissingPooler else {
                var e = ModelError(.mapping, file: path,
                                   "the model has no BERT pooler (source: \(meta.source.format) \(meta.source.file); ONNX exports drop it), "
                                   + "so load_state_dict(strict=True) would fail on the missing tensors below; "
                                   + "pass --allow-missing-pooler to export anyway and load with strict=False (liteCLIP never uses the pooler)")
                e.missing = pooler
                throw e
            }
            notes.append("no BERT pooler: load with load_state_dict(sd, strict=False); missing " + pooler.joined(separator: ", ")
                         + " (unused by liteCLIP's mean pooling)")
        }

        var dtypes: [DType: Int] = [:]
        let tensors: [Checkpoint.Tensor] = model.tensors.map { t in
            let target = t.dtype.isFloatingPoint ? to : t.dtype
            dtypes[target, default: 0] += 1
            if target == t.dtype { return t }
            return Checkpoint.Tensor(name: t.name, dtype: target, shape: t.shape, origin: t.origin) {
                let source = try t.load()
                defer { source.releasePages() }   // the writer releases only what it is handed
                return DTypeConversion.convert(source, from: t.dtype, to: target)
            }
        }
        let fileBytes: Int
        switch format {
        case .pt:
            fileBytes = try TorchWriter.write(to: out, tensors: tensors)
        case .safetensors:
            fileBytes = try SafetensorsWriter.write(to: out, tensors: tensors, metadata: ["format": "pt"])
        }
        return Report(input: path, output: out, format: format, dtypes: dtypes, tensorCount: tensors.count,
                      parameterCount: tensors.reduce(0) { $0 + $1.elementCount },
                      dataBytes: tensors.reduce(0) { $0 + $1.byteCount }, fileBytes: fileBytes,
                      hasPooler: meta.model.hasPooler, notes: notes)
    }

    /// True when `b` exists and is the same file as `a` (same device and inode: also through
    /// links and different spellings of the path).
    static func sameFile(_ a: String, _ b: String) -> Bool {
        var sa = stat(), sb = stat()
        guard stat(a, &sa) == 0, stat(b, &sb) == 0 else { return false }
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
    }
}
