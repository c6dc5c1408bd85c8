/// ConvNeXt image tower, as timm builds `convnext_tiny` (timm/models/convnext.py: `ConvNeXt`,
/// `ConvNeXtStage`, `ConvNeXtBlock` with conv_mlp=False, `LayerNorm2d`, `NormMlpClassifierHead`),
/// with `head.fc` = Identity as in the seed. Property names mirror the checkpoint keys.
///
/// Legend: B = images, C = channels of the stage, H x W = spatial size, P = B*H*W columns.
/// Activations are channels-first planes `[C][B][H*W]`.

/// `nn.Conv2d` weights `(Cout, Cin, k, k)` and bias `(Cout)`.
struct Conv2d {
    let weight: Tensor
    let bias: Tensor

    init(_ s: WeightScope, out: Int, in cin: Int, kernel: Int) throws {
        weight = try s.tensor("weight", [out, cin, kernel, kernel])
        bias = try s.tensor("bias", [out])
    }
}

/// `nn.LayerNorm` / timm `LayerNorm2d`: weight and bias `(C)`.
struct LayerNormParams {
    let weight: Tensor
    let bias: Tensor

    init(_ s: WeightScope, _ n: Int) throws {
        weight = try s.tensor("weight", [n])
        bias = try s.tensor("bias", [n])
    }
}

/// `nn.Linear`: weight `(out, in)`, bias `(out)`.
struct Linear {
    let weight: Tensor
    let bias: Tensor

    init(_ s: WeightScope, in i: Int, out o: Int) throws {
        weight = try s.tensor("weight", [o, i])
        bias = try s.tensor("bias", [o])
    }
}

/// `blocks.N`: x + gamma * fc2(gelu(fc1(norm(conv_dw(x))))).
struct ConvNeXtBlock {
    let gamma: Tensor            // (C)
    let convDW: Conv2d           // conv_dw: (C, 1, 7, 7)
    let norm: LayerNormParams    // norm: (C)
    let fc1: Linear              // mlp.fc1: (4C, C)
    let fc2: Linear              // mlp.fc2: (C, 4C)
    /// Derived once at load: layer scale folded into fc2, `gamma * (W2 h + b2) = (gamma W2) h +
    /// gamma b2`, so the residual add is the sgemm's own accumulate (no extra pass).
    let scaledFC2Weight: Tensor  // (C, 4C)
    let scaledFC2Bias: Tensor    // (C)

    init(_ s: WeightScope, dim: Int, config c: ConvNeXtConfig) throws {
        gamma = try s.tensor("gamma", [dim])
        convDW = try Conv2d(s.child("conv_dw"), out: dim, in: 1, kernel: c.kernelSize)
        norm = try LayerNormParams(s.child("norm"), dim)
        fc1 = try Linear(s.child("mlp").child("fc1"), in: dim, out: c.mlpRatio * dim)
        fc2 = try Linear(s.child("mlp").child("fc2"), in: c.mlpRatio * dim, out: dim)
        let hidden = c.mlpRatio * dim
        scaledFC2Weight = Tensor(zeros: [dim, hidden])
        scaledFC2Bias = Tensor(zeros: [dim])
        for r in 0..<dim {
            let g = gamma.data[r]
            for k in 0..<hidden { scaledFC2Weight.data[r * hidden + k] = g * fc2.weight.data[r * hidden + k] }
            scaledFC2Bias.data[r] = g * fc2.bias.data[r]
        }
    }

    /// In place on `x` (C planes of B*H*W), using `t` (C x P) and `hidden` (4C x P) as scratch.
    func forward(_ x: UnsafeMutablePointer<Float>, dim: Int, batch: Int, h: Int, w: Int, eps: Float,
                 t: UnsafeMutablePointer<Float>, hidden: UnsafeMutablePointer<Float>) {
        let p = batch * h * w
        Kernels.depthwiseConv(x, channels: dim, batch: batch, h: h, w: w, weight: convDW.weight, bias: convDW.bias, into: t)
        Kernels.layerNormChannels(t, channels: dim, columns: p, weight: norm.weight, bias: norm.bias, eps: eps, into: t)
        let h4 = fc1.weight.shape[0]
        Kernels.gemm(fc1.weight.data, t, hidden, m: h4, n: p, k: dim)                            // (4C, P) = W1 t
        Kernels.biasGELU(hidden, rows: h4, columns: p, bias: fc1.bias)                           // + b1, GELU
        Kernels.addRowBias(x, rows: dim, columns: p, bias: scaledFC2Bias)                        // x += gamma b2
        Kernels.gemm(scaledFC2Weight.data, hidden, x, m: dim, n: p, k: h4, accumulate: true)     // x += gamma W2 h
    }
}

/// `stages.N`: optional downsample (LayerNorm2d + conv 2x2 stride 2), then blocks.
struct ConvNeXtStage {
    let downsample: (norm: LayerNormParams, conv: Conv2d)?
    let blocks: [ConvNeXtBlock]
}

public struct ConvNeXt {
    public let config: ConvNeXtConfig
    let stem: (conv: Conv2d, norm: LayerNormParams)   // stem.0 (C0, 3, 4, 4), stem.1
    let stages: [ConvNeXtStage]
    let headNorm: LayerNormParams                     // head.norm (C3)

    init(_ s: WeightScope, _ c: ConvNeXtConfig) throws {
        config = c
        let st = s.child("stem")
        stem = (try Conv2d(st.child("0"), out: c.dims[0], in: c.inChannels, kernel: c.patchSize), try LayerNormParams(st.child("1"), c.dims[0]))
        var stages: [ConvNeXtStage] = []
        for (i, (dim, depth)) in zip(c.dims, c.depths).enumerated() {
            let ss = s.child("stages").child("\(i)")
            var ds: (LayerNormParams, Conv2d)? = nil
            if i > 0 {
                let d = ss.child("downsample")
                ds = (try LayerNormParams(d.child("0"), c.dims[i - 1]), try Conv2d(d.child("1"), out: dim, in: c.dims[i - 1], kernel: 2))
            }
            let blocks = try (0..<depth).map { try ConvNeXtBlock(ss.child("blocks").child("\($0)"), dim: dim, config: c) }
            stages.append(ConvNeXtStage(downsample: ds, blocks: blocks))
        }
        self.stages = stages
        headNorm = try LayerNormParams(s.child("head").child("norm"), c.outputDim)
    }

    /// `(B, C)` row-major means of each (channel, image) plane of `[C][B][hw]`.
    static func globalAveragePool(_ x: Tensor, channels cl: Int, batch b: Int, hw: Int) -> [Float] {
        var pooled = [Float](repeating: 0, count: b * cl)
        for ch in 0..<cl { for n in 0..<b {
            let plane = x.data + (ch * b + n) * hw
            var s: Float = 0
            for j in 0..<hw { s += plane[j] }
            pooled[n * cl + ch] = s / Float(hw)
        } }
        return pooled
    }

    /// Pooled features `(B, C3)` for pixel values `(B, 3, S, S)` (NCHW, as PyTorch).
    public func forward(pixels: UnsafePointer<Float>, batch b: Int, size: Int) -> [Float] {
        let c = config
        let eps = Float(c.layerNormEps)
        var h = size, w = size
        // NCHW -> planes [Cin][B][H*W]
        var x = Tensor(zeros: [c.inChannels, b * h * w])
        for n in 0..<b { for ch in 0..<c.inChannels {
            (x.data + (ch * b + n) * h * w).update(from: pixels + (n * c.inChannels + ch) * h * w, count: h * w)
        } }
        // Stem: conv 4x4/4, LayerNorm2d.
        h /= c.patchSize; w /= c.patchSize
        var y = Tensor(zeros: [c.dims[0], b * h * w])
        Kernels.patchConv(x.data, inChannels: c.inChannels, batch: b, h: h * c.patchSize, w: w * c.patchSize, stride: c.patchSize,
                          weight: stem.conv.weight, bias: stem.conv.bias, into: y.data)
        Kernels.layerNormChannels(y.data, channels: c.dims[0], columns: b * h * w, weight: stem.norm.weight, bias: stem.norm.bias, eps: eps, into: y.data)
        x = y
        for (i, stage) in stages.enumerated() {
            let dim = c.dims[i]
            if let ds = stage.downsample {
                let cin = c.dims[i - 1]
                Kernels.layerNormChannels(x.data, channels: cin, columns: b * h * w, weight: ds.norm.weight, bias: ds.norm.bias, eps: eps, into: x.data)
                y = Tensor(zeros: [dim, b * (h / 2) * (w / 2)])
                Kernels.patchConv(x.data, inChannels: cin, batch: b, h: h, w: w, stride: 2, weight: ds.conv.weight, bias: ds.conv.bias, into: y.data)
                h /= 2; w /= 2
                x = y
            }
            let p = b * h * w
            let t = Tensor(zeros: [dim, p])
            let hidden = Tensor(zeros: [c.mlpRatio * dim, p])
            for block in stage.blocks {
                block.forward(x.data, dim: dim, batch: b, h: h, w: w, eps: eps, t: t.data, hidden: hidden.data)
            }
        }
        // Head: global average pool, then LayerNorm over channels (fc is Identity).
        let cl = c.outputDim, hw = h * w
        let pooled = Self.globalAveragePool(x, channels: cl, batch: b, hw: hw)
        var out = [Float](repeating: 0, count: b * cl)
        pooled.withUnsafeBufferPointer { pb in out.withUnsafeMutableBufferPointer { ob in
            Kernels.layerNormRows(pb.baseAddress!, rows: b, n: cl, weight: headNorm.weight, bias: headNorm.bias, eps: eps, into: ob.baseAddress!)
        } }
        return out
    }
}
