import XCTest
@testable import TensorIO
import TestSupport

/// hostile-inputs.md items 4, 10-17 on crafted archives and legacy streams.
final class TorchContainerTests: XCTestCase {
    func read(_ bytes: [UInt8]) throws -> Checkpoint { try TensorFile.read(source(bytes, "crafted.pt")) }
    func loadAll(_ c: Checkpoint) throws { for t in c.tensors { _ = try t.load() } }

    func testCraftedZipReads() throws {
        let c = try read(torchZip().build())
        XCTAssertEqual(c.format, .torchZip)
        XCTAssertEqual(c.tensors.map(\.name), ["w"])
        XCTAssertEqual(try c.tensors[0].load().floats, [0.5, 1.5, 2.5, 3.5, 4.5, 5.5])
        XCTAssertTrue(try c.tensors[0].load().isView, "stored, contiguous tensors are views of the mapped file")
    }

    func testNotAZip() {
        assertReadError(.notACheckpoint, "PNG") { try read([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + [UInt8](repeating: 0, count: 64)) }
        assertReadError(.notACheckpoint, "JPEG") { try read([0xFF, 0xD8, 0xFF, 0xE0] + [UInt8](repeating: 0, count: 64)) }
        assertReadError(.notACheckpoint, "empty") { try read([]) }
        var tar = [UInt8](repeating: 0, count: 600)
        tar.replaceSubrange(257..<262, with: Array("ustar".utf8))
        assertReadError(.unsupportedFormat, "tar") { try read(tar) }
    }

    func testTorchScriptIsRefused() {
        let z = torchZip(extra: [("archive/code/__torch__.py", Array("def forward(self): pass".utf8)),
                                 ("archive/constants.pkl", [0x80, 0x02, 0x4E, 0x2E])])
        assertReadError(.torchScript) { try read(z.build()) }
    }

    func testEntryNames() {
        assertReadError(.unsafeEntryName, "outside the folder") { try read(torchZip(extra: [("other/x", [1])]).build()) }
        assertReadError(.unsafeEntryName, "dot-dot") { try read(torchZip(extra: [("archive/../x", [1])]).build()) }
        assertReadError(.unsafeEntryName, "absolute") { try read(torchZip(extra: [("/etc/passwd", [1])]).build()) }
        assertReadError(.unsafeEntryName, "NUL") { try read(torchZip(extra: [("archive/a\0b", [1])]).build()) }
        assertReadError(.duplicateName, "duplicate") { try read(torchZip(extra: [("archive/version", [1])]).build()) }
        assertReadError(.notACheckpoint, "no data.pkl") {
            var z = ZipBuilder(); z.add("archive/version", [1]); return try read(z.build())
        }
    }

    func testStorageRecords() {
        assertReadError(.missingRecord, "no data/0") { try read(torchZip(storages: ["1": [0, 0, 0, 0]]).build()) }
        assertReadError(.storageSizeMismatch, "short record") { try read(torchZip(storages: ["0": [UInt8](repeating: 0, count: 20)]).build()) }
        assertReadError(.storageSizeMismatch, "long record") { try read(torchZip(storages: ["0": [UInt8](repeating: 0, count: 28)]).build()) }
        assertReadError(.badHeader, "byteorder") { try read(torchZip(byteorder: "middle").build()) }
    }

    func testBigEndianCraftedZip() throws {
        let be = (0..<6).flatMap { i -> [UInt8] in Array(le32(Float(i).bitPattern).reversed()) }
        let c = try read(torchZip(storages: ["0": be], byteorder: "big").build())
        XCTAssertEqual(try c.tensors[0].load().floats, [0, 1, 2, 3, 4, 5])
    }

    func testCentralDirectoryTampering() {
        let z = torchZip()
        // Encrypted flag in the central directory only -> mismatch or encrypted, never a read.
        assertReadError(.encryptedEntry, "encrypted") { try read(z.build { i, r in if i == 0 { r[8] |= 1 } }) }
        // Method 12 (bzip2).
        assertReadError(.badZip, "method") { try read(z.build { i, r in if i == 0 { r[10] = 12 } }) }
        // Sizes past end of file.
        assertAnyReadError("size past EOF") { try read(z.build { i, r in if i == 2 { r.replaceSubrange(20..<28, with: le32(0x7FFF_0000) + le32(0x7FFF_0000)) } }) }
        // Local-header offset pointing at another entry: name mismatch.
        assertReadError(.headerMismatch, "offset to another entry") { try read(z.build { i, r in if i == 1 { r.replaceSubrange(42..<46, with: le32(0)) } }) }
        // A stored entry whose compressed size != size.
        assertReadError(.headerMismatch, "stored sizes differ") { try read(z.build { i, r in if i == 2 { r.replaceSubrange(20..<24, with: le32(4)) } }) }
    }

    func testOverlappingEntries() {
        // Entry 1 (byteorder) claims 100 bytes, so its payload runs over entry 2's local header:
        // the zip-bomb construction of overlapping entries.
        let z = torchZip()
        assertReadError(.overlappingEntries) {
            try read(z.build { i, r in if i == 1 { r.replaceSubrange(20..<28, with: le32(100) + le32(100)) } })
        }
    }

    func testTruncationAnywhereIsAnError() {
        let full = torchZip().build()
        for cut in stride(from: 0, to: full.count, by: 3) {
            assertAnyReadError("cut at \(cut)") { let c = try read(Array(full[0..<cut])); try loadAll(c) }
        }
    }

    func testLegacyHeaderChecks() throws {
        // Wrong magic.
        var p = PickleBuilder(); p.op(0x8A, 2, 1, 2); p.stop()
        assertReadError(.notACheckpoint, "magic") { try read(p.bytes) }   // a plain pickle, not torch.save's
        // Right magic, wrong protocol.
        var q = PickleBuilder(); q.op(0x8A, 10); q.bytes += TorchReader.legacyMagic; q.stop()
        var r = PickleBuilder(); r.int(1000); r.stop()
        assertReadError(.badLegacyHeader, "protocol") { try read(q.bytes + r.bytes) }
        // Magic then nothing.
        assertReadError(.truncated, "truncated") { try read(q.bytes) }
    }

    /// hostile-inputs.md 16: a DEFLATED entry is inflated with an output cap equal to its
    /// declared size; one that inflates to more (or less) is an error, not an overrun.
    func testDeflatedEntryThatLiesAboutItsSize() throws {
        let file = Array(try Data(contentsOf: URL(fileURLWithPath: Fixtures.golden("cases/deflated.pt"))))
        let name = Array("views/data.pkl".utf8)
        var central = -1
        for i in 0..<(file.count - 46 - name.count)
        where file[i..<(i + 4)].elementsEqual([0x50, 0x4B, 0x01, 0x02]) && file[(i + 46)..<(i + 46 + name.count)].elementsEqual(name) {
            central = i
        }
        XCTAssertGreaterThan(central, 0)
        let local = Int(file[(central + 42)..<(central + 46)].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
        let size = file[(central + 24)..<(central + 28)].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
        for delta in [-16, 16] {
            var b = file
            let lie = le32(UInt32(Int(size) + delta))
            b.replaceSubrange((central + 24)..<(central + 28), with: lie)   // central directory
            b.replaceSubrange((local + 22)..<(local + 26), with: lie)       // local header agrees
            assertAnyReadError("declared size off by \(delta)") { let c = try read(b); try loadAll(c) }
        }
    }
}
