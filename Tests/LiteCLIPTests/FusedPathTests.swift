import Foundation
import XCTest
@testable import LiteCLIP
@testable import TensorIO
import TestSupport

/// ConvNeXt's fused inference path (gamma folded into fc2, bias + GELU in one pass, the residual
/// as the sgemm's accumulate) against the plain path training also runs, on weights with a
/// layer scale far from timm's 1e-6 initial value, so the MLP branch matters.
final class FusedPathTests: XCTestCase {
    func testFusedBlockEqualsPlainPath() throws {
        let dim = 8, c = ConvNeXtConfig(dims: [dim, dim, dim, dim], depths: [1, 1, 1, 1])
        var rng = SeededRNG(seed: 11)
        var tensors: [String: Checkpoint.Tensor] = [:]
        let record = ParameterSource(.record, file: "")
        _ = try ConvNeXtBlock(ParameterScope(record), dim: dim, config: c, fold: false)
        for spec in record.specs {
            let values = (0..<spec.shape.reduce(1, *)).map { _ in rng.nextFloat() * 2 - 1 }
            tensors[spec.name] = Checkpoint.Tensor(name: spec.name, dtype: .f32, shape: spec.shape, origin: "test") {
                TensorBytes(owning: values.withUnsafeBytes { Array($0) })
            }
        }
        let fused = try ConvNeXtBlock(ParameterScope(ParameterSource(.view(tensors), file: "t")), dim: dim, config: c, fold: true)
        let plain = try ConvNeXtBlock(ParameterScope(ParameterSource(.view(tensors), file: "t")), dim: dim, config: c, fold: false)
        XCTAssertNotNil(fused.folded)
        XCTAssertNil(plain.folded)
        let b = 2, h = 9, w = 11, p = b * h * w
        let input = (0..<(dim * p)).map { _ in rng.nextFloat() * 4 - 2 }
        func run(_ block: ConvNeXtBlock) -> [Float] {
            let ws = Workspace(pool: nil)
            let x = Buffer([dim, p], input)
            let scratch = ConvNeXtBlock.Scratch(t: ws.zeros([dim, p]), hidden: ws.zeros([4 * dim, p]))
            return block.forward(x, dim: dim, batch: b, h: h, w: w, eps: 1e-6, scratch: scratch, ws: ws, cache: nil).array
        }
        let a = run(fused), e = run(plain)
        let maxDiff = zip(a, e).map { abs($0 - $1) }.max() ?? .infinity
        let scale = e.map(abs).max() ?? 0
        let change = zip(e, input).map { abs($0 - $1) }.max() ?? 0
        print("fused vs plain block: max abs diff \(maxDiff), max |out| \(scale), max |out - in| \(change)")
        XCTAssertGreaterThan(change, 0.1, "the MLP branch must change the output for the comparison to mean anything")
        XCTAssertLessThanOrEqual(maxDiff, 1e-5 * max(scale, 1), "fused vs plain: max abs diff \(maxDiff)")
    }
}
