import ArgumentParser
import Foundation
import LiteCLIP
import TensorIO

/// Thin CLI over `PhotoIndex.update` and `PhotoIndex.merge`.
struct IndexCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "index",
        abstract: "Build or update a photo-search index (SQLite) of the images in folders.",
        discussion: """
            liteclip index MODEL DIR... --db photos.db embeds every image under the folders (and \
            files named) into photos.db, one row per image: path, size, modification time, \
            content SHA-256 and embedding; the index records the model's fingerprint (SHA-256 of \
            its tensors), its path and preprocessing. Run it again to bring the index up to date: \
            only new and changed files are embedded, rows of deleted files are removed, and it \
            prints how many were added, updated, removed, unchanged and skipped (unreadable files \
            are reported, not fatal). Each batch is committed on its own: an interrupted run \
            (even kill -9) loses at most the batch in flight, and the next run continues. An \
            index made by another model is refused. --shard I/N indexes a deterministic 1/N of \
            the files (split work over N machines); liteclip index --merge a.db b.db ... --db \
            all.db combines shards made by the same model. Search it with liteclip search \
            (formats/index.md has the schema).
            """)

    @Argument(help: "MODEL DIR... (or with --merge: the indexes to combine).") var inputs: [String]
    @Option(help: ArgumentHelp("The index file (created if missing).", valueName: "file")) var db: String
    @Option(help: ArgumentHelp("Index only shard I of N (0-based): a deterministic 1/N of the files by path.", valueName: "I/N"))
    var shard: String?
    @Flag(help: "Combine the indexes given as arguments into --db.") var merge = false
    @Option(name: .customLong("batch-size"), help: ArgumentHelp("Images per forward pass (and per committed transaction).", valueName: "n"))
    var batchSize: Int = 16
    @Flag(name: .customLong("no-recursive"), help: "Do not search sub-folders.") var noRecursive = false
    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        if merge {
            guard !inputs.isEmpty else { throw ValidationError("--merge needs the indexes to combine: liteclip index --merge a.db b.db --db all.db") }
            if shard != nil { throw ValidationError("--shard does not apply to --merge") }
        } else {
            guard inputs.count >= 2 else { throw ValidationError("give the model and at least one folder or image: liteclip index MODEL DIR... --db photos.db") }
        }
        guard batchSize >= 1 else { throw ValidationError("--batch-size must be at least 1") }
        _ = try parsedShard()
    }

    func parsedShard() throws -> PhotoIndex.Shard? {
        guard let shard else { return nil }
        let parts = shard.split(separator: "/")
        guard parts.count == 2, let i = Int(parts[0]), let n = Int(parts[1]), n >= 1, i >= 0, i < n else {
            throw ValidationError("--shard must be I/N with 0 <= I < N (e.g. 0/4), not '\(shard)'")
        }
        return try PhotoIndex.Shard(index: i, count: n)
    }

    struct Report: Encodable {
        let db: String, added: Int, updated: Int, removed: Int, unchanged: Int, skipped: [SkippedFile], total: Int, seconds: Double
    }

    func run() throws {
        let console = Console(command: "liteclip index", quiet: output.quiet)
        let start = Date()
        if merge {
            for p in inputs { try Paths.checkInput(p, what: "index") }
            let r = try PhotoIndex.merge(inputs, into: db)
            if output.json { try console.json(r); return }
            for (p, n) in r.inputs.sorted(by: { $0.key < $1.key }) { print("merged \(n) rows from \(p)") }
            print("\(db): \(r.total) rows")
            return
        }
        let model = inputs[0], dirs = Array(inputs.dropFirst())
        try Paths.checkInput(model, what: "model")
        for d in dirs where !FileManager.default.fileExists(atPath: d) { throw CLIFailure("\(d): no such file or folder") }
        let m = try modelOptions.model(model, console)
        let index = try PhotoIndex(path: db)
        let r = try index.update(model: m, modelPath: model, inputs: dirs, recursive: !noRecursive, shard: try parsedShard(),
                                 batchSize: batchSize) { done, total in
            if total > batchSize { console.note("embedded \(done)/\(total)") }
        }
        let seconds = Date().timeIntervalSince(start)
        if output.json {
            try console.json(Report(db: db, added: r.added, updated: r.updated, removed: r.removed, unchanged: r.unchanged,
                                    skipped: r.skipped, total: r.total, seconds: seconds))
        } else {
            print("\(db): \(r.added) added, \(r.updated) updated, \(r.removed) removed, \(r.unchanged) unchanged, \(r.skipped.count) skipped; "
                  + "\(r.total) images in the index (\(String(format: "%.2f", seconds)) s)")
        }
        reportSkipped(r.skipped, console, total: r.added + r.updated + r.unchanged)
    }
}

/// Thin CLI over `PhotoIndex.search`.
struct Search: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Search a photo index by text or by example image: exact cosine top-k.",
        discussion: """
            Embeds the query with the index's model (its recorded path, or --model; the model \
            must be the one that built the index: its fingerprint is checked) and ranks every \
            image in the index by cosine similarity, with one matrix-vector product over all \
            vectors. Prints rank, score and path; --json prints a list of {rank, score, path}.
            """)

    @Argument(help: "The index (from liteclip index).") var db: String
    @Argument(help: "The text to search for (or give --image).") var query: String?
    @Option(help: ArgumentHelp("Search by this example image instead of a text.", valueName: "file")) var image: String?
    @Option(name: .customLong("top-k"), help: ArgumentHelp("How many results.", valueName: "k")) var topK: Int = 10
    @Option(help: ArgumentHelp("The model, when the one the index records has moved.", valueName: "file")) var model: String?
    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var output: OutputOptions

    func validate() throws {
        guard (query == nil) != (image == nil) else { throw ValidationError("give a text query or --image FILE (one of them)") }
        guard topK >= 1 else { throw ValidationError("--top-k must be at least 1") }
    }

    func run() throws {
        let console = Console(command: "liteclip search", quiet: output.quiet)
        try Paths.checkInput(db, what: "index")
        if let image { try Paths.checkInput(image, what: "image") }
        let index = try PhotoIndex(path: db, create: false, readOnly: true)
        guard let info = try index.modelInfo() else { throw CLIFailure("\(db): the index is empty (run liteclip index first)") }
        let modelPath = model ?? info.modelPath
        guard FileManager.default.fileExists(atPath: modelPath) else {
            throw CLIFailure("\(db): the model that built it, \(modelPath), is not there", hint: "give it with --model FILE")
        }
        let m = try modelOptions.model(modelPath, console)
        let hits = try image.map { try index.search(imagePath: $0, model: m, modelPath: modelPath, topK: topK) }
            ?? index.search(text: query!, model: m, modelPath: modelPath, topK: topK)
        if output.json { try console.json(hits); return }
        for h in hits { print(String(format: "%3d  %.4f  ", h.rank, h.score) + h.path) }
    }
}
