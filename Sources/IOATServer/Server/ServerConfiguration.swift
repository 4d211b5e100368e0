import IOATProtocol
import IOATSystem

/// Everything the server can be told, with every default in one place. Immutable once built.
public struct ServerConfiguration: Sendable {
    /// Where to listen when not socket-activated.
    public var socketPath: String
    /// Mode of the socket file the server creates.
    public var socketMode: UInt32 = 0o666
    /// Largest message accepted or sent.
    public var maxMessage: Int = Wire.defaultMaxMessage
    /// Most descriptors in one SUBMIT (keeps a SUBMIT under `maxMessage`).
    public var maxDescriptors: Int = 512
    /// Largest depth of one queue.
    public var maxQueueDepth: Int = 1024
    /// Most queues on one connection.
    public var maxQueues: Int = 64
    /// Most buffers on one connection.
    public var maxBuffers: Int = 1024
    /// Most buffer bytes (allocated plus registered) on one connection.
    public var maxBufferBytes: UInt64 = 4 << 30
    /// Most connections at once; further ones are accepted and closed at once.
    public var maxConnections: Int = 256
    /// Whether ALLOC tries hugepages (MFD_HUGETLB) before 4 KiB pages.
    public var hugepages: Bool = true
    /// Whether server-allocated buffers are mlock'ed.
    public var lockBuffers: Bool = true
    /// The server-wide budget of buffer memory: server buffers whole, client memfds for what the server
    /// pins. Default: a quarter of the machine's memory (MemTotal).
    public var maxTotalBufferBytes: UInt64 = ServerConfiguration.defaultBudget
    /// Threads that make, map, register and unmap buffers, off the event loop.
    public var setupThreads: Int = 2
    /// The most of the hugepage pool one tenant may hold, in percent.
    public var hugepageSharePercent: Int = 50
    /// Most ops one channel holds in its engine ring at once; the rest wait in their queues, so a deep
    /// queue cannot push everyone else's ops behind thousands of its own.
    public var engineWindow: Int = 64
    /// Most completion records in one COMPLETION message.
    public var maxRecordsPerMessage: Int = 512
    /// After any activity the event loop polls without sleeping for this long before it blocks in
    /// epoll_wait. In a VM a sleeping thread costs tens of microseconds to wake; polling trades that CPU
    /// for latency. 0 disables it.
    public var busyPollMicroseconds: Int = 50
    /// Ops of at most this many bytes run on the event loop's thread when their channel's engine can (the
    /// CPU engine) and holds nothing else, instead of being handed to a worker: measured faster up to
    /// 256 KiB on this 2-core VM (README, "Small ops"); 64 KiB bounds how long one op holds the loop.
    /// At most sixteen times this (counted as fair scheduling counts) runs inline per dispatch. 0 hands
    /// every op to a worker.
    public var inlineBytes: Int = 64 << 10
    /// Whether version-3 clients may have shared-memory ring queues (HELLO feature bit 0, SPEC.md §5.10).
    public var rings = true
    /// How long a graceful stop waits for in-flight ops, in milliseconds.
    public var drainTimeoutMilliseconds: Int = 5000
    /// The restart state's format this server writes (SPEC.md §5.11); only tests change it, to see a
    /// state another format refused.
    public var stateFormat: Int = IOATServer.stateFormat
    /// The release named in the restart state.
    public var serverVersion: String = ioatdVersion
    /// Per-tenant (per-uid) limits and scheduling weights; replaced by a reload (SIGHUP).
    public var policy = Policy()
    /// Fair scheduling: what one op costs beyond its bytes, so a tenant of tiny ops is charged for the
    /// work each op takes whatever its size.
    public var opCostBytes: Int = 4096
    /// Fair scheduling: bytes of service a tenant of weight 1 gets per turn.
    public var quantumBytes: Int = 256 << 10
    /// Most bytes one channel holds in its engine at once (beyond one op), so a tenant's big pieces
    /// cannot queue a long wait inside the engine ahead of everyone else's next op.
    public var engineWindowBytes: Int = 16 << 20

    /// A quarter of MemTotal; 1 GiB when /proc/meminfo cannot be read.
    public static let defaultBudget: UInt64 = {
        let total = MemoryInfo.current().total
        return total > 0 ? total / 4 : 1 << 30
    }()

    /// A configuration listening at `socketPath` with every other default.
    public init(socketPath: String) {
        self.socketPath = socketPath
    }
}
