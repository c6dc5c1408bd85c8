#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Read-only bytes that stay valid as long as this object lives: either a read-only memory
/// map of a whole file, or a heap copy (for fuzzing and for data built in memory).
///
/// Readers take a `ByteSource` rather than a path so the same parsing code runs on a mapped
/// file and on heap bytes (AddressSanitizer cannot see overruns inside an mmap).
public final class ByteSource: @unchecked Sendable {
    public let name: String
    /// The whole file. Valid while this object is alive (see `withBytes`).
    public let bytes: UnsafeRawBufferPointer
    private let unmap: (() -> Void)?
    /// True for a file mapping (whose pages the kernel can drop and re-read), false for heap bytes.
    public let isMapped: Bool
    /// The mapped file, kept open for copies made inside the kernel (`TensorBytes.fileRange`);
    /// -1 for heap bytes.
    public let descriptor: Int32

    /// Maps `path` read-only. The size is taken with fstat at open; an empty file maps to an
    /// empty buffer.
    public init(mapping path: String) throws {
        name = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw ReadError(.ioError, file: path, "cannot open: \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            close(fd)
            throw ReadError(.ioError, file: path, "cannot stat: \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw ReadError(.ioError, file: path, "not a regular file")
        }
        let size = Int(st.st_size)
        isMapped = size > 0
        if size == 0 {
            close(fd)
            descriptor = -1
            bytes = UnsafeRawBufferPointer(start: nil, count: 0)
            unmap = nil
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            close(fd)
            throw ReadError(.ioError, file: path, "cannot map: \(String(cString: strerror(errno)))")
        }
        descriptor = fd
        bytes = UnsafeRawBufferPointer(start: p, count: size)
        unmap = { munmap(p, size); close(fd) }
    }

    /// A heap copy of `data`.
    public init(copying data: some Collection<UInt8>, name: String) {
        self.name = name
        isMapped = false
        descriptor = -1
        let count = data.count
        let p = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 64)
        _ = p.initializeMemory(as: UInt8.self, from: data)
        bytes = UnsafeRawBufferPointer(start: p.baseAddress, count: count)
        unmap = { p.deallocate() }
    }

    deinit { unmap?() }

    public var count: Int { bytes.count }

    /// Tells the kernel the whole pages inside `part` are not needed for now, so they leave this
    /// process's resident memory; a later read faults them back in from the file. A no-op for
    /// heap bytes. Streaming passes (hashing, conversion) use it to keep peak memory flat.
    public func release(_ part: UnsafeRawBufferPointer) {
        guard isMapped, let base = part.baseAddress, part.count > 0 else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (Int(bitPattern: base) + page - 1) / page * page
        let end = (Int(bitPattern: base) + part.count) / page * page
        if end > start { madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, MADV_DONTNEED) }
    }

    /// SHA-256 of the whole file, releasing each chunk's pages once hashed.
    public func sha256() -> String { sha256(stopIf: { false })! }

    /// SHA-256 of the whole file as above, checking `stopIf` between 8 MiB chunks: nil once it
    /// says stop (a hash started alongside work that failed early).
    public func sha256(stopIf: () -> Bool) -> String? {
        withBytes { all in
            var h = SHA256()
            let chunk = 8 << 20
            var at = 0
            while at < all.count {
                if stopIf() { return nil }
                let part = UnsafeRawBufferPointer(rebasing: all[at..<min(at + chunk, all.count)])
                h.update(part)
                release(part)
                at += chunk
            }
            return SHA256.hexString(h.finalize())
        }
    }

    /// Calls `body` with the whole file's bytes, keeping the mapping alive for the duration.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(self) { try body(bytes) }
    }

    /// Bounds-checked sub-range; throws `.truncated` naming `place` when it runs past the end.
    public func slice(_ offset: Int, _ length: Int, place: String) throws -> UnsafeRawBufferPointer {
        guard offset >= 0, length >= 0, let end = Checked.add(offset, length), end <= bytes.count else {
            throw ReadError(.truncated, file: name, place: place,
                            "needs bytes \(offset)..<\(offset &+ length) but the file has \(bytes.count)")
        }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<end])
    }
}

/// The bytes of one tensor, contiguous, row-major, little-endian, in the tensor's dtype:
/// a zero-copy view into a `ByteSource` where the file already lays it out that way, else an
/// owned buffer that the reader materialised.
public struct TensorBytes: @unchecked Sendable {
    private let owner: AnyObject
    /// The bytes. Only valid while this value is alive: use `withBytes` (Swift may release a
    /// value right after its last use, so reading `buffer` off a temporary is a use-after-free).
    let buffer: UnsafeRawBufferPointer
    /// True when `buffer` points into the mapped input file (no copy was made).
    public let isView: Bool

    public init(viewOf source: ByteSource, _ buffer: UnsafeRawBufferPointer) {
        owner = source
        self.buffer = buffer
        isView = true
    }

    public init(owning data: [UInt8]) {
        let box = OwnedBuffer(data)
        owner = box
        buffer = box.buffer
        isView = false
    }

    public init(owning box: OwnedBuffer) {
        owner = box
        buffer = box.buffer
        isView = false
    }

    private init(owner: AnyObject, buffer: UnsafeRawBufferPointer, isView: Bool) {
        self.owner = owner
        self.buffer = buffer
        self.isView = isView
    }

    /// A part of these bytes that keeps the same owner alive (no copy).
    public func subview(_ part: UnsafeRawBufferPointer) -> TensorBytes {
        TensorBytes(owner: owner, buffer: part, isView: isView)
    }

    public var count: Int { buffer.count }

    /// For a view into a mapped file: the open file and the bytes' offset in it, so a writer can
    /// copy them inside the kernel. Valid while this value is alive. Nil for owned buffers.
    public var fileRange: (descriptor: Int32, offset: Int)? {
        guard isView, let source = owner as? ByteSource, source.descriptor >= 0,
              let base = source.bytes.baseAddress, let p = buffer.baseAddress else { return nil }
        return (source.descriptor, p - base)
    }

    /// Calls `body` with the bytes, keeping their owner alive for the duration.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try withExtendedLifetime(owner) { try body(buffer) }
    }

    /// A copy of the bytes.
    public var array: [UInt8] { withBytes { Array($0) } }

    /// Lowercase hex SHA-256 of the bytes.
    public func sha256() -> String { withBytes { SHA256.hex($0) } }

    /// For a view into a file mapping: lets the kernel drop these pages from resident memory
    /// (they are re-read from the file if touched again). No effect on owned buffers.
    public func releasePages() {
        guard isView, let source = owner as? ByteSource else { return }
        source.release(buffer)
    }
}

/// A 64-byte aligned heap buffer, filled once by a reader.
public final class OwnedBuffer: @unchecked Sendable {
    public let mutable: UnsafeMutableRawBufferPointer
    public var buffer: UnsafeRawBufferPointer { UnsafeRawBufferPointer(mutable) }

    public init(count: Int) {
        let m = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 64)
        mutable = UnsafeMutableRawBufferPointer(rebasing: m[0..<count])
    }

    convenience init(_ data: [UInt8]) {
        self.init(count: data.count)
        data.withUnsafeBytes { mutable.copyMemory(from: $0) }
    }

    deinit { mutable.baseAddress.map { UnsafeMutableRawPointer($0).deallocate() } }
}

// MARK: - Little-endian scalar reads (unaligned-safe)

extension UnsafeRawBufferPointer {
    @inline(__always) func le16(_ at: Int) -> UInt16 { UInt16(littleEndian: loadUnaligned(fromByteOffset: at, as: UInt16.self)) }
    @inline(__always) func le32(_ at: Int) -> UInt32 { UInt32(littleEndian: loadUnaligned(fromByteOffset: at, as: UInt32.self)) }
    @inline(__always) func le64(_ at: Int) -> UInt64 { UInt64(littleEndian: loadUnaligned(fromByteOffset: at, as: UInt64.self)) }
}
