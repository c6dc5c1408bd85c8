/// BERT text tower, as transformers' `BertModel` (models/bert/modeling_bert.py: BertEmbeddings,
/// BertSelfAttention, BertSelfOutput, BertIntermediate, BertOutput), followed by the seed's
/// masked mean pooling. Property names mirror the checkpoint keys. One forward serves inference
/// and training: given a cache it keeps what the backward needs. Dropout as transformers places
/// it (the workspace's hidden p for embeddings, attention output and FFN output; its attention p
/// on the probabilities); p = 0 is evaluation mode exactly.
///
/// Legend: B = texts, T = tokens computed (the longest real sequence in the batch; padded
/// positions are masked out of attention and pooling, so they cannot change real outputs and
/// receive exactly zero gradient in PyTorch too), R = B*T rows, H = hidden, I = intermediate,
/// A = heads, D = H / A.

/// `encoder.layer.N`.
struct BertLayer {
    let query: Linear, key: Linear, value: Linear   // attention.self.{query,key,value}: (H, H)
    let attentionOutput: Linear                      // attention.output.dense: (H, H)
    let attentionNorm: LayerNorm                     // attention.output.LayerNorm
    let intermediate: Linear                         // intermediate.dense: (I, H)
    let output: Linear                               // output.dense: (H, I)
    let outputNorm: LayerNorm                        // output.LayerNorm

    init(_ s: ParameterScope, _ c: BertConfig) throws {
        let h = c.hiddenSize
        let att = s.child("attention")
        query = try Linear(att.child("self").child("query"), in: h, out: h)
        key = try Linear(att.child("self").child("key"), in: h, out: h)
        value = try Linear(att.child("self").child("value"), in: h, out: h)
        attentionOutput = try Linear(att.child("output").child("dense"), in: h, out: h)
        attentionNorm = try LayerNorm(att.child("output").child("LayerNorm"), h)
        intermediate = try Linear(s.child("intermediate").child("dense"), in: h, out: c.intermediateSize)
        output = try Linear(s.child("output").child("dense"), in: c.intermediateSize, out: h)
        outputNorm = try LayerNorm(s.child("output").child("LayerNorm"), h)
    }

    final class Cache {
        var x: Buffer?                   // layer input (R, H)
        var q: Buffer?, k: Buffer?, v: Buffer?
        var probs: Buffer?               // softmax, before dropout (B*A, T, T)
        var probsMask: Buffer?           // attention dropout
        var ctx: Buffer?                 // (R, H)
        var attnMask: Buffer?            // dropout after attention.output.dense
        var ln1: (xhat: Buffer, rstd: Buffer)?
        var hpre: Buffer?                // intermediate pre-GELU (R, I)
        var ffnMask: Buffer?
        var ln2: (xhat: Buffer, rstd: Buffer)?
    }

    /// Buffers every layer reuses at inference (a cache keeps its own instead).
    struct Scratch {
        let q: Buffer, k: Buffer, v: Buffer, ctx: Buffer, tmp: Buffer   // (R, H)
        let inter: Buffer                                                // (R, I)
        let scores: Buffer                                               // (B*A, T, T)
    }

    /// In place on `x` at inference; into new buffers when a cache records.
    func forward(_ x: Buffer, batch b: Int, t: Int, maskBias: [Float], config c: BertConfig, scratch: Scratch?, ws: Workspace,
                 cache: Cache?) -> Buffer {
        let h = c.hiddenSize, heads = c.numAttentionHeads, rows = b * t, eps = Float(c.layerNormEps), keep = cache != nil
        let q = ws.reuse(scratch?.q, [rows, h]), k = ws.reuse(scratch?.k, [rows, h]), v = ws.reuse(scratch?.v, [rows, h])
        Kernels.linear(x.data, rows: rows, weight: query.weight, bias: query.bias, into: q.data)
        Kernels.linear(x.data, rows: rows, weight: key.weight, bias: key.bias, into: k.data)
        Kernels.linear(x.data, rows: rows, weight: value.weight, bias: value.bias, into: v.data)
        let probs = ws.reuse(scratch?.scores, [b * heads, t, t])
        let probsMask = ws.dropoutMask(probs.shape, p: ws.attentionDropout)
        let ctx = ws.reuse(scratch?.ctx, [rows, h])
        Kernels.attention(q: q.data, k: k.data, v: v.data, batch: b, t: t, heads: heads, hidden: h, maskBias: maskBias,
                          probs: probs.data, dropMask: probsMask?.data, ctx: ctx.data)
        // attention.output: dense, dropout, LayerNorm(. + x).
        let s1 = ws.reuse(scratch?.tmp, [rows, h])
        Kernels.linear(ctx.data, rows: rows, weight: attentionOutput.weight, bias: attentionOutput.bias, into: s1.data)
        let attnMask = ws.dropout(s1, p: ws.hiddenDropout)
        for i in 0..<(rows * h) { s1.data[i] += x.data[i] }
        let ln1 = keep ? (ws.zeros([rows, h]), ws.zeros([rows])) : nil
        let x1 = keep ? ws.zeros([rows, h]) : x
        Kernels.layerNormRowsForward(s1.data, rows: rows, n: h, weight: attentionNorm.weight, bias: attentionNorm.bias, eps: eps,
                                     xhat: ln1?.0.data, rstd: ln1?.1.data, into: x1.data)
        // intermediate (GELU), output dense, dropout, LayerNorm(. + x1).
        let hpre = ws.reuse(scratch?.inter, [rows, c.intermediateSize])
        Kernels.linear(x1.data, rows: rows, weight: intermediate.weight, bias: intermediate.bias, into: hpre.data)
        let act = keep ? ws.zeros(hpre.shape) : hpre                     // in place at inference
        Kernels.gelu(hpre.data, into: act.data, count: hpre.count)
        let s2 = s1
        Kernels.linear(act.data, rows: rows, weight: output.weight, bias: output.bias, into: s2.data)
        let ffnMask = ws.dropout(s2, p: ws.hiddenDropout)
        for i in 0..<(rows * h) { s2.data[i] += x1.data[i] }
        let ln2 = keep ? (ws.zeros([rows, h]), ws.zeros([rows])) : nil
        let out = x1   // x1 is recomputed from ln1 in the backward
        Kernels.layerNormRowsForward(s2.data, rows: rows, n: h, weight: outputNorm.weight, bias: outputNorm.bias, eps: eps,
                                     xhat: ln2?.0.data, rstd: ln2?.1.data, into: out.data)
        if let cache {
            (cache.x, cache.q, cache.k, cache.v, cache.probs, cache.probsMask, cache.ctx) = (x, q, k, v, probs, probsMask, ctx)
            (cache.attnMask, cache.ln1, cache.hpre, cache.ffnMask, cache.ln2) = (attnMask, ln1, hpre, ffnMask, ln2)
        }
        return out
    }

    /// dL/dx from dL/dout; accumulates the layer's weight gradients.
    func backward(_ cache: Cache, _ dOut: Buffer, batch b: Int, t: Int, config c: BertConfig, grads: Gradients, ws: Workspace) -> Buffer {
        guard let x = cache.x, let q = cache.q, let k = cache.k, let v = cache.v, let probs = cache.probs, let ctx = cache.ctx,
              let ln1 = cache.ln1, let hpre = cache.hpre, let ln2 = cache.ln2 else { preconditionFailure("backward without a forward cache") }
        let h = c.hiddenSize, heads = c.numAttentionHeads, rows = b * t, inter = c.intermediateSize
        // output.LayerNorm: ds2 = d(o + x1).
        let ds2 = ws.zeros([rows, h])
        Kernels.layerNormRowsBackward(xhat: ln2.xhat.data, rstd: ln2.rstd.data, dy: dOut.data, rows: rows, n: h,
                                      weight: outputNorm.weight, dWeight: grads.of(outputNorm.weight), dBias: grads.of(outputNorm.bias), dx: ds2.data)
        let dx1 = ws.zeros([rows, h])
        dx1.data.update(from: ds2.data, count: rows * h)                    // residual into x1
        if let m = cache.ffnMask { Kernels.multiply(ds2.data, by: m.data, count: ds2.count) }
        let act = ws.zeros([rows, inter])
        Kernels.gelu(hpre.data, into: act.data, count: act.count)
        let dact = ws.zeros([rows, inter])
        Kernels.linearBackward(x: act.data, dy: ds2.data, rows: rows, weight: output.weight,
                               dWeight: grads.of(output.weight), dBias: grads.of(output.bias), dx: dact.data)
        Kernels.geluBackward(hpre.data, dact.data, count: dact.count)
        let x1 = act   // reuse (R, I) >= (R, H)
        Kernels.affineRows(ln1.xhat.data, rows: rows, n: h, weight: attentionNorm.weight, bias: attentionNorm.bias, into: x1.data)
        Kernels.linearBackward(x: x1.data, dy: dact.data, rows: rows, weight: intermediate.weight,
                               dWeight: grads.of(intermediate.weight), dBias: grads.of(intermediate.bias), dx: dx1.data, accumulateInput: true)
        // attention.output.LayerNorm: ds1 = d(attn + x).
        let ds1 = ds2
        Kernels.layerNormRowsBackward(xhat: ln1.xhat.data, rstd: ln1.rstd.data, dy: dx1.data, rows: rows, n: h,
                                      weight: attentionNorm.weight, dWeight: grads.of(attentionNorm.weight), dBias: grads.of(attentionNorm.bias), dx: ds1.data)
        let dx = ws.zeros([rows, h])
        dx.data.update(from: ds1.data, count: rows * h)                     // residual into x
        if let m = cache.attnMask { Kernels.multiply(ds1.data, by: m.data, count: ds1.count) }
        let dctx = dx1  // reuse
        Kernels.linearBackward(x: ctx.data, dy: ds1.data, rows: rows, weight: attentionOutput.weight,
                               dWeight: grads.of(attentionOutput.weight), dBias: grads.of(attentionOutput.bias), dx: dctx.data)
        let dq = ws.zeros([rows, h]), dk = ws.zeros([rows, h]), dv = ws.zeros([rows, h])
        Kernels.attentionBackward(q: q.data, k: k.data, v: v.data, probs: probs.data, dropMask: cache.probsMask?.data, dctx: dctx.data,
                                  batch: b, t: t, heads: heads, hidden: h, dq: dq.data, dk: dk.data, dv: dv.data)
        for (lin, g) in [(query, dq), (key, dk), (value, dv)] {
            Kernels.linearBackward(x: x.data, dy: g.data, rows: rows, weight: lin.weight,
                                   dWeight: grads.of(lin.weight), dBias: grads.of(lin.bias), dx: dx.data, accumulateInput: true)
        }
        return dx
    }
}

public struct Bert: Sendable {
    public let config: BertConfig
    let wordEmbeddings: Tensor         // embeddings.word_embeddings: (V, H)
    let positionEmbeddings: Tensor     // embeddings.position_embeddings: (P, H)
    let tokenTypeEmbeddings: Tensor    // embeddings.token_type_embeddings: (2, H)
    let embeddingsNorm: LayerNorm      // embeddings.LayerNorm
    let layers: [BertLayer]            // encoder.layer.N
    /// pooler.dense (CLS dense + tanh): unused by mean pooling; optional in a checkpoint, kept
    /// when present so the weights can go back to PyTorch.
    let pooler: Linear?

    init(_ s: ParameterScope, _ c: BertConfig) throws {
        config = c
        let h = c.hiddenSize
        let e = s.child("embeddings")
        wordEmbeddings = try e.child("word_embeddings").quantizable("weight", [c.vocabSize, h])
        positionEmbeddings = try e.child("position_embeddings").tensor("weight", [c.maxPositionEmbeddings, h])
        tokenTypeEmbeddings = try e.child("token_type_embeddings").tensor("weight", [c.typeVocabSize, h])
        embeddingsNorm = try LayerNorm(e.child("LayerNorm"), h)
        e.ignorable("position_ids")    // a buffer older transformers saved
        layers = try (0..<c.numHiddenLayers).map { try BertLayer(s.child("encoder").child("layer").child("\($0)"), c) }
        pooler = try s.optional("pooler") { try Linear($0.child("dense"), in: h, out: h) }
    }

    final class Cache {
        var b = 0, t = 0, l = 0
        var ids: [Int32] = [], mask: [Int32] = []
        var emb: (xhat: Buffer, rstd: Buffer)?
        var embMask: Buffer?
        var layers: [BertLayer.Cache] = []
        var counts: [Float] = []
    }

    /// Mean-pooled last hidden state `(B, H)` for token ids `(B, L)` with attention mask.
    func forward(ids: [Int32], mask: [Int32], batch b: Int, length l: Int, ws: Workspace, cache: Cache?) -> Buffer {
        let c = config, h = c.hiddenSize, heads = c.numAttentionHeads, eps = Float(c.layerNormEps)
        // Compute only up to the longest real sequence (exact; see the legend).
        var t = 0
        for r in 0..<b { for j in 0..<l where mask[r * l + j] != 0 { t = max(t, j + 1) } }
        t = max(t, 1)
        let rows = b * t
        var x = ws.zeros([rows, h])
        Kernels.bertEmbedding(ids: ids, batch: b, length: l, t: t, word: wordEmbeddings, position: positionEmbeddings,
                              tokenType: tokenTypeEmbeddings, into: x.data)
        let emb = cache.map { _ in (ws.zeros([rows, h]), ws.zeros([rows])) }
        Kernels.layerNormRowsForward(x.data, rows: rows, n: h, weight: embeddingsNorm.weight, bias: embeddingsNorm.bias, eps: eps,
                                     xhat: emb?.0.data, rstd: emb?.1.data, into: x.data)
        let embMask = ws.dropout(x, p: ws.hiddenDropout)
        // Additive mask: 0 for real tokens, float32's lowest for padding (as transformers).
        var bias = [Float](repeating: 0, count: b * t)
        for r in 0..<b { for j in 0..<t where mask[r * l + j] == 0 { bias[r * t + j] = -Float.greatestFiniteMagnitude } }
        let scratch = cache != nil ? nil : BertLayer.Scratch(
            q: ws.zeros([rows, h]), k: ws.zeros([rows, h]), v: ws.zeros([rows, h]), ctx: ws.zeros([rows, h]), tmp: ws.zeros([rows, h]),
            inter: ws.zeros([rows, c.intermediateSize]), scores: ws.zeros([b * heads, t, t]))
        var caches: [BertLayer.Cache] = []
        for layer in layers {
            let lc = cache.map { _ in BertLayer.Cache() }
            x = layer.forward(x, batch: b, t: t, maskBias: bias, config: c, scratch: scratch, ws: ws, cache: lc)
            if let lc { caches.append(lc) }
        }
        // The seed's mean pooling: sum(h * mask) / clamp(sum(mask), 1e-9).
        let pooled = ws.zeros([b, h])
        let counts = Kernels.maskedMeanPool(x.data, mask: mask, batch: b, length: l, t: t, hidden: h, into: pooled.data)
        if let cache {
            (cache.b, cache.t, cache.l, cache.ids, cache.mask) = (b, t, l, ids, mask)
            (cache.emb, cache.embMask, cache.layers, cache.counts) = (emb, embMask, caches, counts)
        }
        return pooled
    }

    /// Accumulates every (trainable) weight's gradient from dL/dpooled `(B, H)`.
    func backward(_ cache: Cache, dPooled: Buffer, grads: Gradients, ws: Workspace) {
        guard let emb = cache.emb else { preconditionFailure("backward without a forward cache") }
        let c = config, h = c.hiddenSize, b = cache.b, t = cache.t, l = cache.l, rows = b * t
        var dx = ws.zeros([rows, h])
        Kernels.maskedMeanPoolBackward(dPooled.data, counts: cache.counts, mask: cache.mask, batch: b, length: l, t: t, hidden: h, dx: dx.data)
        for i in stride(from: layers.count - 1, through: 0, by: -1) {
            dx = layers[i].backward(cache.layers[i], dx, batch: b, t: t, config: c, grads: grads, ws: ws)
            cache.layers.removeLast()                           // release the layer's activations
        }
        if let m = cache.embMask { Kernels.multiply(dx.data, by: m.data, count: dx.count) }
        Kernels.layerNormRowsBackward(xhat: emb.xhat.data, rstd: emb.rstd.data, dy: dx.data, rows: rows, n: h,
                                      weight: embeddingsNorm.weight, dWeight: grads.of(embeddingsNorm.weight), dBias: grads.of(embeddingsNorm.bias), dx: dx.data)
        Kernels.bertEmbeddingBackward(ids: cache.ids, batch: b, length: l, t: t, word: wordEmbeddings, position: positionEmbeddings,
                                      dx: dx.data, dWord: grads.of(wordEmbeddings), dPosition: grads.of(positionEmbeddings),
                                      dTokenType: grads.of(tokenTypeEmbeddings))
    }
}
