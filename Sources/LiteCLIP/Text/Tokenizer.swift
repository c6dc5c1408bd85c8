import Foundation

/// A padded batch of token ids, laid out as the seed's
/// `tokenizer(texts, padding='max_length', truncation=True, max_length=128)` returns them.
/// `token_type_ids` are all zero for single sequences, so they are not stored.
public struct TokenBatch: Sendable, Equatable {
    public let batchSize: Int
    public let length: Int
    /// Row-major `[batchSize, length]`, padded with the `[PAD]` id.
    public var ids: [Int32]
    /// Row-major `[batchSize, length]`: 1 for real tokens (including `[CLS]`/`[SEP]`), 0 for padding.
    public var attentionMask: [Int32]
    /// Real tokens per row, including `[CLS]` and `[SEP]`.
    public var lengths: [Int]

    public init(batchSize: Int, length: Int, ids: [Int32], attentionMask: [Int32], lengths: [Int]) {
        self.batchSize = batchSize
        self.length = length
        self.ids = ids
        self.attentionMask = attentionMask
        self.lengths = lengths
    }

    /// The ids of row `i`, padding included.
    public func row(_ i: Int) -> ArraySlice<Int32> { ids[(i * length)..<((i + 1) * length)] }
}

/// The BERT WordPiece tokenizer exactly as the Hugging Face *fast* tokenizer (the Rust
/// `tokenizers` crate) runs it for the seed's `tokenizer.json`:
///
/// 1. Added special tokens (`[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`, all with
///    `normalized: false`) are found in the *raw* text, case-sensitively, and become their ids;
///    the text between them goes through the rest of the pipeline piece by piece.
/// 2. `BertNormalizer`, in the crate's order: clean text (drop U+0000, U+FFFD and "other"
///    characters, i.e. Cc/Cf/Co except tab/LF/CR; map whitespace to a space), put spaces around
///    CJK ideographs, strip accents (NFD, then drop nonspacing marks) when `strip_accents` is
///    unset and lowercasing is on, and lowercase *per character* with full case mapping (so
///    `İ` → `i̇` and there is no final-sigma rule).
/// 3. `BertPreTokenizer`: split on whitespace (dropped) and on every punctuation character
///    (ASCII punctuation or a Unicode P* category), each punctuation character its own word.
/// 4. `WordPiece`: greedy longest-match-first with `##` continuations; a word longer than
///    `max_input_chars_per_word` characters, or one that cannot be covered, becomes `[UNK]`.
///
/// Everything works on Unicode scalars (Rust `char`s), never on Swift grapheme clusters.
/// The crate's character tables (categories from Unicode 8.0, NFD data from Unicode 9.0) are
/// reproduced in `BertUnicode`, so characters assigned later behave as in Python too.
/// Checked against the fast tokenizer on every code point and on golden/tokens.json.
public struct BertTokenizer: Sendable {
    public let spec: TokenizerSpec
    let vocabIds: VocabTable
    let unkId: Int32
    let clsId: Int32
    let sepId: Int32
    let padId: Int32
    /// Added tokens matched in raw text, longest first.
    let specials: [SpecialToken]
    /// Longest vocabulary entry in scalars: no WordPiece candidate longer than that can match.
    let maxPieceScalars: Int
    let prefix: String
    let lowercase: Bool
    let stripAccents: Bool

    struct SpecialToken: Sendable {
        let scalars: [Unicode.Scalar]
        let id: Int32
    }

    public init(spec: TokenizerSpec) {
        self.spec = spec
        let ids = VocabTable(spec.vocab)
        var longest = 1
        for token in spec.vocab { longest = max(longest, token.unicodeScalars.count) }
        vocabIds = ids
        maxPieceScalars = longest
        // `TokenizerSpec.load` guarantees these exist; a hand-made spec without them gets 0.
        unkId = ids[spec.unkToken] ?? 0
        clsId = ids[spec.clsToken] ?? 0
        sepId = ids[spec.sepToken] ?? 0
        padId = ids[spec.padToken] ?? 0
        var sp: [SpecialToken] = []
        var seen = Set<String>()
        for t in [spec.padToken, spec.unkToken, spec.clsToken, spec.sepToken, spec.maskToken]
        where !t.isEmpty && !seen.contains(t) {
            seen.insert(t)
            if let id = ids[t] { sp.append(SpecialToken(scalars: Array(t.unicodeScalars), id: id)) }
        }
        specials = sp.sorted { $0.scalars.count > $1.scalars.count }
        prefix = spec.continuingSubwordPrefix
        lowercase = spec.doLowerCase
        stripAccents = spec.stripAccents ?? spec.doLowerCase
    }

    /// Normalised, pre-tokenised, WordPiece tokens (no `[CLS]`/`[SEP]` added; special tokens
    /// written in the text itself, such as `[MASK]`, are kept as such).
    public func tokenize(_ text: String) -> [String] {
        var ws = Workspace()
        var out: [Int32] = []
        pieces(text, into: &out, limit: Int.max, &ws)
        return out.map { spec.vocab[Int($0)] }
    }

    /// `[CLS]` + word-piece ids + `[SEP]`, truncated so the total is at most `maxLength`
    /// (default `spec.maxLength`): the first `maxLength - 2` pieces are kept (none below 2).
    public func encode(_ text: String, maxLength: Int? = nil) -> [Int32] {
        var ws = Workspace()
        return encode(text, maxLength: maxLength ?? spec.maxLength, &ws)
    }

    /// The batch as the seed builds it: every row `[CLS] … [SEP]`, truncated to and padded with
    /// the `[PAD]` id up to `maxLength` (default `spec.maxLength`, 128).
    public func encodeBatch(_ texts: [String], maxLength: Int? = nil) -> TokenBatch {
        let length = max(maxLength ?? spec.maxLength, 2)
        var ids = [Int32](repeating: padId, count: texts.count * length)
        var mask = [Int32](repeating: 0, count: texts.count * length)
        var lengths = [Int](repeating: 0, count: texts.count)
        var ws = Workspace()
        for (row, text) in texts.enumerated() {
            let encoded = encode(text, maxLength: length, &ws)
            let base = row * length
            for (j, id) in encoded.enumerated() {
                ids[base + j] = id
                mask[base + j] = 1
            }
            lengths[row] = encoded.count
        }
        return TokenBatch(batchSize: texts.count, length: length, ids: ids, attentionMask: mask, lengths: lengths)
    }

    // MARK: - Pipeline

    /// Buffers reused across the texts of a batch.
    struct Workspace {
        var raw: [Unicode.Scalar] = []
        var norm: [Unicode.Scalar] = []
        var scratch: [Unicode.Scalar] = []
    }

    func encode(_ text: String, maxLength: Int, _ ws: inout Workspace) -> [Int32] {
        let budget = max(maxLength - 2, 0)
        var out: [Int32] = [clsId]
        out.reserveCapacity(min(budget, 64) + 2)
        pieces(text, into: &out, limit: budget + 1, &ws)
        out.append(sepId)
        return out
    }

    /// Appends the ids of `text` to `out` until `out.count` reaches `limit`.
    func pieces(_ text: String, into out: inout [Int32], limit: Int, _ ws: inout Workspace) {
        guard out.count < limit else { return }
        ws.raw.removeAll(keepingCapacity: true)
        ws.raw.append(contentsOf: text.unicodeScalars)
        let raw = ws.raw
        var segmentStart = 0
        var i = 0
        // Added tokens are matched leftmost-longest in the raw text; all of ours open with '['
        // in practice, but any first scalar works.
        while i < raw.count {
            if let sp = specialMatch(raw, at: i) {
                segment(raw[segmentStart..<i], into: &out, limit: limit, &ws)
                guard out.count < limit else { return }
                out.append(sp.id)
                guard out.count < limit else { return }
                i += sp.scalars.count
                segmentStart = i
            } else {
                i += 1
            }
        }
        segment(raw[segmentStart..<raw.count], into: &out, limit: limit, &ws)
    }

    func specialMatch(_ raw: [Unicode.Scalar], at i: Int) -> SpecialToken? {
        for sp in specials where sp.scalars[0] == raw[i] && i + sp.scalars.count <= raw.count {
            var k = 1
            while k < sp.scalars.count && raw[i + k] == sp.scalars[k] { k += 1 }
            if k == sp.scalars.count { return sp }
        }
        return nil
    }

    /// Normalises, pre-tokenises and word-pieces a stretch of raw text without added tokens.
    func segment(_ raw: ArraySlice<Unicode.Scalar>, into out: inout [Int32], limit: Int, _ ws: inout Workspace) {
        guard !raw.isEmpty, out.count < limit else { return }
        normalize(raw, into: &ws.norm, &ws.scratch)
        let s = ws.norm
        var wordStart = 0
        var i = 0
        while i < s.count {
            let c = s[i]
            if BertUnicode.isWhitespace(c) {
                if wordStart < i { wordPiece(s, wordStart, i, into: &out, limit: limit) }
                wordStart = i + 1
            } else if BertUnicode.isPunctuation(c) {
                if wordStart < i { wordPiece(s, wordStart, i, into: &out, limit: limit) }
                wordPiece(s, i, i + 1, into: &out, limit: limit)
                wordStart = i + 1
            }
            if out.count >= limit { return }
            i += 1
        }
        if wordStart < s.count { wordPiece(s, wordStart, s.count, into: &out, limit: limit) }
    }

    /// `BertNormalizer`: clean text, CJK spacing, strip accents, lowercase, in the crate's order.
    func normalize(_ raw: ArraySlice<Unicode.Scalar>, into s: inout [Unicode.Scalar], _ scratch: inout [Unicode.Scalar]) {
        s.removeAll(keepingCapacity: true)
        let space: Unicode.Scalar = " "
        var ascii = true
        for c in raw {
            if spec.cleanText {
                if c.value == 0 || c.value == 0xFFFD || BertUnicode.isControl(c) { continue }
                if BertUnicode.isWhitespace(c) { s.append(space); continue }
            }
            if spec.tokenizeChineseChars && BertUnicode.isChinese(c.value) {
                s.append(space); s.append(c); s.append(space)
            } else {
                s.append(c)
            }
            if c.value >= 0x80 { ascii = false }
        }
        if ascii {
            if lowercase {
                for k in s.indices where s[k].value &- 0x41 < 26 { s[k] = Unicode.Scalar(s[k].value + 0x20)! }
            }
            return
        }
        if stripAccents {
            // NFD of the whole stretch (decomposition plus canonical reordering), then drop Mn.
            BertUnicode.nfd(s, into: &scratch)
            s.removeAll(keepingCapacity: true)
            for c in scratch where !BertUnicode.isNonspacingMark(c) { s.append(c) }
        }
        if lowercase {
            scratch.removeAll(keepingCapacity: true)
            for c in s { BertUnicode.appendLowercase(c, to: &scratch) }
            swap(&s, &scratch)
        }
    }

    /// WordPiece on `s[start..<end]`, appending to `out` while `out.count < limit`.
    func wordPiece(_ s: [Unicode.Scalar], _ start: Int, _ end: Int, into out: inout [Int32], limit: Int) {
        if end - start > spec.maxInputCharsPerWord {
            out.append(unkId)
            return
        }
        let mark = out.count
        var pos = start
        while pos < end {
            var stop = min(end, pos + maxPieceScalars)
            var found: Int32? = nil
            while stop > pos {
                var key = pos > start ? prefix : ""
                key.unicodeScalars.append(contentsOf: s[pos..<stop])
                if let id = vocabIds[key] { found = id; break }
                stop -= 1
            }
            guard let id = found else {
                out.removeSubrange(mark...)
                out.append(unkId)
                return
            }
            out.append(id)
            pos = stop
        }
        if out.count > limit { out.removeSubrange(limit...) }
    }
}

/// The character classes of the `tokenizers` crate's BERT normaliser and pre-tokeniser.
///
/// The crate takes `is_other`, `is_mark_nonspacing` and `is_punctuation` from the
/// `unicode_categories` crate, whose tables are Unicode 8.0, and decomposes and reorders with
/// `unicode-normalization-alignments`, whose data is Unicode 9.0. So a mark,
/// format character or punctuation sign assigned after 8.0 is an ordinary character there (it
/// is kept and does not split words), and some old characters keep their 8.0 category (U+166D
/// and U+111C9 are punctuation; U+1734 and U+1171E are nonspacing marks; U+1885, U+1886 and
/// U+A9BD are not). The tables below reproduce the crate exactly and were checked against the
/// fast tokenizer for every code point, so they do not depend on the Unicode version of the
/// Swift runtime. Whitespace (`char::is_whitespace`) and lowercasing (`char::to_lowercase`)
/// come from Rust's standard library, which follows current Unicode, as Swift does.
enum BertUnicode {
    /// The Unicode version of the crate's NFD data (decompositions and combining classes);
    /// characters assigned later neither decompose nor reorder there. (The category tables
    /// below are Unicode 8.0.)
    static let normalizationVersion = (major: 9, minor: 0)

    /// Tab, LF, CR, or Rust's `char::is_whitespace` (the White_Space property).
    @inline(__always)
    static func isWhitespace(_ c: Unicode.Scalar) -> Bool {
        let v = c.value
        if v < 0x80 { return v == 0x20 || (v >= 0x09 && v <= 0x0D) }
        switch v {
        case 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: return true
        default: return false
        }
    }

    /// The crate's `is_control`: `is_other` (Cc, Cf, Co), except tab, LF and CR.
    @inline(__always)
    static func isControl(_ c: Unicode.Scalar) -> Bool {
        let v = c.value
        if v < 0x80 { return (v < 0x20 && v != 0x09 && v != 0x0A && v != 0x0D) || v == 0x7F }
        return inRanges(v, otherRanges)
    }

    /// The CJK ranges of the crate's `is_chinese_char` (note 0x2B920, where Python's slow
    /// tokenizer has 0x2B820).
    @inline(__always)
    static func isChinese(_ v: UInt32) -> Bool {
        if v < 0x3400 { return false }
        return (0x4E00...0x9FFF).contains(v) || (0x3400...0x4DBF).contains(v)
            || (0x20000...0x2A6DF).contains(v) || (0x2A700...0x2B73F).contains(v)
            || (0x2B740...0x2B81F).contains(v) || (0x2B920...0x2CEAF).contains(v)
            || (0xF900...0xFAFF).contains(v) || (0x2F800...0x2FA1F).contains(v)
    }

    /// `is_bert_punc`: `char::is_ascii_punctuation` or a punctuation category (P*).
    @inline(__always)
    static func isPunctuation(_ c: Unicode.Scalar) -> Bool {
        let v = c.value
        if v < 0x80 {
            return (v >= 0x21 && v <= 0x2F) || (v >= 0x3A && v <= 0x40) || (v >= 0x5B && v <= 0x60) || (v >= 0x7B && v <= 0x7E)
        }
        return inRanges(v, punctuationRanges)
    }

    @inline(__always)
    static func isNonspacingMark(_ c: Unicode.Scalar) -> Bool {
        c.value >= 0x300 && inRanges(c.value, nonspacingMarkRanges)
    }

    /// Binary search in a sorted flat list of inclusive `[start, end]` pairs.
    static func inRanges(_ v: UInt32, _ r: [UInt32]) -> Bool {
        var lo = 0, hi = r.count / 2  // pairs
        while lo < hi {
            let mid = (lo + hi) >> 1
            if r[2 * mid + 1] < v { lo = mid + 1 } else { hi = mid }
        }
        return lo < r.count / 2 && r[2 * lo] <= v
    }

    /// Whether the crate's normalisation data knows `c` (assigned in Unicode 9.0 or before).
    @inline(__always)
    static func knownToCrate(_ c: Unicode.Scalar) -> Bool {
        guard let age = c.properties.age else { return false }
        let v = normalizationVersion
        return age.major < v.major || (age.major == v.major && age.minor <= v.minor)
    }

    /// Canonical combining class as the crate sees it (0 for characters it does not know).
    @inline(__always)
    static func combiningClass(_ c: Unicode.Scalar) -> UInt8 {
        if c.value < 0x300 { return 0 }
        let ccc = c.properties.canonicalCombiningClass.rawValue
        return ccc == 0 || !knownToCrate(c) ? 0 : ccc
    }

    /// NFD of the whole sequence: full canonical decomposition of every scalar the crate knows,
    /// then the canonical ordering of each run of non-starters (a stable sort by class).
    static func nfd(_ s: [Unicode.Scalar], into out: inout [Unicode.Scalar]) {
        out.removeAll(keepingCapacity: true)
        for c in s { appendDecomposition(c, to: &out) }
        // Canonical ordering.
        var i = 0
        while i < out.count {
            guard combiningClass(out[i]) != 0 else { i += 1; continue }
            var j = i
            while j < out.count && combiningClass(out[j]) != 0 { j += 1 }
            if j - i > 1 {
                // Insertion sort: runs are short, and it is stable.
                for k in (i + 1)..<j {
                    let x = out[k], cx = combiningClass(x)
                    var m = k
                    while m > i && combiningClass(out[m - 1]) > cx { out[m] = out[m - 1]; m -= 1 }
                    out[m] = x
                }
            }
            i = j
        }
    }

    @inline(__always)
    static func appendDecomposition(_ c: Unicode.Scalar, to out: inout [Unicode.Scalar]) {
        let v = c.value
        // Nothing below U+00C0 decomposes, nor do the CJK unified ideographs.
        if v < 0xC0 || (0x3400...0x9FFF).contains(v) || (0x20000...0x2EBFF).contains(v) {
            out.append(c)
            return
        }
        // Hangul syllables decompose arithmetically (conjoining jamo L V T).
        if (0xAC00...0xD7A3).contains(v) {
            let s = v - 0xAC00
            out.append(Unicode.Scalar(0x1100 + s / 588)!)
            out.append(Unicode.Scalar(0x1161 + (s % 588) / 28)!)
            if s % 28 != 0 { out.append(Unicode.Scalar(0x11A7 + s % 28)!) }
            return
        }
        guard knownToCrate(c) else { out.append(c); return }
        out.append(contentsOf: String(c).decomposedStringWithCanonicalMapping.unicodeScalars)
    }

    /// Rust's `char::to_lowercase`: full case mapping, per character (no final-sigma rule).
    @inline(__always)
    static func appendLowercase(_ c: Unicode.Scalar, to out: inout [Unicode.Scalar]) {
        let v = c.value
        if v < 0x80 {
            out.append(v &- 0x41 < 26 ? Unicode.Scalar(v + 0x20)! : c)
        } else if !c.properties.changesWhenLowercased {
            out.append(c)
        } else {
            out.append(contentsOf: c.properties.lowercaseMapping.unicodeScalars)
        }
    }

    // MARK: Tables (generated from the fast tokenizer, code point by code point)

    /// `is_other`: Cc, Cf and Co of Unicode 8.0 (24 ranges)
    static let otherRanges: [UInt32] = [
        0x0, 0x8, 0xB, 0xC, 0xE, 0x1F, 0x7F, 0x9F, 0xAD, 0xAD, 0x600, 0x605,
        0x61C, 0x61C, 0x6DD, 0x6DD, 0x70F, 0x70F, 0x180E, 0x180E, 0x200B, 0x200F, 0x202A, 0x202E,
        0x2060, 0x2064, 0x2066, 0x206F, 0xE000, 0xF8FF, 0xFEFF, 0xFEFF, 0xFFF9, 0xFFFB, 0x110BD, 0x110BD,
        0x1BCA0, 0x1BCA3, 0x1D173, 0x1D17A, 0xE0001, 0xE0001, 0xE0020, 0xE007F, 0xF0000, 0xFFFFD, 0x100000, 0x10FFFD,
    ]

    /// `is_mark_nonspacing`: Mn of Unicode 8.0 (266 ranges)
    static let nonspacingMarkRanges: [UInt32] = [
        0x300, 0x36F, 0x483, 0x487, 0x591, 0x5BD, 0x5BF, 0x5BF, 0x5C1, 0x5C2, 0x5C4, 0x5C5,
        0x5C7, 0x5C7, 0x610, 0x61A, 0x64B, 0x65F, 0x670, 0x670, 0x6D6, 0x6DC, 0x6DF, 0x6E4,
        0x6E7, 0x6E8, 0x6EA, 0x6ED, 0x711, 0x711, 0x730, 0x74A, 0x7A6, 0x7B0, 0x7EB, 0x7F3,
        0x816, 0x819, 0x81B, 0x823, 0x825, 0x827, 0x829, 0x82D, 0x859, 0x85B, 0x8E3, 0x902,
        0x93A, 0x93A, 0x93C, 0x93C, 0x941, 0x948, 0x94D, 0x94D, 0x951, 0x957, 0x962, 0x963,
        0x981, 0x981, 0x9BC, 0x9BC, 0x9C1, 0x9C4, 0x9CD, 0x9CD, 0x9E2, 0x9E3, 0xA01, 0xA02,
        0xA3C, 0xA3C, 0xA41, 0xA42, 0xA47, 0xA48, 0xA4B, 0xA4D, 0xA51, 0xA51, 0xA70, 0xA71,
        0xA75, 0xA75, 0xA81, 0xA82, 0xABC, 0xABC, 0xAC1, 0xAC5, 0xAC7, 0xAC8, 0xACD, 0xACD,
        0xAE2, 0xAE3, 0xB01, 0xB01, 0xB3C, 0xB3C, 0xB3F, 0xB3F, 0xB41, 0xB44, 0xB4D, 0xB4D,
        0xB56, 0xB56, 0xB62, 0xB63, 0xB82, 0xB82, 0xBC0, 0xBC0, 0xBCD, 0xBCD, 0xC00, 0xC00,
        0xC3E, 0xC40, 0xC46, 0xC48, 0xC4A, 0xC4D, 0xC55, 0xC56, 0xC62, 0xC63, 0xC81, 0xC81,
        0xCBC, 0xCBC, 0xCBF, 0xCBF, 0xCC6, 0xCC6, 0xCCC, 0xCCD, 0xCE2, 0xCE3, 0xD01, 0xD01,
        0xD41, 0xD44, 0xD4D, 0xD4D, 0xD62, 0xD63, 0xDCA, 0xDCA, 0xDD2, 0xDD4, 0xDD6, 0xDD6,
        0xE31, 0xE31, 0xE34, 0xE3A, 0xE47, 0xE4E, 0xEB1, 0xEB1, 0xEB4, 0xEB9, 0xEBB, 0xEBC,
        0xEC8, 0xECD, 0xF18, 0xF19, 0xF35, 0xF35, 0xF37, 0xF37, 0xF39, 0xF39, 0xF71, 0xF7E,
        0xF80, 0xF84, 0xF86, 0xF87, 0xF8D, 0xF97, 0xF99, 0xFBC, 0xFC6, 0xFC6, 0x102D, 0x1030,
        0x1032, 0x1037, 0x1039, 0x103A, 0x103D, 0x103E, 0x1058, 0x1059, 0x105E, 0x1060, 0x1071, 0x1074,
        0x1082, 0x1082, 0x1085, 0x1086, 0x108D, 0x108D, 0x109D, 0x109D, 0x135D, 0x135F, 0x1712, 0x1714,
        0x1732, 0x1734, 0x1752, 0x1753, 0x1772, 0x1773, 0x17B4, 0x17B5, 0x17B7, 0x17BD, 0x17C6, 0x17C6,
        0x17C9, 0x17D3, 0x17DD, 0x17DD, 0x180B, 0x180D, 0x18A9, 0x18A9, 0x1920, 0x1922, 0x1927, 0x1928,
        0x1932, 0x1932, 0x1939, 0x193B, 0x1A17, 0x1A18, 0x1A1B, 0x1A1B, 0x1A56, 0x1A56, 0x1A58, 0x1A5E,
        0x1A60, 0x1A60, 0x1A62, 0x1A62, 0x1A65, 0x1A6C, 0x1A73, 0x1A7C, 0x1A7F, 0x1A7F, 0x1AB0, 0x1ABD,
        0x1B00, 0x1B03, 0x1B34, 0x1B34, 0x1B36, 0x1B3A, 0x1B3C, 0x1B3C, 0x1B42, 0x1B42, 0x1B6B, 0x1B73,
        0x1B80, 0x1B81, 0x1BA2, 0x1BA5, 0x1BA8, 0x1BA9, 0x1BAB, 0x1BAD, 0x1BE6, 0x1BE6, 0x1BE8, 0x1BE9,
        0x1BED, 0x1BED, 0x1BEF, 0x1BF1, 0x1C2C, 0x1C33, 0x1C36, 0x1C37, 0x1CD0, 0x1CD2, 0x1CD4, 0x1CE0,
        0x1CE2, 0x1CE8, 0x1CED, 0x1CED, 0x1CF4, 0x1CF4, 0x1CF8, 0x1CF9, 0x1DC0, 0x1DF5, 0x1DFC, 0x1DFF,
        0x20D0, 0x20DC, 0x20E1, 0x20E1, 0x20E5, 0x20F0, 0x2CEF, 0x2CF1, 0x2D7F, 0x2D7F, 0x2DE0, 0x2DFF,
        0x302A, 0x302D, 0x3099, 0x309A, 0xA66F, 0xA66F, 0xA674, 0xA67D, 0xA69E, 0xA69F, 0xA6F0, 0xA6F1,
        0xA802, 0xA802, 0xA806, 0xA806, 0xA80B, 0xA80B, 0xA825, 0xA826, 0xA8C4, 0xA8C4, 0xA8E0, 0xA8F1,
        0xA926, 0xA92D, 0xA947, 0xA951, 0xA980, 0xA982, 0xA9B3, 0xA9B3, 0xA9B6, 0xA9B9, 0xA9BC, 0xA9BC,
        0xA9E5, 0xA9E5, 0xAA29, 0xAA2E, 0xAA31, 0xAA32, 0xAA35, 0xAA36, 0xAA43, 0xAA43, 0xAA4C, 0xAA4C,
        0xAA7C, 0xAA7C, 0xAAB0, 0xAAB0, 0xAAB2, 0xAAB4, 0xAAB7, 0xAAB8, 0xAABE, 0xAABF, 0xAAC1, 0xAAC1,
        0xAAEC, 0xAAED, 0xAAF6, 0xAAF6, 0xABE5, 0xABE5, 0xABE8, 0xABE8, 0xABED, 0xABED, 0xFB1E, 0xFB1E,
        0xFE00, 0xFE0F, 0xFE20, 0xFE2F, 0x101FD, 0x101FD, 0x102E0, 0x102E0, 0x10376, 0x1037A, 0x10A01, 0x10A03,
        0x10A05, 0x10A06, 0x10A0C, 0x10A0F, 0x10A38, 0x10A3A, 0x10A3F, 0x10A3F, 0x10AE5, 0x10AE6, 0x11001, 0x11001,
        0x11038, 0x11046, 0x1107F, 0x11081, 0x110B3, 0x110B6, 0x110B9, 0x110BA, 0x11100, 0x11102, 0x11127, 0x1112B,
        0x1112D, 0x11134, 0x11173, 0x11173, 0x11180, 0x11181, 0x111B6, 0x111BE, 0x111CA, 0x111CC, 0x1122F, 0x11231,
        0x11234, 0x11234, 0x11236, 0x11237, 0x112DF, 0x112DF, 0x112E3, 0x112EA, 0x11300, 0x11301, 0x1133C, 0x1133C,
        0x11340, 0x11340, 0x11366, 0x1136C, 0x11370, 0x11374, 0x114B3, 0x114B8, 0x114BA, 0x114BA, 0x114BF, 0x114C0,
        0x114C2, 0x114C3, 0x115B2, 0x115B5, 0x115BC, 0x115BD, 0x115BF, 0x115C0, 0x115DC, 0x115DD, 0x11633, 0x1163A,
        0x1163D, 0x1163D, 0x1163F, 0x11640, 0x116AB, 0x116AB, 0x116AD, 0x116AD, 0x116B0, 0x116B5, 0x116B7, 0x116B7,
        0x1171D, 0x1171F, 0x11722, 0x11725, 0x11727, 0x1172B, 0x16AF0, 0x16AF4, 0x16B30, 0x16B36, 0x16F8F, 0x16F92,
        0x1BC9D, 0x1BC9E, 0x1D167, 0x1D169, 0x1D17B, 0x1D182, 0x1D185, 0x1D18B, 0x1D1AA, 0x1D1AD, 0x1D242, 0x1D244,
        0x1DA00, 0x1DA36, 0x1DA3B, 0x1DA6C, 0x1DA75, 0x1DA75, 0x1DA84, 0x1DA84, 0x1DA9B, 0x1DA9F, 0x1DAA1, 0x1DAAF,
        0x1E8D0, 0x1E8D6, 0xE0100, 0xE01EF,
    ]

    /// `is_punctuation` above ASCII: Pc Pd Ps Pe Pi Pf Po of Unicode 8.0 (152 ranges)
    static let punctuationRanges: [UInt32] = [
        0xA1, 0xA1, 0xA7, 0xA7, 0xAB, 0xAB, 0xB6, 0xB7, 0xBB, 0xBB, 0xBF, 0xBF,
        0x37E, 0x37E, 0x387, 0x387, 0x55A, 0x55F, 0x589, 0x58A, 0x5BE, 0x5BE, 0x5C0, 0x5C0,
        0x5C3, 0x5C3, 0x5C6, 0x5C6, 0x5F3, 0x5F4, 0x609, 0x60A, 0x60C, 0x60D, 0x61B, 0x61B,
        0x61E, 0x61F, 0x66A, 0x66D, 0x6D4, 0x6D4, 0x700, 0x70D, 0x7F7, 0x7F9, 0x830, 0x83E,
        0x85E, 0x85E, 0x964, 0x965, 0x970, 0x970, 0xAF0, 0xAF0, 0xDF4, 0xDF4, 0xE4F, 0xE4F,
        0xE5A, 0xE5B, 0xF04, 0xF12, 0xF14, 0xF14, 0xF3A, 0xF3D, 0xF85, 0xF85, 0xFD0, 0xFD4,
        0xFD9, 0xFDA, 0x104A, 0x104F, 0x10FB, 0x10FB, 0x1360, 0x1368, 0x1400, 0x1400, 0x166D, 0x166E,
        0x169B, 0x169C, 0x16EB, 0x16ED, 0x1735, 0x1736, 0x17D4, 0x17D6, 0x17D8, 0x17DA, 0x1800, 0x180A,
        0x1944, 0x1945, 0x1A1E, 0x1A1F, 0x1AA0, 0x1AA6, 0x1AA8, 0x1AAD, 0x1B5A, 0x1B60, 0x1BFC, 0x1BFF,
        0x1C3B, 0x1C3F, 0x1C7E, 0x1C7F, 0x1CC0, 0x1CC7, 0x1CD3, 0x1CD3, 0x2010, 0x2027, 0x2030, 0x2043,
        0x2045, 0x2051, 0x2053, 0x205E, 0x207D, 0x207E, 0x208D, 0x208E, 0x2308, 0x230B, 0x2329, 0x232A,
        0x2768, 0x2775, 0x27C5, 0x27C6, 0x27E6, 0x27EF, 0x2983, 0x2998, 0x29D8, 0x29DB, 0x29FC, 0x29FD,
        0x2CF9, 0x2CFC, 0x2CFE, 0x2CFF, 0x2D70, 0x2D70, 0x2E00, 0x2E2E, 0x2E30, 0x2E42, 0x3001, 0x3003,
        0x3008, 0x3011, 0x3014, 0x301F, 0x3030, 0x3030, 0x303D, 0x303D, 0x30A0, 0x30A0, 0x30FB, 0x30FB,
        0xA4FE, 0xA4FF, 0xA60D, 0xA60F, 0xA673, 0xA673, 0xA67E, 0xA67E, 0xA6F2, 0xA6F7, 0xA874, 0xA877,
        0xA8CE, 0xA8CF, 0xA8F8, 0xA8FA, 0xA8FC, 0xA8FC, 0xA92E, 0xA92F, 0xA95F, 0xA95F, 0xA9C1, 0xA9CD,
        0xA9DE, 0xA9DF, 0xAA5C, 0xAA5F, 0xAADE, 0xAADF, 0xAAF0, 0xAAF1, 0xABEB, 0xABEB, 0xFD3E, 0xFD3F,
        0xFE10, 0xFE19, 0xFE30, 0xFE52, 0xFE54, 0xFE61, 0xFE63, 0xFE63, 0xFE68, 0xFE68, 0xFE6A, 0xFE6B,
        0xFF01, 0xFF03, 0xFF05, 0xFF0A, 0xFF0C, 0xFF0F, 0xFF1A, 0xFF1B, 0xFF1F, 0xFF20, 0xFF3B, 0xFF3D,
        0xFF3F, 0xFF3F, 0xFF5B, 0xFF5B, 0xFF5D, 0xFF5D, 0xFF5F, 0xFF65, 0x10100, 0x10102, 0x1039F, 0x1039F,
        0x103D0, 0x103D0, 0x1056F, 0x1056F, 0x10857, 0x10857, 0x1091F, 0x1091F, 0x1093F, 0x1093F, 0x10A50, 0x10A58,
        0x10A7F, 0x10A7F, 0x10AF0, 0x10AF6, 0x10B39, 0x10B3F, 0x10B99, 0x10B9C, 0x11047, 0x1104D, 0x110BB, 0x110BC,
        0x110BE, 0x110C1, 0x11140, 0x11143, 0x11174, 0x11175, 0x111C5, 0x111C9, 0x111CD, 0x111CD, 0x111DB, 0x111DB,
        0x111DD, 0x111DF, 0x11238, 0x1123D, 0x112A9, 0x112A9, 0x114C6, 0x114C6, 0x115C1, 0x115D7, 0x11641, 0x11643,
        0x1173C, 0x1173E, 0x12470, 0x12474, 0x16A6E, 0x16A6F, 0x16AF5, 0x16AF5, 0x16B37, 0x16B3B, 0x16B44, 0x16B44,
        0x1BC9F, 0x1BC9F, 0x1DA87, 0x1DA8B,
    ]
}

/// Token to id, compared by UTF-8 bytes as Python's `dict` compares `str` (Swift's `String`
/// equality is canonical equivalence, which Python's is not); a repeated token keeps its last
/// id, as transformers' `load_vocab`. Open addressing over FNV-1a hashes: built in one pass
/// (a `[String: Int32]` of 30k tokens cost a model open milliseconds).
struct VocabTable: Sendable {
    private let tokens: [String]
    private let slots: [Int32]   // a token id, or -1 for an empty slot
    private let mask: Int

    init(_ tokens: [String]) {
        var size = 16
        while size < 2 * tokens.count { size <<= 1 }
        var slots = [Int32](repeating: -1, count: size)
        for (i, t) in tokens.enumerated() {
            var h = Self.hash(t) & (size - 1)
            while slots[h] >= 0 && !Self.same(tokens[Int(slots[h])], t) { h = (h + 1) & (size - 1) }
            slots[h] = Int32(i)
        }
        (self.tokens, self.slots, mask) = (tokens, slots, size - 1)
    }

    subscript(key: String) -> Int32? {
        var h = Self.hash(key) & mask
        while true {
            let id = slots[h]
            if id < 0 { return nil }
            if Self.same(tokens[Int(id)], key) { return id }
            h = (h + 1) & mask
        }
    }

    private static func same(_ a: String, _ b: String) -> Bool {
        a.utf8.count == b.utf8.count && a.utf8.elementsEqual(b.utf8)
    }

    private static func hash(_ s: String) -> Int {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        return Int(truncatingIfNeeded: h ^ (h >> 32))
    }
}
