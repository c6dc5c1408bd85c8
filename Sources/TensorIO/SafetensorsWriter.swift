import Foundation

/// Writes a `.safetensors` file (formats/safetensors.md) that `SafetensorsReader` and the
/// reference implementation (`safetensors.torch.load_file`) both read.
///
/// ```
/// u64 N (little-endian) | N bytes of JSON header, padded with spaces to a multiple of 8 | data
/// ```
/// The header lists `__metadata__` first (when given, keys sorted), then each tensor in the
/// order given, compact, with keys `dtype`, `shape`, `data_offsets`. The data section holds the
/// tensors in that same order, back to back (the format allows no gaps), so reading the file
/// back gives the tensors in the order written. Deterministic: the bytes depend only on the
/// names, metadata and tensor contents. Streamed through `AtomicFile`: one tensor in memory at a
/// time; a failure leaves `path` as it was.
public enum SafetensorsWriter {
    /// The reader's cap on the header (formats/safetensors.md).
    public static let maxHeaderBytes = 100_000_000

    /// - Parameters:
    ///   - tensors: contiguous tensors with unique names (not `__metadata__`).
    ///   - metadata: the `__metadata__` string map (omitted when empty).
    /// - Returns: the number of bytes in the finished file.
    /// - Throws: `ReadError` (`duplicateName`, `overflow`, `limitExceeded`, `shapeMismatch` when a
    ///   loader returns the wrong byte count, `writeFailed`), or whatever a loader throws.
    @discardableResult
    public static func write(to path: String, tensors: [Checkpoint.Tensor], metadata: [String: String] = [:]) throws -> Int {
        var names = Set<String>()
        var header = "{"
        var fields: [String] = []
        if !metadata.isEmpty {
            fields.append("\"__metadata__\":" + (try json(metadata)))
        }
        var sizes: [Int] = []
        var offset = 0
        for t in tensors {
            guard t.name != "__metadata__", names.insert(t.name).inserted else {
                throw ReadError(.duplicateName, file: path, place: "tensor '\(t.name)'",
                                t.name == "__metadata__" ? "a tensor cannot be named __metadata__" : "two tensors are named '\(t.name)'")
            }
            guard let n = Checked.byteCount(t.shape, t.dtype), let end = Checked.add(offset, n) else {
                throw ReadError(.overflow, file: path, place: "tensor '\(t.name)'", "size overflows")
            }
            let shape = t.shape.map(String.init).joined(separator: ",")
            fields.append("\(try json(t.name)):{\"dtype\":\"\(t.dtype.safetensorsName)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(end)]}")
            sizes.append(n)
            offset = end
        }
        header += fields.joined(separator: ",") + "}"
        var headerBytes = Array(header.utf8)
        headerBytes += [UInt8](repeating: 0x20, count: (8 - headerBytes.count % 8) % 8)
        guard headerBytes.count <= maxHeaderBytes else {
            throw ReadError(.limitExceeded, file: path, "header of \(headerBytes.count) bytes exceeds the format's cap of \(maxHeaderBytes)")
        }

        let out = try AtomicFile(path: path)
        do {
            try out.write(withUnsafeBytes(of: UInt64(headerBytes.count).littleEndian) { Array($0) })
            try out.write(headerBytes)
            for (t, n) in zip(tensors, sizes) {
                let bytes = try t.load()
                guard bytes.count == n else {
                    throw ReadError(.shapeMismatch, file: path, place: "tensor '\(t.name)'", "loader produced \(bytes.count) bytes, expected \(n)")
                }
                try bytes.withBytes { try out.write($0) }
                bytes.releasePages()   // streamed: keep resident memory to about one tensor
            }
            try out.commit()
            return out.bytesWritten
        } catch {
            out.abort()
            throw error
        }
    }

    /// A name or the metadata map as JSON, through `JSONCoding` (the metadata's keys sorted).
    /// The header as a whole is assembled here because its order is the format's: `__metadata__`
    /// first, then the tensors in data order, each with `dtype`, `shape`, `data_offsets`.
    static func json<T: Encodable>(_ value: T) throws -> String {
        String(decoding: try JSONCoding.encode(value), as: UTF8.self)
    }
}
