import XCTest
@testable import TensorIO
import TestSupport

final class SHA256Tests: XCTestCase {
    private func digest(_ s: String) -> String { SHA256.hexDigest(of: Array(s.utf8)) }

    // FIPS 180-4 / NIST CSRC example vectors.

    func testEmpty() {
        XCTAssertEqual(digest(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }

    func testABC() {
        XCTAssertEqual(digest("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    func test448Bits() {
        XCTAssertEqual(digest("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
                       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    func test896Bits() {
        XCTAssertEqual(digest("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),
                       "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1")
    }

    func testOneMillionA() {
        let a = [UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)
        XCTAssertEqual(SHA256.hexDigest(of: a), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
        // The same, fed one byte at a time through `update`.
        var h = SHA256()
        a.withUnsafeBytes { p in
            for i in 0..<p.count { h.update(UnsafeRawBufferPointer(rebasing: p[i..<(i + 1)])) }
        }
        XCTAssertEqual(SHA256.hexString(h.finalize()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    /// Lengths around the padding boundaries (55/56 bytes: length fits / does not fit in the
    /// last block), checked against Python's hashlib.
    func testPaddingBoundaries() {
        let expected: [Int: String] = [
            55: "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318",
            56: "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a",
            63: "7d3e74a05d7db15bce4ad9ec0658ea98e3f06eeecf16b4c6fff2da457ddc2f34",
            64: "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb",
            65: "635361c48bb9eab14198e76ea8ab7f1a41685d6ad62aa9146d301d4f17eb0ae0",
            119: "31eba51c313a5c08226adf18d4a359cfdfd8d2e816b13f4af952f7ea6584dcfb",
            120: "2f3d335432c70b580af0e8e1b3674a7c020d683aa5f73aaaedfdc55af904c21c",
            128: "6836cf13bac400e9105071cd6af47084dfacad4e5e302c94bfed24e013afb73e",
        ]
        for (n, hex) in expected {
            XCTAssertEqual(digest(String(repeating: "a", count: n)), hex, "\(n) x 'a'")
        }
    }

    private static let pattern: [UInt8] = (0..<10_007).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
    private static let patternDigest = "a9183d620a0eed0f01e505e2632d536cf1759163c6938203abc38afe286c37a2"

    func testIncrementalOddSizesEqualOneShot() {
        let data = SHA256Tests.pattern
        XCTAssertEqual(SHA256.hexDigest(of: data), SHA256Tests.patternDigest)
        for chunks in [[1], [3], [7, 64], [63], [64], [65], [127, 1, 129], [1000], [4096, 5], [0, 13, 0, 250]] {
            var h = SHA256()
            var at = 0
            var k = 0
            data.withUnsafeBytes { p in
                while at < p.count {
                    let n = min(chunks[k % chunks.count], p.count - at)
                    h.update(UnsafeRawBufferPointer(rebasing: p[at..<(at + n)]))
                    at += n
                    k += 1
                }
            }
            XCTAssertEqual(SHA256.hexString(h.finalize()), SHA256Tests.patternDigest, "chunks \(chunks)")
        }
    }

    /// Every split point of every message up to 200 bytes gives the one-shot digest.
    func testEverySplitPoint() {
        let data = Array(SHA256Tests.pattern.prefix(200))
        for n in 0...data.count {
            let msg = Array(data.prefix(n))
            let one = SHA256.hexDigest(of: msg)
            for cut in stride(from: 0, through: n, by: n > 80 ? 7 : 1) {
                var h = SHA256()
                h.update(Array(msg[..<cut]))
                h.update(Array(msg[cut...]))
                XCTAssertEqual(SHA256.hexString(h.finalize()), one, "length \(n), cut at \(cut)")
            }
        }
    }

    func testFinalizeResets() {
        var h = SHA256()
        h.update(Array("garbage".utf8))
        _ = h.finalize()
        h.update(Array("abc".utf8))
        XCTAssertEqual(h.finalize().count, 32)
        h.update(Array("abc".utf8))
        XCTAssertEqual(SHA256.hexString(h.finalize()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    /// A copy hashes on independently (the EVP context is copied before it is shared).
    func testCopiesAreIndependent() {
        var a = SHA256()
        a.update(Array("ab".utf8))
        var b = a
        a.update(Array("c".utf8))
        b.update(Array("d".utf8))
        XCTAssertEqual(SHA256.hexString(a.finalize()), digest("abc"))
        XCTAssertEqual(SHA256.hexString(b.finalize()), digest("abd"))
    }

    /// Unaligned input (the compressor loads words from arbitrary addresses).
    func testUnalignedInput() {
        let data = SHA256Tests.pattern
        data.withUnsafeBytes { p in
            for offset in 1...3 {
                let slice = UnsafeRawBufferPointer(rebasing: p[offset..<(offset + 5000)])
                XCTAssertEqual(SHA256.hex(slice), SHA256.hexDigest(of: Array(data[offset..<(offset + 5000)])))
            }
        }
    }
}
