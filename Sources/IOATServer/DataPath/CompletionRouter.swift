import IOATProtocol
import IOATSystem

/// A queue's credits (SPEC.md §5.8): ops accepted whose records have not been delivered. Only the
/// completion router writes them (`take`, `delivered`, `orphaned`): taken when ops are admitted, given
/// back when their records are written to the socket or consumed from the ring, or when they never will
/// be (the connection went, the ring broke).
struct Credits {
    let depth: Int
    fileprivate(set) var used = 0
    var free: Int { depth - used }
}

/// A queue's records on their way out, and the router's marks on it: only the router writes them.
struct DeliveryState {
    /// Completed ops whose records wait for a flush point (SPEC.md §6.4).
    fileprivate(set) var undelivered: [CompletionRecord]
    /// Whether the queue is in the router's flush list, and whether that flush sends every held record
    /// (a flush point) or only whole messages (the held records filled one).
    fileprivate(set) var needsFlush = false
    fileprivate(set) var flushAll = false
    /// When held records must go out (monotonic ns), or 0 when no flush point is waiting.
    fileprivate(set) var flushDeadline: UInt64 = 0

    init(capacity: Int) {
        undelivered = []
        undelivered.reserveCapacity(capacity)
    }
}

/// Takes finished ops from the channels and delivers their records (SPEC.md §6.4): holds a queue's
/// records until a flush point (INT_EN, a failure, the queue going idle, or a full message), applies the
/// queue's coalescing period, and writes COMPLETION messages to the owning connection. It owns the
/// flush list, the coalescing list and every queue's credits.
/// Runs on the event-loop thread only; allocates nothing per op in steady state.
final class CompletionRouter {
    /// Most records in one COMPLETION message.
    let maxRecordsPerMessage: Int
    /// Queues with records to send, gathered while reaping.
    private var flushList: [Queue] = []
    /// Queues holding records until their coalescing deadline.
    private var coalescing: [Queue] = []
    /// Rings with records written that the next `flush` makes visible (and wakes their clients for).
    private var ringsToPublish: [ServerRing] = []
    /// Rings whose doorbell waits for its coalescing deadline.
    private var coalescingRings: [ServerRing] = []
    /// Connections written to by the last `flush`, for the loop to update what epoll watches.
    private(set) var touched: [Connection] = []
    /// Connections whose socket failed during the last `flush`, with the error, for the loop to close.
    private(set) var failed: [(Connection, SystemError)] = []

    init(maxRecordsPerMessage: Int) {
        self.maxRecordsPerMessage = max(1, maxRecordsPerMessage)
        flushList.reserveCapacity(64)
        touched.reserveCapacity(64)
    }

    /// Takes `count` credits of `queue` for ops being admitted (the caller checked they are free).
    func take(_ count: Int, of queue: Queue) {
        precondition(count <= queue.credits.free, "queue \(queue.id): \(count) credits taken with \(queue.credits.free) free")
        queue.credits.used += count
    }

    /// Gives back the credits of `count` records delivered: written to the socket, or consumed by the
    /// client from the ring.
    func delivered(_ count: Int, of queue: Queue) {
        precondition(count <= queue.credits.used, "queue \(queue.id): \(count) records delivered with \(queue.credits.used) outstanding")
        queue.credits.used -= count
    }

    /// Gives back the credits of `count` ops whose records will never be delivered.
    func orphaned(_ count: Int, of queue: Queue) { delivered(count, of: queue) }

    /// The queue's connection closed: the records it held go nowhere, and their credits come back.
    func dropHeld(of queue: Queue) {
        orphaned(queue.delivery.undelivered.count, of: queue)
        queue.delivery.undelivered.removeAll()
        queue.delivery.needsFlush = false
        queue.delivery.flushAll = false
        queue.delivery.flushDeadline = 0
    }

    /// Routes finished ops: statistics, then each record to its queue, marking flush points. Consecutive
    /// ops of one queue (the usual case: a batch) are routed as a run, so the queue's tenant, connection
    /// and ring are looked up once per run; each look takes and drops a reference count, which per op
    /// was the router's largest cost. A record of a queue whose connection is gone returns its credit
    /// and goes nowhere.
    func route(_ finished: [Finished], now: UInt64) {
        var start = 0
        while start < finished.count {
            let reference = finished[start].queueReference
            var end = start + 1
            while end < finished.count && finished[end].queueReference.toOpaque() == reference.toOpaque() { end += 1 }
            let queue = reference.takeUnretainedValue()
            route(finished, start..<end, of: queue, now: now)
            start = end
        }
    }

    private func route(_ finished: [Finished], _ run: Range<Int>, of queue: Queue, now: UInt64) {
        let open = queue.connection != nil
        let ring = open ? queue.ring : nil
        // The tenant's statistics go in once per stretch of ops taken and started at the same instants
        // (most of a batch): two histogram records per op were a fifth of the router's time.
        var stretch = CompletedStretch()
        defer { endRun(stretch, of: queue, now: now) }
        for i in run {
            let record = finished[i].record
            let status = record.status
            let failed = status.isFailure
            let acceptedAt = finished[i].acceptedAt, startedAt = finished[i].startedAt
            if !stretch.admits(acceptedAt: acceptedAt, startedAt: startedAt) {
                endRun(stretch, of: queue, now: now)
                stretch = CompletedStretch()
            }
            stretch.add(bytes: record.bytesDone, failed: failed, acceptedAt: acceptedAt, startedAt: startedAt)
            guard open else {
                orphaned(1, of: queue)
                continue
            }
            if let ring {
                push(record, failed: failed, of: queue, into: ring)
                continue
            }
            queue.delivery.undelivered.append(record)
            if !status.isSuccess {
                mark(queue, all: true)
            } else if finished[i].notify || queue.isIdle {
                if queue.coalesceNanoseconds == 0 {
                    mark(queue, all: true)
                } else if queue.delivery.flushDeadline == 0 {
                    // ioat(4) interrupt coalescing: wait up to the period for more records to share the message.
                    queue.delivery.flushDeadline = now + queue.coalesceNanoseconds
                    coalescing.append(queue)
                }
            } else if queue.delivery.undelivered.count >= maxRecordsPerMessage {
                mark(queue, all: false)
            }
        }
    }

    /// A ring queue's record goes straight into its completion ring, visible at the next `flush`; its
    /// credit returns when the client consumes it. A broken ring takes no more records: the credit
    /// returns now.
    @inline(__always)
    private func push(_ record: CompletionRecord, failed: Bool, of queue: Queue, into ring: ServerRing) {
        guard ring.broken == nil, ring.consumer.push(record) else {
            orphaned(1, of: queue)
            return
        }
        if failed { ring.failedSincePublish = true }
        if !ring.needsPublish {
            ring.needsPublish = true
            ringsToPublish.append(ring)
        }
    }

    /// Routes the record of an op of ring queue `queue` that its channel ran at once (`Channel.runNow`),
    /// taken and started at `acceptedAt`: into the ring, as `route` does, with the statistics gathered
    /// in `stretch` for `endRun`. The ring's records are in order: the op ran with nothing of its queue
    /// pending or in the engine, and nothing finished unrouted (`Channel.runsNow`).
    @inline(__always)
    func routeNow(_ record: CompletionRecord, of queue: Queue, ring: ServerRing, acceptedAt: UInt64, stretch: inout CompletedStretch) {
        let failed = record.status.isFailure
        stretch.add(bytes: record.bytesDone, failed: failed, acceptedAt: acceptedAt, startedAt: acceptedAt)
        push(record, failed: failed, of: queue, into: ring)
    }

    /// The statistics of a stretch of `queue`'s records (routed by `route`, or by `routeNow` for a
    /// run), completed at `now`: the queue's counters and its tenant's, once for the stretch.
    func endRun(_ stretch: CompletedStretch, of queue: Queue, now: UInt64) {
        guard stretch.count > 0 else { return }
        queue.opsCompleted += UInt64(stretch.count)
        queue.bytesCompleted += stretch.bytes
        queue.opsFailed += UInt64(stretch.failed)
        queue.tenant.completed(stretch, now: now)
    }

    /// Marks `queue` for the next `flush`: all its records (a flush point), or only whole messages.
    private func mark(_ queue: Queue, all: Bool) {
        if all { queue.delivery.flushAll = true }
        if !queue.delivery.needsFlush {
            queue.delivery.needsFlush = true
            flushList.append(queue)
        }
    }

    /// Moves queues whose coalescing deadline has passed to the flush list; returns the milliseconds until
    /// the next deadline (-1 when none).
    func expireCoalesced(now: UInt64) -> Int32 {
        guard !coalescing.isEmpty || !coalescingRings.isEmpty else { return -1 }
        var next = UInt64.max
        coalescingRings.removeAll { ring in
            if ring.wakeDeadline == 0 || ring.ringIfDue(now: now) { return true }
            next = min(next, ring.wakeDeadline)
            return false
        }
        coalescing.removeAll { queue in
            if queue.delivery.flushDeadline == 0 || queue.connection == nil { return true }
            if queue.delivery.flushDeadline <= now {
                mark(queue, all: true)
                return true
            }
            next = min(next, queue.delivery.flushDeadline)
            return false
        }
        return next == .max ? -1 : Int32(clamping: (next - now + 999_999) / 1_000_000)
    }

    /// Sends the records of every marked queue. Afterwards `touched` and `failed` say which connections
    /// were written to and which failed. `now` is the time the records were routed at (0: not read yet).
    func flush(now routedAt: UInt64 = 0) {
        // (Emptied only when not empty: each call costs a trip through the array's general path, twice
        // per batch of ring ops, which have no messages to send.)
        if !touched.isEmpty { touched.removeAll(keepingCapacity: true) }
        if !failed.isEmpty { failed.removeAll(keepingCapacity: true) }
        if !flushList.isEmpty {
            for queue in flushList { send(queue) }
            flushList.removeAll(keepingCapacity: true)
        }
        if !ringsToPublish.isEmpty {
            let now = routedAt != 0 ? routedAt : Clock.nanoseconds()
            for ring in ringsToPublish {
                if ring.publish(coalesceNanoseconds: ring.queue?.coalesceNanoseconds ?? 0, now: now) { coalescingRings.append(ring) }
            }
            ringsToPublish.removeAll(keepingCapacity: true)
        }
    }

    /// Sends a queue's held records as COMPLETION messages: all of them at a flush point, else only the
    /// messages they fill (the rest wait for the next flush point, SPEC.md §6.4).
    private func send(_ queue: Queue) {
        let all = queue.delivery.flushAll
        queue.delivery.needsFlush = false
        queue.delivery.flushAll = false
        if all { queue.delivery.flushDeadline = 0 }
        guard let connection = queue.connection, !connection.isClosed, !queue.delivery.undelivered.isEmpty else { return }
        let total = all ? queue.delivery.undelivered.count : queue.delivery.undelivered.count / maxRecordsPerMessage * maxRecordsPerMessage
        var start = 0
        while start < total {
            let count = min(maxRecordsPerMessage, total - start)
            connection.scratch.bytes.removeAll(keepingCapacity: true)
            let length = Wire.headerSize + 8 + count * CompletionRecord.size
            MessageHeader(version: connection.version, type: .completion, length: UInt32(length), requestID: 0)
                .encode(into: &connection.scratch)
            connection.scratch.write(queue.id)
            connection.scratch.write(UInt32(count))
            for i in start..<start + count { queue.delivery.undelivered[i].encode(into: &connection.scratch) }
            let result = connection.scratch.bytes.withUnsafeBytes { connection.send($0, queue: queue, records: count) }
            switch result {
            case .sent: delivered(count, of: queue)
            case .queued: break
            case .failed(let error):
                failed.append((connection, error))
                return
            }
            start += count
        }
        if total == queue.delivery.undelivered.count {
            queue.delivery.undelivered.removeAll(keepingCapacity: true)
        } else {
            queue.delivery.undelivered.removeFirst(total)
        }
        touched.append(connection)
    }
}
