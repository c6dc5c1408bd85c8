import Foundation

/// Gradients of the trainable parameters, one buffer per parameter tensor (keyed by identity,
/// so a module asks `grads.of(weight)`); a frozen parameter has none and its module computes
/// no weight gradient for it.
public final class Gradients {
    public let names: [String]
    let tensors: [Tensor]
    let buffers: [Tensor?]
    private let index: [ObjectIdentifier: Int]

    init(_ parameters: [(name: String, tensor: Tensor)], trainable: (String) -> Bool) {
        names = parameters.map(\.name)
        tensors = parameters.map(\.tensor)
        buffers = parameters.map { trainable($0.name) ? Tensor(zeros: $0.tensor.shape) : nil }
        index = Dictionary(uniqueKeysWithValues: parameters.enumerated().map { (ObjectIdentifier($0.element.tensor), $0.offset) })
    }

    /// The gradient buffer of a parameter, nil when it is frozen (or not a parameter).
    func of(_ p: Tensor) -> UnsafeMutablePointer<Float>? {
        guard let i = index[ObjectIdentifier(p)] else { return nil }
        return buffers[i]?.data
    }

    public func zero() { for b in buffers { b?.data.update(repeating: 0, count: b!.count) } }

    /// A parameter's gradient by checkpoint name (nil when frozen or unknown).
    public func gradient(_ name: String) -> [Float]? {
        guard let i = names.firstIndex(of: name) else { return nil }
        return buffers[i]?.array
    }

    public var trainableCount: Int { buffers.reduce(0) { $0 + ($1?.count ?? 0) } }
}

extension ProjectionHead {
    final class Cache {
        let x: Tensor, y: Tensor, xhat: Tensor, rstd: Tensor, mask: Tensor?
        init(x: Tensor, y: Tensor, xhat: Tensor, rstd: Tensor, mask: Tensor?) { (self.x, self.y, self.xhat, self.rstd, self.mask) = (x, y, xhat, rstd, mask) }
    }

    /// `y = proj(x); out = y + ln(dropout(gelu(y)))`.
    func forwardTrain(_ input: [Float], rows: Int, dropout p: Float, rng: inout SeededRNG) -> ([Float], Cache) {
        let d = proj.weight.shape[0], n = input.count / max(rows, 1)
        let x = Tensor(zeros: [rows, n])
        input.withUnsafeBufferPointer { x.data.update(from: $0.baseAddress!, count: rows * n) }
        let y = Tensor(zeros: [rows, d]), a = Tensor(zeros: [rows, d])
        Kernels.linear(x.data, rows: rows, weight: proj.weight, bias: proj.bias, into: y.data)
        Kernels.gelu(y.data, into: a.data, count: rows * d)
        let mask = BertLayer.dropout(a, p: p, rng: &rng)
        let xhat = Tensor(zeros: [rows, d]), rstd = Tensor(zeros: [rows])
        Kernels.layerNormRowsForward(a.data, rows: rows, n: d, weight: ln.weight, bias: ln.bias, eps: 1e-5, xhat: xhat.data, rstd: rstd.data, into: a.data)
        var out = [Float](repeating: 0, count: rows * d)
        for i in 0..<(rows * d) { out[i] = y.data[i] + a.data[i] }
        return (out, Cache(x: x, y: y, xhat: xhat, rstd: rstd, mask: mask))
    }

    /// dL/dinput from dL/dout.
    func backward(_ c: Cache, _ dOut: [Float], grads: Gradients) -> [Float] {
        let rows = c.y.shape[0], d = c.y.shape[1], n = c.x.shape[1]
        let dy = Tensor(zeros: [rows, d]), da = Tensor(zeros: [rows, d])
        dOut.withUnsafeBufferPointer { g in
            dy.data.update(from: g.baseAddress!, count: rows * d)              // residual
            Kernels.layerNormRowsBackward(xhat: c.xhat.data, rstd: c.rstd.data, dy: g.baseAddress!, rows: rows, n: d, weight: ln.weight,
                                          dWeight: grads.of(ln.weight), dBias: grads.of(ln.bias), dx: da.data)
        }
        if let m = c.mask { Kernels.multiply(da.data, by: m.data, count: da.count) }
        Kernels.geluBackward(c.y.data, da.data, count: da.count)
        for i in 0..<(rows * d) { dy.data[i] += da.data[i] }
        var dx = [Float](repeating: 0, count: rows * n)
        dx.withUnsafeMutableBufferPointer { o in
            Kernels.linearBackward(x: c.x.data, dy: dy.data, rows: rows, weight: proj.weight,
                                   dWeight: grads.of(proj.weight), dBias: grads.of(proj.bias), dx: o.baseAddress!)
        }
        return dx
    }
}

/// The seed's contrastive loss and L2 normalisation, forward beside backward.
enum Contrastive {
    /// `e = y / ||y||` per row; returns e and the norms.
    static func normalize(_ y: [Float], rows: Int) -> (e: [Float], norms: [Float]) {
        let d = y.count / max(rows, 1)
        var e = y, norms = [Float](repeating: 0, count: rows)
        for r in 0..<rows {
            var s: Float = 0
            for i in 0..<d { s += y[r * d + i] * y[r * d + i] }
            norms[r] = s.squareRoot()
            let inv = 1 / norms[r]
            for i in 0..<d { e[r * d + i] *= inv }
        }
        return (e, norms)
    }

    /// `dy = (de - e (e . de)) / ||y||`.
    static func normalizeBackward(e: [Float], norms: [Float], de: [Float], rows: Int) -> [Float] {
        let d = e.count / max(rows, 1)
        var dy = de
        for r in 0..<rows {
            var dot: Float = 0
            for i in 0..<d { dot += e[r * d + i] * de[r * d + i] }
            for i in 0..<d { dy[r * d + i] = (de[r * d + i] - e[r * d + i] * dot) / norms[r] }
        }
        return dy
    }

    /// `logits = exp(s) I T^T` (B x B); loss = (CE over rows + CE over columns) / 2 with labels
    /// 0..<B. Returns the loss and dL/dlogits.
    static func loss(logits: [Float], batch b: Int) -> (loss: Float, dLogits: [Float]) {
        var d = [Float](repeating: 0, count: b * b)
        var total: Double = 0
        // Rows (image -> texts) and columns (text -> images): log-softmax, as F.cross_entropy.
        for pass in 0..<2 {
            for i in 0..<b {
                @inline(__always) func at(_ j: Int) -> Int { pass == 0 ? i * b + j : j * b + i }
                var mx = -Float.infinity
                for j in 0..<b { mx = max(mx, logits[at(j)]) }
                var sum: Float = 0
                for j in 0..<b { sum += expf(logits[at(j)] - mx) }
                let lse = mx + logf(sum)
                total += Double(lse - logits[at(i)])
                for j in 0..<b { d[at(j)] += 0.5 * (expf(logits[at(j)] - lse) - (j == i ? 1 : 0)) / Float(b) }
            }
        }
        return (Float(total / Double(b) / 2), d)
    }
}

extension LiteCLIPModel {
    /// What the step computed: loss and the logits (B x B).
    public struct StepResult { public let loss: Float; public let logits: [Float] }

    /// The trainer's knobs for one step.
    public struct StepOptions {
        /// Dropout for the projection heads and BERT (hidden and attention); 0 = evaluation mode.
        public var dropout: Float = 0.1
        public init(dropout: Float = 0.1) { self.dropout = dropout }
    }

    /// Gradients for this model's parameters; `trainable` says which are (e.g. not the frozen tower).
    public func makeGradients(trainable: (String) -> Bool = { _ in true }) -> Gradients {
        precondition(self.trainable, "load the model with trainable: true to train it")
        return Gradients(parameters, trainable: trainable)
    }

    /// One forward and backward on a batch of matching (image, caption) pairs: the seed's loss,
    /// every trainable parameter's gradient ACCUMULATED into `grads`.
    public func trainStep(pixels: [Float], batch: Int, tokens: TokenBatch, grads: Gradients, options: StepOptions,
                          rng: inout SeededRNG) -> StepResult {
        precondition(tokens.batchSize == batch, "one caption per image")
        let p = options.dropout
        let size = Int((Double(pixels.count / max(batch, 1) / config.image.inChannels)).squareRoot())
        let imageTrainable = grads.of(imageEncoder.stem.conv.weight) != nil
        let textTrainable = grads.of(textEncoder.wordEmbeddings) != nil
        // Towers: a frozen tower with nothing random in it runs the inference path (no cache).
        var imageCache: ConvNeXt.Cache? = nil
        let imgFeatures: [Float]
        if imageTrainable {
            let r = pixels.withUnsafeBufferPointer { imageEncoder.forwardTrain(pixels: $0.baseAddress!, batch: batch, size: size) }
            imgFeatures = r.0; imageCache = r.1
        } else {
            imgFeatures = imageFeatures(pixels: pixels, batch: batch)
        }
        var textCache: Bert.Cache? = nil
        let txtFeatures: [Float]
        if textTrainable || p > 0 {
            let r = textEncoder.forwardTrain(ids: tokens.ids, mask: tokens.attentionMask, batch: batch, length: tokens.length,
                                             dropout: Dropout(hidden: p, attention: p), rng: &rng)
            txtFeatures = r.0; textCache = textTrainable ? r.1 : nil
        } else {
            txtFeatures = textFeatures(tokens)
        }
        let (iy, ic) = imgProjection.forwardTrain(imgFeatures, rows: batch, dropout: p, rng: &rng)
        let (ty, tc) = txtProjection.forwardTrain(txtFeatures, rows: batch, dropout: p, rng: &rng)
        let (ie, inorm) = Contrastive.normalize(iy, rows: batch)
        let (te, tnorm) = Contrastive.normalize(ty, rows: batch)
        let d = config.projectionDim
        var sim = [Float](repeating: 0, count: batch * batch)
        Kernels.gemm(ie, te, &sim, m: batch, n: batch, k: d, transB: true)
        let scale = expf(logitScale.scalar)
        let logits = sim.map { $0 * scale }
        let (loss, dLogits) = Contrastive.loss(logits: logits, batch: batch)

        // Backward.
        if let g = grads.of(logitScale) {
            var s: Float = 0
            for i in 0..<(batch * batch) { s += dLogits[i] * logits[i] }      // d exp(s)/ds = exp(s)
            g[0] += s
        }
        let dSim = dLogits.map { $0 * scale }
        var die = [Float](repeating: 0, count: batch * d), dte = die
        Kernels.gemm(dSim, te, &die, m: batch, n: d, k: batch)                  // dI = dSim T
        Kernels.gemm(dSim, ie, &dte, m: batch, n: d, k: batch, transA: true)    // dT = dSim^T I
        let diy = Contrastive.normalizeBackward(e: ie, norms: inorm, de: die, rows: batch)
        let dty = Contrastive.normalizeBackward(e: te, norms: tnorm, de: dte, rows: batch)
        let dImgFeatures = imgProjection.backward(ic, diy, grads: grads)
        let dTxtFeatures = txtProjection.backward(tc, dty, grads: grads)
        if let imageCache { imageEncoder.backward(imageCache, dFeatures: dImgFeatures, grads: grads) }
        if let textCache { textEncoder.backward(textCache, dPooled: dTxtFeatures, grads: grads) }
        return StepResult(loss: loss, logits: logits)
    }

    /// The seed's loss in evaluation mode (no dropout, no gradients): validation.
    public func loss(pixels: [Float], batch: Int, tokens: TokenBatch) -> Float {
        let img = imageEmbeddings(pixels: pixels, batch: batch)
        let txt = textEmbeddings(tokens)
        return Contrastive.loss(logits: logits(imageEmbeddings: img, textEmbeddings: txt), batch: batch).loss
    }

    /// After an optimiser step: recompute what inference derives from the weights.
    public func weightsChanged() { imageEncoder.refreshDerived() }
}
