import Foundation
import TensorIO
import XCTest

/// `JSONCheck` accepts exactly what Foundation's JSON parser accepts on these cases, and
/// `JSONSpans` finds members and reads string arrays as a full decode would.
final class JSONCheckTests: XCTestCase {
    func check(_ text: String) -> JSONCheck.Failure? {
        Array(text.utf8).withUnsafeBytes { JSONCheck.failure(in: $0) }
    }
    func check(_ bytes: [UInt8]) -> JSONCheck.Failure? {
        bytes.withUnsafeBytes { JSONCheck.failure(in: $0) }
    }

    func testAcceptsValidJSON() {
        let valid = [
            "{}", "[]", " {\"a\": 1} ", "0", "-0", "1.5e-3", "-12.0E+7", "\"\"", "true", "false", "null",
            "{\"a\":[1,2,{\"b\":null}],\"c\":\"x\\\"y\\\\z\\/\\b\\f\\n\\r\\t\\u00e9\\uD83D\\uDE00\"}",
            "[\"é\", \"漢字\", \"😀\", \"\u{7F}\"]", "\n\t\r [ [ ] , { } ]\n",
            String(repeating: "[", count: 512) + String(repeating: "]", count: 512),
        ]
        for text in valid {
            XCTAssertNil(check(text), text)
            XCTAssertNoThrow(try JSONSerialization.jsonObject(with: Data(text.utf8), options: .fragmentsAllowed), text)
        }
    }

    func testRefusesInvalidJSONAtTheRightByte() {
        let invalid: [(String, Int)] = [
            ("", 0), ("{", 1), ("{\"a\"}", 4), ("{\"a\":}", 5), ("{\"a\":1,}", 7), ("[1,]", 3), ("[1 2]", 3),
            ("{a:1}", 1), ("01", 1), ("1.", 2), (".5", 0), ("+1", 0), ("1e", 2), ("-", 1), ("tru", 0), ("nul", 0),
            ("\"abc", 4), ("\"a\\x\"", 2), ("\"\\u12g4\"", 1), ("\"a\u{01}b\"", 2), ("{} {}", 3), ("[1]]", 3),
            ("{\"a\":1]", 6), ("[1}", 2), ("'a'", 0), ("NaN", 0),
            (String(repeating: "[", count: 513) + String(repeating: "]", count: 513), 512),
        ]
        for (text, at) in invalid {
            let f = check(text)
            XCTAssertNotNil(f, "accepted \(text.debugDescription)")
            XCTAssertEqual(f?.offset, at, "\(text.debugDescription): \(f.map { "\($0)" } ?? "")")
        }
    }

    func testRefusesInvalidUTF8InStrings() {
        let q = UInt8(ascii: "\"")
        let bad: [[UInt8]] = [
            [0xC0, 0x80], [0xC1, 0xBF], [0xE0, 0x80, 0x80], [0xED, 0xA0, 0x80], [0xF0, 0x80, 0x80, 0x80],
            [0xF4, 0x90, 0x80, 0x80], [0xF5, 0x80, 0x80, 0x80], [0x80], [0xFF], [0xC3], [0xE2, 0x82],
        ]
        for seq in bad {
            let text = [q] + seq + [q]
            XCTAssertNotNil(check(text), "accepted \(seq)")
            XCTAssertThrowsError(try JSONSerialization.jsonObject(with: Data(text), options: .fragmentsAllowed), "\(seq)")
        }
        XCTAssertNil(check([q, 0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0, 0x9F, 0x98, 0x80, q]))
    }

    func testSpansFindMembersAndDuplicates() {
        let text = #"{"a": [1, "]", {"x": "}"}], "b\u0063": "q\"}", "d": 1.5e3, "e": {"f": [true]}, "d": null}"#
        Array(text.utf8).withUnsafeBytes { b in
            func value(_ k: String) -> String? {
                guard case .at(let r) = JSONSpans.topLevelValue(k, in: b) else { return nil }
                return String(decoding: UnsafeRawBufferPointer(rebasing: b[r]), as: UTF8.self)
            }
            XCTAssertEqual(value("a"), #"[1, "]", {"x": "}"}]"#)
            XCTAssertEqual(value("bc"), #""q\"}""#)
            XCTAssertEqual(value("e"), #"{"f": [true]}"#)
            XCTAssertEqual(JSONSpans.topLevelValue("d", in: b), .duplicate)
            XCTAssertEqual(JSONSpans.topLevelValue("z", in: b), .absent)
            XCTAssertEqual(JSONSpans.topLevelValues(["e", "z", "d"], in: b).map { if case .at = $0 { return "at" } else { return "\($0)" } },
                           ["at", "absent", "duplicate"])
        }
    }

    func testStringArrayReadsAsJSONDecoderDoes() throws {
        let text = ###"[ "a", "##b", "\"", "\\", "\u00e9t\u00e9", "été", "😀", "", "tab\there" ]"###
        let expected = try JSONDecoder().decode([String].self, from: Data(text.utf8))
        XCTAssertEqual(Array(text.utf8).withUnsafeBytes { JSONSpans.stringArray($0) }, expected)
        for bad in [#"["a", 1]"#, #"["a",]"#, #"["a"] x"#, #"{"a": 1}"#, "[\"a\u{01}\"]", #"["a""#] {
            XCTAssertNil(Array(bad.utf8).withUnsafeBytes { JSONSpans.stringArray($0) }, bad)
        }
        XCTAssertNil(([UInt8(ascii: "["), UInt8(ascii: "\""), 0xFF, UInt8(ascii: "\""), UInt8(ascii: "]")]).withUnsafeBytes { JSONSpans.stringArray($0) })
        XCTAssertEqual(Array("[]".utf8).withUnsafeBytes { JSONSpans.stringArray($0) }, [])
    }
}
