#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization
import CSystem

/// SIGINT/SIGTERM received since `installGracefulInterrupt()`.
let interruptCount = Atomic<Int>(0)

/// Writes a file so that it either appears complete under its final name or not at all.
///
/// Bytes go to a unique temporary file in the destination's folder (`NAME.tmp-PID-RANDOM`,
/// created with O_EXCL); `commit()` fsyncs and renames it into place. Any error, `abort()`, or
/// SIGINT/SIGTERM (once `installSignalCleanup()` has run) removes the temporary file, so a
/// failed or interrupted write leaves nothing behind.
public final class AtomicFile {
    public let path: String
    public let tempPath: String
    private var fd: Int32
    private var slot: Int
    public private(set) var bytesWritten = 0

    public init(path: String) throws {
        self.path = path
        tempPath = "\(path).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        fd = Glibc.open(tempPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw ReadError(.writeFailed, file: path, "cannot create a temporary file beside it: \(String(cString: strerror(errno)))")
        }
        slot = TempRegistry.add(tempPath)
    }

    deinit { abort() }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var p = bytes.baseAddress
        var left = bytes.count
        while left > 0, let q = p {
            let n = Glibc.write(fd, q, left)
            if n < 0 {
                if errno == EINTR { continue }
                throw ReadError(.writeFailed, file: path, place: "byte \(bytesWritten)", "write failed: \(String(cString: strerror(errno)))")
            }
            p = q + n
            left -= n
            bytesWritten += n
        }
        startWriteback()
    }

    /// Appends `count` bytes of the file open as `source` from `offset`, copied inside the kernel
    /// (copy_file_range: no pages of either file pass through this process). Returns how many
    /// bytes it copied: fewer than `count` when the kernel cannot copy between these two files
    /// (another file system, a kernel without the call), and the caller writes the rest itself.
    /// Throws on a real write failure (disk full, I/O error).
    public func copy(from source: Int32, offset: Int, count: Int) throws -> Int {
        var done = 0
        while done < count {
            let n = lc_copy_file_range(source, Int64(offset + done), fd, count - done)
            if n < 0 {
                switch errno {
                case EINTR: continue
                case EIO, ENOSPC, EDQUOT, EFBIG:
                    throw ReadError(.writeFailed, file: path, place: "byte \(bytesWritten)", "write failed: \(String(cString: strerror(errno)))")
                default: return done   // EXDEV, ENOSYS, EOPNOTSUPP, EINVAL...: not possible here
                }
            }
            if n == 0 { return done }   // the source is shorter than it was: the caller's read says so
            done += n
            bytesWritten += n
        }
        startWriteback()
        return done
    }

    /// Starts writing back what is complete, without waiting: the disk works while we go on,
    /// and `commit`'s fsync only waits for the tail.
    private func startWriteback() {
        if bytesWritten - writebackStart >= Self.writebackChunk {
            _ = lc_start_writeback(fd, Int64(writebackStart), Int64(bytesWritten - writebackStart))
            writebackStart = bytesWritten
        }
    }

    /// Bytes handed to the kernel for writeback at a time (see `write`).
    static let writebackChunk = 16 << 20
    private var writebackStart = 0

    public func write(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try write($0) } }

    /// Replaces bytes already written at `offset` (a field filled in once the data is out).
    public func overwrite(at offset: Int, _ bytes: [UInt8]) throws {
        guard offset >= 0, offset + bytes.count <= bytesWritten else {
            throw ReadError(.writeFailed, file: path, place: "byte \(offset)", "overwrite past the bytes written")
        }
        let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
        guard n == bytes.count else {
            throw ReadError(.writeFailed, file: path, place: "byte \(offset)", "write failed: \(String(cString: strerror(errno)))")
        }
    }

    public func writeZeros(_ count: Int) throws {
        if count > 0 { try write([UInt8](repeating: 0, count: count)) }
    }

    /// Flushes to disk and renames the temporary file to `path`.
    public func commit() throws {
        guard fd >= 0 else { throw ReadError(.writeFailed, file: path, "file already closed") }
        guard fsync(fd) == 0 else { throw ReadError(.writeFailed, file: path, "fsync failed: \(String(cString: strerror(errno)))") }
        Glibc.close(fd)
        fd = -1
        guard rename(tempPath, path) == 0 else {
            let e = String(cString: strerror(errno))
            unlink(tempPath)
            TempRegistry.remove(slot)
            throw ReadError(.writeFailed, file: path, "cannot rename the finished file into place: \(e)")
        }
        TempRegistry.remove(slot)
    }

    /// Discards the temporary file (no-op after `commit`).
    public func abort() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
            unlink(tempPath)
            TempRegistry.remove(slot)
        }
    }

    /// For long jobs that stop cleanly: the first SIGINT or SIGTERM only sets
    /// `interruptRequested` (and says so on stderr) so the job can finish its step and save; a
    /// second one removes every temporary file in flight and exits with 128 + the signal.
    public static func installGracefulInterrupt() {
        for sig in [SIGINT, SIGTERM] {
            signal(sig) { s in
                if interruptCount.wrappingAdd(1, ordering: .relaxed).oldValue == 0 {
                    let msg: StaticString = "\ninterrupt: stopping after this step and saving a checkpoint (interrupt again to stop at once)\n"
                    msg.withUTF8Buffer { _ = Glibc.write(2, $0.baseAddress, $0.count) }   // no allocation in a handler
                    return
                }
                TempRegistry.unlinkAll()
                _exit(128 + s)
            }
        }
    }

    /// True once SIGINT or SIGTERM arrived after `installGracefulInterrupt()`.
    public static var interruptRequested: Bool { interruptCount.load(ordering: .relaxed) > 0 }

    /// Makes SIGINT and SIGTERM remove every temporary file in flight before the process exits.
    public static func installSignalCleanup() {
        for sig in [SIGINT, SIGTERM] {
            signal(sig) { s in
                TempRegistry.unlinkAll()
                _exit(128 + s)
            }
        }
    }
}

/// Temporary paths in flight, as C strings a signal handler can unlink without allocating.
enum TempRegistry {
    static let capacity = 64
    nonisolated(unsafe) static var paths = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: capacity)
    nonisolated(unsafe) static var initialized = false
    static let lock = NSLock()

    static func add(_ path: String) -> Int {
        lock.lock(); defer { lock.unlock() }
        if !initialized { paths.initialize(repeating: nil, count: capacity); initialized = true }
        for i in 0..<capacity where paths[i] == nil {
            paths[i] = strdup(path)
            return i
        }
        return -1
    }

    static func remove(_ slot: Int) {
        guard slot >= 0 else { return }
        lock.lock(); defer { lock.unlock() }
        let p = paths[slot]
        paths[slot] = nil          // first: a signal arriving now must not unlink a freed pointer
        free(p)
    }

    static func unlinkAll() {
        guard initialized else { return }
        for i in 0..<capacity { if let p = paths[i] { unlink(p) } }
    }
}
