import DequeModule
import IOATEngine
import IOATProtocol

/// A descriptor accepted into a queue: resolved addresses plus references keeping its buffers mapped.
struct PendingOp {
    var cookie: UInt64
    var opcode: Opcode
    var flags: Descriptor.Flags
    var source: SharedBuffer?
    var sourceOffset: Int
    var destination: SharedBuffer?
    var destinationOffset: Int
    var length: Int
    var arg: UInt64

    /// The engine form, with `engineCookie` in place of the client's cookie.
    func engineOp(engineCookie: UInt64) -> EngineOp {
        EngineOp(cookie: engineCookie, opcode: opcode, flags: flags,
                 source: source.map { UnsafeRawPointer($0.mapping.unsafeBase + sourceOffset) },
                 destination: destination.map { $0.mapping.unsafeBase + destinationOffset },
                 length: length, arg: arg)
    }
}

/// One queue of one connection (SPEC.md §5.4): ops run in submission order on one channel, and at most
/// `depth` are outstanding — submitted and not yet delivered in a COMPLETION.
final class Queue {
    let id: UInt32
    let channel: Int
    let depth: Int
    /// The owning connection; cleared when it closes.
    var connection: Connection?

    /// Ops accepted and waiting for the engine window.
    var pending: Deque<PendingOp>
    /// Ops in the engine.
    var inEngine = 0
    /// Ops accepted whose completion has not been written to the socket: the credits in use.
    var outstanding = 0
    /// Completed ops whose records wait for a flush point (SPEC.md §6.4).
    var undelivered: [CompletionRecord]
    /// Whether the queue is in its channel's round-robin list.
    var isScheduled = false
    /// Whether the queue is in the event loop's flush list.
    var needsFlush = false

    /// Lifetime counters.
    var opsCompleted: UInt64 = 0
    var bytesCompleted: UInt64 = 0
    var opsFailed: UInt64 = 0

    init(id: UInt32, channel: Int, depth: Int, connection: Connection) {
        self.id = id
        self.channel = channel
        self.depth = depth
        self.connection = connection
        pending = Deque(minimumCapacity: depth)
        undelivered = []
        undelivered.reserveCapacity(depth)
    }

    /// Credits free for new ops.
    var freeCredits: Int { depth - outstanding }
    /// Whether every accepted op has completed.
    var isIdle: Bool { inEngine == 0 && pending.isEmpty }
}
