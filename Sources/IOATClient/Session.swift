import DequeModule
import Glibc
import IOATProtocol
import IOATSystem
import Synchronization

/// One connection to ioatd: its socket, reader thread, waiting requests and batches. `IOATClient`
/// replaces it with a new one when it is lost.
///
/// The reader thread receives every reply and completion. Completion callbacks run on it, in the order
/// the server delivered the records; they must not block, and they may submit more work: sends never
/// block — a packet the socket will not take yet waits in an outbox that the reader thread drains in
/// order.
final class Session: Sendable {
    /// Distinguishes this connection from every other of the process: buffers and queues remember it.
    let id: UInt64 = Session.nextID.add(1, ordering: .relaxed).newValue
    private static let nextID = Atomic<UInt64>(0)

    /// What the server said in the handshake: version, limits and channels.
    public let server: HelloReply
    /// The socket path connected to.
    public let path: String

    private let fd: FileDescriptor
    private let wakeup: EventFD
    private let nextRequest = Atomic<UInt64>(1)
    private let state = Mutex(State())
    private let output = Mutex(Output())
    private let reader: Mutex<OSThread?> = Mutex(nil)
    private let packetsSent = Atomic<UInt64>(0)
    private let packetsReceived = Atomic<UInt64>(0)

    typealias Reply = IOATClient.Reply
    typealias BatchResult = IOATClient.BatchResult

    /// A submitted batch waiting for its records.
    final class Batch: @unchecked Sendable {
        var records: [CompletionRecord]
        var remaining: Int
        var requestIDs: [UInt64] = []
        /// When the batch gives up waiting for its records (Clock.nanoseconds), and its queue, for the error.
        var deadline: UInt64? = nil
        var queue: UInt32 = 0
        var count: Int { records.count }
        let complete: @Sendable (BatchResult) -> Void
        init(count: Int, complete: @escaping @Sendable (BatchResult) -> Void) {
            records = Array(repeating: CompletionRecord(cookie: 0, status: .connectionLost, opcode: 0, result: 0, bytesDone: 0),
                            count: count)
            remaining = count
            self.complete = complete
        }
    }

    struct State: ~Copyable {
        var replies: [UInt64: CheckedContinuation<Reply, any Error>] = [:]
        /// When each waiting request gives up (Clock.nanoseconds), and what it was, for its error.
        var deadlines: [UInt64: (at: UInt64, what: String)] = [:]
        var batches: [UInt64: Batch] = [:]
        var submitRequests: [UInt64: UInt64] = [:]
        var nextBatch: UInt64 = 1
        var lost: String? = nil
        /// The GOODBYE's drain time, once the server said it is stopping.
        var goodbye: UInt32? = nil
        /// Called once, on the reader thread, when GOODBYE arrives.
        var onGoodbye: (@Sendable (UInt32) -> Void)? = nil
        /// Restarts of the server this connection lived through, and those that lost work (a crash).
        var restarts: UInt32 = 0
        var lostRestarts: Int = 0
        /// After RESTARTED with LOST: the RESYNC's request id, and the requests sent before it, which the
        /// crashed instance may have taken and never answered.
        var resync: (id: UInt64, before: Set<UInt64>)? = nil
    }

    /// Packets the socket would not take yet, in send order, with descriptors kept open until sent.
    struct Output: ~Copyable {
        var outbox: Deque<([UInt8], [FileDescriptor])> = []
        var failed: SystemError? = nil
    }

    /// Packets sent and received on this connection so far (after the handshake).
    var packetCounts: (sent: UInt64, received: UInt64) {
        (packetsSent.load(ordering: .relaxed), packetsReceived.load(ordering: .relaxed))
    }

    /// Connects to `path` and performs the handshake, within `bounds.connect` (nil: no bound).
    static func connect(path: String, busyPollMicroseconds: Int, transport: IOATClient.Transport = .automatic,
                        bounds: IOATClient.Timeouts = .fromEnvironment()) throws(IOATError) -> Session {
        let deadline = bounds.connect.map { Clock.nanoseconds() + UInt64($0.nanoseconds) }
        let fd: FileDescriptor
        let wakeup: EventFD
        do throws(SystemError) {
            fd = try UnixSocket.connect(path: path, deadlineNanoseconds: deadline)
            wakeup = try EventFD()
        } catch where error.errno == ETIMEDOUT {
            throw .timedOut("the server at \(path) did not take the connection within \(bounds.connectText) (its listen backlog stayed full); \(Self.journalHint)")
        } catch {
            throw .system(error)
        }
        // Whom this is: the client sends its memfds to the server, so it checks first (SPEC.md §1).
        let server: PeerCredentials
        do throws(SystemError) {
            server = try UnixSocket.peerCredentials(fd)
        } catch {
            throw .system(error)
        }
        if let why = SocketPath.distrust(serverUID: server.uid, path: path) { throw .untrustedServer(why) }
        // Restart support is always asked for: the session handles RESTARTED (SPEC.md §5.11).
        let reply = try handshake(fd, features: (transport == .socket ? 0 : Wire.featureRings) | Wire.featureRestart, path: path,
                                  deadline: deadline, bound: bounds.connectText)
        if transport == .ring && reply.features & Wire.featureRings == 0 {
            throw .invalidArgument("transport ring: the server did not grant ring queues (it negotiated version \(reply.version))")
        }
        do throws(SystemError) {
            try fd.setNonBlocking(true)
        } catch {
            throw .system(error)
        }
        let client = Session(fd: fd, wakeup: wakeup, server: reply, path: path,
                             busyPollNanoseconds: UInt64(max(0, busyPollMicroseconds)) * 1000,
                             useRings: transport != .socket && reply.features & Wire.featureRings != 0, callTimeout: bounds.call)
        client.startReader()
        return client
    }

    /// Where a person looks when the server does not answer.
    static let journalHint = "the server's log says why: journalctl -u ioatd"

    /// HELLO and its answer, synchronously, before the reader thread exists, by `deadline` (nil: none).
    private static func handshake(_ fd: FileDescriptor, features: UInt64, path: String, deadline: UInt64?, bound: String) throws(IOATError) -> HelloReply {
        // A server that refuses the connection (SPEC.md §1) sends its ERROR and closes at once. If that
        // happened before our HELLO went out, the send fails, and the ERROR is still there to be read.
        var sendFailure: SystemError? = nil
        do throws(SystemError) {
            try UnixSocket.send(fd, Message.hello(Hello(features: features)).encode(requestID: 0, version: 1))
        } catch where error.errno == EPIPE || error.errno == ECONNRESET {
            sendFailure = error
        } catch {
            throw .system(error)
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Wire.defaultMaxMessage + 1, alignment: 16)
        defer { buffer.deallocate() }
        let received: ReceivedPacket
        do throws(SystemError) {
            // The socket was made non-blocking by connect: wait for the answer, within the bound.
            while true {
                let left = deadline.map { $0 > Clock.nanoseconds() ? Int32(min(UInt64(Int32.max), ($0 - Clock.nanoseconds() + 999_999) / 1_000_000)) : 0 } ?? -1
                if left == 0 {
                    throw SystemError("handshake", errno: ETIMEDOUT)
                }
                if try Poll.wait([(fd, .readable)], timeoutMilliseconds: left).first?.isEmpty == false { break }
            }
            received = try UnixSocket.receive(fd, into: buffer)
        } catch where error.errno == ETIMEDOUT {
            throw .timedOut("no answer to HELLO from the server at \(path) within \(bound): the socket took the connection, but no server answered (one that cannot start, or is stopped or wedged); \(journalHint)")
        } catch {
            throw .system(sendFailure ?? error)
        }
        if received.isEndOfStream {
            if let sendFailure { throw .system(sendFailure) }
            throw .connectionLost("the server closed the connection during the handshake")
        }
        let message: Message
        do throws(ProtocolError) {
            (_, message) = try Message.decode(UnsafeRawBufferPointer(rebasing: buffer[0..<received.count]), version: 1)
        } catch {
            throw .invalidReply("handshake: \(error)")
        }
        switch message {
        case .helloReply(let r): return r
        case .error(let e): throw .refused(ProtocolError(e.code, e.message))
        default: throw .invalidReply("expected HELLO_OK, got \(message.type.name)")
        }
    }

    private let busyPollNanoseconds: UInt64
    private let lastActivity = Atomic<UInt64>(0)

    /// Whether queues go over rings (the transport allows it and the server granted them).
    let useRings: Bool
    var ringsGranted: Bool { server.features & Wire.featureRings != 0 }
    /// The ring queues `IOATQueue` feeds; the reader thread reaps them.
    private let feeders = Mutex<[RingFeeder]>([])
    /// RING_BROKEN errors of ring queues nobody feeds (an `IOATRing`'s), by queue.
    private let brokenRings = Mutex<[UInt32: ProtocolError]>([:])

    /// The ERROR that broke ring queue `queue`, if one came.
    func ringBroken(queue: UInt32) -> ProtocolError? { brokenRings.withLock { $0[queue] } }

    /// How long each request waits for its reply, and each batch for its records (nil: for ever).
    let callTimeout: Duration?
    /// When the reader next looks for batches whose bound ran out (Clock.nanoseconds). With a bound, the
    /// reader never sleeps past it, batches or not: a batch submitted while it sleeps is then swept in
    /// time without a wake-up per submit (which would start its busy poll early, and cost every op).
    private let nextSweep = Atomic<UInt64>(0)

    private init(fd: FileDescriptor, wakeup: EventFD, server: HelloReply, path: String, busyPollNanoseconds: UInt64, useRings: Bool,
                 callTimeout: Duration?) {
        self.callTimeout = callTimeout
        self.busyPollNanoseconds = busyPollNanoseconds
        self.useRings = useRings
        self.fd = fd
        self.wakeup = wakeup
        self.server = server
        self.path = path
    }

    deinit {
        _ = shutdown(fd.rawValue, Int32(SHUT_RDWR))
        wakeup.signal()
        guard let thread = reader.withLock({ $0 }) else { return }
        // The reader's own round may drop the last reference; a thread cannot join itself.
        if thread.isCurrent { thread.detach() } else { thread.join() }
    }

    private func startReader() {
        // The thread keeps the two descriptors, never the session, while it sleeps in poll(2): a session
        // nobody holds any more is then freed at once, which closes its connection and ends the thread.
        // (Holding it across the poll kept every dropped, idle session connected until the server spoke.)
        let socket = fd, wake = wakeup.fd
        let thread = OSThread(name: "ioat-client") { [weak self] in
            let capacity = Int(self?.server.maxMessage ?? UInt32(Wire.defaultMaxMessage)) + 1
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
            defer { buffer.deallocate() }
            // The descriptors waited on, kept across rounds: a spinning reader allocates nothing per round.
            var targets = Poll.Targets(capacity: 8)
            while true {
                guard let (pending, polling, rings) = self?.pollPlan() else { return }
                targets.removeAll()
                targets.add(socket, pending ? [.readable, .writable] : .readable)
                targets.add(wake, .readable)
                var timeout: Int32 = polling ? 0 : (self?.nextDeadlineMilliseconds() ?? -1)
                if !polling {
                    // Ask the server to ring at its next record (SPEC.md §5.10.3), then sleep.
                    for feeder in rings {
                        if feeder.memory.arm(1) { targets.add(feeder.memory.doorbell, .readable) } else { timeout = 0 }
                    }
                }
                do throws(SystemError) {
                    try targets.wait(timeoutMilliseconds: timeout)
                } catch {
                    self?.connectionLost("poll: \(error)")
                    return
                }
                if !polling { for feeder in rings { feeder.memory.disarm() } }
                guard let client = self else { return }
                client.expireRequests()
                client.expireBatches()
                // The socket first: a refused ring entry's ERROR is sent before its record is visible.
                guard client.serviceSocket(socket: targets.events(0), wakeup: targets.events(1), pending: pending, polling: polling, buffer) else {
                    return
                }
                client.reapRings()
            }
        }
        reader.withLock { $0 = thread }
    }

    /// Whether the connection is gone (every later request fails with `connectionLost`).
    var isLost: Bool { state.withLock { $0.lost != nil } }

    /// Closes the connection: every waiting call fails with `connectionLost` (on the reader thread, like
    /// every callback), and the session counts as lost at once, so the next call connects again.
    func close() {
        state.withLock { $0.lost = $0.lost ?? "closed by the client" }
        _ = shutdown(fd.rawValue, Int32(SHUT_RDWR))
        wakeup.signal()
    }

    // MARK: Sending

    /// Sends a packet without ever blocking: straight to the socket when nothing is queued before it,
    /// else (or when the socket is full) into the outbox, which the reader thread drains in order.
    private func send(_ bytes: [UInt8], fds: [FileDescriptor] = []) throws(IOATError) {
        let (failure, queued) = output.withLock { out in Self.enqueue(&out, fd, bytes, fds) }
        try sent(failure: failure, queued: queued)
    }

    /// With the output locked: sends `bytes` now when nothing is queued before them, else queues them.
    /// Returns the failure to report, and whether the reader must drain the outbox.
    private static func enqueue(_ out: inout Output, _ fd: FileDescriptor, _ bytes: [UInt8], _ fds: [FileDescriptor]) -> (SystemError?, Bool) {
        if let failed = out.failed { return (failed, false) }
        if out.outbox.isEmpty {
            do throws(SystemError) {
                try UnixSocket.send(fd, bytes, fds: fds.map(\.rawValue))
                return (nil, false)
            } catch where error.errno == EAGAIN {
                // queue below
            } catch where error.errno == EPIPE || error.errno == ECONNRESET {
                // The server closed its side. What it sent before (a GOODBYE, records, an ERROR) is
                // still to be read: the reader reads to the end and then fails this call with the
                // right error (serverStopped after a GOODBYE), since the call is already registered.
                out.failed = error
                return (nil, true)
            } catch {
                out.failed = error
                return (error, false)
            }
        }
        out.outbox.append((bytes, fds))
        return (nil, true)
    }

    /// What follows a send: the error, the counters, and a wake-up for the reader when it was queued.
    private func sent(failure: SystemError?, queued: Bool) throws(IOATError) {
        if let failure { throw Self.lostError("send: \(failure)", goodbye: state.withLock { $0.goodbye }) }
        packetsSent.add(1, ordering: .relaxed)
        lastActivity.store(Clock.nanoseconds(), ordering: .relaxed)
        if queued { wakeup.signal() }
    }

    /// Sends queued packets until the socket is full again (reader thread only).
    private func drainOutbox() -> Bool {
        output.withLock { out in
            while let (bytes, fds) = out.outbox.first {
                do throws(SystemError) {
                    try UnixSocket.send(fd, bytes, fds: fds.map(\.rawValue))
                } catch where error.errno == EAGAIN {
                    return true
                } catch {
                    out.failed = error
                    return false
                }
                out.outbox.removeFirst()
            }
            return true
        }
    }

    // MARK: Requests

    private func request(_ message: Message, fds: [FileDescriptor] = []) async throws(IOATError) -> Reply {
        try await request(message.encode(requestID: nextRequest.add(1, ordering: .relaxed).oldValue, version: server.version), fds: fds)
    }

    private func request(_ bytes: [UInt8], fds: [FileDescriptor] = []) async throws(IOATError) -> Reply {
        guard bytes.count >= Wire.headerSize else { throw .invalidArgument("a request needs a 24-byte header") }
        let id = bytes.withUnsafeBytes { WireReader($0).get(at: 16, as: UInt64.self)! }
        do {
            return try await withCheckedThrowingContinuation { (c: CheckedContinuation<Reply, any Error>) in
                let lost: IOATError? = state.withLock { s in
                    if let lost = s.lost { return Self.lostError(lost, goodbye: s.goodbye) }
                    s.replies[id] = c
                    if let callTimeout {
                        s.deadlines[id] = (Clock.nanoseconds() + UInt64(callTimeout.nanoseconds), Self.requestName(bytes))
                    }
                    return nil
                }
                // The reader plans its sleep again, to this deadline rather than the next batch sweep (a
                // control request is rare: a wake-up each costs nothing that matters).
                if callTimeout != nil { wakeup.signal() }
                if let lost {
                    c.resume(throwing: lost)
                    return
                }
                do throws(IOATError) {
                    try send(bytes, fds: fds)
                } catch {
                    if let c = state.withLock({ s in
                        s.deadlines[id] = nil
                        return s.replies.removeValue(forKey: id)
                    }) { c.resume(throwing: error) }
                }
            }
        } catch let error as IOATError {
            throw error
        } catch {
            throw .invalidReply("\(error)")
        }
    }

    /// Allocates a server-owned shared buffer of at least `size` bytes and maps it here.
    func allocate(size: Int, pages: Alloc.Pages = .preferHuge) async throws(IOATError) -> IOATBuffer {
        guard size > 0 else { throw .invalidArgument("allocate(size:) needs a size above 0, got \(size)") }
        guard case .buffer(let reply, let memfd?) = try await request(.alloc(Alloc(size: UInt64(size), pages: pages))) else {
            throw .invalidReply("ALLOC answered without a memfd")
        }
        do throws(SystemError) {
            return try IOATBuffer(reply: reply, memfd: memfd, session: id)
        } catch {
            throw .system(error)
        }
    }

    /// Registers a memfd this process made; it must carry F_SEAL_SHRINK (see `makeSealedMemfd`).
    func register(memfd: FileDescriptor) async throws(IOATError) -> IOATBuffer {
        let own: FileDescriptor
        do throws(SystemError) {
            own = try memfd.duplicate()
        } catch {
            throw .system(error)
        }
        guard case .buffer(let reply, _) = try await request(.register, fds: [own]) else {
            throw .invalidReply("REGISTER answered with something else")
        }
        do throws(SystemError) {
            return try IOATBuffer(reply: reply, memfd: own, session: id)
        } catch {
            throw .system(error)
        }
    }

    /// Frees a buffer. The server unmaps it once no op in flight uses it; this process's mapping stays
    /// valid until `buffer` is released.
    func free(_ buffer: IOATBuffer) async throws(IOATError) {
        _ = try await request(.free(handle: buffer.handle))
    }

    /// Opens a queue on `channel` (default: the one with the fewest queues) with room for `depth` ops.
    func openQueue(channel: UInt32? = nil, depth: Int = 64) async throws(IOATError) -> IOATQueue {
        guard depth > 0, depth <= Int(UInt32.max) else { throw .invalidArgument("queue depth \(depth) must be in 1...\(UInt32.max)") }
        guard case .open(let reply) = try await request(.open(channel: channel ?? Wire.anyChannel, depth: UInt32(depth))) else {
            throw .invalidReply("OPEN answered with something else")
        }
        guard useRings else { return IOATQueue(session: self, reply: reply) }
        let feeder = RingFeeder(memory: try await ring(for: reply.queue))
        feeders.withLock { $0.append(feeder) }
        // The connection may have gone between RING_OK and the line above; connectionLost did not see
        // this feeder then, so it fails here, and its batches end instead of waiting forever.
        if let (why, goodbye) = state.withLock({ s in s.lost.map { ($0, s.goodbye) } }) {
            feeder.fail(Self.lostError(why, goodbye: goodbye))
        }
        wakeup.signal()  // the reader thread watches the new ring from its next round
        return IOATQueue(session: self, reply: reply, feeder: feeder)
    }

    /// Opens a queue and makes it a ring the caller drives (`IOATRing`).
    func openRing(channel: UInt32?, depth: Int) async throws(IOATError) -> IOATRing {
        guard ringsGranted else {
            throw .invalidArgument("the server did not grant ring queues on this connection (version \(server.version))")
        }
        guard depth > 0, depth <= Int(UInt32.max) else { throw .invalidArgument("queue depth \(depth) must be in 1...\(UInt32.max)") }
        guard case .open(let reply) = try await request(.open(channel: channel ?? Wire.anyChannel, depth: UInt32(depth))) else {
            throw .invalidReply("OPEN answered with something else")
        }
        return IOATRing(session: self, queue: reply, memory: try await ring(for: reply.queue))
    }

    /// RING for an open queue: maps what RING_OK sent.
    private func ring(for queue: UInt32) async throws(IOATError) -> RingMemory {
        guard case .ring(let reply, let memfd, let doorbell) = try await request(.ring(queue: queue)) else {
            throw .invalidReply("RING answered with something else")
        }
        return try RingMemory(reply: reply, memfd: memfd, doorbell: doorbell)
    }

    /// Stops reaping a ring queue that closed.
    func forget(_ feeder: RingFeeder) {
        feeders.withLock { $0.removeAll { $0 === feeder } }
    }

    func reserve(queue: UInt32, credits: Int, noWait: Bool) async throws(IOATError) -> Int {
        guard credits > 0, credits <= Int(UInt32.max) else { throw .invalidArgument("reserve(credits:) needs 1...\(UInt32.max), got \(credits)") }
        guard server.version >= 2 else { throw .invalidArgument("RESERVE needs protocol version 2; the server speaks \(server.version)") }
        guard case .reserved(let free) = try await request(.reserve(queue: queue, credits: UInt32(credits), noWait: noWait)) else {
            throw .invalidReply("RESERVE answered with something else")
        }
        return free
    }

    func setCoalescing(queue: UInt32, microseconds: Int) async throws(IOATError) {
        guard (0...Int(UInt32.max)).contains(microseconds) else { throw .invalidArgument("coalescing period \(microseconds) µs is out of range") }
        guard server.version >= 2 else { throw .invalidArgument("SET_COALESCE needs protocol version 2; the server speaks \(server.version)") }
        _ = try await request(.setCoalesce(queue: queue, microseconds: UInt32(microseconds)))
    }

    func closeQueue(_ id: UInt32) async throws(IOATError) {
        _ = try await request(.close(queue: id))
    }

    /// One page of the server's STATUS document (JSON, SPEC.md §5.6).
    func status(_ page: StatusRequest) async throws(IOATError) -> String {
        guard case .status(let json) = try await request(.status(page == .first ? nil : page)) else { throw .invalidReply("STATUS answered with something else") }
        return json
    }

    /// Sends a raw, already-encoded request (use `reserveRequestID()` for its id) and returns the server's
    /// answer: for testing the server's validation.
    func rawRequest(_ bytes: [UInt8], fds: [FileDescriptor] = []) async throws(IOATError) -> Reply {
        try await request(bytes, fds: fds)
    }

    /// A request id no other call uses, for `rawRequest`.
    func reserveRequestID() -> UInt64 { nextRequest.add(1, ordering: .relaxed).oldValue }

    // MARK: Submission

    /// Submits `descriptors` to `queue` in SUBMITs of at most `chunk`, and calls `complete` once with
    /// every record (in order, carrying the descriptors' own cookies) or the first error.
    func submit(queue: UInt32, _ descriptors: [Descriptor], chunk: Int, complete: @escaping @Sendable (BatchResult) -> Void) {
        guard !descriptors.isEmpty else { return complete(.success([])) }
        guard descriptors.count <= 1 << 16 else {
            return complete(.failure(.invalidArgument("at most 65536 descriptors per submit, got \(descriptors.count)")))
        }
        let cookies = descriptors.map(\.cookie)
        let batch = Batch(count: descriptors.count) { result in
            complete(result.map { records in
                var records = records
                for i in records.indices { records[i].cookie = cookies[i] }
                return records
            })
        }
        var packets: [[UInt8]] = []
        let lost: IOATError? = state.withLock { s in
            if let lost = s.lost { return Self.lostError(lost, goodbye: s.goodbye) }
            let serial = s.nextBatch
            s.nextBatch += 1
            var start = 0
            while start < descriptors.count {
                let end = min(start + chunk, descriptors.count)
                var slice = descriptors[start..<end]
                for i in slice.indices { slice[i].cookie = serial << 16 | UInt64(i) }
                // Deliver each chunk as soon as its last op completes (SPEC.md §6.4).
                slice[end - 1].flags.insert(.interrupt)
                let id = nextRequest.add(1, ordering: .relaxed).oldValue
                batch.requestIDs.append(id)
                s.submitRequests[id] = serial
                packets.append(Message.encodeSubmit(queue: queue, descriptors: slice, requestID: id, version: server.version))
                start = end
            }
            if let callTimeout {
                batch.deadline = Clock.nanoseconds() + UInt64(callTimeout.nanoseconds)
                batch.queue = queue
            }
            s.batches[serial] = batch
            return nil
        }
        if let lost { return batch.complete(.failure(lost)) }
        for packet in packets {
            do throws(IOATError) {
                try send(packet)
            } catch {
                failBatch(batch, error)
                return
            }
        }
    }

    /// When a batch submitted now gives up waiting for its records (nil: never).
    func batchDeadline() -> UInt64? { callTimeout.map { Clock.nanoseconds() + UInt64($0.nanoseconds) } }

    /// Async form of `submit(queue:_:chunk:complete:)`.
    func submit(queue: UInt32, _ descriptors: [Descriptor], chunk: Int) async throws(IOATError) -> [CompletionRecord] {
        let result: BatchResult = await withCheckedContinuation { c in
            submit(queue: queue, descriptors, chunk: chunk) { c.resume(returning: $0) }
        }
        return try result.get()
    }

    private func failBatch(_ batch: Batch, _ error: IOATError) {
        let removed = state.withLock { s -> Bool in
            guard let serial = batch.requestIDs.first.flatMap({ s.submitRequests[$0] }), s.batches[serial] === batch else { return false }
            s.batches[serial] = nil
            for id in batch.requestIDs { s.submitRequests[id] = nil }
            return true
        }
        if removed { batch.complete(.failure(error)) }
    }

    // MARK: Reader thread

    /// Milliseconds until the first waiting request gives up or the next look for batches whose bound
    /// ran out; -1 when nothing has a bound.
    private func nextDeadlineMilliseconds() -> Int32 {
        // No arrays: this runs each time the reader plans a sleep, which must not allocate.
        var at = callTimeout == nil ? UInt64.max : nextSweep.load(ordering: .relaxed)
        state.withLock { s in
            for d in s.deadlines.values where d.at < at { at = d.at }
        }
        guard at != .max else { return -1 }
        let now = Clock.nanoseconds()
        return at <= now ? 0 : Int32(min(UInt64(Int32.max), (at - now + 999_999) / 1_000_000))
    }

    /// Fails each batch whose bound ran out with `timedOut` (reader thread), at most every eighth of the
    /// bound (at least 10 ms), so a batch gives up within 1⅛ of it: scanning every batch on every round
    /// would put the cost on each op. A socket batch's late records find no batch and are dropped; a
    /// ring batch stays in line, so that its records are still read in order, but completes no more.
    private func expireBatches() {
        guard let callTimeout else { return }
        let now = Clock.nanoseconds()
        guard now >= nextSweep.load(ordering: .relaxed) else { return }
        nextSweep.store(now + max(10_000_000, UInt64(callTimeout.nanoseconds) / 8), ordering: .relaxed)
        let bound = IOATClient.Timeouts.text(callTimeout)
        let overdue = state.withLock { s in s.batches.values.filter { ($0.deadline ?? .max) <= now } }
        for batch in overdue {
            failBatch(batch, .timedOut("\(batch.count) op\(batch.count == 1 ? "" : "s") on queue \(batch.queue) got no records from the server at \(path) within \(bound) (stopped, wedged or overloaded); they may still run; \(Self.journalHint)"))
        }
        for feeder in feeders.withLock({ $0 }) {
            feeder.expire(now: now) { what in
                .timedOut("\(what) got no records from the server at \(self.path) within \(bound) (stopped, wedged or overloaded); they may still run; \(Self.journalHint)")
            }
        }
    }

    /// Fails each request whose bound ran out with `timedOut` (reader thread). A reply that comes later
    /// finds no caller and is dropped; what it made (a buffer, a queue) lives until the connection ends.
    private func expireRequests() {
        let now = Clock.nanoseconds()
        let expired: [(CheckedContinuation<Reply, any Error>, String)] = state.withLock { s in
            var out: [(CheckedContinuation<Reply, any Error>, String)] = []
            for (id, d) in s.deadlines where d.at <= now {
                s.deadlines[id] = nil
                if let c = s.replies.removeValue(forKey: id) { out.append((c, d.what)) }
            }
            return out
        }
        let bound = callTimeout.map(IOATClient.Timeouts.text) ?? ""
        for (c, what) in expired {
            c.resume(throwing: IOATError.timedOut("\(what) got no answer from the server at \(path) within \(bound) (stopped, wedged or overloaded); \(Self.journalHint)"))
        }
    }

    /// The message type's name of an encoded request, for texts.
    private static func requestName(_ bytes: [UInt8]) -> String {
        guard bytes.count >= Wire.headerSize else { return "a request" }
        let raw = UInt16(bytes[6]) | UInt16(bytes[7]) << 8
        return MessageType(rawValue: raw)?.name ?? "a request"
    }

    /// What the reader waits for next: room in the socket too when the outbox holds packets, and whether
    /// to spin (poll without sleeping) because requests are outstanding and the last packet was recent.
    private func pollPlan() -> (pending: Bool, polling: Bool, rings: [RingFeeder]) {
        let pending = output.withLock { !$0.outbox.isEmpty }
        // Every ring is armed before the reader sleeps, busy or not: a batch submitted while it sleeps
        // then wakes it through the server's first record, with no wake-up of its own.
        let rings = feeders.withLock { $0 }
        let polling = busyPollNanoseconds > 0 && Clock.nanoseconds(since: lastActivity.load(ordering: .relaxed)) < busyPollNanoseconds
            && (rings.contains(where: \.isBusy) || state.withLock { !$0.batches.isEmpty || !$0.replies.isEmpty })
        return (pending, polling || rings.contains(where: \.hasAwaitingText), rings)
    }

    /// Reads every ring queue's records and completes its batches (reader thread).
    private func reapRings() {
        for feeder in feeders.withLock({ $0 }) {
            if feeder.reap() { lastActivity.store(Clock.nanoseconds(), ordering: .relaxed) }
            feeder.failIfBroken()
        }
    }

    /// After the reader's poll(2) (the socket's events, and the wakeup's), receives and routes what
    /// arrived and sends what is queued. Returns false when the connection is gone.
    private func serviceSocket(socket: Poll.Events, wakeup woken: Poll.Events, pending: Bool, polling: Bool,
                               _ buffer: UnsafeMutableRawBufferPointer) -> Bool {
        guard !socket.isEmpty || !woken.isEmpty else {
            if polling { Clock.yield() }
            return true
        }
        lastActivity.store(Clock.nanoseconds(), ordering: .relaxed)
        if woken.contains(.readable) { wakeup.drain() }
        // A failed send is not the end yet: what the server sent before it closed is read first.
        let sendFailed = (socket.contains(.writable) || pending) && !drainOutbox()
        if socket.isDisjoint(with: [.readable, .hangup, .error]) {
            guard sendFailed else { return true }
            connectionLost("send failed")
            return false
        }
        for _ in 0..<64 {
            let packet: ReceivedPacket
            do throws(SystemError) {
                packet = try UnixSocket.receive(fd, into: buffer)
            } catch where error.errno == EAGAIN {
                return true
            } catch {
                connectionLost("receive: \(error)")
                return false
            }
            if packet.isEndOfStream {
                connectionLost("the server closed the connection")
                return false
            }
            packetsReceived.add(1, ordering: .relaxed)
            let bytes = UnsafeRawBufferPointer(rebasing: buffer[0..<packet.count])
            do throws(ProtocolError) {
                let (header, message) = try Message.decode(bytes, version: server.version, maxDescriptors: Int(server.maxDescriptors))
                route(header, message, fds: packet.fds)
            } catch {
                connectionLost("undecodable packet from server: \(error)")
                _ = shutdown(fd.rawValue, Int32(SHUT_RDWR))
                return false
            }
        }
        return true
    }

    private func route(_ header: MessageHeader, _ message: Message, fds: [FileDescriptor]) {
        switch message {
        case .completion(let view):
            var finished: [Batch] = []
            state.withLock { s in
                view.forEachRecord { record in
                    let serial = record.cookie >> 16
                    guard let batch = s.batches[serial] else { return }
                    batch.records[Int(record.cookie & 0xFFFF)] = record
                    batch.remaining -= 1
                    if batch.remaining == 0 {
                        s.batches[serial] = nil
                        for id in batch.requestIDs { s.submitRequests[id] = nil }
                        finished.append(batch)
                    }
                }
            }
            for batch in finished { batch.complete(.success(batch.records)) }
        case .error(let e) where header.requestID == 0 && e.queue != 0:
            // About a ring queue (SPEC.md §5.10): a refused entry's text, or the ring broken.
            guard let feeder = feeders.withLock({ $0.first { $0.memory.ring.pointee.queue == e.queue } }) else {
                if e.code == .ringBroken { brokenRings.withLock { $0[e.queue] = ProtocolError(e.code, e.message) } }
                return
            }
            if e.code == .ringBroken {
                feeder.fail(.refused(ProtocolError(e.code, e.message)))
            } else {
                feeder.noteRefusal(entry: e.index, message: e.message)
            }
        case .error(let e):
            let error = IOATError.refused(ProtocolError(e.code, e.message, index: e.index == Wire.noIndex ? nil : e.index))
            let (reply, batch): (CheckedContinuation<Reply, any Error>?, Batch?) = state.withLock { s in
                if let c = s.replies.removeValue(forKey: header.requestID) {
                    s.deadlines[header.requestID] = nil
                    return (c, nil)
                }
                if let serial = s.submitRequests[header.requestID], let batch = s.batches.removeValue(forKey: serial) {
                    for id in batch.requestIDs { s.submitRequests[id] = nil }
                    return (nil, batch)
                }
                return (nil, nil)
            }
            reply?.resume(throwing: error)
            batch?.complete(.failure(error))
        case .restarted(let notice):
            serverRestarted(notice)
        case .resyncReply:
            // Everything sent before RESYNC has been answered by now, or never will be: those still waiting
            // were taken by the crashed instance.
            let lost: [CheckedContinuation<Reply, any Error>] = state.withLock { s in
                guard let resync = s.resync, resync.id == header.requestID else { return [] }
                s.resync = nil
                return resync.before.compactMap { id in
                    s.deadlines[id] = nil
                    return s.replies.removeValue(forKey: id)
                }
            }
            for c in lost {
                c.resume(throwing: IOATError.serverRestarted("the server restarted after a crash before it answered; the request may or may not have been carried out"))
            }
        case .goodbye(let drain):
            let handler = state.withLock { s -> (@Sendable (UInt32) -> Void)? in
                s.goodbye = drain
                return s.onGoodbye
            }
            handler?(drain)
        default:
            let reply: Reply
            switch message {
            case .helloReply(let r): reply = .hello(r)
            case .allocReply(let b): reply = .buffer(b, fds.first)
            case .registerReply(let b): reply = .buffer(b, nil)
            case .openReply(let o): reply = .open(o)
            case .freeReply, .closeReply: reply = .ok
            case .statusReply(let json): reply = .status(json)
            case .reserveReply(let free): reply = .reserved(Int(free))
            case .coalesceReply: reply = .ok
            case .ringReply(let r):
                guard fds.count == 2 else {
                    connectionLost("RING_OK came with \(fds.count) descriptors; it carries two")
                    return
                }
                reply = .ring(r, memfd: fds[0], doorbell: fds[1])
            default: return
            }
            let c = state.withLock { s in
                s.deadlines[header.requestID] = nil
                return s.replies.removeValue(forKey: header.requestID)
            }
            c?.resume(returning: reply)
        }
    }

    /// The error for a call on a lost connection: after a GOODBYE the end of the connection is a clean
    /// stop, not a crash (SPEC.md §5.7).
    static func lostError(_ why: String, goodbye: UInt32?) -> IOATError {
        goodbye != nil ? .serverStopped("the server said GOODBYE and closed the connection (\(why))") : .connectionLost(why)
    }

    /// Whether the server said GOODBYE on this connection, and its drain time.
    var goodbye: UInt32? { state.withLock { $0.goodbye } }

    /// Calls `handler` when the server says GOODBYE (at once if it already has).
    func onGoodbye(_ handler: @escaping @Sendable (UInt32) -> Void) {
        let already = state.withLock { s -> UInt32? in
            s.onGoodbye = handler
            return s.goodbye
        }
        if let already { handler(already) }
    }

    /// Restarts of the server this connection lived through (SPEC.md §5.11), and how many of them were
    /// crashes that lost work in flight.
    var restarts: (total: UInt32, lost: Int) { state.withLock { ($0.restarts, $0.lostRestarts) } }

    /// RESTARTED: a new instance serves this connection. After a handover nothing was lost and nothing
    /// changes. After a crash (LOST), every op submitted through SUBMIT and not completed gets a RESTARTED
    /// record here, in order (the new instance discards those SUBMITs until RESYNC), and RESYNC goes out;
    /// its answer fails the requests sent before it that are still waiting. Ring queues get their
    /// RESTARTED records from the server, in the ring.
    private func serverRestarted(_ notice: RestartNotice) {
        let resyncID = nextRequest.add(1, ordering: .relaxed).oldValue
        let resync = Message.resync.encode(requestID: resyncID, version: server.version)
        // The batches failed here and the RESYNC go out under the output lock: a SUBMIT whose batch is
        // registered after this look is sent after the RESYNC, so the server runs it instead of
        // discarding it unanswered.
        let (batches, sendResult): ([Batch], (SystemError?, Bool)?) = output.withLock { out in
            let batches: [Batch]? = state.withLock { s in
                s.restarts = notice.restarts
                guard notice.lost else { return nil }
                s.lostRestarts += 1
                let batches = Array(s.batches.values)
                s.batches.removeAll()
                s.submitRequests.removeAll()
                s.resync = (resyncID, Set(s.replies.keys))
                return batches
            }
            guard let batches else { return ([], nil) }
            return (batches, Self.enqueue(&out, fd, resync, []))
        }
        for batch in batches {
            for i in batch.records.indices where batch.records[i].status == .connectionLost {
                batch.records[i].status = .restarted
            }
            batch.complete(.success(batch.records))
        }
        if let sendResult { try? sent(failure: sendResult.0, queued: sendResult.1) }
    }

    private func connectionLost(_ why: String) {
        let (replies, batches, stopped) = state.withLock { s in
            s.lost = s.lost ?? why
            let r = Array(s.replies.values)
            let b = Array(s.batches.values)
            s.replies.removeAll()
            s.deadlines.removeAll()
            s.batches.removeAll()
            s.submitRequests.removeAll()
            return (r, b, s.goodbye != nil)
        }
        output.withLock { out in
            out.outbox.removeAll()
            if out.failed == nil { out.failed = SystemError("connection lost: \(why)", errno: ECONNRESET) }
        }
        let error = Self.lostError(why, goodbye: stopped ? 0 : nil)
        for c in replies { c.resume(throwing: error) }
        for b in batches { b.complete(.failure(error)) }
        for feeder in feeders.withLock({ $0 }) { feeder.fail(error) }
    }
}
