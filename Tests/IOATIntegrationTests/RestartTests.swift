import Foundation
import Glibc
import IOATClient
import IOATEngine
import IOATProtocol
import IOATServer
import IOATSystem
import IOATTestKit
import Logging
import Synchronization
import Testing

/// Servers that follow each other on one listening socket and one handover store, in this process: each
/// generation takes over what the one before left in the store (SPEC.md §5.11), as ioatd does under
/// systemd with the store passed back in LISTEN_FDS.
final class Succession: @unchecked Sendable {
    let path: String
    let store: MemoryHandoverStore
    private let listener: FileDescriptor

    /// One server instance, running on a thread of its own.
    final class Generation: @unchecked Sendable {
        let server: IOATServer
        private let thread: OSThread
        fileprivate init(server: IOATServer) {
            self.server = server
            thread = OSThread(name: "ioatd-generation") {
                do throws(SystemError) { try server.run() } catch { print("generation stopped: \(error)") }
            }
        }
        /// Waits for `run` to return (it was asked to stop, hand over or abandon).
        func join() { thread.join() }
    }

    init(storeCapacity: Int = 4096) throws {
        store = MemoryHandoverStore(capacity: storeCapacity)
        path = "/tmp/ioatd-restart-\(getpid())-\(UInt64.random(in: 0..<UInt64.max)).sock"
        listener = try UnixSocket.listen(path: path)
    }

    deinit { unlink(path) }

    /// Starts the next generation on `engine`, taking over what the store holds.
    func start(engine: (any Engine)? = nil, configure: (inout ServerConfiguration) -> Void = { _ in }) throws -> Generation {
        var config = ServerConfiguration(socketPath: path)
        configure(&config)
        var logger = Logger(label: "ioatd-restart-test")
        logger.logLevel = .warning
        let previous = store.previous()
        let server = try IOATServer(configuration: config, engine: engine ?? CPUEngine(channelCount: 1, busyPollMicroseconds: 0),
                                    logger: logger, listener: try listener.duplicate(), store: store,
                                    previous: previous.isEmpty ? nil : previous)
        return Generation(server: server)
    }
}

/// Buffers and a queue of one client, with a batch of copies whose bytes are checked.
struct RestartRig {
    let client: IOATClient
    let source: IOATBuffer
    let destination: IOATBuffer
    let registered: IOATBuffer
    let queue: IOATQueue

    init(path: String, transport: IOATClient.Transport) async throws {
        client = try await IOATClient.connect(path: path, transport: transport)
        source = try await client.allocate(size: 1 << 20, pages: .normal)
        destination = try await client.allocate(size: 1 << 20, pages: .normal)
        registered = try await client.register(memfd: IOATClient.makeSealedMemfd(size: 1 << 20))
        queue = try await client.openQueue(channel: 0, depth: 64)
    }

    /// Eight copies of `length` bytes, op i from source slot i to destination slot i, and the last into
    /// the registered buffer.
    func batch(_ length: Int) -> [Descriptor] {
        (0..<8).map { i in
            .copy(from: source.address(i * 65536), to: i == 7 ? registered.address(0) : destination.address(i * 65536),
                  length: UInt64(length), cookie: UInt64(i))
        }
    }

    /// Whether op i of `batch(length)` copied its bytes, and the byte after its range is untouched (0).
    func copied(_ i: Int, _ length: Int) -> Bool {
        let target = i == 7 ? registered : destination
        let at = i == 7 ? 0 : i * 65536
        return same(source, i * 65536, target, at, length) && target.unsafeBytes(at + length..<at + length + 1)[0] == 0
    }

    /// Fresh source bytes, and zeroed destinations.
    func reset(seed: UInt64) {
        source.fillPseudoRandom(0..<(1 << 20), seed: seed)
        destination.unsafeBytes(0..<(1 << 20)).initializeMemory(as: UInt8.self, repeating: 0)
        registered.unsafeBytes(0..<(1 << 20)).initializeMemory(as: UInt8.self, repeating: 0)
    }

    /// Runs a batch of eight 4000-byte copies and checks every byte.
    func runAndCheck(seed: UInt64) async throws {
        reset(seed: seed)
        let records = try await queue.submit(batch(4000))
        for (i, record) in records.enumerated() {
            #expect(record.status == .success && record.cookie == UInt64(i), "op \(i): \(record.status)")
            #expect(copied(i, 4000), "op \(i): bytes")
        }
    }
}

@Suite("restart: clients carried across a handover and a crash (SPEC.md §5.11)")
struct RestartTests {
    @Test("a handover keeps every connection, buffer, queue and ring: nothing fails, bytes are right, the store empties after")
    func handover() async throws {
        let succession = try Succession()
        let first = try succession.start()
        let ring = try await RestartRig(path: succession.path, transport: .ring)
        let socket = try await RestartRig(path: succession.path, transport: .socket)
        try await ring.runAndCheck(seed: 1)
        try await socket.runAndCheck(seed: 2)
        // Everything the clients hold is in the store: two connections, six buffer files, one ring.
        let names = succession.store.names
        #expect(names.filter { $0.hasPrefix("c") }.count == 2, "\(names)")
        #expect(names.filter { $0.hasPrefix("m") }.count == 6, "\(names)")
        #expect(names.filter { $0.hasPrefix("r") || $0.hasPrefix("d") }.count == 2, "\(names)")
        #expect(names.filter { $0.hasPrefix("state.") }.count == 1, "\(names)")

        first.server.requestHandover()
        // Submitted while no server reads: it waits in the socket (and the ring) for the next instance.
        socket.reset(seed: 3)
        ring.reset(seed: 4)
        async let duringSocket = socket.queue.submit(socket.batch(4000))
        async let duringRing = ring.queue.submit(ring.batch(4000))
        first.join()
        #expect(first.server.currentState == .stopped)
        let second = try succession.start()
        let during = try await (duringSocket, duringRing)
        for (rig, records) in [(socket, during.0), (ring, during.1)] {
            for (i, record) in records.enumerated() {
                #expect(record.status == .success, "op \(i) submitted during the handover: \(record.status)")
                #expect(rig.copied(i, 4000), "op \(i) submitted during the handover: bytes")
            }
            try await rig.runAndCheck(seed: 5)
            #expect(rig.client.serverRestarts.total == 1 && rig.client.serverRestarts.crashes == 0)
        }
        let status = try await statusDocument(socket.client)
        #expect(status.clients.count == 2)

        // A stop after the handover closes everything: the store keeps only the state.
        second.server.requestStop()
        second.join()
        #expect(succession.store.names.allSatisfy { $0.hasPrefix("state.") }, "\(succession.store.names)")
    }

    @Test("a crash: ops in flight complete RESTARTED, in order, on both transports; the connection and its buffers carry on")
    func crash() async throws {
        let succession = try Succession()
        // The first instance never finishes ops of 3000 bytes: they are in flight when it "crashes".
        let held = Atomic<Int>(0)
        let stalling = FaultInjectingEngine(wrapping: try CPUEngine(channelCount: 1, busyPollMicroseconds: 0)) { _, _, op in
            guard op.length == 3000 else { return nil }
            held.add(1, ordering: .relaxed)
            return .delay(microseconds: 600_000_000)
        }
        let first = try succession.start(engine: stalling)
        let ring = try await RestartRig(path: succession.path, transport: .ring)
        let socket = try await RestartRig(path: succession.path, transport: .socket)
        try await ring.runAndCheck(seed: 1)
        try await socket.runAndCheck(seed: 2)
        async let lostSocket = socket.queue.submit(socket.batch(3000))
        async let lostRing = ring.queue.submit(ring.batch(3000))
        try #require(waitUntil(timeout: 20) { held.load(ordering: .relaxed) == 16 }, "16 ops in the first instance's engine")
        first.server.abandon()
        first.join()
        let second = try succession.start()
        let lost = try await (lostSocket, lostRing)
        for (rig, records) in [(socket, lost.0), (ring, lost.1)] {
            #expect(records.count == 8)
            #expect(records.allSatisfy { $0.status == .restarted }, "\(records.map(\.status))")
            try await rig.runAndCheck(seed: 6)
            try await rig.runAndCheck(seed: 7)
            #expect(rig.client.serverRestarts.total == 1 && rig.client.serverRestarts.crashes == 1)
        }
        second.server.requestStop()
        second.join()
    }

    @Test("a state the next instance cannot read is refused: its clients are told GOODBYE, new clients are served")
    func unreadableState() async throws {
        let succession = try Succession()
        let first = try succession.start { $0.stateFormat = 99 }
        let old = try await RestartRig(path: succession.path, transport: .socket)
        try await old.runAndCheck(seed: 1)
        first.server.requestHandover()
        first.join()
        let second = try succession.start()
        await #expect(throws: IOATError.self) { _ = try await old.queue.submit(old.batch(4000)) }
        #expect(old.client.isServerStopping)
        let fresh = try await RestartRig(path: succession.path, transport: .socket)
        try await fresh.runAndCheck(seed: 2)
        // Nothing of the refused instance stays in the store: one connection (the new client's) and its three buffers.
        #expect(succession.store.names.filter { $0.hasPrefix("c") }.count == 1, "\(succession.store.names)")
        #expect(succession.store.names.filter { $0.hasPrefix("m") }.count == 3, "\(succession.store.names)")
        second.server.requestStop()
        second.join()
    }

    @Test("RESYNC where restart support was not granted (no store) is PERMISSION_DENIED; with a store, bit 1 is granted")
    func resyncWithoutFeature() async throws {
        let plain = try InProcessServer(engine: try CPUEngine(channelCount: 1, busyPollMicroseconds: 0))
        let raw = try RawClient(path: plain.path, features: Wire.featureRestart)
        #expect(raw.helloReply!.features & Wire.featureRestart == 0, "a server without a store grants no restart support")
        let refusal = try raw.expectError(packet(.resync, body: [UInt8](repeating: 0, count: 8), requestID: raw.requestID()))
        #expect(refusal?.0 == .permissionDenied && refusal?.1.contains("RESYNC") == true, "\(String(describing: refusal))")

        let succession = try Succession()
        let served = try succession.start()
        let granted = try RawClient(path: succession.path, features: Wire.featureRestart)
        #expect(granted.helloReply!.features & Wire.featureRestart != 0)
        let notOffered = try RawClient(path: succession.path, features: 0)
        let refused = try notOffered.expectError(packet(.resync, body: [UInt8](repeating: 0, count: 8), requestID: notOffered.requestID()))
        #expect(refused?.0 == .permissionDenied, "\(String(describing: refused))")
        served.server.requestStop()
        served.join()
    }

    @Test("after a crash the server discards SUBMITs sent before RESYNC (no record), then runs the ones after it")
    func discardsBeforeResync() async throws {
        let succession = try Succession()
        let first = try succession.start()
        let raw = try RawClient(path: succession.path, features: Wire.featureRestart)
        try raw.send(Message.open(channel: 0, depth: 8).encode(requestID: raw.requestID()))
        guard case .openReply(let opened) = try raw.receive()?.message else { Issue.record("no OPEN_OK"); return }
        first.server.abandon()
        first.join()
        let second = try succession.start()
        guard case .restarted(let notice) = try raw.receive()?.message else { Issue.record("no RESTARTED"); return }
        #expect(notice.lost && notice.restarts == 1)
        try raw.send(Message.encodeSubmit(queue: opened.queue, descriptors: [Descriptor.null(flags: .interrupt, cookie: 1)],
                                          requestID: raw.requestID(), version: Wire.version))
        let resyncID = raw.requestID()
        try raw.send(packet(.resync, body: [UInt8](repeating: 0, count: 8), requestID: resyncID))
        let answer = try raw.receive()
        guard case .resyncReply = answer?.message else { Issue.record("expected RESYNC_OK first, got \(String(describing: answer?.header.type))"); return }
        #expect(answer?.header.requestID == resyncID)
        try raw.send(Message.encodeSubmit(queue: opened.queue, descriptors: [Descriptor.null(flags: .interrupt, cookie: 2)],
                                          requestID: raw.requestID(), version: Wire.version))
        guard let completion = try raw.receive(), case .completion(let view) = completion.message else { Issue.record("no COMPLETION"); return }
        #expect(view.count == 1)
        #expect(try view.record(at: 0).cookie == 2, "the SUBMIT before RESYNC ran or was answered")
        second.server.requestStop()
        second.join()
    }

    @Test("a full restart store refuses a buffer and a connection with QUOTA_EXCEEDED naming the store; the server serves on")
    func storeFull() async throws {
        // Room for a connection and two buffers beside the state.
        let succession = try Succession(storeCapacity: 4)
        let served = try succession.start()
        // Socket transport: a ring would need two more places.
        let client = try await IOATClient.connect(path: succession.path, transport: .socket)
        _ = try await client.allocate(size: 4096, pages: .normal)
        _ = try await client.allocate(size: 4096, pages: .normal)
        do {
            _ = try await client.allocate(size: 4096, pages: .normal)
            Issue.record("a third buffer was accepted past the store's room")
        } catch {
            #expect(error.code == .quotaExceeded && "\(error)".contains("restart store"), "\(error)")
        }
        do {
            _ = try await IOATClient.connect(path: succession.path)
            Issue.record("a second connection was accepted past the store's room")
        } catch {
            #expect(error.code == .quotaExceeded && "\(error)".contains("restart store"), "\(error)")
        }
        // What is stored still works.
        let queue = try await client.openQueue(channel: 0, depth: 8)
        #expect(try await queue.submit(.null()).status == .success)
        served.server.requestStop()
        served.join()
    }

    @Test("ring indices scribbled on while no server ran break that ring at the restore (RING_BROKEN); other queues carry on")
    func scribbledRing() async throws {
        let succession = try Succession()
        let first = try succession.start()
        let ring = try await RestartRig(path: succession.path, transport: .ring)
        let socket = try await RestartRig(path: succession.path, transport: .socket)
        try await ring.runAndCheck(seed: 1)
        first.server.abandon()
        first.join()
        // The ring memory is the client's to write: sq_head (the server's word) far past what the depth allows.
        let name = try #require(succession.store.names.first { $0.hasPrefix("r") })
        let memfd = try #require(succession.store.duplicate(name))
        let mapping = try Mapping(fd: memfd, length: Int(try memfd.size()), writable: true, populate: false)
        mapping.unsafeBase.storeBytes(of: UInt32(1_000_000).littleEndian, toByteOffset: RingLayout.submissionHead, as: UInt32.self)
        let second = try succession.start()
        try #require(waitUntil(timeout: 20) { second.server.currentState == .serving }, "the second instance serves")
        do {
            _ = try await ring.queue.submit(ring.batch(4000))
            Issue.record("a ring with scribbled indices took ops after the restart")
        } catch {
            #expect(error.code == .ringBroken, "\(error)")
        }
        try await socket.runAndCheck(seed: 2)
        second.server.requestStop()
        second.join()
    }
}
