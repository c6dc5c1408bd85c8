import ArgumentParser
import Foundation
import LiteCLIP
import TensorIO

@main
struct Liteclip: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "liteclip",
        abstract: "liteCLIP in Swift: inspect checkpoints and .lcw files.",
        subcommands: [Inspect.self])
}

/// Thin CLI over `Inspection.inspect`.
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List every tensor of a .pt, .ckpt, .safetensors or .lcw file with dtype, shape and SHA-256.",
        discussion: """
            The SHA-256 is of each tensor's contiguous little-endian bytes in its stored dtype, \
            the same as hashlib.sha256(t.contiguous().numpy().tobytes()) in PyTorch, so two files \
            can be compared tensor by tensor without PyTorch.
            """)

    @Argument(help: "File to inspect.") var file: String
    @Flag(help: "Print JSON instead of a table.") var json = false

    func run() throws {
        do {
            let r = try Inspection.inspect(file)
            print(json ? try r.json() : r.text())
        } catch {
            FileHandle.standardError.write("liteclip inspect: error: \(error)\n".data(using: .utf8)!)
            throw ExitCode(1)
        }
    }
}
