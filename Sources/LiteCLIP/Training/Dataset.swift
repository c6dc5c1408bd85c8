import Foundation
import TensorIO

/// The image-caption pairs `liteclip train` learns from, and the train/validation split.
/// Spec: formats/captions.md.
///
/// The seed trained on Flickr8k as Kaggle ships it: `captions.txt`, a CSV with the header
/// `image,caption` and five rows per image, beside an `Images/` folder. That layout is read as is;
/// JSON lines (`{"image": ..., "caption": ...}` per line) are the alternative. A bad row (missing
/// field, broken quoting or JSON, an image file that does not exist) is described in `skipped`
/// and left out; only an unreadable file, a missing header or zero usable rows throw.

/// One (image, caption) row of a captions file.
public struct CaptionSample: Sendable, Equatable {
    /// The image file: the `images` folder joined with the row's path (or the row's absolute path).
    public let image: String
    /// The caption exactly as the file holds it (after CSV unquoting / JSON unescaping).
    public let caption: String
    /// 1-based line of the captions file where the row starts.
    public let line: Int

    public init(image: String, caption: String, line: Int) {
        self.image = image
        self.caption = caption
        self.line = line
    }
}

public struct CaptionDataset: Sendable {
    public enum Format: String, Sendable {
        case csv, jsonl
    }

    /// One per usable row, in file order (several per image).
    public let samples: [CaptionSample]
    /// One line per skipped row, in file order: `file:line: why`.
    public let skipped: [String]
    /// How the captions file was read.
    public let format: Format

    public init(samples: [CaptionSample], skipped: [String] = [], format: Format = .csv) {
        self.samples = samples
        self.skipped = skipped
        self.format = format
    }

    // MARK: - Limits

    /// Largest captions file accepted (1 GiB).
    public static let maxFileBytes = 1 << 30
    /// Longest caption accepted, in UTF-8 bytes; a longer one skips its row.
    public static let maxCaptionBytes = 100_000

    /// Distinct images among the samples.
    public var imageCount: Int { Set(samples.map(\.image)).count }

    // MARK: - Loading

    /// Reads `captions` (CSV or JSON lines, see formats/captions.md) with image paths relative
    /// to the folder `images`.
    /// - Throws: `ModelError(.badConfig)` naming the file when it cannot be read, is over
    ///   `maxFileBytes`, has no header naming `image` and `caption` (CSV), or gives no usable row.
    public static func load(captions: String, images: String) throws -> CaptionDataset {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: images, isDirectory: &isDir), isDir.boolValue else {
            throw ModelError(.badConfig, file: images, "the images folder does not exist (or is not a folder)")
        }
        let source: ByteSource
        do {
            source = try ByteSource(mapping: captions)
        } catch let e as ReadError {
            throw ModelError(.badConfig, file: captions, "cannot read the captions file: \(e.detail)")
        }
        guard source.count <= maxFileBytes else {
            throw ModelError(.badConfig, file: captions,
                             "the captions file is \(source.count) bytes; at most \(maxFileBytes) (1 GiB) are accepted")
        }
        return try source.withBytes { try parse($0, file: captions, images: images) }
    }

    /// The rows of a captions file's bytes (`file` names it in errors and decides the format by
    /// its extension); image paths are checked inside `images`. What `load` runs, and the
    /// `captions` fuzz target.
    public static func parse(_ bytes: UnsafeRawBufferPointer, file: String, images: String) throws -> CaptionDataset {
        let format = detectFormat(path: file, bytes)
        var rows = RowCollector(file: file, images: images)
        switch format {
        case .csv: try readCSV(bytes, file: file, into: &rows)
        case .jsonl: try readJSONL(bytes, file: file, into: &rows)
        }
        guard !rows.samples.isEmpty else {
            let first = rows.skipped.prefix(5).map { "\n  " + $0 }.joined()
            let more = rows.skipped.count > 5 ? "\n  ... (\(rows.skipped.count - 5) more)" : ""
            throw ModelError(.badConfig, file: file,
                             "no usable rows (\(rows.skipped.count) skipped)" + first + more)
        }
        return CaptionDataset(samples: rows.samples, skipped: rows.skipped, format: format)
    }

    /// `.csv`/`.txt` are CSV and `.jsonl`/`.json`/`.ndjson` JSON lines; any other name is JSON
    /// lines when its first non-blank byte (after a UTF-8 BOM) is `{`, else CSV.
    static func detectFormat(path: String, _ b: UnsafeRawBufferPointer) -> Format {
        switch (path as NSString).pathExtension.lowercased() {
        case "csv", "txt": return .csv
        case "jsonl", "json", "ndjson": return .jsonl
        default:
            var i = bomLength(b)
            while i < b.count, isSpace(b[i]) { i += 1 }
            return i < b.count && b[i] == UInt8(ascii: "{") ? .jsonl : .csv
        }
    }

    static func bomLength(_ b: UnsafeRawBufferPointer) -> Int {
        b.count >= 3 && b[0] == 0xEF && b[1] == 0xBB && b[2] == 0xBF ? 3 : 0
    }

    static func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D }

    // MARK: - Rows

    /// Checks each row's fields and the image file, keeping samples and skip reasons in order.
    struct RowCollector {
        let file: String
        let images: String
        var samples: [CaptionSample] = []
        var skipped: [String] = []
        /// Full path -> whether it is an existing regular file (a Flickr8k image has 5 rows).
        var exists: [String: Bool] = [:]

        init(file: String, images: String) {
            self.file = file
            self.images = images
        }

        mutating func skip(_ line: Int, _ why: String) {
            skipped.append("\(file):\(line): \(why)")
        }

        /// The row's image path (as written) and caption, already decoded; nil when absent.
        mutating func add(line: Int, image: String?, caption: String?) {
            guard let image else { return skip(line, "no image field") }
            guard let caption else { return skip(line, "no caption field") }
            let rel = image.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !rel.isEmpty else { return skip(line, "the image field is empty") }
            guard !caption.allSatisfy(\.isWhitespace) else { return skip(line, "the caption is empty") }
            let size = caption.utf8.count
            guard size <= CaptionDataset.maxCaptionBytes else {
                return skip(line, "the caption is \(size) bytes; at most \(CaptionDataset.maxCaptionBytes) are accepted")
            }
            let path = CaptionDataset.join(images, rel)
            let found: Bool
            if let known = exists[path] {
                found = known
            } else {
                var isDir: ObjCBool = false
                found = FileManager.default.fileExists(atPath: path, isDirectory: &isDir) && !isDir.boolValue
                exists[path] = found
            }
            guard found else { return skip(line, "image file not found: \(path)") }
            samples.append(CaptionSample(image: path, caption: caption, line: line))
        }
    }

    /// `rel` inside `folder`; an absolute `rel` stands as it is.
    static func join(_ folder: String, _ rel: String) -> String {
        if rel.hasPrefix("/") || folder.isEmpty { return rel }
        return folder.hasSuffix("/") ? folder + rel : folder + "/" + rel
    }

    static func utf8(_ bytes: [UInt8]) -> String? {
        String(validating: bytes, as: UTF8.self)
    }

    // MARK: - CSV

    static func readCSV(_ b: UnsafeRawBufferPointer, file: String, into rows: inout RowCollector) throws {
        var reader = CSVReader(b, start: bomLength(b))
        // The header: the first record that is not a blank line.
        var headerRecord: CSVReader.Record?
        while let r = reader.next() {
            if r.isBlank { continue }
            headerRecord = r
            break
        }
        guard let header = headerRecord else {
            throw ModelError(.badConfig, file: file, "the captions file is empty")
        }
        if let error = header.error {
            throw ModelError(.badConfig, file: file, "line \(header.line): cannot read the header: \(error)")
        }
        let names = header.fields.map { (utf8($0) ?? "").trimmingCharacters(in: .whitespacesAndNewlines).lowercased() }
        func column(_ name: String) throws -> Int? {
            let hits = names.indices.filter { names[$0] == name }
            if hits.count > 1 {
                throw ModelError(.badConfig, file: file, "line \(header.line): the header names '\(name)' \(hits.count) times")
            }
            return hits.first
        }
        guard let imageColumn = try column("image"), let captionColumn = try column("caption") else {
            let shown = names.prefix(10).map { "'\($0)'" }.joined(separator: ", ")
            var why = "line \(header.line): the CSV header must name the columns 'image' and 'caption' (any order); it has \(shown)"
            if let first = names.first, ["jpg", "jpeg", "png"].contains(where: { first.hasSuffix("." + $0) || first.contains("." + $0 + "#") }) {
                why += " (this looks like a data row: add the line 'image,caption' first)"
            }
            throw ModelError(.badConfig, file: file, why)
        }
        while let r = reader.next() {
            if r.isBlank { continue }
            if let error = r.error {
                rows.skip(r.line, error)
                continue
            }
            guard r.fields.count == names.count else {
                let hint = r.fields.count > names.count ? " (an unquoted comma in the caption?)" : ""
                rows.skip(r.line, "\(r.fields.count) fields, the header has \(names.count)\(hint)")
                continue
            }
            guard let image = utf8(r.fields[imageColumn]), let caption = utf8(r.fields[captionColumn]) else {
                rows.skip(r.line, "not valid UTF-8")
                continue
            }
            rows.add(line: r.line, image: image, caption: caption)
        }
    }

    /// RFC 4180 records over raw bytes: fields separated by `,`, records by CRLF, LF or a lone
    /// CR; a field that starts with `"` is quoted and may hold commas, line breaks and `""`
    /// (one quote). A quote inside an unquoted field is kept as text.
    struct CSVReader {
        struct Record {
            var fields: [[UInt8]]
            /// 1-based line where the record starts.
            var line: Int
            /// Why the record is malformed (it is then skipped).
            var error: String?

            /// An empty or whitespace-only line.
            var isBlank: Bool { fields.count == 1 && fields[0].allSatisfy(CaptionDataset.isSpace) && error == nil }
        }

        let b: UnsafeRawBufferPointer
        var pos: Int
        /// 1-based line at `pos`.
        var line = 1

        init(_ b: UnsafeRawBufferPointer, start: Int) {
            self.b = b
            pos = start
        }

        static let quote = UInt8(ascii: "\""), comma = UInt8(ascii: ","), lf: UInt8 = 0x0A, cr: UInt8 = 0x0D

        func endsField(_ c: UInt8) -> Bool { c == Self.comma || c == Self.lf || c == Self.cr }

        /// Consumes one line break at `pos` (CRLF, LF or CR).
        mutating func consumeLineBreak() {
            if b[pos] == Self.cr, pos + 1 < b.count, b[pos + 1] == Self.lf { pos += 1 }
            pos += 1
            line += 1
        }

        mutating func next() -> Record? {
            guard pos < b.count else { return nil }
            let startLine = line, startPos = pos
            var fields: [[UInt8]] = []
            var error: String?
            while true {
                var field: [UInt8] = []
                if pos < b.count, b[pos] == Self.quote {
                    pos += 1
                    var closed = false
                    while pos < b.count {
                        let c = b[pos]
                        if c == Self.quote {
                            if pos + 1 < b.count, b[pos + 1] == Self.quote {
                                field.append(Self.quote)
                                pos += 2
                                continue
                            }
                            pos += 1
                            closed = true
                            break
                        }
                        if c == Self.lf || (c == Self.cr && !(pos + 1 < b.count && b[pos + 1] == Self.lf)) { line += 1 }
                        field.append(c)
                        pos += 1
                    }
                    if !closed { return recoverUnclosed(startLine: startLine, startPos: startPos) }
                    if pos < b.count, !endsField(b[pos]) {
                        error = error ?? "text after the closing quote of field \(fields.count + 1) (a quote inside a quoted field must be doubled: \"\")"
                        while pos < b.count, !endsField(b[pos]) { pos += 1 }
                    }
                } else {
                    let start = pos
                    while pos < b.count, !endsField(b[pos]) { pos += 1 }
                    field = Array(b[start..<pos])
                }
                fields.append(field)
                if pos >= b.count { break }
                if b[pos] == Self.comma {
                    pos += 1
                    continue
                }
                consumeLineBreak()
                break
            }
            return Record(fields: fields, line: startLine, error: error)
        }

        /// A quote opened at `startLine` never closes: the record is reported bad and reading
        /// resumes on the next line, so one stray quote costs one row rather than the rest of the file.
        mutating func recoverUnclosed(startLine: Int, startPos: Int) -> Record {
            pos = startPos
            line = startLine
            while pos < b.count, b[pos] != Self.lf, b[pos] != Self.cr { pos += 1 }
            if pos < b.count { consumeLineBreak() }
            return Record(fields: [], line: startLine, error: "a quoted field opened on this line is never closed")
        }
    }

    // MARK: - JSON lines

    static func readJSONL(_ b: UnsafeRawBufferPointer, file: String, into rows: inout RowCollector) throws {
        var pos = bomLength(b)
        var line = 0
        var sawContent = false
        while pos < b.count {
            line += 1
            var end = pos
            while end < b.count, b[end] != 0x0A { end += 1 }
            let text = UnsafeRawBufferPointer(rebasing: b[pos..<end])
            pos = end + 1
            guard text.contains(where: { !isSpace($0) }) else { continue }
            if !sawContent, let first = text.first(where: { !isSpace($0) }), first == UInt8(ascii: "[") {
                throw ModelError(.badConfig, file: file,
                                 "line \(line): a JSON array is not accepted; write one {\"image\": ..., \"caption\": ...} object per line (JSON lines)")
            }
            sawContent = true
            let object: Any
            do {
                object = try JSONSerialization.jsonObject(with: Data(text))
            } catch {
                rows.skip(line, "not valid JSON")
                continue
            }
            guard let dict = object as? [String: Any] else {
                rows.skip(line, "not a JSON object")
                continue
            }
            func string(_ key: String) -> (value: String?, bad: String?) {
                guard let v = dict[key] else { return (nil, nil) }
                guard let s = v as? String else { return (nil, "'\(key)' is not a string") }
                return (s, nil)
            }
            let image = string("image"), caption = string("caption")
            if let bad = image.bad ?? caption.bad {
                rows.skip(line, bad)
                continue
            }
            rows.add(line: line, image: image.value, caption: caption.value)
        }
        if !sawContent {
            throw ModelError(.badConfig, file: file, "the captions file is empty")
        }
    }

    // MARK: - Split

    /// Checks a `--val-fraction` value: finite, in [0, 1).
    public static func validate(valFraction: Double) throws {
        guard valFraction.isFinite, valFraction >= 0, valFraction < 1 else {
            throw ModelError(.badConfig, file: "--val-fraction", "the validation fraction must be in [0, 1), got \(valFraction)")
        }
    }

    /// Splits by image: every caption of an image goes to the same side.
    /// ```
    /// images = distinct sample.image, in order of first appearance
    /// nVal   = round(valFraction * images.count)      (half to even, as Python's round)
    /// val    = the first nVal of images.seededShuffled(SeededRNG(seed: seed))
    /// ```
    /// Both sides keep file order. `valFraction` is clamped to [0, 1] (NaN counts as 0); check
    /// user input with `validate(valFraction:)` first.
    public func split(valFraction: Double, seed: UInt64) -> (train: [CaptionSample], val: [CaptionSample]) {
        var images: [String] = []
        var seen = Set<String>()
        for s in samples where seen.insert(s.image).inserted { images.append(s.image) }
        let fraction = valFraction.isNaN ? 0 : min(max(valFraction, 0), 1)
        let nVal = min(images.count, Int((fraction * Double(images.count)).rounded(.toNearestOrEven)))
        var rng = SeededRNG(seed: seed)
        let valImages = Set(images.seededShuffled(&rng).prefix(nVal))
        var train: [CaptionSample] = [], val: [CaptionSample] = []
        for s in samples {
            if valImages.contains(s.image) { val.append(s) } else { train.append(s) }
        }
        return (train, val)
    }
}
