#if canImport(Glibc)
import Glibc
#endif
import CONNX

// TensorProto -> Checkpoint.Tensor: dtype and shape checks, then the one data location
// (raw_data, a typed repeated field, or external data) turned into contiguous little-endian bytes.

extension ONNXDecoder {
    mutating func tensor(_ t: Onnx__TensorProto, place: String) throws -> Checkpoint.Tensor {
        let name = text(t.name)
        func error(_ code: ReadError.Code, _ detail: String) -> ReadError {
            ReadError(code, file: file, place: place, detail)
        }

        if t.segment != nil { throw error(.unsupportedFormat, "segmented tensors are not supported") }
        let code = t.has_data_type != 0 ? Int(t.data_type) : 0
        guard let dtype = ONNXDataType.dtype(code) else {
            throw error(.unknownDType, "data_type \(ONNXDataType.name(code)) is not supported (supported: "
                        + "FLOAT, UINT8, INT8, INT16, INT32, INT64, BOOL, FLOAT16, DOUBLE, BFLOAT16)")
        }
        var shape: [Int] = []
        for (i, d) in UnsafeBufferPointer(start: t.dims, count: t.n_dims).enumerated() {
            guard d >= 0 else { throw error(.badHeader, "dims[\(i)] is \(d); dimensions must not be negative") }
            shape.append(Int(d))
        }
        guard let numel = Checked.product(shape), let byteCount = Checked.mul(numel, dtype.size) else {
            throw error(.overflow, "shape \(shape) of \(dtype) overflows a byte count")
        }

        // Exactly one data location.
        guard t.has_data_location == 0 || (0...1).contains(t.data_location.rawValue) else {
            throw error(.badHeader, "unknown data_location \(t.data_location.rawValue)")
        }
        let isExternal = t.has_data_location != 0 && t.data_location.rawValue == 1
        if !isExternal && t.n_external_data > 0 {
            throw error(.badHeader, "has external_data entries but data_location is not EXTERNAL")
        }
        var set: [String] = []
        if t.has_raw_data != 0 { set.append("raw_data") }
        if t.n_float_data > 0 { set.append("float_data") }
        if t.n_int32_data > 0 { set.append("int32_data") }
        if t.n_int64_data > 0 { set.append("int64_data") }
        if t.n_double_data > 0 { set.append("double_data") }
        if t.n_uint64_data > 0 { set.append("uint64_data") }
        if t.n_string_data > 0 { set.append("string_data") }
        if isExternal { set.append("external data") }
        guard set.count <= 1 else {
            throw error(.badHeader, "more than one data location is set (\(set.joined(separator: ", "))); exactly one is allowed")
        }

        let bytes: TensorBytes
        let origin: String
        switch set.first {
        case nil:
            guard byteCount == 0 else {
                throw error(.shapeMismatch, "no data, but shape \(shape) of \(dtype) needs \(byteCount) bytes")
            }
            bytes = TensorBytes(owning: OwnedBuffer(count: 0))
            origin = "no data (empty tensor)"
        case "raw_data":
            let raw = t.raw_data
            guard raw.len == byteCount else {
                throw error(.shapeMismatch, "raw_data has \(raw.len) bytes but shape \(shape) of \(dtype) needs \(byteCount)")
            }
            if raw.len > 0, let p = raw.data, let box = arena.ownedBuffer(at: p, count: raw.len) {
                bytes = TensorBytes(owning: box)  // the buffer protobuf-c unpacked into: no second copy
            } else {
                let box = OwnedBuffer(count: raw.len)
                if raw.len > 0, let p = raw.data { box.mutable.copyMemory(from: UnsafeRawBufferPointer(start: p, count: raw.len)) }
                bytes = TensorBytes(owning: box)
            }
            origin = "raw_data (\(raw.len) bytes)"
        case "external data":
            (bytes, origin) = try external(t, dtype: dtype, byteCount: byteCount, place: place)
        case let field?:
            bytes = try typed(t, field: field, dtype: dtype, numel: numel, byteCount: byteCount, place: place)
            origin = "\(field) (\(numel) values)"
        }
        return Checkpoint.Tensor(name: name, dtype: dtype, shape: shape, origin: origin) { bytes }
    }

    // MARK: Typed fields

    /// Converts a typed repeated field into `dtype`'s little-endian bytes, once.
    /// int32_data carries INT32, INT16, INT8, UINT8, BOOL, and FLOAT16 / BFLOAT16 bit patterns
    /// (0...65535); every value must fit its dtype.
    private func typed(_ t: Onnx__TensorProto, field: String, dtype: DType, numel: Int, byteCount: Int,
                       place: String) throws -> TensorBytes {
        let valid: [DType]
        let count: Int
        switch field {
        case "float_data": (valid, count) = ([.f32], t.n_float_data)
        case "int32_data": (valid, count) = ([.i32, .i16, .i8, .u8, .bool, .f16, .bf16], t.n_int32_data)
        case "int64_data": (valid, count) = ([.i64], t.n_int64_data)
        case "double_data": (valid, count) = ([.f64], t.n_double_data)
        default: (valid, count) = ([], 0)  // uint64_data, string_data: no supported dtype uses them
        }
        guard valid.contains(dtype) else {
            throw ReadError(.badHeader, file: file, place: place, "\(field) cannot hold a \(dtype) tensor")
        }
        guard count == numel else {
            throw ReadError(.shapeMismatch, file: file, place: place,
                            "\(field) has \(count) values but shape \(t.n_dims == 0 ? "[]" : "\(UnsafeBufferPointer(start: t.dims, count: t.n_dims).map { $0 })") holds \(numel)")
        }
        let box = OwnedBuffer(count: byteCount)
        let out = box.mutable
        switch field {
        case "float_data":
            for (i, v) in UnsafeBufferPointer(start: t.float_data, count: count).enumerated() {
                out.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self)
            }
        case "int64_data":
            for (i, v) in UnsafeBufferPointer(start: t.int64_data, count: count).enumerated() {
                out.storeBytes(of: v.littleEndian, toByteOffset: i * 8, as: Int64.self)
            }
        case "double_data":
            for (i, v) in UnsafeBufferPointer(start: t.double_data, count: count).enumerated() {
                out.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: i * 8, as: UInt64.self)
            }
        default:  // int32_data
            let range: ClosedRange<Int32>
            switch dtype {
            case .i32: range = Int32.min...Int32.max
            case .i16: range = Int32(Int16.min)...Int32(Int16.max)
            case .i8: range = Int32(Int8.min)...Int32(Int8.max)
            case .u8: range = 0...255
            case .bool: range = 0...1
            default: range = 0...65535  // f16 / bf16 bit patterns
            }
            for (i, v) in UnsafeBufferPointer(start: t.int32_data, count: count).enumerated() {
                guard range.contains(v) else {
                    throw ReadError(.badHeader, file: file, place: place,
                                    "int32_data[\(i)] = \(v) does not fit \(dtype) (allowed \(range.lowerBound)...\(range.upperBound))")
                }
                switch dtype.size {
                case 4: out.storeBytes(of: v.littleEndian, toByteOffset: i * 4, as: Int32.self)
                case 2: out.storeBytes(of: UInt16(truncatingIfNeeded: v).littleEndian, toByteOffset: i * 2, as: UInt16.self)
                default: out.storeBytes(of: UInt8(truncatingIfNeeded: v), toByteOffset: i, as: UInt8.self)
                }
            }
        }
        return TensorBytes(owning: box)
    }

    // MARK: External data

    /// A zero-copy view into the external data file named by `t.external_data`, after checking
    /// the location is a plain relative path to a regular file inside the model's folder (no
    /// `..`, no symbolic link anywhere along it) and the byte range lies within that file.
    /// The optional `checksum` entry is not verified.
    private mutating func external(_ t: Onnx__TensorProto, dtype: DType, byteCount: Int,
                                   place: String) throws -> (TensorBytes, String) {
        func error(_ code: ReadError.Code, _ detail: String) -> ReadError {
            ReadError(code, file: file, place: place, detail)
        }
        var entries: [String: String] = [:]
        for e in items(t.n_external_data, t.external_data) {
            let key = text(e.pointee.key)
            guard ["location", "offset", "length", "checksum"].contains(key) else { continue }  // e.g. basepath: unused
            guard entries[key] == nil else { throw error(.badHeader, "external_data key '\(key)' appears twice") }
            entries[key] = text(e.pointee.value)
        }
        guard let location = entries["location"], !location.isEmpty else {
            throw error(.badHeader, "data_location is EXTERNAL but external_data has no location")
        }
        let shown = SafetensorsReader.show(location)

        // The path: relative, no '..', and no symbolic link at any step.
        guard !location.hasPrefix("/") else {
            throw error(.unsafeEntryName, "external data location \(shown) is an absolute path; it must be relative to the model's folder")
        }
        let parts = location.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        guard !parts.contains("..") else {
            throw error(.unsafeEntryName, "external data location \(shown) contains a '..' component")
        }
        var path = baseDir
        var st = stat()
        for part in parts where part != "." {
            path += "/" + part
            guard lstat(path, &st) == 0 else {
                throw error(.ioError, "external data location \(shown): cannot stat '\(path)': \(String(cString: strerror(errno)))")
            }
            guard (st.st_mode & S_IFMT) != S_IFLNK else {
                throw error(.unsafeEntryName, "external data location \(shown): '\(path)' is a symbolic link")
            }
        }
        guard lstat(path, &st) == 0 else {
            throw error(.ioError, "external data location \(shown): cannot stat '\(path)': \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw error(.unsafeEntryName, "external data location \(shown) is not a regular file")
        }

        // The range.
        func decimal(_ key: String) throws -> Int? {
            guard let s = entries[key] else { return nil }
            guard !s.isEmpty, s.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }), let v = Int(s) else {
                throw error(.badHeader, "external data \(key) \(SafetensorsReader.show(s)) is not a non-negative decimal integer")
            }
            return v
        }
        let offset = try decimal("offset") ?? 0
        let explicitLength = try decimal("length")

        let data: ByteSource
        if let m = mapped[path] {
            data = m
        } else {
            do { data = try ByteSource(mapping: path) } catch let e as ReadError {
                throw error(e.code, "external data \(shown): \(e.detail)")
            }
            mapped[path] = data
        }
        guard offset <= data.count else {
            throw error(.outOfBounds, "external data offset \(offset) is past the end of \(shown) (\(data.count) bytes)")
        }
        let length = explicitLength ?? (data.count - offset)
        guard let end = Checked.add(offset, length), end <= data.count else {
            throw error(.outOfBounds, "external data bytes \(offset)..<\(offset + min(length, Int.max - offset)) reach past the end of \(shown) (\(data.count) bytes)")
        }
        guard length == byteCount else {
            throw error(.shapeMismatch, "external data length is \(length) bytes but the shape needs \(byteCount) (\(dtype))")
        }
        let view = TensorBytes(viewOf: data, UnsafeRawBufferPointer(rebasing: data.bytes[offset..<end]))
        return (view, "\(shown) bytes \(offset)..<\(end)")
    }
}
