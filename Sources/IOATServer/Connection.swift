import DequeModule
import Glibc
import IOATProtocol
import IOATSystem

/// One client connection: its socket, negotiated state, buffers, queues and unsent output.
/// Lives on the event-loop thread only.
final class Connection {
    let id: UInt64
    let fd: FileDescriptor
    let peer: PeerCredentials
    /// Every connection of the peer's uid shares one tenant (policy limits, fair share, statistics).
    let tenant: Tenant
    let connectedAt: Double
    var negotiated = false
    /// The version messages are framed with: 1 until HELLO_OK, then the negotiated one.
    var version: UInt16 = 1

    /// Buffers and queues by handle. Handle numbers are unique across the server's connections, so a
    /// number taken from another connection names nothing here (SPEC.md §5.2).
    private(set) var buffers: [UInt32: SharedBuffer] = [:]
    private(set) var bufferBytes: UInt64 = 0
    private(set) var queues: [UInt32: Queue] = [:]

    /// Adds a buffer, counting its bytes for the connection and its tenant.
    func add(_ buffer: SharedBuffer) {
        buffers[buffer.handle] = buffer
        bufferBytes += buffer.size
        tenant.bufferBytes += buffer.size
    }

    /// Removes a buffer; nil when `handle` names none.
    func removeBuffer(_ handle: UInt32) -> SharedBuffer? {
        guard let buffer = buffers.removeValue(forKey: handle) else { return nil }
        bufferBytes -= buffer.size
        tenant.bufferBytes -= buffer.size
        return buffer
    }

    /// Adds a queue, counting it and its depth for the tenant.
    func add(_ queue: Queue) {
        queues[queue.id] = queue
        tenant.queues += 1
        tenant.inflightCapacity += queue.depth
    }

    /// Removes a queue; nil when `id` names none.
    func removeQueue(_ id: UInt32) -> Queue? {
        guard let queue = queues.removeValue(forKey: id) else { return nil }
        tenant.queues -= 1
        tenant.inflightCapacity -= queue.depth
        return queue
    }

    /// Gives back everything the connection held to its tenant's account (the connection is closing).
    func releaseAll() {
        for id in Array(queues.keys) { _ = removeQueue(id) }
        for handle in Array(buffers.keys) { _ = removeBuffer(handle) }
        tenant.connections -= 1
    }

    /// One packet of receive space (plus one byte, so an oversized packet shows as truncated).
    let receiveBuffer: UnsafeMutableRawBufferPointer
    /// Length of a SUBMIT parked in `receiveBuffer` until its queue has credits, or 0.
    var parkedLength = 0
    /// Scratch space for encoding COMPLETION messages without allocating.
    var scratch: WireWriter

    /// A packet the socket would not take yet, and the credits it returns once sent.
    struct Outgoing {
        var bytes: [UInt8]
        /// Descriptors to attach, kept open until sent.
        var fds: [FileDescriptor]
        var queue: Queue?
        var records: Int
    }
    /// Packets waiting for the socket to drain. While non-empty the server reads no more requests from
    /// this client, so a client that stops reading stalls only itself.
    var backlog: Deque<Outgoing> = []
    /// What epoll watches for now.
    var interest: Epoll.Events = .readable
    var isClosed = false

    /// Lifetime counters.
    var requests: UInt64 = 0
    var errors: UInt64 = 0

    init(id: UInt64, fd: FileDescriptor, peer: PeerCredentials, tenant: Tenant, maxMessage: Int, now: Double) {
        self.id = id
        self.fd = fd
        self.peer = peer
        self.tenant = tenant
        tenant.connections += 1
        connectedAt = now
        receiveBuffer = .allocate(byteCount: maxMessage + 1, alignment: 16)
        scratch = WireWriter(capacity: maxMessage)
    }

    deinit { receiveBuffer.deallocate() }

    /// Whether the server should read requests now.
    var wantsToRead: Bool { !isClosed && backlog.isEmpty && parkedLength == 0 }

    enum SendResult {
        case sent
        case queued
        case failed(SystemError)
    }

    /// Sends `bytes` now, or queues a copy if the socket is full (or already has a backlog, to keep order).
    func send(_ bytes: UnsafeRawBufferPointer, fds: [FileDescriptor] = [], queue: Queue? = nil, records: Int = 0) -> SendResult {
        if backlog.isEmpty {
            do throws(SystemError) {
                try UnixSocket.send(fd, bytes, fds: fds.map(\.rawValue))
                return .sent
            } catch where error.errno == EAGAIN {
                // fall through to queue
            } catch {
                return .failed(error)
            }
        }
        backlog.append(Outgoing(bytes: Array(bytes), fds: fds, queue: queue, records: records))
        return .queued
    }

    /// Sends queued packets until the socket is full again; returns the records whose delivery returns
    /// credits, via `delivered`.
    func flushBacklog(delivered: (Queue, Int) -> Void) throws(SystemError) {
        while let next = backlog.first {
            do throws(SystemError) {
                try UnixSocket.send(fd, next.bytes, fds: next.fds.map(\.rawValue))
            } catch where error.errno == EAGAIN {
                return
            }
            backlog.removeFirst()
            if let q = next.queue { delivered(q, next.records) }
        }
    }
}
