import Foundation

/// BERT text tower, as transformers' `BertModel` (models/bert/modeling_bert.py: BertEmbeddings,
/// BertSelfAttention, BertSelfOutput, BertIntermediate, BertOutput), followed by the seed's
/// masked mean pooling. Property names mirror the checkpoint keys.
///
/// Legend: B = texts, T = tokens computed (the longest real sequence in the batch; padded
/// positions are masked out of attention and pooling, so they cannot change real outputs),
/// H = hidden, I = intermediate, A = heads, D = H / A.

struct BertLayer {
    let query: Linear, key: Linear, value: Linear   // attention.self.{query,key,value}: (H, H)
    let attentionOutput: Linear                      // attention.output.dense: (H, H)
    let attentionNorm: LayerNormParams               // attention.output.LayerNorm
    let intermediate: Linear                         // intermediate.dense: (I, H)
    let output: Linear                               // output.dense: (H, I)
    let outputNorm: LayerNormParams                  // output.LayerNorm

    init(_ s: WeightScope, _ c: BertConfig) throws {
        let h = c.hiddenSize
        let att = s.child("attention")
        query = try Linear(att.child("self").child("query"), in: h, out: h)
        key = try Linear(att.child("self").child("key"), in: h, out: h)
        value = try Linear(att.child("self").child("value"), in: h, out: h)
        attentionOutput = try Linear(att.child("output").child("dense"), in: h, out: h)
        attentionNorm = try LayerNormParams(att.child("output").child("LayerNorm"), h)
        intermediate = try Linear(s.child("intermediate").child("dense"), in: h, out: c.intermediateSize)
        output = try Linear(s.child("output").child("dense"), in: c.intermediateSize, out: h)
        outputNorm = try LayerNormParams(s.child("output").child("LayerNorm"), h)
    }
}

public struct Bert {
    public let config: BertConfig
    let wordEmbeddings: Tensor         // embeddings.word_embeddings: (V, H)
    let positionEmbeddings: Tensor     // embeddings.position_embeddings: (P, H)
    let tokenTypeEmbeddings: Tensor    // embeddings.token_type_embeddings: (2, H)
    let embeddingsNorm: LayerNormParams
    let layers: [BertLayer]

    init(_ s: WeightScope, _ c: BertConfig) throws {
        config = c
        let h = c.hiddenSize
        let e = s.child("embeddings")
        wordEmbeddings = try e.child("word_embeddings").tensor("weight", [c.vocabSize, h])
        positionEmbeddings = try e.child("position_embeddings").tensor("weight", [c.maxPositionEmbeddings, h])
        tokenTypeEmbeddings = try e.child("token_type_embeddings").tensor("weight", [c.typeVocabSize, h])
        embeddingsNorm = try LayerNormParams(e.child("LayerNorm"), h)
        layers = try (0..<c.numHiddenLayers).map { try BertLayer(s.child("encoder").child("layer").child("\($0)"), c) }
        // The pooler (CLS dense + tanh) is not used by mean pooling; it stays in the file for export.
        s.store.skip(s.prefix + "pooler.dense.weight")
        s.store.skip(s.prefix + "pooler.dense.bias")
    }

    /// Mean-pooled last hidden state `(B, H)` for token ids `(B, L)` with attention mask.
    /// Ids must be in `0..<vocab` (the tokenizer guarantees it; `forward` clamps defensively).
    public func forward(ids: [Int32], mask: [Int32], batch b: Int, length l: Int) -> [Float] {
        let c = config, h = c.hiddenSize, heads = c.numAttentionHeads
        let eps = Float(c.layerNormEps)
        // Compute only up to the longest real sequence (exact; see the legend).
        var t = 0
        for r in 0..<b { for j in 0..<l where mask[r * l + j] != 0 { t = max(t, j + 1) } }
        t = max(t, 1)
        let rows = b * t
        var x = [Float](repeating: 0, count: rows * h)
        for r in 0..<b { for j in 0..<t {
            let id = Int(min(max(ids[r * l + j], 0), Int32(c.vocabSize - 1)))
            let pos = min(j, c.maxPositionEmbeddings - 1)
            let dst = (r * t + j) * h
            for k in 0..<h { x[dst + k] = wordEmbeddings.data[id * h + k] + tokenTypeEmbeddings.data[k] + positionEmbeddings.data[pos * h + k] }
        } }
        // Additive mask: 0 for real tokens, float32's lowest for padding (as transformers).
        var bias = [Float](repeating: 0, count: b * t)
        for r in 0..<b { for j in 0..<t where mask[r * l + j] == 0 { bias[r * t + j] = -Float.greatestFiniteMagnitude } }

        var q = [Float](repeating: 0, count: rows * h), k = q, v = q, ctx = q, tmp = q
        var inter = [Float](repeating: 0, count: rows * c.intermediateSize)
        var scores = [Float](repeating: 0, count: b * heads * t * t)
        x.withUnsafeMutableBufferPointer { X in
            let xp = X.baseAddress!
            Kernels.layerNormRows(xp, rows: rows, n: h, weight: embeddingsNorm.weight, bias: embeddingsNorm.bias, eps: eps, into: xp)
            for layer in layers {
                q.withUnsafeMutableBufferPointer { Q in k.withUnsafeMutableBufferPointer { K in v.withUnsafeMutableBufferPointer { V in
                ctx.withUnsafeMutableBufferPointer { CT in scores.withUnsafeMutableBufferPointer { S in
                    Kernels.linear(xp, rows: rows, weight: layer.query.weight, bias: layer.query.bias, into: Q.baseAddress!)
                    Kernels.linear(xp, rows: rows, weight: layer.key.weight, bias: layer.key.bias, into: K.baseAddress!)
                    Kernels.linear(xp, rows: rows, weight: layer.value.weight, bias: layer.value.bias, into: V.baseAddress!)
                    Kernels.attention(q: Q.baseAddress!, k: K.baseAddress!, v: V.baseAddress!, batch: b, t: t, heads: heads, hidden: h,
                                      maskBias: bias, probs: S.baseAddress!, dropMask: nil, ctx: CT.baseAddress!)
                } } } } }
                // attention.output: dense, dropout (eval: identity), LayerNorm(x + attn).
                ctx.withUnsafeBufferPointer { CT in tmp.withUnsafeMutableBufferPointer { TM in
                    Kernels.linear(CT.baseAddress!, rows: rows, weight: layer.attentionOutput.weight, bias: layer.attentionOutput.bias, into: TM.baseAddress!)
                    for i in 0..<(rows * h) { TM[i] += xp[i] }
                    Kernels.layerNormRows(TM.baseAddress!, rows: rows, n: h, weight: layer.attentionNorm.weight, bias: layer.attentionNorm.bias, eps: eps, into: xp)
                } }
                // intermediate (GELU), output dense, LayerNorm(x + out).
                inter.withUnsafeMutableBufferPointer { IN in tmp.withUnsafeMutableBufferPointer { TM in
                    Kernels.linear(xp, rows: rows, weight: layer.intermediate.weight, bias: layer.intermediate.bias, into: IN.baseAddress!)
                    Kernels.gelu(IN.baseAddress!, count: rows * c.intermediateSize)
                    Kernels.linear(IN.baseAddress!, rows: rows, weight: layer.output.weight, bias: layer.output.bias, into: TM.baseAddress!)
                    for i in 0..<(rows * h) { TM[i] += xp[i] }
                    Kernels.layerNormRows(TM.baseAddress!, rows: rows, n: h, weight: layer.outputNorm.weight, bias: layer.outputNorm.bias, eps: eps, into: xp)
                } }
            }
        }
        // The seed's mean pooling: sum(h * mask) / clamp(sum(mask), 1e-9).
        var pooled = [Float](repeating: 0, count: b * h)
        for r in 0..<b {
            var n: Float = 0
            for j in 0..<t where mask[r * l + j] != 0 {
                n += 1
                for e in 0..<h { pooled[r * h + e] += x[(r * t + j) * h + e] }
            }
            let inv = 1 / max(n, 1e-9)
            for e in 0..<h { pooled[r * h + e] *= inv }
        }
        return pooled
    }
}
