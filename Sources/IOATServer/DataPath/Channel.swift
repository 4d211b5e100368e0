import DequeModule
import IOATEngine
import IOATProtocol
import IOATSystem

/// An op (or a piece of one) the engine holds, remembered by ring-window slot; the slot number is the
/// engine cookie.
struct InflightOp {
    /// Not a counted reference (one retain and release per op showed in the profile): the queue is kept
    /// alive by its connection, or, once that has closed, by the channel's `retired` list until its last
    /// op is out of the engine. (`unowned(unsafe)` was no cheaper: each use retained and released.)
    var queue: Unmanaged<Queue>?
    /// The accepted op (or, for a piece of a split op, a copy of it): its pins keep its buffers mapped
    /// until the engine is done, and it is what a halted channel hands back to run again. Not optional:
    /// a slot is initialized only while the engine holds it (`Channel.occupied`), and its fields are read
    /// in place through the slot's pointer (unwrapping an optional op copied all of it, twice per op).
    var op: PendingOp
    /// Bytes in this piece.
    var length: Int = 0
    /// For a piece of a split op: the bytes before it, and whether it is the last.
    var pieceOffset = 0
    var isLastPiece = true
}

extension UnsafeMutablePointer where Pointee == InflightOp {
    /// The slot's op, in place.
    var op: UnsafeMutablePointer<PendingOp> {
        (UnsafeMutableRawPointer(self) + MemoryLayout<InflightOp>.offset(of: \.op)!).assumingMemoryBound(to: PendingOp.self)
    }
}

/// One tenant's place on one channel: its queues with pending ops, served round-robin, and its
/// deficit-round-robin account.
final class Lane {
    let tenant: Tenant
    /// Queues with pending ops, in turn order.
    var queues: Deque<Queue> = []
    /// Cost it may still be served in its current turn.
    var deficit = 0
    /// Whether its turn has started (its quantum was added).
    var inTurn = false
    /// Whether it is in the channel's active list.
    var isActive = false

    init(tenant: Tenant) { self.tenant = tenant }
}

/// One engine channel and everything that happens to an op between its queue and its completion: fair
/// scheduling between tenants, FENCE and the failure window (SPEC.md §6.6), splitting above the max
/// transfer and folding the pieces back into one result (§6.7), and halt, reset and replay (§6.6).
/// It is the only writer of each queue's `execution` state. Finished ops come out of `complete` and
/// `dispatch` as `Finished` values for the completion router; the channel knows nothing of sockets.
///
/// Scheduling is deficit round robin
/// (Shreedhar and Varghese) over the tenants backlogged on the channel, where an op costs its bytes plus
/// a fixed per-op cost and a tenant's turn is worth `quantum × weight`. So tenants backlogged on a
/// channel are served in proportion to their weights whatever their op sizes, and an idle tenant's
/// share goes to the others. Within a tenant, its queues take turns one op (or piece) at a time.
/// The engine never holds more than `window` ops or (beyond one op) `windowBytes` bytes.
/// Runs on the event-loop thread only.
final class Channel {
    let engine: any EngineChannel
    /// What both ingresses check descriptors for this channel with (made once: a `ChannelInfo` copied
    /// out of the engine per batch retained and released its name).
    let validator: SubmitValidator
    /// Where the buffers its ops name are pinned: taken at `admit`, given back when an op leaves.
    let buffers: BufferTable
    /// Acceptance order of the ops admitted here; identifies an op a halted channel hands back.
    private var nextSerial: UInt64 = 1
    /// Tenants with pending ops on this channel, in turn order.
    private var active: Deque<Lane>
    /// Every tenant's lane on this channel.
    private var lanes: [ObjectIdentifier: Lane] = [:]
    /// Fair-scheduling parameters (ServerConfiguration).
    let opCost: Int
    let quantum: Int
    let windowBytes: Int
    /// Bytes in the engine now.
    private(set) var bytesInEngine = 0
    /// The engine window, one entry per engine cookie, read and cleared in place (an entry is a few
    /// hundred bytes; moving it in and out per op showed in the profile).
    private let slots: UnsafeMutablePointer<InflightOp>
    /// Which slots hold an op (only those are initialized).
    private let occupied: UnsafeMutablePointer<Bool>
    private let window: Int
    private var freeSlots: [Int]
    /// Per slot, room for the XOR source pointers the engine reads while the op runs.
    private let sourceTable: UnsafeMutablePointer<UnsafeRawPointer>
    /// Queues opened on this channel (for "any channel" placement and status).
    var queueCount = 0
    /// Lifetime counters.
    var opsCompleted: UInt64 = 0
    var bytesCompleted: UInt64 = 0
    var opsFailed: UInt64 = 0
    var halts: UInt64 = 0
    var resets: UInt64 = 0
    var replayed: UInt64 = 0
    var lastError: String? = nil
    /// Set between a CHANNEL_HALTED completion and the reset that follows it: NOT_ATTEMPTED completions
    /// in that window are ops the halt stopped, to run again.
    var recovering = false
    /// Queues whose connection closed: kept alive here (engine slots and finished ops do not count
    /// references) until their last op is out of the engine and routed.
    private var retired: [Queue] = []
    /// Ops the halt stopped, in completion order, waiting for the reset.
    private var returned: [(Queue, PendingOp)] = []
    /// Ops finished since the router last took them (completed by the engine, or skipped behind a
    /// failure): capacity kept, so steady state allocates nothing.
    private(set) var finished: [Finished] = []

    /// Largest piece the engine takes (a multiple of 8, so FILL and COMPARE_PATTERN keep their phase).
    let maxTransfer: Int

    /// Ops (or pieces) of at most this many bytes run on the event loop's thread when the engine can and
    /// holds nothing else: no hand-off, no wake-up. 0 turns it off.
    let inlineBytes: Int

    /// How much runs inline per `dispatch` call, counted as fair scheduling counts (`cost`: bytes plus
    /// a per-op cost); the rest of a deep queue waits for the loop's next turn (`deferred`), so the
    /// event loop, and with it other tenants' ingress and completions, is held for a bounded time (with
    /// the defaults 1 MiB of cost: fifteen 64 KiB ops, or 256 NULL ops, per turn).
    let inlineBudget: Int

    /// Set when `dispatch` stopped because its inline budget ran out while ops that would run inline
    /// were still queued: they stay queued for the loop's next turn (`dispatch` again), rather than go
    /// to a worker thread, whose hand-off cost more than the copies on a machine with few CPUs.
    private(set) var deferred = false
    private let runsInline: Bool

    /// Inline cost `runNow` spent since the last `dispatch`, and when the first of it started: the
    /// dispatch that follows an ingress's batch has only the rest of its inline budget, so the loop is
    /// held no longer than before ops could skip the queue.
    private var inlineSpent = 0
    private var inlineSpentSince: UInt64 = 0
    /// Fair-scheduling cost of what `runNow` ran, not yet charged to its tenant (`ranNow`).
    private var ranNowCharge = 0

    init(engine: any EngineChannel, buffers: BufferTable, window: Int, windowBytes: Int = 16 << 20, opCost: Int = 4096,
         quantum: Int = 256 << 10, inlineBytes: Int = 0) {
        self.engine = engine
        validator = SubmitValidator(channel: engine.info)
        self.buffers = buffers
        self.inlineBytes = max(0, inlineBytes)
        inlineBudget = self.inlineBytes * 16
        runsInline = engine.runsInline
        self.windowBytes = max(1, windowBytes)
        self.opCost = max(0, opCost)
        self.quantum = max(1, quantum)
        maxTransfer = max(8, Int(clamping: min(engine.info.maxTransfer, UInt64(Int.max))) & ~7)
        let window = max(1, min(window, engine.info.maxDepth == 0 ? window : Int(engine.info.maxDepth)))
        active = Deque(minimumCapacity: 64)
        self.window = window
        slots = .allocate(capacity: window)
        occupied = .allocate(capacity: window)
        occupied.initialize(repeating: false, count: window)
        freeSlots = Array((0..<window).reversed())
        sourceTable = .allocate(capacity: window * Descriptor.xorSources.upperBound)
        finished.reserveCapacity(window * 2)
    }

    deinit {
        sourceTable.deallocate()
        for slot in 0..<window where occupied[slot] { (slots + slot).deinitialize(count: 1) }
        slots.deallocate()
        occupied.deallocate()
    }

    /// Pins held by the ops in engine slots and the ops a halt handed back (debug accounting).
    var pinsHeld: Int {
        var n = returned.reduce(0) { $0 + $1.1.pinCount }
        for slot in 0..<window where occupied[slot] { n += slots[slot].op.pinCount }
        return n
    }

    /// Ops in the engine now.
    var inEngine: Int { window - freeSlots.count }
    /// Ops waiting in queues for this channel's window.
    var pendingCount: Int { active.reduce(0) { $0 + $1.queues.reduce(0) { $0 + $1.pending.count } } }
    /// Whether no op is in the engine or waiting for it.
    var isIdle: Bool { inEngine == 0 && active.isEmpty }

    /// The lane of `tenant` on this channel (made on first use).
    func lane(for tenant: Tenant) -> Lane {
        let key = ObjectIdentifier(tenant)
        if let lane = lanes[key] { return lane }
        let lane = Lane(tenant: tenant)
        lanes[key] = lane
        return lane
    }

    /// Drops the lane of a tenant that has gone (its queues are no longer scheduled).
    func forget(_ tenant: Tenant) {
        lanes[ObjectIdentifier(tenant)] = nil
    }

    /// Takes a validated op into `queue` (whose credit for it the caller has taken): it gets its place
    /// in acceptance order and pins the buffers it names until it leaves the channel. Both ingresses
    /// admit here.
    func admit(_ op: consuming PendingOp, into queue: Queue, at now: UInt64) {
        admitPinned(op, into: queue, at: now)
        buffers.pin(queue.pending.last)
    }

    /// `admit` for an op that names at most a source and a destination, whose slots the caller pinned
    /// itself while it still held them in registers (`IOATServer.resolveRingDescriptors`): reading them
    /// back from the op just copied into the queue stalled on that copy.
    func admitPinned(_ op: consuming PendingOp, into queue: Queue, at now: UInt64) {
        queue.pending.append(op)
        let admitted = queue.pending.last
        admitted.pointee.serial = nextSerial
        admitted.pointee.acceptedAt = now
        nextSerial += 1
    }

    /// What `runNow` did with an op.
    enum RunNow {
        /// Nothing: the caller admits the op.
        case notRun
        /// It ran and completed with this record, which is the caller's to route (`CompletionRouter.routeNow`).
        case ran(CompletionRecord)
        /// It halted the channel: it took the slot it ran under, and `complete` put its record in
        /// `finished`, to be routed with the others.
        case halted
    }

    /// Whether ops of `queue` may run at once (`runNow`): the engine runs small ops inline and holds
    /// nothing of this channel's, no tenant waits for the channel, and `queue` has nothing pending
    /// that would run first. An ingress asks once per batch: while its ops run at once, it stays true.
    func runsNow(_ queue: Queue) -> Bool {
        runsInline && !recovering && active.isEmpty && queue.pending.isEmpty && freeSlots.count == window && finished.isEmpty
    }

    /// Runs a validated COPY, FILL or NULL of `queue` at once, without
    /// queueing or pinning it, when `dispatch` would run it inline as its very next op anyway: the caller
    /// saw `runsNow(queue)`, and the op is within `inlineBytes`, within what is left of the inline
    /// budget, and not a FENCE op behind a failure (which `dispatch` skips). The caller's credit for it
    /// stays taken until its record is delivered, as for a queued op.
    @inline(__always)
    func runNow(_ op: CommonOp, in queue: Queue, at now: UInt64) -> RunNow {
        assert(runsInline && active.isEmpty && queue.pending.isEmpty && freeSlots.count == window,
               "runNow on channel \(engine.info.index) without runsNow")
        guard !recovering, op.length <= inlineBytes,
              !(op.flags.contains(.fence) && queue.execution.failedSinceFence) else { return .notRun }
        let charge = cost(op.length)
        guard inlineSpent + charge <= inlineBudget else { return .notRun }
        // The cookie the engine sees is the slot the op would take if it halted the channel.
        let slot = freeSlots[freeSlots.count - 1]
        guard let done = engine.executeInline(common: op.opcode, cookie: UInt64(slot), source: op.source.map { UnsafeRawPointer($0.pointer) },
                                              destination: op.destination?.pointer, length: op.length, arg: op.arg) else { return .notRun }
        if inlineSpentSince == 0 { inlineSpentSince = now }
        inlineSpent += charge
        // (Its tenant is charged by `ranNow`, once for the batch.)
        ranNowCharge += charge
        if done.status == .channelHalted || done.status == .notAttempted {
            halted(op, slot: slot, done, of: queue, at: now)
            return .halted
        }
        count(done, of: queue)
        return .ran(CompletionRecord(cookie: op.cookie, status: done.status, opcode: op.opcode.rawValue, result: done.result,
                                     bytesDone: done.bytesDone))
    }

    /// The ops `runNow` ran for `queue` since this was last called took until `now`: the engine's busy
    /// time, and what fair scheduling charges the queue's tenant.
    func ranNow(until now: UInt64, of queue: Queue) {
        queue.tenant.served += UInt64(ranNowCharge)
        ranNowCharge = 0
        guard inlineSpentSince != 0 else { return }
        engine.noteInlineBusy(now &- inlineSpentSince)
        inlineSpentSince = 0
    }

    /// An op `runNow` ran halted the channel: what that means is `complete`'s to say, so the op takes the
    /// slot it ran under, pinned like one dispatched, so that it can be handed back and run again.
    @inline(never)
    private func halted(_ op: CommonOp, slot: Int, _ done: EngineCompletion, of queue: Queue, at now: UInt64) {
        var held = op.pending
        // (An op that ran at once needs no place in acceptance order, unless it is handed back.)
        held.serial = nextSerial
        nextSerial += 1
        held.acceptedAt = now
        held.startedAt = now
        buffers.pin(held)
        _ = freeSlots.removeLast()
        (slots + slot).initialize(to: InflightOp(queue: .passUnretained(queue), op: held, length: held.length))
        occupied[slot] = true
        queue.execution.inEngine += 1
        bytesInEngine += held.length
        complete(done)
    }

    /// Puts `queue` in its tenant's turn order, and the tenant in the channel's, if it has pending ops
    /// and is not there yet.
    func schedule(_ queue: Queue) {
        guard !queue.isScheduled, !queue.pending.isEmpty else { return }
        queue.execution.isScheduled = true
        let lane = queue.lane
        lane.queues.append(queue)
        if !lane.isActive {
            lane.isActive = true
            lane.inTurn = false
            lane.deficit = 0
            active.append(lane)
        }
    }

    /// The cost fair scheduling charges for `bytes` of one op or piece.
    func cost(_ bytes: Int) -> Int { bytes + opCost }

    /// Moves pending ops into the engine while the window has room, then rings the doorbell once.
    /// A FENCE op waits until every earlier op of its queue has completed (SPEC.md §6.2).
    func dispatch() {
        // A halted channel takes nothing new until everything it held has come back and it is reset.
        deferred = false
        guard !recovering else { return }
        var started = false
        var now: UInt64 = 0
        // Time spent running ops inline, counted once per call rather than per op.
        var inlineSince = inlineSpentSince
        var inlineLeft = inlineBudget - inlineSpent
        inlineSpent = 0
        inlineSpentSince = 0
        defer { if inlineSince != 0 { engine.noteInlineBusy(Clock.nanoseconds(since: inlineSince)) } }
        // The outer loop picks a tenant and its queue; the inner one serves that queue op after op for as
        // long as it keeps its turn, so the lane, queue and tenant are looked up (and their reference
        // counts touched) once per run of ops, not once per op.
        lanes: while let lane = active.first {
            guard let queue = lane.queues.first else {
                // Nothing left to run: the tenant leaves the turn order, and its unused deficit with it.
                active.removeFirst()
                lane.isActive = false
                lane.deficit = 0
                continue
            }
            guard queue.connection != nil else {
                lane.queues.removeFirst()
                queue.execution.isScheduled = false
                continue
            }
            let tenant = lane.tenant
            while true {
                // (An engine holding none of this channel's ops has room: it is not asked, per op.)
                assert(inEngine > 0 || engine.freeSlots > 0, "channel \(engine.info.index): an empty engine reports no free slot")
                guard !freeSlots.isEmpty, inEngine == 0 || (engine.freeSlots > 0 && bytesInEngine < windowBytes) else { break lanes }
                guard !queue.pending.isEmpty else {
                    lane.queues.removeFirst()
                    queue.execution.isScheduled = false
                    continue lanes
                }
                // The head op is read in place, and moved out only when it leaves the queue. The fields
                // are read one by one: a computed property called through `head.pointee` copies the op.
                let head = queue.pending.head
                // Fenced: a FENCE or DRAIN op, or a refusal, which waits too so that its record comes in
                // its turn.
                if head.pointee.dispatched == 0
                    && (head.pointee.flags.contains(.fence) || head.pointee.opcode == .drain || head.pointee.refusal != nil) {
                    // Re-scheduled by `complete` when its last in-engine op finishes.
                    if queue.execution.inEngine > 0 {
                        lane.queues.removeFirst()
                        queue.execution.isScheduled = false
                        continue lanes
                    }
                    if let refusal = head.pointee.refusal {
                        // A refused ring descriptor: its record comes in its turn, and it counts as a failure
                        // for the next FENCE op, which depended on it (SPEC.md §5.10.4).
                        let op = queue.pending.removeFirst()
                        buffers.unpin(op)
                        queue.execution.failedSinceFence = true
                        opsFailed += 1
                        finished.append(Finished(queueReference: .passUnretained(queue), record: CompletionRecord(
                            cookie: op.cookie, status: .refused(refusal), opcode: op.refusedOpcode, result: 0, bytesDone: 0),
                            notify: true, acceptedAt: op.acceptedAt, startedAt: op.startedAt))
                        continue
                    }
                    // SPEC.md §6.6: a FENCE op behind a failure does not run, and closes the failure window.
                    let skipped = queue.execution.failedSinceFence
                    queue.execution.failedSinceFence = false
                    if skipped {
                        let op = queue.pending.removeFirst()
                        buffers.unpin(op)
                        finished.append(Finished(queueReference: .passUnretained(queue), record: CompletionRecord(
                            cookie: op.cookie, status: .notAttempted, opcode: op.opcode.rawValue, result: 0, bytesDone: 0),
                            notify: op.flags.contains(.interrupt), acceptedAt: op.acceptedAt, startedAt: op.startedAt))
                        continue
                    }
                }
                // Ops above the engine's max transfer go in pieces (SPEC.md §6.7); the head op stays queued
                // until its last piece is in the engine.
                let offset = head.pointee.dispatched
                let opLength = head.pointee.length
                var pieceLength = min(opLength - offset, maxTransfer)
                // COPY_SG: the piece lies inside one entry.
                var entry: (source: UnsafeRawPointer, destination: UnsafeMutableRawPointer)? = nil
                if head.pointee.segments != nil {
                    var start = 0
                    for segment in head.pointee.segments! {
                        if offset < start + segment.length {
                            let inside = offset - start
                            pieceLength = min(segment.length - inside, maxTransfer)
                            entry = (UnsafeRawPointer(segment.source.pointer + inside), segment.destination.pointer + inside)
                            break
                        }
                        start += segment.length
                    }
                }
                // Deficit round robin: a turn adds quantum × weight; a tenant whose next piece costs more
                // than it has left goes to the back with what it has. Alone, a tenant is never held back.
                let charge = cost(pieceLength)
                // An op that would run inline, once this call's inline budget is spent: the loop's next
                // turn runs it (other connections and rings get their turn first).
                if runsInline && pieceLength <= inlineBytes && inEngine == 0 && charge > inlineLeft && inlineLeft < inlineBudget {
                    deferred = true
                    break lanes
                }
                if !lane.inTurn {
                    lane.inTurn = true
                    lane.deficit += quantum * max(1, tenant.limits.weight)
                }
                if lane.deficit < charge {
                    if active.count == 1 {
                        lane.deficit = charge
                    } else {
                        lane.inTurn = false
                        active.removeFirst()
                        active.append(lane)
                        continue lanes
                    }
                }
                lane.deficit -= charge
                tenant.served += UInt64(charge)
                // The tenant's queues take turns one op or piece at a time; a queue alone in its lane keeps
                // its place and its run.
                let rotates = lane.queues.count > 1
                if rotates {
                    lane.queues.removeFirst()
                    queue.execution.isScheduled = false
                }

                let isLast = offset + pieceLength == opLength
                if offset == 0 {
                    if now == 0 { now = Clock.nanoseconds() }
                    head.pointee.startedAt = now
                }
                // A whole small op with the engine empty runs right here, read in place at the head of
                // its queue: no engine slot is filled and emptied for it. (Completions stay in order: the
                // engine holds nothing else.)
                if runsInline && isLast && offset == 0 && entry == nil && pieceLength <= inlineBytes && inEngine == 0
                    && charge <= inlineLeft, let last = freeSlots.last,
                    let done = engine.executeInline(engineOp(for: head, slot: last, offset: 0, length: pieceLength, isLast: true,
                                                             entry: nil, crcState: queue.crcState))
                {
                    // (`now` was read for this op's start, just above.)
                    if inlineSince == 0 { inlineSince = now }
                    inlineLeft -= charge
                    if done.status == .channelHalted || done.status == .notAttempted {
                        // What a halt means is `complete`'s to say: the op takes the slot it ran under.
                        let slot = freeSlots.removeLast()
                        (slots + slot).initialize(to: InflightOp(queue: .passUnretained(queue), op: queue.pending.removeFirst(),
                                                                 length: pieceLength, pieceOffset: 0, isLastPiece: true))
                        occupied[slot] = true
                        queue.execution.inEngine += 1
                        bytesInEngine += pieceLength
                        complete(done)
                    } else {
                        finishInPlace(done, of: queue)
                    }
                    if rotates { continue lanes }
                    continue
                }
                let slot = freeSlots.removeLast()
                // What the engine gets is read from the op in place; then the op (its last piece) moves
                // into its slot, or (an earlier piece) a copy with pins of its own goes there while the op
                // in the queue keeps its pins until its last piece leaves.
                let engineOp = engineOp(for: head, slot: slot, offset: offset, length: pieceLength, isLast: isLast,
                                        entry: entry, crcState: queue.crcState)
                if isLast {
                    (slots + slot).initialize(to: InflightOp(queue: .passUnretained(queue), op: queue.pending.removeFirst(),
                                                             length: pieceLength, pieceOffset: offset, isLastPiece: isLast))
                } else {
                    (slots + slot).initialize(to: InflightOp(queue: .passUnretained(queue), op: head.pointee,
                                                             length: pieceLength, pieceOffset: offset, isLastPiece: isLast))
                    buffers.pin((slots + slot).op)
                    head.pointee.dispatched += pieceLength
                }
                occupied[slot] = true
                queue.execution.inEngine += 1
                bytesInEngine += pieceLength
                // A small op with nothing else in the engine runs right here: completions stay in order.
                if pieceLength <= inlineBytes && inEngine == 1 && charge <= inlineLeft, let done = engine.executeInline(engineOp) {
                    if inlineSince == 0 { inlineSince = Clock.nanoseconds() }
                    inlineLeft -= charge
                    complete(done)
                } else {
                    let accepted = engine.enqueue(engineOp)
                    precondition(accepted, "engine refused an op although it reported free slots")
                    started = true
                    if rotates { schedule(queue) }
                }
                if rotates { continue lanes }
            }
        }
        if started { engine.submit() }
    }

    /// The engine's view of one piece of the op at `op` (read in place): its pointers moved by `offset`,
    /// and CRC flags adjusted for a piece that is not the whole op.
    private func engineOp(for op: UnsafeMutablePointer<PendingOp>, slot: Int, offset: Int, length: Int, isLast: Bool,
                          entry: (source: UnsafeRawPointer, destination: UnsafeMutableRawPointer)?,
                          crcState: UnsafeMutablePointer<UInt32>) -> EngineOp {
        if let entry {
            return EngineOp(cookie: UInt64(slot), opcode: .copy, source: entry.source, destination: entry.destination, length: length)
        }
        let opcode = op.pointee.opcode
        var flags = op.pointee.flags
        if opcode.computesCRC {
            if offset > 0 { flags = flags.subtracting(.crcSeed).union(.crcChain) }
            if !isLast { flags.subtract(.crcLocated) }
        }
        var sources: UnsafePointer<UnsafeRawPointer>? = nil
        if op.pointee.sources != nil {
            let base = sourceTable + slot * Descriptor.xorSources.upperBound
            for (i, p) in op.pointee.sources!.enumerated() { base[i] = UnsafeRawPointer(p.pointer + offset) }
            sources = UnsafePointer(base)
        }
        // The auxiliary range is a second destination (moves with the piece) or a CRC location (used by
        // the last piece only).
        var auxiliary: UnsafeMutableRawPointer? = nil
        if let place = op.pointee.auxiliary {
            if opcode == .dualcast { auxiliary = place.pointer + offset } else if isLast { auxiliary = place.pointer }
        }
        var source: UnsafeRawPointer? = nil
        var destination: UnsafeMutableRawPointer? = nil
        if let place = op.pointee.source { source = UnsafeRawPointer(place.pointer + offset) }
        if let place = op.pointee.destination { destination = place.pointer + offset }
        return EngineOp(cookie: UInt64(slot), opcode: opcode, flags: flags, source: source, destination: destination,
                        length: length, arg: op.pointee.arg, auxiliary: auxiliary, crcState: crcState, sources: sources)
    }

    /// Takes what the engine finished: folds pieces of split ops into one result, notes failures for
    /// the fence window, counts, and records halts. Finished ops go to `finished`. Returns true when
    /// the channel halted and everything it held has come back, so the caller should `recover()`.
    func reap(into buffer: UnsafeMutableBufferPointer<EngineCompletion>) -> Bool {
        while true {
            let n = engine.reap(into: buffer)
            if n == 0 { break }
            for i in 0..<n { complete(buffer[i]) }
        }
        return recovering && inEngine == 0
    }

    /// The ops finished since the last call, in the order they finished, for the completion router;
    /// empties the list.
    func takeFinished(_ body: ([Finished]) -> Void) {
        if !finished.isEmpty {
            body(finished)
            finished.removeAll(keepingCapacity: true)
        }
        // Only now, with no finished op naming them, may retired queues go.
        if !retired.isEmpty { retired.removeAll { $0.execution.inEngine == 0 } }
    }

    /// Handles one engine completion and says which queue's op it was and how many bytes the piece had
    /// (for tests that drive the channel by hand; the server calls `complete`).
    func completeReporting(_ engineCompletion: EngineCompletion) -> (queue: Queue, length: Int) {
        let entry = slots + Int(engineCompletion.cookie)
        precondition(occupied[Int(engineCompletion.cookie)], "engine completed an unknown slot \(engineCompletion.cookie)")
        let queue = entry.pointee.queue!.takeUnretainedValue(), length = entry.pointee.length
        complete(engineCompletion)
        return (queue, length)
    }

    /// Handles one engine completion (one op or one piece of a split op): its slot is read and cleared in
    /// place.
    func complete(_ engineCompletion: EngineCompletion) {
        let slot = Int(engineCompletion.cookie)
        let entry = slots + slot
        guard slot >= 0, slot < window, occupied[slot], let queue = entry.pointee.queue else {
            preconditionFailure("engine completed an unknown slot \(engineCompletion.cookie)")
        }
        // The queue is borrowed for the call, uncounted like the slot's own reference.
        queue._withUnsafeGuaranteedRef { complete(engineCompletion, slot: slot, entry: entry, of: $0) }
    }

    private func complete(_ engineCompletion: EngineCompletion, slot: Int, entry: UnsafeMutablePointer<InflightOp>, of queue: Queue) {
        let length = entry.pointee.length, pieceOffset = entry.pointee.pieceOffset, isLastPiece = entry.pointee.isLastPiece
        // Whether a halt handed the op back to run again (it keeps its pins).
        var handedBack = false
        // Clears the slot (the op in it gives back its pins, unless a halt handed it back) and frees it,
        // on every way out.
        defer {
            if !handedBack { buffers.unpin(entry.op) }
            entry.deinitialize(count: 1)
            occupied[slot] = false
            freeSlots.append(slot)
            bytesInEngine -= length
        }
        queue.execution.inEngine -= 1
        var completion = engineCompletion
        if completion.status == .channelHalted {
            halts += 1
            recovering = true
            lastError = "op \(entry.pointee.op.cookie) (\(entry.pointee.op.opcode.name)) of client \(queue.connection.map { "\($0.id)" } ?? "gone") halted the channel"
        } else if completion.status == .notAttempted && recovering {
            // Stopped by the halt, not by anything it did: it runs again after the reset.
            if queue.connection != nil {
                var again = entry.pointee.op
                again.dispatched = pieceOffset
                returned.append((queue, again))
                handedBack = true
                return
            }
            // Its connection closed meanwhile: the op ends here, NOT_ATTEMPTED; the router gives its credit
            // back when it takes the record.
            guard isLastPiece else { return }
        }
        if !isLastPiece || pieceOffset > 0 {
            // A piece of a split op: fold it into the queue's progress; only the last piece makes a record.
            if queue.execution.split.outcome == nil && !completion.status.isSuccess {
                queue.execution.split.outcome = (completion.status, UInt64(pieceOffset) + completion.bytesDone)
            }
            queue.execution.split.bytesDone += completion.bytesDone
            guard isLastPiece else {
                schedule(queue)
                return
            }
            if let outcome = queue.execution.split.outcome {
                completion.status = outcome.status
                completion.bytesDone = outcome.bytesDone
            } else {
                completion.bytesDone = queue.execution.split.bytesDone
            }
            queue.execution.split = SplitProgress()
        }
        finish(entry.op, completion, of: queue)
        schedule(queue)
    }

    /// The op at `op` is done with `completion` (of the whole op): the failure window, the counters, and
    /// its record in `finished`. Its pins and its place are the caller's to give back.
    @inline(__always)
    private func finish(_ op: UnsafeMutablePointer<PendingOp>, _ completion: EngineCompletion, of queue: Queue) {
        count(completion, of: queue)
        finished.append(Finished(queueReference: .passUnretained(queue), record: CompletionRecord(
            cookie: op.pointee.cookie, status: completion.status, opcode: op.pointee.opcode.rawValue,
            result: completion.result, bytesDone: completion.bytesDone), notify: op.pointee.flags.contains(.interrupt),
            acceptedAt: op.pointee.acceptedAt, startedAt: op.pointee.startedAt))
    }

    /// The counters and the failure window, for an op that ended with `completion`.
    @inline(__always)
    private func count(_ completion: EngineCompletion, of queue: Queue) {
        if completion.status.isFailure {
            queue.execution.failedSinceFence = true
            opsFailed += 1
        }
        opsCompleted += 1
        bytesCompleted += completion.bytesDone
    }

    /// Ends the op at the head of `queue`, which ran inline without a slot and did not halt the channel:
    /// what `complete` does for a whole op, read in place, and the op dropped where it lies.
    private func finishInPlace(_ completion: EngineCompletion, of queue: Queue) {
        let op = queue.pending.head
        finish(op, completion, of: queue)
        buffers.unpin(UnsafePointer(op))
        queue.pending.dropFirst()
        schedule(queue)
    }

    /// Resets a halted channel once everything it held has come back, and puts the ops the halt
    /// stopped back at the front of their queues (SPEC.md §6.6). Returns how many run again.
    func recover() -> Int {
        engine.reset()
        resets += 1
        recovering = false
        let replays = returned
        returned.removeAll()
        requeue(replays)
        return replays.count
    }

    /// Puts ops a halt stopped back at the front of their queues, in their original order. A piece whose
    /// op is still at the head (partly dispatched) rewinds that op instead of being inserted again.
    private func requeue(_ returned: [(Queue, PendingOp)]) {
        var byQueue: [ObjectIdentifier: (Queue, [PendingOp])] = [:]
        var order: [ObjectIdentifier] = []
        for (queue, op) in returned {
            let key = ObjectIdentifier(queue)
            if byQueue[key] == nil {
                byQueue[key] = (queue, [])
                order.append(key)
            }
            byQueue[key]!.1.append(op)
        }
        for key in order {
            let (queue, ops) = byQueue[key]!
            guard queue.connection != nil else {
                // Its connection closed while the channel recovered: nothing runs again, nothing stays pinned.
                for op in ops { buffers.unpin(op) }
                continue
            }
            for op in ops.reversed() {
                if !queue.pending.isEmpty, queue.pending.head.pointee.serial == op.serial {
                    // A piece of the op still at the head: the op runs again from there; the piece's
                    // copy gives back its pins.
                    queue.pending.head.pointee.dispatched = min(queue.pending.head.pointee.dispatched, op.dispatched)
                    buffers.unpin(op)
                } else {
                    queue.pending.prepend(op)
                }
            }
            replayed += UInt64(ops.count)
            schedule(queue)
        }
    }

    /// Drops every pending op of `queue` (its connection closed) so their buffers can be unmapped;
    /// returns how many (their credits are the router's to give back).
    @discardableResult
    func cancelPending(of queue: Queue) -> Int {
        // Kept until nothing names it: its ops in the engine, or finished ops not routed yet.
        retired.append(queue)
        let dropped = queue.pending.count
        while !queue.pending.isEmpty { buffers.unpin(queue.pending.removeFirst()) }
        return dropped
    }
}

/// An op that left the channel: its record, for the completion router.
struct Finished {
    /// Not counted, like `InflightOp.queue`: finished ops are routed before the channel lets a retired
    /// queue go (`takeFinished`).
    let queueReference: Unmanaged<Queue>
    var queue: Queue { queueReference.takeUnretainedValue() }
    let record: CompletionRecord
    /// Whether the op asked to be notified (INT_EN).
    let notify: Bool
    /// When the op was accepted and when the engine took it (monotonic ns, for tenant statistics). Only
    /// these: a copy of the whole op would retain and release every buffer it names once more per op.
    let acceptedAt: UInt64
    let startedAt: UInt64
}

/// The part of a queue's state that only its channel writes: ops in the engine, the FENCE failure
/// window, and the progress of a split op.
struct QueueExecution {
    /// Whether the queue is in its tenant's turn order on the channel.
    fileprivate(set) var isScheduled = false
    /// Ops (or pieces) in the engine.
    fileprivate(set) var inEngine = 0
    /// Whether an op of this queue failed since the last FENCE op was started or skipped: the next
    /// FENCE op (which depends on everything before it) is then NOT_ATTEMPTED (SPEC.md §6.6).
    fileprivate(set) var failedSinceFence = false
    /// Progress of the split op whose pieces are completing (pieces of one queue complete in order).
    fileprivate(set) var split = SplitProgress()
}
