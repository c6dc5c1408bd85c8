/// The seed's torchvision preprocessing, bit for bit on 8-bit RGB input:
/// ```
/// T.Resize(resize, interpolation=BICUBIC)   shorter side -> resize, longer -> int(resize * long / short)
/// T.CenterCrop(centerCrop)                  top = round((h - crop) / 2) (half to even), zero padding if smaller
/// T.ToTensor()                              x / 255 in float32, HWC -> CHW
/// T.Normalize(mean, std)                    (x - mean) / std in float32
/// ```
/// Port of: torchvision transforms/functional.py (`resize`, `_compute_resized_output_size`,
/// `center_crop`, `to_tensor`) and _functional_tensor.py (`normalize`); the resize itself is
/// Pillow's (Resample.swift). Spec: formats/images.md.
public struct ImagePreprocessor: Sendable {
    public let config: PreprocessConfig
    let filter: ResampleFilter
    /// `table[c * 256 + v]` = the normalised float of value `v` in channel `c`.
    let table: [Float]

    /// Interpolation names accepted in `PreprocessConfig.interpolation` (torchvision's
    /// `InterpolationMode` values that PIL implements by convolution).
    public static let interpolations = ResampleFilter.allCases.map(\.rawValue)

    /// Checks a configuration (for example one read from a file) before `init` uses it.
    public static func validate(_ config: PreprocessConfig, file: String = "preprocess config") throws {
        func bad(_ s: String) -> ModelError { ModelError(.badConfig, file: file, "preprocessing: \(s)") }
        guard ResampleFilter(rawValue: config.interpolation) != nil else {
            throw bad("interpolation '\(config.interpolation)' is not one of \(interpolations.joined(separator: ", "))")
        }
        guard (1...ImageDecoder.maxSide).contains(config.resize) else { throw bad("resize \(config.resize) is out of range") }
        guard (1...ImageDecoder.maxSide).contains(config.centerCrop) else { throw bad("center_crop \(config.centerCrop) is out of range") }
        guard config.mean.count == 3, config.std.count == 3 else { throw bad("mean and std need 3 values each") }
        guard config.mean.allSatisfy(\.isFinite), config.std.allSatisfy({ $0.isFinite && $0 != 0 }) else {
            throw bad("mean and std must be finite and std non-zero")
        }
    }

    /// - Precondition: `config` passes `validate` (the defaults and `.seed` do).
    public init(_ config: PreprocessConfig) {
        guard let filter = ResampleFilter(rawValue: config.interpolation),
              config.resize > 0, config.centerCrop > 0, config.mean.count == 3, config.std.count == 3 else {
            preconditionFailure("invalid PreprocessConfig \(config); check it with ImagePreprocessor.validate")
        }
        self.config = config
        self.filter = filter
        // torch.as_tensor(mean, dtype=float32): each double rounded to float; then
        // to_tensor's `x.to(float32).div(255)` and normalize's `sub_(mean).div_(std)`.
        var table = [Float](repeating: 0, count: 3 * 256)
        for c in 0..<3 {
            let mean = Float(config.mean[c]), std = Float(config.std[c])
            for v in 0..<256 { table[c * 256 + v] = (Float(v) / Float(255) - mean) / std }
        }
        self.table = table
    }

    /// torchvision's `_compute_resized_output_size` for an int size: (width, height) after Resize.
    public func resizedSize(width: Int, height: Int) -> (width: Int, height: Int) {
        let size = config.resize
        let (short, long) = width <= height ? (width, height) : (height, width)
        // Python: int(size * long / short), a true (double) division, truncated.
        let newLong = Int(Double(size * long) / Double(short))
        return width <= height ? (size, newLong) : (newLong, size)
    }

    /// torchvision `center_crop` offset along one axis of `length` for a crop of `crop`:
    /// negative when the image is zero-padded first.
    static func cropOffset(length: Int, crop: Int) -> Int {
        if crop > length { return -((crop - length) / 2) }    // pad (crop - length) // 2 before
        return Int((Double(length - crop) / 2.0).rounded(.toNearestOrEven))   // Python round()
    }

    /// Resize + center crop: a `centerCrop x centerCrop` 8-bit image.
    public func resizeAndCrop(_ image: RGBImage) -> RGBImage {
        precondition(image.pixels.count == image.width * image.height * 3, "RGBImage pixel count does not match its size")
        let (rw, rh) = resizedSize(width: image.width, height: image.height)
        let cs = config.centerCrop
        let top = Self.cropOffset(length: rh, crop: cs), left = Self.cropOffset(length: rw, crop: cs)
        // The part of the crop that lies inside the resized image; the rest is padding (0).
        let rows = max(top, 0)..<min(top + cs, rh)
        let cols = max(left, 0)..<min(left + cs, rw)
        let window = Resampler.resizeWindow(image, outWidth: rw, outHeight: rh, rows: rows, cols: cols, filter: filter)
        if rows.count == cs && cols.count == cs {
            return RGBImage(checked: cs, cs, window)
        }
        var pixels = [UInt8](repeating: 0, count: cs * cs * 3)
        for (r, y) in rows.enumerated() {
            let dst = ((y - top) * cs + (cols.lowerBound - left)) * 3
            pixels.replaceSubrange(dst..<dst + cols.count * 3, with: window[(r * cols.count * 3)..<((r + 1) * cols.count * 3)])
        }
        return RGBImage(checked: cs, cs, pixels)
    }

    /// ToTensor + Normalize: writes `3 * height * width` floats, channel-major (CHW).
    public func normalize(_ image: RGBImage, into out: UnsafeMutablePointer<Float>) {
        let n = image.width * image.height
        precondition(image.pixels.count == n * 3, "RGBImage pixel count does not match its size")
        image.pixels.withUnsafeBufferPointer { px in
            table.withUnsafeBufferPointer { t in
                for c in 0..<3 {
                    let lut = t.baseAddress! + c * 256
                    let plane = out + c * n
                    for i in 0..<n { plane[i] = lut[Int(px[3 * i + c])] }
                }
            }
        }
    }

    /// `resizeAndCrop` then `normalize`: the model input for one image, (3, crop, crop).
    public func pixelValues(_ image: RGBImage) -> [Float] {
        let cropped = resizeAndCrop(image)
        let count = 3 * cropped.width * cropped.height
        return [Float](unsafeUninitializedCapacity: count) { buf, initialized in
            normalize(cropped, into: buf.baseAddress!)
            initialized = count
        }
    }
}
