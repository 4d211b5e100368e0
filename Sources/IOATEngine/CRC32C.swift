import CISAL

/// CRC32C (Castagnoli, the iSCSI polynomial) through ISA-L's `crc32_iscsi`.
///
/// Values are the standard CRC32C (RFC 3720 §B.4: "123456789" → 0xE3069283). Chaining is by value:
/// `update(seed: checksum(a), b) == checksum(a + b)`.
public enum CRC32C {
    /// ISA-L takes and returns the inverted register, and an `Int32` length.
    private static let chunk = 1 << 30

    /// The CRC32C of `length` bytes at `bytes`, continuing from `seed` (0 for a fresh CRC).
    public static func update(seed: UInt32, _ bytes: UnsafeRawPointer, length: Int) -> UInt32 {
        var state = ~seed
        var offset = 0
        while offset < length {
            let n = min(chunk, length - offset)
            state = crc32_iscsi(UnsafeMutablePointer(mutating: bytes.advanced(by: offset).assumingMemoryBound(to: UInt8.self)),
                                Int32(n), state)
            offset += n
        }
        return ~state
    }

    /// The CRC32C of `bytes`.
    public static func checksum(_ bytes: UnsafeRawBufferPointer, seed: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return seed }
        return update(seed: seed, base, length: bytes.count)
    }

    /// The CRC32C of a byte array.
    public static func checksum(_ bytes: [UInt8], seed: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0, seed: seed) }
    }
}
