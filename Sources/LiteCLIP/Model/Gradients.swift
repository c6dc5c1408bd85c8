/// Gradients of the trainable parameters, one buffer per parameter tensor (keyed by the
/// tensor's identity, so a module asks `grads.of(weight)`); a frozen parameter has none and its
/// module computes no weight gradient for it.
public final class Gradients {
    public let names: [String]
    /// The parameters' writable storage (what the optimiser updates), by index.
    let parameters: [Buffer]
    let buffers: [Buffer?]
    private let index: [ObjectIdentifier: Int]

    init(_ parameters: [(name: String, tensor: Tensor, storage: Buffer)], trainable: (String) -> Bool) {
        names = parameters.map(\.name)
        self.parameters = parameters.map(\.storage)
        buffers = parameters.map { trainable($0.name) ? Buffer(zeros: $0.tensor.shape) : nil }
        index = Dictionary(uniqueKeysWithValues: parameters.enumerated().map { (ObjectIdentifier($0.element.tensor), $0.offset) })
    }

    /// The gradient buffer of a parameter, nil when it is frozen (or not a parameter).
    func of(_ p: Tensor) -> UnsafeMutablePointer<Float>? {
        guard let i = index[ObjectIdentifier(p)] else { return nil }
        return buffers[i]?.data
    }

    public func zero() { for b in buffers { b?.fill(0) } }

    /// A parameter's gradient by checkpoint name (nil when frozen or unknown).
    public func gradient(_ name: String) -> [Float]? {
        guard let i = names.firstIndex(of: name) else { return nil }
        return buffers[i]?.array
    }

    public var trainableCount: Int { buffers.reduce(0) { $0 + ($1?.count ?? 0) } }
}
