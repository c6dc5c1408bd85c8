import CSQLite
import Foundation
import TensorIO

/// A photo library's image embeddings in SQLite (formats/index.md): `liteclip index` builds and
/// updates it, `liteclip search` queries it by text, by example image or by vector.
///
/// One row per image: its absolute path, size, modification time, content SHA-256 and embedding
/// (float32 little-endian blob); the `meta` table records the model's fingerprint (SHA-256 of its
/// tensors), its path, the dimension and the preprocessing. Updates embed only new and changed
/// files and commit one transaction per batch (WAL journal): a killed run loses at most the batch
/// in flight, and the next run continues from what is committed.
///
/// ```swift
/// let model = try LiteCLIPModel(path: "model.lcw")
/// let index = try PhotoIndex(path: "photos.db")
/// let report = try index.update(model: model, modelPath: "model.lcw", inputs: ["Pictures"])
/// for hit in try index.search(text: "a dog on a beach", model: model, topK: 5) { print(hit.rank, hit.score, hit.path) }
/// ```
public final class PhotoIndex {
    public let path: String
    private var db: OpaquePointer?

    /// The format tag stored in `meta.format`.
    public static let format = "liteclip-index-1"

    /// What went wrong with an index, naming the file.
    public struct IndexError: Error, CustomStringConvertible, LocalizedError, Sendable {
        public enum Kind: String, Sendable { case sqlite, notAnIndex, modelMismatch, badShard, empty }
        public let kind: Kind
        public let file: String
        public let detail: String
        public var description: String { "\(file): \(detail)" }
        public var errorDescription: String? { description }
    }

    /// Opens (and with `create`, creates) an index.
    public init(path: String, create: Bool = true, readOnly: Bool = false) throws {
        self.path = path
        let flags = readOnly ? SQLITE_OPEN_READONLY : (SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0))
        if !create && !FileManager.default.fileExists(atPath: path) {
            throw IndexError(kind: .notAnIndex, file: path, detail: "no such index (build it with liteclip index MODEL DIR... --db \(path))")
        }
        guard sqlite3_open_v2(path, &db, flags, nil) == SQLITE_OK else {
            let msg = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            sqlite3_close(db)
            db = nil
            throw IndexError(kind: .sqlite, file: path, detail: msg)
        }
        sqlite3_busy_timeout(db, 10_000)
        do {
            // Another program's database is never taken over: tables without our meta table refuse it.
            let tables = try strings("SELECT name FROM sqlite_master WHERE type = 'table'")
            if !tables.isEmpty && !tables.contains("meta") {
                throw IndexError(kind: .notAnIndex, file: path,
                                 detail: "not a liteclip photo index (an SQLite database with other tables: \(tables.sorted().prefix(5).joined(separator: ", ")))")
            }
            if readOnly && tables.isEmpty {
                throw IndexError(kind: .notAnIndex, file: path, detail: "not a liteclip photo index (an empty database)")
            }
            if !readOnly {
                try exec("PRAGMA journal_mode=WAL")
                try exec("PRAGMA synchronous=NORMAL")
                try exec("""
                    CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
                    CREATE TABLE IF NOT EXISTS images(path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                                                      sha256 TEXT NOT NULL, embedding BLOB NOT NULL);
                    """)
            }
            let tag = try meta("format")
            let rows = readOnly ? 0 : try count()
            if tag == nil && !readOnly && rows == 0 {
                try setMeta("format", Self.format)
            } else if tag != Self.format {
                throw IndexError(kind: .notAnIndex, file: path,
                                 detail: "not a liteclip photo index (meta.format is \(tag.map { "'\($0)'" } ?? "missing"), expected '\(Self.format)')")
            }
        } catch let e as IndexError {
            sqlite3_close(db)
            db = nil
            throw e.kind == .sqlite && e.detail.contains("not a database")
                ? IndexError(kind: .notAnIndex, file: path, detail: "not a liteclip photo index (not an SQLite database)") : e
        }
    }

    deinit { sqlite3_close(db) }

    // MARK: - SQLite helpers

    private func fail(_ what: String) -> IndexError {
        IndexError(kind: .sqlite, file: path, detail: "\(what): \(String(cString: sqlite3_errmsg(db)))")
    }

    private func exec(_ sql: String) throws {
        guard sqlite3_exec(db, sql, nil, nil, nil) == SQLITE_OK else { throw fail(sql.split(separator: "(").first.map(String.init) ?? sql) }
    }

    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    /// A prepared statement, finalised when done.
    private final class Statement {
        let handle: OpaquePointer?
        init(_ db: OpaquePointer?, _ sql: String, _ index: PhotoIndex) throws {
            var h: OpaquePointer?
            guard sqlite3_prepare_v2(db, sql, -1, &h, nil) == SQLITE_OK else { throw index.fail("prepare") }
            handle = h
        }
        deinit { sqlite3_finalize(handle) }
        func bind(_ i: Int32, _ s: String) { sqlite3_bind_text(handle, i, s, -1, PhotoIndex.transient) }
        func bind(_ i: Int32, _ v: Int64) { sqlite3_bind_int64(handle, i, v) }
        func bind(_ i: Int32, _ f: [Float]) {
            f.withUnsafeBytes { _ = sqlite3_bind_blob(handle, i, $0.baseAddress, Int32($0.count), PhotoIndex.transient) }
        }
        func reset() { sqlite3_reset(handle); sqlite3_clear_bindings(handle) }
        /// Column i as text ("" for NULL: a damaged or foreign file may hold one).
        func text(_ i: Int32) -> String { sqlite3_column_text(handle, i).map { String(cString: $0) } ?? "" }
        /// Steps to the next row; false at the end; a damaged file is an error, not an early end.
        func row(_ index: PhotoIndex) throws -> Bool {
            let rc = sqlite3_step(handle)
            if rc == SQLITE_ROW { return true }
            if rc == SQLITE_DONE { return false }
            throw index.fail("read")
        }
    }

    private func strings(_ sql: String) throws -> [String] {
        let s = try Statement(db, sql, self)
        var out: [String] = []
        while try s.row(self) { out.append(s.text(0)) }
        return out
    }

    private func meta(_ key: String) throws -> String? {
        let s = try Statement(db, "SELECT value FROM meta WHERE key = ?", self)
        s.bind(1, key)
        guard try s.row(self) else { return nil }
        return s.text(0)
    }

    private func setMeta(_ key: String, _ value: String) throws {
        let s = try Statement(db, "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", self)
        s.bind(1, key)
        s.bind(2, value)
        guard sqlite3_step(s.handle) == SQLITE_DONE else { throw fail("write meta") }
    }

    /// Rows in the index.
    public func count() throws -> Int {
        let s = try Statement(db, "SELECT count(*) FROM images", self)
        guard sqlite3_step(s.handle) == SQLITE_ROW else { throw fail("count") }
        return Int(sqlite3_column_int64(s.handle, 0))
    }

    /// What the index records of the model that made it (nil before the first update).
    public struct ModelInfo: Sendable, Codable, Equatable {
        public var fingerprint: String
        public var modelPath: String
        public var dimension: Int
        public var preprocess: String
        enum CodingKeys: String, CodingKey {
            case fingerprint, dimension, preprocess
            case modelPath = "model_path"
        }
    }

    public func modelInfo() throws -> ModelInfo? {
        guard let fp = try meta("model_fingerprint") else { return nil }
        return ModelInfo(fingerprint: fp, modelPath: try meta("model_path") ?? "", dimension: Int(try meta("dimension") ?? "") ?? 0,
                         preprocess: try meta("preprocess") ?? "")
    }

    /// The model must be the one the index was built with (its fingerprint); a new index records it.
    public func check(model: LiteCLIPModel, modelPath: String, record: Bool = false) throws {
        let fp = model.fingerprint
        if let info = try modelInfo() {
            guard info.fingerprint == fp else {
                throw IndexError(kind: .modelMismatch, file: path,
                                 detail: "the index was built by another model: index fingerprint \(info.fingerprint) (\(info.modelPath)), "
                                 + "\(modelPath) has \(fp); build a new index for this model (--db another file)")
            }
            return
        }
        guard record else { throw IndexError(kind: .empty, file: path, detail: "the index has no model yet: run liteclip index first") }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let pre = String(data: try encoder.encode(model.preprocess), encoding: .utf8) ?? ""
        try exec("BEGIN IMMEDIATE")
        do {
            try setMeta("model_fingerprint", fp)
            try setMeta("model_path", Self.absolute(modelPath))
            try setMeta("dimension", String(model.config.projectionDim))
            try setMeta("preprocess", pre)
            try exec("COMMIT")
        } catch { try? exec("ROLLBACK"); throw error }
    }

    static func absolute(_ p: String) -> String {
        if let r = realpath(p, nil) { defer { free(r) }; return String(cString: r) }
        return p.hasPrefix("/") ? p : FileManager.default.currentDirectoryPath + "/" + p
    }

    // MARK: - Update

    /// A deterministic 1/N of the files (`--shard I/N`): those whose absolute path hashes
    /// (FNV-1a, 64 bits) to I modulo N.
    public struct Shard: Sendable, Equatable {
        public let index: Int
        public let count: Int
        public init(index: Int, count: Int) throws {
            guard count >= 1, index >= 0, index < count else {
                throw IndexError(kind: .badShard, file: "--shard", detail: "shard \(index)/\(count): I must be in 0..<N")
            }
            (self.index, self.count) = (index, count)
        }
        public func contains(_ path: String) -> Bool {
            var h: UInt64 = 0xcbf29ce484222325
            for b in path.utf8 { h = (h ^ UInt64(b)) &* 0x100000001b3 }
            return Int(h % UInt64(count)) == index
        }
    }

    public struct UpdateReport: Sendable, Codable {
        public var added = 0, updated = 0, removed = 0, unchanged = 0
        public var skipped: [SkippedFile] = []
        /// Rows in the index afterwards.
        public var total = 0
    }

    /// Brings the index up to date with the images under `inputs` (files or folders): new files
    /// are embedded and added, changed ones (size or modification time, and then content)
    /// re-embedded, rows of files gone from under the inputs removed. Files that cannot be read
    /// are reported in `skipped`. One transaction per batch.
    public func update(model: LiteCLIPModel, modelPath: String, inputs: [String], recursive: Bool = true, shard: Shard? = nil,
                       batchSize: Int = 16, progress: ((Int, Int) -> Void)? = nil) throws -> UpdateReport {
        try check(model: model, modelPath: modelPath, record: true)
        var report = UpdateReport()
        let scan = try ImageFiles(inputs, recursive: recursive)
        report.skipped = scan.skipped
        let files = scan.files.map(Self.absolute).filter { shard?.contains($0) ?? true }
        // What the index holds.
        var known: [String: (size: Int64, mtime: Int64, sha: String)] = [:]
        do {
            let s = try Statement(db, "SELECT path, size, mtime_ns, sha256 FROM images", self)
            while try s.row(self) {
                known[s.text(0)] = (sqlite3_column_int64(s.handle, 1), sqlite3_column_int64(s.handle, 2), s.text(3))
            }
        }
        var todo: [String] = [], stats: [String: (Int64, Int64)] = [:], touched: [String] = []
        var hashed: [String: String] = [:]   // content hashes already taken (a changed time, same size)
        for f in files {
            var st = stat()
            guard stat(f, &st) == 0 else { report.skipped.append(.init(file: f, reason: "cannot read it")); continue }
            let size = Int64(st.st_size), mtime = Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec)
            stats[f] = (size, mtime)
            guard let k = known[f] else { todo.append(f); continue }
            if k.size == size && k.mtime == mtime { report.unchanged += 1; continue }
            // Size or time changed: the content decides (a copy or a touch keeps the embedding).
            if size == k.size, let sha = try? ByteSource(mapping: f).sha256() {
                hashed[f] = sha
                if sha == k.sha { touched.append(f); report.unchanged += 1 } else { todo.append(f) }
            } else {
                todo.append(f)
            }
        }
        // Rows of files no longer under the inputs (of this shard) go.
        let roots = inputs.map(Self.absolute)
        let present = Set(files)
        let gone = known.keys.filter { p in
            !present.contains(p) && (shard?.contains(p) ?? true)
                && roots.contains { r in p == r || p.hasPrefix(r.hasSuffix("/") ? r : r + "/") }
        }
        try transaction {
            let del = try Statement(db, "DELETE FROM images WHERE path = ?", self)
            for p in gone { del.bind(1, p); guard sqlite3_step(del.handle) == SQLITE_DONE else { throw fail("delete") }; del.reset() }
            let upd = try Statement(db, "UPDATE images SET size = ?, mtime_ns = ? WHERE path = ?", self)
            for p in touched {
                let (size, mtime) = stats[p]!
                upd.bind(1, size); upd.bind(2, mtime); upd.bind(3, p)
                guard sqlite3_step(upd.handle) == SQLITE_DONE else { throw fail("update") }
                upd.reset()
            }
        }
        report.removed = gone.count
        // Embed and commit batch by batch.
        let insert = try Statement(db, "INSERT OR REPLACE INTO images(path, size, mtime_ns, sha256, embedding) VALUES(?, ?, ?, ?, ?)", self)
        let drop = try Statement(db, "DELETE FROM images WHERE path = ?", self)
        let d = model.config.projectionDim
        var done = 0
        try Embedder.forEachBatch(todo, model: model, batchSize: batchSize) { b in
            let shas = try b.files.map { try hashed[$0] ?? ByteSource(mapping: $0).sha256() }
            try transaction {
                for (i, f) in b.files.enumerated() {
                    let (size, mtime) = stats[f]!
                    insert.bind(1, f); insert.bind(2, size); insert.bind(3, mtime); insert.bind(4, shas[i])
                    insert.bind(5, Array(b.values[(i * d)..<((i + 1) * d)]))
                    guard sqlite3_step(insert.handle) == SQLITE_DONE else { throw fail("insert") }
                    insert.reset()
                    if known[f] != nil { report.updated += 1 } else { report.added += 1 }
                }
                // A file that changed into something unreadable: its old embedding is wrong now.
                for s in b.skipped where known[s.file] != nil {
                    drop.bind(1, s.file)
                    guard sqlite3_step(drop.handle) == SQLITE_DONE else { throw fail("delete") }
                    drop.reset()
                    report.removed += 1
                }
            }
            report.skipped += b.skipped
            done += b.files.count + b.skipped.count
            progress?(done, todo.count)
        }
        report.total = try count()
        return report
    }

    private func transaction(_ body: () throws -> Void) throws {
        try exec("BEGIN IMMEDIATE")
        do { try body(); try exec("COMMIT") } catch { try? exec("ROLLBACK"); throw error }
    }

    // MARK: - Merge

    public struct MergeReport: Sendable, Codable {
        public var inputs: [String: Int] = [:]
        public var total = 0
    }

    /// Combines indexes made by the same model (shards) into `output` (created or updated).
    public static func merge(_ inputs: [String], into output: String) throws -> MergeReport {
        let out = try PhotoIndex(path: output)
        var info = try out.modelInfo()
        var report = MergeReport()
        for p in inputs {
            if absolute(p) == absolute(output) { throw IndexError(kind: .sqlite, file: p, detail: "an input is the output") }
            let src = try PhotoIndex(path: p, create: false, readOnly: true)
            guard let si = try src.modelInfo() else { throw IndexError(kind: .empty, file: p, detail: "the index has no model: nothing to merge") }
            if let info, info.fingerprint != si.fingerprint {
                throw IndexError(kind: .modelMismatch, file: p, detail: "built by another model: fingerprint \(si.fingerprint) (\(si.modelPath)), "
                                 + "\(output) holds \(info.fingerprint) (\(info.modelPath)); only shards of one model merge")
            }
            try out.transaction {
                if info == nil {
                    try out.setMeta("model_fingerprint", si.fingerprint)
                    try out.setMeta("model_path", si.modelPath)
                    try out.setMeta("dimension", String(si.dimension))
                    try out.setMeta("preprocess", si.preprocess)
                }
            }
            info = si
            let n = try src.count()
            try out.exec("ATTACH DATABASE '\(absolute(p).replacingOccurrences(of: "'", with: "''"))' AS src")
            defer { try? out.exec("DETACH DATABASE src") }
            try out.transaction { try out.exec("INSERT OR REPLACE INTO images SELECT path, size, mtime_ns, sha256, embedding FROM src.images") }
            report.inputs[p] = n
        }
        report.total = try out.count()
        return report
    }

    // MARK: - Search

    /// Every vector of an index, loaded once: `values` is `(paths.count, dimension)` row-major.
    public struct Vectors: Sendable {
        public let paths: [String]
        public let values: [Float]
        public let dimension: Int
    }

    public func vectors() throws -> Vectors {
        guard let info = try modelInfo() else { return Vectors(paths: [], values: [], dimension: 0) }
        let d = info.dimension
        let n = try count()
        var paths: [String] = [], values = [Float]()
        paths.reserveCapacity(n)
        values.reserveCapacity(n * d)
        try? exec("PRAGMA mmap_size = 68719476736")   // read the pages through a mapping, not a read() each
        let s = try Statement(db, "SELECT path, embedding FROM images", self)   // table order: a sequential read
        while try s.row(self) {
            let bytes = Int(sqlite3_column_bytes(s.handle, 1))
            guard bytes == 4 * d, let blob = sqlite3_column_blob(s.handle, 1) else {
                throw IndexError(kind: .sqlite, file: path, detail: "row \(paths.count): embedding of \(bytes) bytes, expected \(4 * d)")
            }
            paths.append(s.text(0))
            values.append(contentsOf: UnsafeBufferPointer(start: blob.assumingMemoryBound(to: Float.self), count: d))
        }
        return Vectors(paths: paths, values: values, dimension: d)
    }

    public struct Hit: Sendable, Codable, Equatable {
        public let rank: Int
        /// Cosine similarity (the embeddings are unit vectors).
        public let score: Float
        public let path: String
    }

    /// Exact top-k by cosine: one matrix-vector product over all rows, then a partial sort
    /// (ties by path).
    public static func search(vector q: [Float], in v: Vectors, topK: Int) -> [Hit] {
        let n = v.paths.count, d = v.dimension
        guard n > 0, q.count == d, topK > 0 else { return [] }
        var scores = [Float](repeating: 0, count: n)
        // A matrix-vector product: memory-bound, so 16-wide dot products streamed over the rows.
        v.values.withUnsafeBufferPointer { m in q.withUnsafeBufferPointer { qp in scores.withUnsafeMutableBufferPointer { sp in
            let mp = m.baseAddress!, qv = qp.baseAddress!, out = sp.baseAddress!
            Kernels.parallelFor(n, grain: 4096) { rows in
                for r in rows {
                    let row = mp + r * d
                    var acc = SIMD16<Float>(), j = 0
                    while j + 16 <= d {
                        acc += UnsafeRawPointer(row + j).loadUnaligned(as: SIMD16<Float>.self)
                            * UnsafeRawPointer(qv + j).loadUnaligned(as: SIMD16<Float>.self)
                        j += 16
                    }
                    var s = acc.sum()
                    while j < d { s += row[j] * qv[j]; j += 1 }
                    out[r] = s
                }
            }
        } } }
        // The k best in a small sorted buffer (k is small; n may be millions).
        let k = min(topK, n)
        var best: [Int] = []
        best.reserveCapacity(k + 1)
        func better(_ a: Int, _ b: Int) -> Bool { scores[a] != scores[b] ? scores[a] > scores[b] : v.paths[a] < v.paths[b] }
        for i in 0..<n {
            if best.count == k, !better(i, best[k - 1]) { continue }
            var lo = 0, hi = best.count
            while lo < hi { let mid = (lo + hi) / 2; if better(best[mid], i) { lo = mid + 1 } else { hi = mid } }
            best.insert(i, at: lo)
            if best.count > k { best.removeLast() }
        }
        return best.enumerated().map { Hit(rank: $0.offset + 1, score: scores[$0.element], path: v.paths[$0.element]) }
    }

    /// By text: the model (the index's own, checked by fingerprint) embeds the query.
    public func search(text: String, model: LiteCLIPModel, modelPath: String, topK: Int, vectors: Vectors? = nil) throws -> [Hit] {
        try check(model: model, modelPath: modelPath)
        return Self.search(vector: try model.embed(texts: [text]).values, in: try vectors ?? self.vectors(), topK: topK)
    }

    /// By example image.
    public func search(imagePath: String, model: LiteCLIPModel, modelPath: String, topK: Int, vectors: Vectors? = nil) throws -> [Hit] {
        try check(model: model, modelPath: modelPath)
        let img = try RGBImage(contentsOf: URL(fileURLWithPath: imagePath))
        return Self.search(vector: try model.embed(images: [img]).values, in: try vectors ?? self.vectors(), topK: topK)
    }
}

extension PhotoIndex {
    /// Benchmarks: `count` rows of seeded random unit vectors (paths `/synthetic/NNNNNNN.jpg`) in
    /// transactions of `batch` rows, under the model's fingerprint.
    func insertSynthetic(count: Int, model: LiteCLIPModel, seed: UInt64 = 1, batch: Int = 10_000) throws {
        try check(model: model, modelPath: model.file, record: true)
        let d = model.config.projectionDim
        var rng = SeededRNG(seed: seed)
        let insert = try Statement(db, "INSERT OR REPLACE INTO images(path, size, mtime_ns, sha256, embedding) VALUES(?, ?, ?, ?, ?)", self)
        var start = 0
        while start < count {
            let end = min(count, start + batch)
            try transaction {
                for i in start..<end {
                    var v = (0..<d).map { _ in rng.nextFloat() * 2 - 1 }
                    let norm = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
                    for k in 0..<d { v[k] /= norm }
                    insert.bind(1, String(format: "/synthetic/%07d.jpg", i)); insert.bind(2, 0); insert.bind(3, 0)
                    insert.bind(4, ""); insert.bind(5, v)
                    guard sqlite3_step(insert.handle) == SQLITE_DONE else { throw fail("insert") }
                    insert.reset()
                }
            }
            start = end
        }
    }
}

/// `liteclip bench MODEL --index-rows N,...`: the photo index at scale, on synthetic vectors.
@_spi(Benchmark) public enum IndexBenchmark {
    public struct Result: Sendable {
        public let rows: Int
        /// Writing the rows (transactions of 10,000).
        public let insertSeconds: Double
        /// Loading every vector (once per process).
        public let loadSeconds: Double
        /// One query by vector (best of the repetitions): the matrix-vector product and the top 10.
        public let queryByVectorSeconds: Double
        /// One query by text, the text's encoding included.
        public let queryByTextSeconds: Double
        public let fileBytes: Int
    }

    public static func run(model: LiteCLIPModel, rows: Int, reps: Int) throws -> Result {
        let dir = NSTemporaryDirectory() + "liteclip-index-bench-\(getpid())-\(rows)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/bench.db"
        let index = try PhotoIndex(path: path)
        var t0 = Date()
        try index.insertSynthetic(count: rows, model: model)
        let insert = Date().timeIntervalSince(t0)
        t0 = Date()
        let v = try index.vectors()
        let load = Date().timeIntervalSince(t0)
        let q = try model.embed(texts: ["a dog on a beach"]).values
        _ = PhotoIndex.search(vector: q, in: v, topK: 10)
        let byVector = InferenceBenchmark.time(reps) { _ = PhotoIndex.search(vector: q, in: v, topK: 10) }
        let byText = InferenceBenchmark.time(reps) { _ = try? index.search(text: "a dog on a beach", model: model, modelPath: model.file, topK: 10, vectors: v) }
        let size = ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? Int) ?? 0
        return Result(rows: rows, insertSeconds: insert, loadSeconds: load, queryByVectorSeconds: byVector, queryByTextSeconds: byText, fileBytes: size)
    }
}
