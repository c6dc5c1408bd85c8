import Foundation
import TensorIO

/// A read-only float32 tensor, row-major: the type of every weight a module holds.
/// Weights from an aligned little-endian f32 `.lcw` point straight into the read-only mapping;
/// f16/bf16 weights are widened once, at load, into storage the tensor owns. Training's weights
/// are views of `Buffer`s that the trainable copy owns and its optimiser writes.
public final class Tensor: @unchecked Sendable {
    public let shape: [Int]
    /// The values; for an int8 weight (`int8` set) its per-row scales instead: every layer that
    /// takes such a weight reads `int8`.
    public let data: UnsafePointer<Float>
    /// The weight quantised to int8 (an int8 `.lcw`), else nil.
    public let int8: Int8Weight?
    /// What keeps `data` alive: the file's bytes, or a `Buffer`.
    private let owner: AnyObject

    public var count: Int { shape.reduce(1, *) }

    init(shape: [Int], data: UnsafePointer<Float>, owner: AnyObject) {
        self.shape = shape
        self.data = data
        self.owner = owner
        int8 = nil
    }

    init(shape: [Int], int8 q: Int8Weight) {
        self.shape = shape
        data = q.scales
        owner = q
        int8 = q
    }

    /// The same memory under another shape (same element count).
    init(shape: [Int], sharing other: Tensor) {
        precondition(shape.reduce(1, *) == other.count, "reshape must keep the element count")
        self.shape = shape
        data = other.data
        owner = other
        int8 = other.int8
    }

    /// A checkpoint tensor as a weight: zero-copy for aligned little-endian f32, else widened.
    convenience init(loading t: Checkpoint.Tensor) throws {
        let bytes = try t.load()
        if t.dtype == .f32, let base = bytes.withBytes({ $0.baseAddress }), Int(bitPattern: base) % 4 == 0 {
            self.init(shape: t.shape, data: base.assumingMemoryBound(to: Float.self), owner: BytesBox(bytes))
        } else {
            let b = try Buffer(copying: t)
            self.init(shape: t.shape, data: UnsafePointer(b.data), owner: b)
        }
    }

    public var array: [Float] { Array(UnsafeBufferPointer(start: data, count: count)) }

    /// The scalar value of a 0-d tensor (or the first element).
    public var scalar: Float { data[0] }
}

private final class BytesBox { let bytes: TensorBytes; init(_ b: TensorBytes) { bytes = b } }

/// Owned, writable float32 storage: activations, gradients, optimiser moments, and training's
/// weights. Large buffers come from (and go back to) the `BufferPool` of the model or run that
/// made them, if any.
final class Buffer {
    let shape: [Int]
    let data: UnsafeMutablePointer<Float>
    private let pool: BufferPool?
    private let bytes: Int

    var count: Int { shape.reduce(1, *) }

    /// A zero-filled buffer.
    init(zeros shape: [Int], pool: BufferPool? = nil) {
        self.shape = shape
        bytes = max(shape.reduce(1, *), 1) * 4
        let raw = pool?.take(bytes) ?? UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        data = raw.assumingMemoryBound(to: Float.self)
        self.pool = pool
    }

    /// A buffer whose contents are whatever the memory held: only for one the caller writes in
    /// full before reading (a product's output, a pass's destination). Zeroing costs a pass over
    /// memory: 85 MB per image-tower forward at batch 8.
    init(uninitialized shape: [Int], pool: BufferPool? = nil) {
        self.shape = shape
        bytes = max(shape.reduce(1, *), 1) * 4
        let raw = pool?.take(bytes) ?? UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        data = raw.bindMemory(to: Float.self, capacity: bytes / 4)
        self.pool = pool
    }

    /// A writable f32 copy of a checkpoint tensor (any float dtype, widened).
    convenience init(copying t: Checkpoint.Tensor) throws {
        self.init(zeros: t.shape)
        let wide = DTypeConversion.convert(try t.load(), from: t.dtype, to: .f32)
        wide.withBytes { if let p = $0.baseAddress { UnsafeMutableRawPointer(data).copyMemory(from: p, byteCount: $0.count) } }
    }

    convenience init(_ shape: [Int], _ values: [Float]) {
        self.init(zeros: shape)
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: min(values.count, count)) }
    }

    deinit {
        if let pool { pool.give(UnsafeMutableRawPointer(data), bytes) } else { data.deallocate() }
    }

    /// A read-only view of this memory (keeps the buffer alive).
    var view: Tensor { Tensor(shape: shape, data: UnsafePointer(data), owner: self) }

    var array: [Float] { Array(UnsafeBufferPointer(start: data, count: count)) }

    func fill(_ v: Float) { data.update(repeating: v, count: count) }
}

/// Recycles the large buffers of one model or one training run. A training step allocates the
/// same sizes every step; buffers this large come from fresh `mmap`s, so without recycling
/// every step pays the kernel's page faults and page zeroing (8% of a batch-64 training step,
/// perf) on top of our own fill. Holds at most `maxCachedBytes` of free buffers, freed with the
/// pool; smaller buffers go straight to the allocator.
final class BufferPool: @unchecked Sendable {
    static let minBytes = 1 << 20
    let maxCachedBytes: Int
    private let lock = NSLock()
    private var free: [Int: [UnsafeMutableRawPointer]] = [:]
    private var cachedBytes = 0

    init(maxCachedBytes: Int) { self.maxCachedBytes = maxCachedBytes }

    func take(_ bytes: Int) -> UnsafeMutableRawPointer {
        if bytes >= Self.minBytes {
            lock.lock()
            if let p = free[bytes]?.popLast() {
                cachedBytes -= bytes
                lock.unlock()
                return p
            }
            lock.unlock()
        }
        return UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
    }

    func give(_ p: UnsafeMutableRawPointer, _ bytes: Int) {
        if bytes >= Self.minBytes {
            lock.lock()
            if cachedBytes + bytes <= maxCachedBytes {
                free[bytes, default: []].append(p)
                cachedBytes += bytes
                lock.unlock()
                return
            }
            lock.unlock()
        }
        p.deallocate()
    }

    deinit { for list in free.values { for p in list { p.deallocate() } } }
}

/// A weight stored as int8 (formats/lcw.md, "int8 weights"): row r (an output channel; a token
/// of the word embeddings) is `values[r][...] * scales[r]`, symmetric, -127...127.
public final class Int8Weight: @unchecked Sendable {
    public let rows: Int
    public let columns: Int
    public let values: UnsafePointer<Int8>
    public let scales: UnsafePointer<Float>
    /// Sum of each row's values (the int8 product undoes its u8 activation offset with it).
    let rowSums: UnsafeMutablePointer<Int32>
    private let owners: [AnyObject]

    init(rows: Int, columns: Int, values: UnsafePointer<Int8>, scales: UnsafePointer<Float>, owners: [AnyObject]) {
        self.rows = rows
        self.columns = columns
        self.values = values
        self.scales = scales
        self.owners = owners
        rowSums = .allocate(capacity: max(rows, 1))
        for r in 0..<rows {
            var s: Int32 = 0
            let row = values + r * columns
            for k in 0..<columns { s &+= Int32(row[k]) }
            rowSums[r] = s
        }
    }

    /// A quantised weight from the file's int8 values and f32 scales (zero-copy where aligned).
    convenience init(values v: Checkpoint.Tensor, scales s: Checkpoint.Tensor) throws {
        let vb = try v.load()
        let rows = v.shape.first ?? 1, columns = v.shape.dropFirst().reduce(1, *)
        let scales = try Tensor(loading: s)      // keeps the scales' bytes alive
        guard let vp = vb.withBytes({ $0.baseAddress }) else {
            throw ModelError(.mapping, file: "", "int8 weight \(v.name) has no data")
        }
        self.init(rows: rows, columns: columns, values: vp.assumingMemoryBound(to: Int8.self), scales: scales.data,
                  owners: [BytesBox(vb), scales])
    }

    /// Row r as floats (the word embeddings' lookup).
    func row(_ r: Int, into dst: UnsafeMutablePointer<Float>) {
        let s = scales[r], q = values + r * columns
        for k in 0..<columns { dst[k] = Float(q[k]) * s }
    }

    deinit { rowSums.deallocate() }
}
