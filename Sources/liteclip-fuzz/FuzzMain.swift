import Foundation
import LiteCLIP
import LiteCLIPFuzz

/// The fuzz targets, one binary: `LITECLIP_FUZZ_TARGET=<pickle|pt|safetensors|onnx|lcw|image|tokenizer|captions>`
/// picks the surface (`FuzzEntry`). Built by scripts/fuzz with `-sanitize=fuzzer,address
/// -DFUZZING`, libFuzzer supplies `main` and calls `LLVMFuzzerTestOneInput`. Built normally, it
/// is a replay tool without sanitizers: `liteclip-fuzz TARGET FILE...` runs each file once and
/// prints how it ended.

/// The tokenizer target's vocabulary: $LITECLIP_SEED/model/vocab.txt (default ../shared/liteclip-seed).
func loadTokenizer() {
    let seed = ProcessInfo.processInfo.environment["LITECLIP_SEED"] ?? "../shared/liteclip-seed"
    guard let spec = try? TokenizerSpec.load(vocabTxt: seed + "/model/vocab.txt") else {
        FileHandle.standardError.write("liteclip-fuzz: cannot load \(seed)/model/vocab.txt (set LITECLIP_SEED)\n".data(using: .utf8)!)
        exit(2)
    }
    FuzzEntry.sharedTokenizer = BertTokenizer(spec: spec)
}

nonisolated(unsafe) var fuzzTarget: FuzzEntry? = nil

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<Int32>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> Int32 {
    guard let name = ProcessInfo.processInfo.environment["LITECLIP_FUZZ_TARGET"], let t = FuzzEntry(rawValue: name) else {
        FileHandle.standardError.write("set LITECLIP_FUZZ_TARGET to one of: \(FuzzEntry.allCases.map(\.rawValue).joined(separator: ", "))\n".data(using: .utf8)!)
        exit(2)
    }
    fuzzTarget = t
    if t == .tokenizer { loadTokenizer() }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = size > 0 && data != nil ? Array(UnsafeBufferPointer(start: data, count: size)) : []
    fuzzTarget?.run(bytes)
    return 0
}

#if FUZZING
// SwiftPM links an executable target with `main` renamed to `<target>_main` (for testability),
// which would hide libFuzzer's own `main`: start libFuzzer's driver from that symbol instead.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

@_cdecl("liteclip_fuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var vector = argv
    return LLVMFuzzerRunDriver(&count, &vector, fuzzTestOneInput)
}
#else
@main
enum Replay {
    static func main() {
        let args = CommandLine.arguments.dropFirst()
        if args.first == "write-micro-lcw", args.count == 2 {
            do { try FuzzEntry.writeMicroLCW(to: args.last!) } catch { print("error: \(error)"); exit(1) }
            return
        }
        guard let name = args.first, let target = FuzzEntry(rawValue: name), args.count >= 2 else {
            print("usage: liteclip-fuzz TARGET FILE...   (TARGET: \(FuzzEntry.allCases.map(\.rawValue).joined(separator: ", ")))")
            exit(2)
        }
        if target == .tokenizer { loadTokenizer() }
        for path in args.dropFirst() {
            guard let data = FileManager.default.contents(atPath: path) else { print("\(path): cannot read"); continue }
            let start = Date()
            let error = target.run([UInt8](data))
            let ms = Date().timeIntervalSince(start) * 1000
            print("\(path): " + (error.map { "error (\(String(format: "%.1f", ms)) ms): \($0)" } ?? "ok (\(String(format: "%.1f", ms)) ms)"))
        }
    }
}
#endif
