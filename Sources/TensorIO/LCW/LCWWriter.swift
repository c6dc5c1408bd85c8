import Foundation

public enum LCWWriter {
    /// Writes `tensors` (in order) and `metadata` (anything that encodes to a JSON object) to
    /// `path` atomically. The header goes through `JSONCoding` (keys sorted): the same tensors and
    /// metadata always give the same bytes.
    ///
    /// Each tensor's bytes are pulled from its loader one at a time and written straight from
    /// that buffer, so peak memory is the largest single materialised tensor, not the model.
    /// - Parameters:
    ///   - progress: called after each tensor with (bytes written so far, total data bytes).
    /// - Returns: the number of bytes in the finished file.
    @discardableResult
    ///   - late: metadata strings known only after the data is written (a hash computed
    ///     meanwhile): each placeholder, which must occur once in the header, is replaced in place
    ///     by its producer's result of the same length before the file is committed.
    public static func write<Metadata: Encodable>(to path: String, tensors: [Checkpoint.Tensor], metadata: Metadata,
                                                  late: [String: () throws -> String] = [:],
                                                  progress: ((Int, Int) -> Void)? = nil) throws -> Int {
        var entries: [Entry] = []
        var offset = 0
        var names = Set<String>()
        for t in tensors {
            guard names.insert(t.name).inserted else { throw ReadError(.duplicateName, file: path, place: "tensor '\(t.name)'", "two tensors are named '\(t.name)'") }
            guard let n = Checked.byteCount(t.shape, t.dtype) else { throw ReadError(.overflow, file: path, place: "tensor '\(t.name)'", "size overflows") }
            entries.append(Entry(name: t.name, dtype: t.dtype.rawValue, shape: t.shape, offset: offset, nbytes: n))
            offset = LCW.align(offset + n)
        }
        let dataLength = offset
        // The header object is {"metadata":M,"tensors":T}: with keys sorted and compact output
        // that is exactly what JSONCoding gives for the pair, built here from M encoded once
        // (a vocabulary makes M the costly part).
        var header = Data("{\"metadata\":".utf8)
        do {
            let meta = try JSONCoding.encode(metadata)
            guard meta.first == UInt8(ascii: "{") else {
                throw ReadError(.writeFailed, file: path, "metadata must be a JSON object")
            }
            header.append(meta)
            header.append(contentsOf: Array(",\"tensors\":".utf8))
            header.append(try JSONCoding.encode(entries))
            header.append(UInt8(ascii: "}"))
        } catch let e as EncodingError {
            throw ReadError(.writeFailed, file: path, "metadata is not valid JSON: \(e)")
        }
        guard header.count <= LCW.maxHeaderBytes else { throw ReadError(.limitExceeded, file: path, "header of \(header.count) bytes exceeds the cap") }

        var patches: [(offset: Int, placeholder: String, value: () throws -> String)] = []
        for (placeholder, value) in late {
            let needle = Array(placeholder.utf8)
            var hits: [Int] = []
            header.withUnsafeBytes { h in
                needle.withUnsafeBytes { n in
                    guard h.count >= n.count, let first = n.first else { return }
                    for i in 0...(h.count - n.count) where h[i] == first && memcmp(h.baseAddress! + i, n.baseAddress!, n.count) == 0 {
                        hits.append(i)
                    }
                }
            }
            guard hits.count == 1 else { throw ReadError(.writeFailed, file: path, "late metadata placeholder found \(hits.count) times") }
            patches.append((LCW.fixedHeaderSize + hits[0], placeholder, value))
        }

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
                let want = e.nbytes
                let bytes = try t.load()
                guard bytes.count == want else {
                    throw ReadError(.shapeMismatch, file: path, place: "tensor '\(t.name)'", "loader produced \(bytes.count) bytes, expected \(want)")
                }
                // Bytes that lie as they are in the source file are copied by the kernel;
                // anything else (converted, decompressed, or a copy refused) is written.
                let copied = try bytes.fileRange.map { r in try withExtendedLifetime(bytes) { try out.copy(from: r.descriptor, offset: r.offset, count: want) } } ?? 0
                try bytes.withBytes { try out.write(UnsafeRawBufferPointer(rebasing: $0[copied...])) }
                bytes.releasePages()   // streamed: keep resident memory to about one tensor
                try out.writeZeros(dataStart + LCW.align(out.bytesWritten - dataStart) - out.bytesWritten)
                progress?(out.bytesWritten - dataStart, dataLength)
            }
            for p in patches {
                let v = Array(try p.value().utf8)
                guard v.count == p.placeholder.utf8.count else { throw ReadError(.writeFailed, file: path, "late metadata of the wrong length") }
                try out.overwrite(at: p.offset, v)
            }
            try out.commit()
            return out.bytesWritten
        } catch {
            out.abort()
            throw error
        }
    }

    private struct Entry: Encodable {
        let name: String
        let dtype: String
        let shape: [Int]
        let offset: Int
        let nbytes: Int
    }
}
