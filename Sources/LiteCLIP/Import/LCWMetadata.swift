import Foundation
import TensorIO

/// The `metadata` object of a liteCLIP `.lcw` (formats/lcw.md): what makes the file
/// self-contained.
public struct LCWMetadata: Codable, Equatable, Sendable {
    public var architecture = "liteclip"
    public var model: LiteCLIPConfig
    public var tokenizer: TokenizerSpec
    public var preprocess: PreprocessConfig
    public var source: SourceInfo
    public var converter: ConverterInfo
    /// Present in an int8 model (`liteclip quantize`, `liteclip-convert --dtype int8`).
    public var quantization: QuantizationInfo? = nil

    public init(model: LiteCLIPConfig, tokenizer: TokenizerSpec, preprocess: PreprocessConfig, source: SourceInfo,
                converter: ConverterInfo) {
        (self.model, self.tokenizer, self.preprocess, self.source, self.converter) = (model, tokenizer, preprocess, source, converter)
    }

    public struct SourceInfo: Codable, Equatable, Sendable {
        public var file: String
        public var sha256: String
        public var format: String
        public var wrapper: String?
        public var keyPrefix: String
        public var ignoredTensors: [String]
        /// Present only when the source did not hold every parameter in full (an optimised ONNX
        /// export converted with --allow-partial): what is missing, one line each.
        public var partial: [String]? = nil
        /// Present only in a model written by `liteclip train`: what it was trained from and how.
        public var trainedFrom: TrainingInfo? = nil

        public init(file: String, sha256: String, format: String, wrapper: String?, keyPrefix: String, ignoredTensors: [String],
                    partial: [String]? = nil) {
            (self.file, self.sha256, self.format, self.wrapper) = (file, sha256, format, wrapper)
            (self.keyPrefix, self.ignoredTensors, self.partial) = (keyPrefix, ignoredTensors, partial)
        }

        enum CodingKeys: String, CodingKey {
            case file, sha256, format, wrapper, partial
            case trainedFrom = "trained"
            case keyPrefix = "key_prefix"
            case ignoredTensors = "ignored_tensors"
        }
    }

    /// How an int8 model's weights are stored (formats/lcw.md, "int8 weights").
    public struct QuantizationInfo: Codable, Equatable, Sendable {
        /// "int8": symmetric, one f32 scale per row (output channel; token of the word embeddings).
        public var weights = "int8"
        /// The scales of weight W are the tensor `W` + this suffix.
        public var scaleSuffix = "_scale"
        /// How many weights are int8.
        public var tensors: Int
        public init(tensors: Int) { self.tensors = tensors }
        enum CodingKeys: String, CodingKey {
            case weights, tensors
            case scaleSuffix = "scale_suffix"
        }
    }

    public struct ConverterInfo: Codable, Equatable, Sendable {
        public var name = "liteclip-convert"
        public var version = LiteCLIPVersion.string
        public init() {}
    }
}

public enum LiteCLIPVersion {
    public static let string = "0.1.0"
}

/// An opened liteCLIP `.lcw`: decoded metadata and tensors verified against the parameter set.
public struct LiteCLIPFile {
    public let lcw: LCWFile
    public let metadata: LCWMetadata

    public var tensors: [Checkpoint.Tensor] { lcw.checkpoint.tensors }

    public static func open(_ path: String) throws -> LiteCLIPFile {
        try validate(LCWReader.open(path), file: path)
    }

    /// The liteCLIP checks on an opened `.lcw` (metadata, exact tensor set, tokenizer, preprocessing).
    public static func validate(_ lcw: LCWFile, file path: String) throws -> LiteCLIPFile {
        let meta = try decodeMetadata(lcw.metadataJSON, file: path)
        try check(meta, tensors: lcw.checkpoint.tensors, file: path)
        return LiteCLIPFile(lcw: lcw, metadata: meta)
    }

    static func decodeMetadata(_ json: Data, file path: String) throws -> LCWMetadata {
        do {
            // The vocabulary, most of the metadata (30k strings), is read by a plain scan; the
            // rest, with an empty vocabulary in its place, by JSONDecoder.
            if let (rest, vocab) = splitVocabulary(json) {
                var meta = try JSONDecoder().decode(LCWMetadata.self, from: rest)
                meta.tokenizer.vocab = vocab
                return meta
            }
            return try JSONDecoder().decode(LCWMetadata.self, from: json)
        } catch {
            throw ModelError(.badConfig, file: path, "the .lcw metadata is not liteCLIP metadata: \(error)")
        }
    }

    /// The metadata with `tokenizer.vocab` replaced by `[]`, and that vocabulary; nil when it is
    /// not where the format puts it or not an array of strings (JSONDecoder then reads it all).
    static func splitVocabulary(_ json: Data) -> (Data, [String])? {
        json.withUnsafeBytes { b -> (Data, [String])? in
            guard case .at(let t) = JSONSpans.topLevelValue("tokenizer", in: b),
                  case .at(let v) = JSONSpans.topLevelValue("vocab", in: UnsafeRawBufferPointer(rebasing: b[t])),
                  let vocab = JSONSpans.stringArray(UnsafeRawBufferPointer(rebasing: b[(t.lowerBound + v.lowerBound)..<(t.lowerBound + v.upperBound)]))
            else { return nil }
            var rest = Data(UnsafeRawBufferPointer(rebasing: b[..<(t.lowerBound + v.lowerBound)]))
            rest.append(contentsOf: "[]".utf8)
            rest.append(contentsOf: UnsafeRawBufferPointer(rebasing: b[(t.lowerBound + v.upperBound)...]))
            return (rest, vocab)
        }
    }

    /// Strict: the tensor list must be exactly the parameter set of the stored config (the
    /// pooler present exactly when the config says so; no ignorable buffers).
    static func check(_ meta: LCWMetadata, tensors: [Checkpoint.Tensor], file path: String) throws {
        let expected = LiteCLIPParameters.expected(for: meta.model).filter { $0.required || meta.model.hasPooler }
            .map { spec -> ParameterSpec in
                var s = ParameterSpec(name: spec.name, shape: spec.shape, required: true, group: nil)
                s.quantizable = spec.quantizable
                return s
            }
        _ = try Strictness.place(Dictionary(tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a }),
                                 expected: expected, ignorable: [], file: path, context: "the .lcw tensors do not match its own config")
        try ImagePreprocessor.validate(meta.preprocess, file: path)
        guard meta.tokenizer.vocab.count == meta.model.text.vocabSize else {
            throw ModelError(.badTokenizer, file: path, "vocabulary has \(meta.tokenizer.vocab.count) tokens but the model \(meta.model.text.vocabSize)")
        }
    }
}

/// Any model file, opened for inference: a `.lcw`, a training checkpoint (its current weights),
/// or a `.pt` / `.ckpt` / `.safetensors` / `.onnx` converted in memory as `liteclip-convert`
/// would (tokenizer files beside it or named in the options), nothing written.
public enum ModelSource {
    public struct Loaded {
        public let metadata: LCWMetadata
        public let tensors: [Checkpoint.Tensor]
        /// How the file was read: "lcw", "training checkpoint", or "converted from <format>".
        public let kind: String
        /// The weights are views of a mapped `.lcw` (a `.lcw` or a training checkpoint): loading
        /// them cannot fail, so a model may build its parts on first use.
        public var isMapped: Bool { kind == "lcw" || kind == "training checkpoint" }
        /// For a conversion in memory: the tokenizer and BERT config files it used.
        public var tokenizerFile: String? = nil
        public var textConfigFile: String? = nil
        /// True when the weights were converted in memory from a checkpoint that is not `.lcw`.
        public var converted: Bool { tokenizerFile != nil }
    }

    public static func open(_ path: String, options: Converter.Options = .init()) throws -> Loaded {
        let source = try ByteSource(mapping: path)
        guard try TensorFile.detect(source) == .lcw else {
            let p = try Converter.prepare(input: path, options: options)
            try LiteCLIPFile.check(p.metadata, tensors: p.tensors, file: path)
            return Loaded(metadata: p.metadata, tensors: p.tensors, kind: "converted from \(p.metadata.source.format)",
                          tokenizerFile: p.tokenizerFile, textConfigFile: p.textConfigFile)
        }
        let lcw = try LCWReader.read(source)
        // Members found by skipping, not by parsing the whole metadata (a vocabulary is most of it).
        let architecture = JSONSpans.topLevelValue("architecture", in: lcw.metadataJSON).flatMap { try? JSONDecoder().decode(String.self, from: $0) }
        if architecture == TrainingCheckpoint.architecture {
            // A training checkpoint: the model's metadata under "model", its weights under their own
            // names (optimiser moments and best weights are prefixed).
            guard let json = JSONSpans.topLevelValue("model", in: lcw.metadataJSON), json.first == UInt8(ascii: "{") else {
                throw ModelError(.badConfig, file: path, "the training checkpoint's metadata has no model description")
            }
            let meta = try LiteCLIPFile.decodeMetadata(json, file: path)
            let tensors = lcw.checkpoint.tensors.filter { !TrainingCheckpoint.isTrainingState($0.name) }
            try LiteCLIPFile.check(meta, tensors: tensors, file: path)
            return Loaded(metadata: meta, tensors: tensors, kind: "training checkpoint")
        }
        let file = try LiteCLIPFile.validate(lcw, file: path)
        return Loaded(metadata: file.metadata, tensors: file.tensors, kind: "lcw")
    }
}

/// The names a training checkpoint (`OUT.ckpt`, formats/training.md) uses beside the model's.
enum TrainingCheckpoint {
    static let architecture = "liteclip-training-checkpoint"
    static let prefixes = ["optimizer.exp_avg.", "optimizer.exp_avg_sq.", "best."]
    static func isTrainingState(_ name: String) -> Bool { prefixes.contains { name.hasPrefix($0) } }
}
