import Foundation
import Synchronization
import TensorIO

/// `liteclip-convert`: any supported checkpoint -> a self-contained liteCLIP `.lcw`.
public enum Converter {
    public struct Options {
        /// Storage dtype for the float tensors; nil keeps each tensor's dtype. `.i8`: an int8 model
        /// (formats/lcw.md, "int8 weights": the quantizable weights int8, everything else f32).
        public var dtype: DType?
        public var vocabPath: String?
        public var tokenizerPath: String?
        public var textConfigPath: String?
        public var allowUnexpected = false
        /// ONNX from the dynamo exporter's default optimisation: rebuild the folded embedding
        /// lookups (exact up to the exported sequence length) instead of refusing the file.
        public var allowPartial = false
        public init() {}
    }

    public struct Report {
        public var input: String
        public var output: String
        public var format: Checkpoint.Format
        public var wrapper: String?
        public var keyPrefix: String
        public var sourceSHA256: String
        public var sourceBytes: Int
        public var tokenizerFile: String
        public var textConfigFile: String?
        public var config: LiteCLIPConfig
        public var tensorCount: Int
        public var parameterCount: Int
        public var dataBytes: Int
        public var fileBytes: Int
        public var dtypes: [DType: Int]
        public var ignored: [String]
        /// Layout conversions applied (ONNX) and other facts worth telling the user.
        public var notes: [String] = []
        /// Tensors of the file outside the weights (optimizer state, EMA copies), by container.
        public var elsewhere: [String] = []
        /// Parts of the parameters the source does not hold (see `LCWMetadata.SourceInfo.partial`).
        public var partial: [String] = []
    }

    /// - Parameter progress: (bytes of tensor data written, total) after each tensor.
    public static func convert(input: String, output: String, options: Options,
                               progress: ((Int, Int) -> Void)? = nil) throws -> Report {
        if let a = realpath(input, nil) {
            defer { free(a) }
            if let b = realpath(output, nil) {
                defer { free(b) }
                if strcmp(a, b) == 0 { throw ModelError(.badConfig, file: output, "output would overwrite the input") }
            }
        }
        let source = try ByteSource(mapping: input)
        // The source's SHA-256 (recorded in the metadata) is computed on the other core from the
        // start, while the file is parsed and the tensors are written; an early failure stops it.
        let hash = BackgroundValue { stop in source.sha256(stopIf: stop) }
        // Never return (or exit) while the hashing thread runs: libcrypto's exit handler would
        // free its state under it.
        defer { hash.cancel(); _ = hash.wait() }
        if try TensorFile.detect(source) == .onnx {
            // ONNX: place the initializers back onto parameters by reading the graph.
            let mapped = try ONNXParameters.stateDict(from: ONNXReader.read(source), allowPartial: options.allowPartial)
            let partial = Partial(missing: mapped.missing, positions: mapped.partialPositions, tokenTypes: mapped.partialTokenTypes)
            var report = try convert(mapped.checkpoint, source: source, input: input, output: output, options: options,
                                     partial: mapped.missing.isEmpty ? nil : partial, hash: hash, progress: progress)
            report.notes += mapped.placements.filter { $0.layout != .asIs }.map { "\($0.parameter) <- \($0.initializer) (\($0.layout.rawValue))" }
            if !mapped.constants.isEmpty { report.notes.append("\(mapped.constants.count) non-parameter initializers (graph constants) left out") }
            return report
        }
        return try convert(TensorFile.read(source), source: source, input: input, output: output, options: options, hash: hash, progress: progress)
    }

    /// A source that holds only part of some parameters, and the sizes they were rebuilt with.
    struct Partial {
        var missing: [String]
        var positions: Int?
        var tokenTypes: Int?
    }

    /// The conversion proper, on an opened checkpoint (tests inject failing tensors here).
    /// - Parameter hash: the source's SHA-256 in the making (started here when not given); it is
    ///   filled into the header before the file is committed.
    static func convert(_ ckpt: Checkpoint, source: ByteSource, input: String, output: String, options: Options,
                        partial: Partial? = nil, hash given: BackgroundValue<String?>? = nil,
                        progress: ((Int, Int) -> Void)?) throws -> Report {
        let hash = given ?? BackgroundValue { stop in source.sha256(stopIf: stop) }
        defer { if given == nil { hash.cancel(); _ = hash.wait() } }
        let pending = String(repeating: "?", count: 64)
        let p = try prepare(ckpt, source: source, input: input, options: options, partial: partial, sourceSHA: pending)
        let (mapping, outTensors) = (p.mapping, p.tensors)
        var meta = p.metadata
        let fileBytes = try LCWWriter.write(to: output, tensors: outTensors, metadata: meta, late: ["\"" + pending + "\"": { "\"" + hash.wait()! + "\"" }],
                                            progress: progress)
        meta.source.sha256 = hash.wait()!
        var report = Report(input: input, output: output, format: ckpt.format, wrapper: mapping.wrapper, keyPrefix: mapping.keyPrefix,
                      sourceSHA256: meta.source.sha256, sourceBytes: source.count, tokenizerFile: p.tokenizerFile,
                      textConfigFile: p.textConfigFile, config: mapping.config, tensorCount: outTensors.count,
                      parameterCount: outTensors.reduce(0) { $0 + $1.elementCount },
                      dataBytes: outTensors.reduce(0) { $0 + $1.byteCount }, fileBytes: fileBytes,
                      dtypes: p.dtypes, ignored: mapping.ignored, partial: partial?.missing ?? [])
        report.elsewhere = mapping.elsewhere
        return report
    }

    /// What a conversion writes: the `.lcw` metadata and the tensors (converted lazily).
    struct Prepared {
        var mapping: CheckpointMapping
        var metadata: LCWMetadata
        var tensors: [Checkpoint.Tensor]
        var tokenizerFile: String
        var textConfigFile: String?
        var dtypes: [DType: Int]
    }

    /// Everything a conversion does short of writing: the `.lcw` in memory.
    static func prepare(input: String, options: Options) throws -> Prepared {
        let source = try ByteSource(mapping: input)
        if try TensorFile.detect(source) == .onnx {
            let mapped = try ONNXParameters.stateDict(from: ONNXReader.read(source), allowPartial: options.allowPartial)
            let partial = Partial(missing: mapped.missing, positions: mapped.partialPositions, tokenTypes: mapped.partialTokenTypes)
            return try prepare(mapped.checkpoint, source: source, input: input, options: options, partial: mapped.missing.isEmpty ? nil : partial)
        }
        return try prepare(TensorFile.read(source), source: source, input: input, options: options)
    }

    static func prepare(_ ckpt: Checkpoint, source: ByteSource, input: String, options: Options,
                        partial: Partial? = nil, sourceSHA: String? = nil) throws -> Prepared {
        guard ckpt.format != .lcw else {
            throw ModelError(.badConfig, file: input, "input is already an .lcw file")
        }
        let dir = (input as NSString).deletingLastPathComponent.isEmpty ? "." : (input as NSString).deletingLastPathComponent
        func beside(_ name: String) -> String? {
            let p = dir + "/" + name
            return FileManager.default.fileExists(atPath: p) ? p : nil
        }

        // Is it liteCLIP at all? Said before any complaint about the files beside it.
        _ = try CheckpointMapping.locate(ckpt)

        // BERT config: flag, else beside the checkpoint.
        var textConfig: BertConfig? = nil
        let textConfigFile = options.textConfigPath ?? beside("config.json")
        if let p = textConfigFile {
            guard let data = FileManager.default.contents(atPath: p) else { throw ModelError(.badConfig, file: p, "cannot read the BERT config") }
            do { textConfig = try JSONDecoder().decode(BertConfig.self, from: data) } catch {
                throw ModelError(.badConfig, file: p, "not a BERT config.json: " + Self.describe(error))
            }
        }
        // A partial source's rebuilt embeddings are smaller than the config says, by construction.
        if let partial {
            if let n = partial.positions { textConfig?.maxPositionEmbeddings = n }
            if let n = partial.tokenTypes { textConfig?.typeVocabSize = n }
        }
        let mapping = try CheckpointMapping(ckpt, textConfig: textConfig, allowUnexpected: options.allowUnexpected)

        // Tokenizer: flags, else vocab.txt then tokenizer.json beside the checkpoint.
        var tokenizer: TokenizerSpec
        let tokenizerFile: String
        if let p = options.tokenizerPath { tokenizer = try .load(tokenizerJSON: p); tokenizerFile = p }
        else if let p = options.vocabPath { tokenizer = try .load(vocabTxt: p); tokenizerFile = p }
        else if let p = beside("vocab.txt") { tokenizer = try .load(vocabTxt: p); tokenizerFile = p }
        else if let p = beside("tokenizer.json") { tokenizer = try .load(tokenizerJSON: p); tokenizerFile = p }
        else {
            throw ModelError(.missingTokenizer, file: input,
                             "no tokenizer given and none beside the checkpoint (looked for vocab.txt and tokenizer.json in \(dir)); "
                             + "the model needs its tokenizer: give a vocab.txt or tokenizer.json (--vocab / --tokenizer)")
        }
        guard tokenizer.vocab.count == mapping.config.text.vocabSize else {
            throw ModelError(.badTokenizer, file: tokenizerFile,
                             "vocabulary has \(tokenizer.vocab.count) tokens but the checkpoint's word embeddings have \(mapping.config.text.vocabSize) rows")
        }

        // Never tokenize past the positions the model has (a partial source keeps fewer).
        tokenizer.maxLength = min(tokenizer.maxLength, mapping.config.text.maxPositionEmbeddings)

        // Output tensors, converted to the requested dtype one at a time while writing.
        var dtypes: [DType: Int] = [:]
        var quantized: Int? = nil
        let outTensors: [Checkpoint.Tensor] = options.dtype == .i8 ? {
            let (q, n) = Quantizer.int8Tensors(mapping.tensors, config: mapping.config)
            for t in q { dtypes[t.dtype, default: 0] += 1 }
            quantized = n
            return q
        }() : mapping.tensors.map { t in
            let to = options.dtype ?? t.dtype
            dtypes[to, default: 0] += 1
            if to == t.dtype { return t }
            return Checkpoint.Tensor(name: t.name, dtype: to, shape: t.shape, origin: t.origin) {
                DTypeConversion.convert(try t.load(), from: t.dtype, to: to)
            }
        }
        let sourceSHA = sourceSHA ?? source.sha256()
        var meta = LCWMetadata(
            model: mapping.config, tokenizer: tokenizer, preprocess: .seed,
            source: .init(file: (input as NSString).lastPathComponent, sha256: sourceSHA,
                          format: ckpt.format.rawValue, wrapper: mapping.wrapper, keyPrefix: mapping.keyPrefix,
                          ignoredTensors: mapping.ignored, partial: partial?.missing),
            converter: .init())
        if let quantized { meta.quantization = .init(tensors: quantized) }
        return Prepared(mapping: mapping, metadata: meta, tensors: outTensors, tokenizerFile: tokenizerFile,
                        textConfigFile: textConfigFile, dtypes: dtypes)
    }

    /// A JSON decoding failure in words: which key is missing or of the wrong type, and where.
    static func describe(_ error: Error) -> String {
        guard let e = error as? DecodingError else { return "\(error)" }
        func path(_ c: [CodingKey]) -> String { c.isEmpty ? "" : " at " + c.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".") }
        switch e {
        case let .keyNotFound(k, ctx): return "it has no '\(k.stringValue)'\(path(ctx.codingPath))"
        case let .typeMismatch(_, ctx), let .valueNotFound(_, ctx): return "'\(ctx.codingPath.last?.stringValue ?? "?")' has the wrong type\(path(ctx.codingPath.dropLast()))"
        case let .dataCorrupted(ctx): return "malformed JSON\(path(ctx.codingPath)): \(ctx.debugDescription)"
        @unknown default: return "\(e)"
        }
    }
}

/// A value computed on another thread; `wait()` blocks until it is ready. The computation is
/// handed a `stop` check that turns true once `cancel()` is called (it may then return early).
final class BackgroundValue<T>: @unchecked Sendable {
    private var value: T?
    private let done = DispatchSemaphore(value: 0)
    private let lock = NSLock()
    private let cancelled = Atomic<Bool>(false)

    init(_ compute: @escaping @Sendable (_ stop: () -> Bool) -> T) {
        Thread.detachNewThread { [self] in
            let v = compute { self.cancelled.load(ordering: .relaxed) }
            lock.lock(); value = v; lock.unlock()
            done.signal()
        }
    }

    func cancel() { cancelled.store(true, ordering: .relaxed) }

    func wait() -> T {
        lock.lock()
        if let v = value { lock.unlock(); return v }
        lock.unlock()
        done.wait()
        done.signal()     // later callers return at once
        lock.lock(); defer { lock.unlock() }
        return value!
    }
}
