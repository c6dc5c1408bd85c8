import CZlib

/// CRC-32 as zip and PNG use it (ISO-HDLC / ISO 3309: reflected polynomial 0xEDB88320, initial
/// value and final XOR 0xFFFFFFFF): zlib's `crc32_z`.
///
///     var c = CRC32()
///     c.update(part1); c.update(part2)
///     c.value                            // CRC of part1 + part2
///     CRC32.checksum(bytes)              // one shot
public struct CRC32 {
    /// The CRC of everything fed so far (0 for nothing).
    public private(set) var value: UInt32 = 0

    public init() {}

    /// Feeds more bytes. Any split into calls gives the same value.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        value = UInt32(truncatingIfNeeded: crc32_z(UInt(value), base.assumingMemoryBound(to: UInt8.self), bytes.count))
    }

    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// CRC-32 of `bytes`, in one call.
    public static func checksum(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        var c = CRC32()
        c.update(bytes)
        return c.value
    }
}
