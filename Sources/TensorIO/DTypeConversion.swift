/// Floating-point storage conversions, declared once. Every conversion goes through f32 and
/// rounds the way PyTorch's `.to(dtype)` does on CPU: round-to-nearest-even for f32 -> f16 and
/// f32 -> bf16 (NaN stays NaN), exact widening the other way.
public enum DTypeConversion {
    @inline(__always) public static func bf16ToF32(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

    @inline(__always) public static func f32ToBF16(_ f: Float) -> UInt16 {
        let bits = f.bitPattern
        if f.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x0040 }   // quiet NaN, sign kept
        let rounding = 0x7FFF + ((bits >> 16) & 1)
        return UInt16(truncatingIfNeeded: (bits &+ rounding) >> 16)
    }

    @inline(__always) public static func f16ToF32(_ h: UInt16) -> Float { Float(Float16(bitPattern: h)) }
    @inline(__always) public static func f32ToF16(_ f: Float) -> UInt16 { Float16(f).bitPattern }

    /// Converts contiguous little-endian `bytes` of float dtype `from` to float dtype `to`.
    /// Returns the input unchanged when the dtypes are equal.
    public static func convert(_ bytes: TensorBytes, from: DType, to: DType) -> TensorBytes {
        precondition(from.isFloatingPoint && to.isFloatingPoint, "float conversions only")
        if from == to { return bytes }
        let n = bytes.count / from.size
        let out = OwnedBuffer(count: n * to.size)
        let dst = out.mutable
        bytes.withBytes { src in
        for i in 0..<n {
            let f: Float
            switch from {
            case .f32: f = Float(bitPattern: src.le32(i * 4))
            case .f64: f = Float(Double(bitPattern: src.le64(i * 8)))
            case .f16: f = f16ToF32(src.le16(i * 2))
            case .bf16: f = bf16ToF32(src.le16(i * 2))
            default: fatalError("unreachable")
            }
            switch to {
            case .f32: dst.storeBytes(of: f.bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self)
            case .f64: dst.storeBytes(of: Double(f).bitPattern.littleEndian, toByteOffset: i * 8, as: UInt64.self)
            case .f16: dst.storeBytes(of: f32ToF16(f).littleEndian, toByteOffset: i * 2, as: UInt16.self)
            case .bf16: dst.storeBytes(of: f32ToBF16(f).littleEndian, toByteOffset: i * 2, as: UInt16.self)
            default: fatalError("unreachable")
            }
        }
        }
        return TensorBytes(owning: out)
    }
}
