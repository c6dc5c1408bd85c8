import Foundation
import LiteCLIP
import TensorIO

/// One entry point per input surface, on heap bytes (AddressSanitizer cannot see overruns
/// inside a memory map), running the code the CLIs run on a file. Used by the libFuzzer
/// targets (Sources/liteclip-fuzz, scripts/fuzz) and by the regression replay of
/// golden/fuzz/ in the ordinary test suite (FuzzRegressionTests). Errors are the expected
/// outcome for most inputs and are returned, never thrown past the caller; a crash, hang or
/// runaway allocation is a bug.
public enum FuzzEntry: String, CaseIterable, Sendable {
    /// The pickle interpreter on raw bytes (what torch's data.pkl and legacy files hold).
    case pickle
    /// A whole `.pt` (zip or legacy) through detection, reading, every tensor's bytes, and the
    /// liteCLIP mapping, as `liteclip inspect` and `liteclip-convert` do.
    case pt
    case safetensors
    /// Protobuf decoding, initializer extraction and the mapping back onto parameters.
    case onnx
    /// `.lcw` open + validation + tensor views + building the model, as `liteclip verify` does.
    case lcw
    /// JPEG/PNG/WebP decoding and the seed's preprocessing.
    case image
    /// The tokenizer on arbitrary UTF-8 (and invalid UTF-8, decoded with replacement).
    case tokenizer
    /// A `liteclip train` captions file (CSV or JSON lines, told apart by the first byte as for
    /// a file without a known extension), rows checked against an images folder that holds
    /// nothing, so only absolute image paths can resolve.
    case captions

    /// The tokenizer the `tokenizer` target uses (the seed's vocabulary), built once by the
    /// harness; without one the target does nothing.
    nonisolated(unsafe) public static var sharedTokenizer: BertTokenizer? = nil

    /// Runs the input through the surface; returns the error it ended in, if any.
    @discardableResult
    public func run(_ bytes: [UInt8]) -> Error? {
        do {
            switch self {
            case .pickle:
                try bytes.withUnsafeBytes { raw in
                    var m = PickleMachine(data: raw, file: "fuzz.pkl", entry: "data.pkl")
                    _ = try m.run()
                }
            case .pt, .safetensors:
                let source = ByteSource(copying: bytes, name: self == .pt ? "fuzz.pt" : "fuzz.safetensors")
                let ckpt = try TensorFile.read(source)
                for t in ckpt.tensors { _ = try t.load().sha256() }
                let mapping = try CheckpointMapping(ckpt, textConfig: nil)
                for t in mapping.tensors { _ = try t.load() }
            case .onnx:
                let model = try ONNXReader.read(ByteSource(copying: bytes, name: "fuzz.onnx"))
                for t in model.initializers { _ = try t.load().sha256() }
                let mapped = try ONNXParameters.stateDict(from: model, allowPartial: true)
                let mapping = try CheckpointMapping(mapped.checkpoint, textConfig: nil)
                for t in mapping.tensors { _ = try t.load() }
            case .lcw:
                let lcw = try LCWReader.read(ByteSource(copying: bytes, name: "fuzz.lcw"))
                for t in lcw.checkpoint.tensors { _ = try t.load() }
                _ = try LiteCLIPModel(try LiteCLIPFile.validate(lcw, file: "fuzz.lcw"))
            case .image:
                let img = try ImageDecoder.decode(bytes: bytes, name: "fuzz.img")
                _ = ImagePreprocessor(.seed).pixelValues(img)
            case .tokenizer:
                guard let tok = Self.sharedTokenizer else { return nil }
                let text = String(decoding: bytes, as: UTF8.self)
                _ = tok.encode(text)
                _ = tok.encodeBatch([text, String(text.prefix(7))])
            case .captions:
                _ = try bytes.withUnsafeBytes { raw in
                    try CaptionDataset.parse(raw, file: "fuzz.captions", images: "/nonexistent/liteclip-fuzz-images")
                }
            }
            return nil
        } catch {
            return error
        }
    }
}

extension FuzzEntry {
    /// A complete, valid liteCLIP `.lcw` at a micro size (ConvNeXt dims 2, BERT hidden 4, vocab
    /// 8, 8 positions), a few KiB: the `lcw` target's seed, so mutations reach the deep checks
    /// (metadata decoding, the exact tensor set, building the model) quickly.
    public static func writeMicroLCW(to path: String) throws {
        let image = ConvNeXtConfig(dims: [2, 2, 2, 2], depths: [1, 1, 1, 1])
        let text = BertConfig(hiddenSize: 4, numHiddenLayers: 1, numAttentionHeads: 2, intermediateSize: 8, vocabSize: 8,
                              maxPositionEmbeddings: 8)
        let config = LiteCLIPConfig(image: image, text: text, projectionDim: 4)
        var tokenizer = TokenizerSpec(vocab: ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "cat", "##s"])
        tokenizer.maxLength = 8
        var seed: UInt32 = 1
        let tensors = LiteCLIPParameters.expected(for: config).map { spec in
            let n = spec.shape.reduce(1, *)
            let values: [Float] = (0..<n).map { _ in seed = seed &* 1_664_525 &+ 1_013_904_223; return Float(seed >> 8) / Float(1 << 24) - 0.5 }
            return Checkpoint.Tensor(name: spec.name, dtype: .f32, shape: spec.shape, origin: "micro") {
                TensorBytes(owning: values.withUnsafeBytes { Array($0) })
            }
        }
        let meta = LCWMetadata(model: config, tokenizer: tokenizer, preprocess: .seed,
                               source: .init(file: "micro", sha256: String(repeating: "0", count: 64), format: "synthetic", wrapper: nil,
                                             keyPrefix: "", ignoredTensors: []),
                               converter: .init())
        _ = try LCWWriter.write(to: path, tensors: tensors, metadata: meta)
    }
}
