import Foundation
import Glibc
import IOATClient
import IOATConformance
import IOATProtocol
import IOATSystem
import Testing

@Suite("ioatd under hostile and dying clients")
struct RobustnessTests {
    @Test("a client sending garbage does not disturb another client's verified copies")
    func otherClientsUnaffected() async throws {
        let server = try TestServer()
        let good = try await server.connect()
        let worker = Task {
            await ConformanceSuite(iterations: 200, seed: 99, bufferSize: 1 << 20).run(good)
        }
        for round in 0..<20 {
            let raw = try RawClient(path: server.path)
            let cases = BadInputTests.cases(handle: 1, queue: 1, size: 4096)
            for (_, bytes, _) in cases { try raw.send(bytes) }
            if round % 5 == 0 { try raw.send([0x49, 0x4F]) }  // a torn header
        }
        let results = await worker.value
        for r in results where !r.passed { Issue.record("\(r.name): \(r.detail)") }
        #expect(results.allSatisfy { $0.passed }, "\(results.filter { !$0.passed }.map { "\($0.name): \($0.detail)" })")
        #expect(server.process.isRunning)
    }

    @Test("no descriptor leaks: the server's fd count returns to its baseline")
    func noFDLeaks() async throws {
        let server = try TestServer()
        let probe = try await server.connect()
        _ = try await probe.status()
        let baseline = server.settledFDs()
        let ownBaseline = openDescriptorCount()
        for i in 0..<10 {
            let client = try await server.connect()
            let a = try await client.allocate(size: 1 << 20)
            let memfd = try IOATClient.makeSealedMemfd(size: 65536)
            let b = try await client.register(memfd: memfd)
            let q = try await client.openQueue(depth: 8)
            _ = try await q.copy(from: a, to: b, length: 65536)
            if i % 2 == 0 { try await client.free(a) }
            let raw = try RawClient(path: server.path)
            _ = try raw.expectError(packet(.status), fds: [memfd.rawValue])
            _ = try raw.expectError(packet(.register, body: le(UInt32(0)) + le(UInt32(0))), fds: [memfd.rawValue, memfd.rawValue])
            client.close()
        }
        let settled = try await eventually {
            let doc = try await statusDocument(probe)
            return doc.server.connections == 1 && server.openFDs() <= baseline
        }
        #expect(settled, "server fds \(server.openFDs()) vs baseline \(baseline)")
        #expect(await eventually { openDescriptorCount() <= ownBaseline + 1 }, "test process fds \(openDescriptorCount()) vs \(ownBaseline)")
    }

    @Test("a client dropped without close() disconnects; concurrent calls after a lost connection reconnect once")
    func droppedAndReconnectingClients() async throws {
        let server = try TestServer()
        let probe = try await server.connect()
        func connections() async throws -> Int? {
            try await statusDocument(probe).server.connections
        }
        // Dropping the last reference ends the connection even though the server never speaks again.
        do {
            let dropped = try await server.connect()
            _ = try await dropped.allocate(size: 4096)
            #expect(try await connections() == 2)
        }
        let gone = try await eventually { try await connections() == 1 }
        #expect(gone, "a dropped client stayed connected")

        // Eight calls race to reconnect a closed client: one connection wins, the others are closed.
        let client = try await server.connect()
        client.close()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<8 { group.addTask { _ = try await client.status() } }
            try await group.waitForAll()
        }
        #expect(client.reconnectCount == 1)
        let settled = try await eventually { try await connections() == 2 }
        let now = try await connections() ?? -1
        #expect(settled, "\(now) connections, expected the probe and one reconnected client")
    }

    @Test("a client that dies with ops in flight leaves nothing behind")
    func dyingClient() async throws {
        let server = try TestServer()
        let probe = try await server.connect()
        for _ in 0..<5 {
            let raw = try RawClient.withBufferAndQueue(server.path, bufferSize: 64 << 20, depth: 64)
            let ops = (0..<16).map { i in
                Descriptor.copy(from: .init(handle: raw.buffer, offset: 0), to: .init(handle: raw.buffer, offset: 32 << 20), length: 32 << 20, cookie: UInt64(i))
            }
            try raw.send(Message.encodeSubmit(queue: raw.queue, descriptors: ops, requestID: 4))
            // Drop the connection without reading anything.
        }
        let clean = try await eventually {
            let doc = try await statusDocument(probe)
            return doc.server.connections == 1 && doc.buffers.count == 0 && doc.channels.allSatisfy { $0.inEngine == 0 }
        }
        #expect(clean)
        let q = try await probe.openQueue(depth: 4)
        #expect(try await q.submit(.null()).status == .success)
    }

    @Test("a client that never reads its completions stalls only itself")
    func clientThatStopsReading() async throws {
        let server = try TestServer()
        let hog = try RawClient.withBufferAndQueue(server.path, bufferSize: 1 << 20, depth: 1024)
        // Flood: every op asks for its own COMPLETION, and the hog never reads them.
        try hog.fd.setNonBlocking(true)
        var sent = 0
        sending: for batch in 0..<2000 {
            let ops = (0..<64).map { i in Descriptor.null(flags: .interrupt, cookie: UInt64(batch * 64 + i)) }
            do {
                try hog.send(Message.encodeSubmit(queue: hog.queue, descriptors: ops, requestID: UInt64(10 + batch)))
                sent += 1
            } catch {
                break sending  // the server stopped reading from us: the socket is full
            }
        }
        #expect(sent < 2000, "the server kept reading from a client that never reads")
        // Meanwhile another client is served normally.
        let other = try await server.connect()
        let results = await ConformanceSuite(iterations: 50, seed: 5, bufferSize: 1 << 20).run(other)
        #expect(results.allSatisfy { $0.passed }, "\(results.filter { !$0.passed }.map { "\($0.name): \($0.detail)" })")
        let doc = try await statusDocument(other)
        #expect(doc.server.connections == 2)
        // What filled the hog's socket was completions of accepted ops, not refusals.
        try hog.fd.setNonBlocking(false)
        let first = try #require(try hog.receive())
        guard case .completion(let view) = first.message else {
            Issue.record("the hog's first packet is not a COMPLETION: \(first.message.type.name)")
            return
        }
        #expect(try view.record(at: 0).cookie == 0 && view.record(at: 0).status == .success)
    }
}
