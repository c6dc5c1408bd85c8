/// NumPy `.npy` (format version 1.0) for float32 matrices, written atomically.
///
/// ```
/// "\x93NUMPY" 0x01 0x00, u16 LE header length, header: Python dict literal
/// {'descr': '<f4', 'fortran_order': False, 'shape': (R, C), } padded with spaces and a final
/// '\n' so the data starts on a 64-byte boundary; then R*C little-endian float32, row-major.
/// ```
public enum NPYWriter {
    public static func write(_ values: [Float], rows: Int, columns: Int, to path: String) throws {
        precondition(values.count == rows * columns, "values must be rows x columns")
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (\(rows), \(columns)), }"
        let unpadded = 10 + header.utf8.count + 1
        header += String(repeating: " ", count: (64 - unpadded % 64) % 64) + "\n"
        var pre: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0]
        let n = UInt16(header.utf8.count)
        pre += [UInt8(n & 0xFF), UInt8(n >> 8)] + Array(header.utf8)
        let out = try AtomicFile(path: path)
        do {
            try out.write(pre)
            try values.withUnsafeBytes { try out.write($0) }
            try out.commit()
        } catch {
            out.abort()
            throw error
        }
    }
}
