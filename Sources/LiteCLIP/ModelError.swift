import Foundation

/// Errors of mapping a checkpoint onto liteCLIP and of assembling a self-contained `.lcw`.
/// Like `ReadError`, it names the file; mapping errors list every offender with its full
/// dotted name and both shapes.
public struct ModelError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case notLiteCLIP, mapping, badConfig, badTokenizer, missingTokenizer
    }

    public let code: Code
    public let file: String
    public let detail: String
    /// Expected tensors absent from the checkpoint (full names, with expected shapes).
    public var missing: [String] = []
    /// `name: expected [..], file has [..]`.
    public var mismatched: [String] = []
    /// Tensors the checkpoint has that liteCLIP does not.
    public var unexpected: [String] = []

    public init(_ code: Code, file: String, _ detail: String) {
        self.code = code
        self.file = file
        self.detail = detail
    }

    public var description: String {
        var s = "\(file): \(detail)"
        if !missing.isEmpty { s += "\n  missing (\(missing.count)):\n" + missing.map { "    \($0)" }.joined(separator: "\n") }
        if !mismatched.isEmpty { s += "\n  wrong shape (\(mismatched.count)):\n" + mismatched.map { "    \($0)" }.joined(separator: "\n") }
        if !unexpected.isEmpty { s += "\n  unexpected (\(unexpected.count)):\n" + unexpected.map { "    \($0)" }.joined(separator: "\n") }
        return s
    }
}

extension ModelError: LocalizedError {
    /// `FILE: REASON`, then every offending tensor, as `description`.
    public var errorDescription: String? { description }
}

extension ImageError: LocalizedError {
    /// `FILE: REASON`, as `description`.
    public var errorDescription: String? { description }
}
