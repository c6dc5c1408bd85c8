import Foundation
import CKernels

/// GELU, exact erf form (`nn.GELU()` and BERT's "gelu"), forward beside backward, and the
/// 8-wide erf and exp they are built on.
extension Kernels {
    // MARK: - GELU (exact, erf form)

    /// `0.5 x (1 + erf(x / sqrt 2))`, in place, as `nn.GELU()` and BERT's "gelu".
    ///
    /// erf uses the rational approximation `x P(x^2) / Q(x^2)` on [-4, 4] (the same form
    /// Eigen and XLA use for float32; error about 1e-7 absolute), vectorised 8 wide.
    static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        parallelFor(count, grain: 1 << 15) { range in
            // Our C loop (AVX2 / AVX-512: the fused epilogue's arithmetic, this loop's to a few ulp) where the CPU has it.
            if useOwnGEMM && lc_gelu(x + range.lowerBound, range.count) != 0 { return }
            var i = range.lowerBound
            let raw = UnsafeMutableRawPointer(x)
            while i + 8 <= range.upperBound {
                let v = raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
                raw.storeBytes(of: geluVector(v), toByteOffset: i * 4, as: SIMD8<Float>.self)
                i += 8
            }
            while i < range.upperBound {
                x[i] = geluVector(SIMD8<Float>(repeating: x[i]))[0]
                i += 1
            }
        }
    }

    @inline(__always)
    static func geluVector(_ v: SIMD8<Float>) -> SIMD8<Float> {
        0.5 * v * (1 + erf8(v * 0.70710678118654752))
    }

    @inline(__always)
    static func erf8(_ xIn: SIMD8<Float>) -> SIMD8<Float> {
        var x = xIn
        x.replace(with: 4, where: x .> 4)
        x.replace(with: -4, where: x .< -4)
        let x2 = x * x
        var p = SIMD8<Float>(repeating: -2.72614225801306e-10)
        p = p * x2 + 2.77068142495902e-08
        p = p * x2 + -2.10102402082508e-06
        p = p * x2 + -5.69250639462346e-05
        p = p * x2 + -7.34990630326855e-04
        p = p * x2 + -2.95459980854025e-03
        p = p * x2 + -1.60960333262415e-02
        var q = SIMD8<Float>(repeating: -1.45660718464996e-05)
        q = q * x2 + -2.13374055278905e-04
        q = q * x2 + -1.68282697438203e-03
        q = q * x2 + -7.37332916720468e-03
        q = q * x2 + -1.42647390514189e-02
        return x * p / q
    }


    /// `y = gelu(x)` into a separate buffer.
    static func gelu(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        if UnsafePointer(y) != x { y.update(from: x, count: count) }
        gelu(y, count: count)
    }

    /// `y[r][j] = gelu(y[r][j] + bias[r])` over `rows x columns`, one pass.
    static func biasGELU(_ y: UnsafeMutablePointer<Float>, rows: Int, columns: Int, bias: Tensor) {
        parallelFor(rows, grain: 2) { range in
            for r in range {
                let row = y + r * columns, b = SIMD8<Float>(repeating: bias.data[r])
                let raw = UnsafeMutableRawPointer(row)
                var j = 0
                while j + 8 <= columns {
                    let v = raw.loadUnaligned(fromByteOffset: j * 4, as: SIMD8<Float>.self) + b
                    raw.storeBytes(of: geluVector(v), toByteOffset: j * 4, as: SIMD8<Float>.self)
                    j += 8
                }
                while j < columns { row[j] = geluVector(SIMD8<Float>(repeating: row[j] + bias.data[r]))[0]; j += 1 }
            }
        }
    }


    // MARK: - GELU

    /// `dx = dy * gelu'(x)`, `gelu'(x) = Phi(x) + x phi(x)`, in place on `dy`.
    static func geluBackward(_ x: UnsafePointer<Float>, _ dy: UnsafeMutablePointer<Float>, count: Int) {
        parallelFor(count, grain: 1 << 15) { range in
            if useOwnGEMM && lc_gelu_backward(x + range.lowerBound, dy + range.lowerBound, range.count) != 0 { return }
            var i = range.lowerBound
            while i + 8 <= range.upperBound {
                let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
                let g = UnsafeRawPointer(dy + i).loadUnaligned(as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(dy + i).storeBytes(of: g * geluDerivative(v), as: SIMD8<Float>.self)
                i += 8
            }
            while i < range.upperBound { dy[i] *= geluDerivative(SIMD8<Float>(repeating: x[i]))[0]; i += 1 }
        }
    }

    @inline(__always)
    static func geluDerivative(_ v: SIMD8<Float>) -> SIMD8<Float> {
        let cdf = 0.5 * (1 + erf8(v * 0.70710678118654752))
        return cdf + v * exp8(-0.5 * v * v) * 0.3989422804014327
    }

    /// `exp(x)` 8 wide (Cephes' expf: x = n ln2 + r, |r| <= ln2/2, a degree-5 polynomial for
    /// e^r, scaled by 2^n through the exponent bits); relative error ~2e-7; inputs below -87
    /// give 0.
    @inline(__always)
    static func exp8(_ xIn: SIMD8<Float>) -> SIMD8<Float> {
        var x = xIn
        x.replace(with: 88, where: x .> 88)
        let tiny = x .< -87
        x.replace(with: -87, where: tiny)
        // Round to nearest with the 1.5 * 2^23 trick (plain vector adds; the generic rounding
        // and Float -> Int32 conversions of SIMD8 go lane by lane).
        let magic = SIMD8<Float>(repeating: 12_582_912)
        let t = x * 1.44269504088896341 + magic
        let n = t - magic
        let r = x - n * 0.693359375 + n * 2.12194440e-4
        var p = SIMD8<Float>(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let er = p * r * r + r + 1
        let bits = ((unsafeBitCast(t, to: SIMD8<Int32>.self) &- 0x4B40_0000) &+ 127) &<< 23
        var out = er * unsafeBitCast(bits, to: SIMD8<Float>.self)
        out.replace(with: 0, where: tiny)
        return out
    }

}
