import Foundation
import XCTest
@testable import LiteCLIP
import TensorIO
import TestSupport

/// The Swift WordPiece tokenizer against the seed's fast tokenizer (golden/tokens.json, written
/// by golden/generate_tokens.py from `AutoTokenizer.from_pretrained(seed/model)`).
final class TokenizerTests: XCTestCase {
    struct Case {
        let category: String
        let text: String
        let ids: [Int32]
    }

    static let golden: (maxLength: Int, padId: Int32, cases: [Case]) = {
        let path = Fixtures.golden("tokens.json")
        let data = FileManager.default.contents(atPath: path)!
        let obj = try! JSONSerialization.jsonObject(with: data) as! [String: Any]
        let cases = (obj["cases"] as! [[String: Any]]).map { c in
            Case(category: c["category"] as! String, text: c["text"] as! String,
                 ids: (c["ids"] as! [NSNumber]).map { $0.int32Value })
        }
        return ((obj["max_length"] as! NSNumber).intValue, (obj["pad_id"] as! NSNumber).int32Value, cases)
    }()

    static let vocabSpec: TokenizerSpec = try! TokenizerSpec.load(vocabTxt: Fixtures.vocab)
    static let tokenizer = BertTokenizer(spec: vocabSpec)

    /// Control, invisible and non-ASCII characters as `\u{…}`, so a failure report is readable.
    static func escaped(_ s: String) -> String {
        var out = ""
        for c in s.unicodeScalars {
            if c.value >= 0x20 && c.value < 0x7F && c != "\\" && c != "\"" { out.unicodeScalars.append(c) }
            else { out += "\\u{" + String(c.value, radix: 16, uppercase: true) + "}" }
        }
        return "\"" + out + "\""
    }

    /// Checks `tok` on every golden case and reports all failures in one message.
    func checkAllCases(_ tok: BertTokenizer, _ label: String, file: StaticString = #filePath, line: UInt = #line) {
        let g = Self.golden
        XCTAssertGreaterThanOrEqual(g.cases.count, 1200, "golden/tokens.json looks truncated", file: file, line: line)
        var failures: [String] = []
        for c in g.cases {
            let got = tok.encode(c.text, maxLength: g.maxLength)
            if got != c.ids {
                let pieces = tok.tokenize(c.text).prefix(40).joined(separator: " ")
                failures.append("[\(c.category)] \(Self.escaped(c.text))\n    expected \(c.ids)\n    got      \(got)\n    pieces   \(pieces)")
            }
        }
        if !failures.isEmpty {
            XCTFail("\(label): \(failures.count) of \(g.cases.count) cases differ from the fast tokenizer:\n"
                    + failures.joined(separator: "\n"), file: file, line: line)
        }
    }

    func testGoldenCasesFromVocabTxt() {
        checkAllCases(Self.tokenizer, "vocab.txt")
        // Every category the generator writes is present.
        let cats = Set(Self.golden.cases.map(\.category))
        for c in ["seed_labels", "captions", "punctuation", "numbers", "accents", "mixed_case", "scripts", "cjk",
                  "emoji", "combining", "control", "whitespace", "special_tokens", "web", "long_words",
                  "long_texts", "fuzz"] {
            XCTAssertTrue(cats.contains(c), "no \(c) cases in golden/tokens.json")
        }
        XCTAssertTrue(Self.golden.cases.contains { $0.ids.count == Self.golden.maxLength }, "no truncated case")
    }

    func testGoldenCasesFromTokenizerJSON() throws {
        let spec = try TokenizerSpec.load(tokenizerJSON: Fixtures.seed + "/model/tokenizer.json")
        XCTAssertEqual(spec.vocab, Self.vocabSpec.vocab)
        XCTAssertEqual(spec.stripAccents, nil)
        XCTAssertTrue(spec.doLowerCase && spec.cleanText && spec.tokenizeChineseChars)
        checkAllCases(BertTokenizer(spec: spec), "tokenizer.json")
    }

    /// The hand-written encoding (tokens passed as strings) gives the synthesized decoder back
    /// every field, with and without the optional one.
    func testSpecEncodingRoundTrips() throws {
        var spec = Self.vocabSpec
        for strip in [nil, true, false] as [Bool?] {
            spec.stripAccents = strip
            spec.maxLength = 77
            spec.maskToken = "[M]"
            let back = try JSONDecoder().decode(TokenizerSpec.self, from: JSONCoding.encode(spec))
            XCTAssertEqual(back, spec, "strip_accents \(String(describing: strip))")
        }
    }

    /// vocab.txt lines end at "\n", "\r\n" or "\r", as Hugging Face's `load_vocab` reads them
    /// (Python's universal newlines); an empty line is a token; a missing final newline changes
    /// nothing.
    func testVocabLinesSplitAsPythonReadsThem() throws {
        let dir = Fixtures.tempDir()
        let specials = "[PAD]\n[UNK]\r\n[CLS]\r[SEP]\n[MASK]\n"
        try Data((specials + "caf\u{e9}\r\nb\n\nz").utf8).write(to: URL(fileURLWithPath: dir + "/vocab.txt"))
        let spec = try TokenizerSpec.load(vocabTxt: dir + "/vocab.txt")
        XCTAssertEqual(spec.vocab, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "caf\u{e9}", "b", "", "z"])
        try Data([0x5B, 0x50, 0x41, 0x44, 0x5D, 0x0A, 0xFF, 0x0A]).write(to: URL(fileURLWithPath: dir + "/vocab.txt"))
        XCTAssertThrowsError(try TokenizerSpec.load(vocabTxt: dir + "/vocab.txt")) { XCTAssertTrue("\($0)".contains("not UTF-8"), "\($0)") }
    }

    /// The vocabulary table compares tokens byte for byte, as Python's dict does: canonically
    /// equivalent spellings are different tokens, and a repeated token keeps its last id.
    func testVocabTableMatchesPythonDictSemantics() {
        let precomposed = "caf\u{E9}", decomposed = "cafe\u{301}"
        XCTAssertEqual(precomposed, decomposed, "Swift calls these equal; Python does not")
        let t = VocabTable(["[PAD]", precomposed, "x", "##s", "x", ""])
        XCTAssertEqual(t[precomposed], 1)
        XCTAssertNil(t[decomposed])
        XCTAssertEqual(t["x"], 4, "a repeated token keeps its last id")
        XCTAssertEqual(t["##s"], 3)
        XCTAssertEqual(t[""], 5)
        XCTAssertNil(t["##"])
        // Every token of the seed's vocabulary finds the id a dict built in order would give it.
        var last: [[UInt8]: Int32] = [:]
        for (i, token) in Self.vocabSpec.vocab.enumerated() { last[Array(token.utf8)] = Int32(i) }
        let table = VocabTable(Self.vocabSpec.vocab)
        let wrong = Self.vocabSpec.vocab.filter { table[$0] != last[Array($0.utf8)] }
        XCTAssertEqual(wrong, [], "tokens looked up to the wrong id")
    }

    func testSeedLabels() {
        let tok = Self.tokenizer
        XCTAssertEqual(tok.encode("a photo of a dog"), [101, 1037, 6302, 1997, 1037, 3899, 102])
        XCTAssertEqual(tok.encode("a photo of a cat"), [101, 1037, 6302, 1997, 1037, 4937, 102])
        XCTAssertEqual(tok.encode("the photo of a human baby"), [101, 1996, 6302, 1997, 1037, 2529, 3336, 102])

        let b = tok.encodeBatch(["a photo of a dog", "a photo of a cat", "the photo of a human baby"])
        XCTAssertEqual(b.batchSize, 3)
        XCTAssertEqual(b.length, 128)
        XCTAssertEqual(b.lengths, [7, 7, 8])
        XCTAssertEqual(Array(b.row(2).prefix(10)), [101, 1996, 6302, 1997, 1037, 2529, 3336, 102, 0, 0])
        XCTAssertEqual(Array(b.attentionMask[256..<266]), [1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    }

    /// `padding='max_length', truncation=True`: every row exactly `length` long, `[CLS] … [SEP]`
    /// then `[PAD]` (id 0), mask 1 on the real tokens and 0 on the padding.
    func testBatchPaddingMaskAndLengths() {
        let g = Self.golden
        let tok = Self.tokenizer
        let picks = [0, 1, 2, 10, 500]
            + g.cases.indices.filter { g.cases[$0].ids.count == g.maxLength }.prefix(3)
            + g.cases.indices.filter { g.cases[$0].ids.count == 2 }.prefix(3)
            + g.cases.indices.filter { g.cases[$0].category == "special_tokens" }.prefix(3)
        let cases = picks.map { g.cases[$0] }
        let b = tok.encodeBatch(cases.map(\.text))
        XCTAssertEqual(b.batchSize, cases.count)
        XCTAssertEqual(b.length, g.maxLength)
        XCTAssertEqual(b.ids.count, cases.count * g.maxLength)
        XCTAssertEqual(b.attentionMask.count, cases.count * g.maxLength)
        for (i, c) in cases.enumerated() {
            let n = c.ids.count
            XCTAssertEqual(b.lengths[i], n, Self.escaped(c.text))
            XCTAssertEqual(Array(b.row(i)), c.ids + [Int32](repeating: g.padId, count: g.maxLength - n), Self.escaped(c.text))
            let mask = Array(b.attentionMask[(i * b.length)..<((i + 1) * b.length)])
            XCTAssertEqual(mask, [Int32](repeating: 1, count: n) + [Int32](repeating: 0, count: g.maxLength - n))
        }

        // Another max_length (Python: max_length=16 keeps 14 pieces, cut inside a word).
        let text = "a man in a red shirt is climbing a rock wall with unbelievably tall ropes"
        let s = tok.encodeBatch([text, "", "dog"], maxLength: 16)
        XCTAssertEqual(s.length, 16)
        XCTAssertEqual(Array(s.row(0)), [101, 1037, 2158, 1999, 1037, 2417, 3797, 2003, 8218, 1037, 2600, 2813, 2007, 4895, 8671, 102])
        XCTAssertEqual(Array(s.row(1)), [101, 102] + [Int32](repeating: 0, count: 14))
        XCTAssertEqual(Array(s.row(2)), [101, 3899, 102] + [Int32](repeating: 0, count: 13))
        XCTAssertEqual(s.lengths, [16, 2, 3])
        XCTAssertEqual(s.attentionMask.reduce(0, +), 21)
        XCTAssertEqual(tok.encode(text, maxLength: 3), [101, 1037, 102])
        XCTAssertEqual(tok.encode(text, maxLength: 2), [101, 102])
        XCTAssertEqual(tok.encode(text).count, 21)

        // Truncation of longer inputs agrees with truncating the 128-token golden ids.
        for c in g.cases where c.ids.count > 20 {
            XCTAssertEqual(tok.encode(c.text, maxLength: 20), Array(c.ids.prefix(19)) + [102], Self.escaped(c.text))
        }
        XCTAssertEqual(tok.encodeBatch([]).ids, [])
    }

    /// Expectations checked with the Python fast tokenizer's `tok.tokenize`.
    func testTokenize() {
        let tok = Self.tokenizer
        XCTAssertEqual(tok.tokenize("A Photo of a CAT!"), ["a", "photo", "of", "a", "cat", "!"])
        XCTAssertEqual(tok.tokenize("the [MASK] is Running"), ["the", "[MASK]", "is", "running"])
        XCTAssertEqual(tok.tokenize("[mask]"), ["[", "mask", "]"])
        XCTAssertEqual(tok.tokenize("İstanbul ΟΔΟΣ"), ["istanbul", "ο", "##δ", "##ο", "##σ"])
        XCTAssertEqual(tok.tokenize("café\u{200B}naïve"), ["cafe", "##nai", "##ve"])  // U+200B is Cf: removed
        XCTAssertEqual(tok.tokenize("犬a中"), ["犬", "a", "中"])
        XCTAssertEqual(tok.tokenize("狗a猫"), ["[UNK]", "a", "[UNK]"])  // not in the vocabulary
        XCTAssertEqual(tok.tokenize(String(repeating: "x", count: 101)), ["[UNK]"])
        XCTAssertEqual(tok.tokenize(""), [])
        XCTAssertEqual(tok.tokenize(" \t\r\n\u{3000}"), [])
    }

    /// The embedded category tables are well formed (sorted, disjoint, inclusive pairs).
    func testCharacterTables() {
        for (name, t) in [("other", BertUnicode.otherRanges), ("nonspacing", BertUnicode.nonspacingMarkRanges),
                          ("punctuation", BertUnicode.punctuationRanges)] {
            XCTAssertEqual(t.count % 2, 0, name)
            for i in stride(from: 0, to: t.count, by: 2) {
                XCTAssertLessThanOrEqual(t[i], t[i + 1], "\(name) pair \(i / 2)")
                if i > 0 { XCTAssertGreaterThan(t[i], t[i - 1] + 1, "\(name) pair \(i / 2) not disjoint or not merged") }
            }
        }
        XCTAssertTrue(BertUnicode.isControl("\u{AD}"))
        XCTAssertFalse(BertUnicode.isControl("\t"))
        XCTAssertTrue(BertUnicode.isPunctuation("\u{166D}"))      // Po in Unicode 8.0, So today
        XCTAssertFalse(BertUnicode.isPunctuation("\u{2E5D}"))     // punctuation since Unicode 14
        XCTAssertTrue(BertUnicode.isPunctuation("$"))             // ASCII symbol, is_ascii_punctuation
        XCTAssertTrue(BertUnicode.isNonspacingMark("\u{0301}"))
        XCTAssertFalse(BertUnicode.isNonspacingMark("\u{1885}"))  // Mn only since Unicode 9
        XCTAssertTrue(BertUnicode.isChinese(0x2B920))
        XCTAssertFalse(BertUnicode.isChinese(0x2B820))
    }

}
