import Foundation
import XCTest
@testable import LiteCLIP
@testable import TensorIO
import TestSupport

/// The training loop: exact resume, freezing, dropout, early stopping; and every layer's
/// backward against central finite differences of its own forward.
final class TrainerTests: XCTestCase {
    /// A captions set over the seed's photos, and the small golden model converted.
    static func setUp() throws -> (dir: String, model: String) {
        let dir = Fixtures.tempDir()
        let rows = [("cat.jpg", "a cat sitting on a sofa"), ("car.jpg", "a red car parked on the street"),
                    ("dancing.jpg", "two people dancing on a stage"), ("catstuckindoor.jpeg", "a cat stuck in a door"),
                    ("cat.jpg", "a grey cat"), ("car.jpg", "a car"), ("dancing.jpg", "people on a stage")]
        let csv = "image,caption\n" + rows.map { "\($0.0),\"\($0.1)\"" }.joined(separator: "\n") + "\n"
        try csv.write(toFile: dir + "/captions.txt", atomically: true, encoding: .utf8)
        var o = Converter.Options()
        o.vocabPath = Fixtures.vocab
        o.textConfigPath = Fixtures.golden("config.json")
        _ = try Converter.convert(input: Fixtures.golden("liteclip2.pt"), output: dir + "/m.lcw", options: o)
        return (dir, dir + "/m.lcw")
    }

    static func options(epochs: Int) -> Trainer.Options {
        var o = Trainer.Options()
        o.epochs = epochs
        o.batchSize = 2
        o.valFraction = 0.25
        o.seed = 7
        o.workers = 1
        return o
    }

    static func bytes(_ path: String) throws -> [String: [UInt8]] {
        Dictionary(uniqueKeysWithValues: try LiteCLIPFile.open(path).tensors.map { ($0.name, try $0.load().withBytes { Array($0) }) })
    }

    /// Three epochs in one go equal one epoch, then a resume from its checkpoint to three: bit
    /// for bit (shuffle and dropout on, so the generator state must round-trip too).
    func testResumeContinuesExactly() throws {
        let (dir, model) = try Self.setUp()
        let images = Fixtures.seed + "/examples"
        let straight = try Trainer(model: model, captions: dir + "/captions.txt", images: images, out: dir + "/a.lcw", options: Self.options(epochs: 3))
        let s = try straight.run { _ in }
        XCTAssertEqual(s.epochsRun, 3)
        let first = try Trainer(model: model, captions: dir + "/captions.txt", images: images, out: dir + "/b.lcw", options: Self.options(epochs: 1))
        _ = try first.run { _ in }
        let resumed = try Trainer(model: model, captions: dir + "/captions.txt", images: images, out: dir + "/c.lcw",
                                  options: Self.options(epochs: 3), resume: dir + "/b.lcw.ckpt")
        XCTAssertEqual(resumed.resumedEpoch, 1)
        let r = try resumed.run { _ in }
        XCTAssertEqual(r.valLosses, s.valLosses)
        XCTAssertEqual(r.trainLosses, s.trainLosses)
        let a = try Self.bytes(dir + "/a.lcw"), c = try Self.bytes(dir + "/c.lcw")
        XCTAssertEqual(a.count, 260)
        let differing = a.keys.filter { a[$0] != c[$0] }.sorted()
        XCTAssertTrue(differing.isEmpty, "resumed weights differ: \(differing.prefix(5))")
        XCTAssertNotEqual(a["logit_scale"], try Self.bytes(model)["logit_scale"], "training changed the weights")

        // A resume with other settings is refused, naming them.
        var other = Self.options(epochs: 3)
        other.optimizer.lr = 1e-3
        XCTAssertThrowsError(try Trainer(model: model, captions: dir + "/captions.txt", images: images, out: dir + "/d.lcw",
                                         options: other, resume: dir + "/b.lcw.ckpt")) { e in
            XCTAssertTrue("\(e)".contains("lr"), "\(e)")
        }
    }

    func testFreezeLeavesThatTowerUntouched() throws {
        let (dir, model) = try Self.setUp()
        var o = Self.options(epochs: 1)
        o.freeze = .image
        let t = try Trainer(model: model, captions: dir + "/captions.txt", images: Fixtures.seed + "/examples", out: dir + "/f.lcw", options: o)
        _ = try t.run { _ in }
        let before = try Self.bytes(model), after = try Self.bytes(dir + "/f.lcw")
        for (name, b) in before {
            if name.hasPrefix("image_encoder.") || name.contains(".pooler.") { XCTAssertEqual(after[name], b, "\(name) must not change") }
        }
        for name in ["img_projection.proj.weight", "text_encoder.backbone.encoder.layer.0.attention.self.query.weight", "logit_scale"] {
            XCTAssertNotEqual(after[name], before[name], "\(name) is trained")
        }
    }

    /// With weights that cannot move (lr 1e-30) the validation loss never improves: training
    /// stops after `patience` (2) epochs past the first.
    func testEarlyStoppingAfterPatience() throws {
        let (dir, model) = try Self.setUp()
        var o = Self.options(epochs: 10)
        o.optimizer.lr = 1e-30
        o.dropout = 0
        let t = try Trainer(model: model, captions: dir + "/captions.txt", images: Fixtures.seed + "/examples", out: dir + "/e.lcw", options: o)
        var stopped: Int? = nil
        let s = try t.run { if case let .earlyStop(e) = $0 { stopped = e } }
        XCTAssertEqual(stopped, 3)
        XCTAssertEqual(s.epochsRun, 3)
    }

    /// Dropout 0 is evaluation mode exactly; dropout > 0 is seeded and drops about p.
    func testDropout() throws {
        let g = try TrainingParityTests.read("training/grads.safetensors")
        let model = try TrainingParityTests.model()
        let (pixels, b, tokens) = TrainingParityTests.batch(g)
        var rng = SeededRNG(seed: 1)
        let grads = model.makeGradients()
        let off = model.trainStep(pixels: pixels, batch: b, tokens: tokens, grads: grads, options: .init(dropout: 0), rng: &rng).loss
        XCTAssertEqual(off, model.loss(pixels: pixels, batch: b, tokens: tokens), accuracy: 1e-6)
        var r1 = SeededRNG(seed: 5), r2 = SeededRNG(seed: 5), r3 = SeededRNG(seed: 6)
        let a = model.trainStep(pixels: pixels, batch: b, tokens: tokens, grads: grads, options: .init(dropout: 0.1), rng: &r1).loss
        let a2 = model.trainStep(pixels: pixels, batch: b, tokens: tokens, grads: grads, options: .init(dropout: 0.1), rng: &r2).loss
        let c = model.trainStep(pixels: pixels, batch: b, tokens: tokens, grads: grads, options: .init(dropout: 0.1), rng: &r3).loss
        XCTAssertEqual(a, a2, "same seed, same masks")
        XCTAssertNotEqual(a, off)
        XCTAssertNotEqual(a, c)
        var rng4 = SeededRNG(seed: 9)
        var mask = [Float](repeating: 0, count: 100_000)
        _ = mask.withUnsafeMutableBufferPointer { Kernels.dropoutMask($0.baseAddress!, count: $0.count, p: 0.1, rng: &rng4) }
        let dropped = Double(mask.filter { $0 == 0 }.count) / Double(mask.count)
        XCTAssertEqual(dropped, 0.1, accuracy: 0.005)
        XCTAssertTrue(mask.allSatisfy { $0 == 0 || $0 == Float(1) / Float(0.9) })
    }

    // MARK: - Per-op finite differences

    /// Central differences in float32 with step h on a random linear functional of the output,
    /// compared with the analytic input/weight gradient: |fd - analytic| <= 2e-2 * max|analytic| + 1e-4.
    func checkFD(_ name: String, params: inout [Float], h: Float = 1e-2, forward: ([Float]) -> [Float], analytic: [Float],
                 probe: [Float], file: StaticString = #filePath, line: UInt = #line) {
        let scale = analytic.reduce(0) { max($0, abs($1)) }
        XCTAssertGreaterThan(scale, 0, "\(name): zero gradient", file: file, line: line)
        var worst: Float = 0
        for i in stride(from: 0, to: params.count, by: max(1, params.count / 40)) {
            let keep = params[i]
            params[i] = keep + h
            let up = zip(forward(params), probe).reduce(Float(0)) { $0 + $1.0 * $1.1 }
            params[i] = keep - h
            let down = zip(forward(params), probe).reduce(Float(0)) { $0 + $1.0 * $1.1 }
            params[i] = keep
            worst = max(worst, abs((up - down) / (2 * h) - analytic[i]))
        }
        XCTAssertLessThanOrEqual(worst, 2e-2 * scale + 1e-4, "\(name): max |fd - analytic| \(worst), max |analytic| \(scale)", file: file, line: line)
    }

    static func random(_ n: Int, _ rng: inout SeededRNG, scale: Float = 1) -> [Float] { (0..<n).map { _ in (rng.nextFloat() * 2 - 1) * scale } }

    static func tensor(_ shape: [Int], _ v: [Float]) -> Tensor { Buffer(shape, v).view }

    /// Finite differences perturb a weight the kernels only read.
    static func overwrite(_ t: Tensor, _ v: [Float]) {
        v.withUnsafeBufferPointer { UnsafeMutablePointer(mutating: t.data).update(from: $0.baseAddress!, count: v.count) }
    }

    func testLayerNormRowsAndChannelsBackward() {
        var rng = SeededRNG(seed: 3)
        let rows = 3, n = 8
        var x = Self.random(rows * n, &rng)
        let w = Self.tensor([n], Self.random(n, &rng)), b = Self.tensor([n], Self.random(n, &rng))
        let probe = Self.random(rows * n, &rng)
        func fwd(_ x: [Float]) -> [Float] {
            var y = [Float](repeating: 0, count: rows * n), xh = y, rs = [Float](repeating: 0, count: rows)
            Kernels.layerNormRowsForward(x, rows: rows, n: n, weight: w, bias: b, eps: 1e-5, xhat: &xh, rstd: &rs, into: &y)
            return y
        }
        var xh = [Float](repeating: 0, count: rows * n), rs = [Float](repeating: 0, count: rows), y = xh, dx = xh
        Kernels.layerNormRowsForward(x, rows: rows, n: n, weight: w, bias: b, eps: 1e-5, xhat: &xh, rstd: &rs, into: &y)
        var dw = [Float](repeating: 0, count: n), db = dw
        Kernels.layerNormRowsBackward(xhat: xh, rstd: rs, dy: probe, rows: rows, n: n, weight: w, dWeight: &dw, dBias: &db, dx: &dx)
        checkFD("layerNormRows dx", params: &x, forward: fwd, analytic: dx, probe: probe)
        var wv = w.array
        checkFD("layerNormRows dw", params: &wv, forward: { v in
            Self.overwrite(w, v); return fwd(x) }, analytic: dw, probe: probe)

        // Channels: C = 5 over P = 6 columns.
        let c = 5, p = 6
        var xc = Self.random(c * p, &rng)
        let wc = Self.tensor([c], Self.random(c, &rng)), bc = Self.tensor([c], Self.random(c, &rng))
        let probeC = Self.random(c * p, &rng)
        func fwdC(_ x: [Float]) -> [Float] {
            var y = [Float](repeating: 0, count: c * p), xh = y, rs = [Float](repeating: 0, count: p)
            Kernels.layerNormChannelsForward(x, channels: c, columns: p, weight: wc, bias: bc, eps: 1e-6, xhat: &xh, rstd: &rs, into: &y)
            return y
        }
        var xhc = [Float](repeating: 0, count: c * p), rsc = [Float](repeating: 0, count: p), yc = xhc, dxc = xhc
        Kernels.layerNormChannelsForward(xc, channels: c, columns: p, weight: wc, bias: bc, eps: 1e-6, xhat: &xhc, rstd: &rsc, into: &yc)
        var dwc = [Float](repeating: 0, count: c), dbc = dwc
        Kernels.layerNormChannelsBackward(xhat: xhc, rstd: rsc, dy: probeC, channels: c, columns: p, weight: wc, dWeight: &dwc, dBias: &dbc, dx: &dxc)
        checkFD("layerNormChannels dx", params: &xc, forward: fwdC, analytic: dxc, probe: probeC)
        XCTAssertEqual(dbc[0], (0..<p).reduce(Float(0)) { $0 + probeC[$1] }, accuracy: 1e-5)
    }

    func testGELUAndDepthwiseAndPatchConvBackward() {
        var rng = SeededRNG(seed: 4)
        // GELU.
        var x = Self.random(50, &rng, scale: 3)
        let probe = Self.random(50, &rng)
        var g = probe
        Kernels.geluBackward(x, &g, count: 50)
        checkFD("gelu", params: &x, h: 1e-2, forward: { v in var y = v; Kernels.gelu(&y, count: y.count); return y }, analytic: g, probe: probe)

        // Depthwise 3x3 on 2 channels x 2 images of 5x9 (odd width exercises the strip tail).
        let ch = 2, bt = 2, h = 5, w = 9, k = 3, n = ch * bt * h * w
        var xi = Self.random(n, &rng)
        let weight = Self.tensor([ch, 1, k, k], Self.random(ch * k * k, &rng)), bias = Self.tensor([ch], Self.random(ch, &rng))
        let pr = Self.random(n, &rng)
        func fwd(_ v: [Float]) -> [Float] {
            var y = [Float](repeating: 0, count: n)
            Kernels.depthwiseConv(v, channels: ch, batch: bt, h: h, w: w, weight: weight, bias: bias, into: &y)
            return y
        }
        var dx = [Float](repeating: 0, count: n), scratch = dx, dw = [Float](repeating: 0, count: ch * k * k), db = [Float](repeating: 0, count: ch)
        Kernels.depthwiseConvBackward(x: xi, dy: pr, channels: ch, batch: bt, h: h, w: w, weight: weight, dWeight: &dw, dBias: &db,
                                      accumulateInto: &dx, scratch: &scratch)
        checkFD("depthwise dx", params: &xi, forward: fwd, analytic: dx, probe: pr)
        var wv = weight.array
        checkFD("depthwise dw", params: &wv, forward: { v in
            Self.overwrite(weight, v); return fwd(xi) }, analytic: dw, probe: pr)

        // Patch conv 2x2/2: 3 -> 4 channels, 2 images of 4x6.
        let cin = 3, cout = 4, hh = 4, ww = 6, s = 2, cols = bt * (hh / s) * (ww / s), kd = cin * s * s
        var xp = Self.random(cin * bt * hh * ww, &rng)
        let pw = Self.tensor([cout, cin, s, s], Self.random(cout * kd, &rng)), pb = Self.tensor([cout], Self.random(cout, &rng))
        let pp = Self.random(cout * cols, &rng)
        func fwdP(_ v: [Float]) -> [Float] {
            var y = [Float](repeating: 0, count: cout * cols)
            Kernels.patchConv(v, inChannels: cin, batch: bt, h: hh, w: ww, stride: s, weight: pw, bias: pb, into: &y)
            return y
        }
        var col = [Float](repeating: 0, count: kd * cols), dcol = col, dxp = [Float](repeating: 0, count: xp.count)
        Kernels.patchColumns(xp, inChannels: cin, batch: bt, h: hh, w: ww, stride: s, into: &col)
        var dpw = [Float](repeating: 0, count: cout * kd), dpb = [Float](repeating: 0, count: cout)
        Kernels.pointwiseBackward(x: col, dy: pp, columns: cols, weight: Tensor(shape: [cout, kd], sharing: pw), dWeight: &dpw, dBias: &dpb, dx: &dcol)
        Kernels.patchColumnsBackward(dcol, inChannels: cin, batch: bt, h: hh, w: ww, stride: s, into: &dxp)
        checkFD("patch conv dx", params: &xp, forward: fwdP, analytic: dxp, probe: pp)
        var pwv = pw.array
        checkFD("patch conv dw", params: &pwv, forward: { v in
            Self.overwrite(pw, v); return fwdP(xp) }, analytic: dpw, probe: pp)
    }

    func testNormalizeAndContrastiveLossBackward() {
        var rng = SeededRNG(seed: 5)
        let rows = 3, d = 4
        var y = Self.random(rows * d, &rng)
        let probe = Self.random(rows * d, &rng)
        func normalize(_ v: [Float]) -> (e: [Float], norms: [Float]) {
            var e = v
            let norms = e.withUnsafeMutableBufferPointer { Kernels.l2Normalize($0.baseAddress!, rows: rows, dim: d) }
            return (e, norms)
        }
        let (e, norms) = normalize(y)
        var dy = probe
        e.withUnsafeBufferPointer { E in dy.withUnsafeMutableBufferPointer {
            Kernels.l2NormalizeBackward(e: E.baseAddress!, norms: norms, rows: rows, dim: d, de: $0.baseAddress!)
        } }
        checkFD("normalize", params: &y, h: 1e-3, forward: { normalize($0).e }, analytic: dy, probe: probe)
        var logits = Self.random(9, &rng, scale: 3)
        let dl = Contrastive.loss(logits: logits, batch: 3).dLogits
        checkFD("contrastive loss", params: &logits, h: 1e-2, forward: { [Contrastive.loss(logits: $0, batch: 3).loss] }, analytic: dl, probe: [1])
    }
}

/// `liteclip train` as a user runs it: Ctrl-C (SIGINT) mid-run leaves the last complete
/// checkpoint intact (and no temporary file), and `--resume` continues from it; then
/// `liteclip export` of the result reads back equal to the trained weights.
final class TrainCLITests: XCTestCase {
    func testInterruptLeavesTheLastCheckpointAndResumeWorks() throws {
        let (dir, model) = try TrainerTests.setUp()
        let args = [model, "--captions", dir + "/captions.txt", "--images", Fixtures.seed + "/examples", "--out", dir + "/t.lcw",
                    "--batch-size", "2", "--epochs", "500", "--seed", "3", "-q"]
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLITests.binDir + "/liteclip")
        p.arguments = ["train"] + args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let ckpt = dir + "/t.lcw.ckpt"
        let deadline = Date().addingTimeInterval(120)
        while !FileManager.default.fileExists(atPath: ckpt) && Date() < deadline && p.isRunning { usleep(50_000) }
        XCTAssertTrue(FileManager.default.fileExists(atPath: ckpt), "no checkpoint within 2 minutes")
        usleep(300_000)   // let it get into the next epoch (or the next checkpoint write)
        kill(p.processIdentifier, SIGINT)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 128 + SIGINT, "interrupted")
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }
        XCTAssertEqual(leftovers, [], "no temporary files")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/t.lcw"), "the result is only written at the end")
        let saved = try LCWReader.open(ckpt)   // intact: opens and validates
        let state = try XCTUnwrap((try JSONSerialization.jsonObject(with: saved.metadataJSON) as? [String: Any])?["training"] as? [String: Any])
        let steps = try XCTUnwrap(state["global_step"] as? Int)
        XCTAssertGreaterThan(steps, 0)

        // Two more steps from where it stopped.
        let r = try CLITests.run("liteclip", ["train", model, "--captions", dir + "/captions.txt", "--images", Fixtures.seed + "/examples",
                                              "--out", dir + "/u.lcw", "--batch-size", "2", "--epochs", "500", "--seed", "3", "-q",
                                              "--resume", ckpt, "--max-steps", "\(steps + 2)"])
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.err.contains("resumed from"), r.err)
        _ = try LiteCLIPFile.open(dir + "/u.lcw")
        let e = try CLITests.run("liteclip", ["export", dir + "/u.lcw", dir + "/u.pt"])
        XCTAssertEqual(e.status, 0, e.err)
        let back = try TensorFile.read(ByteSource(mapping: dir + "/u.pt")).tensors
        let trained = try LiteCLIPFile.open(dir + "/u.lcw").tensors
        XCTAssertEqual(back.map(\.name), trained.map(\.name))
        for (a, b) in zip(back, trained) { XCTAssertEqual(try a.load().sha256(), try b.load().sha256(), a.name) }
    }
}
