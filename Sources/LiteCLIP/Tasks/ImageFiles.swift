#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A file a batch run left out, and why.
public struct SkippedFile: Sendable, Equatable, Codable {
    public let file: String
    public let reason: String

    public init(file: String, reason: String) {
        self.file = file
        self.reason = reason
    }
}

/// The image files named by a list of files and folders, as a photo-folder run finds them.
///
/// Files named directly are taken whatever their extension (the decoder reads the format from
/// the bytes). Folders are walked in sorted name order, into sub-folders unless `recursive` is
/// off; there only files with an image extension are taken, and everything else is reported as
/// skipped with its reason: other file types, hidden files (`.DS_Store`, `._IMG_1.jpg`),
/// sub-folders when not recursing, unreadable folders, symbolic-link loops.
public struct ImageFiles: Sendable {
    public static let extensions: Set<String> = ["jpg", "jpeg", "png", "webp"]

    public private(set) var files: [String] = []
    public private(set) var skipped: [SkippedFile] = []

    /// Throws `ImageError(.ioError)` for a named file or folder that does not exist.
    public init(_ inputs: [String], recursive: Bool = true) throws {
        for p in inputs {
            var st = stat()
            guard stat(p, &st) == 0 else {
                throw ImageError(.ioError, file: p, "no such file or folder")
            }
            if st.st_mode & S_IFMT == S_IFDIR {
                var visited: Set<[UInt64]> = []
                walk(p, recursive: recursive, visited: &visited)
            } else {
                files.append(p)
            }
        }
    }

    private mutating func walk(_ dir: String, recursive: Bool, visited: inout Set<[UInt64]>) {
        var st = stat()
        guard stat(dir, &st) == 0 else { skipped.append(.init(file: dir, reason: "cannot read the folder")); return }
        let id = [UInt64(st.st_dev), UInt64(st.st_ino)]
        guard visited.insert(id).inserted else {
            skipped.append(.init(file: dir, reason: "folder already visited (symbolic-link loop)"))
            return
        }
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: dir).sorted() } catch {
            skipped.append(.init(file: dir, reason: access(dir, R_OK | X_OK) == 0 ? "cannot list the folder" : "cannot list the folder: permission denied"))
            return
        }
        for name in names {
            let path = (dir as NSString).appendingPathComponent(name)
            var s = stat()
            if stat(path, &s) != 0 {
                skipped.append(.init(file: path, reason: "cannot read it (broken symbolic link?)"))
                continue
            }
            if s.st_mode & S_IFMT == S_IFDIR {
                if name.hasPrefix(".") {
                    skipped.append(.init(file: path, reason: "hidden folder"))
                } else if recursive {
                    walk(path, recursive: recursive, visited: &visited)
                } else {
                    skipped.append(.init(file: path, reason: "sub-folder (not searched with --no-recursive)"))
                }
                continue
            }
            let ext = (name as NSString).pathExtension.lowercased()
            if name.hasPrefix(".") {
                skipped.append(.init(file: path, reason: "hidden file"))
            } else if s.st_mode & S_IFMT != S_IFREG {
                skipped.append(.init(file: path, reason: "not a regular file"))
            } else if !Self.extensions.contains(ext) {
                skipped.append(.init(file: path, reason: ext.isEmpty ? "no image extension (.jpg, .jpeg, .png, .webp)"
                                                                     : "not an image type that is read (.\(ext))"))
            } else {
                files.append(path)
            }
        }
    }
}
