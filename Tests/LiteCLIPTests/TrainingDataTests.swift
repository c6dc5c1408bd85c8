import Foundation
import XCTest
@testable import LiteCLIP
import TensorIO
import TestSupport

/// The data side of `liteclip train`: captions files (formats/captions.md), the seeded
/// generator, the split by image and the threaded batch loader.
final class TrainingDataTests: XCTestCase {
    static let tokenizer = BertTokenizer(spec: try! TokenizerSpec.load(vocabTxt: Fixtures.vocab))

    /// A temporary dataset: `Images/` holding an empty file per name in `images` (existence is
    /// all loading checks) and the captions file `name` holding `bytes`.
    struct TempData {
        let dir: String
        let captions: String
        let images: String
        func path(_ rel: String) -> String { images + "/" + rel }
    }

    func makeData(_ bytes: [UInt8], name: String = "captions.txt", images: [String]) -> TempData {
        let dir = Fixtures.tempDir()
        let imagesDir = dir + "/Images"
        try! FileManager.default.createDirectory(atPath: imagesDir, withIntermediateDirectories: true)
        for img in images {
            let p = imagesDir + "/" + img
            try! FileManager.default.createDirectory(atPath: (p as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            XCTAssertTrue(FileManager.default.createFile(atPath: p, contents: Data()))
        }
        let captions = dir + "/" + name
        XCTAssertTrue(FileManager.default.createFile(atPath: captions, contents: Data(bytes)))
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        return TempData(dir: dir, captions: captions, images: imagesDir)
    }

    func makeData(_ text: String, name: String = "captions.txt", images: [String]) -> TempData {
        makeData(Array(text.utf8), name: name, images: images)
    }

    func assertBadConfig(_ what: String, contains fragment: String = "", file: StaticString = #filePath, line: UInt = #line,
                         _ body: () throws -> CaptionDataset) {
        do {
            let d = try body()
            XCTFail("\(what): expected ModelError.badConfig, got \(d.samples.count) samples", file: file, line: line)
        } catch let e as ModelError {
            XCTAssertEqual(e.code, .badConfig, "\(what): \(e)", file: file, line: line)
            XCTAssertTrue(e.description.contains(fragment), "\(what): '\(e)' should mention '\(fragment)'", file: file, line: line)
        } catch {
            XCTFail("\(what): expected ModelError.badConfig, got \(error)", file: file, line: line)
        }
    }

    /// `file:line: ...` for each skipped row, as line numbers.
    func skippedLines(_ d: CaptionDataset, _ t: TempData, file: StaticString = #filePath, line: UInt = #line) -> [Int] {
        d.skipped.map { s in
            XCTAssertTrue(s.hasPrefix(t.captions + ":"), "skip line must start with the file: \(s)", file: file, line: line)
            let rest = s.dropFirst(t.captions.count + 1)
            return Int(rest.prefix { $0.isNumber }) ?? -1
        }
    }

    // MARK: - CSV

    func testFlickr8kLayout() throws {
        let text = """
        image,caption
        1000268201_693b08cb0e.jpg,A child in a pink dress is climbing up a set of stairs in an entry way .
        1000268201_693b08cb0e.jpg,A girl going into a wooden building .
        1001773457_577c3a7d70.jpg,A black dog and a spotted dog are fighting
        1001773457_577c3a7d70.jpg,"A black dog and a tri-colored dog playing with each other on the road ."

        """
        let t = makeData(text, images: ["1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg"])
        let d = try CaptionDataset.load(captions: t.captions, images: t.images)
        XCTAssertEqual(d.format, .csv)
        XCTAssertEqual(d.skipped, [])
        XCTAssertEqual(d.samples, [
            CaptionSample(image: t.path("1000268201_693b08cb0e.jpg"), caption: "A child in a pink dress is climbing up a set of stairs in an entry way .", line: 2),
            CaptionSample(image: t.path("1000268201_693b08cb0e.jpg"), caption: "A girl going into a wooden building .", line: 3),
            CaptionSample(image: t.path("1001773457_577c3a7d70.jpg"), caption: "A black dog and a spotted dog are fighting", line: 4),
            CaptionSample(image: t.path("1001773457_577c3a7d70.jpg"), caption: "A black dog and a tri-colored dog playing with each other on the road .", line: 5),
        ])
        XCTAssertEqual(d.imageCount, 2)
    }

    func testCSVQuotingBOMCRLFEmbeddedNewlinesAndExtraColumns() throws {
        // Columns in another order with extra ones; BOM; CRLF; a lone CR; quoted commas, doubled
        // quotes, a line break inside quotes (the next row starts two lines later); an unquoted
        // field with a quote in it (kept as text); trailing empty extra column.
        let rows = [
            "id,Caption , source,IMAGE",
            "1,\"a dog, running\",x,a.jpg",
            "2,\"she said \"\"hi\"\"\",y,b.jpg",
            "3,\"two\r\nlines\",z,sub/c.jpg",
            "4,a 5\" ruler,w,a.jpg",
            "",
            "5,last,,b.jpg",
        ]
        var bytes: [UInt8] = [0xEF, 0xBB, 0xBF]
        bytes += Array(rows.joined(separator: "\r\n").utf8)
        bytes += Array("\r6,old mac line end,v,a.jpg\n".utf8)
        let t = makeData(bytes, name: "data.csv", images: ["a.jpg", "b.jpg", "sub/c.jpg"])
        let d = try CaptionDataset.load(captions: t.captions, images: t.images)
        XCTAssertEqual(d.skipped, [])
        XCTAssertEqual(d.samples.map(\.caption), ["a dog, running", "she said \"hi\"", "two\r\nlines", "a 5\" ruler", "last", "old mac line end"])
        XCTAssertEqual(d.samples.map(\.image), ["a.jpg", "b.jpg", "sub/c.jpg", "a.jpg", "b.jpg", "a.jpg"].map(t.path))
        XCTAssertEqual(d.samples.map(\.line), [2, 3, 4, 6, 8, 9])
    }

    func testFormatDetectedFromContentForOtherNames() throws {
        let csv = makeData("image,caption\na.jpg,a cat\n", name: "pairs.data", images: ["a.jpg"])
        XCTAssertEqual(try CaptionDataset.load(captions: csv.captions, images: csv.images).format, .csv)
        let jsonl = makeData("\n  {\"image\": \"a.jpg\", \"caption\": \"a cat\"}\n", name: "pairs.data", images: ["a.jpg"])
        let d = try CaptionDataset.load(captions: jsonl.captions, images: jsonl.images)
        XCTAssertEqual(d.format, .jsonl)
        XCTAssertEqual(d.samples, [CaptionSample(image: jsonl.path("a.jpg"), caption: "a cat", line: 2)])
    }

    func testCSVBadRowsAreSkippedWithLineNumbers() throws {
        var lines = [
            "image,caption",                                   // 1
            "a.jpg,good one",                                  // 2
            "a.jpg",                                           // 3  too few fields
            "a.jpg,one,two",                                   // 4  too many fields
            "a.jpg,   ",                                       // 5  empty caption
            " ,a caption",                                     // 6  empty image
            "a.jpg,\"closed\"then text",                       // 7  text after closing quote
            "missing.jpg,no such image",                       // 8  image file not found
            "folder,a folder is not an image",                 // 9  not a file
            "a.jpg," + String(repeating: "x", count: 100_001), // 10 caption too long
            "b.jpg,good two",                                  // 11
            "a.jpg,\"never closed",                            // 12 unclosed quote: costs only this line
            "b.jpg,good three",                                // 13
        ]
        lines.append("a.jpg," + String(repeating: "y", count: 100_000))   // 14 exactly at the limit: kept
        var bytes = Array(lines.joined(separator: "\n").utf8)
        bytes += Array("\nb.jpg,bad ".utf8) + [0xFF, 0xFE]                        // 15 invalid UTF-8
        bytes += Array("\nb.jpg,good four".utf8)                                  // 16, no final newline
        let t = makeData(bytes, images: ["a.jpg", "b.jpg"])
        try FileManager.default.createDirectory(atPath: t.path("folder"), withIntermediateDirectories: true)
        let d = try CaptionDataset.load(captions: t.captions, images: t.images)
        XCTAssertEqual(d.samples.map(\.line), [2, 11, 13, 14, 16])
        XCTAssertEqual(d.samples.map(\.caption).prefix(3), ["good one", "good two", "good three"])
        XCTAssertEqual(d.samples.last?.caption, "good four")
        XCTAssertEqual(skippedLines(d, t), [3, 4, 5, 6, 7, 8, 9, 10, 12, 15], d.skipped.joined(separator: "\n"))
        let why = Dictionary(uniqueKeysWithValues: zip(skippedLines(d, t), d.skipped))
        XCTAssertTrue(why[3]!.contains("1 fields, the header has 2"), why[3]!)
        XCTAssertTrue(why[4]!.contains("unquoted comma"), why[4]!)
        XCTAssertTrue(why[5]!.contains("caption is empty"), why[5]!)
        XCTAssertTrue(why[6]!.contains("image field is empty"), why[6]!)
        XCTAssertTrue(why[7]!.contains("closing quote"), why[7]!)
        XCTAssertTrue(why[8]!.contains("image file not found: " + t.path("missing.jpg")), why[8]!)
        XCTAssertTrue(why[9]!.contains("image file not found"), why[9]!)
        XCTAssertTrue(why[10]!.contains("100001 bytes"), why[10]!)
        XCTAssertTrue(why[12]!.contains("never closed"), why[12]!)
        XCTAssertTrue(why[15]!.contains("UTF-8"), why[15]!)
    }

    func testAbsoluteImagePathsAreAllowed() throws {
        let other = Fixtures.tempDir()
        defer { try? FileManager.default.removeItem(atPath: other) }
        XCTAssertTrue(FileManager.default.createFile(atPath: other + "/x.png", contents: Data()))
        let t = makeData("image,caption\n\(other)/x.png,elsewhere\n", images: [])
        let d = try CaptionDataset.load(captions: t.captions, images: t.images)
        XCTAssertEqual(d.samples, [CaptionSample(image: other + "/x.png", caption: "elsewhere", line: 2)])
    }

    func testUnusableFilesThrow() {
        let imgs = ["a.jpg"]
        let noHeader = makeData("a.jpg,a cat\na.jpg,a dog\n", images: imgs)
        assertBadConfig("headerless Flickr8k rows", contains: "add the line 'image,caption'") {
            try CaptionDataset.load(captions: noHeader.captions, images: noHeader.images)
        }
        let wrongHeader = makeData("file,text\na.jpg,a cat\n", images: imgs)
        assertBadConfig("header without image/caption", contains: "'file', 'text'") {
            try CaptionDataset.load(captions: wrongHeader.captions, images: wrongHeader.images)
        }
        let twice = makeData("image,caption,image\na.jpg,a cat,a.jpg\n", images: imgs)
        assertBadConfig("ambiguous header", contains: "2 times") {
            try CaptionDataset.load(captions: twice.captions, images: twice.images)
        }
        let empty = makeData("\n\n", images: imgs)
        assertBadConfig("empty CSV", contains: "empty") { try CaptionDataset.load(captions: empty.captions, images: empty.images) }
        let emptyJSONL = makeData("", name: "c.jsonl", images: imgs)
        assertBadConfig("empty JSONL", contains: "empty") { try CaptionDataset.load(captions: emptyJSONL.captions, images: emptyJSONL.images) }
        let allBad = makeData("image,caption\nnope.jpg,a cat\na.jpg,\n", images: imgs)
        assertBadConfig("no usable rows", contains: "no usable rows (2 skipped)") {
            try CaptionDataset.load(captions: allBad.captions, images: allBad.images)
        }
        assertBadConfig("missing captions file", contains: "cannot read") {
            try CaptionDataset.load(captions: allBad.dir + "/nope.txt", images: allBad.images)
        }
        assertBadConfig("captions path is a folder", contains: "cannot read") {
            try CaptionDataset.load(captions: allBad.images, images: allBad.images)
        }
        assertBadConfig("missing images folder", contains: "images folder") {
            try CaptionDataset.load(captions: allBad.captions, images: allBad.dir + "/NoImages")
        }
        let array = makeData("[{\"image\": \"a.jpg\", \"caption\": \"a cat\"}]\n", name: "c.json", images: imgs)
        assertBadConfig("JSON array", contains: "JSON array") { try CaptionDataset.load(captions: array.captions, images: array.images) }
    }

    func testOversizedCaptionsFileIsRefused() throws {
        // A sparse file one byte over the limit: refused from its size, never read.
        let t = makeData("image,caption\n", images: [])
        let h = try XCTUnwrap(FileHandle(forWritingAtPath: t.captions))
        try h.truncate(atOffset: UInt64(CaptionDataset.maxFileBytes + 1))
        try h.close()
        assertBadConfig("1 GiB + 1", contains: "1 GiB") { try CaptionDataset.load(captions: t.captions, images: t.images) }
    }

    // MARK: - JSON lines

    func testJSONLines() throws {
        let text = [
            "{\"image\": \"a.jpg\", \"caption\": \"a cat\", \"extra\": 1}",          // 1
            "",                                                                     // 2 blank
            "{\"caption\": \"quote \\\" and \\u00e9\", \"image\": \"b.jpg\"}\r",   // 3 CRLF, escapes
            "{\"image\": \"a.jpg\", \"caption\": \"a cat\"",                        // 4 invalid JSON
            "[1, 2]",                                                               // 5 not an object
            "{\"image\": \"a.jpg\", \"caption\": 7}",                               // 6 not a string
            "{\"image\": \"a.jpg\"}",                                               // 7 no caption
            "{\"caption\": \"x\"}",                                                 // 8 no image
            "{\"image\": \"gone.jpg\", \"caption\": \"x\"}",                        // 9 missing file
            "   ",                                                                  // 10 blank
            "{\"image\": \"b.jpg\", \"caption\": \"multi\\nline\"}",                // 11
        ].joined(separator: "\n") + "\n"
        let t = makeData(text, name: "pairs.jsonl", images: ["a.jpg", "b.jpg"])
        let d = try CaptionDataset.load(captions: t.captions, images: t.images)
        XCTAssertEqual(d.format, .jsonl)
        XCTAssertEqual(d.samples, [
            CaptionSample(image: t.path("a.jpg"), caption: "a cat", line: 1),
            CaptionSample(image: t.path("b.jpg"), caption: "quote \" and \u{e9}", line: 3),
            CaptionSample(image: t.path("b.jpg"), caption: "multi\nline", line: 11),
        ])
        XCTAssertEqual(skippedLines(d, t), [4, 5, 6, 7, 8, 9])
        let why = Dictionary(uniqueKeysWithValues: zip(skippedLines(d, t), d.skipped))
        XCTAssertTrue(why[4]!.hasSuffix("not valid JSON"), why[4]!)
        XCTAssertTrue(why[5]!.hasSuffix("not a JSON object"), why[5]!)
        XCTAssertTrue(why[6]!.hasSuffix("'caption' is not a string"), why[6]!)
        XCTAssertTrue(why[7]!.hasSuffix("no caption field"), why[7]!)
        XCTAssertTrue(why[8]!.hasSuffix("no image field"), why[8]!)
        XCTAssertTrue(why[9]!.contains("image file not found"), why[9]!)
    }

    func testJSONLinesWithBOM() throws {
        let t = makeData([0xEF, 0xBB, 0xBF] + Array("{\"image\": \"a.jpg\", \"caption\": \"a cat\"}".utf8), name: "c.json", images: ["a.jpg"])
        let d = try CaptionDataset.load(captions: t.captions, images: t.images)
        XCTAssertEqual(d.samples, [CaptionSample(image: t.path("a.jpg"), caption: "a cat", line: 1)])
    }

    // MARK: - Split

    /// `images` images with 1 to 5 captions each, interleaved as a real file may be.
    func syntheticDataset(images: Int) -> CaptionDataset {
        var rng = SeededRNG(seed: 99)
        var samples: [CaptionSample] = []
        for i in 0..<images {
            for k in 0...rng.nextInt(below: 5) {
                samples.append(CaptionSample(image: "/img/\(i).jpg", caption: "caption \(k) of \(i)", line: samples.count + 2))
            }
        }
        let shuffled = samples.seededShuffled(&rng).enumerated().map { k, s in CaptionSample(image: s.image, caption: s.caption, line: k + 2) }
        return CaptionDataset(samples: shuffled)
    }

    func testSplitByImage() {
        let d = syntheticDataset(images: 50)
        let (train, val) = d.split(valFraction: 0.2, seed: 42)
        // Every sample lands on exactly one side; both sides keep file order.
        XCTAssertEqual(train.count + val.count, d.samples.count)
        XCTAssertEqual(Set(train.map(\.line)).union(val.map(\.line)), Set(d.samples.map(\.line)))
        XCTAssertEqual(train.map(\.line), train.map(\.line).sorted())
        XCTAssertEqual(val.map(\.line), val.map(\.line).sorted())
        // By image: no image on both sides, all its captions on its side, round(0.2 * 50) = 10 images in val.
        let trainImages = Set(train.map(\.image)), valImages = Set(val.map(\.image))
        XCTAssertTrue(trainImages.isDisjoint(with: valImages))
        XCTAssertEqual(valImages.count, 10)
        XCTAssertEqual(trainImages.count, 40)
        for img in valImages {
            XCTAssertEqual(val.filter { $0.image == img }.count, d.samples.filter { $0.image == img }.count)
        }
        // Deterministic for a seed, different for another.
        let again = d.split(valFraction: 0.2, seed: 42)
        XCTAssertEqual(again.train, train)
        XCTAssertEqual(again.val, val)
        XCTAssertNotEqual(Set(d.split(valFraction: 0.2, seed: 43).val.map(\.image)), valImages)
    }

    func testSplitSizes() {
        let d = syntheticDataset(images: 10)
        func valImages(_ f: Double) -> Int { Set(d.split(valFraction: f, seed: 1).val.map(\.image)).count }
        XCTAssertEqual(d.split(valFraction: 0, seed: 1).val, [])
        XCTAssertEqual(d.split(valFraction: 0, seed: 1).train, d.samples)
        XCTAssertEqual(valImages(0.2), 2)
        XCTAssertEqual(valImages(0.25), 2)     // round(2.5) = 2, half to even as Python
        XCTAssertEqual(valImages(0.75), 8)     // round(7.5) = 8
        XCTAssertEqual(valImages(0.04), 0)
        XCTAssertEqual(valImages(1), 10)
        XCTAssertEqual(d.split(valFraction: 1, seed: 1).train, [])
        XCTAssertEqual(valImages(.nan), 0)
        XCTAssertNoThrow(try CaptionDataset.validate(valFraction: 0))
        XCTAssertNoThrow(try CaptionDataset.validate(valFraction: 0.2))
        for bad in [-0.1, 1, 1.5, .nan, .infinity] {
            XCTAssertThrowsError(try CaptionDataset.validate(valFraction: bad), "\(bad)")
        }
    }

    // MARK: - Random numbers

    func testRNGKnownAnswers() {
        // Independent reference: SplitMix64's first output for seed 0 is 0xE220A8397B1DCDAF
        // (splitmix64.c); the rest pinned from a Python transcription of xoshiro256starstar.c.
        var r0 = SeededRNG(seed: 0)
        XCTAssertEqual(r0.state, [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F, 0xF88B_B8A8_724C_81EC])
        XCTAssertEqual((0..<4).map { _ in r0.next() },
                       [0x99EC_5F36_CB75_F2B4, 0xBF6E_1F78_4956_452A, 0x1A5F_849D_4933_E6E0, 0x6AA5_94F1_262D_2D2C])
        var r42 = SeededRNG(seed: 42)
        XCTAssertEqual(r42.state, [0xBDD7_3226_2FEB_6E95, 0x28EF_E333_B266_F103, 0x4752_6757_130F_9F52, 0x581C_E1FF_0E4A_E394])
        XCTAssertEqual((0..<4).map { _ in r42.next() },
                       [0x1578_0B2E_0C2E_C716, 0x6104_D986_6D11_3A7E, 0xAE17_5332_39E4_99A1, 0xECB8_AD47_03B3_60A1])
        // nextFloat: the top 24 bits of next().
        var f = SeededRNG(seed: 0)
        XCTAssertEqual(f.nextFloat(), Float(0x99EC5F) * 0x1p-24)
        XCTAssertEqual(f.nextFloat(), Float(0xBF6E1F) * 0x1p-24)
    }

    func testRNGStateSaveAndRestore() {
        var a = SeededRNG(seed: 123)
        for _ in 0..<10 { _ = a.next() }
        let saved = a.state
        let ahead = (0..<5).map { _ in a.next() }
        var b = SeededRNG(state: saved)
        XCTAssertEqual((0..<5).map { _ in b.next() }, ahead)
        XCTAssertEqual(a.state, b.state)
        XCTAssertTrue(SeededRNG.isValid(state: saved))
        XCTAssertFalse(SeededRNG.isValid(state: [0, 0, 0, 0]))
        XCTAssertFalse(SeededRNG.isValid(state: [1, 2, 3]))
    }

    func testFloatsAndBoundedIntegers() {
        var r = SeededRNG(seed: 5)
        var sum = 0.0
        for _ in 0..<10_000 {
            let x = r.nextFloat()
            XCTAssertTrue(x >= 0 && x < 1)
            sum += Double(x)
        }
        XCTAssertEqual(sum / 10_000, 0.5, accuracy: 0.02)
        // Uniform over 0..<6: each count within 5 standard deviations of n/6.
        var counts = [Int](repeating: 0, count: 6)
        for _ in 0..<60_000 { counts[r.nextInt(below: 6)] += 1 }
        for c in counts { XCTAssertEqual(Double(c), 10_000, accuracy: 5 * (60_000.0 * (1 / 6.0) * (5 / 6.0)).squareRoot(), "\(counts)") }
        XCTAssertEqual((0..<100).map { _ in r.nextInt(below: 1) }, Array(repeating: 0, count: 100))
        let huge = r.nextInt(below: Int.max)
        XCTAssertTrue(huge >= 0 && huge < Int.max)
    }

    func testSeededShuffle() {
        var r = SeededRNG(seed: 7)
        // Pinned from the Python transcription of Fisher-Yates over nextInt(below:).
        XCTAssertEqual(Array(0..<10).seededShuffled(&r), [1, 8, 3, 0, 4, 5, 9, 6, 2, 7])
        var a = SeededRNG(seed: 8), b = SeededRNG(seed: 8)
        let x = Array(0..<1000).seededShuffled(&a), y = Array(0..<1000).seededShuffled(&b)
        XCTAssertEqual(x, y)
        XCTAssertEqual(x.sorted(), Array(0..<1000))
        XCTAssertNotEqual(x, Array(0..<1000))
        XCTAssertEqual(a.state, b.state)
        XCTAssertEqual([Int]().seededShuffled(&a), [])
        XCTAssertEqual([5].seededShuffled(&a), [5])
    }

    // MARK: - Batch loader

    /// Golden images (JPEG and PNG, several sizes) plus a corrupt `.jpg`, as samples.
    func loaderSamples(corruptAt: Int?) -> (samples: [CaptionSample], dir: String) {
        let names = ["jpeg_1x1.jpg", "jpeg_gray_97x61.jpg", "png_rgb_50x30.png", "jpeg_cmyk_64x80.jpg", "png_rgba_70x52.png",
                     "png_rgb_3x3.png", "jpeg_baseline_240x320.jpg", "png_grey_75x50.png", "png_palette_trns_96x64.png",
                     "jpeg_progressive_333x250.jpg"]
        let dir = Fixtures.tempDir()
        addTeardownBlock { try? FileManager.default.removeItem(atPath: dir) }
        let corrupt = dir + "/corrupt.jpg"
        _ = FileManager.default.createFile(atPath: corrupt, contents: Data([0xFF, 0xD8, 0xFF, 0xE0] + (0..<500).map { UInt8(truncatingIfNeeded: $0 &* 37) }))
        var samples = names.enumerated().map { i, n in
            CaptionSample(image: Fixtures.golden("images/" + n), caption: "caption number \(i) for \(n)", line: i + 2)
        }
        if let k = corruptAt { samples.insert(CaptionSample(image: corrupt, caption: "broken", line: 99), at: k) }
        return (samples, dir)
    }

    func testBatchLoaderMatchesSerialComputation() throws {
        let (samples, _) = loaderSamples(corruptAt: 5)   // 11 samples: batches of 4, 4, 3; the corrupt one in batch 1
        let pre = ImagePreprocessor(.seed)
        // The serial computation: every sample decoded and preprocessed in order.
        var expected: [String: [Float]] = [:]
        for s in samples where !s.image.hasSuffix("corrupt.jpg") {
            expected[s.image] = pre.pixelValues(try ImageDecoder.decode(path: s.image))
        }
        for (workers, prefetch) in [(1, 1), (2, 2), (3, 1), (4, 8)] {
            let loader = BatchLoader(samples: samples, batchSize: 4, preprocess: .seed, tokenizer: Self.tokenizer,
                                     workers: workers, prefetch: prefetch)
            XCTAssertEqual(loader.batchCount, 3)
            var batches: [TrainingBatch] = []
            while let b = loader.next() { batches.append(b) }
            XCTAssertNil(loader.next())
            XCTAssertEqual(batches.map(\.count), [4, 3, 3], "workers \(workers) prefetch \(prefetch)")
            XCTAssertEqual(batches.flatMap(\.samples), samples.filter { !$0.image.hasSuffix("corrupt.jpg") })
            XCTAssertEqual(batches.map(\.skipped.count), [0, 1, 0])
            XCTAssertTrue(batches[1].skipped[0].hasPrefix(samples[5].image + ": "), batches[1].skipped[0])
            for (k, b) in batches.enumerated() {
                let want = b.samples.flatMap { expected[$0.image]! }
                XCTAssertEqual(b.pixels.count, b.count * 3 * 224 * 224)
                XCTAssertTrue(b.pixels.elementsEqual(want) { $0.bitPattern == $1.bitPattern }, "batch \(k): pixels differ from ImagePreprocessor")
                XCTAssertEqual(b.tokens, Self.tokenizer.encodeBatch(b.samples.map(\.caption)), "batch \(k)")
                XCTAssertEqual(b.tokens.length, 128)
            }
        }
    }

    func testBatchLoaderSmallCropAndEmptyBatch() throws {
        var config = PreprocessConfig.seed
        config.resize = 40
        config.centerCrop = 32
        let pre = ImagePreprocessor(config)
        let (samples, dir) = loaderSamples(corruptAt: nil)
        let bad = CaptionSample(image: dir + "/corrupt.jpg", caption: "broken", line: 99)
        let gone = CaptionSample(image: dir + "/gone.jpg", caption: "missing", line: 100)
        // Batch 1 has only failures: it comes back empty, holding its reports.
        let all = Array(samples[0..<2]) + [bad, gone] + Array(samples[2..<5])
        let loader = BatchLoader(samples: all, batchSize: 2, preprocess: config, tokenizer: Self.tokenizer, workers: 2, prefetch: 2)
        var batches: [TrainingBatch] = []
        while let b = loader.next() { batches.append(b) }
        XCTAssertEqual(batches.map(\.count), [2, 0, 2, 1])
        XCTAssertEqual(batches.map(\.skipped.count), [0, 2, 0, 0])
        XCTAssertTrue(batches[1].skipped[0].hasPrefix(bad.image + ": "), batches[1].skipped[0])
        XCTAssertTrue(batches[1].skipped[1].hasPrefix(gone.image + ": "), batches[1].skipped[1])
        XCTAssertEqual(batches[1].pixels, [])
        XCTAssertEqual(batches[1].tokens.batchSize, 0)
        let want = try all.filter { $0 != bad && $0 != gone }.flatMap { pre.pixelValues(try ImageDecoder.decode(path: $0.image)) }
        XCTAssertTrue(batches.flatMap(\.pixels).elementsEqual(want) { $0.bitPattern == $1.bitPattern })
        XCTAssertEqual(batches[0].pixels.count, 2 * 3 * 32 * 32)
    }

    /// Polls `condition` every 10 ms for up to `seconds`.
    func waitUntil(seconds: Double = 20, _ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while !condition() {
            if Date() > deadline { return false }
            Thread.sleep(forTimeInterval: 0.01)
        }
        return true
    }

    func testBatchLoaderStaysWithinPrefetch() {
        var config = PreprocessConfig.seed
        config.resize = 16
        config.centerCrop = 16
        let (base, _) = loaderSamples(corruptAt: nil)
        let samples = base + base                    // 20 samples, 10 batches of 2
        let loader = BatchLoader(samples: samples, batchSize: 2, preprocess: config, tokenizer: Self.tokenizer, workers: 3, prefetch: 2)
        // Unread, the workers stop after 2 batches (4 images) and wait.
        XCTAssertTrue(waitUntil { loader.progress.handedOut == 4 })
        Thread.sleep(forTimeInterval: 0.2)
        XCTAssertEqual(loader.progress.handedOut, 4)
        XCTAssertEqual(loader.progress.running, 3)
        // Each batch taken lets them start one more.
        XCTAssertEqual(loader.next()?.samples, Array(samples[0..<2]))
        XCTAssertTrue(waitUntil { loader.progress.handedOut == 6 })
        Thread.sleep(forTimeInterval: 0.2)
        XCTAssertEqual(loader.progress.handedOut, 6)
        var rest: [CaptionSample] = []
        while let b = loader.next() { rest += b.samples }
        XCTAssertEqual(rest, Array(samples[2...]))
        // Done: every worker has exited on its own.
        XCTAssertTrue(waitUntil { loader.progress.running == 0 }, "\(loader.progress)")
    }

    func testBatchLoaderCancelAndDeinitDoNotHang() {
        let (base, _) = loaderSamples(corruptAt: nil)
        let many = (0..<30).flatMap { _ in base }      // 300 samples, 150 batches
        let start = Date()
        let loader = BatchLoader(samples: many, batchSize: 2, preprocess: .seed, tokenizer: Self.tokenizer, workers: 2, prefetch: 2)
        XCTAssertEqual(loader.batchCount, 150)
        XCTAssertEqual(loader.next()?.count, 2)
        XCTAssertEqual(loader.next()?.count, 2)
        loader.cancel()
        XCTAssertNil(loader.next())
        XCTAssertNil(loader.next())
        loader.cancel()    // twice is fine
        XCTAssertTrue(waitUntil { loader.progress.running == 0 }, "workers still running after cancel: \(loader.progress)")
        XCTAssertLessThan(loader.progress.handedOut, many.count)
        // Dropped without reading: deinit cancels its workers.
        do {
            let other = BatchLoader(samples: many, batchSize: 4, preprocess: .seed, tokenizer: Self.tokenizer)
            XCTAssertEqual(other.batchCount, 75)
        }
        // Nothing to load.
        let none = BatchLoader(samples: [], batchSize: 8, preprocess: .seed, tokenizer: Self.tokenizer)
        XCTAssertEqual(none.batchCount, 0)
        XCTAssertNil(none.next())
        XCTAssertLessThan(Date().timeIntervalSince(start), 60, "cancel should return at once")
    }
}
