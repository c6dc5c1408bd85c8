#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TensorIO

/// Decoding JPEG, PNG and WebP files into 8-bit RGB, with the pixels PIL gives for
/// `Image.open(path).convert('RGB')`. Spec: formats/images.md.
///
/// Port of: Pillow's JpegImagePlugin / PngImagePlugin / WebPImagePlugin (modes and raw modes),
/// Unpack.c and Convert.c (the conversions to RGB). The JPEG entropy decoding and IDCT are
/// libjpeg-turbo's (through TurboJPEG), as in Pillow; PNG rows come from libpng; WebP frames
/// come from libwebp's animation decoder, as in Pillow.

/// An 8-bit RGB image: `pixels` holds `height` rows of `width` interleaved R, G, B bytes.
public struct RGBImage: Sendable, Equatable {
    public let width: Int
    public let height: Int
    /// (H, W, 3) row-major, `width * height * 3` bytes.
    public var pixels: [UInt8]

    /// An image from memory: `pixels` is `height` rows of `width` interleaved R, G, B bytes.
    /// Throws `ImageError.badDimensions` when the sizes and the byte count disagree.
    public init(width: Int, height: Int, pixels: [UInt8]) throws {
        guard width > 0, height > 0, width <= ImageDecoder.maxSide, height <= ImageDecoder.maxSide,
              pixels.count == width * height * 3 else {
            throw ImageError(.badDimensions, file: "<memory>",
                             "\(pixels.count) bytes for a \(width)x\(height) RGB image (expected width * height * 3, sides 1...\(ImageDecoder.maxSide))")
        }
        self.init(checked: width, height, pixels)
    }

    /// Decodes a JPEG, PNG or WebP file (the format comes from its first bytes, not its name).
    public init(contentsOf url: URL) throws {
        self = try ImageDecoder.decode(path: url.path)
    }

    /// For the decoders, whose sizes are right by construction.
    init(checked width: Int, _ height: Int, _ pixels: [UInt8]) {
        precondition(width > 0 && height > 0 && pixels.count == width * height * 3,
                     "RGBImage: \(pixels.count) bytes for \(width)x\(height)")
        self.width = width
        self.height = height
        self.pixels = pixels
    }
}

/// Why an image could not be decoded. Always names the file.
public struct ImageError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: String, Sendable {
        /// The file could not be read.
        case ioError
        /// Not a JPEG, PNG or WebP (GIF, BMP, TIFF, HEIF, unknown bytes, empty file).
        case unsupportedFormat
        /// The data ends before the image does.
        case truncated
        /// Malformed data (bad chunk, checksum, marker, compressed stream, header field).
        case corrupt
        /// A JPEG, PNG or WebP variant this decoder does not handle.
        case unsupportedVariant
        /// Wider or taller than `ImageDecoder.maxSide`, or more than `ImageDecoder.maxPixels`.
        case tooLarge
        /// An in-memory image whose width, height and byte count disagree.
        case badDimensions
    }

    public let code: Code
    public let file: String
    public let detail: String

    public init(_ code: Code, file: String, _ detail: String) {
        self.code = code
        self.file = file
        self.detail = detail
    }

    /// For callers outside the decoders (a missing file, an empty folder).
    public init(file: String, detail: String, code: Code = .ioError) {
        self.init(code, file: file, detail)
    }

    public var description: String { "\(file): \(detail)" }
}

public enum ImageDecoder {
    /// Largest accepted width or height.
    public static let maxSide = 16384
    /// Largest accepted width x height (PIL warns from 89.5 megapixels on).
    public static let maxPixels = 100_000_000

    /// Decodes the JPEG, PNG or WebP file at `path` (the format comes from its first bytes, not its name).
    public static func decode(path: String) throws -> RGBImage {
        let source: ByteSource
        do {
            source = try ByteSource(mapping: path)
        } catch let e as ReadError {
            throw ImageError(.ioError, file: path, e.detail)
        }
        return try source.withBytes { try decode(buffer: $0, name: path) }
    }

    /// Decodes an in-memory JPEG, PNG or WebP; `name` is used in errors.
    public static func decode(bytes: [UInt8], name: String) throws -> RGBImage {
        try bytes.withUnsafeBytes { try decode(buffer: $0, name: name) }
    }

    /// The format named by the first bytes of a file.
    enum Format: Equatable {
        case jpeg, png, webp
        case unsupported(String)
    }

    static func sniff(_ b: UnsafeRawBufferPointer) -> Format {
        func starts(_ prefix: [UInt8], at offset: Int = 0) -> Bool {
            b.count >= offset + prefix.count && prefix.indices.allSatisfy { b[offset + $0] == prefix[$0] }
        }
        if starts([0xFF, 0xD8, 0xFF]) { return .jpeg }
        if starts([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) { return .png }
        if starts(Array("RIFF".utf8)) && starts(Array("WEBP".utf8), at: 8) { return .webp }
        if b.isEmpty { return .unsupported("the file is empty") }
        if starts(Array("GIF87a".utf8)) || starts(Array("GIF89a".utf8)) { return .unsupported("GIF images are not supported (only JPEG, PNG and WebP)") }
        if starts(Array("BM".utf8)) { return .unsupported("BMP images are not supported (only JPEG, PNG and WebP)") }
        if starts([0x49, 0x49, 0x2A, 0x00]) || starts([0x4D, 0x4D, 0x00, 0x2A]) { return .unsupported("TIFF images are not supported (only JPEG, PNG and WebP)") }
        if starts(Array("ftyp".utf8), at: 4) { return .unsupported("HEIF/AVIF images are not supported (only JPEG, PNG and WebP)") }
        if starts([0x89, 0x50, 0x4E, 0x47]) { return .unsupported("damaged PNG signature") }
        let head = (0..<min(8, b.count)).map { hex2(b[$0]) }.joined(separator: " ")
        return .unsupported("not a JPEG, PNG or WebP image (first bytes: \(head))")
    }

    static func decode(buffer: UnsafeRawBufferPointer, name: String) throws -> RGBImage {
        switch sniff(buffer) {
        case .jpeg: return try JPEGDecoder.decode(buffer, name: name)
        case .png: return try PNGDecoder.decode(buffer, name: name)
        case .webp: return try WebPDecoder.decode(buffer, name: name)
        case .unsupported(let why): throw ImageError(.unsupportedFormat, file: name, why)
        }
    }

    /// Refuses absurd sizes before any pixel memory is allocated.
    static func checkSize(width: Int, height: Int, name: String, format: String) throws {
        guard width > 0, height > 0 else {
            throw ImageError(.corrupt, file: name, "\(format) header gives an empty size \(width)x\(height)")
        }
        guard width <= maxSide, height <= maxSide, width * height <= maxPixels else {
            throw ImageError(.tooLarge, file: name,
                             "\(format) is \(width)x\(height); at most \(maxSide) per side and \(maxPixels / 1_000_000) megapixels are accepted")
        }
    }
}

func hex2(_ v: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(v >> 4)], digits[Int(v & 15)]])
}
