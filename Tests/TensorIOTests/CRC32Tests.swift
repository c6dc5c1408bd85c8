import XCTest
@testable import TensorIO
import TestSupport

/// `CRC32` (zlib's) against the standard check value and the independent table-driven CRC in
/// TestSupport.
final class CRC32Tests: XCTestCase {
    func testCheckValue() {
        // The CRC-32/ISO-HDLC check value: CRC of the ASCII digits "123456789".
        Array("123456789".utf8).withUnsafeBytes { XCTAssertEqual(CRC32.checksum($0), 0xCBF4_3926) }
        XCTAssertEqual(CRC32().value, 0, "nothing fed")
    }

    func testSplitsEqualOneShotAndReference() {
        let data: [UInt8] = (0..<10_007).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        let want = crc32(data)
        data.withUnsafeBytes { XCTAssertEqual(CRC32.checksum($0), want) }
        for chunk in [1, 3, 7, 8, 9, 64, 1000, 4096] {
            var c = CRC32()
            var at = 0
            while at < data.count {
                let n = min(chunk, data.count - at)
                c.update(Array(data[at..<(at + n)]))
                at += n
            }
            XCTAssertEqual(c.value, want, "chunks of \(chunk)")
        }
    }
}
