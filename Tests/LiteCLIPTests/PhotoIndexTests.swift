import Foundation
import XCTest
@testable import LiteCLIP
@testable import TensorIO
import TestSupport
import CSQLite

/// The photo-search index (issue 16): incremental updates, a kill -9 mid-run, model mismatch,
/// shards merged, and top-k equal to a brute force over `liteclip embed`'s output.
final class PhotoIndexTests: XCTestCase {
    static let photos = ["cat.jpg", "car.jpg", "dancing.jpg", "catstuckindoor.jpeg"].map { Fixtures.seed + "/examples/" + $0 }
        + ["jpeg_baseline_240x320.jpg", "jpeg_progressive_333x250.jpg", "jpeg_gray_97x61.jpg", "png_grey16_80x60.png"].map { Fixtures.golden("images/" + $0) }

    /// A folder of the photos above (one in a sub-folder) and a file that is not an image.
    static func folder() throws -> String {
        let dir = Fixtures.tempDir() + "/photos"
        try FileManager.default.createDirectory(atPath: dir + "/sub", withIntermediateDirectories: true)
        for (i, p) in photos.enumerated() {
            let name = (p as NSString).lastPathComponent
            try FileManager.default.copyItem(atPath: p, toPath: dir + (i == 5 ? "/sub/" : "/") + name)
        }
        try "not an image".write(toFile: dir + "/notes.jpg", atomically: true, encoding: .utf8)
        return dir
    }

    static var model: LiteCLIPModel { try! LiteCLIPModel(path: ModelParityTests.lcwPath) }

    func rows(_ db: String) throws -> [String: [Float]] {
        let v = try PhotoIndex(path: db, create: false, readOnly: true).vectors()
        var out: [String: [Float]] = [:]
        for (i, p) in v.paths.enumerated() { out[p] = Array(v.values[(i * v.dimension)..<((i + 1) * v.dimension)]) }
        return out
    }

    func testIncrementalUpdates() throws {
        let dir = try Self.folder(), db = Fixtures.tempDir() + "/p.db", m = Self.model
        let index = try PhotoIndex(path: db)
        var r = try index.update(model: m, modelPath: ModelParityTests.lcwPath, inputs: [dir], batchSize: 3)
        XCTAssertEqual([r.added, r.updated, r.removed, r.unchanged, r.skipped.count, r.total], [8, 0, 0, 0, 1, 8])
        XCTAssertEqual(r.skipped.first?.file, PhotoIndex.absolute(dir + "/notes.jpg"))
        // Every row is the file's embedding.
        let stored = try rows(db)
        let files = try stored.keys.sorted()
        let want = try m.embed(images: files.map { try RGBImage(contentsOf: URL(fileURLWithPath: $0)) })
        for (i, f) in files.enumerated() {
            let diff = zip(stored[f]!, want.values[(i * 256)..<((i + 1) * 256)]).map { abs($0 - $1) }.max()!
            XCTAssertLessThanOrEqual(diff, 1e-6, "\(f): max abs diff \(diff)")
        }
        r = try index.update(model: m, modelPath: ModelParityTests.lcwPath, inputs: [dir])
        XCTAssertEqual([r.added, r.updated, r.removed, r.unchanged, r.total], [0, 0, 0, 8, 8])
        // Change one file's content, touch another, delete one, add one.
        let changed = PhotoIndex.absolute(dir + "/car.jpg")
        try FileManager.default.removeItem(atPath: changed)
        try FileManager.default.copyItem(atPath: Self.photos[2], toPath: changed)
        let touched = dir + "/cat.jpg"
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: 100)], ofItemAtPath: touched)
        try FileManager.default.removeItem(atPath: dir + "/catstuckindoor.jpeg")
        try FileManager.default.copyItem(atPath: Self.photos[3], toPath: dir + "/sub/new.jpeg")
        r = try index.update(model: m, modelPath: ModelParityTests.lcwPath, inputs: [dir])
        XCTAssertEqual([r.added, r.updated, r.removed, r.unchanged, r.total], [1, 1, 1, 6, 8])
        let after = try rows(db)
        XCTAssertNil(after[PhotoIndex.absolute(dir) + "/catstuckindoor.jpeg"])
        XCTAssertEqual(after[changed], after[PhotoIndex.absolute(dir + "/dancing.jpg")], "the changed file now holds dancing.jpg")
        XCTAssertEqual(after[PhotoIndex.absolute(dir + "/sub/new.jpeg")], stored[PhotoIndex.absolute(dir) + "/catstuckindoor.jpeg"])
        // An index of a sub-folder does not remove the rest.
        r = try index.update(model: m, modelPath: ModelParityTests.lcwPath, inputs: [dir + "/sub"])
        XCTAssertEqual([r.removed, r.unchanged, r.total], [0, 2, 8])
    }

    /// `liteclip index` killed with SIGKILL mid-run, then run again: every file exactly once.
    func testKillDuringIndexingLosesNothing() throws {
        let dir = Fixtures.tempDir() + "/many", db = Fixtures.tempDir() + "/k.db"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let n = 400
        for i in 0..<n { try FileManager.default.linkItem(atPath: Self.photos[i % 4], toPath: dir + String(format: "/p%03d.jpg", i)) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLITests.binDir + "/liteclip")
        p.arguments = ["index", ModelParityTests.lcwPath, dir, "--db", db, "--batch-size", "2", "-q"]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let deadline = Date().addingTimeInterval(60)
        var seen = 0
        while p.isRunning && Date() < deadline {
            if FileManager.default.fileExists(atPath: db), let c = try? PhotoIndex(path: db, create: false, readOnly: true).count() { seen = c }
            if seen >= 20 { break }
            usleep(2_000)
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationReason, .uncaughtSignal, "killed mid-run (it had committed \(seen) rows)")
        let committed = try PhotoIndex(path: db, create: false, readOnly: true).count()
        XCTAssertGreaterThanOrEqual(committed, 20)
        XCTAssertLessThan(committed, n, "the run was cut short")
        let r = try CLITests.run("liteclip", ["index", ModelParityTests.lcwPath, dir, "--db", db, "--json"])
        XCTAssertEqual(r.status, 0, r.err)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any])
        XCTAssertEqual(json["added"] as? Int, n - committed)
        XCTAssertEqual(json["unchanged"] as? Int, committed)
        XCTAssertEqual(json["total"] as? Int, n)
        let paths = try PhotoIndex(path: db, create: false, readOnly: true).vectors().paths
        XCTAssertEqual(paths.count, n)
        XCTAssertEqual(Set(paths).count, n, "no path twice")
        XCTAssertEqual(Set(paths), Set((0..<n).map { PhotoIndex.absolute(dir) + String(format: "/p%03d.jpg", $0) }))
    }

    func testAnotherModelIsRefusedAndABadFileIsNotAnIndex() throws {
        let dir = try Self.folder(), db = Fixtures.tempDir() + "/m.db"
        _ = try PhotoIndex(path: db).update(model: Self.model, modelPath: ModelParityTests.lcwPath, inputs: [dir])
        let int8 = try LiteCLIPModel(path: Int8Tests.int8Path)
        XCTAssertThrowsError(try PhotoIndex(path: db).update(model: int8, modelPath: Int8Tests.int8Path, inputs: [dir])) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("built by another model") && s.contains(Self.model.fingerprint) && s.contains(int8.fingerprint), s)
        }
        let r = try CLITests.run("liteclip", ["search", db, "a cat", "--model", Int8Tests.int8Path])
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.err.contains("built by another model"), r.err)
        let junk = Fixtures.tempDir() + "/junk.db"
        try "hello".write(toFile: junk, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try PhotoIndex(path: junk)) { e in XCTAssertTrue("\(e)".contains("not a liteclip photo index"), "\(e)") }
        // Another program's SQLite database is refused and left as it was.
        let other = Fixtures.tempDir() + "/other.db"
        var h: OpaquePointer?
        XCTAssertEqual(sqlite3_open(other, &h), SQLITE_OK)
        XCTAssertEqual(sqlite3_exec(h, "CREATE TABLE photos(id INTEGER PRIMARY KEY, name TEXT)", nil, nil, nil), SQLITE_OK)
        sqlite3_close(h)
        let before = try Data(contentsOf: URL(fileURLWithPath: other))
        XCTAssertThrowsError(try PhotoIndex(path: other)) { e in XCTAssertTrue("\(e)".contains("other tables: photos"), "\(e)") }
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: other)), before)
        let s = try CLITests.run("liteclip", ["search", other, "a cat"])
        XCTAssertEqual(s.status, 1)
        XCTAssertTrue(s.err.contains("not a liteclip photo index"), s.err)
    }

    /// Three shards merged equal the index one machine builds.
    func testShardsMergedEqualOneIndex() throws {
        let dir = try Self.folder(), tmp = Fixtures.tempDir()
        let r = try CLITests.run("liteclip", ["index", ModelParityTests.lcwPath, dir, "--db", tmp + "/all.db", "-q"])
        XCTAssertEqual(r.status, 0, r.err)
        var shardRows = 0
        for i in 0..<3 {
            let s = try CLITests.run("liteclip", ["index", ModelParityTests.lcwPath, dir, "--db", tmp + "/s\(i).db", "--shard", "\(i)/3", "--json"])
            XCTAssertEqual(s.status, 0, s.err)
            shardRows += try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(s.out.utf8)) as? [String: Any])?["total"] as? Int)
        }
        XCTAssertEqual(shardRows, 8, "the shards split the files")
        let m = try CLITests.run("liteclip", ["index", "--merge", tmp + "/s0.db", tmp + "/s1.db", tmp + "/s2.db", "--db", tmp + "/merged.db"])
        XCTAssertEqual(m.status, 0, m.err)
        let one = try rows(tmp + "/all.db"), merged = try rows(tmp + "/merged.db")
        XCTAssertEqual(Set(one.keys), Set(merged.keys))
        var diff: Float = 0
        for (k, v) in one { diff = max(diff, zip(v, merged[k] ?? []).map { abs($0 - $1) }.max() ?? .infinity) }
        XCTAssertLessThanOrEqual(diff, 1e-6, "embeddings: max abs diff \(diff)")
        XCTAssertEqual(try PhotoIndex(path: tmp + "/merged.db").modelInfo(), try PhotoIndex(path: tmp + "/all.db").modelInfo())
        let bad = try CLITests.run("liteclip", ["index", ModelParityTests.lcwPath, dir, "--db", tmp + "/x.db", "--shard", "3/3"])
        XCTAssertEqual(bad.status, 2, bad.err)
    }

    /// `liteclip search` equals a brute force over `liteclip embed`'s vectors, by text and by image.
    func testTopKEqualsBruteForceOverEmbedOutput() throws {
        let dir = try Self.folder(), tmp = Fixtures.tempDir(), db = tmp + "/s.db"
        XCTAssertEqual(try CLITests.run("liteclip", ["index", ModelParityTests.lcwPath, dir, "--db", db, "-q"]).status, 0)
        let e = try CLITests.run("liteclip", ["embed", ModelParityTests.lcwPath, "--images", dir, "--out", tmp + "/i.npy", "-q"])
        XCTAssertEqual(e.status, 0, e.err)
        let names = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: tmp + "/i.names.json"))) as? [String: Any])?["names"] as? [String])
        let images = try Self.npy(tmp + "/i.npy")
        for (query, args) in [("a cat sitting on a sofa", ["a cat sitting on a sofa"]), ("image", ["--image", Self.photos[1]])] {
            let qfile = tmp + "/q.npy"
            let qe = query == "image" ? try CLITests.run("liteclip", ["embed", ModelParityTests.lcwPath, "--images", Self.photos[1], "--out", qfile, "-q"])
                                      : try CLITests.run("liteclip", ["embed", ModelParityTests.lcwPath, "--texts", query, "--out", qfile, "-q"])
            XCTAssertEqual(qe.status, 0, qe.err)
            let q = try Self.npy(qfile)
            let scores = names.indices.map { i in (0..<256).reduce(Float(0)) { $0 + images[i * 256 + $1] * q[$1] } }
            let order = names.indices.sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : names[$0] < names[$1] }
            let s = try CLITests.run("liteclip", ["search", db] + args + ["--top-k", "5", "--json"])
            XCTAssertEqual(s.status, 0, s.err)
            let hits = try JSONDecoder().decode([PhotoIndex.Hit].self, from: Data(s.out.utf8))
            XCTAssertEqual(hits.map(\.path), order.prefix(5).map { PhotoIndex.absolute(names[$0]) }, query)
            for (h, i) in zip(hits, order) { XCTAssertEqual(h.score, scores[i], accuracy: 1e-5, "\(query): \(h.path)") }
            XCTAssertEqual(hits.map(\.rank), [1, 2, 3, 4, 5])
        }
    }

    /// The float32 values of a 2-D `.npy` written by NPYWriter.
    static func npy(_ path: String) throws -> [Float] {
        let d = try Data(contentsOf: URL(fileURLWithPath: path))
        let headerLength = Int(d[8]) | Int(d[9]) << 8
        return d.subdata(in: (10 + headerLength)..<d.count).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }
}
