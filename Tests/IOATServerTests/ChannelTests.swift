import Glibc
import IOATEngine
import IOATProtocol
@testable import IOATServer
import IOATSystem
import Testing

/// One channel over a recording engine, one tenant's queue on it, and one buffer open in a buffer table:
/// the data path from admission to the finished record, with no socket and no thread.
final class DataPath {
    let engine: RecordingChannel
    let table = BufferTable()
    let channel: Channel
    let tenant = Tenant(uid: 1000, gid: 1000, groups: [], limits: TenantLimits(), policySource: "test")
    let connection: Connection
    let queue: Queue
    let buffer: OpenBuffer
    /// The credits' owner.
    let router = CompletionRouter(maxRecordsPerMessage: 64)
    weak var shared: SharedBuffer?

    init(maxTransfer: UInt64 = 4 << 20, size: Int = 1 << 20, inlineBytes: Int = 0) throws {
        engine = RecordingChannel(maxTransfer: maxTransfer)
        engine.runsInline = inlineBytes > 0
        channel = Channel(engine: engine, buffers: table, window: 64, inlineBytes: inlineBytes)
        connection = Connection(id: 17, fd: try EventFD().fd, peer: PeerCredentials(pid: 1, uid: 1000, gid: 1000), tenant: tenant,
                                maxMessage: 4096, now: 0)
        queue = Queue(id: 5, channel: 0, depth: 64, connection: connection, lane: channel.lane(for: tenant))
        let memfd = try Memfd.create(name: "data-path", size: UInt64(size), hugepages: false)
        let mapped = SharedBuffer(handle: 9, mapping: try Mapping(fd: memfd, length: size, writable: true, populate: false),
                                  flags: [], pageSize: 4096, registration: nil)
        shared = mapped
        buffer = OpenBuffer(mapped, slot: table.insert(mapped))
    }

    /// Admits a copy of `length` bytes from offset 0 to the middle of the buffer, and schedules its queue.
    func copy(_ cookie: UInt64, length: Int = 4096, flags: Descriptor.Flags = []) {
        router.take(1, of: queue)
        channel.admit(PendingOp(cookie: cookie, opcode: .copy, flags: flags, source: Placement(buffer, offset: 0),
                                destination: Placement(buffer, offset: 1 << 19), length: length, arg: 0),
                      into: queue, at: 0)
        channel.schedule(queue)
    }

    /// Completes the engine's oldest op with `status`; its bytes done are all its bytes on success.
    func finishOldest(_ status: CompletionStatus = .success, bytesDone: UInt64? = nil) {
        let op = engine.finishOldest()
        channel.complete(EngineCompletion(cookie: op.cookie, status: status, bytesDone: bytesDone ?? (status == .success ? UInt64(op.length) : 0)))
    }

    /// The records finished since the last call, in order.
    func records() -> [CompletionRecord] {
        var out: [CompletionRecord] = []
        channel.takeFinished { out += $0.map(\.record) }
        return out
    }
}

@Suite("the data path without sockets: fence, split, halt and replay, pins, flush points, credits")
struct ChannelTests {
    @Test("FENCE waits for every earlier op of its queue; behind a failure it is NOT_ATTEMPTED, and the window closes")
    func fence() throws {
        let path = try DataPath()
        path.copy(1)
        path.copy(2, flags: .fence)
        path.copy(3)
        path.channel.dispatch()
        #expect(path.engine.held.map(\.length) == [4096], "only the op before the fence is in the engine")
        path.finishOldest()
        path.channel.dispatch()
        #expect(path.engine.held.count == 2, "the fenced op and the one behind it start once the first completed")
        path.finishOldest()
        path.finishOldest()
        #expect(path.records().map(\.cookie) == [1, 2, 3])

        // A failure, then a fenced op: it does not run; the op after it does, and the window is closed.
        path.copy(4)
        path.copy(5, flags: .fence)
        path.copy(6)
        path.copy(7, flags: .fence)
        path.channel.dispatch()
        path.finishOldest(.pageFault)
        path.channel.dispatch()
        #expect(path.engine.held.count == 1, "op 6 runs; op 7 waits for it")
        path.finishOldest()
        path.channel.dispatch()
        path.finishOldest()
        let records = path.records()
        #expect(records.map(\.cookie) == [4, 5, 6, 7])
        #expect(records.map(\.status) == [.pageFault, .notAttempted, .success, .success], "\(records.map(\.status))")
        #expect(path.table.totalPins == 0, "every op gave its pins back")
    }

    @Test("An op above the max transfer runs in pieces and completes as one record; the first failing piece sets status and bytes_done")
    func split() throws {
        let path = try DataPath(maxTransfer: 64 << 10)
        path.copy(1, length: 200 << 10)
        path.channel.dispatch()
        #expect(path.engine.held.map(\.length) == [64 << 10, 64 << 10, 64 << 10, 8 << 10])
        #expect(path.table.totalPins == 2 * 4, "the op's pins and each engine-held piece's")
        while !path.engine.held.isEmpty { path.finishOldest() }
        var records = path.records()
        #expect(records.count == 1 && records[0].status == .success && records[0].bytesDone == 200 << 10, "\(records)")

        path.copy(2, length: 200 << 10)
        path.channel.dispatch()
        path.finishOldest()
        path.finishOldest(.busReadError, bytesDone: 100)
        while !path.engine.held.isEmpty { path.finishOldest() }
        records = path.records()
        #expect(records.count == 1 && records[0].status == .busReadError && records[0].bytesDone == (64 << 10) + 100, "\(records)")
        #expect(path.table.totalPins == 0)
    }

    @Test("A halt: the halting op is reported; the ops it stopped run again after the reset, in order, keeping their pins")
    func haltAndReplay() throws {
        let path = try DataPath()
        for cookie in UInt64(1)...3 { path.copy(cookie) }
        path.channel.dispatch()
        #expect(path.engine.held.count == 3)
        path.finishOldest(.channelHalted)
        path.finishOldest(.notAttempted)
        path.finishOldest(.notAttempted)
        #expect(path.channel.recovering && path.channel.inEngine == 0)
        #expect(path.table.totalPins == 4, "the two stopped ops keep their pins while they wait for the reset")
        path.channel.dispatch()
        #expect(path.engine.held.isEmpty, "a halted channel takes nothing before its reset")
        #expect(path.channel.recover() == 2)
        path.channel.dispatch()
        #expect(path.engine.held.count == 2)
        while !path.engine.held.isEmpty { path.finishOldest() }
        let records = path.records()
        #expect(records.map(\.cookie) == [1, 2, 3])
        #expect(records.map(\.status) == [.channelHalted, .success, .success])
        #expect(path.channel.halts == 1 && path.channel.resets == 1 && path.channel.replayed == 2)
        #expect(path.table.totalPins == 0)
    }

    @Test("Small ops run inline from their place in the queue: records in order, pins given back; one that halts the channel is reported as an engine op's halt would be")
    func inlineInPlace() throws {
        let path = try DataPath(inlineBytes: 64 << 10)
        path.copy(1)
        path.copy(2, flags: .interrupt)
        path.copy(3, length: 128 << 10)  // above the inline limit: the engine takes it
        path.channel.dispatch()
        #expect(path.engine.ranInline.map(\.length) == [4096, 4096] && path.engine.held.map(\.length) == [128 << 10])
        #expect(path.table.pins(path.buffer.slot) == 2, "only the op in the engine holds its two pins")
        path.finishOldest()
        let records = path.records()
        #expect(records.map(\.cookie) == [1, 2, 3] && records.allSatisfy { $0.status == .success }, "\(records)")
        #expect(path.table.pins(path.buffer.slot) == 0 && path.channel.inEngine == 0 && path.queue.pending.isEmpty)

        // A halt while running inline: the op is CHANNEL_HALTED, the channel counts the halt and is
        // recovering; once reset, it takes ops again and nothing stays pinned.
        path.engine.haltNextInline = true
        path.copy(4)
        path.channel.dispatch()
        #expect(path.records().map(\.status) == [.channelHalted])
        #expect(path.channel.halts == 1 && path.channel.recovering && path.channel.inEngine == 0)
        path.copy(5)
        path.channel.dispatch()
        #expect(path.engine.ranInline.count == 3, "a recovering channel runs nothing")
        #expect(path.channel.recover() == 0 && !path.channel.recovering)
        path.channel.dispatch()
        #expect(path.records().map(\.cookie) == [5] && path.table.pins(path.buffer.slot) == 0)
    }

    @Test("An op with nothing ahead of it runs at once, neither queued nor pinned; once one is queued the rest wait behind it; FENCE behind a failure, a halt and the inline budget go the queued way")
    func runNow() throws {
        let path = try DataPath(inlineBytes: 64 << 10)
        func common(_ cookie: UInt64, length: Int = 4096, flags: Descriptor.Flags = []) -> CommonOp {
            CommonOp(cookie: cookie, opcode: .copy, flags: flags, source: Placement(path.buffer, offset: 0),
                     destination: Placement(path.buffer, offset: 1 << 19), length: length, arg: 0)
        }
        /// The record of an op that ran at once, or nil (with the outcome) when it did not.
        func ran(_ op: CommonOp) -> CompletionRecord? {
            if case .ran(let record) = path.channel.runNow(op, in: path.queue, at: 7) { return record }
            return nil
        }
        #expect(path.channel.runsNow(path.queue))
        let first = try #require(ran(common(1)))
        #expect(first.cookie == 1 && first.status == .success && first.bytesDone == 4096 && first.opcode == Opcode.copy.rawValue)
        #expect(path.engine.ranInline.map(\.length) == [4096] && path.engine.held.isEmpty)
        #expect(path.table.pins(path.buffer.slot) == 0 && path.queue.pending.isEmpty && path.records().isEmpty,
                "nothing queued, pinned or left for the router")
        #expect(path.channel.opsCompleted == 1 && path.channel.bytesCompleted == 4096)
        #expect(ran(common(2, length: 128 << 10)) == nil, "above the inline limit: the caller queues it")

        // An op queued (as an ingress admits a batch, before it schedules the queue): the next may not
        // pass it.
        path.router.take(1, of: path.queue)
        path.channel.admit(common(3).pending, into: path.queue, at: 7)
        #expect(!path.channel.runsNow(path.queue))
        path.channel.schedule(path.queue)
        path.channel.dispatch()
        #expect(path.records().map(\.cookie) == [3] && path.channel.runsNow(path.queue))

        // A failure in the engine opens the failure window: a FENCE op is not run at once (dispatch
        // skips it, NOT_ATTEMPTED); a plain op still is.
        path.copy(4, length: 128 << 10)
        path.channel.dispatch()
        path.finishOldest(.pageFault, bytesDone: 0)
        #expect(path.records().map(\.status) == [.pageFault] && path.channel.runsNow(path.queue))
        #expect(ran(common(5, flags: .fence)) == nil)
        #expect(ran(common(6))?.cookie == 6)

        // A halt: the op takes its slot, its record (CHANNEL_HALTED) goes through `finished`, the channel
        // recovers as after an engine op's halt, and nothing stays pinned.
        path.engine.haltNextInline = true
        guard case .halted = path.channel.runNow(common(7), in: path.queue, at: 7) else {
            Issue.record("a halting op was not reported as halted")
            return
        }
        #expect(path.records().map(\.status) == [.channelHalted] && path.channel.recovering && !path.channel.runsNow(path.queue))
        #expect(path.channel.recover() == 0 && path.table.totalPins == 0 && path.channel.runsNow(path.queue))

        // The inline budget: what runs at once between two dispatches is bounded like one dispatch's
        // inline work (64 KiB ops at 68 KiB of cost each: 15 in 1 MiB). (The dispatch starts the count.)
        path.channel.dispatch()
        var count = 0
        while ran(common(100 + UInt64(count), length: 64 << 10)) != nil { count += 1 }
        #expect(count == path.channel.inlineBudget / path.channel.cost(64 << 10))
        path.channel.dispatch()
        #expect(ran(common(200, length: 64 << 10)) != nil, "a dispatch starts a new budget")
    }

    @Test("A buffer closed (FREE) while ops name it stays mapped until the last of them completes; then it is unmapped")
    func pinsOutliveFree() throws {
        let path = try DataPath()
        for cookie in UInt64(1)...4 { path.copy(cookie) }
        path.channel.dispatch()
        path.table.close(path.buffer.slot)
        #expect(path.shared != nil && path.table.mapped == 1)
        for _ in 0..<3 { path.finishOldest() }
        #expect(path.shared != nil, "one op still names it")
        path.finishOldest()
        _ = path.records()
        #expect(path.shared == nil && path.table.mapped == 0 && path.table.totalPins == 0)
    }

    @Test("A connection closing with ops queued and in the engine: queued ops are dropped, engine ops finish, nothing stays pinned")
    func cancelWhileRunning() throws {
        let path = try DataPath()
        for cookie in UInt64(1)...6 { path.copy(cookie) }
        path.channel.dispatch()
        path.queue.connection = nil
        let dropped = path.channel.cancelPending(of: path.queue)
        #expect(dropped == 6 - path.engine.held.count, "the queued ops are dropped, the engine's are not")
        path.router.orphaned(dropped, of: path.queue)
        path.table.close(path.buffer.slot)
        #expect(path.shared != nil, "ops in the engine still name the buffer")
        while !path.engine.held.isEmpty { path.finishOldest() }
        path.channel.takeFinished { path.router.route($0, now: 0) }
        #expect(path.queue.freeCredits == path.queue.depth, "a closed queue's records return their credits")
        #expect(path.shared == nil && path.table.totalPins == 0)
    }

    @Test("Flush points: records wait for INT_EN, a failure, the queue going idle or a full message; credits stay taken until sent")
    func flushPoints() throws {
        let path = try DataPath()
        let router = CompletionRouter(maxRecordsPerMessage: 4)
        /// What the router decided for the records routed since the last look; then drops them (as it
        /// does a closed connection's), which gives their credits back.
        func decided() -> (held: Int, flush: Bool, all: Bool) {
            defer { router.dropHeld(of: path.queue) }
            return (path.queue.delivery.undelivered.count, path.queue.delivery.needsFlush, path.queue.delivery.flushAll)
        }
        /// Runs `ops` with one more op queued behind them (so the queue is not idle), and routes them.
        func run(_ ops: [(UInt64, Descriptor.Flags, CompletionStatus)]) {
            for (cookie, flags, _) in ops { path.copy(cookie, flags: flags) }
            path.copy(99)
            path.channel.dispatch()
            for (_, _, status) in ops { path.finishOldest(status) }
            path.channel.takeFinished { router.route($0, now: 0) }
        }
        /// Finishes the op left behind: the queue goes idle, a flush point.
        func finishTheRest() -> (held: Int, flush: Bool, all: Bool) {
            path.finishOldest()
            path.channel.takeFinished { router.route($0, now: 0) }
            return decided()
        }

        run([(1, [], .success), (2, [], .success)])
        #expect(path.queue.outstanding == 3, "credits stay taken until records are written")
        var d = decided()
        #expect(d.held == 2 && !d.flush, "plain successes with more to come are held: \(d)")
        #expect(path.queue.outstanding == 1, "the dropped records gave their credits back; the op queued behind them keeps its")
        d = finishTheRest()
        #expect(d.held == 1 && d.flush && d.all, "the queue going idle is a flush point: \(d)")

        run([(3, .interrupt, .success)])
        d = decided()
        #expect(d.flush && d.all, "INT_EN is a flush point: \(d)")
        _ = finishTheRest()

        run([(4, [], .pageFault)])
        d = decided()
        #expect(d.flush && d.all, "a failure is a flush point: \(d)")
        _ = finishTheRest()

        run([(5, [], .success), (6, [], .success), (7, [], .success), (8, [], .success)])
        d = decided()
        #expect(d.held == 4 && d.flush && !d.all, "a full message goes out without being a flush point: \(d)")
        _ = finishTheRest()
        #expect(path.queue.outstanding == 0, "every record was dropped, so every credit came back")
        #expect(path.table.totalPins == 0)
    }
}
