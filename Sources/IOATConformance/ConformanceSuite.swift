import Glibc
import IOATClient
import IOATProtocol

/// The behaviours every engine must show, checked over a real connection by comparing bytes
/// (Linux dmatest's method: source unchanged, destination equal, bytes just outside untouched).
/// `ioatctl test` and the test suite both run it.
public struct ConformanceSuite: Sendable {
    /// One case's outcome.
    public struct Result: Sendable {
        public var name: String
        public var passed: Bool
        public var detail: String
    }

    /// Random single ops to run.
    public var iterations: Int
    /// Seed for every random choice, printed so a failure can be repeated.
    public var seed: UInt64
    /// Size of each scratch buffer.
    public var bufferSize: Int
    /// Channel to open queues on (nil: the server picks).
    public var channel: UInt32?

    /// Bytes checked on each side of a destination range.
    static let guardBytes = 64
    /// The value guard bytes hold.
    static let guardValue: UInt8 = 0xA5

    /// A suite with the given parameters.
    public init(iterations: Int = 200, seed: UInt64 = 0x10A7_D5EE_D000_0001, bufferSize: Int = 4 << 20, channel: UInt32? = nil) {
        self.iterations = iterations
        self.seed = seed
        self.bufferSize = bufferSize
        self.channel = channel
    }

    /// Runs every case against `client`, reporting each result to `report` as it finishes.
    public func run(_ client: IOATClient, report: (Result) -> Void = { _ in }) async -> [Result] {
        var results: [Result] = []
        func record(_ name: String, _ body: () async throws -> String?) async {
            let result: Result
            do {
                if let failure = try await body() {
                    result = Result(name: name, passed: false, detail: failure)
                } else {
                    result = Result(name: name, passed: true, detail: "")
                }
            } catch {
                result = Result(name: name, passed: false, detail: "\(error)")
            }
            results.append(result)
            report(result)
        }

        let setup: (IOATBuffer, IOATBuffer, IOATBuffer, IOATQueue)
        do {
            let src = try await client.allocate(size: bufferSize)
            let dst = try await client.allocate(size: bufferSize, pages: .normal)
            let memfd = try IOATClient.makeSealedMemfd(size: bufferSize)
            let registered = try await client.register(memfd: memfd)
            let queue = try await client.openQueue(channel: channel, depth: 64)
            setup = (src, dst, registered, queue)
        } catch {
            let r = Result(name: "setup", passed: false, detail: "\(error)")
            report(r)
            return [r]
        }
        let (src, dst, registered, queue) = setup
        var rng = SplitMix64(seed: seed)

        await record("crc32c RFC 3720 vectors") { try await crcVectors(queue, src) }
        await record("crc32c chained by seed") { try await crcChaining(queue, src, &rng) }
        await record("fill lengths 8 64 1024 50 100 89") { try await fillLengths(queue, dst) }
        await record("random single ops (\(iterations))") {
            for i in 0..<iterations {
                let pair = rng.next() % 3 == 0 ? (registered, dst) : rng.next() % 2 == 0 ? (src, dst) : (src, registered)
                if let failure = try await randomOp(queue, source: pair.0, destination: pair.1, rng: &rng) {
                    return "iteration \(i): \(failure)"
                }
            }
            return nil
        }
        await record("burst of 32 ops on disjoint ranges") { try await burst(queue, src, dst, &rng) }
        await record("null op completes") {
            let r = try await queue.submit(.null(cookie: 77))
            return r.status == .success && r.cookie == 77 && r.bytesDone == 0 ? nil : "got \(r)"
        }
        await record("refusals name their codes") { try await refusals(client, queue, src) }
        await record("ops after a refusal still run") {
            src.fillPseudoRandom(0..<4096, seed: 9)
            let r = try await queue.copy(from: src, to: dst, length: 4096)
            return r.status == .success && dst.read(at: 0, count: 4096) == src.read(at: 0, count: 4096) ? nil : "copy after refusal: \(r.status)"
        }
        return results
    }

    // MARK: Cases

    private func crcVectors(_ queue: IOATQueue, _ buffer: IOATBuffer) async throws -> String? {
        let vectors: [([UInt8], UInt32)] = [
            ([UInt8](repeating: 0, count: 32), 0x8A91_36AA),
            ([UInt8](repeating: 0xFF, count: 32), 0x62A8_AB43),
            (Array(0..<32), 0x46DD_794E),
            (Array((0..<32).reversed()), 0x113F_DB5C),
            (Array("123456789".utf8), 0xE306_9283),
        ]
        for (bytes, expected) in vectors {
            buffer.write(bytes, at: 100)
            let got = try await queue.crc32c(of: buffer, at: 100, length: bytes.count)
            if got != expected { return "CRC32C of \(bytes.count) bytes: got \(hex(got)), expected \(hex(expected))" }
            let copied = try await queue.submit(.copyCRC32C(from: buffer.address(100), to: buffer.address(8192), length: UInt64(bytes.count)))
            if copied.result != expected { return "COPY_CRC32C: got \(hex(copied.result)), expected \(hex(expected))" }
        }
        return nil
    }

    private func crcChaining(_ queue: IOATQueue, _ buffer: IOATBuffer, _ rng: inout SplitMix64) async throws -> String? {
        let length = 100_000
        buffer.fillPseudoRandom(0..<length, seed: rng.next())
        let whole = ReferenceCRC32C.checksum(buffer.unsafeBytes(0..<length))
        let cut = Int(rng.next() % UInt64(length - 1)) + 1
        let first = try await queue.crc32c(of: buffer, length: cut)
        let chained = try await queue.crc32c(of: buffer, at: cut, length: length - cut, seed: first)
        return chained == whole ? nil : "split at \(cut): chained \(hex(chained)), whole \(hex(whole))"
    }

    private func fillLengths(_ queue: IOATQueue, _ buffer: IOATBuffer) async throws -> String? {
        let pattern: UInt64 = 0x0123_4567_89AB_CDEF
        for length in [8, 64, 1024, 50, 100, 89] {
            let offset = 256
            buffer.set(0..<offset + length + 256, to: Self.guardValue)
            let r = try await queue.fill(buffer, at: offset, length: length, pattern: pattern)
            guard r.status == .success, r.bytesDone == UInt64(length) else { return "fill \(length): \(r.status), \(r.bytesDone) bytes" }
            let got = buffer.read(at: offset, count: length)
            for i in 0..<length where got[i] != UInt8(truncatingIfNeeded: pattern >> (8 * UInt64(i % 8))) {
                return "fill \(length): byte \(i) is \(got[i])"
            }
            if let bad = untouched(buffer, around: offset..<offset + length) { return "fill \(length): \(bad)" }
        }
        return nil
    }

    /// One random op, dmatest-style.
    private func randomOp(_ queue: IOATQueue, source: IOATBuffer, destination: IOATBuffer, rng: inout SplitMix64) async throws
        -> String?
    {
        let maxLength = min(source.size, destination.size) / 2 - 2 * Self.guardBytes
        let lengthClass = rng.next() % 4
        let length = lengthClass == 0 ? Int(rng.next() % 64) + 1
            : lengthClass == 1 ? Int(rng.next() % 4096) + 1
            : lengthClass == 2 ? Int(rng.next() % 65536) + 1 : Int(rng.next() % UInt64(maxLength)) + 1
        let srcOffset = Self.guardBytes + Int(rng.next() % UInt64(source.size - length - 2 * Self.guardBytes))
        let dstOffset = Self.guardBytes + Int(rng.next() % UInt64(destination.size - length - 2 * Self.guardBytes))
        let opcode = [Opcode.copy, .fill, .crc32c, .copyCRC32C][Int(rng.next() % 4)]
        let dataSeed = rng.next()
        source.fillPseudoRandom(srcOffset..<srcOffset + length, seed: dataSeed)
        destination.set(dstOffset - Self.guardBytes..<dstOffset + length + Self.guardBytes, to: Self.guardValue)
        let sourceBefore = ReferenceCRC32C.checksum(source.unsafeBytes(srcOffset..<srcOffset + length))
        let pattern = rng.next()
        let what = "\(opcode.name) length \(length) src +\(srcOffset) dst +\(dstOffset)"
        let descriptor: Descriptor
        switch opcode {
        case .copy: descriptor = .copy(from: source.address(srcOffset), to: destination.address(dstOffset), length: UInt64(length))
        case .fill: descriptor = .fill(destination.address(dstOffset), length: UInt64(length), pattern: pattern)
        case .crc32c: descriptor = .crc32c(of: source.address(srcOffset), length: UInt64(length))
        case .copyCRC32C:
            descriptor = .copyCRC32C(from: source.address(srcOffset), to: destination.address(dstOffset), length: UInt64(length))
        case .null: descriptor = .null()
        }
        let r = try await queue.submit(descriptor)
        guard r.status == .success else { return "\(what): status \(r.status)" }
        guard r.bytesDone == UInt64(length) else { return "\(what): bytesDone \(r.bytesDone)" }
        if ReferenceCRC32C.checksum(source.unsafeBytes(srcOffset..<srcOffset + length)) != sourceBefore {
            return "\(what): source changed"
        }
        switch opcode {
        case .copy, .copyCRC32C:
            if !equal(source.unsafeBytes(srcOffset..<srcOffset + length), destination.unsafeBytes(dstOffset..<dstOffset + length)) {
                return "\(what): destination differs from source"
            }
            if opcode == .copyCRC32C && r.result != sourceBefore { return "\(what): CRC \(hex(r.result)), expected \(hex(sourceBefore))" }
        case .fill:
            let got = destination.unsafeBytes(dstOffset..<dstOffset + length)
            for i in 0..<length where got[i] != UInt8(truncatingIfNeeded: pattern >> (8 * UInt64(i % 8))) {
                return "\(what): byte \(i) is \(got[i])"
            }
        case .crc32c:
            if r.result != sourceBefore { return "\(what): CRC \(hex(r.result)), expected \(hex(sourceBefore))" }
        case .null: break
        }
        if opcode.writesDestination, let bad = untouched(destination, around: dstOffset..<dstOffset + length) {
            return "\(what): \(bad)"
        }
        return nil
    }

    private func burst(_ queue: IOATQueue, _ src: IOATBuffer, _ dst: IOATBuffer, _ rng: inout SplitMix64) async throws -> String? {
        let count = 32
        let slot = min(src.size, dst.size) / count
        var descriptors: [Descriptor] = []
        var lengths: [Int] = []
        dst.set(0..<slot * count, to: Self.guardValue)
        for i in 0..<count {
            let length = Int(rng.next() % UInt64(slot - 2 * Self.guardBytes)) + 1
            lengths.append(length)
            src.fillPseudoRandom(i * slot + Self.guardBytes..<i * slot + Self.guardBytes + length, seed: rng.next())
            descriptors.append(.copy(from: src.address(i * slot + Self.guardBytes), to: dst.address(i * slot + Self.guardBytes),
                                     length: UInt64(length), cookie: UInt64(1000 + i)))
        }
        let records = try await queue.submit(descriptors)
        for i in 0..<count {
            let r = records[i]
            guard r.cookie == UInt64(1000 + i), r.status == .success, r.bytesDone == UInt64(lengths[i]) else {
                return "op \(i): cookie \(r.cookie) status \(r.status) bytes \(r.bytesDone)"
            }
            let start = i * slot + Self.guardBytes
            if !equal(src.unsafeBytes(start..<start + lengths[i]), dst.unsafeBytes(start..<start + lengths[i])) {
                return "op \(i): destination differs"
            }
            if let bad = untouched(dst, around: start..<start + lengths[i]) { return "op \(i): \(bad)" }
        }
        return nil
    }

    private func refusals(_ client: IOATClient, _ queue: IOATQueue, _ src: IOATBuffer) async throws -> String? {
        let size = UInt64(src.size)
        let cases: [(String, Descriptor, ErrorCode)] = [
            ("unknown handle", .copy(from: BufferAddress(handle: 0xDEAD, offset: 0), to: src.address(0), length: 8), .badHandle),
            ("past the end", .copy(from: src.address(Int(size) - 4), to: src.address(0), length: 8), .outOfRange),
            ("offset overflow", .copy(from: BufferAddress(handle: src.handle, offset: UInt64.max - 2), to: src.address(0), length: 8),
             .overflow),
            ("zero length", .copy(from: src.address(0), to: src.address(64), length: 0), .badLength),
            ("seed on a copy", Descriptor(opcode: .copy, flags: .crcSeed, length: 8, source: src.address(0), destination: src.address(64)),
             .badFlags),
        ]
        for (name, descriptor, code) in cases {
            do {
                let r = try await queue.submit(descriptor)
                return "\(name): accepted (\(r.status)) instead of \(code.name)"
            } catch {
                guard error.code == code else { return "\(name): got \(error), expected \(code.name)" }
            }
        }
        do {
            _ = try await client.openQueue(depth: 0)
            return "OPEN depth 0 was accepted"
        } catch {
            if error.code != nil && error.code != .badDepth { return "OPEN depth 0: \(error)" }
        }
        return nil
    }

    // MARK: Helpers

    private func untouched(_ buffer: IOATBuffer, around range: Range<Int>) -> String? {
        let before = max(0, range.lowerBound - Self.guardBytes)
        let after = min(buffer.size, range.upperBound + Self.guardBytes)
        for (i, b) in buffer.unsafeBytes(before..<range.lowerBound).enumerated() where b != Self.guardValue {
            return "byte \(range.lowerBound - before - i) before the range changed to \(b)"
        }
        for (i, b) in buffer.unsafeBytes(range.upperBound..<after).enumerated() where b != Self.guardValue {
            return "byte \(i) after the range changed to \(b)"
        }
        return nil
    }

    private func equal(_ a: UnsafeMutableRawBufferPointer, _ b: UnsafeMutableRawBufferPointer) -> Bool {
        a.count == b.count && (a.count == 0 || memcmp(a.baseAddress!, b.baseAddress!, a.count) == 0)
    }

    private func hex(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 8 - s.count) + s
    }
}
