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
        /// The case could not run against this server (`detail` says why); it is neither passed nor failed.
        public var skipped = false
    }

    /// Thrown by a case that cannot run against this server.
    struct NotApplicable: Error { var reason: String }

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
            } catch let notApplicable as NotApplicable {
                result = Result(name: name, passed: false, detail: notApplicable.reason, skipped: true)
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
        if client.server.version >= 2 {
            await record("compare: equal, and first difference") { try await compare(queue, src, dst, &rng) }
            await record("compare with a pattern") { try await comparePattern(queue, dst) }
            await record("dualcast to two destinations") { try await dualcast(queue, src, dst, &rng) }
            await record("xor of 2, 3 and 16 sources, aligned and not") { try await xor(queue, src, dst, registered, &rng) }
            await record("crc32c store, inline store, test and mismatch") { try await crcModes(queue, src, dst, &rng) }
            await record("crc32c chained across descriptors") { try await crcChain(queue, src, &rng) }
            await record("drain completes after everything before it") { try await drain(queue, src, dst) }
            await record("refusals of CRC flag combinations and xor counts") { try await refusalsV2(queue, src, dst) }
            await record("scatter-gather copy, and the two-page copy of ioat_copy_8k_aligned") { try await copySG(queue, src, dst, registered, &rng) }
            await record("reserve credits: granted, NO_SPACE with NO_WAIT, beyond the depth refused") { try await reserve(client) }
            await record("queue index wrap-around: 40 rounds through a queue of depth 8") { try await wrapAround(client, src, dst) }
            await record("interrupt coalescing: within the maximum, ops still complete; above it, BAD_PERIOD") { try await coalescing(client, src, dst) }
            await record("ops above the channel's max transfer are split and look like one op") {
                try await splitOps(client, queue, &rng)
            }
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
        default: descriptor = .null()
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
        default: break
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
        if let failure = await expectRefusals(queue, cases) { return failure }
        // OPEN of depth 0 goes to the server raw: the client library would refuse it before sending.
        do {
            let open = Message.open(channel: queue.channel, depth: 0).encode(requestID: client.reserveRequestID(),
                                                                             version: client.server.version)
            _ = try await client.rawRequest(open)
            return "OPEN depth 0 was accepted"
        } catch {
            if error.code != .badDepth { return "OPEN depth 0: \(error), expected BAD_DEPTH" }
        }
        return nil
    }

    // MARK: Version 2 operations

    private func compare(_ queue: IOATQueue, _ a: IOATBuffer, _ b: IOATBuffer, _ rng: inout SplitMix64) async throws -> String? {
        let length = 10_000
        a.fillPseudoRandom(0..<length, seed: rng.next())
        b.write(a.read(at: 0, count: length), at: 5000)
        let same = try await queue.submit(Descriptor(opcode: .compare, length: UInt64(length), source: a.address(0), destination: b.address(5000)))
        guard same.status == .success, same.bytesDone == UInt64(length) else { return "equal ranges: \(same.status), \(same.bytesDone)" }
        let at = Int(rng.next() % UInt64(length))
        b.write([a.read(at: at, count: 1)[0] ^ 0x40], at: 5000 + at)
        let differ = try await queue.submit(Descriptor(opcode: .compare, length: UInt64(length), source: a.address(0), destination: b.address(5000)))
        guard differ.status == .mismatch, differ.bytesDone == UInt64(at) else {
            return "differing at \(at): \(differ.status), bytesDone \(differ.bytesDone)"
        }
        return nil
    }

    private func comparePattern(_ queue: IOATQueue, _ b: IOATBuffer) async throws -> String? {
        let pattern: UInt64 = 0x1122_3344_5566_7788
        _ = try await queue.fill(b, at: 64, length: 999, pattern: pattern)
        let same = try await queue.submit(Descriptor(opcode: .comparePattern, length: 999, source: b.address(64), arg: pattern))
        guard same.status == .success else { return "filled range: \(same.status)" }
        b.write([0], at: 64 + 997)
        let differ = try await queue.submit(Descriptor(opcode: .comparePattern, length: 999, source: b.address(64), arg: pattern))
        return differ.status == .mismatch && differ.bytesDone == 997 ? nil : "changed byte 997: \(differ.status) at \(differ.bytesDone)"
    }

    private func dualcast(_ queue: IOATQueue, _ a: IOATBuffer, _ b: IOATBuffer, _ rng: inout SplitMix64) async throws -> String? {
        let length = 70_001
        let first = 1000, second = 200_000
        a.fillPseudoRandom(0..<length, seed: rng.next())
        b.set(first - Self.guardBytes..<first + length + Self.guardBytes, to: Self.guardValue)
        b.set(second - Self.guardBytes..<second + length + Self.guardBytes, to: Self.guardValue)
        let r = try await queue.submit(Descriptor(opcode: .dualcast, length: UInt64(length), source: a.address(0), destination: b.address(first),
                                                  auxiliary: b.address(second)))
        guard r.status == .success else { return "status \(r.status)" }
        let expected = a.read(at: 0, count: length)
        if b.read(at: first, count: length) != expected { return "first destination differs" }
        if b.read(at: second, count: length) != expected { return "second destination differs" }
        return untouched(b, around: first..<first + length) ?? untouched(b, around: second..<second + length)
    }

    private func xor(_ queue: IOATQueue, _ a: IOATBuffer, _ b: IOATBuffer, _ list: IOATBuffer, _ rng: inout SplitMix64) async throws -> String? {
        for (count, wanted, skew) in [(2, 4096, 0), (3, 1000, 3), (16, 65536, 0), (16, 777, 5)] {
            // Sources in `a` at strides of a little over 64 KiB (+skew) where `a` has room, never
            // overlapping; parity into `b`; the source list in `list`. A 1 MiB buffer on 4 KiB pages
            // is exactly 16 × 64 KiB, so the stride shrinks to fit it (and the length with it).
            let stride = min(65_600, (a.size - skew) / count)
            let length = min(wanted, stride)
            var expected = [UInt8](repeating: 0, count: length)
            var entries: [UInt8] = []
            for s in 0..<count {
                let offset = s * stride + skew
                a.fillPseudoRandom(offset..<offset + length, seed: rng.next())
                for (i, byte) in a.read(at: offset, count: length).enumerated() { expected[i] ^= byte }
                entries += withUnsafeBytes(of: a.handle.littleEndian) { Array($0) } + [0, 0, 0, 0]
                    + withUnsafeBytes(of: UInt64(offset).littleEndian) { Array($0) }
            }
            list.write(entries, at: 0)
            let out = 4096 + skew
            b.set(out - Self.guardBytes..<out + length + Self.guardBytes, to: Self.guardValue)
            let r = try await queue.submit(Descriptor(opcode: .xor, length: UInt64(length), destination: b.address(out),
                                                      auxiliary: list.address(0), arg: UInt64(count)))
            guard r.status == .success else { return "\(count) sources: \(r.status)" }
            if b.read(at: out, count: length) != expected { return "\(count) sources of \(length) bytes: parity differs" }
            if let bad = untouched(b, around: out..<out + length) { return "\(count) sources: \(bad)" }
        }
        return nil
    }

    private func crcModes(_ queue: IOATQueue, _ a: IOATBuffer, _ b: IOATBuffer, _ rng: inout SplitMix64) async throws -> String? {
        let length = 4099
        a.fillPseudoRandom(0..<length, seed: rng.next())
        let crc = ReferenceCRC32C.checksum(a.unsafeBytes(0..<length))
        let le = withUnsafeBytes(of: crc.littleEndian) { Array($0) }
        // STORE to the auxiliary address.
        b.set(100..<108, to: Self.guardValue)
        var r = try await queue.submit(Descriptor(opcode: .crc32c, flags: .crcStore, length: UInt64(length), source: a.address(0),
                                                  auxiliary: b.address(102)))
        guard r.status == .success, r.result == crc, b.read(at: 102, count: 4) == le else { return "STORE: \(r.status), stored \(b.read(at: 102, count: 4))" }
        if b.read(at: 100, count: 2) != [Self.guardValue, Self.guardValue] || b.read(at: 106, count: 2) != [Self.guardValue, Self.guardValue] {
            return "STORE wrote outside its 4 bytes"
        }
        // COPY_CRC32C with inline STORE: the CRC follows the copied data.
        b.set(8192..<8192 + length + 8, to: Self.guardValue)
        r = try await queue.submit(Descriptor(opcode: .copyCRC32C, flags: [.crcStore, .crcInline], length: UInt64(length), source: a.address(0),
                                              destination: b.address(8192)))
        guard r.status == .success, b.read(at: 8192, count: length) == a.read(at: 0, count: length),
            b.read(at: 8192 + length, count: 4) == le, b.read(at: 8192 + length + 4, count: 1) == [Self.guardValue]
        else { return "inline STORE after a copy" }
        // TEST inline against the 4 bytes after the source: match, then mismatch; the queue goes on.
        r = try await queue.submit(Descriptor(opcode: .crc32c, flags: [.crcTest, .crcInline], length: UInt64(length), source: b.address(8192)))
        guard r.status == .success, r.result == crc else { return "inline TEST of a good CRC: \(r.status)" }
        b.write([le[0] ^ 1], at: 8192 + length)
        let records = try await queue.submit([
            Descriptor(opcode: .crc32c, flags: [.crcTest, .crcInline], length: UInt64(length), source: b.address(8192)),
            .null(cookie: 9),
        ])
        guard records[0].status == .mismatch, records[0].result == crc, records[1].status == .success else {
            return "inline TEST of a bad CRC: \(records.map(\.status))"
        }
        // TEST against the auxiliary address.
        r = try await queue.submit(Descriptor(opcode: .crc32c, flags: .crcTest, length: UInt64(length), source: a.address(0),
                                              auxiliary: b.address(102)))
        return r.status == .success ? nil : "TEST against the stored CRC: \(r.status)"
    }

    private func crcChain(_ queue: IOATQueue, _ a: IOATBuffer, _ rng: inout SplitMix64) async throws -> String? {
        let length = 30_000
        a.fillPseudoRandom(0..<length, seed: rng.next())
        let whole = ReferenceCRC32C.checksum(a.unsafeBytes(0..<length))
        let records = try await queue.submit([
            .crc32c(of: a.address(0), length: 7_000),
            Descriptor(opcode: .crc32c, flags: .crcChain, length: 13_000, source: a.address(7_000)),
            Descriptor(opcode: .crc32c, flags: .crcChain, length: 10_000, source: a.address(20_000)),
        ])
        return records[2].result == whole ? nil : "chained \(hex(records[2].result)), whole \(hex(whole))"
    }

    private func drain(_ queue: IOATQueue, _ a: IOATBuffer, _ b: IOATBuffer) async throws -> String? {
        let records = try await queue.submit([
            .copy(from: a.address(0), to: b.address(0), length: 1 << 19, cookie: 1),
            Descriptor(opcode: .drain, cookie: 2),
            .null(cookie: 3),
        ])
        return records.map(\.cookie) == [1, 2, 3] && records.allSatisfy({ $0.status == .success }) ? nil : "\(records)"
    }

    private func refusalsV2(_ queue: IOATQueue, _ a: IOATBuffer, _ b: IOATBuffer) async throws -> String? {
        let cases: [(String, Descriptor, ErrorCode)] = [
            ("STORE with TEST", Descriptor(opcode: .crc32c, flags: [.crcStore, .crcTest], length: 8, source: a.address(0), auxiliary: b.address(0)),
             .badFlags),
            ("INLINE alone", Descriptor(opcode: .crc32c, flags: .crcInline, length: 8, source: a.address(0)), .badFlags),
            ("SEED with CHAIN", Descriptor(opcode: .crc32c, flags: [.crcSeed, .crcChain], length: 8, source: a.address(0), arg: 1), .badFlags),
            ("XOR of 17", Descriptor(opcode: .xor, length: 8, destination: b.address(0), auxiliary: a.address(0), arg: 17), .badCount),
            ("inline STORE past the end", Descriptor(opcode: .crc32c, flags: [.crcStore, .crcInline], length: UInt64(a.size - 2),
                                                     source: a.address(0)), .outOfRange),
            ("DUALCAST second destination past the end", Descriptor(opcode: .dualcast, length: 64, source: a.address(0), destination: b.address(0),
                                                                    auxiliary: b.address(b.size - 8)), .outOfRange),
        ]
        if let failure = await expectRefusals(queue, cases) { return failure }
        // An XOR source list naming a handle that is not open: refused, nothing runs.
        var entries = withUnsafeBytes(of: a.handle.littleEndian) { Array($0) } + [UInt8](repeating: 0, count: 12)
        entries += withUnsafeBytes(of: UInt32(0xBEEF).littleEndian) { Array($0) } + [UInt8](repeating: 0, count: 12)
        a.write(entries, at: 0)
        do {
            _ = try await queue.submit(Descriptor(opcode: .xor, length: 8, destination: b.address(0), auxiliary: a.address(0), arg: 2))
            return "XOR with a bad handle in its source list was accepted"
        } catch {
            guard error.code == .badHandle else { return "XOR source list: \(error)" }
        }
        return nil
    }

    private func copySG(_ queue: IOATQueue, _ a: IOATBuffer, _ b: IOATBuffer, _ list: IOATBuffer, _ rng: inout SplitMix64) async throws
        -> String?
    {
        func entry(_ src: Int, _ dst: Int, _ length: Int) -> [UInt8] {
            withUnsafeBytes(of: a.handle.littleEndian) { Array($0) } + withUnsafeBytes(of: b.handle.littleEndian) { Array($0) }
                + withUnsafeBytes(of: UInt64(src).littleEndian) { Array($0) } + withUnsafeBytes(of: UInt64(dst).littleEndian) { Array($0) }
                + withUnsafeBytes(of: UInt64(length).littleEndian) { Array($0) }
        }
        // ioat_copy_8k_aligned: two 4 KiB pages from anywhere to anywhere.
        var cases: [[(Int, Int, Int)]] = [[(8192, 65536, 4096), (0, 20480, 4096)]]
        // Odd sizes and offsets, in no particular order, scaled to the buffers: sources in the first half of
        // `a`, destinations in 8 disjoint slots of the second half of `b`.
        let span = min(a.size, b.size)
        let slot = span / 16
        var odd: [(Int, Int, Int)] = []
        for i in 0..<7 {
            odd.append((i * 100_003 % (span / 2 - slot) + 1, span / 2 + i * slot + 7, Int(rng.next() % UInt64(slot - 2 * Self.guardBytes - 7)) + 1))
        }
        cases.append(odd)
        for entries in cases {
            a.fillPseudoRandom(0..<span / 2 + slot, seed: rng.next())
            for (_, dst, length) in entries { b.set(dst - Self.guardBytes..<dst + length + Self.guardBytes, to: Self.guardValue) }
            list.write(entries.flatMap { entry($0.0, $0.1, $0.2) }, at: 0)
            let total = entries.reduce(0) { $0 + $1.2 }
            let r = try await queue.submit(Descriptor(opcode: .copySG, length: UInt64(total), auxiliary: list.address(0), arg: UInt64(entries.count)))
            guard r.status == .success, r.bytesDone == UInt64(total), r.opcode == Opcode.copySG.rawValue else {
                return "\(entries.count) entries: \(r.status), \(r.bytesDone) of \(total)"
            }
            for (i, (src, dst, length)) in entries.enumerated() {
                if !equal(a.unsafeBytes(src..<src + length), b.unsafeBytes(dst..<dst + length)) { return "entry \(i) differs" }
                if let bad = untouched(b, around: dst..<dst + length) { return "entry \(i): \(bad)" }
            }
        }
        // A length that is not the sum of the entries is refused.
        list.write(entry(0, 0, 100), at: 0)
        let bad = [("COPY_SG length is not the sum", Descriptor(opcode: .copySG, length: 99, auxiliary: list.address(0), arg: 1), ErrorCode.badLength)]
        return await expectRefusals(queue, bad)
    }

    private func reserve(_ client: IOATClient) async throws -> String? {
        let queue = try await client.openQueue(channel: channel, depth: 4)
        defer { Task { try? await queue.close() } }
        guard try await queue.reserve(credits: 4) == 4 else { return "an idle queue of depth 4 should have 4 free credits" }
        do {
            _ = try await queue.reserve(credits: 5)
            return "reserving beyond the depth was accepted"
        } catch {
            guard error.code == .badCount else { return "beyond the depth: \(error)" }
        }
        // Hold every credit with a long op, then NO_WAIT must be refused and a waiting RESERVE answered later.
        // A grant is a failure only if it comes every time: the copies take milliseconds, and a caller
        // delayed that long (a loaded machine) legitimately finds the credits free again.
        let big = try await client.allocate(size: 64 << 20, pages: .normal)
        let busy = (0..<4).map { _ in Descriptor.copy(from: big.address(0), to: big.address(32 << 20), length: 32 << 20) }
        var sawNoSpace = false
        var granted = 0
        let attempts = 5
        for _ in 0..<attempts where !sawNoSpace {
            // The callback form sends the SUBMIT before it returns, so the server reads it before the RESERVE.
            let held = AsyncStream<IOATClient.BatchResult>.makeStream()
            queue.submit(busy) { held.continuation.yield($0) }
            do {
                _ = try await queue.reserve(credits: 1, noWait: true)
            } catch {
                guard error.code == .noSpace else { return "NO_WAIT: \(error)" }
                sawNoSpace = true
            }
            granted = try await queue.reserve(credits: 4)
            for await result in held.stream {
                guard case .success(let records) = result, records.allSatisfy({ $0.status == .success }) else { return "the busy copies: \(result)" }
                break
            }
        }
        try await client.free(big)
        if !sawNoSpace { return "NO_WAIT RESERVE was granted in each of \(attempts) tries while 4 long copies held every credit" }
        return granted == 4 ? nil : "waiting RESERVE answered with \(granted) free credits"
    }

    private func coalescing(_ client: IOATClient, _ a: IOATBuffer, _ b: IOATBuffer) async throws -> String? {
        let queue = try await client.openQueue(channel: channel, depth: 16)
        defer { Task { try? await queue.close() } }
        let maximum = client.server.channels.first { $0.index == queue.channel }?.maxCoalesceMicroseconds ?? 0
        do {
            try await queue.setCoalescing(microseconds: Int(maximum) + 1)
            return "a period above the maximum \(maximum) µs was accepted"
        } catch {
            guard error.code == .badPeriod else { return "above the maximum: \(error)" }
        }
        try await queue.setCoalescing(microseconds: min(2000, Int(maximum)))
        // Several batches, each with INT_EN on its last op: every record still arrives, bytes are right.
        a.fillPseudoRandom(0..<65536, seed: 12)
        for round in 0..<4 {
            let records = try await queue.submit((0..<4).map { i in
                .copy(from: a.address((round * 4 + i) * 4096), to: b.address((round * 4 + i) * 4096), length: 4096)
            })
            guard records.allSatisfy({ $0.status == .success }) else { return "round \(round): \(records.map(\.status))" }
        }
        if !equal(a.unsafeBytes(0..<65536), b.unsafeBytes(0..<65536)) { return "coalesced copies differ" }
        try await queue.setCoalescing(microseconds: 0)
        return nil
    }

    private func wrapAround(_ client: IOATClient, _ a: IOATBuffer, _ b: IOATBuffer) async throws -> String? {
        let queue = try await client.openQueue(channel: channel, depth: 8)
        defer { Task { try? await queue.close() } }
        for round in 0..<40 {
            let ops = (0..<8).map { i in
                Descriptor.fill(b.address((round * 8 + i) * 64), length: 64,
                                pattern: UInt64(UInt8(truncatingIfNeeded: round * 8 + i)) * 0x0101_0101_0101_0101)
            }
            let records = try await queue.submit(ops)
            guard records.allSatisfy({ $0.status == .success }) else { return "round \(round): \(records.map(\.status))" }
        }
        for k in 0..<320 where b.read(at: k * 64, count: 64) != [UInt8](repeating: UInt8(truncatingIfNeeded: k), count: 64) {
            return "op \(k) wrote the wrong bytes"
        }
        return nil
    }

    /// Copy, fill, CRC with inline STORE, and compare, each a little over two max transfers long.
    private func splitOps(_ client: IOATClient, _ queue: IOATQueue, _ rng: inout SplitMix64) async throws -> String? {
        guard let info = client.server.channels.first(where: { $0.index == queue.channel }) else {
            return "the queue's channel \(queue.channel) is not in HELLO_OK"
        }
        guard info.maxTransfer <= 64 << 20 else {
            throw NotApplicable(reason: "channel \(info.index)'s max transfer is \(info.maxTransfer) bytes; splitting needs buffers over twice that")
        }
        let piece = Int(info.maxTransfer)
        let length = 2 * piece + 4099
        let a = try await client.allocate(size: length + 8192, pages: .normal)
        let b = try await client.allocate(size: length + 8192, pages: .normal)
        defer { Task { try? await client.free(a); try? await client.free(b) } }
        a.fillPseudoRandom(0..<length, seed: rng.next())
        b.set(0..<length + 64, to: Self.guardValue)
        let crc = ReferenceCRC32C.checksum(a.unsafeBytes(0..<length))
        var r = try await queue.submit(Descriptor(opcode: .copyCRC32C, flags: [.crcStore, .crcInline], length: UInt64(length),
                                                  source: a.address(0), destination: b.address(0)))
        guard r.status == .success, r.bytesDone == UInt64(length), r.result == crc else {
            return "COPY_CRC32C of \(length): \(r.status), \(r.bytesDone) bytes, CRC \(hex(r.result)) vs \(hex(crc))"
        }
        if !equal(a.unsafeBytes(0..<length), b.unsafeBytes(0..<length)) { return "split copy differs" }
        if b.read(at: length, count: 4) != withUnsafeBytes(of: crc.littleEndian, { Array($0) }) { return "inline STORE after a split copy" }
        if b.read(at: length + 4, count: 1) != [Self.guardValue] { return "split copy wrote past its CRC" }
        // COMPARE finds a difference in the last piece, at its absolute offset.
        let at = 2 * piece + 17
        b.write([b.read(at: at, count: 1)[0] ^ 1], at: at)
        r = try await queue.submit(Descriptor(opcode: .compare, length: UInt64(length), source: a.address(0), destination: b.address(0)))
        guard r.status == .mismatch, r.bytesDone == UInt64(at) else { return "split COMPARE: \(r.status) at \(r.bytesDone), expected \(at)" }
        // FILL keeps its pattern phase across pieces.
        let pattern: UInt64 = 0x0102_0304_0506_0708
        r = try await queue.fill(b, length: length, pattern: pattern)
        guard r.status == .success, r.bytesDone == UInt64(length) else { return "split FILL: \(r.status)" }
        let filled = b.unsafeBytes(0..<length)
        for i in [0, piece - 1, piece, piece + 3, 2 * piece + 1, length - 1]
        where filled[i] != UInt8(truncatingIfNeeded: pattern >> (8 * UInt64(i % 8))) {
            return "split FILL: byte \(i) is \(filled[i])"
        }
        return nil
    }

    // MARK: Helpers

    /// Submits each descriptor alone and checks the server refuses it with the given code.
    private func expectRefusals(_ queue: IOATQueue, _ cases: [(String, Descriptor, ErrorCode)]) async -> String? {
        for (name, descriptor, code) in cases {
            do {
                let r = try await queue.submit(descriptor)
                return "\(name): accepted (\(r.status)) instead of \(code.name)"
            } catch {
                guard error.code == code else { return "\(name): got \(error), expected \(code.name)" }
            }
        }
        return nil
    }

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
