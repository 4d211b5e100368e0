import Glibc
import IOATEngine
import IOATProtocol
@testable import IOATServer
import IOATSystem
import Synchronization
import Testing

/// An engine channel that runs nothing: it keeps what it is given in order and hands back the oldest
/// op when the test says so, so the scheduler's decisions can be counted without timing.
final class RecordingChannel: EngineChannel, @unchecked Sendable {
    let info: ChannelInfo
    init(maxTransfer: UInt64 = 4 << 20) {
        info = ChannelInfo(index: 0, engine: .cpu, hardwareVersion: 0, opcodes: ~0, maxTransfer: maxTransfer, maxDepth: 4096,
                           maxCoalesceMicroseconds: 0, name: "model")
    }
    var held: [EngineOp] = []
    var freeSlots: Int { 4096 - held.count }
    func enqueue(_ op: EngineOp) -> Bool {
        held.append(op)
        return true
    }
    func submit() {}
    var hasCompletions: Bool { !held.isEmpty }
    func reap(into completions: UnsafeMutableBufferPointer<EngineCompletion>) -> Int { 0 }
    func reset() {}
    func shutdown() {}

    /// Completes the oldest op; returns it.
    func finishOldest() -> EngineOp { held.removeFirst() }

    /// When set, ops may run on the caller's thread, as the CPU engine's do; those are kept in `ranInline`.
    var runsInline = false
    var ranInline: [EngineOp] = []
    /// When set, the next op run inline halts the channel (CHANNEL_HALTED), as a device's fault would.
    var haltNextInline = false
    func executeInline(_ op: EngineOp) -> EngineCompletion? {
        guard runsInline else { return nil }
        ranInline.append(op)
        if haltNextInline {
            haltNextInline = false
            return EngineCompletion(cookie: op.cookie, status: .channelHalted, bytesDone: 0)
        }
        return EngineCompletion(cookie: op.cookie, status: .success, bytesDone: UInt64(op.length))
    }
}

/// One tenant with one queue kept backlogged with ops of one size.
struct Backlogged {
    let tenant: Tenant
    let queue: Queue
    let buffer: OpenBuffer
    let opLength: Int
    let connection: Connection

    init(uid: UInt32, weight: Int, opLength: Int, buffer: OpenBuffer, scheduler: Channel) throws {
        var limits = TenantLimits()
        limits.weight = weight
        tenant = Tenant(uid: uid, gid: uid, groups: [], limits: limits, policySource: "test")
        connection = Connection(id: UInt64(uid), fd: try EventFD().fd, peer: PeerCredentials(pid: 1, uid: uid, gid: uid), tenant: tenant,
                                maxMessage: 4096, now: 0)
        queue = Queue(id: uid, channel: 0, depth: 4096, connection: connection, lane: scheduler.lane(for: tenant))
        self.buffer = buffer
        self.opLength = opLength
    }

    /// Tops the queue up to `count` pending copies.
    func refill(to count: Int, scheduler: Channel) {
        while queue.pending.count < count {
            let place = Placement(buffer, offset: 0)
            scheduler.admit(PendingOp(cookie: 0, opcode: .copy, flags: [], source: place, destination: place, length: opLength, arg: 0),
                            into: queue, at: 0)
        }
        scheduler.schedule(queue)
    }
}

@Suite("Fair scheduling between tenants sharing a channel")
struct FairnessTests {
    /// Runs a bulk tenant (64 MiB copies, split into 4 MiB pieces) and a small-op tenant (4 KiB copies),
    /// both always backlogged, through the real Channel for `steps` completions after a warm-up,
    /// and returns the small tenant's share of the service (bytes plus the per-op cost).
    func smallShare(bulkWeight: Int, smallWeight: Int, steps: Int = 20_000) throws -> (share: Double, smallOps: Int, bulkPieces: Int) {
        let channel = RecordingChannel()
        let table = BufferTable()
        let scheduler = Channel(engine: channel, buffers: table, window: 64, windowBytes: 16 << 20, opCost: 4096, quantum: 256 << 10)
        let memfd = try Memfd.create(name: "fairness", size: 64 << 20, hugepages: false)
        let shared = SharedBuffer(handle: 1, mapping: try Mapping(fd: memfd, length: 64 << 20, writable: true, populate: false),
                                  flags: [], pageSize: 4096, registration: nil)
        let buffer = OpenBuffer(shared, slot: table.insert(shared))
        let bulk = try Backlogged(uid: 1000, weight: bulkWeight, opLength: 64 << 20, buffer: buffer, scheduler: scheduler)
        let small = try Backlogged(uid: 2000, weight: smallWeight, opLength: 4096, buffer: buffer, scheduler: scheduler)
        var served: [UInt32: Int] = [:]
        var counts: [UInt32: Int] = [:]
        for step in 0..<(steps + 2000) {
            bulk.refill(to: 4, scheduler: scheduler)
            small.refill(to: 512, scheduler: scheduler)
            scheduler.dispatch()
            let oldest = channel.finishOldest()
            let finished = scheduler.completeReporting(EngineCompletion(cookie: oldest.cookie, status: .success, bytesDone: UInt64(oldest.length)))
            scheduler.takeFinished { _ in }
            let queue = finished.queue
            if step >= 2000 {
                served[queue.tenant.uid, default: 0] += scheduler.cost(finished.length)
                counts[queue.tenant.uid, default: 0] += 1
            }
        }
        let total = Double(served.values.reduce(0, +))
        return (Double(served[2000] ?? 0) / total, counts[2000] ?? 0, counts[1000] ?? 0)
    }

    @Test("The small-op tenant's share matches its weight within 10% while a bulk tenant runs",
          arguments: [(1, 1), (3, 1), (1, 3), (1, 8)])
    func weightedShare(weights: (bulk: Int, small: Int)) throws {
        let expected = Double(weights.small) / Double(weights.small + weights.bulk)
        let (share, smallOps, bulkPieces) = try smallShare(bulkWeight: weights.bulk, smallWeight: weights.small)
        #expect(abs(share - expected) <= 0.1 * expected,
                "weights bulk \(weights.bulk) : small \(weights.small): small share \(share), expected \(expected) (\(smallOps) small ops, \(bulkPieces) bulk pieces)")
        // Both made progress: neither tenant was starved.
        #expect(smallOps > 0 && bulkPieces > 0)
    }

    @Test("Inline ops: a queue's worth runs on the loop in order; a deep queue runs at most the inline budget per dispatch and the rest waits for the next, still inline and in order",
          arguments: [8, 100])
    func inlineBudget(depth: Int) throws {
        let channel = RecordingChannel()
        let table = BufferTable()
        channel.runsInline = true
        let scheduler = Channel(engine: channel, buffers: table, window: 64, windowBytes: 16 << 20, opCost: 4096, quantum: 256 << 10,
                                inlineBytes: 64 << 10)
        let memfd = try Memfd.create(name: "inline", size: 1 << 20, hugepages: false)
        let shared = SharedBuffer(handle: 1, mapping: try Mapping(fd: memfd, length: 1 << 20, writable: true, populate: false),
                                  flags: [], pageSize: 4096, registration: nil)
        let buffer = OpenBuffer(shared, slot: table.insert(shared))
        let tenant = try Backlogged(uid: 1000, weight: 1, opLength: 64 << 10, buffer: buffer, scheduler: scheduler)
        for cookie in 0..<depth {
            let place = Placement(buffer, offset: 0)
            scheduler.admit(PendingOp(cookie: UInt64(cookie), opcode: .copy, flags: [], source: place,
                                      destination: place, length: 64 << 10, arg: 0), into: tenant.queue, at: 0)
        }
        scheduler.schedule(tenant.queue)
        // 16 × 64 KiB of budget at 64 KiB + 4 KiB an op: 15 ops inline per dispatch; the rest stays queued
        // (`deferred`) for the loop's next turn, and nothing goes to the engine's worker.
        let perCall = (16 * (64 << 10)) / ((64 << 10) + 4096)
        var calls = 0
        repeat {
            let before = channel.ranInline.count
            scheduler.dispatch()
            calls += 1
            let ran = channel.ranInline.count - before
            #expect(ran == min(perCall, depth - before), "dispatch \(calls) ran \(ran) ops inline")
            #expect(scheduler.deferred == (channel.ranInline.count < depth), "deferred while ops wait, and only then")
        } while scheduler.deferred && calls <= depth
        #expect(calls == (depth + perCall - 1) / perCall)
        #expect(channel.ranInline.count == depth)
        #expect(channel.held.isEmpty, "\(channel.held.count) ops went to the engine")
        var cookies: [UInt64] = []
        scheduler.takeFinished { cookies += $0.map(\.record.cookie) }
        #expect(cookies == (0..<UInt64(depth)).map { $0 }, "inline completions in queue order")
    }

    @Test("A tenant alone on a channel is never held back by its weight")
    func aloneIsNotThrottled() throws {
        let channel = RecordingChannel()
        let table = BufferTable()
        let scheduler = Channel(engine: channel, buffers: table, window: 64, windowBytes: 16 << 20, opCost: 4096, quantum: 4096)
        let memfd = try Memfd.create(name: "fairness", size: 64 << 20, hugepages: false)
        let shared = SharedBuffer(handle: 1, mapping: try Mapping(fd: memfd, length: 64 << 20, writable: true, populate: false),
                                  flags: [], pageSize: 4096, registration: nil)
        let buffer = OpenBuffer(shared, slot: table.insert(shared))
        let bulk = try Backlogged(uid: 1000, weight: 1, opLength: 64 << 20, buffer: buffer, scheduler: scheduler)
        bulk.refill(to: 4, scheduler: scheduler)
        scheduler.dispatch()
        // The byte window (16 MiB) is filled with 4 MiB pieces at once, although the quantum is 4 KiB.
        #expect(channel.held.count == 4)
        #expect(channel.held.allSatisfy { $0.length == 4 << 20 })
    }
}
