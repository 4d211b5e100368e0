import Foundation
import Glibc
import IOATClient
import IOATEngine
import IOATProtocol
import IOATTestKit
import Synchronization
import Testing

/// Buffers and a queue on an in-process server whose engine injects faults.
struct FaultRig {
    let server: InProcessServer
    let client: IOATClient
    let src: IOATBuffer
    let dst: IOATBuffer
    let queue: IOATQueue

    init(channels: Int = 1, plan: @escaping @Sendable (Int, Int, EngineOp) -> Fault?) async throws {
        let engine = FaultInjectingEngine(wrapping: try CPUEngine(channelCount: channels, busyPollMicroseconds: 0), plan: plan)
        server = try InProcessServer(engine: engine)
        client = try await IOATClient.connect(path: server.path)
        src = try await client.allocate(size: 1 << 20, pages: .normal)
        dst = try await client.allocate(size: 1 << 20, pages: .normal)
        queue = try await client.openQueue(channel: 0, depth: 64)
    }

    /// Eight 4 KiB copies, op i from src slot i to dst slot i, optionally all fenced.
    func burst(fenced: Bool) -> [Descriptor] {
        (0..<8).map { i in
            .copy(from: src.address(i * 8192), to: dst.address(i * 8192), length: 4096, flags: fenced ? .fence : [], cookie: UInt64(i))
        }
    }

    func copied(_ i: Int) -> Bool { same(src, i * 8192, dst, i * 8192, 4096) }

    func channelStatus() async throws -> StatusDocument.Channel {
        try await statusDocument(client).channels[0]
    }
}

/// Whether `n` bytes at `x`+`i` equal those at `y`+`j` (compared without building arrays).
func same(_ x: IOATBuffer, _ i: Int, _ y: IOATBuffer, _ j: Int, _ n: Int) -> Bool {
    memcmp(x.unsafeBytes(i..<i + n).baseAddress!, y.unsafeBytes(j..<j + n).baseAddress!, n) == 0
}

@Suite("faults: attribution, NOT_ATTEMPTED, halt and replay")
struct FaultTests {
    @Test("a failure at every position of a burst, without fence: only that op fails, the rest run", arguments: 0..<8)
    func failureWithoutFence(position: Int) async throws {
        let rig = try await FaultRig { _, ordinal, _ in ordinal == position ? .fail(.busReadError) : nil }
        rig.src.fillPseudoRandom(0..<(1 << 20), seed: UInt64(position))
        let records = try await rig.queue.submit(rig.burst(fenced: false))
        for (i, r) in records.enumerated() {
            if i == position {
                #expect(r.status == .busReadError && r.bytesDone == 0)
                #expect(!rig.copied(i))
            } else {
                #expect(r.status == .success, "op \(i)")
                #expect(rig.copied(i), "op \(i)")
            }
        }
    }

    @Test("FENCE behind a failure: the next fenced op is NOT_ATTEMPTED and closes the window; the queue recovers (CPU engine)")
    func fenceWindowOnCPU() async throws {
        let engine = FaultInjectingEngine(wrapping: try CPUEngine(channelCount: 1, busyPollMicroseconds: 0), plan: failPoisonLength)
        let server = try InProcessServer(engine: engine)
        defer { server.stop() }
        try await fenceWindowScenario(path: server.path)
    }
    @Test("a delayed op holds back the records behind it, then everything completes in order with the right bytes")
    func delay() async throws {
        let rig = try await FaultRig { _, ordinal, _ in ordinal == 2 ? .delay(microseconds: 50_000) : nil }
        rig.src.fillPseudoRandom(0..<(1 << 20), seed: 21)
        let start = Date()
        let records = try await rig.queue.submit(rig.burst(fenced: false))
        #expect(records.map(\.cookie) == (0..<8).map { UInt64($0) })
        #expect(records.allSatisfy { $0.status == .success })
        #expect((0..<8).allSatisfy(rig.copied))
        // Not a timing assertion on the server: the delay is the fault injected, and it must be visible.
        #expect(Date().timeIntervalSince(start) >= 0.05)
    }

    @Test("a corrupted op is visible only in the bytes: the conformance method catches it")
    func corruption() async throws {
        let rig = try await FaultRig { _, ordinal, _ in ordinal == 3 ? .corrupt : nil }
        rig.src.fillPseudoRandom(0..<(1 << 20), seed: 7)
        let records = try await rig.queue.submit(rig.burst(fenced: false))
        #expect(records.allSatisfy { $0.status == .success })
        #expect((0..<8).filter { !rig.copied($0) } == [3])
    }

    @Test("a halt: the halting op is reported to its owner; every other op, another tenant's too, runs again after a reset")
    func haltAndReplay() async throws {
        // The third 4 MiB piece of alice's 16 MiB copy halts the channel; whatever was enqueued behind it —
        // alice's last piece and small copies, and bob's copies if his SUBMIT came first or in between — is
        // handed back NOT_ATTEMPTED and must run again.
        final class Count: Sendable { let pieces = Atomic(0) }
        let count = Count()
        let engine = FaultInjectingEngine(wrapping: try CPUEngine(channelCount: 1, busyPollMicroseconds: 0)) { _, _, op in
            guard op.length == 4 << 20 else { return nil }
            return count.pieces.add(1, ordering: .relaxed).newValue == 3 ? .halt : nil
        }
        let server = try InProcessServer(engine: engine)
        let alice = try await IOATClient.connect(path: server.path)
        let bob = try await IOATClient.connect(path: server.path)
        let big = try await alice.allocate(size: 40 << 20, pages: .normal)
        let a = try await alice.allocate(size: 1 << 20, pages: .normal)
        let b = try await bob.allocate(size: 1 << 20, pages: .normal)
        big.fillPseudoRandom(0..<(16 << 20), seed: 1)
        a.fillPseudoRandom(0..<(1 << 20), seed: 2)
        b.fillPseudoRandom(0..<(1 << 20), seed: 3)
        let qa = try await alice.openQueue(channel: 0, depth: 64)
        let qb = try await bob.openQueue(channel: 0, depth: 64)
        async let aliceRecords = qa.submit([.copy(from: big.address(0), to: big.address(20 << 20), length: 16 << 20, cookie: 100)]
            + (0..<4).map { i in .copy(from: a.address(i * 8192), to: a.address(512 << 10 + i * 8192), length: 4096, cookie: UInt64(i)) })
        async let bobRecords = qb.submit((0..<8).map { i in
            .copy(from: b.address(i * 8192), to: b.address(512 << 10 + i * 8192), length: 4096, cookie: UInt64(i))
        })
        let (ra, rb) = try await (aliceRecords, bobRecords)
        #expect(ra[0].cookie == 100 && ra[0].status == .channelHalted, "the halting op is reported: \(ra[0])")
        #expect(ra[0].bytesDone == 8 << 20, "two 4 MiB pieces ran before the halt")
        for r in ra.dropFirst() { #expect(r.status == .success, "alice op \(r.cookie): \(r.status)") }
        for i in 0..<4 { #expect(same(a, i * 8192, a, 512 << 10 + i * 8192, 4096), "alice op \(i) bytes") }
        #expect(rb.allSatisfy { $0.status == .success }, "bob's ops: \(rb.map(\.status))")
        for i in 0..<8 { #expect(same(b, i * 8192, b, 512 << 10 + i * 8192, 4096), "bob op \(i) bytes") }
        #expect(same(big, 0, big, 20 << 20, 8 << 20), "the two pieces before the halt ran")
        let channel = try await statusDocument(bob).channels[0]
        #expect(channel.halts == 1)
        #expect(channel.resets == 1)
        #expect(channel.replayed >= 1)
        #expect(channel.lastError.contains("halted the channel"))
        // The channel serves normally after the reset.
        #expect(try await qb.submit(.copy(from: b.address(0), to: b.address(4096), length: 64)).status == .success)
        server.stop()
    }
}

/// Ops of this length fail (BUS_WRITE_ERROR) in `fenceWindowScenario`; every other op runs.
let poisonLength = 4104

/// The fault plan of `fenceWindowScenario`: it fails by length, so it holds on any engine and whatever
/// order ops reach it.
@Sendable func failPoisonLength(_ channel: Int, _ ordinal: Int, _ op: EngineOp) -> Fault? {
    op.length == poisonLength ? .fail(.busWriteError) : nil
}

/// SPEC.md §6.6 on a server whose engine fails ops of `poisonLength` bytes: for a failure at every
/// position of a burst of eight fenced copies, the ops before it run, it fails, the fenced op right
/// after it is NOT_ATTEMPTED (and does not run), and that closes the failure window: every later fenced
/// op runs. Then, on the same long-lived queue, a DRAIN after a new failure is NOT_ATTEMPTED, the next
/// DRAIN and FENCE ops run, and ops without FENCE are never skipped.
func fenceWindowScenario(path: String) async throws {
    let client = try await IOATClient.connect(path: path)
    let src = try await client.allocate(size: 1 << 20, pages: .normal)
    let dst = try await client.allocate(size: 1 << 20, pages: .normal)
    let queue = try await client.openQueue(channel: 0, depth: 64)
    func length(_ i: Int, failing position: Int) -> Int { i == position ? poisonLength : 4096 }
    func copied(_ i: Int, _ n: Int) -> Bool { same(src, i * 8192, dst, i * 8192, n) }
    for position in 0..<8 {
        src.fillPseudoRandom(0..<(1 << 20), seed: UInt64(position) + 100)
        dst.fillPseudoRandom(0..<(1 << 20), seed: UInt64(position) + 200)
        let burst: [Descriptor] = (0..<8).map { i in
            .copy(from: src.address(i * 8192), to: dst.address(i * 8192), length: UInt64(length(i, failing: position)),
                  flags: .fence, cookie: UInt64(i))
        }
        let records = try await queue.submit(burst)
        #expect(records.map(\.cookie) == (0..<8).map { UInt64($0) })
        for (i, r) in records.enumerated() {
            let n = length(i, failing: position)
            if i == position {
                #expect(r.status == .busWriteError && r.bytesDone == 0, "position \(position): op \(i) \(r.status)")
                #expect(!copied(i, n), "position \(position): the failed op wrote")
            } else if i == position + 1 {
                #expect(r.status == .notAttempted && r.bytesDone == 0, "position \(position): op \(i) \(r.status)")
                #expect(!copied(i, n), "position \(position): op \(i) ran although it was not attempted")
            } else {
                #expect(r.status == .success, "position \(position): op \(i) \(r.status)")
                #expect(copied(i, n), "position \(position): op \(i) bytes")
            }
        }
    }
    // The same queue goes on: a failure, then DRAIN (an implicit FENCE) is skipped and closes the window.
    let failing = try await queue.submit([
        .copy(from: src.address(0), to: dst.address(0), length: UInt64(poisonLength), cookie: 1),
        Descriptor(opcode: .drain, cookie: 2),
        Descriptor(opcode: .drain, cookie: 3),
        .copy(from: src.address(0), to: dst.address(16384), length: 64, flags: .fence, cookie: 4),
    ])
    #expect(failing.map(\.status) == [.busWriteError, .notAttempted, .success, .success], "\(failing.map(\.status))")
    #expect(same(src, 0, dst, 16384, 64))
    let fenced = try await queue.submit(.copy(from: src.address(8), to: dst.address(32768), length: 64, flags: .fence))
    #expect(fenced.status == .success, "a later FENCE op runs: \(fenced.status)")
    #expect(same(src, 8, dst, 32768, 64))
    let drain = try await queue.submit(Descriptor(opcode: .drain))
    #expect(drain.status == .success)
    client.close()
}

