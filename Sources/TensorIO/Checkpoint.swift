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
        /// The full dotted path from the top of the file: the keys (and list indices) of the
        /// containers holding it, then its own key, e.g. `state_dict.model.logit_scale` or
        /// `optimizer_states.0.state.3.exp_avg`.
        public let name: String
        public let dtype: DType
        public let shape: [Int]
        /// Where the bytes live, for messages (`entry 'liteclip2/data/3'`, `offset 1234`).
        public let origin: String
        /// The keys and indices of the containers (dicts, lists, objects) holding this tensor,
        /// from the top of the file; empty when the top-level object is the tensor dictionary.
        public let container: [String]
        let loader: @Sendable () throws -> TensorBytes

        public init(name: String, dtype: DType, shape: [Int], origin: String, container: [String] = [],
                    loader: @escaping @Sendable () throws -> TensorBytes) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.origin = origin
            self.container = container
            self.loader = loader
        }

        /// The name inside its container (the state-dict key), `name` without the container path.
        public var key: String {
            container.isEmpty ? name : String(name.dropFirst(container.reduce(0) { $0 + $1.count + 1 }))
        }

        public var elementCount: Int { shape.reduce(1, *) }
        public var byteCount: Int { elementCount * dtype.size }

        /// Contiguous little-endian bytes in `dtype`.
        public func load() throws -> TensorBytes { try loader() }
    }

    public let file: String
    public let format: Format
    /// Where the tensors are inside the file, e.g. "nested under key 'state_dict'", or
    /// "under 'state_dict' (260), 'optimizer_states' (520)" when several containers hold them.
    /// Nil when the file's top-level object is the tensor dictionary itself.
    public var wrapper: String?
    /// The top-level entries of a file whose top-level object is a container that is not
    /// itself the tensor dictionary (a training checkpoint): each key, its Python type, and the
    /// tensors at or below it. Empty otherwise.
    public var entries: [Entry] = []
    /// Classes the file names that are not on the allowlist, kept as inert data (never imported
    /// or called); e.g. `omegaconf.dictconfig.DictConfig` in a Lightning checkpoint's hyper-parameters.
    public var placeholders: [String] = []

    public struct Entry: Sendable, Equatable {
        public let key: String
        public let type: String
        public let tensors: Int
        public init(key: String, type: String, tensors: Int) { (self.key, self.type, self.tensors) = (key, type, tensors) }
    }
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
