/// A tensor container opened for reading: the format that was detected, where the weights
/// were found inside it, the tensors in file order, and loose metadata.
///
/// Listing `tensors` reads no tensor data: each entry's bytes are produced on demand by
/// `load(_:)`, as a zero-copy view into the mapped file whenever the stored layout allows.
public struct Checkpoint: Sendable {
    public enum Format: String, Sendable {
        case torchZip = "pytorch-zip"
        case torchLegacy = "pytorch-legacy"
        case safetensors
        case lcw
        case onnx
    }

    public struct Tensor: Sendable {
        public let name: String
        public let dtype: DType
        public let shape: [Int]
        /// Where the bytes live, for messages (`entry 'liteclip2/data/3'`, `offset 1234`).
        public let origin: String
        let loader: @Sendable () throws -> TensorBytes

        public init(name: String, dtype: DType, shape: [Int], origin: String,
                    loader: @escaping @Sendable () throws -> TensorBytes) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.origin = origin
            self.loader = loader
        }

        public var elementCount: Int { shape.reduce(1, *) }
        public var byteCount: Int { elementCount * dtype.size }

        /// Contiguous little-endian bytes in `dtype`.
        public func load() throws -> TensorBytes { try loader() }
    }

    public let file: String
    public let format: Format
    /// How the tensors were found inside the file, e.g. "nested under key 'state_dict'".
    /// Nil when the file's top-level object is the tensor dictionary itself.
    public var wrapper: String?
    public var tensors: [Tensor]
    /// Format-specific key/value facts (torch byte order, safetensors `__metadata__`, ...).
    public var metadata: [String: String]
    /// Keeps the mapped file alive as long as the checkpoint is.
    let source: ByteSource?

    public init(file: String, format: Format, wrapper: String? = nil, tensors: [Tensor],
                metadata: [String: String] = [:], source: ByteSource?) {
        self.file = file
        self.format = format
        self.wrapper = wrapper
        self.tensors = tensors
        self.metadata = metadata
        self.source = source
    }
}
