import XCTest
@testable import TensorIO
import TestSupport

/// Every tensor of every golden file, read through our readers, equals what PyTorch wrote
/// (SHA-256 of the contiguous little-endian bytes, and values for the small cases).
final class GoldenReaderTests: XCTestCase {
    static let files = ["liteclip2.pt", "liteclip2_legacy.pt", "liteclip2_f16.pt", "liteclip2_bf16_ddp_cuda.pt",
                        "liteclip2_lightning.ckpt", "liteclip2.safetensors",
                        "cases/dtypes.pt", "cases/dtypes_legacy.pt", "cases/views.pt", "cases/views_legacy.pt",
                        "cases/protocol4.pt", "cases/buffer.pt", "cases/deflated.pt", "cases/bigendian.pt",
                        "cases/dtypes.safetensors"]

    func testManifestListsEveryFileWeTest() {
        for f in Self.files { XCTAssertNotNil(Fixtures.manifest[f], f) }
    }

    func testEveryTensorMatchesPyTorch() throws {
        for rel in Self.files {
            let c = try TensorFile.open(Fixtures.golden(rel))
            let entry = Fixtures.entry(rel)
            XCTAssertEqual(c.format.rawValue, entry["format"] as? String, rel)
            let want = Fixtures.tensors(rel)
            // The manifest lists the state dict (PyTorch's keys); a wrapped file also holds other
            // tensors (a Lightning checkpoint's optimizer state), listed after it by their paths.
            let weights = c.tensors.filter { $0.container == c.tensors[0].container }
            let have = Dictionary(uniqueKeysWithValues: weights.map { ($0.key, $0) })
            XCTAssertEqual(weights.count, want.count, "\(rel): tensor count")
            if c.format != .safetensors {   // safetensors orders by dtype then name; torch files keep state-dict order
                XCTAssertEqual(weights.map(\.key), want.map { $0["name"] as! String }, "\(rel): order")
            }
            var mismatches: [String] = []
            for w in want {
                let name = w["name"] as! String
                guard let t = have[name] else { mismatches.append("\(name): missing"); continue }
                if t.dtype.rawValue != w["dtype"] as! String || t.shape != w["shape"] as! [Int] {
                    mismatches.append("\(name): \(t.dtype) \(t.shape) vs \(w["dtype"]!) \(w["shape"]!)")
                    continue
                }
                let bytes = try t.load()
                XCTAssertEqual(bytes.count, t.byteCount, "\(rel) \(name)")
                let sha = bytes.sha256()
                if sha != w["sha256"] as! String { mismatches.append("\(name): sha256 \(sha) vs \(w["sha256"]!)") }
                if let values = w["values"] as? [Any] {
                    let got = Self.values(bytes, t.dtype)
                    let exp = values.map { v -> String in
                        if let s = v as? String { return s }
                        if let n = v as? NSNumber { return t.dtype.isFloatingPoint ? Self.text(n.doubleValue, integral: false) : String(n.int64Value) }
                        return "?"
                    }
                    if got != exp { mismatches.append("\(name): values \(got) vs \(exp)") }
                }
            }
            XCTAssertTrue(mismatches.isEmpty, "\(rel):\n" + mismatches.joined(separator: "\n"))
        }
    }

    func testZeroCopyForStoredContiguousTensors() throws {
        let c = try TensorFile.open(Fixtures.golden("liteclip2.pt"))
        for t in c.tensors where t.elementCount > 0 { XCTAssertTrue(try t.load().isView, t.name) }
        let d = try TensorFile.open(Fixtures.golden("cases/deflated.pt"))
        for t in d.tensors where t.elementCount > 0 { XCTAssertFalse(try t.load().isView, t.name) }
    }

    func testWrappersAndLocationsAreReported() throws {
        let l = try TensorFile.open(Fixtures.golden("liteclip2_lightning.ckpt"))
        // Every tensor at any depth, by its full path: the weights and the optimizer's moments.
        XCTAssertEqual(l.wrapper, "tensors in 'state_dict' (260), 'optimizer_states.0.state.0' (3)")
        XCTAssertEqual(l.tensors[0].name, "state_dict.model.logit_scale")
        XCTAssertEqual(l.tensors[0].container, ["state_dict"])
        XCTAssertEqual(l.tensors[0].key, "model.logit_scale")
        XCTAssertEqual(l.tensors.filter { $0.container.first == "optimizer_states" }.map(\.name).sorted(),
                       ["optimizer_states.0.state.0.exp_avg", "optimizer_states.0.state.0.exp_avg_sq", "optimizer_states.0.state.0.step"].sorted())
        XCTAssertEqual(l.entries.first { $0.key == "state_dict" }?.tensors, 260)
        XCTAssertEqual(l.entries.first { $0.key == "optimizer_states" }?.tensors, 3)
        XCTAssertEqual(try TensorFile.open(Fixtures.golden("liteclip2_legacy.pt")).wrapper, nil)
        let cuda = try TensorFile.open(Fixtures.golden("liteclip2_bf16_ddp_cuda.pt"))
        XCTAssertEqual(cuda.metadata["storage_locations"], "cuda:1")
        XCTAssertEqual(try TensorFile.open(Fixtures.golden("cases/bigendian.pt")).metadata["byteorder"], "big")
        XCTAssertEqual(try TensorFile.open(Fixtures.golden("cases/buffer.pt")).metadata["archive_folder"], "archive")
    }

    func testRefusals() {
        assertReadError(.torchScript) { try TensorFile.open(Fixtures.golden("cases/torchscript.pt")) }
        assertReadError(.wholeModule) { try TensorFile.open(Fixtures.golden("cases/whole_module.pt")) }
    }

    func testTruncatedGoldenFilesNeverCrash() throws {
        for rel in ["cases/views.pt", "cases/views_legacy.pt", "cases/deflated.pt", "cases/dtypes.safetensors"] {
            let full = Array(try Data(contentsOf: URL(fileURLWithPath: Fixtures.golden(rel))))
            for cut in stride(from: 0, to: full.count, by: 7) {
                assertAnyReadError("\(rel) cut at \(cut)") {
                    let c = try TensorFile.read(source(Array(full[0..<cut]), rel))
                    for t in c.tensors { _ = try t.load() }
                }
            }
        }
    }

    // MARK: - Value formatting shared with the manifest

    static func text(_ d: Double, integral: Bool) -> String {
        if d.isNaN { return "nan" }
        if d.isInfinite { return d < 0 ? "-inf" : "inf" }
        return String(d)
    }

    static func values(_ b: TensorBytes, _ dtype: DType) -> [String] {
        let n = b.count / dtype.size
        return b.withBytes { p in (0..<n).map { i -> String in
            switch dtype {
            case .f32: return text(Double(Float(bitPattern: p.le32(i * 4))), integral: false)
            case .f64: return text(Double(bitPattern: p.le64(i * 8)), integral: false)
            case .f16: return text(Double(DTypeConversion.f16ToF32(p.le16(i * 2))), integral: false)
            case .bf16: return text(Double(DTypeConversion.bf16ToF32(p.le16(i * 2))), integral: false)
            case .i64: return String(Int64(bitPattern: p.le64(i * 8)))
            case .i32: return String(Int32(bitPattern: p.le32(i * 4)))
            case .i16: return String(Int16(bitPattern: p.le16(i * 2)))
            case .i8: return String(Int8(bitPattern: p[i]))
            case .u8, .bool: return String(p[i])
            }
        } }
    }
}
