import Glibc
import Synchronization
import IOATEngine
import IOATProtocol
import IOATSystem
import Testing

/// Runs ops through an engine channel the way the server does: enqueue, submit, reap until done.
func runOnChannel(_ engine: CPUEngine, channel: Int = 0, _ ops: [EngineOp]) -> [EngineCompletion] {
    let c = engine.channels[channel]
    var results: [EngineCompletion] = []
    var next = 0
    let buffer = UnsafeMutableBufferPointer<EngineCompletion>.allocate(capacity: 16)
    buffer.initialize(repeating: .empty)
    defer { buffer.deallocate() }
    while results.count < ops.count {
        while next < ops.count && c.enqueue(ops[next]) { next += 1 }
        c.submit()
        let n = c.reap(into: buffer)
        results.append(contentsOf: buffer[0..<n])
        if n == 0 { engine.notifier.drain() }
    }
    return results
}

@Suite("CPU engine")
struct EngineTests {
    @Test("CRC32C matches RFC 3720 §B.4 and chains by value")
    func crcVectors() {
        #expect(CRC32C.checksum([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(CRC32C.checksum(Array(0..<32)) == 0x46DD_794E)
        #expect(CRC32C.checksum(Array((0..<32).reversed())) == 0x113F_DB5C)
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([]) == 0)
        let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        for cut in [0, 1, 7, 500, 999, 1000] {
            #expect(CRC32C.checksum(Array(data[cut...]), seed: CRC32C.checksum(Array(data[..<cut]))) == CRC32C.checksum(data))
        }
    }

    @Test("fill writes the pattern for every small length and offset, and nothing past the end")
    func fillExhaustive() {
        let patterns: [UInt64] = [0, .max, 0x0101_0101_0101_0101, 0x0123_4567_89AB_CDEF, 0x00FF_00FF_00FF_00FF]
        var buffer = [UInt8](repeating: 0, count: 9000)
        for pattern in patterns {
            for length in Array(0...80) + [4095, 4096, 4097, 8191, 8200] {
                for offset in [0, 1, 3, 8] {
                    for i in buffer.indices { buffer[i] = 0x5A }
                    buffer.withUnsafeMutableBytes { Kernels.fill($0.baseAddress! + offset, length: length, pattern: pattern) }
                    for i in 0..<length where buffer[offset + i] != UInt8(truncatingIfNeeded: pattern >> (8 * UInt64(i % 8))) {
                        Issue.record("pattern \(pattern) length \(length) offset \(offset): byte \(i) is \(buffer[offset + i])")
                        return
                    }
                    #expect(buffer[offset + length] == 0x5A)
                    if offset > 0 { #expect(buffer[offset - 1] == 0x5A) }
                }
            }
        }
    }

    @Test("the inline entry for COPY, FILL and NULL writes the same bytes and completion as the general one, and nothing outside the range")
    func inlineCommonMatchesKernels() throws {
        let engine = try CPUEngine(channelCount: 1)
        defer { engine.shutdown() }
        let channel = engine.channels[0]
        #expect(channel.runsInline)
        let source = (0..<300).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        for opcode in [Opcode.copy, .fill, .null] {
            for length in opcode == .null ? [0] : [1, 7, 64, 65, 200] {
                var viaCommon = [UInt8](repeating: 0xA5, count: 300), viaKernels = viaCommon
                let arg: UInt64 = opcode == .fill ? 0x0123_4567_89AB_CDEF : 0
                let (common, general) = source.withUnsafeBytes { src in
                    (viaCommon.withUnsafeMutableBytes { dst in
                        channel.executeInline(common: opcode, cookie: 9, source: opcode == .copy ? src.baseAddress! + 3 : nil,
                                              destination: opcode == .null ? nil : dst.baseAddress! + 5, length: length, arg: arg)
                    },
                     viaKernels.withUnsafeMutableBytes { dst in
                        Kernels.execute(EngineOp(cookie: 9, opcode: opcode, source: opcode == .copy ? src.baseAddress! + 3 : nil,
                                                 destination: opcode == .null ? nil : dst.baseAddress! + 5, length: length, arg: arg))
                     })
                }
                let done = try #require(common, "the CPU engine runs \(opcode.name) inline")
                #expect(done.cookie == general.cookie && done.status == general.status && done.bytesDone == general.bytesDone
                        && done.result == general.result, "\(opcode.name) of \(length) bytes: \(done) against \(general)")
                #expect(viaCommon == viaKernels, "\(opcode.name) of \(length) bytes")
                if opcode == .copy { #expect(Array(viaCommon[5..<5 + length]) == Array(source[3..<3 + length])) }
                #expect(viaCommon[4] == 0xA5 && viaCommon[5 + length] == 0xA5 || opcode == .null, "bytes just outside the range")
            }
        }
    }

    @Test("ops run in order with their cookies, and the ring wraps around many times")
    func ringWrap() throws {
        let engine = try CPUEngine(channelCount: 1, ringSize: 8)
        defer { engine.shutdown() }
        let count = 1000
        let src = UnsafeMutableRawBufferPointer.allocate(byteCount: count * 16, alignment: 64)
        let dst = UnsafeMutableRawBufferPointer.allocate(byteCount: count * 16, alignment: 64)
        defer {
            src.deallocate()
            dst.deallocate()
        }
        for i in 0..<src.count { src[i] = UInt8(truncatingIfNeeded: i * 7) }
        dst.initializeMemory(as: UInt8.self, repeating: 0)
        let ops = (0..<count).map { i in
            EngineOp(cookie: UInt64(i), opcode: .copy, source: UnsafeRawPointer(src.baseAddress! + i * 16),
                     destination: dst.baseAddress! + i * 16, length: 16)
        }
        let results = runOnChannel(engine, ops)
        #expect(results.map(\.cookie) == (0..<UInt64(count)).map { $0 })
        #expect(results.allSatisfy { $0.status == .success && $0.bytesDone == 16 })
        #expect(memcmp(src.baseAddress!, dst.baseAddress!, src.count) == 0)
    }

    @Test("COPY_CRC32C copies and reports the CRC of the source, seeded or not")
    func copyCRC() throws {
        let engine = try CPUEngine(channelCount: 1)
        defer { engine.shutdown() }
        let n = 300_001
        let src = UnsafeMutableRawBufferPointer.allocate(byteCount: n, alignment: 64)
        let dst = UnsafeMutableRawBufferPointer.allocate(byteCount: n + 2, alignment: 64)
        defer {
            src.deallocate()
            dst.deallocate()
        }
        for i in 0..<n { src[i] = UInt8(truncatingIfNeeded: i &* 131 &+ 7) }
        dst.initializeMemory(as: UInt8.self, repeating: 0xEE)
        let expected = CRC32C.checksum(UnsafeRawBufferPointer(src))
        let results = runOnChannel(engine, [
            EngineOp(cookie: 1, opcode: .copyCRC32C, source: UnsafeRawPointer(src.baseAddress!), destination: dst.baseAddress! + 1,
                     length: n),
            EngineOp(cookie: 2, opcode: .crc32c, flags: .crcSeed, source: UnsafeRawPointer(src.baseAddress! + 1000),
                     length: n - 1000, arg: UInt64(CRC32C.checksum(UnsafeRawBufferPointer(rebasing: src[0..<1000])))),
        ])
        #expect(results[0].result == expected)
        #expect(results[1].result == expected)
        #expect(memcmp(src.baseAddress!, dst.baseAddress! + 1, n) == 0)
        #expect(dst[0] == 0xEE && dst[n + 1] == 0xEE)
    }

    @Test("two channels run independently")
    func channelsIndependent() throws {
        let engine = try CPUEngine(channelCount: 2)
        defer { engine.shutdown() }
        let a = runOnChannel(engine, channel: 0, [EngineOp(cookie: 10, opcode: .null)])
        let b = runOnChannel(engine, channel: 1, [EngineOp(cookie: 20, opcode: .null)])
        #expect(a.map(\.cookie) == [10])
        #expect(b.map(\.cookie) == [20])
        #expect(engine.channels.map(\.info.index) == [0, 1])
        #expect(engine.channels.allSatisfy { c in Opcode.allCases.allSatisfy(c.info.supports) })
    }
}

@Suite("dmadev status mapping")
struct DmadevStatusTests {
    @Test("Every rte_dma_status_code maps to the SPEC.md §6.5 status that says the same, and nothing else guesses")
    func mapping() {
        let expected: [UInt32: CompletionStatus] = [
            0: .success, 1: .userAbort, 2: .notAttempted, 3: .invalidSourceAddress, 4: .invalidDestinationAddress,
            5: .engineError, 6: .invalidLength, 7: .invalidOpcode, 8: .busReadError, 9: .busWriteError, 10: .engineError,
            11: .dataPoison, 12: .engineError, 13: .engineError, 14: .pageFault, 0x100: .engineError,
        ]
        #expect(DmadevStatus.allCases.count == expected.count)
        for (raw, status) in expected {
            #expect(DmadevStatus.completionStatus(raw: raw) == status, "dmadev status \(raw)")
        }
        // Values a later DPDK adds are failures, never success.
        for raw: UInt32 in [15, 99, 0x101, .max] { #expect(DmadevStatus.completionStatus(raw: raw) == .engineError) }
        #expect(DmadevStatus.dataPoison.name == "RTE_DMA_STATUS_DATA_POISION")
    }
}

@Suite("monotonic clock")
struct ClockTests {
    /// The client's reader thread measured idle time as `now - lastActivity` while its sender thread
    /// published newer readings; the subtraction underflowed and trapped (seen as `ioatctl stress`
    /// clients dying of SIGILL under load). Elapsed time must be 0, never negative, in that race.
    @Test("elapsed time since a reading another thread just published is never negative")
    func elapsedAcrossThreads() async {
        #expect(Clock.nanoseconds(since: Clock.nanoseconds() + 1_000_000_000) == 0)
        let start = Clock.nanoseconds()
        usleep(1000)
        #expect(Clock.nanoseconds(since: start) >= 1_000_000)

        final class Shared: Sendable {
            let published = Atomic<UInt64>(Clock.nanoseconds())
            let done = Atomic<Bool>(false)
        }
        let shared = Shared()
        let publisher = OSThread(name: "clock-publisher") {
            while !shared.done.load(ordering: .relaxed) { shared.published.store(Clock.nanoseconds(), ordering: .relaxed) }
        }
        var longest: UInt64 = 0
        for _ in 0..<500_000 {
            longest = max(longest, Clock.nanoseconds(since: shared.published.load(ordering: .relaxed)))
        }
        shared.done.store(true, ordering: .relaxed)
        publisher.join()
        #expect(longest < 10_000_000_000, "no reading is mistaken for ten seconds of idleness")
    }
}
