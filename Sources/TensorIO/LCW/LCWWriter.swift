import Foundation

public enum LCWWriter {
    /// Writes `tensors` (in order) and `metadata` (a JSON object) to `path` atomically.
    ///
    /// Each tensor's bytes are pulled from its loader one at a time and written straight from
    /// that buffer, so peak memory is the largest single materialised tensor, not the model.
    /// - Parameters:
    ///   - progress: called after each tensor with (bytes written so far, total data bytes).
    /// - Returns: the number of bytes in the finished file.
    @discardableResult
    public static func write(to path: String, tensors: [Checkpoint.Tensor], metadata: [String: Any],
                             progress: ((Int, Int) -> Void)? = nil) throws -> Int {
        var entries: [[String: Any]] = []
        var offset = 0
        var names = Set<String>()
        for t in tensors {
            guard names.insert(t.name).inserted else { throw ReadError(.duplicateName, file: path, place: "tensor '\(t.name)'", "two tensors are named '\(t.name)'") }
            guard let n = Checked.byteCount(t.shape, t.dtype) else { throw ReadError(.overflow, file: path, place: "tensor '\(t.name)'", "size overflows") }
            entries.append(["name": t.name, "dtype": t.dtype.rawValue, "shape": t.shape, "offset": offset, "nbytes": n])
            offset = LCW.align(offset + n)
        }
        let dataLength = offset
        guard JSONSerialization.isValidJSONObject(metadata) else { throw ReadError(.writeFailed, file: path, "metadata is not valid JSON") }
        let header = try JSONSerialization.data(withJSONObject: ["tensors": entries, "metadata": metadata], options: [.sortedKeys])
        guard header.count <= LCW.maxHeaderBytes else { throw ReadError(.limitExceeded, file: path, "header of \(header.count) bytes exceeds the cap") }

        let out = try AtomicFile(path: path)
        do {
            var pre = LCW.magic
            func le<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { pre.append(contentsOf: $0) } }
            le(LCW.version); le(UInt32(0)); le(UInt64(header.count)); le(UInt64(dataLength))
            try out.write(pre)
            try header.withUnsafeBytes { try out.write($0) }
            let dataStart = LCW.align(LCW.fixedHeaderSize + header.count)
            try out.writeZeros(dataStart - out.bytesWritten)
            for (t, e) in zip(tensors, entries) {
                let want = e["nbytes"] as! Int
                let bytes = try t.load()
                guard bytes.count == want else {
                    throw ReadError(.shapeMismatch, file: path, place: "tensor '\(t.name)'", "loader produced \(bytes.count) bytes, expected \(want)")
                }
                try bytes.withBytes { try out.write($0) }
                bytes.releasePages()   // streamed: keep resident memory to about one tensor
                try out.writeZeros(dataStart + LCW.align(out.bytesWritten - dataStart) - out.bytesWritten)
                progress?(out.bytesWritten - dataStart, dataLength)
            }
            try out.commit()
            return out.bytesWritten
        } catch {
            out.abort()
            throw error
        }
    }
}
