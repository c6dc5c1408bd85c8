import ArgumentParser
import Foundation
import LiteCLIP
import TensorIO

/// Thin CLI over `LiteCLIPModel.zeroShot(imageFiles:labels:)`.
struct ZeroShotCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "zero-shot",
        abstract: "Classify images against text labels: which label fits each image best.",
        discussion: """
            Two forms:
              liteclip zero-shot MODEL IMAGE LABEL LABEL...                one image
              liteclip zero-shot MODEL IMAGE|FOLDER... --labels L1 L2 ...  many images

            Each label is embedded once. An image's logit for a label is the cosine similarity of \
            their embeddings times the model's learned scale; its probabilities are the softmax of \
            its logits over the labels. \
            Folders are searched recursively for .jpg, .jpeg, .png and .webp files; files that \
            cannot be read are skipped and listed (--strict stops at the first). Labels: at least \
            two, none empty, no two the same; a label longer than the tokenizer reads (128 word \
            pieces with [CLS] and [SEP]) is cut, with a warning.

            Output: a table (one image: "label: 12.34%" lines, most probable first), --json (one \
            object per image with the top-k labels and every label's probability and logit) or \
            --csv (one row per image: image, then label, probability, logit for each of the top k).
            """)

    @Argument(help: "The model: any format liteclip reads.") var model: String
    @Argument(help: ArgumentHelp("Image files or folders; without --labels/--labels-file: one image, then its labels.", valueName: "image-or-label"))
    var inputs: [String] = []
    @Option(parsing: .upToNextOption, help: ArgumentHelp("The candidate labels, e.g. \"a photo of a cat\" \"a photo of a dog\".", valueName: "label"))
    var labels: [String] = []
    @Option(name: .customLong("labels-file"), help: ArgumentHelp("Read the labels from a file, one per line (blank lines ignored).", valueName: "file"))
    var labelsFile: String?
    @Option(name: .customLong("top-k"), help: ArgumentHelp("Show the best N labels per image (default: all for one image, 3 for several).", valueName: "n"))
    var topK: Int?
    @Flag(help: "Print CSV: one row per image.") var csv = false
    @Option(name: .customLong("batch-size"), help: ArgumentHelp("Images per forward pass.", valueName: "n")) var batchSize = 16
    @OptionGroup var imageOptions: ImageInputOptions
    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        if let k = topK, k < 1 { throw ValidationError("--top-k must be at least 1") }
        if batchSize < 1 { throw ValidationError("--batch-size must be at least 1") }
        if csv && output.json { throw ValidationError("give --json or --csv, not both") }
        if inputs.isEmpty { throw ValidationError("give at least one image") }
        if !labels.isEmpty && labelsFile != nil { throw ValidationError("give --labels or --labels-file, not both") }
    }

    /// The images and labels, from either form.
    func split() throws -> (images: [String], labels: [String], oneImage: Bool) {
        if let f = labelsFile {
            try Paths.checkInput(f, what: "labels file")
            guard let data = FileManager.default.contents(atPath: f), let text = String(data: data, encoding: .utf8) else {
                throw CLIFailure("\(f): cannot read the labels file as UTF-8 text")
            }
            let ls = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            return (inputs, ls, false)
        }
        if !labels.isEmpty { return (inputs, labels, false) }
        // One image, then its labels: refuse a "label" that is an image file, the usual mistake
        // when several images were meant.
        let rest = Array(inputs.dropFirst())
        for l in rest where ImageFiles.extensions.contains((l as NSString).pathExtension.lowercased()) || isFolder(l) {
            throw CLIFailure("'\(l)' is given as a label but looks like an image file",
                             hint: "to classify several images, give the labels with --labels: liteclip zero-shot MODEL \(inputs.first ?? "IMAGE") \(l) --labels \"a dog\" \"a cat\"")
        }
        return (Array(inputs.prefix(1)), rest, true)
    }

    func isFolder(_ p: String) -> Bool {
        var d: ObjCBool = false
        return FileManager.default.fileExists(atPath: p, isDirectory: &d) && d.boolValue
    }

    func run() throws {
        let console = Console(command: "liteclip zero-shot", quiet: output.quiet)
        let (images, labels, oneImage) = try split()
        try LabelCheck.check(labels)
        let found = try imageOptions.find(images, console)
        let ahead = DecodeAhead(found.files)   // while the model opens
        let m = try modelOptions.model(model, console)
        for w in m.truncationWarnings(labels) { console.warn(w) }
        let single = oneImage || (found.files.count == 1 && images.count == 1 && found.skipped.isEmpty)
        let k = topK ?? (single ? labels.count : min(3, labels.count))
        let r = try m.zeroShot(imageFiles: found.files, labels: labels, topK: k, batchSize: batchSize, strict: imageOptions.strict,
                               ahead: ahead) { done, total in
            if total > batchSize { console.note("classified \(done)/\(total)") }
        }
        let skipped = found.skipped + r.skipped
        guard !r.results.isEmpty else {
            reportSkipped(skipped, console, total: 0)
            throw CLIFailure("none of the \(found.files.count) image file(s) could be read")
        }
        if output.json {
            try console.json(ZeroShotJSON(model: model, labels: labels, results: r.results.map(ZeroShotJSON.Image.init), skipped: skipped))
        } else if csv {
            print(csvText(r.results, k: k))
        } else if single {
            for e in r.results[0].ranking { print("\(e.label): \(String(format: "%.2f", e.probability * 100))%") }
        } else {
            print(table(r.results))
        }
        reportSkipped(skipped, console, total: r.results.count)
    }

    func table(_ results: [ZeroShotReport]) -> String {
        let iw = min(max(results.map(\.image.count).max() ?? 5, 5), 60)
        let lw = min(max(results.flatMap { $0.ranking.map(\.label.count) }.max() ?? 5, 5), 50)
        var out = ["image".padding(toLength: iw, withPad: " ", startingAt: 0) + "  " + "label".padding(toLength: lw, withPad: " ", startingAt: 0)
                   + "  probability     logit"]
        for r in results {
            for (i, e) in r.ranking.enumerated() {
                out.append((i == 0 ? r.image : "").padding(toLength: iw, withPad: " ", startingAt: 0) + "  "
                           + e.label.padding(toLength: lw, withPad: " ", startingAt: 0)
                           + String(format: "  %10.2f%%  %8.4f", e.probability * 100, e.logit))
            }
        }
        return out.joined(separator: "\n")
    }

    func csvText(_ results: [ZeroShotReport], k: Int) -> String {
        var header = ["image"]
        for i in 1...max(1, min(k, results.first?.ranking.count ?? k)) { header += ["label_\(i)", "probability_\(i)", "logit_\(i)"] }
        var rows = [header.joined(separator: ",")]
        for r in results {
            var row = [CSV.field(r.image)]
            for e in r.ranking { row += [CSV.field(e.label), String(format: "%.6f", e.probability), String(format: "%.6f", e.logit)] }
            rows.append(row.joined(separator: ","))
        }
        return rows.joined(separator: "\n")
    }
}

enum CSV {
    /// RFC 4180: quoted when it holds a comma, quote or line break; quotes doubled.
    static func field(_ s: String) -> String {
        guard s.contains(where: { $0 == "," || $0 == "\"" || $0.isNewline }) else { return s }
        return "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}

/// Labels: at least two, none empty, no duplicates (checked before the model is loaded).
enum LabelCheck {
    static func check(_ labels: [String]) throws {
        guard labels.count >= 2 else {
            throw CLIFailure("give at least 2 labels (got \(labels.count))", hint: "zero-shot picks the best of the labels given, e.g. \"a photo of a cat\" \"a photo of a dog\"")
        }
        var seen: [String: Int] = [:]
        for (i, l) in labels.enumerated() {
            let key = l.trimmingCharacters(in: .whitespacesAndNewlines)
            if key.isEmpty { throw CLIFailure("label \(i + 1) is empty") }
            if let j = seen[key] { throw CLIFailure("labels \(j + 1) and \(i + 1) are the same: '\(key)'", hint: "each label must be different") }
            seen[key] = i
        }
    }
}

/// `zero-shot --json`.
struct ZeroShotJSON: Encodable {
    struct Ranked: Encodable { let label: String; let probability: Float; let logit: Float }
    struct Image: Encodable {
        let image: String
        /// The top-k labels, most probable first.
        let ranking: [Ranked]
        /// Every label's, in the order the labels were given.
        let probabilities: [Float]
        let logits: [Float]
        init(_ r: ZeroShotReport) {
            image = r.image
            ranking = r.ranking.map { Ranked(label: $0.label, probability: $0.probability, logit: $0.logit) }
            probabilities = r.probabilities
            logits = r.logits
        }
    }
    let model: String
    let labels: [String]
    let results: [Image]
    let skipped: [SkippedFile]
}
