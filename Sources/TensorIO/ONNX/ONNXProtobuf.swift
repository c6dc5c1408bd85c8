#if canImport(Glibc)
import Glibc
#endif
import CONNX

// The two guards around protobuf-c's `onnx__model_proto__unpack`: a walk over the wire format
// that bounds nesting before protobuf-c recurses, and an allocator that caps what unpacking may
// allocate and keeps large byte fields (raw_data) in buffers a tensor can own.

// MARK: - Wire-format walk

/// Walks the protobuf wire format of a `ModelProto` without allocating, using protobuf-c's
/// generated descriptors to know which fields are sub-messages. It reports truncation and
/// malformed encodings with a byte offset (protobuf-c's unpack only says "failed"), and refuses
/// nesting deeper than the limits before protobuf-c, which recurses without a limit, sees it.
struct ProtobufWireCheck {
    let buf: UnsafeRawBufferPointer
    let file: String
    let maxMessageDepth: Int
    let maxGraphDepth: Int

    func checkModel() throws {
        try withUnsafePointer(to: onnx__model_proto__descriptor) { root in
            try message(0, buf.count, root, depth: 0, graphDepth: 0)
        }
    }

    private func fail(_ at: Int, end: Int, _ detail: String) -> ReadError {
        // Running off the end of the file is truncation; running off the end of an enclosing
        // message whose own length fits the file is corruption.
        if end == buf.count {
            return ReadError(.truncated, file: file, place: "byte \(at)", detail + " (the file ends at byte \(buf.count))")
        }
        return ReadError(.badHeader, file: file, place: "byte \(at)", detail + " (the enclosing message ends at byte \(end))")
    }

    private func varint(_ i: inout Int, end: Int) throws -> UInt64 {
        let start = i
        var v: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard i < end else { throw fail(start, end: end, "varint runs past the end") }
            let b = buf[i]
            i += 1
            if shift == 63 && b > 1 {
                throw ReadError(.badHeader, file: file, place: "byte \(start)", "varint longer than 64 bits")
            }
            v |= UInt64(b & 0x7F) << shift
            if b & 0x80 == 0 { return v }
            shift += 7
        }
    }

    private func message(_ start: Int, _ end: Int, _ desc: UnsafePointer<ProtobufCMessageDescriptor>,
                         depth: Int, graphDepth: Int) throws {
        let fields = UnsafeBufferPointer(start: desc.pointee.fields, count: Int(desc.pointee.n_fields))
        var i = start
        while i < end {
            let tagAt = i
            let tag = try varint(&i, end: end)
            let number = tag >> 3
            guard number != 0, number <= 536_870_911 else {
                throw ReadError(.badHeader, file: file, place: "byte \(tagAt)", "invalid protobuf field number \(number)")
            }
            switch tag & 7 {
            case 0:
                _ = try varint(&i, end: end)
            case 1, 5:
                let width = tag & 7 == 1 ? 8 : 4
                guard end - i >= width else { throw fail(i, end: end, "\(width)-byte field \(number) runs past the end") }
                i += width
            case 2:
                let lengthAt = i
                let length = try varint(&i, end: end)
                guard length <= UInt64(end - i) else {
                    throw fail(lengthAt, end: end, "field \(number) claims \(length) bytes but \(end - i) remain")
                }
                let sub = (i, i + Int(length))
                if let f = fields.first(where: { UInt64($0.id) == number }), f.type == PROTOBUF_C_TYPE_MESSAGE,
                   let subDesc = f.descriptor?.assumingMemoryBound(to: ProtobufCMessageDescriptor.self) {
                    let isGraph = strcmp(subDesc.pointee.name, "onnx.GraphProto") == 0
                    let g = graphDepth + (isGraph ? 1 : 0)
                    if g > maxGraphDepth {
                        throw ReadError(.limitExceeded, file: file, place: "byte \(tagAt)",
                                        "graphs nested deeper than \(maxGraphDepth) levels")
                    }
                    if depth + 1 > maxMessageDepth {
                        throw ReadError(.limitExceeded, file: file, place: "byte \(tagAt)",
                                        "protobuf messages nested deeper than \(maxMessageDepth) levels")
                    }
                    try message(sub.0, sub.1, subDesc, depth: depth + 1, graphDepth: g)
                }
                i = sub.1
            default:
                throw ReadError(.badHeader, file: file, place: "byte \(tagAt)",
                                "field \(number) has wire type \(tag & 7), which ONNX never uses (groups or invalid)")
            }
        }
    }
}

// MARK: - Capped allocator

/// protobuf-c's allocator for one unpack. It refuses any request that would take the total past
/// `cap` (and any single request over 2 GiB), remembering why so the reader can say so.
/// Requests of `ownedThreshold` bytes or more (in practice raw_data payloads) are served from
/// `OwnedBuffer`s so a tensor can keep its bytes after the message is freed, with no second copy.
final class ProtobufArena {
    static let ownedThreshold = 4096
    static let maxSingle = 1 << 31

    let cap: Int
    private(set) var used = 0
    private(set) var refused: Int?
    private var owned: [UnsafeMutableRawPointer: OwnedBuffer] = [:]
    let allocator: UnsafeMutablePointer<ProtobufCAllocator>

    init(cap: Int) {
        self.cap = cap
        allocator = .allocate(capacity: 1)
        allocator.initialize(to: ProtobufCAllocator(
            alloc: { data, size in
                Unmanaged<ProtobufArena>.fromOpaque(data!).takeUnretainedValue().allocate(size)
            },
            free: { data, pointer in
                guard let pointer else { return }
                Unmanaged<ProtobufArena>.fromOpaque(data!).takeUnretainedValue().release(pointer)
            },
            allocator_data: nil))
        allocator.pointee.allocator_data = Unmanaged.passUnretained(self).toOpaque()
    }

    deinit { allocator.deallocate() }

    private func allocate(_ size: Int) -> UnsafeMutableRawPointer? {
        guard size <= ProtobufArena.maxSingle, let total = Checked.add(used, size), total <= cap else {
            refused = size
            return nil
        }
        used = total
        if size >= ProtobufArena.ownedThreshold {
            let box = OwnedBuffer(count: size)
            guard let p = box.mutable.baseAddress else { return nil }
            owned[p] = box
            return p
        }
        return malloc(max(size, 1))
    }

    private func release(_ p: UnsafeMutableRawPointer) {
        if owned.removeValue(forKey: p) == nil { free(p) }
    }

    /// The buffer protobuf-c unpacked a bytes field into, when it came from this arena's owned
    /// buffers and spans exactly `count` bytes.
    func ownedBuffer(at p: UnsafeRawPointer, count: Int) -> OwnedBuffer? {
        guard let box = owned[UnsafeMutableRawPointer(mutating: p)], box.buffer.count == count else { return nil }
        return box
    }
}
