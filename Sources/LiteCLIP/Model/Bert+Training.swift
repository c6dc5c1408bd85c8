import Foundation

/// BERT in training: forwards that keep what the backward needs, beside the backwards.
/// Dropout as transformers places it (p = `hiddenDropout` for embeddings, attention output
/// and FFN output; `attentionDropout` on the attention probabilities), masks drawn from the
/// trainer's seeded generator; p = 0 is exactly evaluation mode.
///
/// Like inference, only the first T positions are computed (T = longest real sequence): padded
/// positions are masked out of attention (their softmax weight is exactly 0) and of pooling,
/// so they receive exactly zero gradient in PyTorch too.

struct Dropout {
    var hidden: Float
    var attention: Float
}

extension BertLayer {
    final class Cache {
        let x: Tensor                   // layer input (R, H)
        let q: Tensor, k: Tensor, v: Tensor
        let probs: Tensor               // softmax, before dropout (B*A, T, T)
        let probsMask: Tensor?          // attention dropout
        let ctx: Tensor                 // (R, H)
        let attnMask: Tensor?           // dropout after attention.output.dense
        let ln1: (xhat: Tensor, rstd: Tensor)
        let hpre: Tensor                // intermediate pre-GELU (R, I)
        let ffnMask: Tensor?
        let ln2: (xhat: Tensor, rstd: Tensor)
        init(x: Tensor, q: Tensor, k: Tensor, v: Tensor, probs: Tensor, probsMask: Tensor?, ctx: Tensor, attnMask: Tensor?,
             ln1: (Tensor, Tensor), hpre: Tensor, ffnMask: Tensor?, ln2: (Tensor, Tensor)) {
            self.x = x; self.q = q; self.k = k; self.v = v; self.probs = probs; self.probsMask = probsMask; self.ctx = ctx
            self.attnMask = attnMask; self.ln1 = ln1; self.hpre = hpre; self.ffnMask = ffnMask; self.ln2 = ln2
        }
    }

    func forwardTrain(_ x: Tensor, batch b: Int, t: Int, maskBias: [Float], config c: BertConfig,
                      dropout: Dropout, rng: inout SeededRNG) -> (Tensor, Cache) {
        let h = c.hiddenSize, heads = c.numAttentionHeads, rows = b * t, eps = Float(c.layerNormEps)
        let q = Tensor(zeros: [rows, h]), k = Tensor(zeros: [rows, h]), v = Tensor(zeros: [rows, h])
        Kernels.linear(x.data, rows: rows, weight: query.weight, bias: query.bias, into: q.data)
        Kernels.linear(x.data, rows: rows, weight: key.weight, bias: key.bias, into: k.data)
        Kernels.linear(x.data, rows: rows, weight: value.weight, bias: value.bias, into: v.data)
        let probs = Tensor(zeros: [b * heads, t, t])
        var probsMask: Tensor? = nil
        if dropout.attention > 0 {
            let m = Tensor(zeros: probs.shape)
            _ = Kernels.dropoutMask(m.data, count: m.count, p: dropout.attention, rng: &rng)
            probsMask = m
        }
        let ctx = Tensor(zeros: [rows, h])
        Kernels.attention(q: q.data, k: k.data, v: v.data, batch: b, t: t, heads: heads, hidden: h, maskBias: maskBias,
                          probs: probs.data, dropMask: probsMask?.data, ctx: ctx.data)
        // attention.output: dense, dropout, LayerNorm(. + x).
        let s1 = Tensor(zeros: [rows, h])
        Kernels.linear(ctx.data, rows: rows, weight: attentionOutput.weight, bias: attentionOutput.bias, into: s1.data)
        let attnMask = Self.dropout(s1, p: dropout.hidden, rng: &rng)
        for i in 0..<(rows * h) { s1.data[i] += x.data[i] }
        let ln1 = (Tensor(zeros: [rows, h]), Tensor(zeros: [rows]))
        let x1 = Tensor(zeros: [rows, h])
        Kernels.layerNormRowsForward(s1.data, rows: rows, n: h, weight: attentionNorm.weight, bias: attentionNorm.bias, eps: eps,
                                     xhat: ln1.0.data, rstd: ln1.1.data, into: x1.data)
        // intermediate (GELU), output dense, dropout, LayerNorm(. + x1).
        let hpre = Tensor(zeros: [rows, c.intermediateSize])
        Kernels.linear(x1.data, rows: rows, weight: intermediate.weight, bias: intermediate.bias, into: hpre.data)
        let act = Tensor(zeros: hpre.shape)
        Kernels.gelu(hpre.data, into: act.data, count: hpre.count)
        let s2 = s1   // reuse
        Kernels.linear(act.data, rows: rows, weight: output.weight, bias: output.bias, into: s2.data)
        let ffnMask = Self.dropout(s2, p: dropout.hidden, rng: &rng)
        for i in 0..<(rows * h) { s2.data[i] += x1.data[i] }
        let ln2 = (Tensor(zeros: [rows, h]), Tensor(zeros: [rows]))
        let out = x1  // reuse: x1 is recomputed from ln1 in the backward
        Kernels.layerNormRowsForward(s2.data, rows: rows, n: h, weight: outputNorm.weight, bias: outputNorm.bias, eps: eps,
                                     xhat: ln2.0.data, rstd: ln2.1.data, into: out.data)
        return (out, Cache(x: x, q: q, k: k, v: v, probs: probs, probsMask: probsMask, ctx: ctx, attnMask: attnMask,
                           ln1: ln1, hpre: hpre, ffnMask: ffnMask, ln2: ln2))
    }

    /// Applies dropout in place, returning the mask (nil when p == 0).
    static func dropout(_ x: Tensor, p: Float, rng: inout SeededRNG) -> Tensor? {
        guard p > 0 else { return nil }
        let m = Tensor(zeros: x.shape)
        _ = Kernels.dropoutMask(m.data, count: m.count, p: p, rng: &rng)
        Kernels.multiply(x.data, by: m.data, count: x.count)
        return m
    }

    /// dL/dx from dL/dout; accumulates the layer's weight gradients.
    func backward(_ cache: Cache, _ dOut: Tensor, batch b: Int, t: Int, config c: BertConfig, grads: Gradients) -> Tensor {
        let h = c.hiddenSize, heads = c.numAttentionHeads, d = h / heads, rows = b * t, inter = c.intermediateSize
        // output.LayerNorm: ds2 = d(o + x1).
        let ds2 = Tensor(zeros: [rows, h])
        Kernels.layerNormRowsBackward(xhat: cache.ln2.xhat.data, rstd: cache.ln2.rstd.data, dy: dOut.data, rows: rows, n: h,
                                      weight: outputNorm.weight, dWeight: grads.of(outputNorm.weight), dBias: grads.of(outputNorm.bias), dx: ds2.data)
        let dx1 = Tensor(zeros: [rows, h])
        dx1.data.update(from: ds2.data, count: rows * h)                    // residual into x1
        if let m = cache.ffnMask { Kernels.multiply(ds2.data, by: m.data, count: ds2.count) }
        let act = Tensor(zeros: [rows, inter])
        Kernels.gelu(cache.hpre.data, into: act.data, count: act.count)
        let dact = Tensor(zeros: [rows, inter])
        Kernels.linearBackward(x: act.data, dy: ds2.data, rows: rows, weight: output.weight,
                               dWeight: grads.of(output.weight), dBias: grads.of(output.bias), dx: dact.data)
        Kernels.geluBackward(cache.hpre.data, dact.data, count: dact.count)
        let x1 = act   // reuse (R, I) >= (R, H)
        Kernels.affineRows(cache.ln1.xhat.data, rows: rows, n: h, weight: attentionNorm.weight, bias: attentionNorm.bias, into: x1.data)
        Kernels.linearBackward(x: x1.data, dy: dact.data, rows: rows, weight: intermediate.weight,
                               dWeight: grads.of(intermediate.weight), dBias: grads.of(intermediate.bias), dx: dx1.data, accumulateInput: true)
        // attention.output.LayerNorm: ds1 = d(attn + x).
        let ds1 = ds2
        Kernels.layerNormRowsBackward(xhat: cache.ln1.xhat.data, rstd: cache.ln1.rstd.data, dy: dx1.data, rows: rows, n: h,
                                      weight: attentionNorm.weight, dWeight: grads.of(attentionNorm.weight), dBias: grads.of(attentionNorm.bias), dx: ds1.data)
        let dx = Tensor(zeros: [rows, h])
        dx.data.update(from: ds1.data, count: rows * h)                     // residual into x
        if let m = cache.attnMask { Kernels.multiply(ds1.data, by: m.data, count: ds1.count) }
        let dctx = dx1  // reuse
        Kernels.linearBackward(x: cache.ctx.data, dy: ds1.data, rows: rows, weight: attentionOutput.weight,
                               dWeight: grads.of(attentionOutput.weight), dBias: grads.of(attentionOutput.bias), dx: dctx.data)
        // Attention per (text, head).
        let dq = Tensor(zeros: [rows, h]), dk = Tensor(zeros: [rows, h]), dv = Tensor(zeros: [rows, h])
        let scale = 1 / Float(d).squareRoot()
        Kernels.parallelFor(b * heads, grain: 1) { range in
            var qh = [Float](repeating: 0, count: t * d), kh = qh, vh = qh, dch = qh, dqh = qh, dkh = qh, dvh = qh
            var pd = [Float](repeating: 0, count: t * t), dp = pd
            for bh in range {
                let r = bh / heads, hd = bh % heads
                for j in 0..<t { for e in 0..<d {
                    let src = (r * t + j) * h + hd * d + e
                    qh[j * d + e] = cache.q.data[src]; kh[j * d + e] = cache.k.data[src]; vh[j * d + e] = cache.v.data[src]
                    dch[j * d + e] = dctx.data[src]
                } }
                let p = cache.probs.data + bh * t * t
                let m = cache.probsMask.map { $0.data + bh * t * t }
                if let m { for i in 0..<(t * t) { pd[i] = p[i] * m[i] } } else { for i in 0..<(t * t) { pd[i] = p[i] } }
                Kernels.gemm(pd, dch, &dvh, m: t, n: d, k: t, transA: true)          // dv = pd^T dctx
                Kernels.gemm(dch, vh, &dp, m: t, n: t, k: d, transB: true)           // dpd = dctx v^T
                if let m { for i in 0..<(t * t) { dp[i] *= m[i] } }
                for i in 0..<t {                                                       // softmax backward, * scale
                    var s: Float = 0
                    for j in 0..<t { s += dp[i * t + j] * p[i * t + j] }
                    for j in 0..<t { dp[i * t + j] = p[i * t + j] * (dp[i * t + j] - s) * scale }
                }
                Kernels.gemm(dp, kh, &dqh, m: t, n: d, k: t)                          // dq = ds k
                Kernels.gemm(dp, qh, &dkh, m: t, n: d, k: t, transA: true)            // dk = ds^T q
                for j in 0..<t { for e in 0..<d {
                    let dst = (r * t + j) * h + hd * d + e
                    dq.data[dst] = dqh[j * d + e]; dk.data[dst] = dkh[j * d + e]; dv.data[dst] = dvh[j * d + e]
                } }
            }
        }
        for (lin, g) in [(query, dq), (key, dk), (value, dv)] {
            Kernels.linearBackward(x: cache.x.data, dy: g.data, rows: rows, weight: lin.weight,
                                   dWeight: grads.of(lin.weight), dBias: grads.of(lin.bias), dx: dx.data, accumulateInput: true)
        }
        return dx
    }
}

extension Bert {
    final class Cache {
        let b: Int, t: Int, l: Int
        let ids: [Int32], mask: [Int32]
        let emb: (xhat: Tensor, rstd: Tensor)
        let embMask: Tensor?
        var layers: [BertLayer.Cache]
        let counts: [Float]
        init(b: Int, t: Int, l: Int, ids: [Int32], mask: [Int32], emb: (Tensor, Tensor), embMask: Tensor?, layers: [BertLayer.Cache], counts: [Float]) {
            self.b = b; self.t = t; self.l = l; self.ids = ids; self.mask = mask; self.emb = emb; self.embMask = embMask
            self.layers = layers; self.counts = counts
        }
    }

    func forwardTrain(ids: [Int32], mask: [Int32], batch b: Int, length l: Int, dropout: Dropout, rng: inout SeededRNG) -> ([Float], Cache) {
        let c = config, h = c.hiddenSize, eps = Float(c.layerNormEps)
        var t = 0
        for r in 0..<b { for j in 0..<l where mask[r * l + j] != 0 { t = max(t, j + 1) } }
        t = max(t, 1)
        let rows = b * t
        let e = Tensor(zeros: [rows, h])
        for r in 0..<b { for j in 0..<t {
            let id = Int(min(max(ids[r * l + j], 0), Int32(c.vocabSize - 1)))
            let pos = min(j, c.maxPositionEmbeddings - 1)
            let dst = (r * t + j) * h
            for k in 0..<h { e.data[dst + k] = wordEmbeddings.data[id * h + k] + tokenTypeEmbeddings.data[k] + positionEmbeddings.data[pos * h + k] }
        } }
        let emb = (Tensor(zeros: [rows, h]), Tensor(zeros: [rows]))
        var x = Tensor(zeros: [rows, h])
        Kernels.layerNormRowsForward(e.data, rows: rows, n: h, weight: embeddingsNorm.weight, bias: embeddingsNorm.bias, eps: eps,
                                     xhat: emb.0.data, rstd: emb.1.data, into: x.data)
        let embMask = BertLayer.dropout(x, p: dropout.hidden, rng: &rng)
        var bias = [Float](repeating: 0, count: b * t)
        for r in 0..<b { for j in 0..<t where mask[r * l + j] == 0 { bias[r * t + j] = -Float.greatestFiniteMagnitude } }
        var caches: [BertLayer.Cache] = []
        for layer in layers {
            let (out, lc) = layer.forwardTrain(x, batch: b, t: t, maskBias: bias, config: c, dropout: dropout, rng: &rng)
            caches.append(lc)
            x = out
        }
        var pooled = [Float](repeating: 0, count: b * h), counts = [Float](repeating: 0, count: b)
        for r in 0..<b {
            var n: Float = 0
            for j in 0..<t where mask[r * l + j] != 0 {
                n += 1
                for k in 0..<h { pooled[r * h + k] += x.data[(r * t + j) * h + k] }
            }
            counts[r] = max(n, 1e-9)
            for k in 0..<h { pooled[r * h + k] /= counts[r] }
        }
        return (pooled, Cache(b: b, t: t, l: l, ids: ids, mask: mask, emb: emb, embMask: embMask, layers: caches, counts: counts))
    }

    /// Accumulates every (trainable) weight's gradient from dL/dpooled `(B, H)`.
    func backward(_ cache: Cache, dPooled: [Float], grads: Gradients) {
        let c = config, h = c.hiddenSize, b = cache.b, t = cache.t, l = cache.l, rows = b * t
        var dx = Tensor(zeros: [rows, h])
        for r in 0..<b { for j in 0..<t where cache.mask[r * l + j] != 0 {
            for k in 0..<h { dx.data[(r * t + j) * h + k] = dPooled[r * h + k] / cache.counts[r] }
        } }
        for i in stride(from: layers.count - 1, through: 0, by: -1) {
            dx = layers[i].backward(cache.layers[i], dx, batch: b, t: t, config: c, grads: grads)
            cache.layers.removeLast()
        }
        if let m = cache.embMask { Kernels.multiply(dx.data, by: m.data, count: dx.count) }
        Kernels.layerNormRowsBackward(xhat: cache.emb.xhat.data, rstd: cache.emb.rstd.data, dy: dx.data, rows: rows, n: h,
                                      weight: embeddingsNorm.weight, dWeight: grads.of(embeddingsNorm.weight), dBias: grads.of(embeddingsNorm.bias), dx: dx.data)
        let dw = grads.of(wordEmbeddings), dp = grads.of(positionEmbeddings), dt = grads.of(tokenTypeEmbeddings)
        for r in 0..<b { for j in 0..<t {
            let g = dx.data + (r * t + j) * h
            if let dw {
                let id = Int(min(max(cache.ids[r * l + j], 0), Int32(c.vocabSize - 1)))
                for k in 0..<h { dw[id * h + k] += g[k] }
            }
            if let dp { let pos = min(j, c.maxPositionEmbeddings - 1); for k in 0..<h { dp[pos * h + k] += g[k] } }
            if let dt { for k in 0..<h { dt[k] += g[k] } }
        } }
    }
}
