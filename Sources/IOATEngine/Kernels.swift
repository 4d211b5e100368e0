import CISAL
import Glibc
import IOATProtocol

/// The CPU implementations of each opcode, shared by the CPU engine and by any engine that falls back
/// to the CPU for ops its hardware lacks. Each takes resolved pointers and never allocates.
public enum Kernels {
    /// Bytes copied per step of COPY_CRC32C, so the CRC reads what the copy just wrote from cache.
    static let copyCRCStep = 64 * 1024
    /// Size of the pattern block FILL builds before copying it.
    static let fillBlock = 4096

    /// Runs a NULL, COPY or FILL given as its few fields (what `execute` does for them, and what the CPU
    /// engine's inline entry for small ops runs without building an `EngineOp`).
    @inline(__always)
    static func executeCommon(_ opcode: Opcode, cookie: UInt64, source: UnsafeRawPointer?, destination: UnsafeMutableRawPointer?,
                              length: Int, arg: UInt64) -> EngineCompletion {
        switch opcode {
        case .copy: memmove(destination!, source!, length)
        case .fill: fill(destination!, length: length, pattern: arg)
        default: return EngineCompletion(cookie: cookie, status: .success)
        }
        return EngineCompletion(cookie: cookie, status: .success, bytesDone: UInt64(length))
    }

    /// Runs `op` to completion on the calling thread.
    public static func execute(_ op: EngineOp) -> EngineCompletion {
        let n = op.length
        let done = EngineCompletion(cookie: op.cookie, status: .success, bytesDone: UInt64(n))
        switch op.opcode {
        case .null, .drain, .copy, .fill:
            return executeCommon(op.opcode, cookie: op.cookie, source: op.source, destination: op.destination, length: n, arg: op.arg)
        case .crc32c:
            return finishCRC(op, CRC32C.update(seed: seed(op), op.source!, length: n))
        case .copyCRC32C:
            var crc = seed(op)
            var offset = 0
            while offset < n {
                let step = min(copyCRCStep, n - offset)
                memmove(op.destination! + offset, op.source! + offset, step)
                crc = CRC32C.update(seed: crc, op.destination! + offset, length: step)
                offset += step
            }
            return finishCRC(op, crc)
        case .compare:
            if let at = firstDifference(op.source!, UnsafeRawPointer(op.destination!), n) {
                return EngineCompletion(cookie: op.cookie, status: .mismatch, bytesDone: UInt64(at))
            }
            return done
        case .comparePattern:
            if let at = firstPatternDifference(op.source!, n, pattern: op.arg) {
                return EngineCompletion(cookie: op.cookie, status: .mismatch, bytesDone: UInt64(at))
            }
            return done
        case .dualcast:
            memmove(op.destination!, op.source!, n)
            memmove(op.auxiliary!, op.source!, n)
            return done
        case .xor:
            xor(op.sources!, count: Int(op.arg), into: op.destination!, length: n)
            return done
        case .copySG:
            // The server hands COPY_SG to engines as one COPY per entry piece.
            return EngineCompletion(cookie: op.cookie, status: .invalidOpcode)
        }
    }

    /// The CRC an op starts from: its seed, the queue's running CRC (CHAIN), or the empty CRC.
    private static func seed(_ op: EngineOp) -> UInt32 {
        if op.flags.contains(.crcSeed) { return UInt32(truncatingIfNeeded: op.arg) }
        if op.flags.contains(.crcChain), let state = op.crcState { return state.pointee }
        return 0
    }

    /// Records the CRC as the queue's running value, then STOREs or TESTs it (little-endian u32).
    private static func finishCRC(_ op: EngineOp, _ crc: UInt32) -> EngineCompletion {
        op.crcState?.pointee = crc
        var status = CompletionStatus.success
        if op.flags.contains(.crcStore) {
            op.auxiliary!.storeBytes(of: crc.littleEndian, as: UInt32.self)
        } else if op.flags.contains(.crcTest) {
            let expected = UInt32(littleEndian: UnsafeRawPointer(op.auxiliary!).loadUnaligned(as: UInt32.self))
            if expected != crc { status = .mismatch }
        }
        return EngineCompletion(cookie: op.cookie, status: status, result: crc, bytesDone: UInt64(op.length))
    }

    /// Offset of the first byte where `a` and `b` differ, or nil.
    static func firstDifference(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> Int? {
        var offset = 0
        let chunk = 4096
        while offset < n {
            let step = min(chunk, n - offset)
            if memcmp(a + offset, b + offset, step) != 0 {
                for i in offset..<offset + step where a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) {
                    return i
                }
            }
            offset += step
        }
        return nil
    }

    /// Offset of the first byte that is not the pattern's (little-endian, restarting at `a`), or nil.
    static func firstPatternDifference(_ a: UnsafeRawPointer, _ n: Int, pattern: UInt64) -> Int? {
        let words = n / 8
        let le = pattern.littleEndian
        for w in 0..<words where a.loadUnaligned(fromByteOffset: w * 8, as: UInt64.self) != le {
            for i in w * 8..<w * 8 + 8 where a.load(fromByteOffset: i, as: UInt8.self) != UInt8(truncatingIfNeeded: pattern >> (8 * UInt64(i % 8))) {
                return i
            }
        }
        for i in words * 8..<n where a.load(fromByteOffset: i, as: UInt8.self) != UInt8(truncatingIfNeeded: pattern >> (8 * UInt64(i % 8))) {
            return i
        }
        return nil
    }

    /// destination = sources[0] ^ … ^ sources[count-1]. ISA-L's `xor_gen` when every pointer is 32-byte
    /// aligned and the length a multiple of 32 (its requirement); 8-byte words otherwise.
    static func xor(_ sources: UnsafePointer<UnsafeRawPointer>, count: Int, into destination: UnsafeMutableRawPointer, length n: Int) {
        let aligned = n % 32 == 0 && Int(bitPattern: destination) % 32 == 0
            && (0..<count).allSatisfy { Int(bitPattern: sources[$0]) % 32 == 0 }
        if aligned && n <= Int(Int32.max) {
            withUnsafeTemporaryAllocation(of: UnsafeMutableRawPointer?.self, capacity: count + 1) { vectors in
                for i in 0..<count { vectors[i] = UnsafeMutableRawPointer(mutating: sources[i]) }
                vectors[count] = destination
                _ = xor_gen(Int32(count + 1), Int32(n), vectors.baseAddress)
            }
            return
        }
        var i = 0
        while i + 8 <= n {
            var word = sources[0].loadUnaligned(fromByteOffset: i, as: UInt64.self)
            for s in 1..<count { word ^= sources[s].loadUnaligned(fromByteOffset: i, as: UInt64.self) }
            destination.storeBytes(of: word, toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < n {
            var byte = sources[0].load(fromByteOffset: i, as: UInt8.self)
            for s in 1..<count { byte ^= sources[s].load(fromByteOffset: i, as: UInt8.self) }
            destination.storeBytes(of: byte, toByteOffset: i, as: UInt8.self)
            i += 1
        }
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
