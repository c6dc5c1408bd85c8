import Foundation
import TensorIO

/// `liteclip verify`: runs the Swift model on a reference file's inputs and compares every
/// output with PyTorch's (formats/reference.md). When the reference names its image files and
/// they are found, it also decodes and preprocesses them itself and compares the pixel values,
/// so the image pipeline is checked too.
public struct Verification: Encodable {
    /// One compared tensor. The tolerance applies to the maximum absolute error; the maximum
    /// relative error is shown for information.
    public struct Row: Encodable {
        public let name: String
        public let count: Int
        public let maxAbs: Float
        public let maxRel: Float
        public let tolerance: Float
        public var passed: Bool { maxAbs <= tolerance }

        enum CodingKeys: String, CodingKey {
            case name, count = "values", maxAbs = "max_abs_error", maxRel = "max_rel_error", tolerance = "abs_tolerance", passed
        }
        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(name, forKey: .name)
            try c.encode(count, forKey: .count)
            try c.encode(maxAbs, forKey: .maxAbs)
            try c.encode(maxRel, forKey: .maxRel)
            try c.encode(tolerance, forKey: .tolerance)
            try c.encode(passed, forKey: .passed)
        }
    }

    public let reference: String
    public let images: Int
    public let texts: Int
    public let weightsDType: String
    public var rows: [Row]
    public var notes: [String]
    /// The image files whose decoding was checked (empty when the reference names none or they were not found).
    public var checkedImages: [String] = []
    public var passed: Bool { rows.allSatisfy(\.passed) }

    enum CodingKeys: String, CodingKey {
        case reference, images, texts, notes, rows = "outputs", passed, checkedImages = "checked_images"
        case weightsDType = "weights_dtype"
    }
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(reference, forKey: .reference)
        try c.encode(images, forKey: .images)
        try c.encode(texts, forKey: .texts)
        try c.encode(weightsDType, forKey: .weightsDType)
        try c.encode(notes, forKey: .notes)
        try c.encode(rows, forKey: .rows)
        try c.encode(checkedImages, forKey: .checkedImages)
        try c.encode(passed, forKey: .passed)
    }

    /// Tolerances for f32-stored weights (issue 3): logits 1e-4, embeddings 1e-5; features,
    /// which are not normalised, relative to their magnitude.
    public static let logitsTolerance: Float = 1e-4
    public static let embeddingTolerance: Float = 1e-5
    /// Our decoding and preprocessing give PIL + torchvision's pixels bit for bit; this leaves
    /// room only for float rounding (one 8-bit level is about 0.015 after normalisation).
    public static let pixelTolerance: Float = 1e-5

    /// Tolerances of an int8 model (issue 15) against PyTorch's f32 outputs: the quantisation
    /// error, not float rounding, so they bound agreement: each embedding within cosine 0.995 of
    /// PyTorch's, logits within 0.01 of the cosine they scale, and the same top-1 text per image.
    public enum Int8Tolerance {
        public static let features: Float = 0.05
        public static let cosine: Float = 0.005
        public static let logits: Float = 0.01
        public static let probabilities: Float = 0.01
    }

    public static func run(model: LiteCLIPModel, reference path: String) throws -> Verification {
        let ref = try SafetensorsReader.read(ByteSource(mapping: path))
        guard ref.metadata["format"] == "liteclip-reference" else {
            throw ModelError(.badConfig, file: path, "not a liteclip reference file (metadata format is \(ref.metadata["format"] ?? "missing"))")
        }
        let byName = Dictionary(ref.tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        func tensor(_ n: String) throws -> Checkpoint.Tensor {
            guard let t = byName[n] else { throw ModelError(.badConfig, file: path, "reference lacks tensor '\(n)'") }
            return t
        }
        func floats(_ n: String) throws -> [Float] {
            let t = try tensor(n)
            guard t.dtype.isFloatingPoint else { throw ModelError(.badConfig, file: path, "'\(n)' must be a float tensor, not \(t.dtype.rawValue)") }
            let b = DTypeConversion.convert(try t.load(), from: t.dtype, to: .f32)
            return b.withBytes { Array($0.bindMemory(to: Float.self)) }
        }
        func ints(_ n: String) throws -> (values: [Int32], shape: [Int]) {
            let t = try tensor(n)
            guard t.dtype == .i64 else { throw ModelError(.badConfig, file: path, "'\(n)' must be int64") }
            let v = try t.load().withBytes { b in (0..<(b.count / 8)).map { Int32(truncatingIfNeeded: Int64(littleEndian: b.loadUnaligned(fromByteOffset: $0 * 8, as: Int64.self))) } }
            return (v, t.shape)
        }
        let pixelsT = try tensor("pixel_values")
        let ps = pixelsT.shape
        guard ps.count == 4, ps[1] == model.config.image.inChannels, ps[2] == ps[3], ps[2] > 0, ps[2] % 32 == 0 else {
            throw ModelError(.badConfig, file: path, "pixel_values must be (N, \(model.config.image.inChannels), S, S) with S a multiple of 32; it is \(ps)")
        }
        let nImages = ps[0]
        let pixels = try floats("pixel_values")
        let (ids, idShape) = try ints("input_ids")
        let (mask, _) = try ints("attention_mask")
        guard idShape.count == 2 else { throw ModelError(.badConfig, file: path, "input_ids must be 2-D") }
        let tokens = TokenBatch(batchSize: idShape[0], length: idShape[1], ids: ids, attentionMask: mask,
                                lengths: (0..<idShape[0]).map { r in (0..<idShape[1]).filter { mask[r * idShape[1] + $0] != 0 }.count })

        var notes: [String] = []
        // Our tokenizer on the reference texts must give the reference ids.
        if let textsJSON = ref.metadata["texts"], let texts = try? JSONDecoder().decode([String].self, from: Data(textsJSON.utf8)),
           texts.count == tokens.batchSize {
            let mine = model.tokenizer.encodeBatch(texts, maxLength: tokens.length)
            notes.append(mine.ids == ids ? "tokenizer: ids equal PyTorch's for all \(texts.count) texts"
                                         : "tokenizer: ids DIFFER from the reference (the model is still checked on the reference ids)")
        }

        let imgFeat = model.imageFeatures(pixels: pixels, batch: nImages)
        let txtFeat = model.textFeatures(tokens)
        let imgEmb = model.projectImageFeatures(imgFeat, rows: nImages)
        let txtEmb = model.projectTextFeatures(txtFeat, rows: tokens.batchSize)
        let logits = model.logits(imageEmbeddings: imgEmb, textEmbeddings: txtEmb)
        var probs = logits
        for r in 0..<nImages { softmax(&probs, row: r, n: tokens.batchSize) }

        let featTol: (([Float]) -> Float) = { ref in 1e-4 * max(1, ref.map(abs).max() ?? 1) }
        var rows: [Row] = []
        func compare(_ name: String, _ mine: [Float], tol: ((([Float]) -> Float))) throws {
            let want = try floats(name)
            guard want.count == mine.count else {
                throw ModelError(.badConfig, file: path, "'\(name)' has \(want.count) values, the model produced \(mine.count)")
            }
            var maxAbs: Float = 0, maxRel: Float = 0
            for (a, b) in zip(mine, want) {
                let d = abs(a - b)
                maxAbs = max(maxAbs, d.isNaN ? .infinity : d)
                maxRel = max(maxRel, d / max(abs(b), 1e-6))
            }
            rows.append(Row(name: name, count: want.count, maxAbs: maxAbs, maxRel: maxRel, tolerance: tol(want)))
        }
        if model.isInt8 {
            // An int8 model against the f32 reference: agreement, not rounding (Int8Tolerance).
            notes.append("int8 weights: compared with the int8 tolerances: features \(Int8Tolerance.features) x their largest magnitude, "
                         + "embeddings 1 - cosine at most \(Int8Tolerance.cosine) per row, logits \(Int8Tolerance.logits) x exp(logit_scale), "
                         + "probabilities \(Int8Tolerance.probabilities), and every image's top-1 text the reference's")
            try compare("image_features", imgFeat, tol: { ref in Int8Tolerance.features * (ref.map(abs).max() ?? 1) })
            try compare("text_features", txtFeat, tol: { ref in Int8Tolerance.features * (ref.map(abs).max() ?? 1) })
            func cosines(_ name: String, _ label: String, _ mine: [Float]) throws {
                let want = try floats(name), d = model.config.projectionDim
                guard want.count == mine.count, d > 0 else {
                    throw ModelError(.badConfig, file: path, "'\(name)' has \(want.count) values, the model produced \(mine.count)")
                }
                var worst: Float = 0
                for r in 0..<(want.count / d) {
                    var dot: Float = 0, na: Float = 0, nb: Float = 0
                    for k in 0..<d { let a = mine[r * d + k], b = want[r * d + k]; dot += a * b; na += a * a; nb += b * b }
                    let c = dot / max((na * nb).squareRoot(), 1e-12)
                    worst = max(worst, c.isNaN ? .infinity : 1 - c)
                }
                rows.append(Row(name: label, count: want.count / d, maxAbs: worst, maxRel: 0, tolerance: Int8Tolerance.cosine))
            }
            try cosines("image_embeds", "image 1-cosine", imgEmb)      // the embeddings' worst row
            try cosines("text_embeds", "text 1-cosine", txtEmb)
            try compare("logits_per_image", logits, tol: { _ in Int8Tolerance.logits * model.logitScaleExp })
            try compare("probs_per_image", probs, tol: { _ in Int8Tolerance.probabilities })
            let want = try floats("logits_per_image"), n = tokens.batchSize
            func top1(_ x: [Float], _ r: Int) -> Int { (0..<n).max { x[r * n + $0] < x[r * n + $1] } ?? 0 }
            let differ = (0..<nImages).filter { top1(logits, $0) != top1(want, $0) }.count
            rows.append(Row(name: "top-1 differs", count: nImages, maxAbs: Float(differ), maxRel: 0, tolerance: 0))
        } else {
            // Weights stored in f16/bf16 were compared by the reference script with PyTorch
            // running the same rounded weights, so the same tolerances apply.
            try compare("image_features", imgFeat, tol: featTol)
            try compare("text_features", txtFeat, tol: featTol)
            try compare("image_embeds", imgEmb, tol: { _ in embeddingTolerance })
            try compare("text_embeds", txtEmb, tol: { _ in embeddingTolerance })
            try compare("logits_per_image", logits, tol: { _ in logitsTolerance })
            try compare("probs_per_image", probs, tol: { _ in embeddingTolerance })
        }

        // The user's image pipeline: decode and preprocess the reference's own files here.
        var checked: [String] = []
        if let json = ref.metadata["images"], let names = try? JSONDecoder().decode([String].self, from: Data(json.utf8)), names.count == nImages {
            let base = (path as NSString).deletingLastPathComponent
            let paths = names.map { $0.hasPrefix("/") || base.isEmpty ? $0 : (base as NSString).appendingPathComponent($0) }
            let missing = paths.filter { !FileManager.default.fileExists(atPath: $0) }
            if !missing.isEmpty {
                notes.append("pixels: not checked: \(missing.count) of the reference's \(paths.count) image files not found (\(missing.prefix(3).joined(separator: ", "))\(missing.count > 3 ? ", ..." : ""))")
            } else if model.preprocess.centerCrop != ps[2] {
                notes.append("pixels: not checked: the model crops to \(model.preprocess.centerCrop), the reference to \(ps[2])")
            } else {
                var mine: [Float] = []
                mine.reserveCapacity(pixels.count)
                for p in paths { mine += try model.pixelValues(imagePath: p) }
                try compare("pixel_values", mine, tol: { _ in pixelTolerance })
                let largestStd: Float = Float(model.preprocess.std.max() ?? 1)
                let halfLevel: Float = 0.5 / (255 * largestStd)
                var off = 0
                for (a, b) in zip(mine, pixels) where abs(a - b) > halfLevel { off += 1 }
                notes.append("pixels: decoded and preprocessed the \(paths.count) image files here; \(off) of \(pixels.count) values differ by more than half an 8-bit level from PyTorch's")
                checked = paths
            }
        } else {
            notes.append("pixels: not checked: the reference does not name its image files")
        }
        var v = Verification(reference: path, images: nImages, texts: tokens.batchSize,
                             weightsDType: ref.metadata["weights_dtype"] ?? "f32", rows: rows, notes: notes)
        v.checkedImages = checked
        return v
    }

}

func softmax(_ x: inout [Float], row: Int, n: Int) {
    let base = row * n
    var mx = -Float.infinity
    for j in 0..<n { mx = max(mx, x[base + j]) }
    var s: Float = 0
    for j in 0..<n { x[base + j] = expf(x[base + j] - mx); s += x[base + j] }
    for j in 0..<n { x[base + j] /= s }
}
