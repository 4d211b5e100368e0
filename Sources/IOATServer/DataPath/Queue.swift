import IOATEngine
import IOATProtocol

/// One resolved range: where it starts in the server's mapping, and the buffer's slot in the
/// `BufferTable`, whose pin keeps that mapping in place while an op names it. Plain data: no reference.
struct Placement {
    var pointer: UnsafeMutableRawPointer
    var slot: UInt32

    init(_ buffer: OpenBuffer, offset: Int) {
        pointer = buffer.base + offset
        slot = buffer.slot
    }
}

/// A descriptor accepted into a queue: its resolved ranges, which name buffers by slot. Plain data that
/// either ingress copies or moves freely; the buffers stay mapped by the pins its admission took
/// (`BufferTable`), not by references.
struct PendingOp {
    var cookie: UInt64
    var opcode: Opcode
    var flags: Descriptor.Flags
    var source: Placement?
    var destination: Placement?
    /// DUALCAST second destination, or where a CRC STORE writes / TEST reads (inline or not).
    var auxiliary: Placement?
    /// XOR sources, copied from the client's list when the SUBMIT was validated.
    var sources: [Placement]?
    /// COPY_SG entries, copied likewise; their lengths add up to `length`.
    var segments: [(source: Placement, destination: Placement, length: Int)]?
    var length: Int
    var arg: UInt64
    /// Bytes already handed to the engine, when the op is split into pieces (SPEC.md §6.7).
    var dispatched = 0
    /// Server-wide acceptance order; identifies the op when a halted channel hands it back.
    var serial: UInt64 = 0
    /// Monotonic nanoseconds when the SUBMIT was accepted, and when the engine took its first piece.
    var acceptedAt: UInt64 = 0
    var startedAt: UInt64 = 0
    /// A ring descriptor the SUBMIT path would have refused: it runs nothing and completes in its turn
    /// with the refusal as its status (SPEC.md §5.10.4); `refusedOpcode` is its opcode byte as sent.
    var refusal: ErrorCode? = nil
    var refusedOpcode: UInt8 = 0

    /// Pins its admission takes: one per range it names (`BufferTable.pin`).
    var pinCount: Int {
        withUnsafePointer(to: self) { op in
            var n = 0
            op.forEachSlot { _ in n += 1 }
            return n
        }
    }

    /// The op standing for a refused ring descriptor.
    static func refused(_ code: ErrorCode, cookie: UInt64, opcode: UInt8) -> PendingOp {
        PendingOp(cookie: cookie, opcode: .null, flags: [], source: nil, destination: nil, auxiliary: nil, sources: nil,
                  segments: nil, length: 0, arg: 0, refusal: code, refusedOpcode: opcode)
    }
}

/// A COPY, FILL or NULL whose only flags are INTERRUPT, FENCE and NO_WAIT, as
/// `SubmitValidator.resolveCommon` resolves it: a third of a `PendingOp` and with no lists in it, so an op
/// that runs at once (`Channel.runNow`) is never made into one; `pending` is the op it becomes when it is
/// queued.
struct CommonOp {
    var cookie: UInt64
    var opcode: Opcode
    var flags: Descriptor.Flags
    var source: Placement?
    var destination: Placement?
    var length: Int
    var arg: UInt64

    var pending: PendingOp {
        PendingOp(cookie: cookie, opcode: opcode, flags: flags, source: source, destination: destination, auxiliary: nil,
                  sources: nil, segments: nil, length: length, arg: arg)
    }
}

extension UnsafePointer where Pointee == PendingOp {
    /// The buffer slot of every range the op names, in place (a copy of the op per call showed in the
    /// profile): what `BufferTable` pins and unpins for it.
    @inline(__always)
    func forEachSlot(_ body: (UInt32) -> Void) {
        if let p = pointee.source { body(p.slot) }
        if let p = pointee.destination { body(p.slot) }
        if let p = pointee.auxiliary { body(p.slot) }
        if pointee.sources != nil { for p in pointee.sources! { body(p.slot) } }
        if pointee.segments != nil { for e in pointee.segments! { body(e.source.slot); body(e.destination.slot) } }
    }
}

/// What the pieces of a split op have done so far; the last piece's completion turns it into one record.
struct SplitProgress {
    var bytesDone: UInt64 = 0
    /// The first piece status other than SUCCESS, with the absolute bytes_done it implies.
    var outcome: (status: CompletionStatus, bytesDone: UInt64)? = nil
}

/// One queue of one connection (SPEC.md §5.4): ops run in submission order on one channel, and at most
/// `depth` are outstanding — submitted and not yet delivered in a COMPLETION.
final class Queue {
    let id: UInt32
    let channel: Int
    let depth: Int
    /// The owning connection; cleared when it closes.
    var connection: Connection?
    /// The tenant's place on the channel (fair scheduling); its tenant gets the statistics.
    let lane: Lane
    var tenant: Tenant { lane.tenant }

    /// Ops accepted and waiting for the engine window.
    var pending: OpRing
    /// What its channel does with its ops (written by `Channel` only).
    var execution = QueueExecution()
    /// Its credits (SPEC.md §5.8): taken and given back by the completion router alone.
    var credits: Credits
    /// Ops accepted whose completion has not been delivered: the credits in use.
    var outstanding: Int { credits.used }
    /// Its records on their way out (written by the completion router only).
    var delivery: DeliveryState
    var undelivered: [CompletionRecord] { delivery.undelivered }
    /// Whether the queue is in its tenant's turn order on its channel (written by the channel only).
    var isScheduled: Bool { execution.isScheduled }
    /// The shared-memory ring feeding this queue and taking its records (version 3), or nil for a queue
    /// fed by SUBMIT.
    var ring: ServerRing?
    /// Coalescing period (SET_COALESCE), in nanoseconds; 0 sends records at each flush point.
    var coalesceNanoseconds: UInt64 = 0

    /// The queue's running CRC (SPEC.md §6.2 CRC_CHAIN), written by the engine as CRC ops complete.
    let crcState: UnsafeMutablePointer<UInt32>

    /// Lifetime counters.
    var opsCompleted: UInt64 = 0
    var bytesCompleted: UInt64 = 0
    var opsFailed: UInt64 = 0

    init(id: UInt32, channel: Int, depth: Int, connection: Connection, lane: Lane) {
        self.id = id
        self.channel = channel
        self.depth = depth
        credits = Credits(depth: depth)
        self.connection = connection
        self.lane = lane
        pending = OpRing(minimumCapacity: depth)
        delivery = DeliveryState(capacity: depth)
        crcState = .allocate(capacity: 1)
        crcState.initialize(to: 0)
    }

    deinit { crcState.deallocate() }

    /// Credits free for new ops.
    var freeCredits: Int { credits.free }
    /// Whether every accepted op has completed.
    var isIdle: Bool { execution.inEngine == 0 && pending.isEmpty }
}
