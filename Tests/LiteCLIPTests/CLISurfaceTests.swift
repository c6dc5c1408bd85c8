import Foundation
@testable import LiteCLIP
@testable import TensorIO
import TestSupport
import XCTest

/// The CLI as a user meets it (issue 12), through the built executables: any checkpoint for any
/// command, checks before work, batch runs that survive bad files, zero-shot over folders,
/// export by extension, verify's pixel check, and one surface (JSON, -q, --version, the error
/// format and exit codes).
final class CLISurfaceTests: XCTestCase {
    static let vocab = Fixtures.vocab
    static let textConfig = Fixtures.golden("config.json")
    static let pt = Fixtures.golden("liteclip2.pt")
    static let cat = Fixtures.seed + "/examples/cat.jpg"
    static var lcw: String { InferenceCLITests.lcw }

    func run(_ args: [String]) throws -> CLITests.Result { try CLITests.run("liteclip", args) }

    /// A photo folder as found in the wild: good JPEG/PNG/WebP files at several depths, a
    /// truncated JPEG, an empty PNG, a text file, hidden files and a hidden folder.
    static func photoFolder() throws -> (dir: String, good: [String], bad: [String: String]) {
        let dir = Fixtures.tempDir() + "/photos"
        let fm = FileManager.default
        for sub in ["", "/trip", "/trip/day2", "/.thumbnails"] { try fm.createDirectory(atPath: dir + sub, withIntermediateDirectories: true) }
        let examples = Fixtures.seed + "/examples"
        try fm.copyItem(atPath: examples + "/cat.jpg", toPath: dir + "/cat.jpg")
        try fm.copyItem(atPath: examples + "/car.jpg", toPath: dir + "/trip/car.jpg")
        try fm.copyItem(atPath: Fixtures.golden("images/png_rgb_50x30.png"), toPath: dir + "/trip/day2/drawing.png")
        try fm.copyItem(atPath: Fixtures.golden("images/webp_lossy_64x48.webp"), toPath: dir + "/trip/day2/phone.webp")
        try fm.copyItem(atPath: Fixtures.golden("images/jpeg_1x1.jpg"), toPath: dir + "/.thumbnails/cat.jpg")
        try fm.copyItem(atPath: Fixtures.golden("images/jpeg_1x1.jpg"), toPath: dir + "/._cat.jpg")
        let jpeg = try Data(contentsOf: URL(fileURLWithPath: examples + "/dancing.jpg"))
        try jpeg.prefix(2000).write(to: URL(fileURLWithPath: dir + "/trip/corrupt.jpg"))
        try Data().write(to: URL(fileURLWithPath: dir + "/empty.png"))
        try Data("shopping list".utf8).write(to: URL(fileURLWithPath: dir + "/notes.txt"))
        let good = [dir + "/cat.jpg", dir + "/trip/car.jpg", dir + "/trip/day2/drawing.png", dir + "/trip/day2/phone.webp"]
        let bad = [dir + "/trip/corrupt.jpg": "JPEG data ends", dir + "/empty.png": "empty", dir + "/notes.txt": ".txt",
                   dir + "/._cat.jpg": "hidden file", dir + "/.thumbnails": "hidden folder"]
        return (dir, good, bad)
    }

    func json(_ s: String) throws -> [String: Any] {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: Any], s)
    }

    // MARK: 1. Any checkpoint, any command

    func testEveryModelCommandTakesAPyTorchCheckpoint() throws {
        let dir = Fixtures.tempDir()
        let conv = ["--vocab", Self.vocab, "--text-config", Self.textConfig]
        let z = try run(["zero-shot", Self.pt, Self.cat, "a photo of a cat", "a photo of a dog"] + conv)
        XCTAssertEqual(z.status, 0, z.err)
        XCTAssertTrue(z.err.contains("converted in memory"), "said on stderr: \(z.err)")
        let fromLCW = try run(["zero-shot", Self.lcw, Self.cat, "a photo of a cat", "a photo of a dog"])
        XCTAssertEqual(z.out, fromLCW.out, "the .pt in memory gives what its .lcw gives")
        let e = try run(["embed", Fixtures.golden("liteclip2.safetensors"), "--texts", "a dog", "--out", dir + "/t.npy", "-q"] + conv)
        XCTAssertEqual(e.status, 0, e.err)
        XCTAssertEqual(e.err, "", "-q: nothing on stderr")
        let v = try run(["verify", Self.pt, "--reference", Fixtures.golden("reference.safetensors"), "-q"] + conv)
        XCTAssertEqual(v.status, 0, v.out + v.err)
        let x = try run(["export", Self.pt, dir + "/back.safetensors", "-q"] + conv)
        XCTAssertEqual(x.status, 0, x.err)
        let b = try run(["bench", Self.pt, "--reps", "1", "--json", "-q"] + conv)
        XCTAssertEqual(b.status, 0, b.err)
        let names = b.out.split(separator: "\n").compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8))).flatMap { ($0 as? [String: Any])?["name"] as? String }
        }
        XCTAssertEqual(names.count, 6, b.out)
        XCTAssertTrue(names.first?.hasPrefix("FMA peak, ") ?? false, "the machine's ceiling comes first: \(b.out)")
        // `liteclip convert` is the same as liteclip-convert.
        let c = try run(["convert", Self.pt, dir + "/c.lcw", "-q"] + conv)
        XCTAssertEqual(c.status, 0, c.err)
        XCTAssertTrue(c.out.contains("converted"), c.out)
        XCTAssertNoThrow(try LiteCLIPFile.open(dir + "/c.lcw"))
        // Without a tokenizer: an error that says what to pass.
        let noTok = try run(["zero-shot", Self.pt, Self.cat, "a", "b"])
        XCTAssertEqual(noTok.status, 1)
        XCTAssertTrue(noTok.err.hasPrefix("liteclip zero-shot: error: \(Self.pt): "), noTok.err)
        XCTAssertTrue(noTok.err.contains("hint: ") && noTok.err.contains("--vocab"), noTok.err)
    }

    // MARK: 2. Checks before work

    func testOutputPathsAreCheckedBeforeAnyWork() throws {
        let dir = Fixtures.tempDir()
        let captions = Fixtures.tempDir() + "/captions.txt"
        try "image,caption\ncat.jpg,a cat\ncar.jpg,a car\n".write(toFile: captions, atomically: true, encoding: .utf8)
        let conv = ["--vocab", Self.vocab, "--text-config", Self.textConfig]
        let cases: [([String], String)] = [
            (["embed", Self.pt, "--images", Fixtures.seed + "/examples", "--out", dir + "/missing-dir/p.npy"] + conv, "does not exist"),
            (["embed", Self.pt, "--texts", "a", "--out", dir] + conv, "is a folder"),
            (["convert", Self.pt, dir + "/missing-dir/m.lcw"] + conv, "does not exist"),
            (["convert", Self.pt, dir] + conv, "is a folder"),
            (["convert", Self.pt, Self.pt] + conv, "would overwrite the input"),
            (["export", Self.pt, dir + "/missing-dir/m.pt"] + conv, "does not exist"),
            (["train", Self.pt, "--captions", captions, "--images", Fixtures.seed + "/examples", "--out", dir + "/nope/t.lcw"] + conv, "does not exist"),
            (["train", Self.pt, "--captions", dir + "/c.txt", "--images", dir, "--out", dir + "/t.lcw"] + conv, "no such captions file"),
        ]
        for (args, message) in cases {
            let start = Date()
            let r = try run(args)
            let seconds = Date().timeIntervalSince(start)
            XCTAssertEqual(r.status, 1, "\(args): \(r.err)")
            XCTAssertTrue(r.err.contains(message), "\(args): \(r.err)")
            XCTAssertTrue(r.err.hasPrefix("liteclip \(args[0]): error: "), r.err)
            XCTAssertFalse(r.err.contains("converted in memory"), "no model work before the check: \(r.err)")
            XCTAssertLessThan(seconds, 1, "\(args) took \(seconds) s")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [], "nothing written")
    }

    func testLabelsAreChecked() throws {
        let bad: [([String], String)] = [
            (["only one"], "at least 2 labels"),
            (["a cat", " "], "label 2 is empty"),
            (["a cat", "a dog", "a cat"], "labels 1 and 3 are the same"),
        ]
        for (labels, message) in bad {
            let r = try run(["zero-shot", Self.lcw, Self.cat] + labels)
            XCTAssertEqual(r.status, 1, "\(labels)")
            XCTAssertTrue(r.err.contains(message), "\(labels): \(r.err)")
        }
        let long = Array(repeating: "word", count: 200).joined(separator: " ")
        let w = try run(["zero-shot", Self.lcw, Self.cat, "a cat", long])
        XCTAssertEqual(w.status, 0, w.err)
        XCTAssertTrue(w.err.contains("liteclip zero-shot: warning: label 2 ('word word"), w.err)
        XCTAssertTrue(w.err.contains("is 202 tokens; only the first 128 are read"), w.err)
        // The old trap: a second image taken for a label.
        let trap = try run(["zero-shot", Self.lcw, Self.cat, Fixtures.seed + "/examples/car.jpg", "a cat", "a car"])
        XCTAssertEqual(trap.status, 1)
        XCTAssertTrue(trap.err.contains("looks like an image file") && trap.err.contains("--labels"), trap.err)
    }

    // MARK: 3. Batch runs that survive bad files

    func testEmbedAPhotoFolderSkipsAndNamesBadFiles() throws {
        let (photos, good, bad) = try Self.photoFolder()
        let dir = Fixtures.tempDir()
        let r = try run(["embed", Self.lcw, "--images", photos, "--out", dir + "/p.npy", "--batch-size", "3"])
        XCTAssertEqual(r.status, 0, r.err)
        let names = try json(String(decoding: try Data(contentsOf: URL(fileURLWithPath: dir + "/p.names.json")), as: UTF8.self))
        XCTAssertEqual((names["names"] as? [String])?.sorted(), good.sorted(), "every good image, nested ones and WebP included")
        let skipped = Dictionary(uniqueKeysWithValues: (names["skipped"] as! [[String: String]]).map { ($0["file"]!, $0["reason"]!) })
        XCTAssertEqual(Set(skipped.keys), Set(bad.keys))
        for (file, reason) in bad {
            XCTAssertTrue(skipped[file]?.contains(reason) == true, "\(file): \(skipped[file] ?? "not reported")")
            XCTAssertTrue(r.err.contains(file), "skipped file named on stderr: \(file)")
        }
        // Rows equal each image embedded alone through the library.
        let model = try LiteCLIPModel(path: Self.lcw)
        let rows = try NPY.floats(dir + "/p.npy")
        let order = names["names"] as! [String]
        for (i, f) in order.enumerated() {
            let alone = try model.embed(images: [RGBImage(contentsOf: URL(fileURLWithPath: f))])[0]
            XCTAssertLessThan(zip(rows[(i * 256)..<((i + 1) * 256)], alone).map { abs($0 - $1) }.max()!, 1e-6, f)
        }
        // --no-recursive: only the top folder's image; the sub-folder is reported.
        let flat = try run(["embed", Self.lcw, "--images", photos, "--out", dir + "/f.npy", "--no-recursive", "--json", "-q"])
        XCTAssertEqual(flat.status, 0, flat.err)
        let fr = try json(flat.out)
        XCTAssertEqual(fr["rows"] as? Int, 1)
        XCTAssertTrue((fr["skipped"] as! [[String: String]]).contains { $0["file"] == photos + "/trip" && $0["reason"]!.contains("sub-folder") })
        // --strict: the first bad file is fatal and nothing is written.
        let strict = try run(["embed", Self.lcw, "--images", photos, "--out", dir + "/s.npy", "--strict"])
        XCTAssertEqual(strict.status, 1)
        XCTAssertTrue(bad.keys.contains { strict.err.contains($0) }, strict.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/s.npy"))
        // No input at all is an error, and writes nothing.
        let empty = Fixtures.tempDir()
        let none = try run(["embed", Self.lcw, "--images", empty, "--out", dir + "/e.npy"])
        XCTAssertEqual(none.status, 1)
        XCTAssertTrue(none.err.contains("no image files"), none.err)
        let allBad = try run(["embed", Self.lcw, "--images", photos + "/empty.png", photos + "/trip/corrupt.jpg", "--out", dir + "/b.npy"])
        XCTAssertEqual(allBad.status, 1)
        XCTAssertTrue(allBad.err.contains("none of the 2 image file(s) could be read"), allBad.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/e.npy") || FileManager.default.fileExists(atPath: dir + "/b.npy"))
    }

    // MARK: 4. Zero-shot at scale

    func testZeroShotOverAFolder() throws {
        let (photos, good, bad) = try Self.photoFolder()
        let labels = ["a photo of a cat", "a photo of a car", "a drawing"]
        let r = try run(["zero-shot", Self.lcw, photos, "--labels"] + labels + ["--json", "-q"])
        XCTAssertEqual(r.status, 0, r.err)
        let obj = try json(r.out)
        let results = obj["results"] as! [[String: Any]]
        XCTAssertEqual(results.map { $0["image"] as! String }.sorted(), good.sorted())
        XCTAssertEqual((obj["skipped"] as! [[String: String]]).count, bad.count)
        // Each image's result equals the one-image form's.
        let model = try LiteCLIPModel(path: Self.lcw)
        for res in results {
            let one = try model.zeroShot(imagePath: res["image"] as! String, labels: labels)
            let probs = res["probabilities"] as! [Double]
            XCTAssertEqual(probs.count, 3)
            XCTAssertLessThan(zip(probs, one.probabilities).map { abs($0 - Double($1)) }.max()!, 1e-6)
            XCTAssertEqual((res["ranking"] as! [[String: Any]]).count, 3, "top-k default 3 for several images")
        }
        // CSV: a header and one row per image, top-2 each; labels from a file.
        let dir = Fixtures.tempDir()
        try (labels.joined(separator: "\n") + "\n\n").write(toFile: dir + "/labels.txt", atomically: true, encoding: .utf8)
        let csv = try run(["zero-shot", Self.lcw, good[0], good[1], "--labels-file", dir + "/labels.txt", "--csv", "--top-k", "2"])
        XCTAssertEqual(csv.status, 0, csv.err)
        let lines = csv.out.split(separator: "\n")
        XCTAssertEqual(lines.first, "image,label_1,probability_1,logit_1,label_2,probability_2,logit_2")
        XCTAssertEqual(lines.count, 3)
        XCTAssertTrue(lines[1].hasPrefix(good[0] + ","), csv.out)
        // A table for several images.
        let table = try run(["zero-shot", Self.lcw, good[0], good[1], "--labels"] + labels)
        XCTAssertEqual(table.status, 0, table.err)
        XCTAssertTrue(table.out.hasPrefix("image "), table.out)
        XCTAssertEqual(table.out.split(separator: "\n").count, 1 + 2 * 3)
    }

    // MARK: 5. Export by extension

    func testExportFollowsTheExtension() throws {
        let dir = Fixtures.tempDir()
        let s = try run(["export", Self.lcw, dir + "/m.safetensors"])
        XCTAssertEqual(s.status, 0, s.err)
        let st = try SafetensorsReader.read(ByteSource(mapping: dir + "/m.safetensors"))   // the safetensors rules, strictly
        let lcw = try LiteCLIPFile.open(Self.lcw)
        XCTAssertEqual(st.tensors.map(\.name), lcw.tensors.map(\.name))
        for (a, b) in zip(st.tensors, lcw.tensors) { XCTAssertEqual(try a.load().sha256(), try b.load().sha256(), a.name) }
        for name in ["m.pt", "m.pth"] {
            let p = try run(["export", Self.lcw, dir + "/" + name])
            XCTAssertEqual(p.status, 0, p.err)
            XCTAssertEqual(try TensorFile.detect(ByteSource(mapping: dir + "/" + name)), .torchZip, name)
        }
        let other = try run(["export", Self.lcw, dir + "/m.weights", "--format", "safetensors"])
        XCTAssertEqual(other.status, 0, other.err)
        XCTAssertNoThrow(try SafetensorsReader.read(ByteSource(mapping: dir + "/m.weights")))
        let contradiction = try run(["export", Self.lcw, dir + "/x.safetensors", "--format", "pt"])
        XCTAssertEqual(contradiction.status, 2)
        XCTAssertTrue(contradiction.err.contains("contradicts"), contradiction.err)
        let unknown = try run(["export", Self.lcw, dir + "/x.weights"])
        XCTAssertEqual(unknown.status, 2)
        XCTAssertTrue(unknown.err.contains("cannot tell the format"), unknown.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.safetensors") || FileManager.default.fileExists(atPath: dir + "/x.weights"))
    }

    // MARK: 6. Training a person can stop

    func testSigintPrintsTheResumeLineAndResumeContinuesTheStepCount() throws {
        let (dir, model) = try TrainerTests.setUp()
        let out = dir + "/t.lcw"
        let args = ["train", model, "--captions", dir + "/captions.txt", "--images", Fixtures.seed + "/examples", "--out", out,
                    "--batch-size", "2", "--epochs", "500", "--seed", "3", "--val-fraction", "0", "--json"]
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLITests.binDir + "/liteclip")
        p.arguments = args
        FileManager.default.createFile(atPath: dir + "/events.jsonl", contents: nil)
        FileManager.default.createFile(atPath: dir + "/err.txt", contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/events.jsonl"))
        p.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/err.txt"))
        try p.run()
        func events() -> [[String: Any]] {
            let text = (try? String(contentsOfFile: dir + "/events.jsonl", encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        }
        let deadline = Date().addingTimeInterval(120)
        while !events().contains(where: { $0["event"] as? String == "step" && ($0["global_step"] as? Int ?? 0) >= 4 }) && Date() < deadline && p.isRunning {
            usleep(20_000)
        }
        kill(p.processIdentifier, SIGINT)
        p.waitUntilExit()
        let err = try String(contentsOfFile: dir + "/err.txt", encoding: .utf8)
        XCTAssertEqual(p.terminationStatus, 130, err)
        let evs = events()
        let interrupted = try XCTUnwrap(evs.first { $0["event"] as? String == "interrupted" }, "\(evs)")
        let epoch = interrupted["epoch"] as! Int, step = interrupted["step"] as! Int
        let done = evs.filter { $0["event"] as? String == "step" }.compactMap { $0["global_step"] as? Int }.max()!
        // Mid-epoch, or (when Ctrl-C lands between epochs) after the epoch just saved.
        XCTAssertTrue(err.contains(step > 0 ? "interrupted in epoch \(epoch) at step \(step)" : "interrupted after epoch \(epoch - 1)"), err)
        XCTAssertTrue(err.contains("liteclip train: warning: ") && err.contains("validation"), "empty validation split: \(err)")
        XCTAssertTrue(evs.contains { $0["event"] as? String == "warning" }, "warnings are events too")
        let resumeLine = try XCTUnwrap(err.split(separator: "\n").first { $0.hasPrefix("resume with: liteclip train ") }, err)
        XCTAssertTrue(resumeLine.hasSuffix("--resume " + out + ".ckpt"), String(resumeLine))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }, [])
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "OUT is written only when training ends")

        // The printed command, run as given (with two more steps in all), continues the count.
        let command = resumeLine.dropFirst("resume with: liteclip".count)
        let r = try CLITests.run("/bin/sh", ["-c", "'\(CLITests.binDir)/liteclip'\(command) --max-steps \(done + 2)"])
        XCTAssertEqual(r.status, 0, r.err)
        let steps = r.out.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .filter { $0["event"] as? String == "step" }
        XCTAssertEqual(steps.compactMap { $0["global_step"] as? Int }, [done + 1, done + 2], r.out)
        XCTAssertNoThrow(try LiteCLIPFile.open(out))
        // The training checkpoint opens in the other commands.
        let z = try run(["zero-shot", out + ".ckpt", Self.cat, "a cat", "a dog"])
        XCTAssertEqual(z.status, 0, z.err)
        XCTAssertTrue(z.err.contains("training checkpoint"), z.err)
    }

    // MARK: 7. Verify says what it checks

    func testVerifyNamesItsMetricsAndChecksTheImagePipeline() throws {
        let r = try run(["verify", Self.lcw, "--reference", Fixtures.golden("reference.safetensors")])
        XCTAssertEqual(r.status, 0, r.out + r.err)
        XCTAssertTrue(r.out.contains("max abs error   abs tolerance"), r.out)
        let pixels = try XCTUnwrap(r.out.split(separator: "\n").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix("pixel_values") }, r.out)
        XCTAssertTrue(pixels.contains("ok"), String(pixels))
        let j = try json(try run(["verify", Self.lcw, "--reference", Fixtures.golden("reference.safetensors"), "--json"]).out)
        XCTAssertEqual((j["checked_images"] as? [String])?.count, 3)
        let outputs = j["outputs"] as! [[String: Any]]
        XCTAssertTrue(outputs.contains { $0["name"] as? String == "pixel_values" && $0["passed"] as? Bool == true }, "\(outputs)")
        XCTAssertTrue(outputs.allSatisfy { $0["abs_tolerance"] != nil && $0["max_abs_error"] != nil })
        // A reference whose images are elsewhere: said, not failed.
        let dir = Fixtures.tempDir()
        try FileManager.default.copyItem(atPath: Fixtures.golden("reference.safetensors"), toPath: dir + "/ref.safetensors")
        let moved = try run(["verify", Self.lcw, "--reference", dir + "/ref.safetensors"])
        XCTAssertEqual(moved.status, 0, moved.out)
        XCTAssertTrue(moved.out.contains("pixels: not checked: 3 of the reference's 3 image files not found"), moved.out)
        XCTAssertFalse(moved.out.contains("pixel_values "), moved.out)
    }

    // MARK: 8. One surface

    func testOneSurface() throws {
        let dir = Fixtures.tempDir()
        for tool in ["liteclip", "liteclip-convert"] {
            let v = try CLITests.run(tool, ["--version"])
            XCTAssertEqual(v.status, 0)
            XCTAssertEqual(v.out.trimmingCharacters(in: .whitespacesAndNewlines), LiteCLIPVersion.string)
        }
        // --json on every command that reports: valid JSON, slashes not escaped.
        let reports: [[String]] = [
            ["convert", Self.pt, dir + "/c.lcw", "--vocab", Self.vocab],
            ["inspect", Self.lcw],
            ["verify", Self.lcw, "--reference", Fixtures.golden("reference.safetensors")],
            ["zero-shot", Self.lcw, Self.cat, "a cat", "a dog"],
            ["embed", Self.lcw, "--texts", "a cat", "--out", dir + "/t.npy"],
            ["export", Self.lcw, dir + "/e.pt"],
        ]
        for args in reports {
            let r = try run(args + ["--json", "-q"])
            XCTAssertEqual(r.status, 0, "\(args): \(r.err)")
            XCTAssertNoThrow(try json(r.out), "\(args)")
            XCTAssertFalse(r.out.contains("\\/"), "\(args): escaped slash")
        }
        let bench = try run(["bench", Self.lcw, "--reps", "1", "--json"])
        XCTAssertEqual(bench.status, 0, bench.err)
        for line in bench.out.split(separator: "\n") { XCTAssertNoThrow(try json(String(line))) }
        // -q on every command.
        for sub in ["convert", "inspect", "verify", "zero-shot", "embed", "train", "export", "bench"] {
            let h = try run([sub, "--help"])
            XCTAssertEqual(h.status, 0)
            XCTAssertTrue(h.out.contains("-q, --quiet"), sub)
            XCTAssertTrue(h.out.contains("--json"), sub)
        }
        // Enum options list their values; bad values are usage errors (exit 2).
        func flat(_ s: String) -> String { s.split(whereSeparator: { $0 == " " || $0 == "\n" }).joined(separator: " ") }
        let help = flat(try run(["export", "--help"]).out)
        XCTAssertTrue(help.contains("values: pt, safetensors"), help)
        XCTAssertTrue(help.contains("values: f32, f16, bf16"), help)
        XCTAssertTrue(flat(try run(["train", "--help"]).out).contains("values: adam, adamw"))
        let usage = try run(["export", Self.lcw, dir + "/x.pt", "--dtype", "f8"])
        XCTAssertEqual(usage.status, 2)
        XCTAssertTrue(usage.err.hasPrefix("liteclip export: error: "), usage.err)
        XCTAssertEqual(try run(["no-such-command"]).status, 2)
        XCTAssertEqual(try CLITests.run("liteclip-convert", [Self.pt]).status, 2)
        // One error format: command, file, reason, and a hint line when there is one.
        let missing = try run(["inspect", dir + "/missing.pt"])
        XCTAssertEqual(missing.status, 1)
        XCTAssertEqual(missing.err, "liteclip inspect: error: \(dir)/missing.pt: no such file\n")
        let notModel = try run(["zero-shot", Fixtures.golden("README.md"), Self.cat, "a", "b"])
        XCTAssertEqual(notModel.status, 1)
        let lines = notModel.err.split(separator: "\n")
        XCTAssertTrue(lines.first?.hasPrefix("liteclip zero-shot: error: \(Fixtures.golden("README.md")): ") == true, notModel.err)
        XCTAssertTrue(lines.last?.hasPrefix("hint: models are read from .lcw, .pt") == true, notModel.err)
        let convertErr = try CLITests.run("liteclip-convert", [dir + "/missing.pt", dir + "/o.lcw"])
        XCTAssertEqual(convertErr.err, "liteclip-convert: error: \(dir)/missing.pt: no such checkpoint\n")
    }
}

/// Reads a float32 `.npy` written by `NPYWriter`.
enum NPY {
    static func floats(_ path: String) throws -> [Float] {
        let npy = try Data(contentsOf: URL(fileURLWithPath: path))
        let headerLen = Int(npy[8]) | Int(npy[9]) << 8
        return npy[(10 + headerLen)...].withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }
}
