import Foundation
import TensorIO

/// A float32 tensor of model weights or activations, row-major.
/// Weights loaded from an f32 `.lcw` point straight into the read-only mapping (never written
/// by inference); f16/bf16 weights are widened into an owned buffer once, at load.
public final class Tensor: @unchecked Sendable {
    public let shape: [Int]
    public let data: UnsafeMutablePointer<Float>
    private let owner: AnyObject?
    private let owned: Bool

    public var count: Int { shape.reduce(1, *) }

    /// A zero-filled tensor.
    public init(zeros shape: [Int]) {
        self.shape = shape
        let n = max(shape.reduce(1, *), 1)
        let raw = BufferPool.take(n * 4)
        raw.initializeMemory(as: Float.self, repeating: 0, count: n)
        data = raw.assumingMemoryBound(to: Float.self)
        owner = nil
        owned = true
    }

    /// The same memory under another shape (same element count).
    init(shape: [Int], sharing other: Tensor) {
        precondition(shape.reduce(1, *) == other.count, "reshape must keep the element count")
        self.shape = shape
        data = other.data
        owner = other
        owned = false
    }

    /// Weights from a checkpoint tensor: zero-copy for aligned little-endian f32, else widened.
    /// `copy` always gives an owned, writable buffer (training updates weights in place).
    init(loading t: Checkpoint.Tensor, copy: Bool = false) throws {
        shape = t.shape
        let bytes = try t.load()
        if !copy, t.dtype == .f32, bytes.withBytes({ Int(bitPattern: $0.baseAddress) % 4 == 0 }) || bytes.count == 0 {
            data = bytes.withBytes { UnsafeMutableRawPointer(mutating: $0.baseAddress ?? UnsafeRawPointer(bitPattern: 64)!) }
                .assumingMemoryBound(to: Float.self)
            owner = BytesBox(bytes)
            owned = false
        } else {
            let wide = DTypeConversion.convert(bytes, from: t.dtype, to: .f32)
            let n = max(t.elementCount, 1)
            let raw = UnsafeMutableRawPointer.allocate(byteCount: n * 4, alignment: 64)
            wide.withBytes { raw.copyMemory(from: $0.baseAddress ?? UnsafeRawPointer(raw), byteCount: $0.count) }
            data = raw.assumingMemoryBound(to: Float.self)
            owner = nil
            owned = true
        }
    }

    deinit { if owned { BufferPool.give(UnsafeMutableRawPointer(data), max(count, 1) * 4) } }

    public var array: [Float] { Array(UnsafeBufferPointer(start: data, count: count)) }

    /// The scalar value of a 0-d tensor (or the first element).
    public var scalar: Float { data[0] }
}

/// Recycles large activation buffers. A training step allocates the same sizes every step;
/// buffers this large come from fresh `mmap`s, so without recycling every step pays the
/// kernel's page faults and page zeroing (8% of a batch-64 step, perf) on top of our own fill.
/// Holds at most `maxCachedBytes` of free buffers; smaller ones go straight to the allocator.
enum BufferPool {
    static let minBytes = 1 << 20
    static let maxCachedBytes = 4 << 30
    private static let lock = NSLock()
    nonisolated(unsafe) private static var free: [Int: [UnsafeMutableRawPointer]] = [:]
    nonisolated(unsafe) private static var cachedBytes = 0

    static func take(_ bytes: Int) -> UnsafeMutableRawPointer {
        if bytes >= minBytes {
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

    static func give(_ p: UnsafeMutableRawPointer, _ bytes: Int) {
        if bytes >= minBytes {
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
}

private final class BytesBox { let bytes: TensorBytes; init(_ b: TensorBytes) { bytes = b } }

/// Strict, scoped access to a model file's tensors: every module takes its parameters by the
/// checkpoint key relative to its scope; `finish()` fails if any tensor was never taken.
final class WeightStore {
    private var tensors: [String: Checkpoint.Tensor]
    private var taken = Set<String>()
    let file: String
    /// Owned, writable copies (for training) instead of views of the file.
    let copies: Bool
    /// Every tensor taken, in the order the modules took them.
    private(set) var loaded: [(name: String, tensor: Tensor)] = []

    init(_ list: [Checkpoint.Tensor], file: String, copies: Bool = false) {
        tensors = Dictionary(list.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        self.file = file
        self.copies = copies
    }

    func take(_ name: String, _ shape: [Int]) throws -> Tensor {
        guard let t = tensors[name] else {
            var e = ModelError(.mapping, file: file, "missing weight")
            e.missing = ["\(name) \(shape)"]
            throw e
        }
        guard t.shape == shape else {
            var e = ModelError(.mapping, file: file, "wrong weight shape")
            e.mismatched = ["\(name): expected \(shape), file has \(t.shape)"]
            throw e
        }
        taken.insert(name)
        let tensor = try Tensor(loading: t, copy: copies)
        loaded.append((name, tensor))
        return tensor
    }

    func has(_ name: String) -> Bool { tensors[name] != nil }

    /// Marks a tensor as deliberately unused by inference (BERT's pooler).
    func skip(_ name: String) { if tensors[name] != nil { taken.insert(name) } }

    func finish() throws {
        let unused = tensors.keys.filter { !taken.contains($0) }.sorted()
        guard unused.isEmpty else {
            var e = ModelError(.mapping, file: file, "tensors the model does not use")
            e.unexpected = unused
            throw e
        }
    }
}

/// A dotted scope into a `WeightStore`: `scope.child("stages").child("0").tensor("weight", [..])`.
struct WeightScope {
    let store: WeightStore
    let prefix: String

    func child(_ name: String) -> WeightScope { WeightScope(store: store, prefix: prefix + name + ".") }
    func tensor(_ name: String, _ shape: [Int]) throws -> Tensor { try store.take(prefix + name, shape) }
}
