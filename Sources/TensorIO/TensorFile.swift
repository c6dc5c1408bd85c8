import Foundation

/// Opens any supported tensor container, choosing the reader from the file's first bytes,
/// never from its extension.
public enum TensorFile {
    public enum Kind: String {
        case torchZip = "pytorch-zip", torchLegacy = "pytorch-legacy", safetensors, lcw, onnx
    }

    /// The container kind the leading bytes announce, or a `.notACheckpoint` error that says
    /// what the file looks like instead.
    public static func detect(_ source: ByteSource) throws -> Kind {
        let b = source.bytes
        func starts(_ sig: [UInt8]) -> Bool { b.count >= sig.count && b.prefix(sig.count).elementsEqual(sig) }
        if starts(LCW.magic) { return .lcw }
        if starts([0x50, 0x4B, 0x03, 0x04]) || starts([0x50, 0x4B, 0x05, 0x06]) { return .torchZip }
        if b.count >= 2, b[0] == 0x80, (2...5).contains(b[1]) { return .torchLegacy }
        // torch.save(..., pickle_protocol=0 or 1): the magic number as a text LONG ('L1950a86...').
        if b.count >= 2, b[0] == UInt8(ascii: "L"), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b[1]) { return .torchLegacy }
        if b.count >= 10, b.le64(0) < UInt64(b.count), b[8] == UInt8(ascii: "{") { return .safetensors }
        // ONNX has no magic: a ModelProto starts with field 1 (ir_version) as a varint, tag 0x08.
        if b.first == 0x08 { return .onnx }
        var what = "unrecognised leading bytes " + b.prefix(8).map { String(format: "%02x", $0) }.joined(separator: " ")
        if b.count >= 262, Array(b[257..<262]) == Array("ustar".utf8) {
            throw ReadError(.unsupportedFormat, file: source.name,
                            "this is a tar archive: the pre-1.0 PyTorch tar layout is not supported; re-save it with a current torch.save")
        }
        if starts([0x89, 0x50, 0x4E, 0x47]) { what = "a PNG image" }
        else if starts([0xFF, 0xD8, 0xFF]) { what = "a JPEG image" }
        else if b.isEmpty { what = "an empty file" }
        throw ReadError(.notACheckpoint, file: source.name,
                        "not a PyTorch checkpoint, safetensors, ONNX or .lcw file (\(what))")
    }

    public static func open(_ path: String) throws -> Checkpoint {
        try read(ByteSource(mapping: path))
    }

    public static func read(_ source: ByteSource) throws -> Checkpoint {
        switch try detect(source) {
        case .lcw: return try LCWReader.read(source).checkpoint
        case .torchZip: return try TorchReader.readZip(source)
        case .torchLegacy: return try TorchReader.readLegacy(source)
        case .safetensors: return try SafetensorsReader.read(source)
        case .onnx: return try ONNXReader.read(source).checkpoint()
        }
    }
}
