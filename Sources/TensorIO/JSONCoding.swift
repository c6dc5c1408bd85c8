import Foundation

/// The one JSON setting for everything written into a file: the `.lcw` header and its metadata,
/// a training checkpoint's state, the names and `__metadata__` of a `.safetensors` header.
/// Codable, compact, keys sorted (the bytes depend only on the values, so writing the same model
/// twice gives the same file), `/` not escaped (paths stay readable).
public enum JSONCoding {
    /// A fresh encoder with that setting (`JSONEncoder` is a class: one per use, never shared).
    public static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }

    /// `value` as UTF-8 JSON.
    public static func encode<T: Encodable>(_ value: T) throws -> Data {
        try encoder().encode(value)
    }
}
