import Foundation
import CKernels

/// The seed's `CLIP` module: the root of the module tree, whose initialiser walks every
/// checkpoint key (in `state_dict()` order).
///
/// ```
/// image_embeds = normalize(img_projection(image_encoder(pixels)))
/// text_embeds  = normalize(txt_projection(text_encoder(tokens)))
/// logits_per_image = exp(logit_scale) * image_embeds @ text_embeds^T
/// loss = (CE(logits_per_image) + CE(logits_per_image^T)) / 2
/// ```
struct CLIP: Sendable {
    let config: LiteCLIPConfig
    let logitScale: Tensor                // logit_scale: ()
    private let parts: (image: Lazy<ConvNeXt>, text: Lazy<Bert>, imgHead: Lazy<ProjectionHead>, txtHead: Lazy<ProjectionHead>)
    var imageEncoder: ConvNeXt { parts.image.value }             // image_encoder.backbone
    var textEncoder: Bert { parts.text.value }                   // text_encoder.backbone
    var imgProjection: ProjectionHead { parts.imgHead.value }    // img_projection
    var txtProjection: ProjectionHead { parts.txtHead.value }    // txt_projection

    /// - Parameters:
    ///   - fused: run ConvNeXt's fused inference path (not for training, whose forward keeps what
    ///     the plain path computes).
    ///   - lazy: build each child on first use (the inference model: text-only work never reads
    ///     the image weights). The tensors were placed strictly when the file was opened, so a
    ///     later build cannot fail; recording and training build everything here, in key order.
    init(_ s: ParameterScope, _ c: LiteCLIPConfig, fused: Bool, lazy: Bool = false) throws {
        config = c
        logitScale = try s.tensor("logit_scale", [])   // CLIP's own parameter comes before its children's
        let lock = NSLock()   // one for all four: they take tensors from the same source
        func part<T>(_ make: @escaping () throws -> T) throws -> Lazy<T> {
            lazy ? Lazy(lock: lock, make) : Lazy(built: try make(), lock: lock)
        }
        parts = (try part {
                    let first = s.source.loaded.count
                    let tower = try ConvNeXt(s.child("image_encoder").child("backbone"), c.image, fused: fused)
                    // Map the tower's weights now, while the images decode, rather than fault by
                    // fault during the first forward (they are most of the file).
                    if lazy { for t in s.source.loaded[first...] { Self.prefault(t.tensor) } }
                    return tower
                 },
                 try part { try Bert(s.child("text_encoder").child("backbone"), c.text) },
                 try part { try ProjectionHead(s.child("img_projection"), input: c.image.outputDim, dim: c.projectionDim) },
                 try part { try ProjectionHead(s.child("txt_projection"), input: c.text.hiddenSize, dim: c.projectionDim) })
    }

    /// Maps a tensor's pages now, for weights that point into the file mapping: one read per
    /// 64 KiB, each fault mapping 16 pages (the kernel's fault-around). MADV_POPULATE_READ walked
    /// page by page: the image tower's 112 MB took about 9 ms on one core against 6.5 ms
    /// touched, and one-image `zero-shot` ran about 6 ms faster as a whole process touched
    /// (formats/kernels.md, "Start-up").
    /// An int8 weight's tensor points at its scales (one float a row); its values are a byte each.
    static func prefault(_ t: Tensor) {
        if let q = t.int8 {
            lc_touch_pages(q.values, q.rows * q.columns, 65536)
            lc_touch_pages(q.scales, q.rows * MemoryLayout<Float>.stride, 65536)
            return
        }
        guard t.count > 0 else { return }
        lc_touch_pages(t.data, t.count * MemoryLayout<Float>.stride, 65536)
    }

    /// One tower's caches: the encoder's (nil when it is frozen), the head's, and the norms.
    final class TowerCache<Encoder> {
        var encoder: Encoder?
        let head = ProjectionHead.Cache()
        var norms: [Float] = []
        init(encoder: Encoder?) { self.encoder = encoder }
    }

    // MARK: - Forward

    /// ConvNeXt pooled features `(B, C3)` for pixel values `(B, 3, S, S)`.
    func imageFeatures(pixels: [Float], batch: Int, ws: Workspace, cache: ConvNeXt.Cache? = nil) -> Buffer {
        let size = Int((Double(pixels.count / max(batch, 1) / config.image.inChannels)).squareRoot())
        return pixels.withUnsafeBufferPointer {
            imageEncoder.forward(pixels: $0.baseAddress!, batch: batch, size: size, ws: ws, cache: cache)
        }
    }

    /// Mean-pooled BERT features `(B, H)`.
    func textFeatures(_ tokens: TokenBatch, ws: Workspace, cache: Bert.Cache? = nil) -> Buffer {
        textEncoder.forward(ids: tokens.ids, mask: tokens.attentionMask, batch: tokens.batchSize, length: tokens.length, ws: ws, cache: cache)
    }

    /// Projected, L2-normalised embeddings `(B, D)` from a tower's features.
    func project(_ features: Buffer, head: ProjectionHead, ws: Workspace, cache: ProjectionHead.Cache? = nil) -> (Buffer, norms: [Float]) {
        let rows = features.shape[0]
        let e = head.forward(features, rows: rows, ws: ws, cache: cache)
        let norms = Kernels.l2Normalize(e.data, rows: rows, dim: config.projectionDim)
        return (e, norms)
    }

    /// `exp(logit_scale) * image @ text^T`, `(Bi, Bt)`.
    func logits(_ img: Buffer, _ txt: Buffer) -> [Float] {
        let d = config.projectionDim, bi = img.shape[0], bt = txt.shape[0]
        var out = [Float](repeating: 0, count: bi * bt)
        Kernels.gemm(img.data, txt.data, &out, m: bi, n: bt, k: d, transB: true)
        let s = expf(logitScale.scalar)
        for i in out.indices { out[i] *= s }
        return out
    }

    // MARK: - Training step

    /// One forward and backward on a batch of matching (image, caption) pairs: the seed's loss,
    /// every trainable parameter's gradient ACCUMULATED into `grads`. A frozen tower runs without
    /// a cache (its dropout still applies, as in PyTorch's train mode).
    func trainStep(pixels: [Float], batch: Int, tokens: TokenBatch, grads: Gradients, ws: Workspace) -> (loss: Float, logits: [Float]) {
        precondition(tokens.batchSize == batch, "one caption per image")
        let image = TowerCache(encoder: grads.of(imageEncoder.stem.conv.weight) != nil ? ConvNeXt.Cache() : nil)
        let text = TowerCache(encoder: grads.of(textEncoder.wordEmbeddings) != nil ? Bert.Cache() : nil)
        let imgFeatures = imageFeatures(pixels: pixels, batch: batch, ws: ws, cache: image.encoder)
        let txtFeatures = textFeatures(tokens, ws: ws, cache: text.encoder)
        let (ie, inorms) = project(imgFeatures, head: imgProjection, ws: ws, cache: image.head)
        let (te, tnorms) = project(txtFeatures, head: txtProjection, ws: ws, cache: text.head)
        let logits = self.logits(ie, te)
        let (loss, dLogits) = Contrastive.loss(logits: logits, batch: batch)

        // Backward.
        let d = config.projectionDim, scale = expf(logitScale.scalar)
        if let g = grads.of(logitScale) {
            var s: Float = 0
            for i in 0..<(batch * batch) { s += dLogits[i] * logits[i] }      // d exp(s)/ds = exp(s)
            g[0] += s
        }
        let dSim = dLogits.map { $0 * scale }
        let die = ws.zeros([batch, d]), dte = ws.zeros([batch, d])
        dSim.withUnsafeBufferPointer { ds in
            Kernels.gemm(ds.baseAddress!, te.data, die.data, m: batch, n: d, k: batch)                 // dI = dSim T
            Kernels.gemm(ds.baseAddress!, ie.data, dte.data, m: batch, n: d, k: batch, transA: true)   // dT = dSim^T I
        }
        Kernels.l2NormalizeBackward(e: ie.data, norms: inorms, rows: batch, dim: d, de: die.data)
        Kernels.l2NormalizeBackward(e: te.data, norms: tnorms, rows: batch, dim: d, de: dte.data)
        let dImgFeatures = imgProjection.backward(image.head, die, grads: grads, ws: ws)
        let dTxtFeatures = txtProjection.backward(text.head, dte, grads: grads, ws: ws)
        if let c = image.encoder { imageEncoder.backward(c, dFeatures: dImgFeatures, grads: grads, ws: ws) }
        if let c = text.encoder { textEncoder.backward(c, dPooled: dTxtFeatures, grads: grads, ws: ws) }
        return (loss, logits)
    }
}

/// A part of a model built on first use, under a lock shared with its siblings.
final class Lazy<T>: @unchecked Sendable {
    private var built: T?
    private var make: (() throws -> T)?
    private let lock: NSLock

    init(lock: NSLock, _ make: @escaping () throws -> T) {
        self.lock = lock
        self.make = make
    }

    init(built: T, lock: NSLock) {
        self.lock = lock
        self.built = built
    }

    var value: T {
        lock.lock()
        defer { lock.unlock() }
        if let built { return built }
        do {
            let v = try make!()
            built = v
            make = nil
            return v
        } catch {
            preconditionFailure("a model part failed to build after its tensors were placed at open: \(error)")
        }
    }
}
