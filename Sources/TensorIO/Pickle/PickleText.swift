/// Decoding of the values pickle protocols 0-2 write as text or as Python 2 byte strings
/// (formats/pytorch.md, "Python 2 and text-protocol pickles"). Pure functions on bytes: each
/// returns the value or a message saying what is wrong, which `PickleMachine` turns into a
/// `ReadError` naming the file and the byte offset.
///
/// Reference: CPython Lib/pickle.py (`load_int`, `load_long`, `load_float`, `load_string`,
/// `load_unicode`, `_decode_string`), Objects/bytesobject.c (`escape_decode`) and
/// Objects/unicodeobject.c (`raw_unicode_escape` decoding).
enum PickleText {
    /// CPython's limit on decimal digits in a str -> int conversion (`sys.int_info.str_digits_check_threshold`).
    static let maxDigits = 4300

    // MARK: - Integers

    /// `INT` (`I`) and `LONG` (`L`, without its trailing `L`): an optional sign and decimal digits,
    /// exactly as pickle writes them (no leading zeros except in zero itself, no spaces or
    /// underscores). Values outside Int64 become `.bigInt`.
    static func integer(_ text: ArraySlice<UInt8>) -> Result<PyValue, Message> {
        var digits = text
        var negative = false
        if let f = digits.first, f == UInt8(ascii: "-") || f == UInt8(ascii: "+") {
            negative = f == UInt8(ascii: "-")
            digits = digits.dropFirst()
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            return .failure(Message("'\(show(text))' is not a decimal integer"))
        }
        guard digits.count <= maxDigits else {
            return .failure(Message("integer of \(digits.count) digits (Python refuses more than \(maxDigits))", limit: true))
        }
        if digits.first == 0x30, digits.contains(where: { $0 != 0x30 }) {
            return .failure(Message("'\(show(text))' has a leading zero (Python's int(x, 0) refuses it)"))
        }
        // Magnitude in base 2^32 limbs, little-endian, nine decimal digits at a time.
        var limbs: [UInt32] = []
        var i = digits.startIndex
        var chunk = digits.count % 9 == 0 ? 9 : digits.count % 9
        while i < digits.endIndex {
            var value: UInt64 = 0, scale: UInt64 = 1
            for _ in 0..<chunk { value = value * 10 + UInt64(digits[i] - 0x30); scale *= 10; i += 1 }
            var carry = value
            for k in limbs.indices {
                let t = UInt64(limbs[k]) * scale + carry
                limbs[k] = UInt32(truncatingIfNeeded: t)
                carry = t >> 32
            }
            while carry > 0 { limbs.append(UInt32(truncatingIfNeeded: carry)); carry >>= 32 }
            chunk = 9
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(limbs.count * 4 + 1)
        for l in limbs { for s in stride(from: 0, to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: l >> UInt32(s))) } }
        bytes.append(0)   // a clear sign byte: the magnitude as a non-negative two's complement number
        if negative {     // -x = ~x + 1
            var carry = true
            for k in bytes.indices {
                bytes[k] = ~bytes[k]
                if carry { bytes[k] &+= 1; carry = bytes[k] == 0 }
            }
        }
        return .success(long(bytes))
    }

    /// LONG1 / LONG4 payloads (little-endian two's complement) as the smallest value case:
    /// `.int` when the number fits in Int64, else `.bigInt` in its minimal form.
    static func long(_ b: [UInt8]) -> PyValue {
        var n = b.count
        // Drop sign-extension bytes that do not change the value (pickle writes the minimal
        // form; an integer read from text or written by another tool may not be).
        while n > 1 {
            let top = b[n - 1], next = b[n - 2]
            if (top == 0x00 && next & 0x80 == 0) || (top == 0xFF && next & 0x80 != 0) { n -= 1 } else { break }
        }
        if n == 0 { return .int(0) }
        if n <= 8 {
            var v: UInt64 = 0
            for i in 0..<n { v |= UInt64(b[i]) << (8 * UInt64(i)) }
            if n < 8, b[n - 1] & 0x80 != 0 { v |= ~0 << (8 * UInt64(n)) }   // sign-extend
            return .int(Int64(bitPattern: v))
        }
        return .bigInt(Array(b[0..<n]))
    }

    /// A text GET/PUT memo index: decimal digits.
    static func memoIndex(_ text: ArraySlice<UInt8>) -> Int? {
        guard !text.isEmpty, text.count <= 18, text.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        return text.reduce(0) { $0 * 10 + Int($1 - 0x30) }
    }

    // MARK: - Floats

    /// `FLOAT` (`F`): what Python's `repr(float)` writes (`0.1`, `1e-05`, `inf`, `-inf`, `nan`),
    /// and any other decimal literal `float()` reads, without spaces or underscores.
    static func float(_ text: ArraySlice<UInt8>) -> Double? {
        guard !text.isEmpty, text.count <= maxDigits else { return nil }
        var t = text
        var negative = false
        if let f = t.first, f == UInt8(ascii: "-") || f == UInt8(ascii: "+") { negative = f == UInt8(ascii: "-"); t = t.dropFirst() }
        switch String(decoding: t.map { $0 | 0x20 }, as: UTF8.self) {   // ASCII lower case
        case "inf", "infinity": return negative ? -.infinity : .infinity
        case "nan": return negative ? -.nan : .nan
        default: break
        }
        // digits [. digits] | . digits, then an optional exponent: checked here because Swift's
        // parser also reads hexadecimal floats, which Python's float() does not.
        var i = t.startIndex
        func digitRun() -> Int { let s = i; while i < t.endIndex, t[i] >= 0x30, t[i] <= 0x39 { i += 1 }; return i - s }
        var mantissa = digitRun()
        if i < t.endIndex, t[i] == UInt8(ascii: ".") { i += 1; mantissa += digitRun() }
        guard mantissa > 0 else { return nil }
        if i < t.endIndex, t[i] | 0x20 == UInt8(ascii: "e") {
            i += 1
            if i < t.endIndex, t[i] == UInt8(ascii: "-") || t[i] == UInt8(ascii: "+") { i += 1 }
            guard digitRun() > 0 else { return nil }
        }
        guard i == t.endIndex else { return nil }
        return Double(String(decoding: text, as: UTF8.self))
    }

    // MARK: - Strings

    /// A Python 2 `str` (STRING, BINSTRING, SHORT_BINSTRING) as `torch.load` decodes it:
    /// `torch.load` passes `encoding='utf-8'` to the unpickler (torch/serialization.py, `load`:
    /// "if 'encoding' not in pickle_load_args: pickle_load_args['encoding'] = 'utf-8'"), and
    /// pickle's default `errors='strict'` makes invalid UTF-8 an error.
    static func python2String(_ b: UnsafeRawBufferPointer) -> String? {
        String(validating: b, as: UTF8.self)
    }

    /// STRING's argument: a quoted `repr` of a Python 2 str, unescaped the way `codecs.escape_decode` does.
    static func quotedString(_ line: ArraySlice<UInt8>) -> Result<[UInt8], Message> {
        guard line.count >= 2, let q = line.first, q == line.last, q == UInt8(ascii: "'") || q == UInt8(ascii: "\"") else {
            return .failure(Message("the STRING opcode argument must be quoted"))
        }
        let s = line.dropFirst().dropLast()
        var out: [UInt8] = []
        out.reserveCapacity(s.count)
        var i = s.startIndex
        while i < s.endIndex {
            let c = s[i]; i += 1
            guard c == 0x5C else { out.append(c); continue }   // not a backslash
            guard i < s.endIndex else { return .failure(Message("trailing \\ in STRING")) }
            let e = s[i]; i += 1
            switch e {
            case 0x0A: break                                   // backslash-newline: nothing
            case 0x5C, 0x27, 0x22: out.append(e)               // \\ \' \"
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "v"): out.append(0x0B)
            case UInt8(ascii: "a"): out.append(0x07)
            case 0x30...0x37:                                  // up to three octal digits
                var v = Int(e - 0x30)
                for _ in 0..<2 {
                    guard i < s.endIndex, s[i] >= 0x30, s[i] <= 0x37 else { break }
                    v = v << 3 + Int(s[i] - 0x30); i += 1
                }
                out.append(UInt8(truncatingIfNeeded: v))
            case UInt8(ascii: "x"):
                guard i + 1 < s.endIndex, let h = hex(s[i]), let l = hex(s[i + 1]) else {
                    return .failure(Message("invalid \\x escape in STRING"))
                }
                out.append(UInt8(h << 4 | l)); i += 2
            default:                                           // unknown escape: kept as written
                out.append(0x5C); out.append(e)
            }
        }
        return .success(out)
    }

    /// UNICODE's argument, `raw-unicode-escape` encoded: bytes are Latin-1 characters except
    /// `\uXXXX` and `\UXXXXXXXX`. Surrogate code points cannot be held by a Swift string and
    /// are refused (Python 2's encoder writes a pair as one `\U` escape).
    static func rawUnicodeEscape(_ b: ArraySlice<UInt8>) -> Result<String, Message> {
        var out = String.UnicodeScalarView()
        var i = b.startIndex
        while i < b.endIndex {
            let c = b[i]; i += 1
            guard c == 0x5C, i < b.endIndex else { out.append(Unicode.Scalar(c)); continue }
            let e = b[i]
            let count = e == UInt8(ascii: "u") ? 4 : e == UInt8(ascii: "U") ? 8 : 0
            guard count > 0 else { out.append("\\"); out.append(Unicode.Scalar(e)); i += 1; continue }
            i += 1
            var v: UInt32 = 0
            for _ in 0..<count {
                guard i < b.endIndex, let h = hex(b[i]) else {
                    return .failure(Message(count == 4 ? "truncated \\uXXXX escape in UNICODE" : "truncated \\UXXXXXXXX escape in UNICODE"))
                }
                v = v << 4 | UInt32(h); i += 1
            }
            guard let scalar = Unicode.Scalar(v) else {
                return .failure(Message(String(format: "UNICODE escape U+%04X is a surrogate or out of range", v)))
            }
            out.append(scalar)
        }
        return .success(String(out))
    }

    // MARK: - Helpers

    struct Message: Error {
        let text: String
        /// A size limit was hit (`limitExceeded`) rather than a malformed value.
        var limit = false
        init(_ text: String, limit: Bool = false) { self.text = text; self.limit = limit }
    }

    static func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }

    /// A short printable rendering of raw bytes for messages.
    static func show(_ b: ArraySlice<UInt8>) -> String {
        let s = String(decoding: b.prefix(40), as: UTF8.self).unicodeScalars.map { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7F ? String($0) : "?" }.joined()
        return b.count > 40 ? s + "..." : s
    }
}
