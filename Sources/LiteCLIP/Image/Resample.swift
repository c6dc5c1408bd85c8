#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Pillow's convolution resampling (`Image.resize` with BICUBIC and friends), bit for bit, for
/// 8-bit RGB. Port of: Pillow src/libImaging/Resample.c (`precompute_coeffs`,
/// `normalize_coeffs_8bpc`, `ImagingResampleHorizontal_8bpc` / `Vertical_8bpc`,
/// `ImagingResampleInner`).
///
/// For each output index `o` along an axis of `inSize -> outSize` (all in double):
/// ```
/// scale   = inSize / outSize;  fscale = max(scale, 1)        (antialiasing when shrinking)
/// support = filter.support * fscale;  ksize = 2 * ceil(support) + 1
/// center  = (o + 0.5) * scale
/// xmin    = max(trunc(center - support + 0.5), 0);  xmax = min(trunc(center + support + 0.5), inSize)
/// w[i]    = filter((xmin + i - center + 0.5) / fscale),  i in 0..<xmax-xmin, then w /= sum(w)
/// k[i]    = trunc(w[i] * 2^22 +- 0.5)                        (PRECISION_BITS = 32 - 8 - 2)
/// out     = clamp((2^21 + sum(k[i] * in[xmin + i])) >> 22, 0, 255)   in Int32
/// ```
/// The horizontal pass runs first, on the input rows the vertical pass needs, and its result
/// is clipped to 8 bits; a pass whose size does not change is skipped (an identity pass would
/// give the same bytes anyway). Every output pixel depends only on its own coefficients, so
/// computing just a window of the output (the center crop) gives the same bytes as PIL's
/// full resize followed by the crop.
enum ResampleFilter: String, Sendable, CaseIterable {
    case bicubic, bilinear, box, hamming, lanczos

    /// Half-width of the kernel at scale 1.
    var support: Double {
        switch self {
        case .box: return 0.5
        case .bilinear, .hamming: return 1
        case .bicubic: return 2
        case .lanczos: return 3
        }
    }

    /// The kernel, written as Pillow evaluates it (same operation order, so the same doubles).
    func weight(_ x: Double) -> Double {
        switch self {
        case .box:
            return x > -0.5 && x <= 0.5 ? 1 : 0
        case .bilinear:
            let x = abs(x)
            return x < 1 ? 1 - x : 0
        case .hamming:
            var x = abs(x)
            if x == 0 { return 1 }
            if x >= 1 { return 0 }
            x = x * Double.pi
            return sin(x) / x * (Double(Float(0.54)) + Double(Float(0.46)) * cos(x))   // 0.54f, 0.46f in C
        case .bicubic:
            let a = -0.5
            let x = abs(x)
            if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
            if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
            return 0
        case .lanczos:
            func sinc(_ x: Double) -> Double { x == 0 ? 1 : sin(x * Double.pi) / (x * Double.pi) }
            return -3 <= x && x < 3 ? sinc(x) * sinc(x / 3) : 0
        }
    }
}

/// Fixed-point coefficients for the outputs `first ..< first + count` of one axis.
struct ResampleTable: Sendable {
    static let precisionBits: Int32 = 32 - 8 - 2

    let first: Int
    let count: Int
    let ksize: Int
    /// Per output: first input index and number of taps.
    let bounds: [Int32]
    /// Per output: `ksize` weights (only the first `taps` are used).
    let weights: [Int32]

    init(inSize: Int, outSize: Int, outputs: Range<Int>, filter: ResampleFilter) {
        // Pillow passes the box (0, 0, w, h) as floats: in1 - in0 is a float, exact here.
        let scale = Double(Float(inSize) - Float(0)) / Double(outSize)
        let filterScale = max(scale, 1)
        let support = filter.support * filterScale
        let ksize = Int(support.rounded(.up)) * 2 + 1
        let one = Double(1 << Int(Self.precisionBits))

        var bounds = [Int32](repeating: 0, count: outputs.count * 2)
        var weights = [Int32](repeating: 0, count: outputs.count * ksize)
        var w = [Double](repeating: 0, count: ksize)
        let ss = 1.0 / filterScale
        for (j, o) in outputs.enumerated() {
            let center = 0.0 + (Double(o) + 0.5) * scale
            var xmin = Int(center - support + 0.5)     // C's (int) truncates, like Int(_:)
            if xmin < 0 { xmin = 0 }
            var xmax = Int(center + support + 0.5)
            if xmax > inSize { xmax = inSize }
            let taps = max(min(xmax - xmin, ksize), 0)
            var sum = 0.0
            for i in 0..<taps {
                let v = filter.weight((Double(i + xmin) - center + 0.5) * ss)
                w[i] = v
                sum += v
            }
            for i in 0..<taps {
                if sum != 0 { w[i] /= sum }
                let k = w[i]
                weights[j * ksize + i] = Int32(k < 0 ? -0.5 + k * one : 0.5 + k * one)
            }
            bounds[2 * j] = Int32(xmin)
            bounds[2 * j + 1] = Int32(taps)
        }
        self.first = outputs.lowerBound
        self.count = outputs.count
        self.ksize = ksize
        self.bounds = bounds
        self.weights = weights
    }

    /// The input indices the outputs read: `lower ..< upper`.
    var inputSpan: Range<Int> {
        guard count > 0 else { return 0..<0 }
        var lo = Int.max, hi = 0
        for j in 0..<count {
            lo = min(lo, Int(bounds[2 * j]))
            hi = max(hi, Int(bounds[2 * j] + bounds[2 * j + 1]))
        }
        return lo..<max(lo, hi)
    }

    // MARK: Cache

    private struct Key: Hashable {
        let inSize: Int, outSize: Int, first: Int, count: Int
        let filter: ResampleFilter
    }

    private final class Cache: @unchecked Sendable {
        let lock = NSLock()
        var tables: [Key: ResampleTable] = [:]
    }

    private static let cache = Cache()

    /// The table for these sizes, computed once and kept (a few dozen entries at most in
    /// practice: one per distinct input size; cleared when it grows past 256).
    static func cached(inSize: Int, outSize: Int, outputs: Range<Int>, filter: ResampleFilter) -> ResampleTable {
        let key = Key(inSize: inSize, outSize: outSize, first: outputs.lowerBound, count: outputs.count, filter: filter)
        cache.lock.lock()
        if let t = cache.tables[key] {
            cache.lock.unlock()
            return t
        }
        cache.lock.unlock()
        let t = ResampleTable(inSize: inSize, outSize: outSize, outputs: outputs, filter: filter)
        cache.lock.lock()
        if cache.tables.count >= 256 { cache.tables.removeAll() }
        cache.tables[key] = t
        cache.lock.unlock()
        return t
    }
}

enum Resampler {
    @inline(__always)
    static func clip8(_ s: Int32) -> UInt8 {
        let v = s >> ResampleTable.precisionBits
        return v <= 0 ? 0 : (v >= 255 ? 255 : UInt8(truncatingIfNeeded: v))
    }

    /// Resizes `image` to `outWidth x outHeight` as PIL does and returns the window
    /// `rows x cols` of the result (both inside the output), as (rows.count, cols.count, 3) bytes.
    static func resizeWindow(_ image: RGBImage, outWidth: Int, outHeight: Int,
                             rows: Range<Int>, cols: Range<Int>, filter: ResampleFilter) -> [UInt8] {
        let inW = image.width, inH = image.height
        let needH = outWidth != inW
        let needV = outHeight != inH
        let cw = cols.count, ch = rows.count
        guard cw > 0, ch > 0 else { return [] }

        // Input rows the vertical pass reads (all of `rows` when it is skipped).
        let vTable = needV ? ResampleTable.cached(inSize: inH, outSize: outHeight, outputs: rows, filter: filter) : nil
        let rowSpan = vTable?.inputSpan ?? rows
        let tmpStride = cw * 3

        // Horizontal pass: rowSpan x cols, 8-bit.
        var tmp = [UInt8](repeating: 0, count: rowSpan.count * tmpStride)
        image.pixels.withUnsafeBufferPointer { src in
            tmp.withUnsafeMutableBufferPointer { dst in
                let s = src.baseAddress!, d = dst.baseAddress!
                if needH {
                    let hTable = ResampleTable.cached(inSize: inW, outSize: outWidth, outputs: cols, filter: filter)
                    horizontal(s, inWidth: inW, rows: rowSpan, table: hTable, into: d)
                } else {
                    for (r, y) in rowSpan.enumerated() {
                        (d + r * tmpStride).update(from: s + (y * inW + cols.lowerBound) * 3, count: tmpStride)
                    }
                }
            }
        }
        guard let vTable else { return tmp }

        // Vertical pass: rows x cols.
        var out = [UInt8](repeating: 0, count: ch * tmpStride)
        tmp.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                vertical(src.baseAddress!, stride: tmpStride, firstRow: rowSpan.lowerBound, table: vTable, into: dst.baseAddress!)
            }
        }
        return out
    }

    /// `ImagingResampleHorizontal_8bpc` for the input rows `rows`, outputs `table.first ..<`.
    static func horizontal(_ src: UnsafePointer<UInt8>, inWidth: Int, rows: Range<Int>, table: ResampleTable,
                           into dst: UnsafeMutablePointer<UInt8>) {
        let half: Int32 = 1 << (ResampleTable.precisionBits - 1)
        let ksize = table.ksize, n = table.count
        table.bounds.withUnsafeBufferPointer { bp in
            table.weights.withUnsafeBufferPointer { wp in
                let bounds = bp.baseAddress!, weights = wp.baseAddress!
                for (r, y) in rows.enumerated() {
                    let row = src + y * inWidth * 3
                    let out = dst + r * n * 3
                    for j in 0..<n {
                        let taps = Int(bounds[2 * j + 1])
                        var p = row + Int(bounds[2 * j]) * 3
                        let k = weights + j * ksize
                        var s0 = half, s1 = half, s2 = half
                        for t in 0..<taps {
                            let c = k[t]
                            s0 &+= Int32(p[0]) &* c
                            s1 &+= Int32(p[1]) &* c
                            s2 &+= Int32(p[2]) &* c
                            p += 3
                        }
                        out[3 * j] = clip8(s0)
                        out[3 * j + 1] = clip8(s1)
                        out[3 * j + 2] = clip8(s2)
                    }
                }
            }
        }
    }

    /// `ImagingResampleVertical_8bpc`: each output row is a weighted sum of whole input rows
    /// (`stride` bytes each; input row `firstRow` is at `src`).
    static func vertical(_ src: UnsafePointer<UInt8>, stride: Int, firstRow: Int, table: ResampleTable,
                         into dst: UnsafeMutablePointer<UInt8>) {
        let half: Int32 = 1 << (ResampleTable.precisionBits - 1)
        let acc = UnsafeMutablePointer<Int32>.allocate(capacity: stride)
        defer { acc.deallocate() }
        table.bounds.withUnsafeBufferPointer { bp in
            table.weights.withUnsafeBufferPointer { wp in
                for j in 0..<table.count {
                    acc.update(repeating: half, count: stride)
                    let ymin = Int(bp[2 * j]) - firstRow, taps = Int(bp[2 * j + 1])
                    for t in 0..<taps {
                        let c = wp[j * table.ksize + t]
                        let row = src + (ymin + t) * stride
                        for e in 0..<stride { acc[e] &+= Int32(row[e]) &* c }
                    }
                    let out = dst + j * stride
                    for e in 0..<stride { out[e] = clip8(acc[e]) }
                }
            }
        }
    }
}
