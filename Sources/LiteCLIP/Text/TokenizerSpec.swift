import Foundation

/// Everything the BERT WordPiece tokenizer needs, stored in the `.lcw` so the model file alone
/// can tokenize: the vocabulary (index = token id) and the normaliser settings of the seed's
/// fast `BertTokenizer` (`tokenizer.json` / `tokenizer_config.json`).
public struct TokenizerSpec: Codable, Equatable, Sendable {
    public var vocab: [String]
    public var doLowerCase = true
    /// nil: follow `doLowerCase` (Hugging Face's default).
    public var stripAccents: Bool? = nil
    public var tokenizeChineseChars = true
    public var cleanText = true
    public var maxLength = 128
    public var continuingSubwordPrefix = "##"
    public var maxInputCharsPerWord = 100
    public var unkToken = "[UNK]"
    public var clsToken = "[CLS]"
    public var sepToken = "[SEP]"
    public var padToken = "[PAD]"
    public var maskToken = "[MASK]"

    enum CodingKeys: String, CodingKey {
        case vocab
        case doLowerCase = "do_lower_case"
        case stripAccents = "strip_accents"
        case tokenizeChineseChars = "tokenize_chinese_chars"
        case cleanText = "clean_text"
        case maxLength = "max_length"
        case continuingSubwordPrefix = "continuing_subword_prefix"
        case maxInputCharsPerWord = "max_input_chars_per_word"
        case unkToken = "unk_token", clsToken = "cls_token", sepToken = "sep_token"
        case padToken = "pad_token", maskToken = "mask_token"
    }

    public init(vocab: [String]) { self.vocab = vocab }

    /// As the synthesized decoding (every key required but the optional one), with the
    /// vocabulary's tokens read as `String` one by one
    /// (the generic path through `[String]` costs JSONDecoder a dynamic cast per token).
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        var v = try c.nestedUnkeyedContainer(forKey: .vocab)
        var tokens: [String] = []
        tokens.reserveCapacity(v.count ?? 0)
        while !v.isAtEnd { tokens.append(try v.decode(String.self)) }
        vocab = tokens
        doLowerCase = try c.decode(Bool.self, forKey: .doLowerCase)
        stripAccents = try c.decodeIfPresent(Bool.self, forKey: .stripAccents)
        tokenizeChineseChars = try c.decode(Bool.self, forKey: .tokenizeChineseChars)
        cleanText = try c.decode(Bool.self, forKey: .cleanText)
        maxLength = try c.decode(Int.self, forKey: .maxLength)
        continuingSubwordPrefix = try c.decode(String.self, forKey: .continuingSubwordPrefix)
        maxInputCharsPerWord = try c.decode(Int.self, forKey: .maxInputCharsPerWord)
        unkToken = try c.decode(String.self, forKey: .unkToken)
        clsToken = try c.decode(String.self, forKey: .clsToken)
        sepToken = try c.decode(String.self, forKey: .sepToken)
        padToken = try c.decode(String.self, forKey: .padToken)
        maskToken = try c.decode(String.self, forKey: .maskToken)
    }

    /// As the synthesized encoding, with the vocabulary's tokens passed as `String` (the
    /// generic path through `[String]` costs JSONEncoder a dynamic cast per token: 30k of them
    /// made up most of a conversion's header time).
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        var v = c.nestedUnkeyedContainer(forKey: .vocab)
        for token in vocab { try v.encode(token) }
        try c.encode(doLowerCase, forKey: .doLowerCase)
        try c.encodeIfPresent(stripAccents, forKey: .stripAccents)
        try c.encode(tokenizeChineseChars, forKey: .tokenizeChineseChars)
        try c.encode(cleanText, forKey: .cleanText)
        try c.encode(maxLength, forKey: .maxLength)
        try c.encode(continuingSubwordPrefix, forKey: .continuingSubwordPrefix)
        try c.encode(maxInputCharsPerWord, forKey: .maxInputCharsPerWord)
        try c.encode(unkToken, forKey: .unkToken)
        try c.encode(clsToken, forKey: .clsToken)
        try c.encode(sepToken, forKey: .sepToken)
        try c.encode(padToken, forKey: .padToken)
        try c.encode(maskToken, forKey: .maskToken)
    }

    /// `vocab.txt`: one token per line, line number = id (as transformers' `load_vocab`).
    public static func load(vocabTxt path: String) throws -> TokenizerSpec {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelError(.badTokenizer, file: path, "cannot read the vocabulary file")
        }
        guard String(validating: data, as: UTF8.self) != nil else {
            throw ModelError(.badTokenizer, file: path, "vocabulary is not UTF-8")
        }
        // One token per line, lines ended by "\n", "\r\n" or "\r": Hugging Face's `load_vocab`
        // reads the file in Python's text mode (universal newlines), then strips the "\n".
        var lines: [String] = []
        data.withUnsafeBytes { (b: UnsafeRawBufferPointer) in
            var start = 0, i = 0
            while i < b.count {
                if b[i] == 0x0A || b[i] == 0x0D {
                    lines.append(String(decoding: UnsafeRawBufferPointer(rebasing: b[start..<i]), as: UTF8.self))
                    if b[i] == 0x0D && i + 1 < b.count && b[i + 1] == 0x0A { i += 1 }
                    start = i + 1
                }
                i += 1
            }
            if start < b.count { lines.append(String(decoding: UnsafeRawBufferPointer(rebasing: b[start...]), as: UTF8.self)) }
        }
        guard !lines.isEmpty else { throw ModelError(.badTokenizer, file: path, "vocabulary is empty") }
        var spec = TokenizerSpec(vocab: lines)
        try spec.applyTokenizerConfig(beside: path)
        try spec.validate(file: path)
        return spec
    }

    /// A Hugging Face fast-tokenizer `tokenizer.json` with a WordPiece model and BertNormalizer.
    public static func load(tokenizerJSON path: String) throws -> TokenizerSpec {
        guard let data = FileManager.default.contents(atPath: path),
              let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ModelError(.badTokenizer, file: path, "not a readable JSON object")
        }
        guard let model = obj["model"] as? [String: Any], (model["type"] as? String) == "WordPiece",
              let v = model["vocab"] as? [String: Any] else {
            throw ModelError(.badTokenizer, file: path, "tokenizer.json does not hold a WordPiece model with a vocab")
        }
        var vocab = [String?](repeating: nil, count: v.count)
        for (token, idAny) in v {
            guard let id = (idAny as? NSNumber)?.intValue, id >= 0, id < v.count, vocab[id] == nil else {
                throw ModelError(.badTokenizer, file: path, "token ids are not exactly 0..<\(v.count) (at '\(token)')")
            }
            vocab[id] = token
        }
        var spec = TokenizerSpec(vocab: vocab.map { $0! })
        if let unk = model["unk_token"] as? String { spec.unkToken = unk }
        if let p = model["continuing_subword_prefix"] as? String { spec.continuingSubwordPrefix = p }
        if let m = (model["max_input_chars_per_word"] as? NSNumber)?.intValue { spec.maxInputCharsPerWord = m }
        if let n = obj["normalizer"] as? [String: Any] {
            guard (n["type"] as? String) == "BertNormalizer" else {
                throw ModelError(.badTokenizer, file: path, "normalizer \(n["type"] ?? "?") is not BertNormalizer")
            }
            if let b = n["lowercase"] as? Bool { spec.doLowerCase = b }
            if let b = n["handle_chinese_chars"] as? Bool { spec.tokenizeChineseChars = b }
            if let b = n["clean_text"] as? Bool { spec.cleanText = b }
            spec.stripAccents = n["strip_accents"] as? Bool
        }
        try spec.applyTokenizerConfig(beside: path)
        try spec.validate(file: path)
        return spec
    }

    /// Special-token names from a `tokenizer_config.json` next to the vocabulary, if present.
    mutating func applyTokenizerConfig(beside path: String) throws {
        let cfgPath = (path as NSString).deletingLastPathComponent + "/tokenizer_config.json"
        guard let data = FileManager.default.contents(atPath: cfgPath) else { return }
        guard let c = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ModelError(.badTokenizer, file: cfgPath, "not a JSON object")
        }
        if let b = c["do_lower_case"] as? Bool { doLowerCase = b }
        if c.keys.contains("strip_accents") { stripAccents = c["strip_accents"] as? Bool }
        if let b = c["tokenize_chinese_chars"] as? Bool { tokenizeChineseChars = b }
        for (key, path) in [("unk_token", \TokenizerSpec.unkToken), ("cls_token", \.clsToken), ("sep_token", \.sepToken),
                            ("pad_token", \.padToken), ("mask_token", \.maskToken)] {
            if let s = c[key] as? String { self[keyPath: path] = s }
        }
    }

    func validate(file: String) throws {
        let set = Set(vocab)
        for tok in [unkToken, clsToken, sepToken, padToken] where !set.contains(tok) {
            throw ModelError(.badTokenizer, file: file, "the vocabulary lacks the special token \(tok)")
        }
    }
}
