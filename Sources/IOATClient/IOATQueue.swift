import IOATProtocol

/// A queue on one channel: ops submitted to it run in order, at most `depth` at a time. It belongs to the
/// connection that opened it; after that connection is lost every call fails with `connectionLost`.
public final class IOATQueue: Sendable {
    /// The server's id for it.
    public let id: UInt32
    /// The channel it runs on.
    public let channel: UInt32
    /// Most ops in flight.
    public let depth: Int
    let session: Session
    /// The ring this queue runs over, or nil when it uses SUBMIT and COMPLETION messages.
    let feeder: RingFeeder?

    /// Whether the queue runs over a shared-memory ring (SPEC.md §5.10).
    public var isRing: Bool { feeder != nil }

    init(session: Session, reply: OpenReply, feeder: RingFeeder? = nil) {
        self.session = session
        self.feeder = feeder
        id = reply.queue
        channel = reply.channel
        depth = Int(reply.depth)
    }

    /// Submits a batch and waits for every op in it. The last descriptor of each SUBMIT gets INT_EN so the
    /// records arrive as soon as it completes; the records come back in the batch's order, with the
    /// descriptors' own cookies. A refusal (bad handle, out of range…) fails the call and runs none of
    /// that SUBMIT's ops.
    public func submit(_ descriptors: [Descriptor]) async throws(IOATError) -> [CompletionRecord] {
        guard let feeder else { return try await session.submit(queue: id, descriptors, chunk: min(depth, Int(session.server.maxDescriptors))) }
        let result: IOATClient.BatchResult = await withCheckedContinuation { c in
            feeder.submit(descriptors, deadline: session.batchDeadline()) { c.resume(returning: $0) }
        }
        return try result.get()
    }

    /// Submits a batch and returns at once; `onComplete` runs once, on the client's reader thread, with
    /// every record (in order, with the descriptors' cookies) or the error that refused the batch.
    /// It must not block; it may submit more work (sends never block).
    public func submit(_ descriptors: [Descriptor], onComplete: @escaping @Sendable (IOATClient.BatchResult) -> Void) {
        if let feeder { return feeder.submit(descriptors, deadline: session.batchDeadline(), complete: onComplete) }
        session.submit(queue: id, descriptors, chunk: min(depth, Int(session.server.maxDescriptors)), complete: onComplete)
    }

    /// Submits one descriptor and waits for it.
    public func submit(_ descriptor: Descriptor) async throws(IOATError) -> CompletionRecord {
        try await submit([descriptor])[0]
    }

    /// Refuses buffers of another connection: their handles would name nothing, or another buffer, here.
    private func check(_ buffers: IOATBuffer...) throws(IOATError) {
        for b in buffers where !b.isUsable(on: self) {
            throw .connectionLost("buffer \(b.handle) belongs to an earlier connection; allocate or register it again")
        }
    }

    /// Copies `length` bytes.
    public func copy(from source: IOATBuffer, at sourceOffset: Int = 0, to destination: IOATBuffer,
                     at destinationOffset: Int = 0, length: Int) async throws(IOATError) -> CompletionRecord {
        try check(source, destination)
        return try await submit(.copy(from: source.address(sourceOffset), to: destination.address(destinationOffset),
                               length: UInt64(length)))
    }

    /// Fills `length` bytes with a repeating 64-bit pattern.
    public func fill(_ destination: IOATBuffer, at offset: Int = 0, length: Int, pattern: UInt64) async throws(IOATError)
        -> CompletionRecord
    {
        try check(destination)
        return try await submit(.fill(destination.address(offset), length: UInt64(length), pattern: pattern))
    }

    /// The CRC32C of `length` bytes (optionally continuing from `seed`).
    public func crc32c(of source: IOATBuffer, at offset: Int = 0, length: Int, seed: UInt32? = nil) async throws(IOATError) -> UInt32 {
        try check(source)
        let record = try await submit(.crc32c(of: source.address(offset), length: UInt64(length), seed: seed))
        guard record.status == .success else {
            throw .invalidReply("CRC32C completed with \(record.status.name)")
        }
        return record.result
    }

    /// Waits until the queue has room for `credits` more ops (ioat(4) `ioat_acquire_reserve`) and returns
    /// its free credits. Only this connection uses the queue, so the room stays until it submits. With
    /// `noWait`, fails at once with NO_SPACE instead of waiting.
    @discardableResult
    public func reserve(credits: Int, noWait: Bool = false) async throws(IOATError) -> Int {
        if let feeder { return try await feeder.reserve(credits: credits, noWait: noWait) }
        return try await session.reserve(queue: id, credits: credits, noWait: noWait)
    }

    /// Holds the queue's completion records for up to `microseconds` after a flush point (ioat(4)
    /// `ioat_set_interrupt_coalesce`), so records of ops finishing close together share one message.
    /// 0 turns it off; above the channel's `maxCoalesceMicroseconds` is BAD_PERIOD.
    public func setCoalescing(microseconds: Int) async throws(IOATError) {
        try await session.setCoalescing(queue: id, microseconds: microseconds)
    }

    /// Closes the queue; refused with BUSY while ops are outstanding.
    public func close() async throws(IOATError) {
        try await session.closeQueue(id)
        if let feeder { session.forget(feeder) }
    }
}
