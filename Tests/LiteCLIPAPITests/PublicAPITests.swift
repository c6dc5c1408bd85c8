import Foundation
import XCTest
import LiteCLIP          // the public API only: no @testable
import TestSupport

/// The README's "Use as a library" snippet, compiled as written against the `LiteCLIP` product
/// and run on the golden model, then checked against the flat-array API and the PyTorch-checked
/// zero-shot path.
final class PublicAPITests: XCTestCase {
    /// A folder holding liteclip2.lcw (the golden checkpoint, converted) and cat.jpg; the
    /// snippet's relative paths resolve there.
    static let folder: String = {
        let dir = Fixtures.tempDir()
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        _ = try! Converter.convert(input: Fixtures.golden("liteclip2.pt"), output: dir + "/liteclip2.lcw", options: o)
        try! FileManager.default.copyItem(atPath: Fixtures.seed + "/examples/cat.jpg", toPath: dir + "/cat.jpg")
        return dir
    }()

    func testTheReadmeSnippet() throws {
        let previous = FileManager.default.currentDirectoryPath
        XCTAssertTrue(FileManager.default.changeCurrentDirectoryPath(Self.folder))
        defer { FileManager.default.changeCurrentDirectoryPath(previous) }

        // ---- the snippet, as in README.md ----
        let model = try LiteCLIPModel(contentsOf: URL(fileURLWithPath: "liteclip2.lcw"))
        let photo = try RGBImage(contentsOf: URL(fileURLWithPath: "cat.jpg"))           // JPEG, PNG or WebP
        let drawn = try RGBImage(width: 2, height: 1, pixels: [255, 0, 0, 0, 255, 0])  // in memory, row-major RGB8
        let images: Embeddings = try model.embed(images: [photo, drawn])                // 2 x 256, L2-normalised
        let texts: Embeddings = try model.embed(texts: ["a photo of a cat", "a photo of a dog"])
        print(images.count, images.dimension, images[0].count)                         // 2 256 256
        let similarity: [[Float]] = images.cosineSimilarity(to: texts)                 // 2 x 2
        let ranked: [ZeroShotResult] = try model.classify(photo, labels: ["a photo of a cat", "a photo of a dog"])
        print(ranked[0].label, ranked[0].probability, ranked[0].logit)                 // most probable first
        do { _ = try LiteCLIPModel(contentsOf: URL(fileURLWithPath: "missing.lcw")) }
        catch { print(error.localizedDescription) }                                    // names the file and the reason
        // ---- end of the snippet ----

        // ---- the index snippet, as in README.md ----
        let index = try PhotoIndex(path: "photos.db")                                   // SQLite, created if missing
        let changes = try index.update(model: model, modelPath: "liteclip2.lcw", inputs: ["."])
        print(changes.added, changes.updated, changes.removed, changes.unchanged, changes.skipped.count)
        let hits: [PhotoIndex.Hit] = try index.search(text: "a photo of a cat", model: model, modelPath: "liteclip2.lcw", topK: 3)
        print(hits[0].rank, hits[0].score, hits[0].path)                               // exact cosine top-k
        let vectors = try index.vectors()                                               // load once, query many times
        let similar = PhotoIndex.search(vector: Array(images[0]), in: vectors, topK: 3)
        // ---- end of the index snippet ----
        XCTAssertEqual([changes.added, changes.updated, changes.removed, changes.unchanged], [1, 0, 0, 0])
        XCTAssertEqual(hits.count, 1)
        XCTAssertTrue(hits[0].path.hasSuffix("/cat.jpg"), hits[0].path)
        XCTAssertEqual(hits[0].score, similarity[0][0], accuracy: 1e-5)
        XCTAssertEqual(similar.first?.score ?? 0, 1, accuracy: 1e-5)
        try? FileManager.default.removeItem(atPath: "photos.db")

        let d = model.config.projectionDim
        XCTAssertEqual(images.count, 2)
        XCTAssertEqual(images.dimension, d)
        XCTAssertEqual(images[0].count, d)
        XCTAssertEqual(texts.count, 2)
        for i in 0..<2 {
            let norm = images[i].reduce(0) { $0 + $1 * $1 }.squareRoot()
            XCTAssertEqual(norm, 1, accuracy: 1e-5, "image \(i) is not unit length")
        }
        // The same numbers as the flat-array path the parity tests hold to PyTorch.
        let flat = model.imageEmbeddings(pixels: try model.pixelValues(imagePath: "cat.jpg"), batch: 1)
        let maxDiff = zip(images[0], flat).map { abs($0 - $1) }.max() ?? .infinity
        XCTAssertLessThanOrEqual(maxDiff, 1e-6, "embed(images:) vs imageEmbeddings: max abs diff \(maxDiff)")
        let dot = zip(images[1], texts[0]).reduce(Float(0)) { $0 + $1.0 * $1.1 }
        XCTAssertEqual(similarity[1][0], dot, accuracy: 1e-6)
        XCTAssertEqual(similarity.count, 2)
        XCTAssertEqual(similarity[0].count, 2)
        // classify = the seed's zero-shot pipeline, most probable first.
        let report = try model.zeroShot(imagePath: "cat.jpg", labels: ["a photo of a cat", "a photo of a dog"])
        XCTAssertEqual(ranked, report.ranking)
        XCTAssertGreaterThanOrEqual(ranked[0].probability, ranked[1].probability)
        XCTAssertEqual(ranked.map(\.probability).reduce(0, +), 1, accuracy: 1e-5)
        // Errors are LocalizedError: the message names the file and the reason.
        XCTAssertThrowsError(try LiteCLIPModel(contentsOf: URL(fileURLWithPath: "missing.lcw"))) { e in
            XCTAssertTrue(e.localizedDescription.contains("missing.lcw"), e.localizedDescription)
            XCTAssertTrue(e.localizedDescription.lowercased().contains("no such file"), e.localizedDescription)
        }
        XCTAssertThrowsError(try RGBImage(width: 2, height: 2, pixels: [1, 2, 3])) { e in
            XCTAssertTrue(e.localizedDescription.contains("3 bytes for a 2x2"), e.localizedDescription)
        }
        XCTAssertThrowsError(try model.classify(photo, labels: ["only one"]))
    }

    /// A `.pt` with the tokenizer beside it opens directly (converted in memory, nothing written)
    /// and gives the `.lcw`'s embeddings exactly; so does a training checkpoint's model.
    func testCheckpointsOpenWithoutConverting() throws {
        let dir = Fixtures.tempDir()
        try FileManager.default.copyItem(atPath: Fixtures.golden("liteclip2.pt"), toPath: dir + "/liteclip2.pt")
        try FileManager.default.copyItem(atPath: Fixtures.vocab, toPath: dir + "/vocab.txt")
        try FileManager.default.copyItem(atPath: Fixtures.golden("config.json"), toPath: dir + "/config.json")
        let fromPT = try LiteCLIPModel(contentsOf: URL(fileURLWithPath: dir + "/liteclip2.pt"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["config.json", "liteclip2.pt", "vocab.txt"])
        let fromLCW = try LiteCLIPModel(contentsOf: URL(fileURLWithPath: Self.folder + "/liteclip2.lcw"))
        let texts = ["a dog runs", "two cats"]
        XCTAssertEqual(try fromPT.embed(texts: texts), try fromLCW.embed(texts: texts))
        XCTAssertThrowsError(try LiteCLIPModel(contentsOf: URL(fileURLWithPath: Fixtures.golden("liteclip2.pt")))) { e in
            XCTAssertTrue(e.localizedDescription.contains("vocab.txt"), e.localizedDescription)   // says what is missing
        }
    }

    /// One model, four concurrent tasks: the same vectors as sequential calls.
    func testConcurrentTasksGetTheSequentialVectors() async throws {
        let model = try LiteCLIPModel(contentsOf: URL(fileURLWithPath: Self.folder + "/liteclip2.lcw"))
        let photo = try RGBImage(contentsOf: URL(fileURLWithPath: Self.folder + "/cat.jpg"))
        let inputs: [(RGBImage, String)] = (0..<4).map { i in
            (try! RGBImage(width: 3 + i, height: 2, pixels: (0..<((3 + i) * 6)).map { UInt8(($0 * 37 + i * 11) % 256) }), "caption number \(i)")
        }
        let sequential = try inputs.map { (try model.embed(images: [photo, $0.0]), try model.embed(texts: [$0.1, "a cat"])) }
        let concurrent = try await withThrowingTaskGroup(of: (Int, Embeddings, Embeddings).self) { group in
            for (i, input) in inputs.enumerated() {
                group.addTask { (i, try model.embed(images: [photo, input.0]), try model.embed(texts: [input.1, "a cat"])) }
            }
            var out = [(Embeddings, Embeddings)?](repeating: nil, count: inputs.count)
            for try await (i, img, txt) in group { out[i] = (img, txt) }
            return out.map { $0! }
        }
        for i in 0..<inputs.count {
            XCTAssertEqual(concurrent[i].0, sequential[i].0, "task \(i): image embeddings differ")
            XCTAssertEqual(concurrent[i].1, sequential[i].1, "task \(i): text embeddings differ")
        }
    }
}
