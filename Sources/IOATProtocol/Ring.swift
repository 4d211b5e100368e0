import CIOATRing

/// Where everything lives in a ring queue's memory (SPEC.md §5.10.1). The header names each field's
/// offset, so a later layout can move them; this server writes layout 1: each index on a cache line of
/// its own writer (server-written submission head and flags, client-written submission tail,
/// server-written completion tail and error, client-written completion head, event and flags), the
/// submission ring at 512 and the completion ring right after it.
public struct RingLayout: Hashable, Sendable {
    public static let magic: UInt32 = 0x474E_4952
    public static let layoutVersion: UInt16 = 1
    public static let headerSize = 128
    public static let submissionHead = 128, submissionFlags = 132, submissionTail = 192
    public static let completionTail = 256, error = 260
    public static let completionHead = 320, completionEvent = 324, completionFlags = 328
    public static let submissionEntries = 512
    /// The server sets it in `sq_flags` before it sleeps; the client then rings the doorbell.
    public static let submissionNeedWakeup: UInt32 = 1
    /// The client sets it in `cq_flags` before it sleeps; the server then rings once `cq_event` is passed.
    public static let completionNeedWakeup: UInt32 = 1

    public let queue: UInt32
    /// Ops outstanding at once: the queue's depth (credits).
    public let depth: UInt32
    public let submissionCount: UInt32
    public let completionCount: UInt32

    /// The layout for a queue of `depth` (1…2^20): both rings hold the next power of two at or above the
    /// depth, at least 8, so every outstanding op always has a completion slot.
    public init(queue: UInt32, depth: UInt32) {
        self.queue = queue
        self.depth = max(1, min(depth, 1 << 20))
        let entries = max(8, UInt32(1) << UInt32(32 - (self.depth - 1).leadingZeroBitCount))
        submissionCount = entries
        completionCount = entries
    }

    /// Byte offset of the completion ring.
    @inlinable public var completionEntries: Int { Self.submissionEntries + Int(submissionCount) * Descriptor.size }
    /// Bytes of the whole mapping (whole 4 KiB pages).
    public var size: Int { (completionEntries + Int(completionCount) * CompletionRecord.size + 4095) & ~4095 }

    /// Writes the header into fresh (zeroed) ring memory.
    public func writeHeader(to base: UnsafeMutableRawPointer) {
        func put<T: FixedWidthInteger>(_ value: T, _ offset: Int) {
            base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
        }
        put(Self.magic, 0)
        put(Self.layoutVersion, 4)
        put(UInt16(Self.headerSize), 6)
        put(queue, 8)
        put(depth, 12)
        put(submissionCount, 16)
        put(completionCount, 20)
        put(UInt64(size), 24)
        let offsets = [Self.submissionHead, Self.submissionTail, Self.submissionFlags, Self.submissionEntries,
                       Self.completionHead, Self.completionTail, Self.completionEvent, Self.completionFlags,
                       completionEntries, Self.error]
        for (i, offset) in offsets.enumerated() { put(UInt32(offset), 32 + 4 * i) }
    }
}

/// The server's side of one ring queue's memory. The client shares every byte of it and may write any
/// of them at any time, so this reads only what the client owns (submission tail, completion head, its
/// wake-up request, the descriptors), each once, and keeps its own copy of everything it writes (it
/// never reads back a head or tail of its own). Indices that claim more than the ring holds break the
/// queue (`RING_BROKEN`); descriptors are copied out once before anything looks at them.
/// No syscalls: the caller rings doorbells and validates descriptors.
public struct RingConsumer {
    public let layout: RingLayout
    @usableFromInline let base: UnsafeMutableRawPointer
    /// Next submission slot to take, and the next completion slot to write.
    public private(set) var submissionHead: UInt32 = 0
    public var completionTail: UInt32 { tail }
    /// The completion head last read from the client, checked.
    public var completionHead: UInt32 { head }
    /// (Stored apart from their public views so that `push`, inlined into the server's loop, can move
    /// them.)
    @usableFromInline var tail: UInt32 = 0
    @usableFromInline var head: UInt32 = 0
    /// The completion tail when the client was last woken or found awake (virtio's "old" index).
    private var lastWakeCheck: UInt32 = 0
    /// The completion tail last published to the client.
    private var published: UInt32 = 0

    /// Works on ring memory of `layout.size` bytes at `base`, whose header was written and whose
    /// indices are all zero.
    public init(layout: RingLayout, base: UnsafeMutableRawPointer) {
        self.layout = layout
        self.base = base
    }

    private func word(_ offset: Int) -> UnsafeMutablePointer<UInt32> {
        (base + offset).assumingMemoryBound(to: UInt32.self)
    }

    /// Records written and not yet read back as consumed.
    public var unconsumed: Int { Int(completionTail &- completionHead) }

    /// Reads the client's completion head (acquire: it has finished reading those records) and returns
    /// how many records it consumed since the last call. A head past the records written breaks the queue.
    public mutating func reclaim() throws(ProtocolError) -> Int {
        let head = ioatd_load_acquire(word(RingLayout.completionHead))
        let consumed = head &- completionHead
        guard consumed <= completionTail &- completionHead else {
            throw ProtocolError(.ringBroken, "queue \(layout.queue): cq_head \(head) is \(consumed) records past the last consumed (\(completionHead)), but only \(completionTail &- completionHead) were written")
        }
        self.head = head
        return Int(consumed)
    }

    /// Reads the client's submission tail (acquire: the descriptors before it are written) and returns
    /// how many descriptors wait. More than the ring holds breaks the queue.
    public func available() throws(ProtocolError) -> Int {
        let tail = ioatd_load_acquire(word(RingLayout.submissionTail))
        let waiting = tail &- submissionHead
        guard waiting <= layout.submissionCount else {
            throw ProtocolError(.ringBroken, "queue \(layout.queue): sq_tail \(tail) is \(waiting) entries ahead of sq_head \(submissionHead); the ring holds \(layout.submissionCount)")
        }
        return Int(waiting)
    }

    /// Copies the next `count` descriptors (at most `available()`) into `scratch` (count × 64 bytes), then
    /// hands their slots back (`handBack`). What is in `scratch` is all the server ever reads of them.
    public mutating func take(_ count: Int, into scratch: UnsafeMutableRawPointer) {
        copyOut(count, into: scratch)
        handBack(count)
    }

    /// Copies the next `count` descriptors (at most `available()`) into `scratch` without handing their
    /// slots back: the server reads what they name (XOR and COPY_SG lists) before `handBack`.
    public func copyOut(_ count: Int, into scratch: UnsafeMutableRawPointer) {
        let mask = Int(layout.submissionCount - 1)
        for i in 0..<count {
            let slot = (Int(submissionHead) + i) & mask
            (scratch + i * Descriptor.size).copyMemory(from: base + RingLayout.submissionEntries + slot * Descriptor.size,
                                                       byteCount: Descriptor.size)
        }
    }

    /// Hands the next `count` slots back to the client (release store of sq_head), once their copies and
    /// every list they name have been read: from then on the client may reuse the slots and the lists'
    /// memory (SPEC.md §5.10.2).
    public mutating func handBack(_ count: Int) {
        submissionHead &+= UInt32(count)
        ioatd_store_release(word(RingLayout.submissionHead), submissionHead)
    }

    /// Whether a completion slot is free (the client has consumed enough). The server's credit
    /// accounting keeps one free for every outstanding op; this is the check that it did.
    @inlinable public var hasCompletionSlot: Bool { tail &- head < layout.completionCount }

    /// Writes one record into the next completion slot; it becomes visible at `publish()`. Returns false
    /// (and writes nothing) when the client has not consumed the slot.
    @discardableResult @inlinable
    public mutating func push(_ record: CompletionRecord) -> Bool {
        guard hasCompletionSlot else { return false }
        let at = base + layout.completionEntries + Int(tail & (layout.completionCount - 1)) * CompletionRecord.size
        at.storeBytes(of: record.cookie.littleEndian, toByteOffset: 0, as: UInt64.self)
        at.storeBytes(of: record.status.rawValue.littleEndian, toByteOffset: 8, as: UInt16.self)
        at.storeBytes(of: record.opcode, toByteOffset: 10, as: UInt8.self)
        at.storeBytes(of: 0, toByteOffset: 11, as: UInt8.self)
        at.storeBytes(of: record.result.littleEndian, toByteOffset: 12, as: UInt32.self)
        at.storeBytes(of: record.bytesDone.littleEndian, toByteOffset: 16, as: UInt64.self)
        at.storeBytes(of: UInt64(0), toByteOffset: 24, as: UInt64.self)
        tail &+= 1
        return true
    }

    /// Makes the records pushed so far visible (release store of cq_tail), then, after a seq_cst fence,
    /// says whether the client asked to be woken for one of them (NEED_WAKEUP in cq_flags and cq_event
    /// passed, virtio's event-index test). Returns false when nothing new was pushed.
    public mutating func publish() -> Bool {
        guard completionTail != published else { return false }
        published = completionTail
        ioatd_store_release(word(RingLayout.completionTail), completionTail)
        ioatd_fence()
        let old = lastWakeCheck
        guard ioatd_load_relaxed(word(RingLayout.completionFlags)) & RingLayout.completionNeedWakeup != 0 else {
            lastWakeCheck = completionTail
            return false
        }
        let event = ioatd_load_relaxed(word(RingLayout.completionEvent))
        guard ioatd_ring_crossed(event, completionTail, old) != 0 else { return false }
        lastWakeCheck = completionTail
        return true
    }

    /// Sets or clears NEED_WAKEUP in sq_flags. Before sleeping the server sets it, fences, and looks at
    /// the ring again (`available`, `reclaim`): either it sees the client's new tail or the client sees
    /// the flag and rings.
    public func setNeedWakeup(_ on: Bool) {
        ioatd_store_relaxed(word(RingLayout.submissionFlags), on ? RingLayout.submissionNeedWakeup : 0)
        if on { ioatd_fence() }
    }

    /// The code in the ring's error word, if a server broke the ring (read when taking a ring over).
    public var brokenCode: ErrorCode? {
        let code = ioatd_load_acquire(word(RingLayout.error))
        return code == 0 ? nil : ErrorCode(rawValue: code)
    }

    /// Takes over ring memory another server instance used (a restart, SPEC.md §5.11): the server's
    /// indices are read back from the memory, once, and checked against the client's: at most `depth`
    /// ops outstanding, no more records than the ring holds. Returns how many ops the previous instance
    /// took and never recorded (sq_head − cq_tail): the caller records them. NEED_WAKEUP is cleared.
    public mutating func resume() throws(ProtocolError) -> Int {
        let head = ioatd_load_acquire(word(RingLayout.submissionHead))
        let tail = ioatd_load_acquire(word(RingLayout.completionTail))
        let consumed = ioatd_load_acquire(word(RingLayout.completionHead))
        let inFlight = head &- tail
        guard tail &- consumed <= layout.completionCount, inFlight <= layout.depth, head &- consumed <= layout.depth else {
            throw ProtocolError(.ringBroken, "queue \(layout.queue): after the restart sq_head \(head), cq_tail \(tail) and cq_head \(consumed) do not fit a queue of depth \(layout.depth)")
        }
        submissionHead = head
        self.tail = tail
        self.head = consumed
        published = tail
        lastWakeCheck = tail
        setNeedWakeup(false)
        return Int(inFlight)
    }

    /// Writes the code that broke the queue where the client can see it.
    public func markBroken(_ code: ErrorCode) {
        ioatd_store_release(word(RingLayout.error), code.rawValue)
    }
}
