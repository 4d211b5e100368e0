import DequeModule
import IOATProtocol
import Synchronization

/// A batch submitted through a ring queue, waiting for its records.
final class RingBatch: @unchecked Sendable {
    /// Where its records go, in order, as they are reaped: written through a pointer, so reaping a record
    /// neither copies nor allocates (an Array element written through a class property is not free).
    let records: UnsafeMutableBufferPointer<CompletionRecord>
    var filled = 0
    /// The first descriptor the server refused: its place in the batch, its ring entry, why, and the
    /// server's text once its ERROR arrived.
    var refusal: (index: Int, entry: UInt32, code: ErrorCode)? = nil
    var refusalText: String? = nil
    /// Reaping rounds this batch has waited for its refusal's text.
    var roundsWaited = 0
    /// When it gives up waiting for its records (Clock.nanoseconds), and its queue, for the error (made
    /// into text only then: submitting allocates nothing per op).
    let deadline: UInt64?
    let queue: UInt32
    var what: String { "\(records.count) op\(records.count == 1 ? "" : "s") on ring queue \(queue)" }
    /// Whether `complete` was called (reader thread): a batch that gave up still takes its records, in
    /// order, and completes no more.
    private(set) var isDone = false
    private let complete: @Sendable (IOATClient.BatchResult) -> Void

    init(count: Int, deadline: UInt64?, queue: UInt32, complete: @escaping @Sendable (IOATClient.BatchResult) -> Void) {
        records = .allocate(capacity: count)
        records.initialize(repeating: CompletionRecord(cookie: 0, status: .connectionLost, opcode: 0, result: 0, bytesDone: 0))
        self.deadline = deadline
        self.queue = queue
        self.complete = complete
    }

    /// Completes the batch with `result`, once.
    func end(_ result: IOATClient.BatchResult) {
        guard !isDone else { return }
        isDone = true
        complete(result)
    }

    deinit { records.deallocate() }

    /// Completes the batch: its records, or the first refusal: its place in the batch as the error's
    /// index, and the server's text as it came ("queue Q, ring entry E: what was wrong"), uncut.
    func finish() {
        guard !isDone else { return }
        if let refusal {
            let text = refusalText ?? "descriptor \(refusal.index) of the batch was refused by the server (\(refusal.code.name))"
            end(.failure(.refused(ProtocolError(refusal.code, text, index: UInt32(refusal.index)))))
        } else {
            end(.success(Array(records)))
        }
    }
}

/// `IOATQueue` over a ring: any thread submits batches, the session's reader thread reaps records and
/// completes batches. Records come in submission order, so the batches in flight form a queue and no
/// record needs looking up. One lock, taken once per batch submitted and once per reaping round,
/// never per op; nothing is allocated per op.
final class RingFeeder: @unchecked Sendable {
    let memory: RingMemory

    /// The next `count` records belong to `batch`.
    private struct Segment {
        let batch: RingBatch
        var count: Int
    }
    /// Descriptors that did not fit in the submission ring yet.
    private struct Waiting {
        let batch: RingBatch
        let descriptors: [Descriptor]
        var next: Int
    }
    private struct Shared: ~Copyable {
        var inflight: Deque<Segment> = []
        var backlog: Deque<Waiting> = []
        var lost: IOATError? = nil
        /// Ops submitted whose records were not reaped yet (the credits in use).
        var outstanding = 0
        /// Texts of refused ring entries, from the server's ERRORs, until their batches take them.
        var refusalTexts: [UInt32: String] = [:]
        /// `reserve` calls waiting for free credits.
        var reservations: [(credits: Int, resume: CheckedContinuation<Result<Int, IOATError>, Never>)] = []
    }
    private let shared = Mutex(Shared())
    /// Batches finished in the current reaping round (reader thread only; capacity kept).
    private var finished: [RingBatch] = []
    /// Finished batches with a refusal whose text has not come yet (reader thread only). The server sends
    /// the ERROR before the record is visible, so it is in the socket by the next round.
    private var awaitingText: [RingBatch] = []

    /// Whether a batch waits for its refusal's text (the reader then does not sleep).
    var hasAwaitingText: Bool { !awaitingText.isEmpty }

    /// The server's text for a refused ring entry (reader thread, from an unsolicited ERROR).
    func noteRefusal(entry: UInt32, message: String) {
        shared.withLock { $0.refusalTexts[entry] = message }
    }

    init(memory: RingMemory) {
        self.memory = memory
        finished.reserveCapacity(16)
    }

    /// Whether records are awaited.
    var isBusy: Bool { shared.withLock { !$0.inflight.isEmpty || !$0.backlog.isEmpty } }

    /// Puts a batch into the ring (what does not fit waits, in order, for room) and publishes it.
    func submit(_ descriptors: [Descriptor], deadline: UInt64? = nil, complete: @escaping @Sendable (IOATClient.BatchResult) -> Void) {
        guard !descriptors.isEmpty else { return complete(.success([])) }
        let batch = RingBatch(count: descriptors.count, deadline: deadline, queue: memory.ring.pointee.queue, complete: complete)
        let failure: IOATError? = shared.withLock { s in
            if let lost = s.lost { return lost }
            if let code = memory.brokenCode {
                return .refused(ProtocolError(code, "ring queue \(memory.ring.pointee.queue) was broken by the server (\(code.name))"))
            }
            s.outstanding += descriptors.count
            var pushed = 0
            if s.backlog.isEmpty {
                while pushed < descriptors.count && memory.push(descriptors[pushed]) { pushed += 1 }
                if pushed > 0 { s.inflight.append(Segment(batch: batch, count: pushed)) }
            }
            if pushed < descriptors.count { s.backlog.append(Waiting(batch: batch, descriptors: descriptors, next: pushed)) }
            // The batch is now held in `inflight`/`backlog`, so it ends there and only there: by its records,
            // or by `fail` once the reader sees the connection go. A doorbell that fails (the server closed
            // its end: it is stopping or gone) must not complete it here as well, or it completes twice.
            try? memory.submit()
            return nil
        }
        if let failure { batch.end(.failure(failure)) }
    }

    /// Gives up on every batch whose deadline passed by `now` (reader thread): it completes with
    /// `error(what it is)` and keeps its place, so that its records, if they come, are read in order.
    func expire(now: UInt64, _ error: (String) -> IOATError) {
        let overdue: [RingBatch] = shared.withLock { s in
            (s.inflight.map(\.batch) + s.backlog.map(\.batch)).filter { !$0.isDone && ($0.deadline ?? .max) <= now }
        }
        var seen = Set<ObjectIdentifier>()
        for batch in overdue where seen.insert(ObjectIdentifier(batch)).inserted { batch.end(.failure(error(batch.what))) }
    }

    /// Reads every ready record into its batch, hands the slots back, moves waiting descriptors into the
    /// room that freed, and completes finished batches (reader thread only). Returns whether anything moved.
    func reap() -> Bool {
        guard memory.ready > 0 || !awaitingText.isEmpty || shared.withLock({ !$0.backlog.isEmpty }) else { return false }
        var moved = false
        shared.withLock { s in
            // Refused batches from earlier rounds take their texts (or give up waiting after two rounds).
            for batch in awaitingText {
                batch.roundsWaited += 1
                if let refusal = batch.refusal { batch.refusalText = s.refusalTexts.removeValue(forKey: refusal.entry) }
                if batch.refusalText != nil || batch.roundsWaited > 2 { finished.append(batch) }
            }
            awaitingText.removeAll { $0.refusalText != nil || $0.roundsWaited > 2 }
            let n = memory.ready
            // Records come in submission order, one per descriptor: record i is ring entry head + i.
            let head = memory.ring.pointee.cq_head_local
            // The segment being filled is held here, not modified in place in the deque, once per record.
            var segment: Segment? = nil
            defer { if let segment { s.inflight.prepend(segment) } }
            for i in 0..<n {
                if segment == nil { segment = s.inflight.popFirst() }
                guard let current = segment else { break }  // more records than descriptors: ignored
                let record = memory.record(i)
                let batch = current.batch
                batch.records[batch.filled] = record
                if batch.refusal == nil, let code = record.status.refusal {
                    batch.refusal = (batch.filled, head &+ UInt32(i), code)
                }
                batch.filled += 1
                segment = current.count > 1 ? Segment(batch: batch, count: current.count - 1) : nil
                if batch.filled == batch.records.count {
                    if let refusal = batch.refusal {
                        batch.refusalText = s.refusalTexts.removeValue(forKey: refusal.entry)
                        if batch.refusalText == nil {
                            awaitingText.append(batch)
                            continue
                        }
                    }
                    finished.append(batch)
                }
            }
            if n > 0 {
                memory.consume(n)
                s.outstanding -= n
                moved = true
                let free = memory.depth - s.outstanding
                if !s.reservations.isEmpty, free >= 0 {
                    s.reservations.removeAll { r in
                        guard r.credits <= free else { return false }
                        r.resume.resume(returning: .success(free))
                        return true
                    }
                }
            }
            // Room may have freed: waiting descriptors go in, in order.
            var pushedAny = false
            while !s.backlog.isEmpty {
                let w = s.backlog[s.backlog.startIndex]
                var next = w.next
                while next < w.descriptors.count && memory.push(w.descriptors[next]) { next += 1 }
                if next > w.next {
                    s.inflight.append(Segment(batch: w.batch, count: next - w.next))
                    pushedAny = true
                }
                if next < w.descriptors.count {
                    s.backlog[s.backlog.startIndex].next = next
                    break
                }
                s.backlog.removeFirst()
            }
            if pushedAny {
                try? memory.submit()
                moved = true
            }
        }
        for batch in finished { batch.finish() }
        finished.removeAll(keepingCapacity: true)
        return moved
    }

    /// Waits until the queue has `credits` free (ioat(4) `ioat_acquire_reserve`, SPEC.md §5.8), counted here:
    /// a ring queue's credits are the records its client has reaped. The same refusals as RESERVE.
    func reserve(credits: Int, noWait: Bool) async throws(IOATError) -> Int {
        guard credits >= 1, credits <= memory.depth else {
            throw .refused(ProtocolError(.badCount, "RESERVE of \(credits) credits on ring queue \(memory.ring.pointee.queue) of depth \(memory.depth)"))
        }
        let result: Result<Int, IOATError> = await withCheckedContinuation { c in
            shared.withLock { s in
                if let lost = s.lost { return c.resume(returning: .failure(lost)) }
                let free = memory.depth - s.outstanding
                if free >= credits { return c.resume(returning: .success(free)) }
                if noWait {
                    return c.resume(returning: .failure(.refused(ProtocolError(.noSpace, "ring queue \(memory.ring.pointee.queue) has \(free) free credits; RESERVE asked for \(credits) (NO_WAIT)"))))
                }
                s.reservations.append((credits, c))
            }
        }
        return try result.get()
    }

    /// Fails every batch in flight or waiting (the connection is gone).
    func fail(_ error: IOATError) {
        let batches: [RingBatch] = shared.withLock { s in
            s.lost = s.lost ?? error
            for r in s.reservations { r.resume.resume(returning: .failure(error)) }
            s.reservations.removeAll()
            var all = s.inflight.map(\.batch) + s.backlog.map(\.batch)
            s.inflight.removeAll()
            s.backlog.removeAll()
            // A batch split over several segments appears more than once.
            var seen = Set<ObjectIdentifier>()
            all.removeAll { !seen.insert(ObjectIdentifier($0)).inserted }
            return all
        }
        for batch in batches { batch.end(.failure(error)) }
    }

    /// Fails every waiting batch if the server broke the ring (reader thread).
    func failIfBroken() {
        guard let code = memory.brokenCode else { return }
        fail(.refused(ProtocolError(code, "ring queue \(memory.ring.pointee.queue) was broken by the server (\(code.name))")))
    }
}
