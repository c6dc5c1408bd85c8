import Foundation
import XCTest
@testable import LiteCLIP
import TensorIO
import TestSupport

/// The image pipeline against PIL + torchvision (golden/generate_images.py writes
/// golden/images/expected.safetensors): decoded RGB, resized + cropped bytes and the normalised
/// tensor, for synthetic JPEGs/PNGs of every mode and for the seed's example photos; and
/// hostile files, which must throw an `ImageError` naming the file, never crash.
final class ImagePipelineTests: XCTestCase {
    struct Expected {
        let key: String
        let mode: String
        let width: Int
        let height: Int
        let decodedSHA: String
        let resized: [Int]
        let cropSHA: String
        let pixelValuesSHA: String
    }

    static let golden: (file: Checkpoint, images: [Expected]) = {
        let path = Fixtures.golden("images/expected.safetensors")
        let file = try! SafetensorsReader.read(ByteSource(mapping: path))
        var images: [Expected] = []
        for (key, json) in file.metadata.sorted(by: { $0.key < $1.key }) where !["format", "version", "generator"].contains(key) {
            let d = try! JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: Any]
            images.append(Expected(key: key, mode: d["mode"] as! String, width: d["width"] as! Int, height: d["height"] as! Int,
                                   decodedSHA: d["decoded_sha256"] as! String, resized: d["resized"] as! [Int],
                                   cropSHA: d["crop_sha256"] as! String, pixelValuesSHA: d["pixel_values_sha256"] as! String))
        }
        return (file, images)
    }()

    static func tensor(_ name: String) -> Checkpoint.Tensor? { golden.file.tensors.first { $0.name == name } }

    static func path(_ key: String) -> String {
        key.hasPrefix("examples/") ? Fixtures.seed + "/" + key : Fixtures.golden("images/" + key)
    }

    let pre = ImagePreprocessor(.seed)

    static func sha(_ bytes: [UInt8]) -> String { bytes.withUnsafeBytes { SHA256.hex($0) } }
    static func sha(_ floats: [Float]) -> String { floats.withUnsafeBytes { SHA256.hex($0) } }

    // MARK: - Golden

    func testGoldenCoversEveryMode() {
        let images = Self.golden.images
        XCTAssertEqual(Self.golden.file.metadata["version"], "1")
        XCTAssertGreaterThanOrEqual(images.count, 24)
        XCTAssertEqual(Set(images.map(\.mode)), ["RGB", "L", "CMYK", "I;16", "1", "LA", "P", "RGBA"])
        XCTAssertEqual(images.filter { $0.key.hasPrefix("examples/") }.count, 4)
    }

    func testDecodedRGBMatchesPIL() throws {
        var bad: [String] = []
        for e in Self.golden.images {
            do {
                let img = try ImageDecoder.decode(path: Self.path(e.key))
                let sha = Self.sha(img.pixels)
                if img.width != e.width || img.height != e.height || sha != e.decodedSHA {
                    bad.append("\(e.key) (PIL mode \(e.mode)): got \(img.width)x\(img.height) \(sha), PIL \(e.width)x\(e.height) \(e.decodedSHA)")
                }
            } catch {
                bad.append("\(e.key) (PIL mode \(e.mode)): \(error)")
            }
        }
        XCTAssertTrue(bad.isEmpty, "decoded RGB differs from PIL's convert('RGB'):\n" + bad.joined(separator: "\n"))
    }

    func testDecodeFromBytesEqualsDecodeFromPath() throws {
        for key in ["png_interlaced_131x97.png", "jpeg_progressive_333x250.jpg"] {
            let path = Self.path(key)
            let bytes = Array(FileManager.default.contents(atPath: path)!)
            XCTAssertEqual(try ImageDecoder.decode(bytes: bytes, name: key), try ImageDecoder.decode(path: path), key)
        }
    }

    func testResizedSizeMatchesTorchvision() {
        for e in Self.golden.images {
            let s = pre.resizedSize(width: e.width, height: e.height)
            XCTAssertEqual([s.width, s.height], e.resized, e.key)
        }
    }

    func testResizeAndCropMatchPILPixelForPixel() throws {
        var bad: [String] = []
        var compared = 0
        for e in Self.golden.images {
            let crop = pre.resizeAndCrop(try ImageDecoder.decode(path: Self.path(e.key)))
            XCTAssertEqual(crop.width, 224)
            XCTAssertEqual(crop.height, 224)
            if let t = Self.tensor(e.key + "/crop") {
                XCTAssertEqual(t.dtype, .u8)
                XCTAssertEqual(t.shape, [224, 224, 3])
                let want = try t.load().array
                var differing = 0, maxDiff = 0
                for p in 0..<(224 * 224) {
                    var d = 0
                    for c in 0..<3 { d = max(d, abs(Int(crop.pixels[3 * p + c]) - Int(want[3 * p + c]))) }
                    if d > 0 { differing += 1 }
                    maxDiff = max(maxDiff, d)
                }
                compared += 1
                print("crop \(e.key): \(differing) differing pixels, max abs diff \(maxDiff)")
                if differing > 0 { bad.append("\(e.key): \(differing) of 50176 pixels differ, max abs diff \(maxDiff)") }
            }
            let sha = Self.sha(crop.pixels)
            if sha != e.cropSHA { bad.append("\(e.key): crop SHA-256 \(sha) != PIL's \(e.cropSHA)") }
        }
        XCTAssertEqual(compared, 10, "full crops stored for 6 synthetic images and 4 photos")
        XCTAssertTrue(bad.isEmpty, "resize + center crop differs from torchvision/PIL:\n" + bad.joined(separator: "\n"))
    }

    func testNormalizeTableMatchesTorch() throws {
        let t = try XCTUnwrap(Self.tensor("normalize/table"))
        XCTAssertEqual(t.shape, [3, 256])
        let want = try t.load().withBytes { Array($0.bindMemory(to: Float.self)) }
        // A 256 x 1 ramp image through normalize gives every (channel, value) once.
        let ramp = try RGBImage(width: 256, height: 1, pixels: (0..<256).flatMap { [UInt8($0), UInt8($0), UInt8($0)] })
        var got = [Float](repeating: 0, count: 3 * 256)
        got.withUnsafeMutableBufferPointer { pre.normalize(ramp, into: $0.baseAddress!) }
        let maxDiff = zip(got, want).map { abs($0 - $1) }.max() ?? .infinity
        print("normalize table: max abs diff \(maxDiff)")
        XCTAssertEqual(got, want, "ToTensor + Normalize differs from torch (max abs diff \(maxDiff))")
    }

    func testPixelValuesMatchTorchvision() throws {
        var withTensor = 0
        for e in Self.golden.images {
            let pv = pre.pixelValues(try ImageDecoder.decode(path: Self.path(e.key)))
            XCTAssertEqual(pv.count, 3 * 224 * 224)
            if let t = Self.tensor(e.key + "/pixel_values") {
                XCTAssertEqual(t.shape, [3, 224, 224])
                let want = try t.load().withBytes { Array($0.bindMemory(to: Float.self)) }
                let maxDiff = zip(pv, want).map { abs($0 - $1) }.max() ?? .infinity
                print("pixel_values \(e.key): max abs diff \(maxDiff)")
                XCTAssertLessThanOrEqual(maxDiff, 1e-6, e.key)
                withTensor += 1
            }
            // Same float32 operations as torch, so bit-identical for every image.
            XCTAssertEqual(Self.sha(pv), e.pixelValuesSHA, "\(e.key): pixel_values are not bit-identical to torchvision's")
        }
        XCTAssertEqual(withTensor, 1)
    }

    // MARK: - Resize details

    func testCenterCropOffsetRoundsHalfToEven() {
        XCTAssertEqual(ImagePreprocessor.cropOffset(length: 229, crop: 224), 2)    // round(2.5) = 2
        XCTAssertEqual(ImagePreprocessor.cropOffset(length: 231, crop: 224), 4)    // round(3.5) = 4
        XCTAssertEqual(ImagePreprocessor.cropOffset(length: 224, crop: 224), 0)
        XCTAssertEqual(ImagePreprocessor.cropOffset(length: 221, crop: 224), -1)   // pad 3: 1 before, 2 after
    }

    func testCropLargerThanResizePadsWithZeros() throws {
        var c = PreprocessConfig()
        c.resize = 8
        c.centerCrop = 12
        let p = ImagePreprocessor(c)
        let img = try RGBImage(width: 16, height: 8, pixels: [UInt8](repeating: 200, count: 16 * 8 * 3))
        let out = p.resizeAndCrop(img)               // resized 16x8, padded to 16x12, cropped 12x12
        XCTAssertEqual(out.width, 12)
        for y in 0..<12 {
            let v = out.pixels[(y * 12 + 5) * 3]
            XCTAssertEqual(v, (2..<10).contains(y) ? 200 : 0, "row \(y)")
        }
    }

    func testResampleTableSumsToOne() {
        for (i, o) in [(640, 298), (50, 373), (1000, 933), (224, 224), (16384, 224)] {
            let t = ResampleTable(inSize: i, outSize: o, outputs: 0..<o, filter: .bicubic)
            for j in 0..<o {
                let taps = Int(t.bounds[2 * j + 1])
                let sum = (0..<taps).reduce(0) { $0 + Int(t.weights[j * t.ksize + $1]) }
                XCTAssertLessThanOrEqual(abs(sum - (1 << 22)), taps, "\(i)->\(o) output \(j)")
            }
        }
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

    func bytes(_ key: String) -> [UInt8] { Array(FileManager.default.contents(atPath: Self.path(key))!) }

    func testTruncatedFilesThrow() {
        let jpeg = bytes("jpeg_baseline_240x320.jpg")
        assertImageError(.truncated, "half.jpg") { try ImageDecoder.decode(bytes: Array(jpeg.prefix(jpeg.count / 2)), name: "half.jpg") }
        assertImageError(.truncated, "noeoi.jpg") { try ImageDecoder.decode(bytes: Array(jpeg.dropLast(2)), name: "noeoi.jpg") }
        assertImageError(.truncated, "header.jpg") { try ImageDecoder.decode(bytes: Array(jpeg.prefix(300)), name: "header.jpg") }
        let photo = bytes("examples/cat.jpg")
        assertImageError(.truncated, "cat-cut.jpg") { try ImageDecoder.decode(bytes: Array(photo.prefix(photo.count - 1000)), name: "cat-cut.jpg") }

        let png = bytes("png_interlaced_131x97.png")
        assertImageError(.truncated, "half.png") { try ImageDecoder.decode(bytes: Array(png.prefix(png.count / 2)), name: "half.png") }
        assertImageError(.truncated, "sig.png") { try ImageDecoder.decode(bytes: Array(png.prefix(8)), name: "sig.png") }
        // Without IEND (the image data complete) PIL decodes it, and so do we.
        XCTAssertNoThrow(try ImageDecoder.decode(bytes: Array(png.dropLast(12)), name: "noiend.png"))
    }

    func testEveryPrefixOfSmallFilesFailsCleanly() {
        for key in ["png_grey1_trns_40x40.png", "png_palette4_oob_37x29.png", "jpeg_gray_97x61.jpg"] {
            let data = bytes(key)
            let full = try? ImageDecoder.decode(bytes: data, name: key)
            XCTAssertNotNil(full, key)
            for n in 0..<data.count {
                let name = "\(key)[..<\(n)]"
                do {
                    let img = try ImageDecoder.decode(bytes: Array(data.prefix(n)), name: name)
                    // Only a PNG that lost nothing but (part of) its IEND chunk may still decode.
                    XCTAssertTrue(key.hasSuffix(".png") && n >= data.count - 12, "\(name) decoded")
                    XCTAssertEqual(img, full, name)
                } catch let e as ImageError {
                    XCTAssertEqual(e.file, name)
                } catch {
                    XCTFail("\(name): \(error)")
                }
            }
        }
    }

    func testUnsupportedFormatsThrow() {
        var rng = SplitMix(seed: 1)
        let random = (0..<4096).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        assertImageError(.unsupportedFormat, "random.bin") { try ImageDecoder.decode(bytes: random, name: "random.bin") }
        assertImageError(.unsupportedFormat, "anim.gif") {
            try ImageDecoder.decode(bytes: Array("GIF89a".utf8) + [0x10, 0, 0x10, 0, 0, 0, 0] + random.prefix(100), name: "anim.gif")
        }
        assertImageError(.unsupportedFormat, "x.tif") { try ImageDecoder.decode(bytes: [0x49, 0x49, 0x2A, 0x00] + random.prefix(60), name: "x.tif") }
        assertImageError(.unsupportedFormat, "x.bmp") { try ImageDecoder.decode(bytes: Array("BM".utf8) + random.prefix(60), name: "x.bmp") }
        assertImageError(.unsupportedFormat, "empty.png") { try ImageDecoder.decode(bytes: [], name: "empty.png") }
        assertImageError(nil, "soi-garbage.jpg") { try ImageDecoder.decode(bytes: [0xFF, 0xD8, 0xFF] + random.prefix(500), name: "soi-garbage.jpg") }
        assertImageError(.corrupt, "soi-eoi.jpg") { try ImageDecoder.decode(bytes: [0xFF, 0xD8, 0xFF, 0xD9], name: "soi-eoi.jpg") }
        let missing = Fixtures.tempDir() + "/missing.png"
        assertImageError(.ioError, missing) { try ImageDecoder.decode(path: missing) }
        let dir = Fixtures.tempDir()
        assertImageError(.ioError, dir) { try ImageDecoder.decode(path: dir) }
    }

    func testAbsurdDimensionsThrowBeforeAllocating() {
        for (w, h) in [(100_000, 100_000), (20_000, 10), (10, 16_385), (16_384, 16_384), (0, 10), (0x7FFF_FFFF, 1)] {
            let name = "ihdr-\(w)x\(h).png"
            let code: ImageError.Code = w == 0 ? .corrupt : .tooLarge
            assertImageError(code, name) { try ImageDecoder.decode(bytes: PNGBuilder.png(width: w, height: h, rows: []), name: name) }
        }
        // A JPEG whose SOF0 claims 60000 x 60000.
        var jpeg = bytes("jpeg_gray_97x61.jpg")
        if let sof = (0..<(jpeg.count - 9)).first(where: { jpeg[$0] == 0xFF && jpeg[$0 + 1] == 0xC0 }) {
            jpeg[sof + 5] = 0xEA; jpeg[sof + 6] = 0x60; jpeg[sof + 7] = 0xEA; jpeg[sof + 8] = 0x60
            assertImageError(.tooLarge, "sof-60000.jpg") { try ImageDecoder.decode(bytes: jpeg, name: "sof-60000.jpg") }
        } else {
            XCTFail("no SOF0 marker in the golden grayscale JPEG")
        }
    }

    func testCraftedPNGsWithBadDataThrow() {
        let row: [UInt8] = [0, 10, 20, 30, 40, 50, 60]             // filter 0, 2 RGB pixels
        // Sanity: the builder's PNG decodes.
        XCTAssertEqual(try ImageDecoder.decode(bytes: PNGBuilder.png(width: 2, height: 2, rows: row + row), name: "ok.png").pixels,
                       [10, 20, 30, 40, 50, 60, 10, 20, 30, 40, 50, 60])
        // Valid CRCs, bad contents: these reach libpng, whose errors must come back as throws.
        var badFilter = row
        badFilter[0] = 9
        assertImageError(.corrupt, "filter9.png") { try ImageDecoder.decode(bytes: PNGBuilder.png(width: 2, height: 2, rows: row + badFilter), name: "filter9.png") }
        assertImageError(nil, "short.png") { try ImageDecoder.decode(bytes: PNGBuilder.png(width: 2, height: 3, rows: row + row), name: "short.png") }
        let badZlib: [UInt8] = [0x78, 0x01, 0x07, 0xFF, 0xFF, 0xFF, 0xFF]   // reserved block type
        assertImageError(.corrupt, "zlib.png") { try ImageDecoder.decode(bytes: PNGBuilder.png(width: 2, height: 2, idat: badZlib), name: "zlib.png") }
        assertImageError(.corrupt, "noplte.png") {
            try ImageDecoder.decode(bytes: PNGBuilder.png(width: 2, height: 1, colorType: 3, rows: [0, 0, 1]), name: "noplte.png")
        }
        assertImageError(.corrupt, "depth.png") {
            try ImageDecoder.decode(bytes: PNGBuilder.png(width: 2, height: 1, bitDepth: 4, colorType: 2, rows: [0, 0, 1]), name: "depth.png")
        }
        assertImageError(.corrupt, "critical.png") {
            try ImageDecoder.decode(bytes: PNGBuilder.png(width: 2, height: 1, rows: row, extra: PNGBuilder.chunk("ZZZZ", [1])), name: "critical.png")
        }
        var badCRC = PNGBuilder.png(width: 2, height: 1, rows: row)
        badCRC[30] ^= 1                                               // inside the IHDR CRC
        assertImageError(.corrupt, "crc.png") { try ImageDecoder.decode(bytes: badCRC, name: "crc.png") }
    }

    /// Byte flips in small PNGs, with the CRCs recomputed so the damage reaches libpng, and in
    /// JPEGs: each variant must decode or throw, never crash.
    func testRandomCorruptionNeverCrashes() {
        var rng = SplitMix(seed: 42)
        var threw = 0, decoded = 0
        for key in ["png_grey1_trns_40x40.png", "png_palette4_oob_37x29.png", "png_grey2_53x41.png", "jpeg_gray_97x61.jpg"] {
            let data = bytes(key)
            for i in 0..<150 {
                var d = data
                for _ in 0..<(1 + Int(rng.next() % 4)) {
                    let p = 8 + Int(rng.next() % UInt64(d.count - 8))
                    d[p] = UInt8(truncatingIfNeeded: rng.next())
                }
                if key.hasSuffix(".png") { PNGBuilder.fixCRCs(&d) }
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
        print("corrupted variants: \(decoded) decoded, \(threw) threw")
        XCTAssertGreaterThan(threw, 0)
    }
}

/// Builds PNGs with stored (uncompressed) deflate blocks, for crafting hostile files.
enum PNGBuilder {
    static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let body = Array(type.utf8) + data
        return be32(UInt32(data.count)) + body + be32(crc32(body))
    }

    static func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }

    /// zlib stream of stored blocks.
    static func zlibStored(_ data: [UInt8]) -> [UInt8] {
        var out: [UInt8] = [0x78, 0x01]
        var p = 0
        repeat {
            let n = min(65535, data.count - p)
            let last: UInt8 = p + n == data.count ? 1 : 0
            out += [last, UInt8(n & 0xFF), UInt8(n >> 8), UInt8(~n & 0xFF), UInt8((~n >> 8) & 0xFF)]
            out += data[p..<(p + n)]
            p += n
        } while p < data.count
        var a: UInt32 = 1, b: UInt32 = 0
        for x in data { a = (a + UInt32(x)) % 65521; b = (b + a) % 65521 }
        return out + be32(b << 16 | a)
    }

    static func png(width: Int, height: Int, bitDepth: UInt8 = 8, colorType: UInt8 = 2, rows: [UInt8] = [],
                    idat: [UInt8]? = nil, extra: [UInt8] = []) -> [UInt8] {
        let ihdr = be32(UInt32(truncatingIfNeeded: width)) + be32(UInt32(truncatingIfNeeded: height)) + [bitDepth, colorType, 0, 0, 0]
        return [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + chunk("IHDR", ihdr) + extra
            + chunk("IDAT", idat ?? zlibStored(rows)) + chunk("IEND", [])
    }

    /// Recomputes every chunk's CRC (stops at the first chunk that does not fit).
    static func fixCRCs(_ d: inout [UInt8]) {
        var p = 8
        while p + 12 <= d.count {
            let n = Int(d[p]) << 24 | Int(d[p + 1]) << 16 | Int(d[p + 2]) << 8 | Int(d[p + 3])
            guard n <= d.count - p - 12 else { return }
            let c = be32(crc32(Array(d[(p + 4)..<(p + 8 + n)])))
            d.replaceSubrange((p + 8 + n)..<(p + 12 + n), with: c)
            p += 12 + n
        }
    }
}

/// A small deterministic generator (SplitMix64).
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
