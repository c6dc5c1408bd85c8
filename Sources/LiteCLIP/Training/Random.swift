/// The training run's one source of randomness: shuffles, the validation split, dropout.
///
/// xoshiro256** 1.0 (Blackman and Vigna), seeded by running SplitMix64 from the seed, as the
/// authors recommend. Port of: https://prng.di.unimi.it/xoshiro256starstar.c and
/// https://prng.di.unimi.it/splitmix64.c. Every bit of every output is fixed by this file (the
/// bounded integers and floats included), never by the standard library, so a seed gives the
/// same run on every Swift version and platform; `state` saves it in a checkpoint and
/// `init(state:)` resumes exactly where it stopped.
public struct SeededRNG: RandomNumberGenerator, Sendable {
    /// The 256-bit xoshiro state, never all zero.
    private var s0, s1, s2, s3: UInt64

    /// Four SplitMix64 outputs from `seed` fill the state (any seed, 0 included, is fine).
    public init(seed: UInt64) {
        var x = seed
        func splitMix64() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s0 = splitMix64()
        s1 = splitMix64()
        s2 = splitMix64()
        s3 = splitMix64()
    }

    /// Resumes from a saved `state`.
    /// - Precondition: `SeededRNG.isValid(state:)` (4 words, not all zero); check state read
    ///   from a file with it first.
    public init(state: [UInt64]) {
        precondition(Self.isValid(state: state), "SeededRNG state must be 4 words, not all zero (got \(state))")
        s0 = state[0]
        s1 = state[1]
        s2 = state[2]
        s3 = state[3]
    }

    /// Whether `state` can be restored: 4 words, not all zero (the all-zero state only ever
    /// gives zeros, and `init(seed:)` never makes it).
    public static func isValid(state: [UInt64]) -> Bool {
        state.count == 4 && state.contains { $0 != 0 }
    }

    /// The 4 state words, to save; `init(state:)` continues the exact sequence.
    public var state: [UInt64] { [s0, s1, s2, s3] }

    @inline(__always)
    private static func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        let result = Self.rotl(s1 &* 5, 7) &* 9
        let t = s1 << 17
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = Self.rotl(s3, 45)
        return result
    }

    /// Uniform in [0, 1): the top 24 bits of `next()` times 2^-24 (every value exact in Float).
    public mutating func nextFloat() -> Float {
        Float(next() >> 40) * 0x1p-24
    }

    /// Uniform in `0..<bound`, without bias: Lemire's multiply-and-reject
    /// ("Fast Random Integer Generation in an Interval", 2019).
    /// ```
    /// m = next() * bound (128-bit); reject while low64(m) < (2^64 - bound) mod bound; return high64(m)
    /// ```
    /// - Precondition: `bound > 0`.
    public mutating func nextInt(below bound: Int) -> Int {
        precondition(bound > 0, "nextInt(below:) needs a positive bound, got \(bound)")
        let n = UInt64(bound)
        var m = next().multipliedFullWidth(by: n)
        if m.low < n {
            let threshold = (0 &- n) % n          // (2^64 - n) mod n
            while m.low < threshold { m = next().multipliedFullWidth(by: n) }
        }
        return Int(m.high)
    }
}

extension Array {
    /// A Fisher-Yates (Durstenfeld) shuffle driven by `rng`: for i = n-1 down to 1, swap
    /// element i with element `rng.nextInt(below: i + 1)`. Fixed here rather than taken from
    /// the standard library's `shuffle(using:)`, whose algorithm may change between releases.
    public func seededShuffled(_ rng: inout SeededRNG) -> [Element] {
        var out = self
        var i = out.count - 1
        while i > 0 {
            let j = rng.nextInt(below: i + 1)
            if i != j { out.swapAt(i, j) }
            i -= 1
        }
        return out
    }
}
