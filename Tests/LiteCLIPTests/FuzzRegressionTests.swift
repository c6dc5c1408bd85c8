import Foundation
import XCTest
import LiteCLIP
import LiteCLIPFuzz
import TestSupport

/// Replays every committed fuzz input (golden/fuzz/<target>/: inputs that once crashed, hung or
/// blew memory, plus the corpus entries kept as regression cases) through the same entry points
/// the fuzz targets call (`FuzzEntry`), without sanitizers, so a fixed bug stays fixed. Each
/// input must end, in a typed error that says what is wrong or successfully (the slowest is
/// printed; hangs are the fuzzer's -timeout to find).
final class FuzzRegressionTests: XCTestCase {
    func testEveryCommittedFuzzInputEndsCleanly() throws {
        FuzzEntry.sharedTokenizer = BertTokenizer(spec: try TokenizerSpec.load(vocabTxt: Fixtures.vocab))
        var replayed = 0, slowest: (String, Double) = ("", 0)
        for target in FuzzEntry.allCases {
            let dir = Fixtures.golden("fuzz/\(target.rawValue)")
            let names = (try? FileManager.default.contentsOfDirectory(atPath: dir))?.filter { !$0.hasPrefix(".") }.sorted() ?? []
            for name in names {
                let data = try XCTUnwrap(FileManager.default.contents(atPath: dir + "/" + name), name)
                let start = Date()
                let error = target.run([UInt8](data))
                let seconds = Date().timeIntervalSince(start)
                if seconds > slowest.1 { slowest = ("\(target.rawValue)/\(name)", seconds) }
                if let error { XCTAssertFalse("\(error)".isEmpty, "\(target.rawValue)/\(name): an error must say what is wrong") }
                replayed += 1
            }
        }
        XCTAssertGreaterThan(replayed, 0, "golden/fuzz holds the regression inputs")
        print("replayed \(replayed) fuzz inputs; slowest \(slowest.0) in \(String(format: "%.3f", slowest.1)) s")
    }

    /// The micro model the lcw target is seeded with is a valid liteCLIP file.
    func testMicroSeedIsAValidModel() throws {
        let path = Fixtures.tempDir() + "/micro.lcw"
        try FuzzEntry.writeMicroLCW(to: path)
        let m = try LiteCLIPModel(path: path)
        XCTAssertEqual(m.config.text.hiddenSize, 4)
        XCTAssertNil(FuzzEntry.lcw.run([UInt8](try XCTUnwrap(FileManager.default.contents(atPath: path)))))
    }
}
