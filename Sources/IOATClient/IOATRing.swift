import Glibc
import IOATProtocol
import IOATSystem

/// A ring queue driven directly by one thread of the caller (SPEC.md §5.10): push descriptors, submit,
/// wait, reap. Nothing here allocates, locks or makes a system call unless the server sleeps (then
/// `submit` rings its doorbell once) or the caller sleeps in `wait`. Records come back in submission
/// order with each descriptor's own cookie; a descriptor the server refused comes back as a record whose
/// status is `.refused(code)` and the queue goes on.
///
/// Not thread-safe: one thread at a time pushes, submits, waits and reaps (as with liburing's `io_uring`);
/// it may be handed to another thread. For many threads, callbacks or async use, `IOATQueue` does the
/// same over the same rings.
public final class IOATRing: @unchecked Sendable {
    /// The server's id for the queue.
    public let id: UInt32
    /// The channel it runs on.
    public let channel: UInt32
    /// Most ops outstanding (taken by the server and not yet reaped).
    public let depth: Int
    let memory: RingMemory
    let session: Session

    init(session: Session, queue: OpenReply, memory: RingMemory) {
        self.session = session
        self.memory = memory
        id = queue.queue
        channel = queue.channel
        depth = Int(queue.depth)
    }

    /// Free submission slots.
    public var space: Int { memory.space }
    /// Submission slots in all.
    public var entries: Int { memory.submissionEntries }

    /// Writes `descriptor` into the next free slot; false when the ring is full (reap first). The server
    /// sees it at the next `submit()`.
    public func push(_ descriptor: Descriptor) -> Bool { memory.push(descriptor) }

    /// Writes 64 raw bytes as a descriptor, unchecked (for testing the server's checks).
    public func push(raw bytes: UnsafeRawBufferPointer) -> Bool { memory.push(raw: bytes) }

    /// Publishes every pushed descriptor; rings the server's doorbell only if it is asleep.
    public func submit() throws(IOATError) {
        if let code = memory.brokenCode { throw .refused(ProtocolError(code, "ring queue \(id) was broken by the server (\(code.name))")) }
        try memory.submit()
    }

    /// Records ready to reap.
    public var ready: Int { memory.ready }

    /// Calls `body` with up to `limit` ready records, in submission order, then hands their slots back.
    /// Returns how many were reaped.
    @discardableResult
    public func reap(limit: Int = .max, _ body: (CompletionRecord) throws -> Void) rethrows -> Int {
        let n = min(limit, memory.ready)
        guard n > 0 else { return 0 }
        for i in 0..<n { try body(memory.record(i)) }
        memory.consume(n)
        return n
    }

    /// Waits until at least `count` records are ready, spinning for `spinMicroseconds` (PAUSE between
    /// looks, the CPU given up now and then), then sleeping on the doorbell. Returns the records ready. Throws when the ring was
    /// broken or the connection lost, or `timedOut` after `timeoutMilliseconds` (-1: no limit; nil: the
    /// client's bound on waiting for the server, `IOATClient.Timeouts.call`).
    @discardableResult
    public func wait(for count: Int = 1, spinMicroseconds: Int = 50, timeoutMilliseconds: Int? = nil) throws(IOATError) -> Int {
        let want = max(1, count)
        if memory.ready >= want { return memory.ready }
        let timeoutMilliseconds = timeoutMilliseconds ?? session.callTimeout.map { Int($0.milliseconds) } ?? -1
        let start = Clock.nanoseconds()
        let spin = UInt64(max(0, spinMicroseconds)) * 1000
        // A look is a load and a PAUSE; the clock is read every 16 looks (a clock read per look was most
        // of a busy client's time), and the CPU offered to other threads every 64, as before.
        var looks = 0
        while looks & 15 != 0 || Clock.nanoseconds(since: start) < spin {
            if memory.ready >= want { return memory.ready }
            looks &+= 1
            if looks & 63 == 0 { Clock.yield() } else { Clock.relax() }
        }
        while true {
            if let code = memory.brokenCode {
                throw .refused(ProtocolError(code, "ring queue \(id) was broken by the server (\(code.name))"))
            }
            if session.isLost { throw .connectionLost("the connection of ring queue \(id) is gone") }
            var slice: Int32 = 100  // look at the connection's state at least this often (ms)
            if timeoutMilliseconds >= 0 {
                let left = timeoutMilliseconds - Int(Clock.nanoseconds(since: start) / 1_000_000)
                if left <= 0 {
                    throw .timedOut("ring queue \(id): \(memory.ready) of \(want) records from the server at \(session.path) after \(timeoutMilliseconds) ms; \(Session.journalHint)")
                }
                slice = Int32(min(Int(slice), left))
            }
            if memory.arm(want) {
                var fd = pollfd(fd: memory.doorbell.rawValue, events: Int16(POLLIN), revents: 0)
                _ = poll(&fd, 1, slice)
            }
            memory.disarm()
            if memory.ready >= want { return memory.ready }
        }
    }

    /// The descriptor to put in the caller's own epoll/poll: readable when the server rang (after `arm`).
    public var doorbell: Int32 { memory.doorbell.rawValue }

    /// Asks the server to ring `doorbell` once `count` records are ready; false when they already are
    /// (then do not sleep). Call `disarm()` after waking.
    public func arm(for count: Int = 1) -> Bool { memory.arm(count) }

    /// After waking: stops the server from ringing and empties the doorbell.
    public func disarm() { memory.disarm() }

    /// The code the server broke the ring with (SPEC.md §5.10.5), or nil while it works: from the
    /// server's ERROR when it came, else from the ring's error word.
    public var brokenCode: ErrorCode? { session.ringBroken(queue: id)?.code ?? memory.brokenCode }

    /// The server's ERROR that broke the ring, naming the bad value, once it arrived.
    public var brokenError: ProtocolError? { session.ringBroken(queue: id) }

    /// The ring's whole shared memory, for tools that test the server's checks (`ioatctl scribble`):
    /// writing into it breaks the ring's rules at will.
    public var unsafeMemory: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: memory.mapping.unsafeBase, count: memory.mapping.count)
    }

    /// Closes the queue; BUSY while records are not reaped or ops are in flight.
    public func close() async throws(IOATError) {
        try await session.closeQueue(id)
    }
}
