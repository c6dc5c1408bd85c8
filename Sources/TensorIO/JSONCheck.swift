import Foundation

/// A strict check that bytes are one JSON text (RFC 8259), without building anything: the
/// `.lcw` header is checked whole this way, then only the members a reader needs are decoded
/// (`JSONSpans` finds them). Building the whole header with `JSONDecoder` cost a model open
/// milliseconds for a vocabulary it then decoded a second time.
///
/// Refused: anything but one value with surrounding white space; a control character or invalid
/// UTF-8 (overlong, surrogate, above U+10FFFF, cut short) in a string; an unknown escape or a
/// `\u` without four hex digits; a number outside the grammar (`01`, `1.`, `.5`, `+1`, `1e`);
/// nesting deeper than `maxDepth`.
public enum JSONCheck {
    public struct Failure: Error, Equatable, CustomStringConvertible {
        /// Byte offset of the first byte that is not allowed where it stands.
        public let offset: Int
        public let reason: String
        public var description: String { "\(reason) at byte \(offset)" }
    }

    public static let maxDepth = 512

    /// nil when `s` is one JSON text; otherwise where and why it is not.
    public static func failure(in s: UnsafeRawBufferPointer) -> Failure? {
        var scan = Scan(s: s)
        return scan.run()
    }

    private struct Scan {
        let s: UnsafeRawBufferPointer
        var i = 0

        init(s: UnsafeRawBufferPointer) { self.s = s }

        enum Expect { case value, key, after }

        mutating func ws() {
            while i < s.count {
                let c = s[i]
                guard c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 else { return }
                i += 1
            }
        }

        func fail(_ reason: String) -> Failure { Failure(offset: i, reason: reason) }

        mutating func run() -> Failure? {
            var stack: [UInt8] = []   // the open containers: "{" or "["
            var expect = Expect.value
            while true {
                ws()
                switch expect {
                case .value:
                    guard i < s.count else { return fail("the text ends where a value should be") }
                    let c = s[i]
                    if c == UInt8(ascii: "{") || c == UInt8(ascii: "[") {
                        guard stack.count < JSONCheck.maxDepth else { return fail("nesting deeper than \(JSONCheck.maxDepth)") }
                        stack.append(c)
                        i += 1
                        ws()
                        let close = c == UInt8(ascii: "{") ? UInt8(ascii: "}") : UInt8(ascii: "]")
                        if i < s.count, s[i] == close {
                            stack.removeLast()
                            i += 1
                            expect = .after
                        } else {
                            expect = c == UInt8(ascii: "{") ? .key : .value
                        }
                    } else if c == UInt8(ascii: "\"") {
                        if let f = string() { return f }
                        expect = .after
                    } else if c == UInt8(ascii: "-") || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) {
                        if let f = number() { return f }
                        expect = .after
                    } else {
                        if let f = literal() { return f }
                        expect = .after
                    }
                case .key:
                    guard i < s.count, s[i] == UInt8(ascii: "\"") else { return fail("an object member must start with a string key") }
                    if let f = string() { return f }
                    ws()
                    guard i < s.count, s[i] == UInt8(ascii: ":") else { return fail("a key must be followed by ':'") }
                    i += 1
                    expect = .value
                case .after:
                    guard let top = stack.last else {
                        return i == s.count ? nil : fail("characters after the end of the JSON value")
                    }
                    guard i < s.count else { return fail("the text ends inside an \(top == UInt8(ascii: "{") ? "object" : "array")") }
                    let c = s[i]
                    if c == UInt8(ascii: ",") {
                        i += 1
                        expect = top == UInt8(ascii: "{") ? .key : .value
                    } else if (c == UInt8(ascii: "}") && top == UInt8(ascii: "{")) || (c == UInt8(ascii: "]") && top == UInt8(ascii: "[")) {
                        stack.removeLast()
                        i += 1
                    } else {
                        return fail("expected ',' or '\(top == UInt8(ascii: "{") ? "}" : "]")'")
                    }
                }
            }
        }

        /// At the opening quote; on success past the closing one.
        mutating func string() -> Failure? {
            i += 1
            while i < s.count {
                let c = s[i]
                if c == UInt8(ascii: "\"") { i += 1; return nil }
                if c < 0x20 { return fail("a control character in a string") }
                if c == UInt8(ascii: "\\") {
                    guard i + 1 < s.count else { break }
                    switch s[i + 1] {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"), UInt8(ascii: "f"),
                         UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                        i += 2
                    case UInt8(ascii: "u"):
                        guard i + 6 <= s.count, (2..<6).allSatisfy({ isHex(s[i + $0]) }) else { return fail("\\u must be followed by four hex digits") }
                        i += 6
                    default:
                        return fail("an unknown escape in a string")
                    }
                    continue
                }
                if c < 0x80 { i += 1; continue }
                if let f = utf8Sequence(c) { return f }
            }
            return fail("a string is not closed")
        }

        /// One multi-byte UTF-8 sequence starting with lead byte `c` at `i` (Unicode 15, table 3-7).
        mutating func utf8Sequence(_ c: UInt8) -> Failure? {
            var lo: UInt8 = 0x80, hi: UInt8 = 0xBF
            let more: Int
            switch c {
            case 0xC2...0xDF: more = 1
            case 0xE0: more = 2; lo = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: more = 2
            case 0xED: more = 2; hi = 0x9F
            case 0xF0: more = 3; lo = 0x90
            case 0xF1...0xF3: more = 3
            case 0xF4: more = 3; hi = 0x8F
            default: return fail("invalid UTF-8 in a string")
            }
            guard i + more < s.count else { return fail("invalid UTF-8 in a string") }
            guard s[i + 1] >= lo, s[i + 1] <= hi else { return fail("invalid UTF-8 in a string") }
            for k in stride(from: 2, through: more, by: 1) where s[i + k] & 0xC0 != 0x80 {
                return fail("invalid UTF-8 in a string")
            }
            i += 1 + more
            return nil
        }

        func isHex(_ c: UInt8) -> Bool {
            (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "f"))
                || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "F"))
        }

        mutating func digits() -> Int {
            let start = i
            while i < s.count, s[i] >= UInt8(ascii: "0"), s[i] <= UInt8(ascii: "9") { i += 1 }
            return i - start
        }

        /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
        mutating func number() -> Failure? {
            if s[i] == UInt8(ascii: "-") { i += 1 }
            guard i < s.count, s[i] >= UInt8(ascii: "0"), s[i] <= UInt8(ascii: "9") else { return fail("a number needs a digit") }
            if s[i] == UInt8(ascii: "0") {
                i += 1
                if i < s.count, s[i] >= UInt8(ascii: "0"), s[i] <= UInt8(ascii: "9") { return fail("a number has a leading zero") }
            } else {
                _ = digits()
            }
            if i < s.count, s[i] == UInt8(ascii: ".") {
                i += 1
                guard digits() > 0 else { return fail("a number needs a digit after '.'") }
            }
            if i < s.count, s[i] == UInt8(ascii: "e") || s[i] == UInt8(ascii: "E") {
                i += 1
                if i < s.count, s[i] == UInt8(ascii: "+") || s[i] == UInt8(ascii: "-") { i += 1 }
                guard digits() > 0 else { return fail("a number needs a digit in its exponent") }
            }
            return nil
        }

        mutating func literal() -> Failure? {
            for word in ["true", "false", "null"] {
                let w = Array(word.utf8)
                if i + w.count <= s.count, (0..<w.count).allSatisfy({ s[i + $0] == w[$0] }) {
                    i += w.count
                    return nil
                }
            }
            return fail("not a JSON value")
        }
    }
}

/// Where the members of a JSON object lie in its text, found by skipping values without building
/// them. Only for text already known to be valid JSON (`JSONCheck`): on other text the spans
/// found are unspecified, but never outside the text.
public enum JSONSpans {
    public enum Found: Equatable { case absent, duplicate, at(Range<Int>) }

    /// The bytes of the value of top-level member `key` (compared after unescaping).
    public static func topLevelValue(_ key: String, in data: Data) -> Data? {
        data.withUnsafeBytes { b in
            if case .at(let r) = topLevelValue(key, in: b) { return Data(UnsafeRawBufferPointer(rebasing: b[r])) }
            return nil
        }
    }

    /// The byte range of the value of top-level member `key` (compared after unescaping).
    public static func topLevelValue(_ key: String, in s: UnsafeRawBufferPointer) -> Found {
        topLevelValues([key], in: s)[0]
    }

    /// `topLevelValue` for each of `keys`, in one pass over the text.
    public static func topLevelValues(_ keys: [String], in s: UnsafeRawBufferPointer) -> [Found] {
        var found = [Found](repeating: .absent, count: keys.count)
        let literals = keys.map { Array(("\"" + $0 + "\"").utf8) }
        forEachMember(in: s) { k, v in
            var index = literals.firstIndex { k.elementsEqual($0) }
            if index == nil, k.contains(UInt8(ascii: "\\")), let name = try? JSONDecoder().decode(String.self, from: Data(k)) {
                index = keys.firstIndex(of: name)
            }
            guard let i = index else { return true }
            found[i] = found[i] == .absent ? .at(v) : .duplicate
            return true
        }
        return found
    }

    /// Calls `body(key literal with its quotes, value range)` for each member of the object `s`
    /// holds, in order, until it returns false.
    static func forEachMember(in s: UnsafeRawBufferPointer, _ body: (UnsafeRawBufferPointer, Range<Int>) -> Bool) {
        guard let base = s.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return }
        var c = Skipper(p: base, n: s.count)
        c.ws()
        guard c.i < c.n, base[c.i] == UInt8(ascii: "{") else { return }
        c.i += 1
        while true {
            c.ws()
            guard c.i < c.n, base[c.i] == UInt8(ascii: "\"") else { return }
            let k = c.i
            c.skipString()
            let key = UnsafeRawBufferPointer(rebasing: s[k..<c.i])
            c.ws()
            guard c.i < c.n, base[c.i] == UInt8(ascii: ":") else { return }
            c.i += 1
            c.ws()
            guard c.i < c.n else { return }
            let v = c.i
            c.skipValue()
            guard c.i > v, body(key, v..<c.i) else { return }
            c.ws()
            guard c.i < c.n, base[c.i] == UInt8(ascii: ",") else { return }
            c.i += 1
        }
    }

    /// Moves over JSON text without building it.
    private struct Skipper {
        let p: UnsafePointer<UInt8>
        let n: Int
        var i = 0

        init(p: UnsafePointer<UInt8>, n: Int) { (self.p, self.n) = (p, n) }

        mutating func ws() {
            while i < n, p[i] == 0x20 || p[i] == 0x0A || p[i] == 0x0D || p[i] == 0x09 { i += 1 }
        }

        /// At the opening quote; after it, past the closing one (a quote after an odd number of
        /// backslashes is escaped).
        mutating func skipString() {
            var j = i + 1
            while j < n, let q = memchr(p + j, 0x22, n - j) {
                let k = q.assumingMemoryBound(to: UInt8.self) - UnsafeMutablePointer(mutating: p)
                var b = k - 1
                while b > i && p[b] == UInt8(ascii: "\\") { b -= 1 }
                if (k - 1 - b) % 2 == 0 { i = k + 1; return }
                j = k + 1
            }
            i = n
        }

        /// At a value's first byte; after it, just past its end.
        mutating func skipValue() {
            if p[i] == UInt8(ascii: "\"") { skipString(); return }
            var depth = 0
            while i < n {
                let c = p[i]
                if c == UInt8(ascii: "\"") {
                    skipString()
                    if depth == 0 { return }
                    continue
                }
                if c == UInt8(ascii: "{") || c == UInt8(ascii: "[") {
                    depth += 1
                } else if c == UInt8(ascii: "}") || c == UInt8(ascii: "]") {
                    if depth == 0 { return }
                    depth -= 1
                    if depth == 0 { i += 1; return }
                } else if depth == 0 && (c == UInt8(ascii: ",") || c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09) {
                    return
                }
                i += 1
            }
        }
    }

    /// The strings of a JSON array of strings (`["a", "b\n"]`), or nil when `s` is anything
    /// else. Unescaped strings are taken as their UTF-8 bytes (checked when not ASCII); escaped
    /// ones go through `JSONDecoder` one by one (a vocabulary has a handful).
    public static func stringArray(_ s: UnsafeRawBufferPointer) -> [String]? {
        guard let base = s.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return nil }
        let n = s.count
        var i = 0, out: [String] = []
        @inline(__always) func ws() { while i < n, base[i] == 0x20 || base[i] == 0x0A || base[i] == 0x0D || base[i] == 0x09 { i += 1 } }
        ws()
        guard i < n, base[i] == UInt8(ascii: "[") else { return nil }
        i += 1
        ws()
        if i < n, base[i] == UInt8(ascii: "]") { i += 1; ws(); return i == n ? out : nil }
        while true {
            guard i < n, base[i] == UInt8(ascii: "\"") else { return nil }
            let start = i + 1
            var escaped = false, high: UInt8 = 0
            i += 1
            while i < n {
                let c = base[i]
                if c == UInt8(ascii: "\"") { break }
                if c < 0x20 { return nil }
                if c == UInt8(ascii: "\\") { escaped = true; i += 1 }
                high |= c
                i += 1
            }
            guard i < n else { return nil }
            let body = UnsafeRawBufferPointer(rebasing: s[start..<i])
            i += 1
            if escaped {
                guard let t = try? JSONDecoder().decode(String.self, from: Data(UnsafeRawBufferPointer(rebasing: s[(start - 1)..<i]))) else { return nil }
                out.append(t)
            } else if high < 0x80 {
                out.append(String(decoding: body, as: UTF8.self))
            } else {
                guard let t = String(validating: body, as: UTF8.self) else { return nil }
                out.append(t)
            }
            ws()
            guard i < n else { return nil }
            if base[i] == UInt8(ascii: ",") { i += 1; ws(); continue }
            guard base[i] == UInt8(ascii: "]") else { return nil }
            i += 1
            ws()
            return i == n ? out : nil
        }
    }
}
