import CTurboJPEG

/// JPEG -> RGB through TurboJPEG, matching `PIL.Image.open(p).convert('RGB')`.
///
/// Pillow decodes JPEGs with libjpeg(-turbo) at its defaults (islow IDCT, fancy upsampling),
/// which is what `tjDecompress2` does with no flags, so the pixels are the same:
/// - YCbCr / RGB JPEGs: libjpeg's conversion to RGB.
/// - Grayscale: PIL opens mode "L" and `convert('RGB')` copies L to R, G and B; libjpeg's
///   gray -> RGB conversion does the same.
/// - CMYK / YCCK (4 components): PIL opens mode "CMYK" with raw mode "CMYK;I" (it always assumes
///   Adobe's inverted polarity), then `cmyk2rgb` (Convert.c). We decode to TurboJPEG's CMYK
///   (the stored, inverted values), invert, and apply the same integer formula.
/// EXIF orientation is not applied (the seed does not call `exif_transpose`).
///
/// Errors: TurboJPEG reports them as return codes (it catches libjpeg's longjmp itself).
/// libjpeg *warnings* (corrupt entropy data, extraneous bytes) do not fail, as in Pillow, but a
/// file without its end-of-image marker is truncated: PIL refuses those ("image file is
/// truncated"), while libjpeg would pad them silently, so we check the marker structure first.
enum JPEGDecoder {
    static func decode(_ data: UnsafeRawBufferPointer, name: String) throws -> RGBImage {
        guard let base = data.baseAddress?.assumingMemoryBound(to: UInt8.self) else {
            throw ImageError(.truncated, file: name, "empty JPEG")
        }
        guard let handle = tjInitDecompress() else {
            throw ImageError(.ioError, file: name, "cannot initialise TurboJPEG")
        }
        defer { tjDestroy(handle) }
        func message() -> String {
            guard let s = tjGetErrorStr2(handle) else { return "unknown TurboJPEG error" }
            return String(cString: s)
        }

        try checkStructure(data, name: name)
        var w: Int32 = 0, h: Int32 = 0, subsampling: Int32 = 0, colorspace: Int32 = 0
        guard tjDecompressHeader3(handle, base, UInt(data.count), &w, &h, &subsampling, &colorspace) == 0 else {
            throw ImageError(.corrupt, file: name, "bad JPEG header: \(message())")
        }
        let width = Int(w), height = Int(h)
        try ImageDecoder.checkSize(width: width, height: height, name: name, format: "JPEG")

        let cmyk = colorspace == Int32(TJCS_CMYK.rawValue) || colorspace == Int32(TJCS_YCCK.rawValue)
        let channels = cmyk ? 4 : 3
        let format = cmyk ? TJPF_CMYK : TJPF_RGB
        var out = [UInt8](repeating: 0, count: width * height * channels)
        let rc = out.withUnsafeMutableBufferPointer { dst in
            tjDecompress2(handle, base, UInt(data.count), dst.baseAddress, w, 0, h,
                          Int32(format.rawValue), TJFLAG_LIMITSCANS)
        }
        if rc != 0 && tjGetErrorCode(handle) != Int32(TJERR_WARNING.rawValue) {
            throw ImageError(.corrupt, file: name, "JPEG decoding failed: \(message())")
        }
        if cmyk { out = cmykToRGB(out, pixels: width * height) }
        return RGBImage(checked: width, height, out)
    }

    /// Pillow's `cmyk2rgb` on inverted ("CMYK;I") samples:
    /// ```
    /// nk = 255 - K;  R = clip(nk - muldiv255(C, nk))     muldiv255(a, b) = (t + (t >> 8)) >> 8, t = a*b + 128
    /// ```
    static func cmykToRGB(_ stored: [UInt8], pixels: Int) -> [UInt8] {
        var rgb = [UInt8](repeating: 0, count: pixels * 3)
        stored.withUnsafeBufferPointer { s in
            rgb.withUnsafeMutableBufferPointer { d in
                for i in 0..<pixels {
                    let nk = Int(s[4 * i + 3])           // 255 - (255 - stored K)
                    for c in 0..<3 {
                        let t = (255 - Int(s[4 * i + c])) * nk + 128
                        let v = nk - (((t >> 8) + t) >> 8)
                        d[3 * i + c] = UInt8(clamping: v)
                    }
                }
            }
        }
        return rgb
    }

    /// Walks the marker segments and entropy-coded data up to the end-of-image marker, so a
    /// truncated file is refused (libjpeg would pad it with a warning; PIL refuses it).
    static func checkStructure(_ b: UnsafeRawBufferPointer, name: String) throws {
        let n = b.count
        var p = 2                                    // after SOI
        func truncated(_ what: String) -> ImageError {
            ImageError(.truncated, file: name, "JPEG data ends \(what) (byte \(n) of a file without an end-of-image marker)")
        }
        while true {
            // Find the next marker: libjpeg skips stray bytes before 0xFF (with a warning).
            while p < n && b[p] != 0xFF { p += 1 }
            while p < n && b[p] == 0xFF { p += 1 }    // 0xFF fill bytes
            guard p < n else { throw truncated("before the end-of-image marker") }
            let marker = b[p]
            p += 1
            switch marker {
            case 0xD9:                               // EOI
                return
            case 0x01, 0xD0...0xD7:                  // TEM, RSTn: no payload
                continue
            case 0x00:                               // a stuffed zero outside a scan: stray byte
                continue
            default:
                guard p + 2 <= n else { throw truncated("inside a marker segment") }
                let length = Int(b[p]) << 8 | Int(b[p + 1])
                guard length >= 2 else {
                    throw ImageError(.corrupt, file: name, "JPEG marker 0xFF\(hex2(marker).uppercased()) at byte \(p - 2) has length \(length)")
                }
                guard p + length <= n else { throw truncated("inside a marker segment") }
                p += length
                if marker == 0xDA {                  // SOS: entropy-coded data up to the next real marker
                    while true {
                        while p < n && b[p] != 0xFF { p += 1 }
                        guard p + 1 < n else { throw truncated("inside the compressed image data") }
                        let next = b[p + 1]
                        if next == 0x00 || (0xD0...0xD7).contains(next) || next == 0xFF {
                            p += next == 0xFF ? 1 : 2
                        } else {
                            break
                        }
                    }
                }
            }
        }
    }
}
