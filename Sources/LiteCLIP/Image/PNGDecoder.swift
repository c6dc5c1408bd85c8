import CPNG
import TensorIO

/// PNG -> RGB through libpng, matching `PIL.Image.open(p).convert('RGB')`.
///
/// Pillow's mode for each (bit depth, colour type) (PngImagePlugin `_MODES`) and what its
/// `convert('RGB')` then gives (Unpack.c, Convert.c):
///
/// | PNG                 | PIL mode (raw mode)  | RGB                                          |
/// |---------------------|----------------------|----------------------------------------------|
/// | grey 1              | 1                    | bit ? 255 : 0                                |
/// | grey 2 / 4          | L (L;2 / L;4)        | v * 0x55 / v * 0x11, replicated               |
/// | grey 8              | L                    | v replicated                                 |
/// | grey 16             | I;16 (I;16B)         | min(v, 255) replicated (NOT the high byte)   |
/// | RGB 8 / 16          | RGB (RGB;16B)        | the samples / their high bytes               |
/// | palette 1/2/4/8     | P                    | PLTE entry; indices past the PLTE give black |
/// | grey+alpha 8        | LA                   | L replicated, alpha dropped                  |
/// | grey+alpha 16       | RGBA (LA;16B)        | high byte of L replicated, alpha dropped     |
/// | RGBA 8 / 16         | RGBA (RGBA;16B)      | RGB samples / high bytes, alpha dropped      |
///
/// Alpha is dropped, never composited; tRNS, gAMA, sRGB, iCCP, cHRM and sBIT change nothing
/// (PIL applies none of them). Interlaced (Adam7) images are de-interlaced by libpng.
///
/// Errors: libpng reports errors by `longjmp`, which Swift cannot catch, and aborts the process
/// when no `setjmp` is armed. So before the low-level read, (1) the chunk structure, lengths,
/// CRCs and the header are checked here, and (2) the whole image is decoded once through
/// libpng's simplified API (`png_image_*`), which arms its own `setjmp` and reports any error
/// (bad compressed data, bad filter byte, missing image data) as a return code. Only a file
/// that passed both is read with the low-level API, which then reads the very same bytes
/// through the very same code paths and cannot fail.
enum PNGDecoder {
    /// What the chunk walk learned.
    struct Header {
        var width = 0
        var height = 0
        var bitDepth = 0
        var colorType = 0
        var interlaced = false
        /// 256 RGB entries; entries past the PLTE chunk stay black (what PIL shows for them).
        var palette = [UInt8](repeating: 0, count: 768)
    }

    static func decode(_ data: UnsafeRawBufferPointer, name: String) throws -> RGBImage {
        let header = try readHeader(data, name: name)
        try validateWithSimplifiedAPI(data, header: header, name: name)
        return try readPixels(data, header: header, name: name)
    }

    // MARK: - Chunk walk

    static func readHeader(_ b: UnsafeRawBufferPointer, name: String) throws -> Header {
        func be32(_ p: Int) -> Int { Int(b[p]) << 24 | Int(b[p + 1]) << 16 | Int(b[p + 2]) << 8 | Int(b[p + 3]) }
        func corrupt(_ s: String) -> ImageError { ImageError(.corrupt, file: name, s) }
        var h = Header()
        var p = 8
        var sawIDAT = false, idatEnded = false, sawPLTE = false
        var index = 0
        while true {
            guard p + 8 <= b.count else {
                // PIL and libpng stop reading at the image data: a missing IEND is fine.
                if idatEnded || (sawIDAT && p == b.count) { break }
                throw ImageError(.truncated, file: name, "PNG data ends at byte \(b.count), inside the chunk header at \(p)")
            }
            let length = be32(p)
            let type = String(decoding: (p + 4..<p + 8).map { b[$0] }, as: UTF8.self)
            let typeOK = (p + 4..<p + 8).allSatisfy { (0x41...0x5A).contains(b[$0]) || (0x61...0x7A).contains(b[$0]) }
            if idatEnded && (!typeOK || length > 0x7FFF_FFFF || p + 12 + length > b.count) {
                break                                // damage after the image data is ignored, as PIL does
            }
            guard typeOK else { throw corrupt("PNG chunk \(index) at byte \(p) has an invalid type") }
            guard length <= 0x7FFF_FFFF else { throw corrupt("PNG chunk '\(type)' at byte \(p) claims \(length) bytes") }
            guard p + 12 + length <= b.count else {
                throw ImageError(.truncated, file: name,
                                 "PNG chunk '\(type)' at byte \(p) needs \(length + 12) bytes; the file ends at \(b.count)")
            }
            let body = p + 8
            if !idatEnded {
                let stored = UInt32(be32(body + length))
                let actual = CRC32.checksum(UnsafeRawBufferPointer(rebasing: b[(p + 4)..<(body + length)]))
                guard stored == actual else { throw corrupt("PNG chunk '\(type)' at byte \(p) fails its CRC check") }
            }
            if index == 0 {
                guard type == "IHDR", length == 13 else { throw corrupt("PNG does not start with a 13-byte IHDR chunk") }
                h.width = be32(body)
                h.height = be32(body + 4)
                h.bitDepth = Int(b[body + 8])
                h.colorType = Int(b[body + 9])
                let valid: [Int: [Int]] = [0: [1, 2, 4, 8, 16], 2: [8, 16], 3: [1, 2, 4, 8], 4: [8, 16], 6: [8, 16]]
                guard let depths = valid[h.colorType], depths.contains(h.bitDepth) else {
                    throw corrupt("PNG colour type \(h.colorType) with bit depth \(h.bitDepth) is not valid")
                }
                guard b[body + 10] == 0, b[body + 11] == 0, b[body + 12] <= 1 else {
                    throw corrupt("PNG IHDR has unknown compression, filter or interlace method")
                }
                h.interlaced = b[body + 12] == 1
                try ImageDecoder.checkSize(width: h.width, height: h.height, name: name, format: "PNG")
            } else {
                switch type {
                case "IHDR":
                    throw corrupt("PNG has a second IHDR chunk at byte \(p)")
                case "PLTE" where !sawIDAT:
                    guard length % 3 == 0, length >= 3, length <= 768, !sawPLTE else {
                        throw corrupt("PNG PLTE chunk at byte \(p) is invalid (\(length) bytes)")
                    }
                    sawPLTE = true
                    for i in 0..<length { h.palette[i] = b[body + i] }
                case "IDAT":
                    guard !idatEnded else { throw corrupt("PNG has IDAT chunks that are not consecutive") }
                    sawIDAT = true
                case "IEND":
                    guard sawIDAT else { throw corrupt("PNG has no image data (IDAT)") }
                    idatEnded = true
                default:
                    if sawIDAT { idatEnded = true }
                }
            }
            if type == "IEND" { break }
            p = body + length + 4
            index += 1
        }
        guard sawIDAT else { throw ImageError(.truncated, file: name, "PNG has no image data (IDAT)") }
        if h.colorType == 3 && !sawPLTE { throw corrupt("palette PNG without a PLTE chunk before its image data") }
        return h
    }

    // MARK: - libpng

    /// Decodes the whole image once through the simplified API, which catches libpng's errors.
    static func validateWithSimplifiedAPI(_ data: UnsafeRawBufferPointer, header: Header, name: String) throws {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        defer { png_image_free(&image) }
        func message() -> String {
            withUnsafeBytes(of: image.message) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
        }
        guard png_image_begin_read_from_memory(&image, data.baseAddress, data.count) != 0 else {
            throw ImageError(.corrupt, file: name, "bad PNG: \(message())")
        }
        guard Int(image.width) == header.width, Int(image.height) == header.height else {
            throw ImageError(.corrupt, file: name, "libpng reads a different PNG size")
        }
        image.format = UInt32(PNG_FORMAT_GRAY)   // the smallest output: one byte per pixel
        var scratch = [UInt8](repeating: 0, count: header.width * header.height)
        let ok = scratch.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, 0, nil) }
        guard ok != 0 else {
            let m = message()
            let code: ImageError.Code = m.contains("Not enough image data") || m.contains("end of data") ? .truncated : .corrupt
            throw ImageError(code, file: name, "bad PNG image data: \(m)")
        }
    }

    /// Where the low-level reader's callback takes its bytes from.
    private struct Input {
        let base: UnsafePointer<UInt8>
        let count: Int
        var offset: Int
    }

    /// Reads the raw rows (no libpng transformations except de-interlacing) and converts them.
    static func readPixels(_ data: UnsafeRawBufferPointer, header h: Header, name: String) throws -> RGBImage {
        guard let base = data.baseAddress?.assumingMemoryBound(to: UInt8.self) else {
            throw ImageError(.truncated, file: name, "empty PNG")
        }
        let warn: png_error_ptr = { _, _ in }        // warnings (benign errors) are not failures
        var pngStruct: png_structp? = png_create_read_struct(PNG_LIBPNG_VER_STRING, nil, nil, warn)
        var info: png_infop? = pngStruct.flatMap { png_create_info_struct($0) }
        defer { png_destroy_read_struct(&pngStruct, &info, nil) }
        guard let png = pngStruct, info != nil else { throw ImageError(.ioError, file: name, "cannot initialise libpng") }

        var input = Input(base: base, count: data.count, offset: 0)
        return try withUnsafeMutablePointer(to: &input) { inputPtr in
            png_set_read_fn(png, inputPtr, { png, out, length in
                guard let png, let out, let io = png_get_io_ptr(png) else { return }
                let input = io.assumingMemoryBound(to: Input.self)
                // The validation pass read the same bytes, so this never runs short.
                let n = min(length, input.pointee.count - input.pointee.offset)
                out.update(from: input.pointee.base + input.pointee.offset, count: n)
                input.pointee.offset += n
                if n < length { png_error(png, "read past the end of the data") }
            })
            png_set_benign_errors(png, 1)
            png_read_info(png, info)
            let passes = Int(png_set_interlace_handling(png))
            png_read_update_info(png, info)
            let rowBytes = Int(png_get_rowbytes(png, info))
            let channels = [0: 1, 2: 3, 3: 1, 4: 2, 6: 4][h.colorType] ?? 0
            guard rowBytes == (h.width * channels * h.bitDepth + 7) / 8 else {
                throw ImageError(.corrupt, file: name, "libpng gives \(rowBytes) bytes per row")
            }

            var rgb = [UInt8](repeating: 0, count: h.width * h.height * 3)
            rgb.withUnsafeMutableBufferPointer { out in
                if h.interlaced {
                    // Each pass fills its pixels into the full rows, so keep every row.
                    var raw = [UInt8](repeating: 0, count: rowBytes * h.height)
                    raw.withUnsafeMutableBufferPointer { r in
                        for _ in 0..<passes {
                            for y in 0..<h.height { png_read_row(png, r.baseAddress! + y * rowBytes, nil) }
                        }
                        for y in 0..<h.height {
                            convertRow(UnsafePointer(r.baseAddress! + y * rowBytes), header: h, into: out.baseAddress! + y * h.width * 3)
                        }
                    }
                } else {
                    var row = [UInt8](repeating: 0, count: rowBytes)
                    row.withUnsafeMutableBufferPointer { r in
                        for y in 0..<h.height {
                            png_read_row(png, r.baseAddress!, nil)
                            convertRow(UnsafePointer(r.baseAddress!), header: h, into: out.baseAddress! + y * h.width * 3)
                        }
                    }
                }
            }
            return RGBImage(checked: h.width, h.height, rgb)
        }
    }

    // MARK: - Raw rows -> RGB, as Pillow's unpackers + convert('RGB')

    static func convertRow(_ src: UnsafePointer<UInt8>, header h: Header, into dst: UnsafeMutablePointer<UInt8>) {
        let w = h.width
        switch (h.colorType, h.bitDepth) {
        case (0, 16):                                // I;16 -> RGB clips the 16-bit value at 255
            for x in 0..<w {
                let v = Int(src[2 * x]) << 8 | Int(src[2 * x + 1])
                let g = UInt8(min(v, 255))
                dst[3 * x] = g; dst[3 * x + 1] = g; dst[3 * x + 2] = g
            }
        case (0, 8):
            for x in 0..<w { let g = src[x]; dst[3 * x] = g; dst[3 * x + 1] = g; dst[3 * x + 2] = g }
        case (0, let d):                             // 1, 2, 4 bits: scale to 0...255
            let scale = UInt8(255 / ((1 << d) - 1))
            for x in 0..<w {
                let g = sample(src, x, depth: d) &* scale
                dst[3 * x] = g; dst[3 * x + 1] = g; dst[3 * x + 2] = g
            }
        case (2, 8):
            dst.update(from: src, count: 3 * w)
        case (2, _):                                 // RGB;16B: high bytes
            for i in 0..<(3 * w) { dst[i] = src[2 * i] }
        case (3, let d):
            h.palette.withUnsafeBufferPointer { pal in
                for x in 0..<w {
                    let i = Int(d == 8 ? src[x] : sample(src, x, depth: d)) * 3
                    dst[3 * x] = pal[i]; dst[3 * x + 1] = pal[i + 1]; dst[3 * x + 2] = pal[i + 2]
                }
            }
        case (4, 8):
            for x in 0..<w { let g = src[2 * x]; dst[3 * x] = g; dst[3 * x + 1] = g; dst[3 * x + 2] = g }
        case (4, _):                                 // LA;16B: high byte of L
            for x in 0..<w { let g = src[4 * x]; dst[3 * x] = g; dst[3 * x + 1] = g; dst[3 * x + 2] = g }
        case (6, 8):
            for x in 0..<w { dst[3 * x] = src[4 * x]; dst[3 * x + 1] = src[4 * x + 1]; dst[3 * x + 2] = src[4 * x + 2] }
        default:                                     // (6, 16) RGBA;16B: high bytes
            for x in 0..<w { dst[3 * x] = src[8 * x]; dst[3 * x + 1] = src[8 * x + 2]; dst[3 * x + 2] = src[8 * x + 4] }
        }
    }

    /// The `x`-th `depth`-bit sample of a packed row (most significant bits first).
    @inline(__always)
    static func sample(_ src: UnsafePointer<UInt8>, _ x: Int, depth: Int) -> UInt8 {
        let perByte = 8 / depth
        let shift = (perByte - 1 - x % perByte) * depth
        return (src[x / perByte] >> UInt8(shift)) & UInt8((1 << depth) - 1)
    }
}
