import Foundation
import TensorIO

/// `liteclip verify`: runs the Swift model on a reference file's inputs and compares every
/// output with PyTorch's (formats/reference.md).
public struct Verification {
    public struct Row {
        public let name: String
        public let count: Int
        public let maxAbs: Float
        public let maxRel: Float
        public let tolerance: Float
        public var passed: Bool { maxAbs <= tolerance }
    }

    public let reference: String
    public let images: Int
    public let texts: Int
    public let weightsDType: String
    public var rows: [Row]
    public var notes: [String]
    public var passed: Bool { rows.allSatisfy(\.passed) }

    /// Tolerances for f32-stored weights (issue 3): logits 1e-4, embeddings 1e-5; features,
    /// which are not normalised, relative to their magnitude.
    public static let logitsTolerance: Float = 1e-4
    public static let embeddingTolerance: Float = 1e-5

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
        // Weights stored in f16/bf16 were compared by the reference script with PyTorch
        // running the same rounded weights, so the same tolerances apply.
        try compare("image_features", imgFeat, tol: featTol)
        try compare("text_features", txtFeat, tol: featTol)
        try compare("image_embeds", imgEmb, tol: { _ in embeddingTolerance })
        try compare("text_embeds", txtEmb, tol: { _ in embeddingTolerance })
        try compare("logits_per_image", logits, tol: { _ in logitsTolerance })
        try compare("probs_per_image", probs, tol: { _ in embeddingTolerance })
        return Verification(reference: path, images: nImages, texts: tokens.batchSize,
                            weightsDType: ref.metadata["weights_dtype"] ?? "f32", rows: rows, notes: notes)
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
