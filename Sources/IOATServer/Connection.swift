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
    let connectedAt: Double
    var negotiated = false
    /// The version messages are framed with: 1 until HELLO_OK, then the negotiated one.
    var version: UInt16 = 1

    var buffers: [UInt32: SharedBuffer] = [:]
    var nextHandle: UInt32 = 1
    var bufferBytes: UInt64 = 0
    var queues: [UInt32: Queue] = [:]
    var nextQueue: UInt32 = 1

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

    init(id: UInt64, fd: FileDescriptor, peer: PeerCredentials, maxMessage: Int, now: Double) {
        self.id = id
        self.fd = fd
        self.peer = peer
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
