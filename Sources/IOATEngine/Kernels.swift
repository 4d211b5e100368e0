import Glibc
import IOATProtocol

/// The CPU implementations of each opcode, shared by the CPU engine and by any engine that falls back
/// to the CPU for ops its hardware lacks. Each takes resolved pointers and never allocates.
public enum Kernels {
    /// Bytes copied per step of COPY_CRC32C, so the CRC reads what the copy just wrote from cache.
    static let copyCRCStep = 64 * 1024
    /// Size of the pattern block FILL builds before copying it.
    static let fillBlock = 4096

    /// Runs `op` to completion on the calling thread.
    public static func execute(_ op: EngineOp) -> EngineCompletion {
        let n = op.length
        switch op.opcode {
        case .null:
            return EngineCompletion(cookie: op.cookie, status: .success)
        case .copy:
            memmove(op.destination!, op.source!, n)
            return EngineCompletion(cookie: op.cookie, status: .success, bytesDone: UInt64(n))
        case .fill:
            fill(op.destination!, length: n, pattern: op.arg)
            return EngineCompletion(cookie: op.cookie, status: .success, bytesDone: UInt64(n))
        case .crc32c:
            let crc = CRC32C.update(seed: seed(op), op.source!, length: n)
            return EngineCompletion(cookie: op.cookie, status: .success, result: crc, bytesDone: UInt64(n))
        case .copyCRC32C:
            var crc = seed(op)
            var offset = 0
            while offset < n {
                let step = min(copyCRCStep, n - offset)
                memmove(op.destination! + offset, op.source! + offset, step)
                crc = CRC32C.update(seed: crc, op.destination! + offset, length: step)
                offset += step
            }
            return EngineCompletion(cookie: op.cookie, status: .success, result: crc, bytesDone: UInt64(n))
        }
    }

    private static func seed(_ op: EngineOp) -> UInt32 {
        op.flags.contains(.crcSeed) ? UInt32(truncatingIfNeeded: op.arg) : 0
    }

    /// Writes `pattern` (little-endian, restarting at `destination`) over `length` bytes.
    public static func fill(_ destination: UnsafeMutableRawPointer, length: Int, pattern: UInt64) {
        let bytes = pattern.littleEndian
        if bytes == (bytes & 0xFF) &* 0x0101_0101_0101_0101 {
            memset(destination, Int32(bytes & 0xFF), length)
            return
        }
        // Build one block by doubling, then copy that (cache-hot) block over the rest.
        var filled = min(8, length)
        withUnsafeBytes(of: bytes) { _ = memcpy(destination, $0.baseAddress!, filled) }
        let block = min(fillBlock, length)
        while filled < block {
            let step = min(filled, block - filled)
            memcpy(destination + filled, destination, step)
            filled += step
        }
        while filled < length {
            let step = min(block, length - filled)
            memcpy(destination + filled, destination, step)
            filled += step
        }
    }
}
