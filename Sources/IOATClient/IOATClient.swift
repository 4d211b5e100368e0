import Glibc
import IOATProtocol
import IOATSystem
import Synchronization

/// A client of ioatd. All methods are safe to call from any task or thread.
///
/// Completion callbacks (`IOATQueue.submit(_:onComplete:)`) run on the connection's reader thread, in
/// the order the server delivered the records; they must not block and may submit more work. The `async`
/// methods resume the awaiting task on its own executor, never on the reader thread.
///
/// When the connection drops (the server stopped, crashed or restarted), every request and op in flight
/// fails with `IOATError.connectionLost` — none is reported done, none waits forever — and the next call
/// on the client connects again. Buffers and queues belong to the connection that opened them: after a
/// reconnect, open new queues, and allocate or re-register buffers (`register(_:)` re-registers the
/// memfd of an old buffer, so its bytes carry over).
///
/// Dropping the last reference to a client closes its connection and ends its reader thread, even if the
/// server never sends anything again.
public final class IOATClient: Sendable {
    /// A successful answer to a request (see `rawRequest`).
    public enum Reply: @unchecked Sendable {
        case hello(HelloReply)
        case buffer(BufferReply, FileDescriptor?)
        case open(OpenReply)
        case ok
        case status(String)
        case reserved(Int)
        /// RING_OK: the ring's geometry, its memfd and the client's end of its doorbell.
        case ring(RingReply, memfd: FileDescriptor, doorbell: FileDescriptor)
    }

    /// How queues reach the server.
    public enum Transport: String, Sendable, CaseIterable {
        /// Shared-memory rings when the server grants them (version 3), SUBMIT and COMPLETION otherwise.
        case automatic
        /// Rings only: connecting fails when the server does not grant them.
        case ring
        /// SUBMIT and COMPLETION messages on the socket only.
        case socket
    }

    /// How long the client waits for the server. nil waits for ever.
    ///
    /// A healthy server answers HELLO in well under a millisecond. 5 s covers a socket-activated cold
    /// start (DPDK's start-up takes a second or two) while a person still gets an answer before giving
    /// up; a server that cannot start answers waiting clients at once (`ErrorCode.unavailable`). 30 s per
    /// request is far past any honest answer: an ALLOC zeroes and locks its memory at a fraction of a
    /// second per GiB. Completion waits (`IOATRing.wait`) take their own bounds.
    public struct Timeouts: Sendable, Equatable {
        /// Connecting and the HELLO handshake.
        public var connect: Duration?
        /// Each request's reply (ALLOC, REGISTER, FREE, OPEN, CLOSE, STATUS, RING, RESERVE, SET_COALESCE).
        public var call: Duration?

        public init(connect: Duration? = .seconds(5), call: Duration? = .seconds(30)) {
            self.connect = connect
            self.call = call
        }

        /// The defaults, each replaced by its environment variable when set: `IOATD_CONNECT_TIMEOUT_MS`
        /// and `IOATD_CALL_TIMEOUT_MS`, in milliseconds, -1 for none (libioatd reads the same two).
        public static func fromEnvironment() -> Timeouts {
            var t = Timeouts()
            if let v = environment("IOATD_CONNECT_TIMEOUT_MS") { t.connect = v }
            if let v = environment("IOATD_CALL_TIMEOUT_MS") { t.call = v }
            return t
        }

        private static func environment(_ name: String) -> Duration?? {
            guard let raw = getenv(name), let ms = Int(String(cString: raw)), ms >= -1 else { return nil }
            return .some(ms == -1 ? nil : .milliseconds(ms))
        }

        /// "5000 ms", for error texts.
        static func text(_ d: Duration) -> String { "\(d.milliseconds) ms" }
        var connectText: String { connect.map(Self.text) ?? "no bound" }
    }

    /// What a finished batch hands back.
    public typealias BatchResult = Result<[CompletionRecord], IOATError>

    /// The socket path connected to.
    public let path: String
    private let busyPollMicroseconds: Int
    /// How queues reach the server (rings or messages).
    public let transport: Transport
    /// How long calls wait for the server.
    public let timeouts: Timeouts
    private let current: Mutex<Session>
    private let reconnects = Atomic<Int>(0)

    /// Connects to `path` (default: the SPEC.md rule, `$IOATD_SOCKET` first) and performs the handshake.
    /// While requests are outstanding, the reader thread polls the socket without sleeping for
    /// `busyPollMicroseconds` after each packet (0 disables it): waking a sleeping thread costs tens of
    /// microseconds in a VM, more than a small op. `timeouts` bounds connecting and every request
    /// (default: 5 s and 30 s, or the environment's, `Timeouts.fromEnvironment()`); a bound that runs
    /// out throws `timedOut`, naming what was awaited, the socket and the bound.
    public static func connect(path: String? = nil, busyPollMicroseconds: Int = 50,
                               transport: Transport = .automatic, timeouts: Timeouts = .fromEnvironment()) async throws(IOATError) -> IOATClient {
        let path = path ?? SocketPath.forClient()
        return IOATClient(path: path, busyPollMicroseconds: busyPollMicroseconds, transport: transport, timeouts: timeouts,
                          session: try await connectOffPool(path: path, busyPollMicroseconds: busyPollMicroseconds, transport: transport,
                                                            timeouts: timeouts))
    }

    private static func connectOffPool(path: String, busyPollMicroseconds: Int, transport: Transport, timeouts: Timeouts) async throws(IOATError) -> Session {
        let result: Result<Session, IOATError> = await withCheckedContinuation { c in
            OSThread.detached(name: "ioat-connect") {
                do throws(IOATError) {
                    c.resume(returning: .success(try Session.connect(path: path, busyPollMicroseconds: busyPollMicroseconds,
                                                                     transport: transport, bounds: timeouts)))
                } catch {
                    c.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }

    private init(path: String, busyPollMicroseconds: Int, transport: Transport, timeouts: Timeouts, session: Session) {
        self.timeouts = timeouts
        self.path = path
        self.busyPollMicroseconds = busyPollMicroseconds
        self.transport = transport
        current = Mutex(session)
    }

    func session() async throws(IOATError) -> Session {
        let existing = current.withLock { $0 }
        if !existing.isLost { return existing }
        let fresh = try await Self.connectOffPool(path: path, busyPollMicroseconds: busyPollMicroseconds, transport: transport, timeouts: timeouts)
        let (live, installed) = current.withLock { s in
            guard s.isLost else { return (s, false) }
            s = fresh
            return (s, true)
        }
        if installed {
            reconnects.add(1, ordering: .relaxed)
        } else {
            // Another task reconnected first. Its session is the one to use. This one's reader thread
            // would keep it, and a server connection, alive for ever, so it is closed.
            fresh.close()
        }
        return live
    }

    /// What the server said in the handshake of the current connection: version, limits and channels.
    public var server: HelloReply { current.withLock { $0 }.server }

    /// How many times the client has connected again after losing its connection.
    public var reconnectCount: Int { reconnects.load(ordering: .relaxed) }

    /// Packets sent and received on the current connection (after the handshake), for measuring how many
    /// socket messages each op costs.
    public var packetCounts: (sent: UInt64, received: UInt64) { current.withLock { $0 }.packetCounts }

    /// Closes the current connection: every waiting call fails with `connectionLost`; the next call
    /// connects again.
    public func close() { current.withLock { $0 }.close() }

    /// Allocates a server-owned shared buffer of at least `size` bytes and maps it here.
    public func allocate(size: Int, pages: Alloc.Pages = .preferHuge) async throws(IOATError) -> IOATBuffer {
        try await session().allocate(size: size, pages: pages)
    }

    /// Registers a memfd this process made; it must carry F_SEAL_SHRINK (see `makeSealedMemfd`).
    public func register(memfd: FileDescriptor) async throws(IOATError) -> IOATBuffer {
        try await session().register(memfd: memfd)
    }

    /// Registers the memory of `buffer` (from this or an earlier connection) on the current connection:
    /// after a server restart, the bytes of a buffer carry over this way.
    public func register(_ buffer: IOATBuffer) async throws(IOATError) -> IOATBuffer {
        try await session().register(memfd: buffer.memfd)
    }

    /// Makes a memfd of `size` bytes sealed against shrinking and growing, ready for `register`.
    public static func makeSealedMemfd(size: Int, name: String = "ioat-client") throws(IOATError) -> FileDescriptor {
        do throws(SystemError) {
            let fd = try Memfd.create(name: name, size: UInt64(size), hugepages: false)
            try Memfd.addSeals([.shrink, .grow], to: fd)
            return fd
        } catch {
            throw .system(error)
        }
    }

    /// Frees a buffer. The server unmaps it once no op in flight uses it; this process's mapping stays
    /// valid until `buffer` is released.
    public func free(_ buffer: IOATBuffer) async throws(IOATError) {
        try await session().free(buffer)
    }

    /// Opens a queue on `channel` (default: the one with the fewest queues) with room for `depth` ops. It
    /// runs over a shared-memory ring when the transport allows and the server granted rings.
    public func openQueue(channel: UInt32? = nil, depth: Int = 64) async throws(IOATError) -> IOATQueue {
        try await session().openQueue(channel: channel, depth: depth)
    }

    /// Opens a queue as a ring driven directly by one of the caller's threads (`IOATRing`); needs a
    /// server that granted rings.
    public func openRing(channel: UInt32? = nil, depth: Int = 64) async throws(IOATError) -> IOATRing {
        try await session().openRing(channel: channel, depth: depth)
    }

    /// Whether the server granted ring queues on the current connection.
    public var ringsGranted: Bool { current.withLock { $0 }.ringsGranted }

    /// One page of the server's STATUS document, as the JSON the server sent (SPEC.md §5.6). `status()`
    /// gives the whole document, typed.
    public func statusJSON(_ page: StatusRequest = .first) async throws(IOATError) -> String {
        try await session().status(page)
    }

    /// Sends a raw, already-encoded request (use `reserveRequestID()` for its id) and returns the server's
    /// answer: for testing the server's validation.
    public func rawRequest(_ bytes: [UInt8], fds: [FileDescriptor] = []) async throws(IOATError) -> Reply {
        try await session().rawRequest(bytes, fds: fds)
    }

    /// Calls `handler` (on the client's reader thread) when the server says GOODBYE — it is stopping and
    /// lets ops already accepted run for `drainMilliseconds` — on the current connection, or at once if it
    /// already has. Calls on that connection then fail with `serverStopped`, not `connectionLost`.
    public func onServerStopping(_ handler: @escaping @Sendable (_ drainMilliseconds: UInt32) -> Void) {
        current.withLock { $0 }.onGoodbye(handler)
    }

    /// Restarts of the server the current connection lived through (SPEC.md §5.11), and how many were
    /// crashes: after those, ops in flight completed `RESTARTED` and requests under way failed with
    /// `serverRestarted`; the connection, its buffers and its queues carried on.
    public var serverRestarts: (total: Int, crashes: Int) {
        let r = current.withLock { $0 }.restarts
        return (Int(r.total), r.lost)
    }

    /// Whether the server said GOODBYE on the current connection.
    public var isServerStopping: Bool { current.withLock { $0 }.goodbye != nil }

    /// A request id no other call uses, for `rawRequest`.
    public func reserveRequestID() -> UInt64 { current.withLock { $0 }.reserveRequestID() }
}
