import CKernels
import Foundation

/// Patchify convolution, kernel = stride (ConvNeXt's stem and downsampling): im2col, then the
/// pointwise product; forward beside backward.

/// `nn.Conv2d` weights `(Cout, Cin, k, k)` and bias `(Cout)` (also the depthwise conv's, Cin = 1).
struct Conv2d {
    let weight: Tensor
    let bias: Tensor

    init(_ s: ParameterScope, out: Int, in cin: Int, kernel: Int) throws {
        // Depthwise kernels (one input channel) stay f32; patch convolutions may be int8.
        weight = cin > 1 ? try s.quantizable("weight", [out, cin, kernel, kernel]) : try s.tensor("weight", [out, cin, kernel, kernel])
        bias = try s.tensor("bias", [out])
    }
}

extension Kernels {
    /// im2col into `[Cin*s*s x B*Ho*Wo]`, then one sgemm with the weight `[Cout x Cin*s*s]`.
    /// Input planes `[Cin][B][H*W]`, output planes `[Cout][B][Ho*Wo]`.
    static func patchConv(_ x: UnsafePointer<Float>, inChannels cin: Int, batch: Int, h: Int, w: Int, stride s: Int,
                          weight: Tensor, bias: Tensor, into y: UnsafeMutablePointer<Float>) {
        columnsProduct(rows: cin * s * s, columns: batch * (h / s) * (w / s), weight: weight, bias: bias, into: y) { cp in
            patchColumns(x, inChannels: cin, batch: batch, h: h, w: w, stride: s, into: cp)
        }
    }

    /// The patch conv's product from its im2col columns (`rows x columns`), which `fill` writes
    /// in full (patches tile the image: no zeroing first).
    private static func columnsProduct(rows kdim: Int, columns cols: Int, weight: Tensor, bias: Tensor, into y: UnsafeMutablePointer<Float>,
                                       fill: (UnsafeMutablePointer<Float>) -> Void) {
        let cp = UnsafeMutablePointer<Float>.allocate(capacity: max(kdim * cols, 1))
        defer { cp.deallocate() }
        fill(cp)
        pointwise(cp, columns: cols, weight: Tensor(shape: [weight.shape[0], kdim], sharing: weight), bias: bias, into: y)
    }

    /// Inference's downsampling: LayerNorm over channels (`normWeight`, `normBias`) written
    /// straight into the 2 x 2 stride-2 patch conv's columns (one C pass per output row), then
    /// the product. The same values as `layerNormChannelsForward` then `patchConv`; x is not
    /// changed. False (nothing done) where the C pass does not apply (odd sizes).
    static func normPatchConv2(_ x: UnsafePointer<Float>, inChannels cin: Int, batch: Int, h: Int, w: Int,
                               normWeight: Tensor, normBias: Tensor, eps: Float,
                               weight: Tensor, bias: Tensor, into y: UnsafeMutablePointer<Float>) -> Bool {
        guard h % 2 == 0, w % 2 == 0, w <= 1024 else { return false }
        let ho = h / 2
        columnsProduct(rows: cin * 4, columns: batch * ho * (w / 2), weight: weight, bias: bias, into: y) { cp in
            parallel(batch * ho) { u in
                _ = lc_layernorm_patchify2(x, Int32(cin), Int32(batch), Int32(h), Int32(w), normWeight.data, normBias.data, eps, cp,
                                           Int32(u / ho), Int32(u % ho))
            }
        }
        return true
    }

    // MARK: - Patchify convolution (kernel = stride)

    /// im2col for a kernel = stride = s convolution: `[Cin*s*s][B*Ho*Wo]`.
    static func patchColumns(_ x: UnsafePointer<Float>, inChannels cin: Int, batch: Int, h: Int, w: Int, stride s: Int,
                             into cp: UnsafeMutablePointer<Float>) {
        forEachPatchRow(inChannels: cin, batch: batch, h: h, w: w, stride: s) { image, column, n in
            for ox in 0..<n { cp[column + ox] = x[image + ox * s] }
        }
    }

    /// col2im: the inverse scatter (patches do not overlap, so it is a permutation).
    static func patchColumnsBackward(_ dcol: UnsafePointer<Float>, inChannels cin: Int, batch: Int, h: Int, w: Int, stride s: Int,
                                     into dx: UnsafeMutablePointer<Float>) {
        forEachPatchRow(inChannels: cin, batch: batch, h: h, w: w, stride: s) { image, column, n in
            for ox in 0..<n { dx[image + ox * s] = dcol[column + ox] }
        }
    }

    /// The index walk both share: for each column row `(ci, ky, kx)`, image and output row
    /// `(b, oy)`, the offset of the first input pixel (then every s-th), of the first column
    /// element (then contiguous), and the count Wo.
    @inline(__always)
    private static func forEachPatchRow(inChannels cin: Int, batch: Int, h: Int, w: Int, stride s: Int,
                                        _ body: (_ image: Int, _ column: Int, _ count: Int) -> Void) {
        let ho = h / s, wo = w / s, cols = batch * ho * wo
        parallelFor(cin * s * s, grain: 1) { rows in
            for row in rows {
                let ci = row / (s * s), ky = (row / s) % s, kx = row % s
                for b in 0..<batch {
                    let plane = (ci * batch + b) * h * w
                    for oy in 0..<ho { body(plane + (oy * s + ky) * w + kx, row * cols + (b * ho + oy) * wo, wo) }
                }
            }
        }
    }

    /// Patch conv backward: `dW += dy col(x)^T`, `db += rowsum(dy)`, and (when `dx` is given)
    /// `dx = col2im(W^T dy)`. `dx` may alias `x`.
    static func patchConvBackward(x: UnsafePointer<Float>, dy: UnsafePointer<Float>, inChannels cin: Int, batch: Int, h: Int, w: Int,
                                  stride s: Int, weight: Tensor, dWeight: UnsafeMutablePointer<Float>?, dBias: UnsafeMutablePointer<Float>?,
                                  dx: UnsafeMutablePointer<Float>?, ws: Workspace) {
        let cols = batch * (h / s) * (w / s), kdim = cin * s * s
        let col = ws.zeros([kdim, cols])
        patchColumns(x, inChannels: cin, batch: batch, h: h, w: w, stride: s, into: col.data)
        let dcol = dx == nil ? nil : ws.zeros([kdim, cols])
        pointwiseBackward(x: col.data, dy: dy, columns: cols, weight: Tensor(shape: [weight.shape[0], kdim], sharing: weight),
                          dWeight: dWeight, dBias: dBias, dx: dcol?.data)
        if let dx, let dcol { patchColumnsBackward(dcol.data, inChannels: cin, batch: batch, h: h, w: w, stride: s, into: dx) }
    }
}
