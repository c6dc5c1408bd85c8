import Foundation
import XCTest
@testable import LiteCLIP
import TensorIO
import TestSupport

/// WebP decoding against PIL (golden/generate_webp.py writes the files and
/// golden/images/expected_webp.safetensors: the RGB bytes of `Image.open(p).convert('RGB')` from
/// Pillow's bundled libwebp): lossy, lossless, with and without alpha, extended with EXIF, and
/// the first frame of an animation must give PIL's bytes exactly; the decoded images go through
/// resize, crop and normalise; hostile files throw an `ImageError` naming the file, never crash.
final class WebPTests: XCTestCase {
    struct Expected {
        let key: String
        let mode: String
        let width: Int
        let height: Int
        let frames: Int
        let decodedSHA: String
        let resized: [Int]
        let cropSHA: String
    }

    static let golden: (file: Checkpoint, images: [Expected]) = {
        let path = Fixtures.golden("images/expected_webp.safetensors")
        let file = try! SafetensorsReader.read(ByteSource(mapping: path))
        var images: [Expected] = []
        for (key, json) in file.metadata.sorted(by: { $0.key < $1.key }) where !["format", "version", "generator"].contains(key) {
            let d = try! JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: Any]
            images.append(Expected(key: key, mode: d["mode"] as! String, width: d["width"] as! Int, height: d["height"] as! Int,
                                   frames: d["frames"] as! Int, decodedSHA: d["decoded_sha256"] as! String,
                                   resized: d["resized"] as! [Int], cropSHA: d["crop_sha256"] as! String))
        }
        return (file, images)
    }()

    static func path(_ key: String) -> String { Fixtures.golden("images/" + key) }
    static func bytes(_ key: String) -> [UInt8] { Array(FileManager.default.contents(atPath: path(key))!) }
    static func sha(_ bytes: [UInt8]) -> String { bytes.withUnsafeBytes { SHA256.hex($0) } }

    // MARK: - Golden

    func testGoldenCoversEveryKind() throws {
        let file = Self.golden.file
        XCTAssertEqual(file.metadata["format"], "liteclip-golden-webp")
        XCTAssertEqual(file.metadata["version"], "1")
        let generator = try XCTUnwrap(file.metadata["generator"])
        print("golden WebP generator: \(generator)")
        XCTAssertTrue(generator.contains("\"libwebp\""), "the generator records Pillow's libwebp version")
        let images = Self.golden.images
        XCTAssertEqual(images.count, 8)
        XCTAssertEqual(Set(images.map(\.mode)), ["RGB", "RGBA"])
        // Every container kind, read from the files themselves.
        var kinds: [String: String] = [:]
        for e in images {
            let c = try Self.bytes(e.key).withUnsafeBytes { try WebPDecoder.readContainer($0, name: e.key) }
            XCTAssertEqual([c.width, c.height], [e.width, e.height], e.key)
            XCTAssertEqual(c.animated, e.frames > 1, e.key)
            if c.kind != "VP8X" { XCTAssertEqual(c.hasAlpha, e.mode == "RGBA", "\(e.key): the header's alpha bit gives PIL's mode") }
            kinds[e.key] = c.kind + " " + c.chunks.joined(separator: ",")
        }
        print(kinds.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: "\n"))
        XCTAssertEqual(kinds["webp_lossy_64x48.webp"], "VP8  VP8 ")
        XCTAssertEqual(kinds["webp_lossless_37x29.webp"], "VP8L VP8L")
        XCTAssertEqual(kinds["webp_lossless_rgba_40x32.webp"], "VP8L VP8L")
        XCTAssertEqual(kinds["webp_lossy_alpha_48x40.webp"], "VP8X VP8X,ALPH,VP8 ")
        XCTAssertEqual(kinds["webp_lossy_exif_40x30.webp"], "VP8X VP8X,VP8 ,EXIF")
        XCTAssertEqual(kinds["webp_anim_first_48x36.webp"], "VP8X VP8X,ANIM,ANMF,ANMF")
    }

    /// Debian's libwebp against the libwebp bundled with Pillow's wheel: both decode at libwebp's
    /// defaults (fancy upsampling, no dithering) through the same animation-decoder calls, and
    /// VP8 / VP8L decoding and the YUV -> RGB conversion are exact integer arithmetic, so the
    /// bytes must be identical (tolerance 0).
    func testDecodedRGBMatchesPILBitForBit() throws {
        var bad: [String] = []
        for e in Self.golden.images {
            let img = try ImageDecoder.decode(path: Self.path(e.key))
            let want = try XCTUnwrap(Self.golden.file.tensors.first { $0.name == e.key + "/rgb" }, e.key)
            XCTAssertEqual(want.dtype, .u8)
            XCTAssertEqual(want.shape, [e.height, e.width, 3])
            let expected = try want.load().array
            guard img.width == e.width, img.height == e.height, img.pixels.count == expected.count else {
                bad.append("\(e.key): got \(img.width)x\(img.height), PIL \(e.width)x\(e.height)")
                continue
            }
            var differing = 0, maxDiff = 0
            for (a, b) in zip(img.pixels, expected) where a != b {
                differing += 1
                maxDiff = max(maxDiff, abs(Int(a) - Int(b)))
            }
            print("decode \(e.key) (PIL mode \(e.mode)): \(differing) of \(expected.count) bytes differ, max abs diff \(maxDiff)")
            if differing > 0 { bad.append("\(e.key): \(differing) of \(expected.count) bytes differ, max abs diff \(maxDiff)") }
            XCTAssertEqual(Self.sha(img.pixels), e.decodedSHA, e.key)
        }
        XCTAssertTrue(bad.isEmpty, "decoded RGB differs from PIL's convert('RGB'):\n" + bad.joined(separator: "\n"))
    }

    /// Frame 1 of the animation covers only a 24 x 18 rectangle at (10, 8) of the 48 x 36 canvas;
    /// libwebp's canvas starts transparent black, and convert('RGB') drops the alpha.
    func testAnimationGivesItsFirstFrameOnABlackCanvas() throws {
        let img = try ImageDecoder.decode(path: Self.path("webp_anim_first_48x36.webp"))
        XCTAssertEqual([img.width, img.height], [48, 36])
        var outsideNonZero = 0, insideNonZero = 0
        for y in 0..<36 {
            for x in 0..<48 {
                let inside = (10..<34).contains(x) && (8..<26).contains(y)
                let v = (0..<3).map { Int(img.pixels[(y * 48 + x) * 3 + $0]) }.reduce(0, +)
                if inside { insideNonZero += v > 0 ? 1 : 0 } else { outsideNonZero += v > 0 ? 1 : 0 }
            }
        }
        XCTAssertEqual(outsideNonZero, 0, "the canvas outside frame 1 is (0, 0, 0)")
        XCTAssertGreaterThan(insideNonZero, 24 * 18 / 2)
    }

    func testDecodeFromBytesEqualsDecodeFromPath() throws {
        for e in Self.golden.images {
            XCTAssertEqual(try ImageDecoder.decode(bytes: Self.bytes(e.key), name: e.key), try ImageDecoder.decode(path: Self.path(e.key)), e.key)
        }
        let photo = try RGBImage(contentsOf: URL(fileURLWithPath: Self.path("webp_lossy_64x48.webp")))
        XCTAssertEqual(photo.width, 64)
    }

    /// libwebp reads only up to the RIFF end, so Pillow decodes a file with bytes appended.
    func testBytesAfterTheRIFFEndAreIgnored() throws {
        for key in ["webp_lossy_64x48.webp", "webp_lossless_rgba_40x32.webp", "webp_anim_first_48x36.webp"] {
            let data = Self.bytes(key)
            XCTAssertEqual(try ImageDecoder.decode(bytes: data + Array("trailing garbage".utf8), name: key),
                           try ImageDecoder.decode(bytes: data, name: key), key)
        }
    }

    /// Inside the RIFF, libwebp skips a well-formed unknown chunk after the image and refuses
    /// bytes that do not form a chunk (Pillow 13 does the same: same pixels / "could not create
    /// decoder object").
    func testChunksAfterTheImageInsideTheRIFF() throws {
        for key in ["webp_lossy_64x48.webp", "webp_lossless_37x29.webp", "webp_lossy_exif_40x30.webp", "webp_anim_first_48x36.webp"] {
            let data = Self.bytes(key)
            func appended(_ tail: [UInt8]) -> [UInt8] { Array("RIFF".utf8) + Self.le32(data.count - 8 + tail.count) + Array(data[8...]) + tail }
            XCTAssertEqual(try ImageDecoder.decode(bytes: appended(Array("ABCD".utf8) + Self.le32(2) + [1, 2]), name: key),
                           try ImageDecoder.decode(bytes: data, name: key), key)
            assertImageError(.corrupt, "junk-" + key) { try ImageDecoder.decode(bytes: appended([1, 2, 3]), name: "junk-" + key) }
            assertImageError(.corrupt, "long-" + key) {
                try ImageDecoder.decode(bytes: appended(Array("JUNK".utf8) + Self.le32(0xFFFF) + [1, 2]), name: "long-" + key)
            }
        }
    }

    /// Resize(224, bicubic) + CenterCrop(224) + normalise on the decoded images; the crop is
    /// compared with PIL's (`Image.resize` + crop, what torchvision does on a PIL image).
    func testDecodedImagesGoThroughResizeCropAndNormalize() throws {
        let pre = ImagePreprocessor(.seed)
        var bad: [String] = []
        for e in Self.golden.images {
            let img = try ImageDecoder.decode(path: Self.path(e.key))
            let s = pre.resizedSize(width: img.width, height: img.height)
            XCTAssertEqual([s.width, s.height], e.resized, e.key)
            let crop = pre.resizeAndCrop(img)
            XCTAssertEqual([crop.width, crop.height, crop.pixels.count], [224, 224, 224 * 224 * 3], e.key)
            if Self.sha(crop.pixels) != e.cropSHA { bad.append("\(e.key): crop SHA-256 differs from PIL's") }
            let pv = pre.pixelValues(img)
            XCTAssertEqual(pv.count, 3 * 224 * 224, e.key)
            XCTAssertTrue(pv.allSatisfy(\.isFinite), e.key)
        }
        XCTAssertTrue(bad.isEmpty, "resize + center crop differs from PIL:\n" + bad.joined(separator: "\n"))
    }

    // MARK: - Hostile files

    func assertImageError<T>(_ code: ImageError.Code?, _ name: String, file: StaticString = #filePath, line: UInt = #line,
                             _ body: () throws -> T) {
        do {
            _ = try body()
            XCTFail("\(name): expected an ImageError, but it decoded", file: file, line: line)
        } catch let e as ImageError {
            if let code { XCTAssertEqual(e.code, code, "\(name): \(e)", file: file, line: line) }
            XCTAssertEqual(e.file, name, "the error must name the file", file: file, line: line)
            XCTAssertTrue(e.description.hasPrefix(name + ": "), file: file, line: line)
        } catch {
            XCTFail("\(name): expected an ImageError, got \(error)", file: file, line: line)
        }
    }

    static func le32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

    /// A RIFF/WEBP file around the given chunks (each FourCC + payload, padded to even).
    static func riff(_ chunks: [(String, [UInt8])], riffSize: Int? = nil) -> [UInt8] {
        var body = Array("WEBP".utf8)
        for (type, payload) in chunks {
            body += Array(type.utf8) + le32(payload.count) + payload + (payload.count % 2 == 1 ? [0] : [])
        }
        return Array("RIFF".utf8) + le32(riffSize ?? body.count) + body
    }

    /// Every prefix: shorter than the RIFF header says, so `truncated` (or, under 12 bytes,
    /// not recognised as WebP at all).
    func testEveryPrefixFailsCleanly() {
        for key in ["webp_lossy_64x48.webp", "webp_lossless_37x29.webp", "webp_anim_first_48x36.webp"] {
            let data = Self.bytes(key)
            for n in 0..<data.count {
                let name = "\(key)[..<\(n)]"
                assertImageError(n >= 12 ? .truncated : .unsupportedFormat, name) {
                    try ImageDecoder.decode(bytes: Array(data.prefix(n)), name: name)
                }
            }
        }
    }

    func testBadRIFFSizesThrow() {
        let data = Self.bytes("webp_lossy_64x48.webp")
        func withRIFFSize(_ v: Int) -> [UInt8] { Array(data[0..<4]) + Self.le32(v) + Array(data[8...]) }
        assertImageError(.truncated, "riff-plus-2.webp") { try ImageDecoder.decode(bytes: withRIFFSize(data.count - 6), name: "riff-plus-2.webp") }
        assertImageError(.truncated, "riff-max.webp") { try ImageDecoder.decode(bytes: withRIFFSize(0xFFFF_FFFF), name: "riff-max.webp") }
        assertImageError(.corrupt, "riff-zero.webp") { try ImageDecoder.decode(bytes: withRIFFSize(0), name: "riff-zero.webp") }
        assertImageError(.corrupt, "riff-4.webp") { try ImageDecoder.decode(bytes: withRIFFSize(4), name: "riff-4.webp") }
        // The RIFF ends inside the image chunk: the chunk claims more than the RIFF holds.
        assertImageError(.corrupt, "riff-short.webp") { try ImageDecoder.decode(bytes: withRIFFSize(data.count - 108), name: "riff-short.webp") }
        // The RIFF ends inside a chunk header: VP8X (8 + 10) and VP8 (8 + 370) fit, EXIF's header does not.
        let exif = Self.bytes("webp_lossy_exif_40x30.webp")
        XCTAssertEqual(String(decoding: exif[408..<412], as: UTF8.self), "EXIF")
        let cutHeader = Array(exif[0..<4]) + Self.le32(404) + Array(exif[8...])
        assertImageError(.corrupt, "riff-chunk-header.webp") { try ImageDecoder.decode(bytes: cutHeader, name: "riff-chunk-header.webp") }
    }

    func testGarbageAfterWEBPThrows() {
        var rng = SplitMix(seed: 7)
        let random = (0..<600).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let garbage = Array("RIFF".utf8) + Self.le32(4 + random.count) + Array("WEBP".utf8) + random
        assertImageError(.corrupt, "garbage.webp") { try ImageDecoder.decode(bytes: garbage, name: "garbage.webp") }
        // Recognised chunks whose payloads are garbage (the headers checked here, the rest by libwebp).
        for type in ["VP8 ", "VP8L", "VP8X", "ALPH", "ANIM"] {
            let name = "garbage-\(type.trimmingCharacters(in: .whitespaces)).webp"
            assertImageError(nil, name) { try ImageDecoder.decode(bytes: Self.riff([(type, Array(random.prefix(200)))]), name: name) }
        }
        // A valid VP8 frame header over garbage partitions: libwebp's error comes back as a throw.
        let lossy = Self.bytes("webp_lossy_64x48.webp")
        var bad = lossy
        for i in 40..<lossy.count { bad[i] = random[i % random.count] }
        assertImageError(nil, "vp8-garbage.webp") { try ImageDecoder.decode(bytes: bad, name: "vp8-garbage.webp") }
    }

    func testZeroBytesThrow() {
        assertImageError(.unsupportedFormat, "empty.webp") { try ImageDecoder.decode(bytes: [], name: "empty.webp") }
        assertImageError(.unsupportedFormat, "zeros.webp") { try ImageDecoder.decode(bytes: [UInt8](repeating: 0, count: 64), name: "zeros.webp") }
        let header = Array("RIFF".utf8) + [0, 0, 0, 0] + Array("WEBP".utf8)
        assertImageError(.corrupt, "riff-zeros.webp") { try ImageDecoder.decode(bytes: header + [UInt8](repeating: 0, count: 64), name: "riff-zeros.webp") }
        assertImageError(.corrupt, "riff-only.webp") { try ImageDecoder.decode(bytes: Array("RIFF".utf8) + Self.le32(4) + Array("WEBP".utf8), name: "riff-only.webp") }
        for type in ["VP8 ", "VP8L", "VP8X"] {
            let name = "zero-\(type.trimmingCharacters(in: .whitespaces)).webp"
            assertImageError(.corrupt, name) { try ImageDecoder.decode(bytes: Self.riff([(type, [UInt8](repeating: 0, count: 30))]), name: name) }
        }
        assertImageError(.corrupt, "empty-chunk.webp") { try ImageDecoder.decode(bytes: Self.riff([("VP8 ", [])]), name: "empty-chunk.webp") }
    }

    /// Sizes from the headers are checked before libwebp allocates anything.
    func testZeroAndHugeDimensionsThrowBeforeAllocating() {
        // VP8X canvas: 24-bit width - 1 and height - 1.
        func vp8x(_ w: Int, _ h: Int, flags: UInt8 = 0) -> [UInt8] {
            let le24 = { (v: Int) in (0..<3).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
            return Self.riff([("VP8X", [flags, 0, 0, 0] + le24(w - 1) + le24(h - 1)), ("VP8L", [0x2F, 0, 0, 0, 0])])
        }
        for (w, h) in [(1 << 24, 1 << 24), (16_385, 1), (10_001, 10_000), (1, 20_000)] {
            let name = "canvas-\(w)x\(h).webp"
            assertImageError(.tooLarge, name) { try ImageDecoder.decode(bytes: vp8x(w, h, flags: 0x02), name: name) }
        }
        // VP8L: 14-bit width - 1 and height - 1; 16384 x 16384 is above the pixel limit.
        let vp8l = Self.riff([("VP8L", [0x2F] + Self.le32(0x3FFF | 0x3FFF << 14) + [0, 0, 0])])
        assertImageError(.tooLarge, "vp8l-16384.webp") { try ImageDecoder.decode(bytes: vp8l, name: "vp8l-16384.webp") }
        // VP8: a zero width in the frame header of the golden lossy file.
        var lossy = Self.bytes("webp_lossy_64x48.webp")
        lossy[26] = 0; lossy[27] = 0
        assertImageError(.corrupt, "vp8-width0.webp") { try ImageDecoder.decode(bytes: lossy, name: "vp8-width0.webp") }
        // A VP8 frame header that claims 16383 x 16383 over 64 x 48 data: refused by the pixel limit.
        lossy[26] = 0xFF; lossy[27] = 0x3F; lossy[28] = 0xFF; lossy[29] = 0x3F
        assertImageError(.tooLarge, "vp8-16383.webp") { try ImageDecoder.decode(bytes: lossy, name: "vp8-16383.webp") }
        // Within the limits but larger than the data: libwebp refuses it.
        lossy[26] = 0x00; lossy[27] = 0x04; lossy[28] = 0x00; lossy[29] = 0x03
        assertImageError(nil, "vp8-1024x768.webp") { try ImageDecoder.decode(bytes: lossy, name: "vp8-1024x768.webp") }
    }

    /// The image chunk cut short with the sizes fixed up, and an animation frame moved off the
    /// canvas: these pass the RIFF walk and are refused by libwebp.
    func testLibWebPRefusalsComeBackAsThrows() {
        let lossy = Self.bytes("webp_lossy_64x48.webp")
        for cut in [100, 300, 500] {
            var d = Array(lossy.prefix(cut))
            d.replaceSubrange(4..<8, with: Self.le32(cut - 8))
            d.replaceSubrange(16..<20, with: Self.le32(cut - 20))
            let name = "vp8-cut-\(cut).webp"
            assertImageError(nil, name) { try ImageDecoder.decode(bytes: d, name: name) }
        }
        var anim = Self.bytes("webp_anim_first_48x36.webp")
        // First ANMF chunk: VP8X (12 + 18) + ANIM (8 + 6) = 44; its payload starts at 52 with the x offset / 2.
        XCTAssertEqual(String(decoding: anim[44..<48], as: UTF8.self), "ANMF")
        anim[52] = 40                                             // x = 80: outside the 48-wide canvas
        assertImageError(.corrupt, "anmf-offcanvas.webp") { try ImageDecoder.decode(bytes: anim, name: "anmf-offcanvas.webp") }
    }

    /// Random byte changes after the RIFF header: each variant decodes or throws, never crashes.
    func testRandomCorruptionNeverCrashes() {
        var rng = SplitMix(seed: 11)
        var threw = 0, decoded = 0
        for key in ["webp_lossy_64x48.webp", "webp_lossless_37x29.webp", "webp_lossy_alpha_48x40.webp", "webp_anim_first_48x36.webp"] {
            let data = Self.bytes(key)
            for i in 0..<150 {
                var d = data
                for _ in 0..<(1 + Int(rng.next() % 4)) {
                    let p = 12 + Int(rng.next() % UInt64(d.count - 12))
                    d[p] = UInt8(truncatingIfNeeded: rng.next())
                }
                let name = "\(key)#\(i)"
                do {
                    let img = try ImageDecoder.decode(bytes: d, name: name)
                    XCTAssertEqual(img.pixels.count, img.width * img.height * 3)
                    decoded += 1
                } catch let e as ImageError {
                    XCTAssertEqual(e.file, name)
                    threw += 1
                } catch {
                    XCTFail("\(name): \(error)")
                }
            }
        }
        print("corrupted WebP variants: \(decoded) decoded, \(threw) threw")
        XCTAssertGreaterThan(threw, 0)
    }
}
