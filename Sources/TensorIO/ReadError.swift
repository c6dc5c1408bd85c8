import Foundation

/// The one error type every reader and writer in TensorIO throws.
///
/// It always names the file, the place inside it (an entry, a tensor, a byte offset) and what
/// was wrong, so a user can tell which of a stranger's files is bad and why. `code` lets tests
/// and callers react to a specific failure without parsing the message.
public struct ReadError: Error, CustomStringConvertible, Equatable, Sendable {
    public enum Code: String, Sendable {
        // Any format
        case ioError, truncated, notACheckpoint, unsupportedFormat, overflow, limitExceeded
        // Pickle
        case disallowedGlobal, disallowedOpcode, malformedPickle, wholeModule
        // PyTorch containers
        case torchScript, badZip, unsafeEntryName, duplicateName, overlappingEntries,
             encryptedEntry, headerMismatch, missingRecord, storageSizeMismatch,
             storageDTypeConflict, viewOutOfBounds, badLegacyHeader, noStateDict
        // safetensors / .lcw
        case badMagic, unsupportedVersion, badHeader, unknownDType, misaligned,
             outOfBounds, shapeMismatch
        // Writing
        case writeFailed
    }

    public let code: Code
    public let file: String
    public let place: String
    public let detail: String

    public init(_ code: Code, file: String, place: String = "", _ detail: String) {
        self.code = code
        self.file = file
        self.place = place
        self.detail = detail
    }

    public var description: String {
        place.isEmpty ? "\(file): \(detail)" : "\(file): \(place): \(detail)"
    }
}

extension ReadError: LocalizedError {
    /// `FILE: [at PLACE:] REASON`, as `description`.
    public var errorDescription: String? { description }
}
