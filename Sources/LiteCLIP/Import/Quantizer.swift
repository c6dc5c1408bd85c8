import Foundation
import TensorIO

/// int8 weights (formats/lcw.md, "int8 weights"): every weight the model declares quantizable
/// (Linear, pointwise and patch convolutions, the word embeddings) stored as int8, symmetric, one
/// f32 scale per row (`<name>_scale`); norms, biases, layer scales, depthwise kernels, position
/// and token-type embeddings and `logit_scale` stay f32.
public enum Quantizer {
    public struct Report {
        public var input: String
        public var output: String
        /// Weights stored as int8 (each with its scales).
        public var quantized: Int
        /// Tensors kept as f32.
        public var kept: Int
        public var inputBytes: Int
        public var fileBytes: Int
    }

    /// `liteclip quantize IN.lcw OUT.lcw`: an f32 (or f16 / bf16) `.lcw` -> its int8 model. A
    /// failed run leaves no output file.
    public static func quantize(input: String, output: String) throws -> Report {
        if Exporter.sameFile(input, output) { throw ModelError(.badConfig, file: output, "output would overwrite the input") }
        let file = try LiteCLIPFile.open(input)
        guard file.metadata.quantization == nil, !file.tensors.contains(where: { $0.dtype == .i8 }) else {
            throw ModelError(.badConfig, file: input, "the model is already int8; quantize the f32 model it came from")
        }
        let (tensors, count) = int8Tensors(file.tensors, config: file.metadata.model)
        var meta = file.metadata
        meta.quantization = .init(tensors: count)
        let bytes = try LCWWriter.write(to: output, tensors: tensors, metadata: meta)
        let inputBytes = ((try? FileManager.default.attributesOfItem(atPath: input))?[.size] as? Int) ?? 0
        return Report(input: input, output: output, quantized: count, kept: tensors.count - 2 * count, inputBytes: inputBytes,
                      fileBytes: bytes)
    }

    /// The tensors of an int8 model, in order: each quantizable weight becomes its int8 values and
    /// then its scales; every other tensor f32. Values are computed as the tensors are written.
    static func int8Tensors(_ tensors: [Checkpoint.Tensor], config: LiteCLIPConfig) -> (tensors: [Checkpoint.Tensor], quantized: Int) {
        let quantizable = Set(LiteCLIPParameters.expected(for: config).filter(\.quantizable).map(\.name))
        var out: [Checkpoint.Tensor] = [], count = 0
        for t in tensors {
            let rows = t.shape.first ?? 1, columns = t.shape.dropFirst().reduce(1, *)
            @Sendable func f32() throws -> [Float] {
                let wide = DTypeConversion.convert(try t.load(), from: t.dtype, to: .f32)
                return wide.withBytes { Array($0.bindMemory(to: Float.self)) }
            }
            guard quantizable.contains(t.name), t.dtype.isFloatingPoint, t.shape.count >= 2, columns % 4 == 0 else {
                out.append(t.dtype == .f32 ? t : Checkpoint.Tensor(name: t.name, dtype: .f32, shape: t.shape, origin: t.origin) {
                    DTypeConversion.convert(try t.load(), from: t.dtype, to: .f32)
                })
                continue
            }
            count += 1
            // The writer takes the values and then the scales: quantised once, handed out in turn.
            let pair = QuantizedRows { quantizeRows(try f32(), rows: rows, columns: columns) }
            out.append(Checkpoint.Tensor(name: t.name, dtype: .i8, shape: t.shape, origin: t.origin) {
                TensorBytes(owning: try pair.get().values.withUnsafeBytes { Array($0) })
            })
            out.append(Checkpoint.Tensor(name: t.name + Strictness.scaleSuffix, dtype: .f32, shape: [rows], origin: t.origin) {
                defer { pair.release() }
                return TensorBytes(owning: try pair.get().scales.withUnsafeBytes { Array($0) })
            })
        }
        return (out, count)
    }

    /// Symmetric int8 per row: scale = max|row| / 127, value = round(w * 127 / max) (to nearest
    /// even), the same arithmetic as the activations' quantisation in the int8 product.
    static func quantizeRows(_ w: [Float], rows: Int, columns: Int) -> (values: [Int8], scales: [Float]) {
        var q = [Int8](repeating: 0, count: w.count), scales = [Float](repeating: 0, count: rows)
        for r in 0..<rows {
            var absmax: Float = 0
            for k in 0..<columns { absmax = max(absmax, abs(w[r * columns + k])) }
            let inv: Float = absmax > 0 ? 127 / absmax : 0
            scales[r] = absmax / 127
            for k in 0..<columns { q[r * columns + k] = Int8(min(max((w[r * columns + k] * inv).rounded(.toNearestOrEven), -127), 127)) }
        }
        return (q, scales)
    }
}

/// One weight's quantisation, computed on first use and shared by its values and scales tensors.
private final class QuantizedRows: @unchecked Sendable {
    private let lock = NSLock()
    private let make: () throws -> (values: [Int8], scales: [Float])
    private var made: (values: [Int8], scales: [Float])?

    init(_ make: @escaping () throws -> (values: [Int8], scales: [Float])) { self.make = make }

    func get() throws -> (values: [Int8], scales: [Float]) {
        lock.lock(); defer { lock.unlock() }
        if let made { return made }
        let m = try make()
        made = m
        return m
    }

    /// Drops the result once the scales are written (the values were written before them).
    func release() { lock.lock(); made = nil; lock.unlock() }
}
