import CCrypto

/// SHA-256 (FIPS 180-4), for fingerprinting checkpoints and converted files: OpenSSL's libcrypto
/// through its EVP interface, which picks the CPU's SHA extensions (or AVX2 code) at run time.
/// On the 157 MB full-size checkpoint that is the speed of `openssl dgst -sha256`.
///
///     var h = SHA256()
///     h.update(part1); h.update(part2)
///     let digest = h.finalize()          // 32 bytes; the hasher starts over
///     SHA256.hex(bytes)                  // one shot, lowercase hex
///
/// A value type: a copy hashes on independently of the original.
public struct SHA256 {
    public static let digestSize = 32
    public static let blockSize = 64

    private var context = Context()

    public init() {}

    /// Feeds more message bytes. Any split of the message into calls gives the same digest.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        if !isKnownUniquelyReferenced(&context) { context = Context(copying: context) }
        Context.check(EVP_DigestUpdate(context.ctx, bytes.baseAddress, bytes.count), "EVP_DigestUpdate")
    }

    /// Convenience for byte arrays and other contiguous collections.
    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// The 32-byte digest of everything fed so far; the hasher is then reset to the empty message.
    public mutating func finalize() -> [UInt8] {
        if !isKnownUniquelyReferenced(&context) { context = Context(copying: context) }
        var digest = [UInt8](repeating: 0, count: SHA256.digestSize)
        var length: UInt32 = 0
        Context.check(EVP_DigestFinal_ex(context.ctx, &digest, &length), "EVP_DigestFinal_ex")
        Context.check(EVP_DigestInit_ex(context.ctx, EVP_sha256(), nil), "EVP_DigestInit_ex")
        return digest
    }

    /// Lowercase hex SHA-256 of `bytes`, in one call.
    public static func hex(_ bytes: UnsafeRawBufferPointer) -> String {
        var digest = [UInt8](repeating: 0, count: digestSize)
        var length: UInt32 = 0
        Context.check(EVP_Digest(bytes.baseAddress, bytes.count, &digest, &length, EVP_sha256(), nil), "EVP_Digest")
        return hexString(digest)
    }

    static func hexDigest(of bytes: [UInt8]) -> String {
        bytes.withUnsafeBytes { hex($0) }
    }

    /// Lowercase hex of a digest.
    static func hexString(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 0xF)]) }
        return String(decoding: out, as: UTF8.self)
    }

    // MARK: - The EVP context

    /// Owns one `EVP_MD_CTX`, freed with the last reference.
    private final class Context {
        let ctx: OpaquePointer

        init() {
            guard let c = EVP_MD_CTX_new() else { Context.fail("EVP_MD_CTX_new") }
            ctx = c
            Context.check(EVP_DigestInit_ex(ctx, EVP_sha256(), nil), "EVP_DigestInit_ex")
        }

        init(copying other: Context) {
            guard let c = EVP_MD_CTX_new() else { Context.fail("EVP_MD_CTX_new") }
            ctx = c
            Context.check(EVP_MD_CTX_copy_ex(ctx, other.ctx), "EVP_MD_CTX_copy_ex")
        }

        deinit { EVP_MD_CTX_free(ctx) }

        /// libcrypto's SHA-256 fails only when it cannot allocate a few hundred bytes (or the
        /// library is broken), which Swift treats like any other allocation failure.
        static func check(_ status: Int32, _ call: String) {
            if status != 1 { fail(call) }
        }

        static func fail(_ call: String) -> Never {
            preconditionFailure("libcrypto: \(call) failed for SHA-256")
        }
    }
}
