import Glibc
import IOATProtocol
import IOATSystem

/// One ring queue's shared memory and doorbell, on the server's side (SPEC.md §5.10). The queue it
/// belongs to is an ordinary queue after ingress: the same validator, scheduler, channel and router.
/// Lives on the event-loop thread only.
final class ServerRing {
    /// The memory shared with the client, mapped here for as long as the ring exists.
    let mapping: Mapping
    /// The server's end of the doorbell: readable when the client rang; written to wake the client.
    let doorbell: FileDescriptor
    var consumer: RingConsumer
    /// The epoll token of the doorbell.
    let token: UInt64
    /// The queue fed by this ring; nil once closed (`dropRing` breaks the cycle with `Queue.ring`). Not
    /// weak: a weak reference gives the queue a side table, which puts every retain and release of it
    /// (several per op) on the runtime's slow path.
    var queue: Queue?
    /// Set when the client broke the ring's rules: no more descriptors are taken, no more records written.
    private(set) var broken: ProtocolError? = nil
    /// Whether NEED_WAKEUP is set in sq_flags now.
    var sleeping = false
    /// Whether the router wrote records that `publish` has not made visible yet.
    var needsPublish = false

    /// Makes ring memory for `queue` (a sealed memfd: it can neither shrink nor grow) and a doorbell.
    /// Returns the ring and the two descriptors that go to the client: the memfd and its doorbell end.
    static func make(queue: Queue, token: UInt64) throws(SystemError) -> (ServerRing, memfd: FileDescriptor, doorbell: FileDescriptor) {
        let layout = RingLayout(queue: queue.id, depth: UInt32(queue.depth))
        let memfd = try Memfd.create(name: "ioatd-ring-\(queue.id)", size: UInt64(layout.size), hugepages: false)
        try Memfd.addSeals([.shrink, .grow, .seal], to: memfd)
        let mapping = try Mapping(fd: memfd, length: layout.size, writable: true, populate: true)
        layout.writeHeader(to: mapping.unsafeBase)
        let (mine, theirs) = try UnixSocket.doorbellPair()
        try mine.setNonBlocking(true)
        let ring = ServerRing(mapping: mapping, doorbell: mine, layout: layout, token: token)
        ring.queue = queue
        return (ring, memfd, theirs)
    }

    /// Takes over the ring memory and doorbell a previous instance stored (SPEC.md §5.11). The memory is
    /// checked as on first contact: a memfd of exactly the size the queue's depth makes. Its header is the
    /// server's and is written again, whatever the client did to it; its indices are read by `resume`.
    static func adopt(queue: Queue, token: UInt64, memfd: FileDescriptor, doorbell: FileDescriptor) throws(SystemError) -> ServerRing {
        let layout = RingLayout(queue: queue.id, depth: UInt32(queue.depth))
        let size = try memfd.size()
        guard Memfd.isMemfd(memfd), size == UInt64(layout.size) else {
            throw SystemError("the ring memory of queue \(queue.id) is \(size) bytes; a queue of depth \(queue.depth) has \(layout.size)", errno: EINVAL)
        }
        let mapping = try Mapping(fd: memfd, length: layout.size, writable: true, populate: true)
        layout.writeHeader(to: mapping.unsafeBase)
        try doorbell.setNonBlocking(true)
        let ring = ServerRing(mapping: mapping, doorbell: doorbell, layout: layout, token: token)
        ring.queue = queue
        return ring
    }

    /// Picks the ring up where the previous instance left it: its indices as they are in the memory,
    /// checked, and a RESTARTED record, in order, for each op it took and never recorded (made visible
    /// by the caller's publish, once the connection is in place). Returns the
    /// credits in use (records not consumed, those included) and the ops recorded RESTARTED. A ring the
    /// previous instance broke stays broken.
    func resume() throws(ProtocolError) -> (outstanding: Int, inFlight: Int) {
        if let code = consumer.brokenCode {
            markBroken(ProtocolError(code, "ring queue \(consumer.layout.queue) was broken before the restart (\(code.name))"))
            return (0, 0)
        }
        let inFlight = try consumer.resume()
        for _ in 0..<inFlight {
            consumer.push(CompletionRecord(cookie: 0, status: .restarted, opcode: 0, result: 0, bytesDone: 0))
        }
        return (consumer.unconsumed, inFlight)
    }

    private init(mapping: Mapping, doorbell: FileDescriptor, layout: RingLayout, token: UInt64) {
        self.mapping = mapping
        self.doorbell = doorbell
        self.token = token
        consumer = RingConsumer(layout: layout, base: mapping.unsafeBase)
    }

    /// Breaks the ring: the code goes into the ring's error word; the caller sends the ERROR.
    func markBroken(_ error: ProtocolError) {
        guard broken == nil else { return }
        broken = error
        consumer.markBroken(error.code)
    }

    /// Whether a record other than SUCCESS was written since the last publish.
    var failedSincePublish = false
    /// When a coalesced ring of the doorbell is due (monotonic ns), or 0.
    var wakeDeadline: UInt64 = 0

    /// Makes the records written so far visible and wakes the client if it asked: at once, or, with a
    /// coalescing period (SET_COALESCE), up to that period after the first record it asked for, unless
    /// a failure came (SPEC.md §5.9). Returns true when a coalesced ring is now due later.
    func publish(coalesceNanoseconds: UInt64, now: UInt64) -> Bool {
        needsPublish = false
        let failed = failedSincePublish
        failedSincePublish = false
        guard consumer.publish() || wakeDeadline != 0 else { return false }
        if coalesceNanoseconds == 0 || failed {
            wakeDeadline = 0
            UnixSocket.ring(doorbell)
            return false
        }
        guard wakeDeadline == 0 else { return false }
        wakeDeadline = now + coalesceNanoseconds
        return true
    }

    /// Rings a coalesced wake-up whose time has come.
    func ringIfDue(now: UInt64) -> Bool {
        guard wakeDeadline != 0, wakeDeadline <= now else { return false }
        wakeDeadline = 0
        UnixSocket.ring(doorbell)
        return true
    }
}
