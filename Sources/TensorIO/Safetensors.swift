/// Reads `.safetensors` files (https://github.com/huggingface/safetensors).
/// Spec of what is accepted and rejected: formats/safetensors.md.
///
/// Layout: an 8-byte little-endian u64 N, N bytes of UTF-8 JSON (the header), then the data
/// section. The header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]}
/// (offsets relative to the start of the data section), plus an optional "__metadata__" object
/// of string -> string. The tensors must tile the data section exactly.
///
/// The header is parsed by a small strict JSON parser (below) rather than Foundation's
/// (JSONSerialization or JSONDecoder) because Foundation cannot report a repeated key: it
/// silently keeps one, so a header naming a tensor twice would load one of them without a word.
/// Having its own parser, it also keeps the header's member order (the tie-break between empty
/// tensors at one offset), integers exact (no NSNumber / Bool / Double ambiguity), the byte
/// offset of each error, a nesting limit, and never reads outside the header bytes it is given.
public enum SafetensorsReader {
    /// Largest header accepted, as in the reference implementation.
    public static let maxHeaderSize = 100_000_000

    public static func read(_ source: ByteSource) throws -> Checkpoint {
        let file = source.name
        let bytes = source.bytes

        // 1. Header length.
        guard bytes.count >= 8 else {
            throw ReadError(.truncated, file: file, place: "byte 0",
                            "file is \(bytes.count) bytes; a safetensors file starts with an 8-byte header length")
        }
        let claimed = bytes.le64(0)
        guard claimed <= UInt64(maxHeaderSize) else {
            throw ReadError(.limitExceeded, file: file, place: "header length (byte 0)",
                            "header claims \(claimed) bytes; at most \(maxHeaderSize) are accepted")
        }
        let headerSize = Int(claimed)
        guard 8 + headerSize <= bytes.count else {
            throw ReadError(.truncated, file: file, place: "header length (byte 0)",
                            "header claims \(headerSize) bytes but only \(bytes.count - 8) follow the length field")
        }
        let header = UnsafeRawBufferPointer(rebasing: bytes[8..<(8 + headerSize)])
        let dataStart = 8 + headerSize
        let dataSize = bytes.count - dataStart

        // 2. Header JSON.
        guard header.first == UInt8(ascii: "{") else {
            throw ReadError(.badHeader, file: file, place: "header byte 8",
                            header.isEmpty ? "header is empty" : "header does not begin with '{'")
        }
        let top: [JSONMember]
        do {
            var parser = StrictJSON(header)
            guard case .object(let members) = try parser.parseDocument() else {
                throw ReadError(.badHeader, file: file, place: "header", "header is not a JSON object")
            }
            top = members
        } catch let f as StrictJSON.Failure {
            let at = "header byte \(8 + f.offset)"
            if let key = f.duplicateKey {
                if f.depth == 1 {
                    throw ReadError(.duplicateName, file: file, place: "tensor \(show(key))",
                                    "name appears twice in the header (second time at \(at))")
                }
                throw ReadError(.duplicateName, file: file, place: at, "key \(show(key)) appears twice in one object")
            }
            throw ReadError(.badHeader, file: file, place: at, "invalid JSON: \(f.message)")
        }

        // 3. Entries.
        struct Entry {
            let name: String
            let dtype: DType
            let shape: [Int]
            let begin: Int
            let end: Int
            let index: Int
        }
        var entries: [Entry] = []
        entries.reserveCapacity(top.count)
        var metadata: [String: String] = [:]

        for (index, member) in top.enumerated() {
            let name = member.key
            if name == "__metadata__" {
                metadata = try readMetadata(member.value, file: file)
                continue
            }
            let place = "tensor \(show(name))"
            func bad(_ detail: String) -> ReadError { ReadError(.badHeader, file: file, place: place, detail) }

            guard case .object(let fields) = member.value else {
                throw bad("entry is \(member.value.kind), not an object")
            }
            var dtypeValue: JSONValue?, shapeValue: JSONValue?, offsetsValue: JSONValue?
            for field in fields {
                switch field.key {
                case "dtype": dtypeValue = field.value
                case "shape": shapeValue = field.value
                case "data_offsets": offsetsValue = field.value
                default: break  // unknown fields are ignored, as by the reference implementation
                }
            }

            guard let dtypeValue else { throw bad("missing \"dtype\"") }
            guard case .string(let dtypeName) = dtypeValue else { throw bad("\"dtype\" is \(dtypeValue.kind), not a string") }
            guard let dtype = DType(safetensorsName: dtypeName) else {
                throw ReadError(.unknownDType, file: file, place: place,
                                "dtype \(show(dtypeName)) is not supported (supported: "
                                + DType.allCases.map(\.safetensorsName).joined(separator: ", ") + ")")
            }

            guard let shapeValue else { throw bad("missing \"shape\"") }
            guard case .array(let dims) = shapeValue else { throw bad("\"shape\" is \(shapeValue.kind), not an array") }
            var shape: [Int] = []
            shape.reserveCapacity(dims.count)
            for (i, dim) in dims.enumerated() {
                guard case .number(let n?, _) = dim, n >= 0 else {
                    throw bad("shape[\(i)] is \(dim.brief), not a non-negative integer")
                }
                shape.append(n)
            }

            guard let offsetsValue else { throw bad("missing \"data_offsets\"") }
            guard case .array(let offs) = offsetsValue, offs.count == 2 else {
                throw bad("\"data_offsets\" must be an array of two integers [begin, end]")
            }
            var pair: [Int] = []
            for (i, o) in offs.enumerated() {
                guard case .number(let n?, _) = o, n >= 0 else {
                    throw bad("data_offsets[\(i)] is \(o.brief), not a non-negative integer")
                }
                pair.append(n)
            }
            let (begin, end) = (pair[0], pair[1])
            guard begin <= end else {
                throw ReadError(.outOfBounds, file: file, place: place,
                                "data_offsets [\(begin), \(end)] end before they begin")
            }
            guard let need = Checked.byteCount(shape, dtype) else {
                throw ReadError(.overflow, file: file, place: place,
                                "shape \(shape) of \(dtype.safetensorsName) overflows a byte count")
            }
            guard need == end - begin else {
                throw ReadError(.shapeMismatch, file: file, place: place,
                                "shape \(shape) of \(dtype.safetensorsName) needs \(need) bytes but data_offsets [\(begin), \(end)] span \(end - begin)")
            }
            guard end <= dataSize else {
                throw ReadError(.outOfBounds, file: file, place: place,
                                "data_offsets [\(begin), \(end)] reach past the data section's \(dataSize) bytes "
                                + "(file bytes \(dataStart)..<\(bytes.count))")
            }
            entries.append(Entry(name: name, dtype: dtype, shape: shape, begin: begin, end: end, index: index))
        }

        // 4. The tensors must tile the data section: no gap, no overlap, nothing left over.
        entries.sort { ($0.begin, $0.end, $0.index) < ($1.begin, $1.end, $1.index) }
        var covered = 0
        var previous: Entry?
        for e in entries {
            if e.begin < covered, let p = previous {
                throw ReadError(.overlappingEntries, file: file, place: "tensor \(show(e.name))",
                                "data bytes \(e.begin)..<\(e.end) overlap tensor \(show(p.name)) at \(p.begin)..<\(p.end)")
            }
            if e.begin > covered {
                throw ReadError(.outOfBounds, file: file, place: "data byte \(covered) (file byte \(dataStart + covered))",
                                "gap: data bytes \(covered)..<\(e.begin) belong to no tensor (next is \(show(e.name)))")
            }
            covered = e.end
            previous = e
        }
        if covered != dataSize {
            throw ReadError(.outOfBounds, file: file, place: "data byte \(covered) (file byte \(dataStart + covered))",
                            "\(dataSize - covered) trailing bytes after the last tensor belong to no tensor")
        }

        // 5. Zero-copy views, in data-offset order.
        let tensors: [Checkpoint.Tensor] = entries.map { e in
            let region = UnsafeRawBufferPointer(rebasing: bytes[(dataStart + e.begin)..<(dataStart + e.end)])
            let view = TensorBytes(viewOf: source, region)
            return Checkpoint.Tensor(name: e.name, dtype: e.dtype, shape: e.shape,
                                     origin: "data bytes \(e.begin)..<\(e.end) (file offset \(dataStart + e.begin))") { view }
        }
        return Checkpoint(file: file, format: .safetensors, tensors: tensors, metadata: metadata, source: source)
    }

    private static func readMetadata(_ value: JSONValue, file: String) throws -> [String: String] {
        let place = "\"__metadata__\""
        switch value {
        case .null:
            return [:]
        case .object(let members):
            var out: [String: String] = [:]
            for m in members {
                guard case .string(let s) = m.value else {
                    throw ReadError(.badHeader, file: file, place: place,
                                    "value of \(show(m.key)) is \(m.value.kind); metadata values must be strings")
                }
                out[m.key] = s
            }
            return out
        default:
            throw ReadError(.badHeader, file: file, place: place, "is \(value.kind), not an object of strings")
        }
    }

    /// A name for messages: quoted, control characters escaped, long names shortened.
    static func show(_ s: String) -> String {
        var out = "'"
        for (i, u) in s.unicodeScalars.enumerated() {
            if i == 120 { out += "…"; break }
            if u.value < 0x20 || u.value == 0x7f {
                out += "\\u{\(String(u.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(u)
            }
        }
        return out + "'"
    }
}

// MARK: - Strict JSON

/// A member of a JSON object, in document order.
struct JSONMember {
    let key: String
    let value: JSONValue
}

/// A parsed JSON value. Numbers keep their text; `int` is set when the text is an integer
/// (no fraction, no exponent) that fits in `Int`.
enum JSONValue {
    case object([JSONMember])
    case array([JSONValue])
    case string(String)
    case number(Int?, String)
    case bool(Bool)
    case null

    var kind: String {
        switch self {
        case .object: return "an object"
        case .array: return "an array"
        case .string: return "a string"
        case .number: return "a number"
        case .bool: return "a boolean"
        case .null: return "null"
        }
    }

    /// Short description for messages.
    var brief: String {
        switch self {
        case .number(_, let text): return text.count > 40 ? String(text.prefix(40)) + "…" : text
        case .bool(let b): return b ? "true" : "false"
        case .null: return "null"
        case .string(let s): return "the string " + SafetensorsReader.show(s)
        default: return kind
        }
    }
}

/// RFC 8259 JSON over a bounded byte buffer: no reads outside it, a nesting limit, repeated
/// object keys rejected, strings validated as UTF-8 (escapes included, lone surrogates refused).
struct StrictJSON {
    struct Failure: Error {
        /// Byte offset within the parsed buffer.
        let offset: Int
        let message: String
        /// Set when the failure is a repeated key; `depth` is the object's nesting level (1 = top).
        var duplicateKey: String? = nil
        var depth: Int = 0
    }

    static let maxDepth = 64

    private let buf: UnsafeRawBufferPointer
    private var i = 0

    init(_ buffer: UnsafeRawBufferPointer) {
        buf = buffer
    }

    /// One value, surrounded by optional whitespace, and nothing else.
    mutating func parseDocument() throws -> JSONValue {
        skipWhitespace()
        let v = try value(depth: 0)
        skipWhitespace()
        if i != buf.count {
            throw fail("unexpected \(describe(buf[i])) after the top-level value")
        }
        return v
    }

    private func fail(_ message: String, at offset: Int? = nil) -> Failure {
        Failure(offset: offset ?? i, message: message)
    }

    private func describe(_ c: UInt8) -> String {
        (0x21...0x7e).contains(c) ? "'\(Character(Unicode.Scalar(c)))'" : "byte 0x\(String(c, radix: 16))"
    }

    private mutating func skipWhitespace() {
        while i < buf.count {
            switch buf[i] {
            case 0x20, 0x09, 0x0a, 0x0d: i += 1
            default: return
            }
        }
    }

    private mutating func value(depth: Int) throws -> JSONValue {
        guard i < buf.count else { throw fail("unexpected end of header, a value was expected") }
        switch buf[i] {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        case let c: throw fail("unexpected \(describe(c)), a value was expected")
        }
    }

    private mutating func literal(_ word: StaticString) throws {
        let n = word.utf8CodeUnitCount
        guard buf.count - i >= n else { throw fail("unexpected end of header inside a literal") }
        let w = UnsafeRawBufferPointer(start: word.utf8Start, count: n)
        for k in 0..<n where buf[i + k] != w[k] {
            throw fail("invalid literal, expected \(word)")
        }
        i += n
    }

    private mutating func expect(_ c: UInt8, _ what: String) throws {
        guard i < buf.count else { throw fail("unexpected end of header, expected \(what)") }
        guard buf[i] == c else { throw fail("unexpected \(describe(buf[i])), expected \(what)") }
        i += 1
    }

    private mutating func object(depth: Int) throws -> JSONValue {
        guard depth <= StrictJSON.maxDepth else { throw fail("nesting deeper than \(StrictJSON.maxDepth) levels") }
        i += 1  // {
        var members: [JSONMember] = []
        var seen = Set<String>()
        skipWhitespace()
        if i < buf.count && buf[i] == UInt8(ascii: "}") {
            i += 1
            return .object(members)
        }
        while true {
            skipWhitespace()
            let keyOffset = i
            guard i < buf.count, buf[i] == UInt8(ascii: "\"") else {
                throw fail(i < buf.count ? "unexpected \(describe(buf[i])), expected a string key" : "unexpected end of header, expected a key")
            }
            let key = try string()
            guard seen.insert(key).inserted else {
                throw Failure(offset: keyOffset, message: "repeated key", duplicateKey: key, depth: depth)
            }
            skipWhitespace()
            try expect(UInt8(ascii: ":"), "':'")
            skipWhitespace()
            let v = try value(depth: depth)
            members.append(JSONMember(key: key, value: v))
            skipWhitespace()
            guard i < buf.count else { throw fail("unexpected end of header inside an object") }
            switch buf[i] {
            case UInt8(ascii: ","): i += 1
            case UInt8(ascii: "}"): i += 1; return .object(members)
            case let c: throw fail("unexpected \(describe(c)), expected ',' or '}'")
            }
        }
    }

    private mutating func array(depth: Int) throws -> JSONValue {
        guard depth <= StrictJSON.maxDepth else { throw fail("nesting deeper than \(StrictJSON.maxDepth) levels") }
        i += 1  // [
        var items: [JSONValue] = []
        skipWhitespace()
        if i < buf.count && buf[i] == UInt8(ascii: "]") {
            i += 1
            return .array(items)
        }
        while true {
            skipWhitespace()
            items.append(try value(depth: depth))
            skipWhitespace()
            guard i < buf.count else { throw fail("unexpected end of header inside an array") }
            switch buf[i] {
            case UInt8(ascii: ","): i += 1
            case UInt8(ascii: "]"): i += 1; return .array(items)
            case let c: throw fail("unexpected \(describe(c)), expected ',' or ']'")
            }
        }
    }

    private static func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }

    private mutating func number() throws -> JSONValue {
        let start = i
        if buf[i] == UInt8(ascii: "-") { i += 1 }
        guard i < buf.count, StrictJSON.isDigit(buf[i]) else { throw fail("invalid number") }
        if buf[i] == UInt8(ascii: "0") {
            i += 1
            if i < buf.count && StrictJSON.isDigit(buf[i]) { throw fail("invalid number: leading zero") }
        } else {
            while i < buf.count && StrictJSON.isDigit(buf[i]) { i += 1 }
        }
        var integral = true
        if i < buf.count && buf[i] == UInt8(ascii: ".") {
            integral = false
            i += 1
            guard i < buf.count, StrictJSON.isDigit(buf[i]) else { throw fail("invalid number: no digits after '.'") }
            while i < buf.count && StrictJSON.isDigit(buf[i]) { i += 1 }
        }
        if i < buf.count && (buf[i] == UInt8(ascii: "e") || buf[i] == UInt8(ascii: "E")) {
            integral = false
            i += 1
            if i < buf.count && (buf[i] == UInt8(ascii: "+") || buf[i] == UInt8(ascii: "-")) { i += 1 }
            guard i < buf.count, StrictJSON.isDigit(buf[i]) else { throw fail("invalid number: no digits in the exponent") }
            while i < buf.count && StrictJSON.isDigit(buf[i]) { i += 1 }
        }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: buf[start..<i]), as: UTF8.self)
        return .number(integral ? Int(text) : nil, text)
    }

    private mutating func hex4() throws -> UInt32 {
        guard buf.count - i >= 4 else { throw fail("unexpected end of header inside a \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = buf[i]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw fail("invalid hex digit \(describe(c)) in a \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    private mutating func string() throws -> String {
        let open = i
        i += 1  // "
        var out: [UInt8] = []
        while true {
            guard i < buf.count else { throw fail("unterminated string", at: open) }
            let c = buf[i]
            if c == UInt8(ascii: "\"") {
                i += 1
                break
            }
            if c < 0x20 {
                throw fail("unescaped control character 0x\(String(c, radix: 16)) in a string")
            }
            if c != UInt8(ascii: "\\") {
                out.append(c)
                i += 1
                continue
            }
            let escapeAt = i
            i += 1
            guard i < buf.count else { throw fail("unterminated string", at: open) }
            let e = buf[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""): out.append(0x22)
            case UInt8(ascii: "\\"): out.append(0x5c)
            case UInt8(ascii: "/"): out.append(0x2f)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0c)
            case UInt8(ascii: "n"): out.append(0x0a)
            case UInt8(ascii: "r"): out.append(0x0d)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800...0xDBFF).contains(scalar) {
                    guard buf.count - i >= 2, buf[i] == UInt8(ascii: "\\"), buf[i + 1] == UInt8(ascii: "u") else {
                        throw fail("lone high surrogate in a \\u escape", at: escapeAt)
                    }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00...0xDFFF).contains(low) else {
                        throw fail("high surrogate not followed by a low surrogate", at: escapeAt)
                    }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(scalar) {
                    throw fail("lone low surrogate in a \\u escape", at: escapeAt)
                }
                guard let u = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape", at: escapeAt) }
                UTF8.encode(u) { out.append($0) }
            default:
                throw fail("invalid escape: backslash followed by \(describe(e))", at: escapeAt)
            }
        }
        // Raw bytes must be valid UTF-8: decoding repairs invalid sequences, so a repaired
        // string no longer matches its bytes.
        let s = String(decoding: out, as: UTF8.self)
        guard s.utf8.elementsEqual(out) else { throw fail("string is not valid UTF-8", at: open) }
        return s
    }
}
