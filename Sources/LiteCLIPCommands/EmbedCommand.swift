import ArgumentParser
import Foundation
import LiteCLIP
import TensorIO

/// Thin CLI over `Embedder`.
struct Embed: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write embeddings of images or texts to a .npy file (one L2-normalised float32 row per input).",
        discussion: """
            --images takes files and folders; folders are searched recursively (--no-recursive: not) \
            for .jpg, .jpeg, .png and .webp files, in sorted order. Files that cannot be read \
            (corrupt, empty, not an image) are skipped and listed at the end; --strict stops at the \
            first instead. Nothing to embed is an error.

            Writes OUT (numpy.load reads it: shape (N, 256), float32) and, beside it, OUT without \
            its extension + .names.json: {"names": [the N inputs, in row order], "skipped": \
            [{"file", "reason"}, ...]}. Neither is left half-written.
            """)

    @Argument(help: "The model: any format liteclip reads.") var model: String
    @Option(parsing: .upToNextOption, help: ArgumentHelp("Image files or folders.", valueName: "path")) var images: [String] = []
    @Option(parsing: .upToNextOption, help: ArgumentHelp("Texts to embed.", valueName: "text")) var texts: [String] = []
    @Option(name: .customLong("texts-file"), help: ArgumentHelp("Texts to embed, one per line (blank lines ignored).", valueName: "file"))
    var textsFile: String?
    @Option(help: ArgumentHelp("The .npy file to write.", valueName: "file")) var out: String
    @Option(name: .customLong("batch-size"), help: ArgumentHelp("Inputs per forward pass.", valueName: "n")) var batchSize = 16
    @OptionGroup var imageOptions: ImageInputOptions
    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        let given = [!images.isEmpty, !texts.isEmpty, textsFile != nil].filter { $0 }.count
        if given != 1 { throw ValidationError("give one of --images, --texts or --texts-file") }
        if batchSize < 1 { throw ValidationError("--batch-size must be at least 1") }
    }

    var namesPath: String { (out as NSString).deletingPathExtension + ".names.json" }

    struct Names: Encodable {
        let names: [String]
        let skipped: [SkippedFile]
    }

    struct Report: Encodable {
        let output: String
        let namesFile: String
        let rows: Int
        let dimension: Int
        let skipped: [SkippedFile]
        enum CodingKeys: String, CodingKey { case output, rows, dimension, skipped, namesFile = "names_file" }
    }

    func run() throws {
        let console = Console(command: "liteclip embed", quiet: output.quiet)
        // Everything that can be checked without the model, first.
        var inputs = [model] + modelOptions.files
        var textList = texts
        if let f = textsFile {
            try Paths.checkInput(f, what: "texts file")
            inputs.append(f)
            guard let data = FileManager.default.contents(atPath: f), let text = String(data: data, encoding: .utf8) else {
                throw CLIFailure("\(f): cannot read the texts file as UTF-8 text")
            }
            textList = text.split(whereSeparator: \.isNewline).map(String.init).filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
            if textList.isEmpty { throw CLIFailure("\(f): no texts in the file") }
        }
        var found: ImageFiles? = nil
        if !images.isEmpty {
            let f = try imageOptions.find(images, console)
            found = f
            inputs += f.files
        }
        try Paths.checkOutput(out, inputs: inputs)
        try Paths.checkOutput(namesPath, inputs: inputs, what: "names file")
        if Paths.sameFile(out, namesPath) || out == namesPath { throw CLIFailure("\(out): the output and its names file would be the same file", hint: "give the output the extension .npy") }
        AtomicFile.installSignalCleanup()

        let ahead = found.map { DecodeAhead($0.files) }   // while the model opens
        let m = try modelOptions.model(model, console)
        let progress: (Int, Int) -> Void = { done, total in
            if total > batchSize { console.note("embedded \(done)/\(total)") }
        }
        let names: [String], values: [Float], skipped: [SkippedFile]
        if let found {
            let run = try Embedder.images(found.files, model: m, batchSize: batchSize, strict: imageOptions.strict, ahead: ahead,
                                          progress: progress)
            skipped = found.skipped + run.skipped
            guard !run.files.isEmpty else {
                reportSkipped(skipped, console, total: 0)
                throw CLIFailure("none of the \(found.files.count) image file(s) could be read; nothing written")
            }
            (names, values) = (run.files, run.embeddings.values)
        } else {
            for w in m.truncationWarnings(textList, what: "text") { console.warn(w) }
            (names, values, skipped) = (textList, Embedder.texts(textList, model: m, batchSize: batchSize, progress: progress), [])
        }
        let d = m.config.projectionDim
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let namesData = try e.encode(Names(names: names, skipped: skipped))
        // Both files are complete in their temporary names before either is renamed into place.
        let f = try AtomicFile(path: namesPath)
        try namesData.withUnsafeBytes { try f.write($0) }
        try NPYWriter.write(values, rows: names.count, columns: d, to: out)
        try f.commit()
        if output.json {
            try console.json(Report(output: out, namesFile: namesPath, rows: names.count, dimension: d, skipped: skipped))
        } else {
            print("wrote \(names.count) x \(d) embeddings to \(out) and their names to \(namesPath)")
        }
        reportSkipped(skipped, console, total: names.count)
    }
}
