import DequeModule
import Glibc
import IOATProtocol
import IOATSystem

/// A request that waits for credits (SPEC.md §5.8, §6.3). While one waits the connection reads nothing,
/// so the buffers its ops name stay open; a SUBMIT waits already validated and resolved.
enum ParkedRequest {
    /// A SUBMIT whose resolved ops go into `queue` once it has credits for all of them.
    case submit(queue: Queue, ops: [PendingOp])
    /// A RESERVE answered once `queue` has `credits` free.
    case reserve(queue: Queue, credits: Int, requestID: UInt64)

    var queue: Queue {
        switch self {
        case .submit(let queue, _), .reserve(let queue, _, _): queue
        }
    }

    /// Credits it waits for.
    var credits: Int {
        switch self {
        case .submit(_, let ops): ops.count
        case .reserve(_, let credits, _): credits
        }
    }
}

/// What a connection knows of one of its buffers: enough to check and resolve a range with no
/// reference to the buffer (the server's `BufferTable` owns it, under `slot`).
struct OpenBuffer {
    let handle: UInt32
    let slot: UInt32
    let base: UnsafeMutableRawPointer
    let size: UInt64
    let flags: BufferReply.Flags

    init(_ buffer: SharedBuffer, slot: UInt32) {
        handle = buffer.handle
        self.slot = slot
        base = buffer.mapping.unsafeBase
        size = buffer.size
        flags = buffer.flags
    }
}

/// A connection's buffers by handle, and their bytes, counted for the connection and its tenant. A
/// lookup tries a small cache of recent handles first: a 64-byte copy names two handles, nearly always
/// the ones the op before it named, and hashing them was a few percent of the server's time.
struct OpenBuffers: BufferLookup {
    private(set) var byHandle: [UInt32: OpenBuffer] = [:]
    private(set) var bytes: UInt64 = 0
    /// Direct-mapped by the handle's low bits. (An inline array, indexed: the tuple it replaces was read
    /// whole, four ways of four fields, on every lookup.)
    private var cache: InlineArray<4, OpenBuffer?> = [nil, nil, nil, nil]

    var count: Int { byHandle.count }
    func contains(_ handle: UInt32) -> Bool { byHandle[handle] != nil }

    func buffer(_ handle: UInt32) -> OpenBuffer? { cached(handle) ?? byHandle[handle] }

    /// The buffer under `handle`, from the cache or the table; a table hit goes into the cache.
    @inline(__always)
    mutating func lookup(_ handle: UInt32) -> OpenBuffer? {
        if let hit = cached(handle) { return hit }
        guard let found = byHandle[handle] else { return nil }
        remember(found)
        return found
    }

    @inline(__always)
    private func cached(_ handle: UInt32) -> OpenBuffer? {
        guard let hit = cache[Int(handle & 3)], hit.handle == handle else { return nil }
        return hit
    }

    /// Puts `buffer` (or nothing) in the cache way of `handle`.
    private mutating func setCached(_ handle: UInt32, _ buffer: OpenBuffer?) { cache[Int(handle & 3)] = buffer }

    private mutating func remember(_ buffer: OpenBuffer) { setCached(buffer.handle, buffer) }

    mutating func add(_ buffer: OpenBuffer, tenant: Tenant) {
        byHandle[buffer.handle] = buffer
        bytes += buffer.size
        tenant.bufferBytes += buffer.size
        if buffer.flags.contains(.hugepages) { tenant.hugepageBytes += buffer.size }
        remember(buffer)
    }

    mutating func remove(_ handle: UInt32, tenant: Tenant) -> OpenBuffer? {
        guard let buffer = byHandle.removeValue(forKey: handle) else { return nil }
        bytes -= buffer.size
        tenant.bufferBytes -= buffer.size
        if buffer.flags.contains(.hugepages) { tenant.hugepageBytes -= buffer.size }
        if cached(handle) != nil { setCached(handle, nil) }
        return buffer
    }
}

/// One client connection: its socket, protocol state, buffers, queues and unsent output.
/// Lives on the event-loop thread only.
final class Connection: BufferLookup {
    let id: UInt64
    let fd: FileDescriptor
    let peer: PeerCredentials
    /// Every connection of the peer's uid shares one tenant (policy limits, fair share, statistics).
    let tenant: Tenant
    let connectedAt: Double
    /// Negotiation and the order of checks on every packet.
    var machine: ConnectionStateMachine
    /// Whether HELLO_OK granted ring queues (feature bit 0, version 3).
    var ringsGranted = false
    /// Whether HELLO_OK granted restart support (feature bit 1, version 3; SPEC.md §5.11).
    var restartGranted = false
    /// Restarts of the server this connection lived through.
    var restarts: UInt32 = 0
    /// After RESTARTED with LOST: SUBMITs are discarded until the client's RESYNC (it failed them itself).
    var awaitingResync = false
    /// Set while the server hands over to its next instance: nothing more is read.
    var holding = false
    /// The version messages are framed with: 1 until HELLO_OK, then the negotiated one.
    var version: UInt16 { machine.version }

    /// Buffers and queues by handle. Handle numbers are unique across the server's connections, so a
    /// number taken from another connection names nothing here (SPEC.md §5).
    private(set) var buffers = OpenBuffers()
    var bufferBytes: UInt64 { buffers.bytes }
    private(set) var queues: [UInt32: Queue] = [:]

    @inline(__always)
    func buffer(_ handle: UInt32) -> OpenBuffer? { buffers.lookup(handle) }

    /// Adds a buffer (already in the server's table under `buffer.slot`), counting its bytes for the
    /// connection and its tenant.
    func add(_ buffer: OpenBuffer) { buffers.add(buffer, tenant: tenant) }

    /// Removes a buffer; nil when `handle` names none. The caller closes its slot in the table.
    func removeBuffer(_ handle: UInt32) -> OpenBuffer? { buffers.remove(handle, tenant: tenant) }

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

    /// Gives back everything the connection held to its tenant's account (the connection is closing),
    /// and closes its buffers in `table`: each is unmapped once no op names it.
    func releaseAll(closingIn table: BufferTable) {
        for id in Array(queues.keys) { _ = removeQueue(id) }
        for handle in Array(buffers.byHandle.keys) {
            if let buffer = removeBuffer(handle) { table.close(buffer.slot) }
        }
        tenant.connections -= 1
    }

    /// One packet of receive space (plus one byte, so an oversized packet shows as truncated).
    let receiveBuffer: UnsafeMutableRawBufferPointer
    /// The request waiting for credits, if any (`park`, `unpark`).
    private(set) var parked: ParkedRequest? = nil
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
    /// Whether it has closed (its life is `machine`'s).
    var isClosed: Bool { machine.isClosed }

    /// Lifetime counters.
    var requests: UInt64 = 0
    var errors: UInt64 = 0

    init(id: UInt64, fd: FileDescriptor, peer: PeerCredentials, tenant: Tenant, maxMessage: Int, maxDescriptors: Int = 512,
         now: Double) {
        self.id = id
        self.fd = fd
        self.peer = peer
        self.tenant = tenant
        machine = ConnectionStateMachine(maxMessage: maxMessage, maxDescriptors: maxDescriptors)
        tenant.connections += 1
        connectedAt = now
        receiveBuffer = .allocate(byteCount: maxMessage + 1, alignment: 16)
        scratch = WireWriter(capacity: maxMessage)
    }

    deinit { receiveBuffer.deallocate() }

    /// Whether the server should read requests now: its state reads, and nothing waits to be written.
    var wantsToRead: Bool { machine.reads && backlog.isEmpty && !holding }

    /// Parks `request` until its queue has the credits (the connection reads nothing meanwhile).
    func park(_ request: ParkedRequest) {
        machine.park()
        parked = request
    }

    /// Takes the parked request back (it goes through now).
    func unpark() -> ParkedRequest? {
        defer { parked = nil }
        machine.unpark()
        return parked
    }

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
