#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Pillow's convolution resampling (`Image.resize` with BICUBIC and friends), bit for bit, for
/// 8-bit RGB. Port of: Pillow src/libImaging/Resample.c (`precompute_coeffs`,
/// `normalize_coeffs_8bpc`, `ImagingResampleHorizontal_8bpc` / `Vertical_8bpc`,
/// `ImagingResampleInner`), as of Pillow 13.0.
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
/// The first pass's result is clipped to 8 bits before the second pass, so the order matters.
/// Pillow 13 runs the horizontal pass first (on the input rows the vertical pass reads), except
/// when the height loses more than twice as many pixels as the width
/// (`inH - outH > 0 && inH - outH > 2 * (inW - outW)`, e.g. portraits taller than about 2:1),
/// where the vertical pass runs first. A pass whose size does not change is skipped (an
/// identity pass would give the same bytes anyway). Every output pixel depends only on its own
/// coefficients, so computing just a window of the output (the center crop) gives the same
/// bytes as PIL's full resize followed by the crop.
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
        let hTable = needH ? ResampleTable.cached(inSize: inW, outSize: outWidth, outputs: cols, filter: filter) : nil
        let vTable = needV ? ResampleTable.cached(inSize: inH, outSize: outHeight, outputs: rows, filter: filter) : nil
        // Pillow 13 runs the vertical pass first when the height loses more than twice as many
        // pixels as the width ("to make the horizontal pass faster"); the order changes the
        // result, because the intermediate image is rounded to 8 bits.
        let verticalFirst = inH - outHeight > 0 && inH - outHeight > (inW - outWidth) * 2

        return image.pixels.withUnsafeBufferPointer { srcBuf in
            let src = srcBuf.baseAddress!
            let inStride = inW * 3
            switch (hTable, vTable) {
            case (nil, nil):                                      // no resize: crop only
                var out = [UInt8](repeating: 0, count: ch * cw * 3)
                out.withUnsafeMutableBufferPointer { d in
                    for (r, y) in rows.enumerated() {
                        (d.baseAddress! + r * cw * 3).update(from: src + y * inStride + cols.lowerBound * 3, count: cw * 3)
                    }
                }
                return out
            case (let h?, nil):
                return horizontal(src + rows.lowerBound * inStride, stride: inStride, rows: ch, xOffset: 0, table: h)
            case (nil, let v?):
                return vertical(src + cols.lowerBound * 3, stride: inStride, rowLength: cw * 3, yOffset: 0, table: v)
            case (let h?, let v?) where verticalFirst:
                // Vertical pass on the input columns the horizontal pass reads.
                let span = h.inputSpan
                let tmp = vertical(src + span.lowerBound * 3, stride: inStride, rowLength: span.count * 3, yOffset: 0, table: v)
                return tmp.withUnsafeBufferPointer {
                    horizontal($0.baseAddress!, stride: span.count * 3, rows: ch, xOffset: span.lowerBound, table: h)
                }
            case (let h?, let v?):
                // Horizontal pass on the input rows the vertical pass reads.
                let span = v.inputSpan
                let tmp = horizontal(src + span.lowerBound * inStride, stride: inStride, rows: span.count, xOffset: 0, table: h)
                return tmp.withUnsafeBufferPointer {
                    vertical($0.baseAddress!, stride: cw * 3, rowLength: cw * 3, yOffset: span.lowerBound, table: v)
                }
            }
        }
    }

    /// `ImagingResampleHorizontal_8bpc`: `rows` rows of `stride` bytes from `src`, whose first
    /// byte is input column `xOffset`; returns (rows, table.count, 3) bytes.
    static func horizontal(_ src: UnsafePointer<UInt8>, stride: Int, rows: Int, xOffset: Int,
                           table: ResampleTable) -> [UInt8] {
        let half: Int32 = 1 << (ResampleTable.precisionBits - 1)
        let ksize = table.ksize, n = table.count
        return [UInt8](unsafeUninitializedCapacity: rows * n * 3) { dst, initialized in
            table.bounds.withUnsafeBufferPointer { bp in
                table.weights.withUnsafeBufferPointer { wp in
                    let bounds = bp.baseAddress!, weights = wp.baseAddress!
                    for r in 0..<rows {
                        let row = src + r * stride
                        let out = dst.baseAddress! + r * n * 3
                        for j in 0..<n {
                            let taps = Int(bounds[2 * j + 1])
                            var p = row + (Int(bounds[2 * j]) - xOffset) * 3
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
            initialized = rows * n * 3
        }
    }

    /// `ImagingResampleVertical_8bpc`: each output row is a weighted sum of input rows of
    /// `rowLength` bytes, `stride` bytes apart, the one at `src` being input row `yOffset`;
    /// returns (table.count, rowLength) bytes.
    static func vertical(_ src: UnsafePointer<UInt8>, stride: Int, rowLength: Int, yOffset: Int,
                         table: ResampleTable) -> [UInt8] {
        let half: Int32 = 1 << (ResampleTable.precisionBits - 1)
        let acc = UnsafeMutablePointer<Int32>.allocate(capacity: rowLength)
        defer { acc.deallocate() }
        return [UInt8](unsafeUninitializedCapacity: table.count * rowLength) { dst, initialized in
            table.bounds.withUnsafeBufferPointer { bp in
                table.weights.withUnsafeBufferPointer { wp in
                    for j in 0..<table.count {
                        acc.update(repeating: half, count: rowLength)
                        let ymin = Int(bp[2 * j]) - yOffset, taps = Int(bp[2 * j + 1])
                        for t in 0..<taps {
                            let c = wp[j * table.ksize + t]
                            let row = src + (ymin + t) * stride
                            for e in 0..<rowLength { acc[e] &+= Int32(row[e]) &* c }
                        }
                        let out = dst.baseAddress! + j * rowLength
                        for e in 0..<rowLength { out[e] = clip8(acc[e]) }
                    }
                }
            }
            initialized = table.count * rowLength
        }
    }
}
