import Foundation
import TensorIO

/// One parameter of the module tree: its full dotted checkpoint name and shape.
public struct ParameterSpec: Equatable, Sendable {
    public let name: String
    public let shape: [Int]
    /// False for tensors the checkpoint may lack (BERT's pooler, unused by mean pooling).
    public let required: Bool
    /// For an optional parameter, the scope whose parameters are present all together or not at all.
    public let group: String?
    /// May be stored as int8 with per-row scales (`<name>_scale`): the weights of every Linear,
    /// pointwise and patch convolution, and the word embeddings (formats/lcw.md, "int8 weights").
    public var quantizable: Bool = false
}

/// Where module initialisers take their parameters from. The modules' initialisers are the
/// only place checkpoint keys and shapes are written: walked with `.record` they list the
/// parameter set (`LiteCLIPParameters.expected`), walked with `.load` they build the model.
final class ParameterSource {
    enum Mode {
        /// List names and shapes; every tensor handed out is a placeholder never read.
        case record
        /// Zero-copy (or widened) read-only views of the file's tensors.
        case view([String: Checkpoint.Tensor])
        /// Owned, writable f32 copies (training).
        case copy([String: Checkpoint.Tensor])
    }

    let mode: Mode
    let file: String
    private(set) var specs: [ParameterSpec] = []
    /// Known-unused buffers the modules declare (dropped, and named, by conversion).
    private(set) var ignorable: [String] = []
    /// Every tensor taken, in the order the modules took them.
    private(set) var loaded: [(name: String, tensor: Tensor)] = []
    /// Training's writable storage of each loaded tensor (mode `.copy`), in the same order.
    private(set) var storage: [Buffer] = []
    fileprivate var group: String? = nil
    private let placeholder = Buffer(zeros: [1])

    init(_ mode: Mode, file: String) {
        self.mode = mode
        self.file = file
    }

    var records: Bool { if case .record = mode { return true } else { return false } }

    fileprivate func take(_ name: String, _ shape: [Int], quantizable: Bool = false) throws -> Tensor {
        var spec = ParameterSpec(name: name, shape: shape, required: group == nil, group: group)
        spec.quantizable = quantizable
        specs.append(spec)
        let tensors: [String: Checkpoint.Tensor]
        switch mode {
        case .record: return Tensor(shape: shape, data: UnsafePointer(placeholder.data), owner: placeholder)
        case .view(let t), .copy(let t): tensors = t
        }
        guard let t = tensors[name], t.shape == shape else {
            // Files are placed by `Strictness.place` before they are loaded; this is the guard.
            throw Strictness.error(file: file, "cannot build the model", missing: ["\(name) \(shape)"])
        }
        let tensor: Tensor
        if t.dtype == .i8 {
            // Placed by `Strictness.place`: only quantizable weights, each with its scales.
            guard quantizable, let scales = tensors[name + Strictness.scaleSuffix] else {
                throw Strictness.error(file: file, "cannot build the model", missing: ["\(name)\(Strictness.scaleSuffix) [\(shape[0])]"])
            }
            if case .copy = mode {
                throw ModelError(.badConfig, file: file,
                                 "this model's weights are int8 (liteclip quantize): training needs the f32 weights; "
                                 + "train the f32 model, then quantize the result")
            }
            tensor = Tensor(shape: shape, int8: try Int8Weight(values: t, scales: scales))
            loaded.append((name, tensor))
            return tensor
        }
        if case .copy = mode {
            let b = try Buffer(copying: t)
            storage.append(b)
            tensor = b.view
        } else {
            tensor = try Tensor(loading: t)
        }
        loaded.append((name, tensor))
        return tensor
    }

    fileprivate func has(prefix: String) -> Bool {
        switch mode {
        case .record: return true
        case .view(let t), .copy(let t): return t.keys.contains { $0.hasPrefix(prefix) }
        }
    }

    fileprivate func declareIgnorable(_ name: String) { ignorable.append(name) }
}

/// A dotted scope into a `ParameterSource`: `s.child("stages").child("0").tensor("weight", [..])`
/// is `stages.0.weight`.
struct ParameterScope {
    let source: ParameterSource
    let prefix: String

    init(_ source: ParameterSource, prefix: String = "") {
        self.source = source
        self.prefix = prefix
    }

    func child(_ name: String) -> ParameterScope { ParameterScope(source, prefix: prefix + name + ".") }
    func tensor(_ name: String, _ shape: [Int]) throws -> Tensor { try source.take(prefix + name, shape) }
    /// A weight an int8 model may hold quantised (formats/lcw.md, "int8 weights").
    func quantizable(_ name: String, _ shape: [Int]) throws -> Tensor { try source.take(prefix + name, shape, quantizable: true) }

    /// Parameters under `name` that a checkpoint holds all together or not at all; nil when absent
    /// (when recording, they are listed as optional and the module is built from placeholders).
    func optional<T>(_ name: String, _ build: (ParameterScope) throws -> T) throws -> T? {
        let s = child(name)
        guard source.has(prefix: s.prefix) else { return nil }
        let outer = source.group
        source.group = outer ?? s.prefix
        defer { source.group = outer }
        return try build(s)
    }

    /// A buffer older checkpoints carry that the module never uses (dropped and named).
    func ignorable(_ name: String) { source.declareIgnorable(prefix + name) }

    /// Whether this walk only records (derived values must not be computed from placeholders).
    var records: Bool { source.records }
}

public enum LiteCLIPParameters {
    /// All parameters in the seed's `state_dict()` order (260 for convnext_tiny + bert-mini),
    /// listed by walking the modules' initialisers.
    public static func expected(for c: LiteCLIPConfig) -> [ParameterSpec] { declared(c).specs }

    /// Tensors a checkpoint may carry that the model never uses (conversion drops and names them).
    public static func ignorable(for c: LiteCLIPConfig) -> Set<String> { Set(declared(c).ignorable) }

    /// Both lists from one walk of the initialisers.
    static func declared(_ c: LiteCLIPConfig) -> ParameterSource {
        let source = ParameterSource(.record, file: "")
        // Recording never throws: every tensor is handed out.
        _ = try? CLIP(ParameterScope(source), c, fused: false)
        return source
    }
}

/// The strictness of loading, in one place (as `load_state_dict(strict=True)`): every required
/// parameter present with its exact shape and a floating-point dtype; an optional group (BERT's
/// pooler) all present or all absent; known-unused buffers dropped and named; anything else
/// unexpected. Every offender is listed by full dotted name with both shapes.
enum Strictness {
    /// The name of an int8 weight's scales: `<weight name>_scale`.
    static let scaleSuffix = "_scale"

    struct Placed {
        /// In the order of `expected`, renamed to the canonical names.
        var tensors: [Checkpoint.Tensor]
        /// Source names dropped as known-unused (or as unexpected, when allowed).
        var ignored: [String]
        /// Optional groups the source holds.
        var groups: Set<String>
    }

    /// - Parameters:
    ///   - tensors: source tensors by canonical name (a key prefix already removed).
    ///   - sourcePrefix: the removed prefix, put back in messages so they name the file's keys.
    ///   - unexpected: source tensors already known not to belong (outside the prefix).
    static func place(_ tensors: [String: Checkpoint.Tensor], expected: [ParameterSpec], ignorable: Set<String>,
                      file: String, context: String, sourcePrefix: String = "", unexpected extra: [Checkpoint.Tensor] = [],
                      allowUnexpected: Bool = false) throws -> Placed {
        var missing: [String] = [], mismatched: [String] = [], ignored: [String] = []
        var placed: [Checkpoint.Tensor] = []
        var used = Set<String>()
        var groups: [String: (present: [String], absent: [String])] = [:]
        for spec in expected {
            if let g = spec.group {
                if tensors[spec.name] != nil { groups[g, default: ([], [])].present.append(spec.name) }
                else { groups[g, default: ([], [])].absent.append("\(sourcePrefix)\(spec.name)") }
            }
            guard let t = tensors[spec.name] else {
                if spec.required { missing.append("\(sourcePrefix)\(spec.name) \(spec.shape)") }
                continue
            }
            used.insert(spec.name)
            guard t.shape == spec.shape else {
                mismatched.append("\(sourcePrefix)\(spec.name): expected \(spec.shape), file has \(t.shape)")
                continue
            }
            if t.dtype == .i8 && spec.quantizable {
                // An int8 weight: its per-row f32 scales beside it, and whole groups of 4 columns.
                let scaleName = spec.name + scaleSuffix, columns = spec.shape.dropFirst().reduce(1, *)
                guard let s = tensors[scaleName] else {
                    missing.append("\(sourcePrefix)\(scaleName) [\(spec.shape[0])] (the scales of int8 \(spec.name))")
                    continue
                }
                used.insert(scaleName)
                guard s.dtype == .f32, s.shape == [spec.shape[0]], columns % 4 == 0 else {
                    mismatched.append("\(sourcePrefix)\(scaleName): expected f32 [\(spec.shape[0])] scales of an int8 weight with a "
                                      + "multiple of 4 columns, file has \(s.dtype.rawValue) \(s.shape) for \(columns) columns")
                    continue
                }
                placed.append(Checkpoint.Tensor(name: spec.name, dtype: t.dtype, shape: t.shape, origin: t.origin) { try t.load() })
                placed.append(Checkpoint.Tensor(name: scaleName, dtype: s.dtype, shape: s.shape, origin: s.origin) { try s.load() })
                continue
            }
            guard t.dtype.isFloatingPoint else {
                mismatched.append("\(sourcePrefix)\(spec.name): expected a floating-point tensor, file has \(t.dtype.rawValue)"
                                  + (t.dtype == .i8 ? " (int8 is for the weights of Linear, pointwise and patch layers and the word embeddings)" : ""))
                continue
            }
            placed.append(Checkpoint.Tensor(name: spec.name, dtype: t.dtype, shape: t.shape, origin: t.origin) { try t.load() })
        }
        // A group half present is a broken checkpoint, not an optional one.
        for (_, g) in groups where !g.present.isEmpty { missing += g.absent }
        var unexpected = extra
        for (n, t) in tensors where !used.contains(n) {
            if ignorable.contains(n) { ignored.append(t.name) } else { unexpected.append(t) }
        }
        if allowUnexpected { ignored += unexpected.map(\.name); unexpected = [] }
        guard missing.isEmpty, mismatched.isEmpty, unexpected.isEmpty else {
            var e = error(file: file, context, missing: missing)
            e.mismatched = mismatched
            e.unexpected = unexpected.map { "\($0.name) \($0.shape)" }.sorted()
            throw e
        }
        return Placed(tensors: placed, ignored: ignored.sorted(), groups: Set(groups.filter { !$0.value.present.isEmpty }.keys))
    }

    static func error(file: String, _ detail: String, missing: [String]) -> ModelError {
        var e = ModelError(.mapping, file: file, detail)
        e.missing = missing
        return e
    }
}
