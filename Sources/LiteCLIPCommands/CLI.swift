#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import LiteCLIP
import TensorIO

/// What both executables share: the entry point with the documented exit codes, the one error
/// format, checks of output paths, model loading from any checkpoint, and JSON output.
///
/// Exit codes: 0 success; 1 bad input or a failed check; 2 a usage error (unknown option,
/// missing argument, invalid value); 130 interrupted (Ctrl-C, SIGTERM).
public enum CLI {
    public static let ok: Int32 = 0, failure: Int32 = 1, usage: Int32 = 2, interrupted: Int32 = 130

    /// Parses the command line for `root`, runs the command and exits. Errors are printed as
    /// `NAME CMD: error: FILE: PLACE: REASON`, then `hint: ...` when there is one.
    public static func main<Root: ParsableCommand>(_ root: Root.Type, arguments: [String]? = nil) -> Never {
        let args = arguments ?? Array(CommandLine.arguments.dropFirst())
        let name = invokedName(root, args)
        do {
            var command = try root.parseAsRoot(args)
            try command.run()
            exit(ok)
        } catch let e as ExitCode {
            exit(e.rawValue)
        } catch let e where e is CLIFailure || e is ReadError || e is ModelError || e is ImageError || e is DecodingError {
            report(e, command: name)
            exit(failure)
        } catch {
            // The argument parser's own: help and version requests, usage errors.
            let code = root.exitCode(for: error)
            if code == .success {
                print(root.fullMessage(for: error))
                exit(ok)
            }
            guard code == .validationFailure else {
                report(error, command: name)
                exit(failure)
            }
            let lines = root.fullMessage(for: error).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            let message = root.message(for: error).replacingOccurrences(of: "Error: ", with: "")
            var out = "\(name): error: \(message)\n"
            if let u = lines.first(where: { $0.hasPrefix("Usage:") }) { out += "usage:" + u.dropFirst("Usage:".count) + "\n" }
            out += "hint: see '\(name) --help'\n"
            standardError(out)
            exit(usage)
        }
    }

    /// `liteclip zero-shot`, or just `liteclip-convert`.
    static func invokedName<Root: ParsableCommand>(_ root: Root.Type, _ args: [String]) -> String {
        let rootName = root.configuration.commandName ?? "liteclip"
        let subs = root.configuration.subcommands.map { $0.configuration.commandName ?? $0._commandName }
        if let first = args.first(where: { !$0.hasPrefix("-") }), subs.contains(first) { return rootName + " " + first }
        return rootName
    }

    /// Prints an error in the one format, with a hint when one helps.
    static func report(_ error: Error, command: String) {
        var out = "\(command): error: \(describe(error))\n"
        if let h = hint(for: error) { out += "hint: \(h)\n" }
        standardError(out)
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case let e as CLIFailure: return e.message
        case let e as ReadError: return e.description
        case let e as ModelError: return e.description
        case let e as ImageError: return e.description
        case let e as DecodingError: return "malformed JSON: \(e)"
        case let e as LocalizedError: return e.errorDescription ?? "\(e)"
        default: return "\(error)"
        }
    }

    static let formats = ".lcw, .pt/.pth/.bin/.ckpt (PyTorch zip or legacy format, Lightning and DDP wrappers), .safetensors, .onnx, or a training checkpoint (OUT.ckpt)"

    static func hint(for error: Error) -> String? {
        switch error {
        case let e as CLIFailure: return e.hint
        case let e as ModelError where e.code == .missingTokenizer:
            return "put vocab.txt (or tokenizer.json) and BERT's config.json beside the checkpoint, or pass --vocab FILE (or --tokenizer FILE) and --text-config FILE"
        case let e as ReadError where [.notACheckpoint, .badMagic, .unsupportedFormat].contains(e.code):
            return "models are read from " + formats
        case let e as ReadError where e.code == .writeFailed:
            return "check that the folder is writable and the disk has room"
        case let e as ImageError where e.code == .unsupportedFormat:
            return "images are read from JPEG, PNG and WebP files"
        default: return nil
        }
    }
}

/// A failure found by the CLI itself (a bad output path, an empty input list).
struct CLIFailure: Error {
    let message: String
    var hint: String? = nil
    init(_ message: String, hint: String? = nil) { (self.message, self.hint) = (message, hint) }
}

func standardError(_ s: String) {
    FileHandle.standardError.write(Data(s.utf8))
}

/// Writes progress, notes and warnings to stderr (`-q` silences progress and notes, never
/// warnings or errors), and results to stdout.
struct Console {
    let command: String
    let quiet: Bool

    func note(_ s: String) { if !quiet { standardError(s + "\n") } }
    func warn(_ s: String) { standardError("\(command): warning: \(s)\n") }

    /// Prints `value` as JSON (sorted keys, slashes unescaped, non-finite numbers as strings).
    func json<T: Encodable>(_ value: T, pretty: Bool = true) throws {
        let e = JSONEncoder()
        e.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        e.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        print(String(decoding: try e.encode(value), as: UTF8.self))
        fflush(stdout)
    }
}

/// `-q` and `--json`, on every command that reports.
struct OutputOptions: ParsableArguments {
    @Flag(name: .shortAndLong, help: "No progress or notes on stderr (warnings and errors are still printed).")
    var quiet = false
    @Flag(help: "Print the result as JSON on stdout.")
    var json = false
}

/// Where a model's tokenizer comes from when the model file is a checkpoint rather than a `.lcw`.
struct ModelOptions: ParsableArguments {
    @Option(help: ArgumentHelp("BERT vocabulary (vocab.txt) for a checkpoint without one beside it.", valueName: "file"))
    var vocab: String?
    @Option(help: ArgumentHelp("Hugging Face tokenizer.json, instead of --vocab.", valueName: "file"))
    var tokenizer: String?
    @Option(name: .customLong("text-config"), help: ArgumentHelp("BERT config.json (attention heads, LayerNorm eps), for a checkpoint without one beside it.", valueName: "file"))
    var textConfig: String?
    @Flag(name: .customLong("allow-partial"), help: ArgumentHelp(
        "Accept an ONNX model exported with torch.onnx.export(dynamo=True) and its default optimisation, whose position and token-type embeddings were folded away: they are rebuilt (exact up to the exported sequence length, with token type 0)."))
    var allowPartial = false

    func validate() throws {
        if vocab != nil && tokenizer != nil { throw ValidationError("give --vocab or --tokenizer, not both") }
    }

    var converter: Converter.Options {
        var o = Converter.Options()
        o.vocabPath = vocab
        o.tokenizerPath = tokenizer
        o.textConfigPath = textConfig
        o.allowPartial = allowPartial
        return o
    }

    /// The tokenizer and config files named on the command line (inputs too).
    var files: [String] { [vocab, tokenizer, textConfig].compactMap { $0 } }

    /// Opens any model file; a checkpoint that is not `.lcw` is converted in memory, which is said on stderr.
    func open(_ path: String, _ console: Console) throws -> ModelSource.Loaded {
        let loaded = try ModelSource.open(path, options: converter)
        describe(loaded, path, console)
        return loaded
    }

    /// Says on stderr how a model file that is not a `.lcw` was read.
    func describe(_ loaded: ModelSource.Loaded, _ path: String, _ console: Console) {
        if let tok = loaded.tokenizerFile {
            console.note("\(console.command): \(path) is \(loaded.metadata.source.format): converted in memory with the tokenizer \(tok)"
                         + (loaded.textConfigFile.map { " and the text config \($0)" } ?? "")
                         + "; nothing written (`liteclip convert` makes a .lcw that opens faster)")
        } else if loaded.kind == "training checkpoint" {
            console.note("\(console.command): \(path) is a training checkpoint: using its current weights")
        }
    }

    func model(_ path: String, _ console: Console) throws -> LiteCLIPModel {
        try LiteCLIPModel(open(path, console), file: path)
    }
}

/// How image files and folders are gathered: `--no-recursive`, `--strict`.
struct ImageInputOptions: ParsableArguments {
    @Flag(name: .customLong("no-recursive"), help: "Do not search sub-folders.") var noRecursive = false
    @Flag(help: "Stop at the first file that cannot be read instead of skipping it.") var strict = false

    /// The image files under `paths`; with `--strict` the first skipped one is an error, and
    /// finding none at all is one.
    func find(_ paths: [String], _ console: Console) throws -> ImageFiles {
        let found = try ImageFiles(paths, recursive: !noRecursive)
        if strict, let s = found.skipped.first { throw CLIFailure("\(s.file): \(s.reason)", hint: "without --strict such files are skipped") }
        guard !found.files.isEmpty else {
            reportSkipped(found.skipped, console, total: 0)
            throw CLIFailure("no image files in \(paths.joined(separator: ", ")) (looked for .jpg, .jpeg, .png, .webp)")
        }
        return found
    }
}

/// Float storage types a user may ask for.
enum FloatType: String, CaseIterable, ExpressibleByArgument {
    case f32, f16, bf16
    var dtype: DType { DType(rawValue: rawValue)! }
}

/// `liteclip-convert --dtype`: a float storage type, or int8 weights.
enum StorageType: String, CaseIterable, ExpressibleByArgument {
    case f32, f16, bf16, int8
    var dtype: DType { self == .int8 ? .i8 : DType(rawValue: rawValue)! }
}

/// Checks of files before any work is done.
enum Paths {
    /// An output path is usable: its folder exists and is writable, it is not a folder, and it
    /// is not one of the inputs (also through links or another spelling).
    static func checkOutput(_ path: String, inputs: [String], what: String = "output") throws {
        guard !path.isEmpty else { throw CLIFailure("the \(what) path is empty") }
        var st = stat()
        if stat(path, &st) == 0 {
            if st.st_mode & S_IFMT == S_IFDIR {
                throw CLIFailure("\(path): the \(what) is a folder", hint: "give a file name, e.g. \((path as NSString).appendingPathComponent("out"))...")
            }
            for i in inputs where sameFile(i, path) {
                throw CLIFailure("\(path): the \(what) would overwrite the input \(i)", hint: "write to another file")
            }
        }
        let parent = (path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent
        var ps = stat()
        guard stat(parent, &ps) == 0 else {
            throw CLIFailure("\(path): the folder \(parent) does not exist", hint: "create it first (mkdir -p \(parent))")
        }
        guard ps.st_mode & S_IFMT == S_IFDIR else { throw CLIFailure("\(path): \(parent) is not a folder") }
        guard access(parent, W_OK | X_OK) == 0 else { throw CLIFailure("\(path): the folder \(parent) is not writable") }
    }

    /// An input file exists and is a readable regular file.
    static func checkInput(_ path: String, what: String = "file") throws {
        var st = stat()
        guard stat(path, &st) == 0 else { throw CLIFailure("\(path): no such \(what)") }
        if st.st_mode & S_IFMT == S_IFDIR { throw CLIFailure("\(path): is a folder, not a \(what)") }
        guard access(path, R_OK) == 0 else { throw CLIFailure("\(path): cannot read the \(what): permission denied") }
    }

    static func sameFile(_ a: String, _ b: String) -> Bool {
        var sa = stat(), sb = stat()
        guard stat(a, &sa) == 0, stat(b, &sb) == 0 else { return false }
        return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
    }
}

func formatBytes(_ n: Int) -> String {
    if n >= 1 << 20 { return String(format: "%.1f MiB", Double(n) / 1048576) }
    if n >= 1 << 10 { return String(format: "%.1f KiB", Double(n) / 1024) }
    return "\(n) B"
}

func formatDuration(_ s: Double) -> String {
    guard s.isFinite, s >= 0 else { return "?" }
    let t = Int(s.rounded())
    return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t % 3600 / 60) : String(format: "%dm%02ds", t / 60, t % 60)
}

/// Lists skipped files on stderr: all of them with `all`, else the first 20.
func reportSkipped(_ skipped: [SkippedFile], _ console: Console, total: Int) {
    guard !skipped.isEmpty else { return }
    console.warn("skipped \(skipped.count) of \(total + skipped.count) file(s):")
    for s in skipped.prefix(20) { standardError("  \(s.file): \(s.reason)\n") }
    if skipped.count > 20 { standardError("  ... and \(skipped.count - 20) more (all are listed in the JSON output)\n") }
}
