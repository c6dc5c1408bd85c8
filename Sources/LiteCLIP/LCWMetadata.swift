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

        enum CodingKeys: String, CodingKey {
            case file, sha256, format, wrapper, partial
            case trainedFrom = "trained"
            case keyPrefix = "key_prefix"
            case ignoredTensors = "ignored_tensors"
        }
    }

    public struct ConverterInfo: Codable, Equatable, Sendable {
        public var name = "liteclip-convert"
        public var version = LiteCLIPVersion.string
    }

    public func jsonObject() throws -> [String: Any] {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let data = try enc.encode(self)
        return try JSONSerialization.jsonObject(with: data) as! [String: Any]
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
        let meta: LCWMetadata
        do {
            meta = try JSONDecoder().decode(LCWMetadata.self, from: lcw.metadataJSON)
        } catch {
            throw ModelError(.badConfig, file: path, "the .lcw metadata is not liteCLIP metadata: \(error)")
        }
        // Strict: the tensor list must be exactly the parameter set of the stored config.
        let expected = LiteCLIPParameters.expected(for: meta.model).filter { $0.required || meta.model.hasPooler }
        let have = Dictionary(lcw.checkpoint.tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var err = ModelError(.mapping, file: path, "the .lcw tensors do not match its own config")
        for s in expected {
            guard let t = have[s.name] else { err.missing.append("\(s.name) \(s.shape)"); continue }
            if t.shape != s.shape { err.mismatched.append("\(s.name): expected \(s.shape), file has \(t.shape)") }
        }
        let names = Set(expected.map(\.name))
        err.unexpected = lcw.checkpoint.tensors.filter { !names.contains($0.name) }.map { "\($0.name) \($0.shape)" }
        guard err.missing.isEmpty, err.mismatched.isEmpty, err.unexpected.isEmpty else { throw err }
        try ImagePreprocessor.validate(meta.preprocess, file: path)
        guard meta.tokenizer.vocab.count == meta.model.text.vocabSize else {
            throw ModelError(.badTokenizer, file: path, "vocabulary has \(meta.tokenizer.vocab.count) tokens but the model \(meta.model.text.vocabSize)")
        }
        return LiteCLIPFile(lcw: lcw, metadata: meta)
    }
}
