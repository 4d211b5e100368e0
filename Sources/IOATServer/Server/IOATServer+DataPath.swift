import IOATProtocol
import IOATSystem

/// The data path's one entry and its pump. Both ingresses (SUBMIT messages and rings) are front ends:
/// they validate descriptors into ops and hand them here; what happens next is the channel's (scheduling,
/// the engine window) and the router's (records, credits, flush points).
extension IOATServer {
    /// Moves one validated op into `queue` on its `channel` (the caller looked it up once per batch):
    /// the router takes its credit, the channel gives it its place and pins the buffers it names. The
    /// caller made sure a credit is free.
    func admit(_ op: consuming PendingOp, into queue: Queue, on channel: Channel, at now: UInt64) {
        router.take(1, of: queue)
        channel.admit(op, into: queue, at: now)
    }

    /// Puts `queue` in its tenant's turn on its channel, starts what the engine window takes, and
    /// delivers what finished meanwhile.
    /// `now`, when not 0, is a clock reading the caller just took, for the records it routes.
    func pump(_ queue: Queue, now: UInt64 = 0) { pump(queue, on: channels[queue.channel], now: now) }

    /// `pump` with the queue's channel the caller looked up.
    func pump(_ queue: Queue, on channel: Channel, now: UInt64 = 0) {
        channel.schedule(queue)
        channel.dispatch()
        deliver(now: now)
    }

    /// Gives back the credits of records a ring's client consumed.
    func consumed(_ count: Int, of queue: Queue) {
        if count > 0 { router.delivered(count, of: queue) }
    }
}
