import CWebP

/// WebP -> RGB through libwebp, matching `PIL.Image.open(p).convert('RGB')`. Spec:
/// formats/images.md, "WebP".
///
/// Port of: Pillow's WebPImagePlugin (`_open`, `load`) and `_webp.c` (`_anim_decoder_new`,
/// `_anim_decoder_get_next`). Pillow decodes every WebP file, still or animated, with libwebp's
/// animation decoder at its default options (`WebPAnimDecoderNew(data, NULL)`: `MODE_RGBA`, not
/// premultiplied, one thread; decoding at libwebp's defaults: fancy chroma upsampling, no
/// dithering). `load()` takes the first frame, a full RGBA canvas, with raw mode `RGBX` (no
/// alpha in the header: mode RGB) or `RGBA` (mode RGBA), and `convert('RGB')` then drops the
/// fourth byte in both cases (alpha is dropped, never composited). We make the same calls and
/// keep the same three bytes:
///
/// | WebP                                   | PIL mode | RGB                                       |
/// |----------------------------------------|----------|-------------------------------------------|
/// | simple lossy (`VP8 `)                  | RGB      | libwebp's YUV 4:2:0 -> RGB                |
/// | simple lossless (`VP8L`), alpha bit 0  | RGB      | the ARGB samples' R, G, B                 |
/// | simple lossless (`VP8L`), alpha bit 1  | RGBA     | R, G, B (alpha dropped, not premultiplied) |
/// | extended (`VP8X`), still, +/- `ALPH`   | RGB/RGBA | as above; ICCP, EXIF, XMP change nothing  |
/// | extended, animated (`ANIM` + `ANMF`)   | RGB/RGBA | frame 1 on the canvas: inside its rectangle the frame's pixels, outside it transparent black, so (0, 0, 0) |
///
/// Animated files: like `Image.open(p).convert('RGB')`, the first frame is decoded (the other
/// frames are not); the ANIM background colour is not used (libwebp's canvas starts
/// transparent, and frame 1 is never blended).
///
/// Errors: the RIFF header and the chunk sizes are walked here first, and the canvas size is
/// checked against `ImageDecoder.maxSide` / `maxPixels` before libwebp allocates its canvas (two
/// RGBA canvases, 8 bytes per pixel). libwebp reports errors as return values (it never aborts
/// or jumps), so anything it refuses comes back as a throw; its status then decides between
/// `truncated` and `corrupt`.
enum WebPDecoder {
    /// What the RIFF walk learned.
    struct Container: Equatable {
        /// The first chunk: "VP8 " (simple lossy), "VP8L" (simple lossless) or "VP8X" (extended).
        var kind = ""
        var width = 0
        var height = 0
        /// The header's alpha bit (VP8L, VP8X): PIL's mode is then RGBA, else RGB.
        var hasAlpha = false
        /// VP8X's animation flag.
        var animated = false
        /// Every top-level chunk's FourCC, in file order.
        var chunks: [String] = []
    }

    static func decode(_ data: UnsafeRawBufferPointer, name: String) throws -> RGBImage {
        let container = try readContainer(data, name: name)
        guard let base = data.baseAddress?.assumingMemoryBound(to: UInt8.self) else {
            throw ImageError(.truncated, file: name, "empty WebP")
        }
        // The whole file, as Pillow passes `fp.read()`: libwebp ignores bytes after the RIFF end.
        var source = WebPData(bytes: base, size: data.count)
        guard let decoder = WebPAnimDecoderNew(&source, nil) else {
            throw containerError(&source, name: name)
        }
        defer { WebPAnimDecoderDelete(decoder) }
        var info = WebPAnimInfo()
        guard WebPAnimDecoderGetInfo(decoder, &info) != 0,
              Int(info.canvas_width) == container.width, Int(info.canvas_height) == container.height else {
            throw ImageError(.corrupt, file: name,
                             "libwebp reads a canvas of \(info.canvas_width)x\(info.canvas_height), the \(container.kind) header says \(container.width)x\(container.height)")
        }
        var canvas: UnsafeMutablePointer<UInt8>?
        var timestamp: Int32 = 0
        guard WebPAnimDecoderGetNext(decoder, &canvas, &timestamp) != 0, let rgba = canvas else {
            throw frameError(decoder, name: name)
        }
        // (H, W, 4) RGBA, not premultiplied -> (H, W, 3): Pillow's RGBA/RGBX -> RGB.
        let pixels = container.width * container.height
        var rgb = [UInt8](repeating: 0, count: pixels * 3)
        rgb.withUnsafeMutableBufferPointer { d in
            for i in 0..<pixels {
                d[3 * i] = rgba[4 * i]
                d[3 * i + 1] = rgba[4 * i + 1]
                d[3 * i + 2] = rgba[4 * i + 2]
            }
        }
        return RGBImage(checked: container.width, container.height, rgb)
    }

    // MARK: - RIFF walk

    /// Checks the RIFF header, the chunk sizes up to the RIFF end and the first chunk's header
    /// (which gives the canvas size), without decoding anything. Bytes after the RIFF end are
    /// ignored, as libwebp (and so Pillow) ignores them.
    static func readContainer(_ b: UnsafeRawBufferPointer, name: String) throws -> Container {
        func le(_ p: Int, _ n: Int) -> Int { (0..<n).reduce(0) { $0 | Int(b[p + $1]) << (8 * $1) } }
        func corrupt(_ s: String) -> ImageError { ImageError(.corrupt, file: name, s) }
        func fourCC(_ p: Int) -> String {
            let bytes = (p..<p + 4).map { b[$0] }
            return bytes.allSatisfy({ (0x20...0x7E).contains($0) })
                ? String(decoding: bytes, as: UTF8.self) : bytes.map(hex2).joined(separator: " ")
        }
        guard b.count >= 12 else {
            throw ImageError(.truncated, file: name, "WebP data ends at byte \(b.count), inside the RIFF header")
        }
        let riffSize = le(4, 4)
        // 'WEBP' and at least one chunk header.
        guard riffSize >= 12 else { throw corrupt("WebP RIFF size \(riffSize) is too small to hold an image chunk") }
        let end = riffSize + 8
        guard end <= b.count else {
            throw ImageError(.truncated, file: name, "WebP data ends at byte \(b.count); its RIFF header says \(end)")
        }

        var c = Container()
        var p = 12
        while p < end {
            guard p + 8 <= end else {
                throw corrupt("WebP chunk header at byte \(p) runs past the end of the RIFF data (byte \(end))")
            }
            let size = le(p + 4, 4)
            let type = fourCC(p)
            guard size <= end - p - 8 else {
                throw corrupt("WebP chunk '\(type)' at byte \(p) claims \(size) bytes; the RIFF data has \(end - p - 8) left")
            }
            if c.chunks.isEmpty { try readImageHeader(type, at: p + 8, size: size, b, into: &c, name: name) }
            c.chunks.append(type)
            p += 8 + size + (size & 1)              // chunks are padded to an even size
        }
        return c
    }

    /// The first chunk's header: the frame header of a simple lossy file, the VP8L header, or the
    /// VP8X canvas (RFC 9649, sections 2.5 - 2.7).
    static func readImageHeader(_ type: String, at q: Int, size: Int, _ b: UnsafeRawBufferPointer,
                                into c: inout Container, name: String) throws {
        func le(_ p: Int, _ n: Int) -> Int { (0..<n).reduce(0) { $0 | Int(b[p + $1]) << (8 * $1) } }
        func corrupt(_ s: String) -> ImageError { ImageError(.corrupt, file: name, s) }
        c.kind = type
        switch type {
        case "VP8 ":
            // 3-byte frame tag, start code 9D 01 2A, 14-bit width and height (2 scale bits each,
            // which decoders ignore).
            guard size >= 10 else { throw corrupt("WebP VP8 chunk of \(size) bytes is too short for a frame header") }
            let tag = le(q, 3)
            guard tag & 1 == 0 else { throw corrupt("WebP VP8 data does not start with a key frame") }
            guard (tag >> 1) & 7 <= 3 else { throw corrupt("WebP VP8 frame has unknown profile \((tag >> 1) & 7)") }
            guard (tag >> 4) & 1 == 1 else { throw corrupt("WebP VP8 key frame is not marked as shown") }
            guard tag >> 5 < size else { throw corrupt("WebP VP8 first partition (\(tag >> 5) bytes) is longer than its chunk (\(size))") }
            guard b[q + 3] == 0x9D, b[q + 4] == 0x01, b[q + 5] == 0x2A else { throw corrupt("WebP VP8 frame has no start code") }
            c.width = le(q + 6, 2) & 0x3FFF
            c.height = le(q + 8, 2) & 0x3FFF
        case "VP8L":
            // Signature 0x2F, then 14-bit width - 1, 14-bit height - 1, alpha bit, 3-bit version.
            guard size >= 5 else { throw corrupt("WebP VP8L chunk of \(size) bytes is too short for its header") }
            guard b[q] == 0x2F else { throw corrupt("WebP VP8L data has no 0x2F signature") }
            let bits = le(q + 1, 4)
            guard bits >> 29 == 0 else { throw corrupt("WebP VP8L version \(bits >> 29) is unknown") }
            c.width = (bits & 0x3FFF) + 1
            c.height = ((bits >> 14) & 0x3FFF) + 1
            c.hasAlpha = (bits >> 28) & 1 == 1
        case "VP8X":
            // Flags (ICC 0x20, alpha 0x10, EXIF 0x08, XMP 0x04, animation 0x02), 3 reserved
            // bytes, 24-bit canvas width - 1 and height - 1.
            guard size >= 10 else { throw corrupt("WebP VP8X chunk of \(size) bytes is too short (10 expected)") }
            c.hasAlpha = b[q] & 0x10 != 0
            c.animated = b[q] & 0x02 != 0
            c.width = le(q + 4, 3) + 1
            c.height = le(q + 7, 3) + 1
        default:
            throw corrupt("WebP's first chunk is '\(type)'; a WebP image starts with 'VP8 ', 'VP8L' or 'VP8X'")
        }
        let what = ["VP8 ": "WebP (lossy)", "VP8L": "WebP (lossless)"][type] ?? "WebP canvas"
        try ImageDecoder.checkSize(width: c.width, height: c.height, name: name, format: what)
    }

    // MARK: - libwebp's refusals

    /// Why `WebPAnimDecoderNew` refused a file that passed the RIFF walk. The RIFF data is all
    /// there (checked before), so a demuxer that still wants more data has found no complete
    /// image (a VP8X file without its image chunk, a last chunk without its padding byte);
    /// otherwise the chunk layout is invalid (order, flags, frame rectangles outside the canvas).
    static func containerError(_ source: inout WebPData, name: String) -> ImageError {
        var state = WEBP_DEMUX_PARSE_ERROR
        if let demux = WebPDemuxPartial(&source, &state) { WebPDemuxDelete(demux) }
        if state == WEBP_DEMUX_PARSING_HEADER || state == WEBP_DEMUX_PARSED_HEADER {
            return ImageError(.corrupt, file: name, "libwebp finds no complete image in the WebP container (an image chunk is missing or cut short)")
        }
        return ImageError(.corrupt, file: name,
                          "libwebp refuses the WebP container (chunk order, flags or frame rectangles are invalid)")
    }

    /// Why the first frame did not decode: the same frame is decoded alone with `WebPDecode`
    /// (the call libwebp's animation decoder makes), whose status says what is wrong.
    static func frameError(_ decoder: OpaquePointer, name: String) -> ImageError {
        var iter = WebPIterator()
        guard WebPDemuxGetFrame(WebPAnimDecoderGetDemuxer(decoder), 1, &iter) != 0 else {
            return ImageError(.corrupt, file: name, "the WebP file has no frame")
        }
        defer { WebPDemuxReleaseIterator(&iter) }
        var config = WebPDecoderConfig()
        guard WebPInitDecoderConfig(&config) != 0 else {
            return ImageError(.corrupt, file: name, "libwebp cannot decode the first frame")
        }
        config.output.colorspace = MODE_RGBA
        let status = WebPDecode(iter.fragment.bytes, iter.fragment.size, &config)
        WebPFreeDecBuffer(&config.output)
        let frame = "frame 1 (\(iter.width)x\(iter.height) at \(iter.x_offset),\(iter.y_offset))"
        switch status {
        case VP8_STATUS_NOT_ENOUGH_DATA:
            return ImageError(.truncated, file: name, "WebP image data of \(frame) ends early (libwebp: not enough data)")
        case VP8_STATUS_UNSUPPORTED_FEATURE:
            return ImageError(.unsupportedVariant, file: name, "WebP \(frame) uses a feature libwebp does not support")
        case VP8_STATUS_OUT_OF_MEMORY:
            return ImageError(.tooLarge, file: name, "libwebp ran out of memory decoding \(frame)")
        case VP8_STATUS_BITSTREAM_ERROR:
            return ImageError(.corrupt, file: name, "WebP image data of \(frame) is corrupt (libwebp: bitstream error)")
        default:
            return ImageError(.corrupt, file: name, "libwebp cannot decode WebP \(frame) (status \(status.rawValue))")
        }
    }
}
