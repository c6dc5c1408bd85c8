import Foundation
import CKernels

/// Inference benchmark workloads (issue 3): the same inputs the PyTorch/ONNX Runtime script
/// (scripts/bench_reference.py) uses, so the figures of one run can be compared as ratios.
@_spi(Benchmark) public enum InferenceBenchmark {
    public struct Result {
        public let name: String
        public let seconds: Double      // best of the timed repetitions
        public let gflop: Double
        public var gflops: Double { gflop / seconds }
    }

    /// Deterministic inputs shared with the Python side: pixels from a fixed LCG, and captions.
    public static func pixels(batch: Int, size: Int = 224) -> [Float] {
        var state: UInt32 = 12345
        return (0..<(batch * 3 * size * size)).map { _ in
            state = state &* 1_664_525 &+ 1_013_904_223
            return Float(state >> 8) / Float(1 << 24) * 4 - 2
        }
    }

    public static let captions = [
        "a black dog is running through the grass", "two children play on a sandy beach near the water",
        "a man in a red jacket climbs a steep rock face", "a girl with a pink umbrella walks down a rainy street",
        "a brown and white dog jumps over a fence", "people sit at tables outside a cafe",
        "a cyclist rides along a mountain road at sunset", "a cat sleeps on a sunny windowsill",
    ]

    public static func texts(batch: Int) -> [String] { (0..<batch).map { captions[$0 % captions.count] } }

    /// Multiply-adds x 2 of the image tower for one image.
    public static func imageFlops(_ c: ConvNeXtConfig, size: Int = 224) -> Double {
        var f = 0.0
        var hw = Double(size / c.patchSize * size / c.patchSize)
        f += 2 * hw * Double(c.dims[0] * c.inChannels * c.patchSize * c.patchSize)
        for (i, (d, depth)) in zip(c.dims, c.depths).enumerated() {
            if i > 0 { hw /= 4; f += 2 * hw * Double(d * c.dims[i - 1] * 4) }
            let block = 2 * hw * Double(d) * Double(c.kernelSize * c.kernelSize) + 2 * 2 * hw * Double(d * d * c.mlpRatio)
            f += Double(depth) * block
        }
        return f
    }

    /// Multiply-adds x 2 of the text tower for `tokens` real tokens in one sequence.
    public static func textFlops(_ c: BertConfig, tokens t: Int) -> Double {
        let h = Double(c.hiddenSize), i = Double(c.intermediateSize), n = Double(t)
        let perLayer = 2 * n * (4 * h * h + 2 * h * i) + 2 * 2 * n * n * h
        return Double(c.numHiddenLayers) * perLayer
    }

    public static func time(_ reps: Int, _ body: () -> Void) -> Double {
        body()   // warm-up
        var best = Double.infinity
        for _ in 0..<reps {
            let t0 = DispatchTime.now().uptimeNanoseconds
            body()
            best = min(best, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
        }
        return best
    }

    /// The multiply-add ceiling of this machine, measured: vector FMAs with no loads on every
    /// thread the kernels use (`lc_fma_peak_flops`), best of `reps` runs of about 0.1 s. The
    /// GFLOP/s of every workload is read against it. Nil without AVX2 (no kernels of ours run).
    public static func fmaPeak(reps: Int) -> Result? {
        guard Kernels.ownGEMMAvailable else { return nil }
        var flops = 0.0
        let s = time(reps) { flops = lc_fma_peak_flops(10_000_000) }
        return flops > 0 ? Result(name: "FMA peak, \(lc_pool_threads()) threads", seconds: s, gflop: flops / 1e9) : nil
    }

    /// Which matrix kernels the products run on (to measure one lever at a time).
    public enum KernelChoice: String, CaseIterable, Sendable {
        /// Our sgemm with the widest micro-kernel this CPU has.
        case best
        case avx512, avx2
        /// OpenBLAS for every product (ConvNeXt then runs its plain path).
        case openblas
    }

    /// Selects the kernels for the rest of the process; returns the one in use ("avx512", "avx2", "openblas").
    @discardableResult
    public static func select(_ choice: KernelChoice) -> String {
        switch choice {
        case .openblas: Kernels.forceOpenBLAS = true; Kernels.forceSwiftInt8 = true
        case .avx2: lc_sgemm_force_isa(1); lc_qgemm_force_isa(1)
        case .avx512, .best: break
        }
        // int8 models: the matching int8 kernel (AVX-512 VNNI, or AVX2 without it).
        let int8 = !Kernels.int8Kernel ? "swift" : (lc_qgemm_isa() == 2 ? "avx512-vnni" : "avx2")
        if !Kernels.useOwnGEMM { return "openblas (int8: \(int8))" }
        return (lc_sgemm_isa() == 2 ? "avx512" : "avx2") + " (int8: \(int8))"
    }

    /// Time and GFLOP/s per layer type of the image tower at `batch` (the best of `reps`
    /// forwards, after one untimed): which pass is the next bottleneck.
    public static func layers(model m: LiteCLIPModel, batch: Int, reps: Int) -> [(name: String, seconds: Double, gflops: Double)] {
        let px = pixels(batch: batch)
        _ = m.imageEmbeddings(pixels: px, batch: batch)
        var best: Kernels.LayerProfile? = nil
        var bestTotal = Double.infinity
        for _ in 0..<reps {
            let p = Kernels.LayerProfile()
            Kernels.profile = p
            _ = m.imageEmbeddings(pixels: px, batch: batch)
            Kernels.profile = nil
            let total = p.seconds.values.reduce(0, +)
            if total < bestTotal { (best, bestTotal) = (p, total) }
        }
        guard let p = best else { return [] }
        return p.order.map { ($0, p.seconds[$0]!, p.flops[$0]! / p.seconds[$0]! / 1e9) }
    }

    /// The model at `path`; `fused: false` runs ConvNeXt's plain path instead of the fused
    /// inference path (to measure what the fusion buys).
    public static func load(path: String, fused: Bool) throws -> LiteCLIPModel {
        try load(ModelSource.open(path), file: path, fused: fused)
    }

    public static func load(_ loaded: ModelSource.Loaded, file: String, fused: Bool) throws -> LiteCLIPModel {
        try LiteCLIPModel(metadata: loaded.metadata, tensors: loaded.tensors, file: file, fused: fused, lazy: loaded.isMapped)
    }

    /// - Parameter only: run just the workloads whose name contains this text.
    public static func run(model m: LiteCLIPModel, reps: Int = 3, only: String? = nil) -> [Result] {
        func wanted(_ name: String) -> Bool { only.map { name.contains($0) } ?? true }
        var out: [Result] = []
        if wanted("FMA peak"), let peak = fmaPeak(reps: reps) { out.append(peak) }
        for b in [1, 8] where wanted("image tower, batch \(b)") {
            let px = pixels(batch: b)
            let s = time(reps) { _ = m.imageEmbeddings(pixels: px, batch: b) }
            out.append(Result(name: "image tower, batch \(b)", seconds: s, gflop: Double(b) * imageFlops(m.config.image) / 1e9))
        }
        for b in [8, 64] where wanted("text tower, batch \(b)") {
            // Padded to 128 as the seed does; the flops counted are those actually computed
            // (up to the longest caption: the padded positions are exactly irrelevant).
            let tok = m.tokenizer.encodeBatch(texts(batch: b))
            let s = time(reps) { _ = m.textEmbeddings(tok) }
            out.append(Result(name: "text tower, batch \(b), length 128", seconds: s,
                              gflop: Double(b) * textFlops(m.config.text, tokens: tok.lengths.max() ?? 0) / 1e9))
        }
        guard wanted("full forward, 3 images + 4 texts") else { return out }
        let px = pixels(batch: 3)
        let tok = m.tokenizer.encodeBatch(Array(captions.prefix(4)))
        let s = time(reps) {
            _ = m.logits(imageEmbeddings: m.imageEmbeddings(pixels: px, batch: 3), textEmbeddings: m.textEmbeddings(tok))
        }
        out.append(Result(name: "full forward, 3 images + 4 texts", seconds: s,
                          gflop: (3 * imageFlops(m.config.image) + 4 * textFlops(m.config.text, tokens: tok.lengths.max() ?? 0)) / 1e9))
        return out
    }
}

/// Training-step benchmark (issue 5): forward, backward and an Adam step on the same
/// deterministic inputs as `InferenceBenchmark` (scripts/bench_train_reference.py mirrors it in
/// PyTorch), dropout 0.1 as the seed trains, every parameter trainable.
@_spi(Benchmark) public enum TrainBenchmark {
    public struct Result {
        public let batch: Int
        /// Seconds per step: the best of the timed steps (the first step, which allocates the
        /// optimiser state, is not timed).
        public let seconds: Double
        public let steps: Int
        public let peakRSSBytes: Int
    }

    public static func run(modelPath: String, batch: Int, steps: Int) throws -> Result {
        try run(TrainableModel(path: modelPath), batch: batch, steps: steps)
    }

    /// On a trainable copy already made (the source it was copied from can be closed first, so
    /// that its mapped pages do not count in the peak memory).
    public static func run(_ model: TrainableModel, batch: Int, steps: Int) throws -> Result {
        let grads = model.makeGradients()
        let opt = AdamOptimizer(settings: .init(kind: .adam), gradients: grads)
        let pixels = InferenceBenchmark.pixels(batch: batch)
        let tokens = model.tokenizer.encodeBatch(InferenceBenchmark.texts(batch: batch))
        var rng = SeededRNG(seed: 0)
        var best = Double.infinity
        for i in 0..<(steps + 1) {
            let t0 = Date()
            grads.zero()
            _ = model.trainStep(pixels: pixels, batch: batch, tokens: tokens, grads: grads, options: .init(dropout: 0.1), rng: &rng)
            opt.apply(grads)
            if i > 0 { best = min(best, Date().timeIntervalSince(t0)) }
        }
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Result(batch: batch, seconds: best, steps: steps, peakRSSBytes: usage.ru_maxrss * 1024)
    }
}
