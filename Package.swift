// swift-tools-version:5.9
import PackageDescription

let package = Package(
    name: "liteclip",
    products: [
        .library(name: "TensorIO", targets: ["TensorIO"]),
        .library(name: "LiteCLIP", targets: ["LiteCLIP"]),
        .executable(name: "liteclip-convert", targets: ["liteclip-convert"]),
        .executable(name: "liteclip", targets: ["liteclip"]),
        .executable(name: "liteclip-fuzz", targets: ["liteclip-fuzz"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // libzip from Debian (libzip-dev), found through pkg-config.
        .systemLibrary(name: "CZip", path: "Sources/CZip", pkgConfig: "libzip",
                       providers: [.apt(["libzip-dev"])]),
        // OpenSSL's libcrypto (libssl-dev): SHA-256 through EVP, which uses the CPU's SHA extensions.
        .systemLibrary(name: "CCrypto", path: "Sources/CCrypto", pkgConfig: "libcrypto",
                       providers: [.apt(["libssl-dev"])]),
        // SQLite (libsqlite3-dev): the photo-search index (liteclip index / search).
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite", pkgConfig: "sqlite3",
                       providers: [.apt(["libsqlite3-dev"])]),
        // zlib (zlib1g-dev, which libzip-dev and libpng-dev already pull in): CRC-32 for zip and PNG.
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"])]),
        // libjpeg-turbo's TurboJPEG API (libturbojpeg0-dev) and libpng (libpng-dev).
        .systemLibrary(name: "CTurboJPEG", path: "Sources/CTurboJPEG", pkgConfig: "libturbojpeg",
                       providers: [.apt(["libturbojpeg0-dev"])]),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG", pkgConfig: "libpng",
                       providers: [.apt(["libpng-dev"])]),
        // libwebp (libwebp-dev): WebP through its animation decoder (libwebpdemux), as Pillow does.
        .systemLibrary(name: "CWebP", path: "Sources/CWebP", pkgConfig: "libwebpdemux",
                       providers: [.apt(["libwebp-dev"])]),
        // protobuf-c code generated from ONNX's onnx.proto (formats/onnx.md), linked against
        // Debian's libprotobuf-c (libprotobuf-c-dev).
        .target(name: "CONNX", path: "Sources/CONNX", linkerSettings: [.linkedLibrary("protobuf-c")]),
        // Two Linux calls glibc declares only under _GNU_SOURCE (copy_file_range, sync_file_range).
        .target(name: "CSystem", path: "Sources/CSystem"),
        // Our sgemm (AVX-512 or AVX2 + FMA, chosen at run time) with fused epilogues, and
        // ConvNeXt's depthwise conv + LayerNorm (formats/kernels.md); OpenBLAS (libopenblas-dev)
        // is loaded with dlopen only where a product must run on it.
        .target(name: "CKernels", path: "Sources/CKernels", cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off"])],
                linkerSettings: [.linkedLibrary("dl")]),
        // Readers and writers of every tensor container we support (.pt zip and legacy,
        // safetensors, .lcw). Knows nothing about liteCLIP.
        .target(name: "TensorIO", dependencies: ["CZip", "CONNX", "CCrypto", "CZlib", "CSystem"]),
        // The liteCLIP model: config, parameter set, mapping a checkpoint onto it, conversion,
        // tokenizer, image pipeline, and the native forward pass.
        .target(name: "LiteCLIP", dependencies: ["TensorIO", "CKernels", "CTurboJPEG", "CPNG", "CWebP", "CSQLite"]),
        // Every command of both executables: parsing, checks before work, reports (text, JSON,
        // CSV), the one error format and the exit codes (docs/cli.md).
        .target(name: "LiteCLIPCommands", dependencies: [
            "LiteCLIP", "TensorIO",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "liteclip-convert", dependencies: ["LiteCLIPCommands"]),
        // The Swift runtime and Foundation linked in: a process starts ~5 ms sooner (no 15 shared
        // libraries to load and bind), which is most of a one-image zero-shot's start-up.
        .executableTarget(name: "liteclip", dependencies: ["LiteCLIPCommands"],
                          linkerSettings: [.unsafeFlags(["-static-stdlib", "-lCoreFoundation", "-l_FoundationICU", "-l_FoundationCShims",
                                                         "-l_FoundationCollections", "-lswiftSynchronization"])]),
        // The fuzz targets (scripts/fuzz builds this product alone with -sanitize=fuzzer,address);
        // built normally it replays inputs without sanitizers.
        .executableTarget(name: "liteclip-fuzz", dependencies: ["LiteCLIPFuzz"]),
        // One entry point per input surface, on heap bytes: the fuzz targets' code, which the
        // regression replay in the test suite calls too.
        .target(name: "LiteCLIPFuzz", dependencies: ["LiteCLIP", "TensorIO"]),
        // Fixture paths, error assertions and builders for hostile inputs, shared by the tests.
        .target(name: "TestSupport", dependencies: ["TensorIO"], path: "Tests/TestSupport"),
        .testTarget(name: "TensorIOTests", dependencies: ["TensorIO", "TestSupport"]),
        .testTarget(name: "LiteCLIPTests", dependencies: ["LiteCLIP", "LiteCLIPFuzz", "TensorIO", "TestSupport"]),
        // The public Swift API as an app sees it (no @testable import).
        .testTarget(name: "LiteCLIPAPITests", dependencies: ["LiteCLIP", "TestSupport"]),
    ]
)
