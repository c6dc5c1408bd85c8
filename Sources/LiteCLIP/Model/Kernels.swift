import CBLAS
import Dispatch
import Foundation

/// The numeric kernels of the forward pass: OpenBLAS sgemm for every matrix product, and
/// SIMD loops (split over both cores) for the element-wise and normalisation work.
///
/// Layouts: images are channels-first per batch, `[C][B*H*W]` ("planes"), so a pointwise
/// (1x1) layer is one sgemm `W[Cout x Cin] * X[Cin x P]` and the depthwise conv works on
/// contiguous planes; text is row-major `[B*T][H]`.
public enum Kernels {
    /// Work split over the cores: `body` gets disjoint ranges of `0..<count`.
    static func parallelFor(_ count: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
        let threads = min(ProcessInfo.processInfo.activeProcessorCount, max(1, count / max(grain, 1)))
        if threads <= 1 { body(0..<count); return }
        let chunk = (count + threads - 1) / threads
        DispatchQueue.concurrentPerform(iterations: threads) { t in
            let lo = t * chunk, hi = min(count, lo + chunk)
            if lo < hi { body(lo..<hi) }
        }
    }

    // MARK: - Matrix products

    /// OpenBLAS runs single-threaded; `gemm` splits large products over the cores itself.
    /// (OpenBLAS's own worker threads keep spinning after each call and steal the core the
    /// element-wise passes between products need; measured with perf: ~15% of the time.)
    static let singleThreadedBLAS: Void = { openblas_set_num_threads(1) }()

    /// `C[M x N] = A[M x K] * op(B) (+ C if accumulate)`, row-major; `transB` means B is stored
    /// `[N x K]` (a PyTorch Linear weight). Large products are split into one block of rows
    /// (or of columns, when M is small) per core.
    static func gemm(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>,
                     m: Int, n: Int, k: Int, transA: Bool = false, transB: Bool = false, accumulate: Bool = false) {
        _ = singleThreadedBLAS
        let lda = transA ? m : k, ldb = transB ? k : n, ldc = n
        func call(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafeMutablePointer<Float>, _ m: Int, _ n: Int) {
            cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                        Int32(m), Int32(n), Int32(k), 1, a, Int32(lda), b, Int32(ldb), accumulate ? 1 : 0, c, Int32(max(ldc, 1)))
        }
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let work = Double(m) * Double(n) * Double(k)
        if cores < 2 || work < 4e6 { call(a, b, c, m, n); return }
        if m >= 2 * cores && (m >= n || n < 64) {
            // Split rows of A and C.
            let chunk = (m + cores - 1) / cores
            DispatchQueue.concurrentPerform(iterations: cores) { t in
                let lo = t * chunk, hi = min(m, lo + chunk)
                guard lo < hi else { return }
                let aOff = transA ? a + lo : a + lo * lda
                call(aOff, b, c + lo * ldc, hi - lo, n)
            }
        } else {
            // Split columns of B and C (multiples of 16 keep the kernels' panels whole).
            let chunk = ((n + cores - 1) / cores + 15) / 16 * 16
            DispatchQueue.concurrentPerform(iterations: cores) { t in
                let lo = t * chunk, hi = min(n, lo + chunk)
                guard lo < hi else { return }
                let bOff = transB ? b + lo * ldb : b + lo
                cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                            Int32(m), Int32(hi - lo), Int32(k), 1, a, Int32(lda), bOff, Int32(ldb), accumulate ? 1 : 0, c + lo, Int32(ldc))
            }
        }
    }

    /// `Y[rows x out] = X[rows x in] * W^T + b` (nn.Linear on row-major activations).
    static func linear(_ x: UnsafePointer<Float>, rows: Int, weight: Tensor, bias: Tensor?, into y: UnsafeMutablePointer<Float>) {
        let out = weight.shape[0], inp = weight.shape[1]
        if let bias {
            for r in 0..<rows { (y + r * out).update(from: bias.data, count: out) }
        }
        gemm(x, weight.data, y, m: rows, n: out, k: inp, transB: true, accumulate: bias != nil)
    }

    /// Channels-first pointwise layer: `Y[out x P] = W[out x in] * X[in x P] + b` (bias per row).
    static func pointwise(_ x: UnsafePointer<Float>, columns p: Int, weight: Tensor, bias: Tensor, into y: UnsafeMutablePointer<Float>) {
        let out = weight.shape[0], inp = weight.shape[1]
        parallelFor(out, grain: 8) { rows in
            for r in rows { (y + r * p).update(repeating: bias.data[r], count: p) }
        }
        gemm(weight.data, x, y, m: out, n: p, k: inp, accumulate: true)
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

    /// `y[r][j] += bias[r]`.
    static func addRowBias(_ y: UnsafeMutablePointer<Float>, rows: Int, columns: Int, bias: Tensor) {
        parallelFor(rows, grain: 4) { range in
            for r in range {
                let row = y + r * columns, b = bias.data[r]
                for j in 0..<columns { row[j] += b }
            }
        }
    }

    // MARK: - Attention

    /// Scaled dot-product attention per (text, head) on row-major `[B*T][H]` q, k, v (heads are
    /// column blocks of D = H / A): `probs[bh] = softmax(q k^T / sqrt(D) + maskBias[text])`
    /// (kept, `(B*A, T, T)`), `ctx = (probs * dropMask) v`. As transformers' eager attention.
    static func attention(q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>, batch b: Int, t: Int,
                          heads: Int, hidden h: Int, maskBias: [Float], probs: UnsafeMutablePointer<Float>,
                          dropMask: UnsafePointer<Float>?, ctx: UnsafeMutablePointer<Float>) {
        let d = h / heads, scale = 1 / Float(d).squareRoot()
        parallelFor(b * heads, grain: 1) { range in
            var qh = [Float](repeating: 0, count: t * d), kh = qh, vh = qh, ch = qh
            var pd = [Float](repeating: 0, count: dropMask == nil ? 0 : t * t)
            for bh in range {
                let r = bh / heads, hd = bh % heads
                for j in 0..<t { for e in 0..<d {
                    let src = (r * t + j) * h + hd * d + e
                    qh[j * d + e] = q[src]; kh[j * d + e] = k[src]; vh[j * d + e] = v[src]
                } }
                let sp = probs + bh * t * t
                gemm(qh, kh, sp, m: t, n: t, k: d, transB: true)
                for i in 0..<t {
                    let row = sp + i * t
                    var mx = -Float.infinity
                    for j in 0..<t { row[j] = row[j] * scale + maskBias[r * t + j]; mx = max(mx, row[j]) }
                    var sum: Float = 0
                    for j in 0..<t { row[j] = expf(row[j] - mx); sum += row[j] }
                    let inv = 1 / sum
                    for j in 0..<t { row[j] *= inv }
                }
                if let m = dropMask {
                    for i in 0..<(t * t) { pd[i] = sp[i] * m[bh * t * t + i] }
                    gemm(pd, vh, &ch, m: t, n: d, k: t)
                } else {
                    gemm(sp, vh, &ch, m: t, n: d, k: t)
                }
                for j in 0..<t { for e in 0..<d { ctx[(r * t + j) * h + hd * d + e] = ch[j * d + e] } }
            }
        }
    }

    // MARK: - GELU (exact, erf form)

    /// `0.5 x (1 + erf(x / sqrt 2))`, in place, as `nn.GELU()` and BERT's "gelu".
    ///
    /// erf uses the rational approximation `x P(x^2) / Q(x^2)` on [-4, 4] (the same form
    /// Eigen and XLA use for float32; error about 1e-7 absolute), vectorised 8 wide.
    static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        parallelFor(count, grain: 1 << 15) { range in
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

    // MARK: - LayerNorm

    /// LayerNorm over the last dimension of row-major `[rows x n]`, in place or into `y`.
    /// `y = (x - mean) / sqrt(var + eps) * w + b`, biased variance, as `nn.LayerNorm`.
    /// (Training's `layerNormRowsForward` is the same pass keeping `xhat` and `rstd`.)
    static func layerNormRows(_ x: UnsafePointer<Float>, rows: Int, n: Int, weight: Tensor, bias: Tensor, eps: Float,
                              into y: UnsafeMutablePointer<Float>) {
        layerNormRowsForward(x, rows: rows, n: n, weight: weight, bias: bias, eps: eps, xhat: nil, rstd: nil, into: y)
    }

    /// LayerNorm over channels of channels-first planes `[C x P]` (timm's LayerNorm2d and the
    /// ConvNeXt block norm): for each column p, normalise x[0..<C][p]. Vectorised along p.
    static func layerNormChannels(_ x: UnsafePointer<Float>, channels c: Int, columns p: Int, weight: Tensor, bias: Tensor,
                                  eps: Float, into y: UnsafeMutablePointer<Float>) {
        layerNormChannelsForward(x, channels: c, columns: p, weight: weight, bias: bias, eps: eps, xhat: nil, rstd: nil, into: y)
    }

    // MARK: - Convolutions (channels-first planes)

    /// Depthwise k x k convolution, stride 1, zero padding k/2, per (channel, image) plane of
    /// `h x w`: `y[c][b] = conv(x[c][b], weight[c]) + bias[c]`. Planes are `[C][B][H*W]`.
    static func depthwiseConv(_ x: UnsafePointer<Float>, channels: Int, batch: Int, h: Int, w: Int,
                              weight: Tensor, bias: Tensor, into y: UnsafeMutablePointer<Float>) {
        let k = weight.shape[2], pad = k / 2
        let pw = w + 2 * pad, ph = h + 2 * pad
        parallelFor(channels * batch, grain: 1) { range in
            var padded = [Float](repeating: 0, count: ph * pw + 8)   // + 8: slack for the last 8-wide load
            padded.withUnsafeMutableBufferPointer { pbuf in
                let pp = pbuf.baseAddress!
                for plane in range {
                    let c = plane / batch
                    let src = x + plane * h * w, dst = y + plane * h * w
                    for r in 0..<h { (pp + (r + pad) * pw + pad).update(from: src + r * w, count: w) }
                    let kw = weight.data + c * k * k
                    let b = bias.data[c]
                    // Each output strip of 8 stays in a register across all k*k taps.
                    for r in 0..<h {
                        let out = dst + r * w
                        @inline(__always) func strip(_ j: Int) -> SIMD8<Float> {
                            var acc = SIMD8<Float>(repeating: b)
                            for ky in 0..<k {
                                let inp = UnsafeRawPointer(pp + (r + ky) * pw + j)
                                let wr = kw + ky * k
                                for kx in 0..<k {
                                    acc += wr[kx] * inp.loadUnaligned(fromByteOffset: kx * 4, as: SIMD8<Float>.self)
                                }
                            }
                            return acc
                        }
                        var j = 0
                        while j + 8 <= w {
                            UnsafeMutableRawPointer(out + j).storeBytes(of: strip(j), as: SIMD8<Float>.self)
                            j += 8
                        }
                        if j < w {
                            if w >= 8 {
                                // Last strip overlaps the previous one; overlapping lanes get the same values.
                                UnsafeMutableRawPointer(out + w - 8).storeBytes(of: strip(w - 8), as: SIMD8<Float>.self)
                            } else {
                                // Narrow planes (7x7): lanes past w read padding/slack and are dropped.
                                let acc = strip(0)
                                for i in 0..<w { out[i] = acc[i] }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Patchify convolution with kernel = stride = s (ConvNeXt stem and downsampling):
    /// im2col into `[Cin*s*s x B*Ho*Wo]`, then one sgemm with the weight `[Cout x Cin*s*s]`.
    /// Input planes `[Cin][B][H*W]`, output planes `[Cout][B][Ho*Wo]`.
    static func patchConv(_ x: UnsafePointer<Float>, inChannels cin: Int, batch: Int, h: Int, w: Int, stride s: Int,
                          weight: Tensor, bias: Tensor, into y: UnsafeMutablePointer<Float>) {
        let ho = h / s, wo = w / s, cols = batch * ho * wo
        let kdim = cin * s * s
        var col = [Float](repeating: 0, count: kdim * cols)
        col.withUnsafeMutableBufferPointer { cb in
            let cp = cb.baseAddress!
            patchColumns(x, inChannels: cin, batch: batch, h: h, w: w, stride: s, into: cp)
            pointwise(cp, columns: cols, weight: Tensor(shape: [weight.shape[0], kdim], sharing: weight), bias: bias, into: y)
        }
    }
}
