import Glibc
import IOATProtocol
import IOATSystem
import Synchronization

/// A connection to ioatd. Requests are `async`; a reader thread receives every reply and completion and
/// resumes the caller waiting for it. All methods are safe to call from any task or thread.
///
/// Completions never run user code on the reader thread: a finished batch resumes the task that awaits
/// it, on that task's executor.
public final class IOATClient: Sendable {
    /// What the server said in the handshake: version, limits and channels.
    public let server: HelloReply
    /// The socket path connected to.
    public let path: String

    private let fd: FileDescriptor
    private let sendLock = Mutex<Void>(())
    private let nextRequest = Atomic<UInt64>(1)
    private let state = Mutex(State())
    private let reader: Mutex<OSThread?> = Mutex(nil)
    private let packetsSent = Atomic<UInt64>(0)
    private let packetsReceived = Atomic<UInt64>(0)

    /// Packets sent and received on this connection so far (after the handshake), for measuring how
    /// many socket messages each op costs.
    public var packetCounts: (sent: UInt64, received: UInt64) {
        (packetsSent.load(ordering: .relaxed), packetsReceived.load(ordering: .relaxed))
    }

    /// A successful answer to a request (see `rawRequest`).
    public enum Reply: @unchecked Sendable {
        case hello(HelloReply)
        case buffer(BufferReply, FileDescriptor?)
        case open(OpenReply)
        case ok
        case status(String)
    }

    /// A submitted batch waiting for its records.
    final class Batch: @unchecked Sendable {
        var records: [CompletionRecord]
        var remaining: Int
        var requestIDs: [UInt64] = []
        let continuation: CheckedContinuation<[CompletionRecord], any Error>
        init(count: Int, continuation: CheckedContinuation<[CompletionRecord], any Error>) {
            records = Array(repeating: CompletionRecord(cookie: 0, status: .connectionLost, opcode: 0, result: 0, bytesDone: 0),
                            count: count)
            remaining = count
            self.continuation = continuation
        }
    }

    struct State: ~Copyable {
        var replies: [UInt64: CheckedContinuation<Reply, any Error>] = [:]
        var batches: [UInt64: Batch] = [:]
        var submitRequests: [UInt64: UInt64] = [:]
        var nextBatch: UInt64 = 1
        var lost: String? = nil
    }

    /// Connects to `path` (default: the SPEC.md rule, `$IOATD_SOCKET` first) and performs the handshake.
    public static func connect(path: String? = nil) async throws(IOATError) -> IOATClient {
        let path = path ?? SocketPath.resolved()
        let fd: FileDescriptor
        do throws(SystemError) {
            fd = try UnixSocket.connect(path: path)
        } catch {
            throw .system(error)
        }
        let reply = try handshake(fd)
        let client = IOATClient(fd: fd, server: reply, path: path)
        client.startReader()
        return client
    }

    /// HELLO and its answer, synchronously, before the reader thread exists.
    private static func handshake(_ fd: FileDescriptor) throws(IOATError) -> HelloReply {
        do throws(SystemError) {
            try UnixSocket.send(fd, Message.hello(Hello()).encode(requestID: 0, version: 1))
        } catch {
            throw .system(error)
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Wire.defaultMaxMessage + 1, alignment: 16)
        defer { buffer.deallocate() }
        let received: ReceivedPacket
        do throws(SystemError) {
            received = try UnixSocket.receive(fd, into: buffer)
        } catch {
            throw .system(error)
        }
        if received.isEndOfStream { throw .connectionLost("the server closed the connection during the handshake") }
        let message: Message
        do throws(ProtocolError) {
            (_, message) = try Message.decode(UnsafeRawBufferPointer(rebasing: buffer[0..<received.count]))
        } catch {
            throw .invalidReply("handshake: \(error)")
        }
        switch message {
        case .helloReply(let r): return r
        case .error(let e): throw .refused(ProtocolError(e.code, e.message))
        default: throw .invalidReply("expected HELLO_OK, got \(message.type.name)")
        }
    }

    private init(fd: FileDescriptor, server: HelloReply, path: String) {
        self.fd = fd
        self.server = server
        self.path = path
    }

    deinit {
        _ = shutdown(fd.rawValue, Int32(SHUT_RDWR))
        reader.withLock { $0 }?.join()
    }

    private func startReader() {
        let thread = OSThread(name: "ioat-client") { [weak self] in
            // Hold the client only weakly between packets so dropping it ends the thread.
            let capacity = Int(self?.server.maxMessage ?? UInt32(Wire.defaultMaxMessage)) + 1
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 16)
            defer { buffer.deallocate() }
            while let client = self {
                if !client.receiveOne(into: buffer) { return }
            }
        }
        reader.withLock { $0 = thread }
    }

    /// Closes the connection: every waiting call fails with `connectionLost`.
    public func close() {
        _ = shutdown(fd.rawValue, Int32(SHUT_RDWR))
    }

    // MARK: Requests

    private func send(_ bytes: [UInt8], fds: [Int32] = []) throws(IOATError) {
        let failure: SystemError? = sendLock.withLock { _ in
            do throws(SystemError) {
                try UnixSocket.send(fd, bytes, fds: fds)
                return nil
            } catch {
                return error
            }
        }
        if let failure { throw .connectionLost("send: \(failure)") }
        packetsSent.add(1, ordering: .relaxed)
    }

    private func request(_ message: Message, fds: [Int32] = []) async throws(IOATError) -> Reply {
        let id = nextRequest.add(1, ordering: .relaxed).oldValue
        let bytes = message.encode(requestID: id)
        do {
            return try await withCheckedThrowingContinuation { (c: CheckedContinuation<Reply, any Error>) in
                let lost: String? = state.withLock { s in
                    if let lost = s.lost { return lost }
                    s.replies[id] = c
                    return nil
                }
                if let lost {
                    c.resume(throwing: IOATError.connectionLost(lost))
                    return
                }
                do throws(IOATError) {
                    try send(bytes, fds: fds)
                } catch {
                    if let c = state.withLock({ $0.replies.removeValue(forKey: id) }) { c.resume(throwing: error) }
                }
            }
        } catch let error as IOATError {
            throw error
        } catch {
            throw .invalidReply("\(error)")
        }
    }

    /// Allocates a server-owned shared buffer of at least `size` bytes and maps it here.
    public func allocate(size: Int, pages: Alloc.Pages = .preferHuge) async throws(IOATError) -> IOATBuffer {
        guard size > 0 else { throw .invalidArgument("allocate(size:) needs a size above 0, got \(size)") }
        guard case .buffer(let reply, let memfd?) = try await request(.alloc(Alloc(size: UInt64(size), pages: pages))) else {
            throw .invalidReply("ALLOC answered without a memfd")
        }
        do throws(SystemError) {
            return try IOATBuffer(reply: reply, memfd: memfd)
        } catch {
            throw .system(error)
        }
    }

    /// Registers a memfd this process made; it must carry F_SEAL_SHRINK (see `makeSealedMemfd`).
    public func register(memfd: FileDescriptor) async throws(IOATError) -> IOATBuffer {
        guard case .buffer(let reply, _) = try await request(.register, fds: [memfd.rawValue]) else {
            throw .invalidReply("REGISTER answered with something else")
        }
        do throws(SystemError) {
            return try IOATBuffer(reply: reply, memfd: try memfd.duplicate())
        } catch {
            throw .system(error)
        }
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
        _ = try await request(.free(handle: buffer.handle))
    }

    /// Opens a queue on `channel` (default: the least busy) with room for `depth` ops in flight.
    public func openQueue(channel: UInt32? = nil, depth: Int = 64) async throws(IOATError) -> IOATQueue {
        guard depth > 0, depth <= Int(UInt32.max) else { throw .invalidArgument("queue depth \(depth) must be in 1...\(UInt32.max)") }
        guard case .open(let reply) = try await request(.open(channel: channel ?? Wire.anyChannel, depth: UInt32(depth))) else {
            throw .invalidReply("OPEN answered with something else")
        }
        return IOATQueue(client: self, reply: reply)
    }

    func closeQueue(_ id: UInt32) async throws(IOATError) {
        _ = try await request(.close(queue: id))
    }

    /// The server's STATUS document (JSON, SPEC.md §5.6).
    public func status() async throws(IOATError) -> String {
        guard case .status(let json) = try await request(.status) else { throw .invalidReply("STATUS answered with something else") }
        return json
    }

    /// Sends a raw packet and returns the server's answer to it, for tests of the server's validation.
    /// The answer's fds are closed.
    public func rawRequest(_ bytes: [UInt8], fds: [Int32] = []) async throws(IOATError) -> Reply {
        guard bytes.count >= Wire.headerSize else { throw .invalidArgument("a raw request needs a 24-byte header") }
        let id = bytes.withUnsafeBytes { WireReader($0).get(at: 16, as: UInt64.self)! }
        do {
            return try await withCheckedThrowingContinuation { (c: CheckedContinuation<Reply, any Error>) in
                state.withLock { $0.replies[id] = c }
                do throws(IOATError) {
                    try send(bytes, fds: fds)
                } catch {
                    if let c = state.withLock({ $0.replies.removeValue(forKey: id) }) { c.resume(throwing: error) }
                }
            }
        } catch let error as IOATError {
            throw error
        } catch {
            throw .invalidReply("\(error)")
        }
    }

    /// A request id no other call uses, for `rawRequest`.
    public func reserveRequestID() -> UInt64 { nextRequest.add(1, ordering: .relaxed).oldValue }

    // MARK: Submission

    /// Submits `descriptors` to queue `queue` (split into SUBMITs of at most `chunk`) and returns their
    /// records in order. The cookies are replaced by the client's own; the records carry the
    /// descriptors' original cookies back.
    func submit(queue: UInt32, _ descriptors: [Descriptor], chunk: Int) async throws(IOATError) -> [CompletionRecord] {
        guard !descriptors.isEmpty else { return [] }
        guard descriptors.count <= 1 << 16 else { throw .invalidArgument("at most 65536 descriptors per submit, got \(descriptors.count)") }
        let records: [CompletionRecord]
        do {
            records = try await withCheckedThrowingContinuation { (c: CheckedContinuation<[CompletionRecord], any Error>) in
                let batch = Batch(count: descriptors.count, continuation: c)
                var packets: [[UInt8]] = []
                let lost: String? = state.withLock { s in
                    if let lost = s.lost { return lost }
                    let serial = s.nextBatch
                    s.nextBatch += 1
                    var start = 0
                    while start < descriptors.count {
                        let end = min(start + chunk, descriptors.count)
                        var slice = Array(descriptors[start..<end])
                        for i in slice.indices {
                            slice[i].cookie = serial << 16 | UInt64(start + i)
                        }
                        // Deliver each chunk as soon as its last op completes (SPEC.md §6.4).
                        slice[slice.count - 1].flags.insert(.interrupt)
                        let id = nextRequest.add(1, ordering: .relaxed).oldValue
                        batch.requestIDs.append(id)
                        s.submitRequests[id] = serial
                        packets.append(Message.encodeSubmit(queue: queue, descriptors: slice, requestID: id))
                        start = end
                    }
                    s.batches[serial] = batch
                    return nil
                }
                if let lost {
                    c.resume(throwing: IOATError.connectionLost(lost))
                    return
                }
                for packet in packets {
                    do throws(IOATError) {
                        try send(packet)
                    } catch {
                        failBatch(batch, error)
                        return
                    }
                }
            }
        } catch let error as IOATError {
            throw error
        } catch {
            throw .invalidReply("\(error)")
        }
        return zip(records, descriptors).map { record, d in
            var r = record
            r.cookie = d.cookie
            return r
        }
    }

    private func failBatch(_ batch: Batch, _ error: IOATError) {
        let removed = state.withLock { s -> Bool in
            guard let serial = batch.requestIDs.first.flatMap({ s.submitRequests[$0] }), s.batches[serial] === batch else { return false }
            s.batches[serial] = nil
            for id in batch.requestIDs { s.submitRequests[id] = nil }
            return true
        }
        if removed { batch.continuation.resume(throwing: error) }
    }

    // MARK: Reader thread

    /// Receives and routes one packet; returns false when the connection is gone.
    private func receiveOne(into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        let packet: ReceivedPacket
        do throws(SystemError) {
            packet = try UnixSocket.receive(fd, into: buffer)
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
            let (header, message) = try Message.decode(bytes, maxDescriptors: Int(server.maxDescriptors))
            route(header, message, fds: packet.fds)
        } catch {
            connectionLost("undecodable packet from server: \(error)")
            close()
            return false
        }
        return true
    }

    private func route(_ header: MessageHeader, _ message: Message, fds: [FileDescriptor]) {
        switch message {
        case .completion(let view):
            var finished: [Batch] = []
            state.withLock { s in
                for i in 0..<view.count {
                    guard let record = try? view.record(at: i) else { continue }
                    let serial = record.cookie >> 16
                    guard let batch = s.batches[serial] else { continue }
                    batch.records[Int(record.cookie & 0xFFFF)] = record
                    batch.remaining -= 1
                    if batch.remaining == 0 {
                        s.batches[serial] = nil
                        for id in batch.requestIDs { s.submitRequests[id] = nil }
                        finished.append(batch)
                    }
                }
            }
            for batch in finished { batch.continuation.resume(returning: batch.records) }
        case .error(let e):
            let error = IOATError.refused(ProtocolError(e.code, e.message, index: e.index == Wire.noIndex ? nil : e.index))
            let (reply, batch): (CheckedContinuation<Reply, any Error>?, Batch?) = state.withLock { s in
                if let c = s.replies.removeValue(forKey: header.requestID) { return (c, nil) }
                if let serial = s.submitRequests[header.requestID], let batch = s.batches.removeValue(forKey: serial) {
                    for id in batch.requestIDs { s.submitRequests[id] = nil }
                    return (nil, batch)
                }
                return (nil, nil)
            }
            reply?.resume(throwing: error)
            batch?.continuation.resume(throwing: error)
        default:
            let reply: Reply
            switch message {
            case .helloReply(let r): reply = .hello(r)
            case .allocReply(let b): reply = .buffer(b, fds.first)
            case .registerReply(let b): reply = .buffer(b, nil)
            case .openReply(let o): reply = .open(o)
            case .freeReply, .closeReply: reply = .ok
            case .statusReply(let json): reply = .status(json)
            default: return
            }
            let c = state.withLock { $0.replies.removeValue(forKey: header.requestID) }
            c?.resume(returning: reply)
        }
    }

    private func connectionLost(_ why: String) {
        let (replies, batches) = state.withLock { s in
            s.lost = s.lost ?? why
            let r = Array(s.replies.values)
            let b = Array(s.batches.values)
            s.replies.removeAll()
            s.batches.removeAll()
            s.submitRequests.removeAll()
            return (r, b)
        }
        for c in replies { c.resume(throwing: IOATError.connectionLost(why)) }
        for b in batches { b.continuation.resume(throwing: IOATError.connectionLost(why)) }
    }
}
