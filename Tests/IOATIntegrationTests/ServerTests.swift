import Foundation
import Glibc
import IOATClient
import IOATConformance
import IOATProtocol
import IOATSystem
import Testing

@Suite("ioatd end to end")
struct ServerTests {
    @Test("the conformance suite passes on the CPU engine", arguments: [1, 2])
    func conformance(channels: Int) async throws {
        let server = try TestServer(arguments: ["--channels", "\(channels)"])
        let client = try await server.connect()
        #expect(client.server.channels.count == channels)
        for channel in 0..<channels {
            let results = await ConformanceSuite(iterations: 150, seed: UInt64(channel + 1), bufferSize: 1 << 20, channel: UInt32(channel))
                .run(client)
            for r in results where !r.passed { Issue.record("channel \(channel): \(r.name): \(r.detail)") }
            #expect(results.count >= 8)
        }
    }

    @Test("handshake reports limits and channels; default socket path rule")
    func handshake() async throws {
        let server = try TestServer(arguments: ["--channels", "3"])
        let client = try await server.connect()
        #expect(client.server.version == Wire.version)
        #expect(client.server.maxDescriptors == 512)
        #expect(client.server.channels.map(\.index) == [0, 1, 2])
        #expect(client.server.channels.allSatisfy { $0.engine == .cpu && $0.supports(.copyCRC32C) })
        #expect(SocketPath.resolved(environment: ["IOATD_SOCKET": "/x.sock"], uid: 0) == "/x.sock")
        #expect(SocketPath.resolved(environment: [:], uid: 0) == "/run/ioatd/ioatd.sock")
        #expect(SocketPath.resolved(environment: ["XDG_RUNTIME_DIR": "/run/user/5"], uid: 5) == "/run/user/5/ioatd.sock")
        #expect(SocketPath.resolved(environment: [:], uid: 5) == "/tmp/ioatd-5.sock")
    }

    @Test("over the socket, completions of many queued ops arrive batched, in order, with INT_EN only on the last")
    func batchedCompletions() async throws {
        let server = try TestServer()
        let client = try await IOATClient.connect(path: server.path, transport: .socket)
        let a = try await client.allocate(size: 1 << 20)
        let b = try await client.allocate(size: 1 << 20)
        let queue = try await client.openQueue(depth: 256)
        a.fillPseudoRandom(0..<(1 << 20), seed: 3)
        let ops = (0..<256).map { i in Descriptor.copy(from: a.address(i * 4096), to: b.address(i * 4096), length: 4096, cookie: UInt64(i)) }
        let before = client.packetCounts
        let records = try await queue.submit(ops)
        let after = client.packetCounts
        #expect(records.map(\.cookie) == (0..<256).map { UInt64($0) })
        #expect(records.allSatisfy { $0.status == .success })
        #expect(a.read(at: 0, count: 1 << 20) == b.read(at: 0, count: 1 << 20))
        // One SUBMIT; completions come in far fewer messages than ops.
        #expect(after.sent - before.sent == 1)
        #expect(after.received - before.received < 64)
    }

    /// Four 64 MiB copies inside buffer 1: tens of milliseconds of work.
    func longCopies(_ raw: RawClient) -> [Descriptor] {
        (0..<4).map { i in
            Descriptor.copy(from: .init(handle: raw.buffer, offset: 0), to: .init(handle: raw.buffer, offset: 128 << 20), length: 64 << 20,
                            cookie: UInt64(i))
        }
    }

    /// Reads packets until `count` completion records arrived; returns them and any ERROR codes seen.
    func collect(_ raw: RawClient, records count: Int) throws -> [CompletionRecord] {
        var records: [CompletionRecord] = []
        while records.count < count {
            guard let answer = try raw.receive(timeout: 30) else { throw ProtocolError(.internal, "connection closed") }
            try answer.storage.withUnsafeBytes { bytes in
                guard case .completion(let view) = try Message.decode(bytes).1 else { return }
                for i in 0..<view.count { records.append(try view.record(at: i)) }
            }
        }
        return records
    }

    @Test("a SUBMIT over the queue's free credits waits, and NO_WAIT refuses it")
    func creditsAndNoWait() throws {
        let server = try TestServer()
        let raw = try RawClient.withBufferAndQueue(server.path, bufferSize: 256 << 20, depth: 4)
        try raw.send(Message.encodeSubmit(queue: raw.queue, descriptors: longCopies(raw), requestID: 10))
        // The queue has no free credit now: NO_WAIT is refused at once, before any copy completes.
        let refused = try raw.expectError(Message.encodeSubmit(queue: raw.queue, descriptors: [.null(flags: .noWait, cookie: 9)], requestID: 11))
        #expect(refused?.0 == .noSpace, "\(String(describing: refused))")
        // Without NO_WAIT the SUBMIT waits for credits, then runs after the copies.
        try raw.send(Message.encodeSubmit(queue: raw.queue, descriptors: [.fill(.init(handle: raw.buffer, offset: 200 << 20), length: 4096,
                                                                         pattern: 0x1111_1111_1111_1111, cookie: 7)], requestID: 12))
        let records = try collect(raw, records: 5)
        #expect(records.map(\.cookie) == [0, 1, 2, 3, 7])
        #expect(records.allSatisfy { $0.status == .success })
    }

    @Test("CLOSE with outstanding ops is BUSY; FREE of a busy buffer defers the unmap")
    func closeBusyAndFreeInFlight() async throws {
        let server = try TestServer()
        let raw = try RawClient.withBufferAndQueue(server.path, bufferSize: 256 << 20, depth: 4)
        try raw.send(Message.encodeSubmit(queue: raw.queue, descriptors: longCopies(raw), requestID: 10))
        #expect(try raw.expectError(packet(.close, body: le(raw.queue) + le(UInt32(0)), requestID: 11))?.0 == .busy)
        // FREE succeeds at once; the server keeps the mapping until the copies are done.
        try raw.send(packet(.free, body: le(raw.buffer) + le(UInt32(0)), requestID: 12))
        var sawFree = false
        var records = 0
        while !sawFree || records < 4 {
            guard let answer = try raw.receive(timeout: 30) else { break }
            if case .freeReply = answer.message { sawFree = true }
            try answer.storage.withUnsafeBytes { bytes in
                if case .completion(let view) = try Message.decode(bytes).1 {
                    for i in 0..<view.count { #expect(try view.record(at: i).status == .success) }
                    records += view.count
                }
            }
        }
        #expect(sawFree && records == 4)
        try raw.send(packet(.close, body: le(raw.queue) + le(UInt32(0)), requestID: 13))
        guard case .closeReply = try raw.receive()?.message else { Issue.record("no CLOSE_OK once idle"); return }
        let probe = try await server.connect()
        let doc = try await statusDocument(probe)
        #expect(doc.buffers.count == 0)
    }

    @Test("SIGTERM stops the server with status 0, and the socket file it made goes with it")
    func gracefulStop() async throws {
        let server = try TestServer()
        let client = try await server.connect()
        _ = try await client.status()
        #expect(access(server.path, F_OK) == 0)
        #expect(server.stop() == 0)
        #expect(access(server.path, F_OK) != 0, "\(server.path) was left behind")
    }

    @Test("a socket file another server has since put at the path is left alone")
    func replacedSocketKept() async throws {
        let server = try TestServer()
        // Another server's socket now at the path (a restart while this one drains, say).
        unlink(server.path)
        let other = try UnixSocket.listen(path: server.path)
        #expect(server.stop() == 0)
        #expect(access(server.path, F_OK) == 0, "a socket this server did not make was removed")
        _ = other
    }
}

@Suite("ioatd refuses bad input")
struct BadInputTests {
    /// (name, packet to send after HELLO, expected code)
    static func cases(handle: UInt32, queue: UInt32, size: UInt64) -> [(String, [UInt8], ErrorCode)] {
        func submit(_ d: Descriptor, queue q: UInt32 = queue) -> [UInt8] {
            Message.encodeSubmit(queue: q, descriptors: [d], requestID: 7)
        }
        let h = handle
        return [
            ("unknown type", packet(.status).enumerated().map { $0.offset == 6 ? 0x7F : $0.element }, .unknownType),
            ("reserved header field", packet(.status).enumerated().map { $0.offset == 12 ? 1 : $0.element }, .reservedNotZero),
            ("length mismatch", Array(packet(.status)) + [0, 0, 0, 0], .malformed),
            ("truncated header", Array(packet(.status).prefix(10)), .malformed),
            ("second HELLO", Message.hello(Hello()).encode(requestID: 7), .alreadyNegotiated),
            ("server-only type", packet(.freeReply), .unexpectedType),
            ("FREE of an unknown handle", packet(.free, body: le(UInt32(999)) + le(UInt32(0))), .badHandle),
            ("OPEN of a channel that does not exist", packet(.open, body: le(UInt32(77)) + le(UInt32(4))), .badChannel),
            ("OPEN with depth 0", packet(.open, body: le(UInt32(0)) + le(UInt32(0))), .badDepth),
            ("OPEN deeper than the maximum", packet(.open, body: le(UInt32(0)) + le(UInt32(1 << 20))), .badDepth),
            ("CLOSE of an unknown queue", packet(.close, body: le(UInt32(55)) + le(UInt32(0))), .badQueue),
            ("ALLOC beyond the byte quota", packet(.alloc, body: le(UInt64(5 << 30)) + le(UInt32(0)) + le(UInt32(0))), .quotaExceeded),
            ("ALLOC of 2^64-1 bytes", packet(.alloc, body: le(UInt64.max) + le(UInt32(0)) + le(UInt32(0))), .badLength),
            ("REGISTER with no memfd", packet(.register, body: le(UInt32(0)) + le(UInt32(0))), .missingFD),
            ("SUBMIT to an unknown queue", submit(.null(), queue: 42), .badQueue),
            ("SUBMIT with an unknown handle", submit(.copy(from: .init(handle: 999, offset: 0), to: .init(handle: h, offset: 0), length: 8)),
             .badHandle),
            ("SUBMIT past the end", submit(.copy(from: .init(handle: h, offset: size - 7), to: .init(handle: h, offset: 0), length: 8)),
             .outOfRange),
            ("SUBMIT destination past the end", submit(.fill(.init(handle: h, offset: size), length: 1, pattern: 0)), .outOfRange),
            ("SUBMIT with offset overflow", submit(.copy(from: .init(handle: h, offset: .max), to: .init(handle: h, offset: 0), length: 2)),
             .overflow),
            ("SUBMIT with length overflow", submit(.crc32c(of: .init(handle: h, offset: 8), length: .max - 3)), .overflow),
            ("SUBMIT with length zero", submit(.copy(from: .init(handle: h, offset: 0), to: .init(handle: h, offset: 64), length: 0)),
             .badLength),
            ("SUBMIT with an unknown opcode", Message.encodeSubmit(queue: queue, descriptors: [.null()], requestID: 7).enumerated().map {
                $0.offset == 32 ? 0x7F : $0.element
            }, .unknownOpcode),
            ("SUBMIT with an unknown flag", Message.encodeSubmit(queue: queue, descriptors: [.null()], requestID: 7).enumerated().map {
                $0.offset == 35 ? 0x40 : $0.element
            }, .unknownFlags),
            ("SUBMIT with CRC_SEED on FILL", submit(Descriptor(opcode: .fill, flags: .crcSeed, length: 8, destination: .init(handle: h, offset: 0))),
             .badFlags),
            ("SUBMIT of more than the depth", Message.encodeSubmit(queue: queue, descriptors: Array(repeating: .null(), count: 9), requestID: 7),
             .badCount),
            ("SUBMIT of zero descriptors", packet(.submit, body: le(queue) + le(UInt32(0))), .badCount),
        ]
    }

    @Test("each bad request gets its code and a message; the connection keeps working")
    func badRequests() async throws {
        let server = try TestServer()
        let raw = try RawClient(path: server.path)
        try raw.send(packet(.alloc, body: le(UInt64(65536)) + le(UInt32(0)) + le(UInt32(0)), requestID: 2))
        guard case .allocReply(let buffer) = try raw.receive()?.message else { Issue.record("no ALLOC_OK"); return }
        try raw.send(packet(.open, body: le(UInt32(0)) + le(UInt32(8)), requestID: 3))
        guard case .openReply(let queue) = try raw.receive()?.message else { Issue.record("no OPEN_OK"); return }
        for (name, bytes, code) in Self.cases(handle: buffer.handle, queue: queue.queue, size: buffer.size) {
            guard let (got, message) = try raw.expectError(bytes) else {
                Issue.record("\(name): no ERROR came back")
                continue
            }
            #expect(got == code, "\(name): got \(got.name) (\(message))")
            #expect(!message.isEmpty, "\(name)")
        }
        // Still usable: a good copy works.
        try raw.send(Message.encodeSubmit(queue: queue.queue, descriptors: [
            .copy(from: .init(handle: buffer.handle, offset: 0), to: .init(handle: buffer.handle, offset: 4096), length: 8, flags: .interrupt, cookie: 5),
        ], requestID: 8))
        let answer = try raw.receive()
        guard let answer, case .completion = answer.message else { Issue.record("no COMPLETION after the bad requests"); return }
        let record = try answer.storage.withUnsafeBytes { raw -> CompletionRecord in
            guard case .completion(let view) = try Message.decode(raw).1 else { throw ProtocolError(.malformed, "x") }
            return try view.record(at: 0)
        }
        #expect(record.cookie == 5 && record.status == .success)
    }

    @Test("error messages name the bad value, and say which descriptor as each transport names it",
          arguments: [IOATClient.Transport.socket, .ring])
    func messagesNameValues(transport: IOATClient.Transport) async throws {
        let server = try TestServer()
        let client = try await IOATClient.connect(path: server.path, transport: transport)
        let buffer = try await client.allocate(size: 8192, pages: .normal)
        let queue = try await client.openQueue(depth: 4)
        do {
            _ = try await queue.submit([.null(), .copy(from: buffer.address(4096), to: buffer.address(0), length: 8192)])
            Issue.record("accepted")
        } catch {
            guard case .refused(let e) = error else { Issue.record("\(error)"); return }
            #expect(e.code == .outOfRange)
            #expect(e.index == 1, "the index in the batch is data")
            let why = "source offset 4096 + length 8192 exceeds buffer \(buffer.handle) (size 8192)"
            // The text is composed once, by the server, where it sends it: a SUBMIT names the descriptor,
            // a ring its queue and entry (the second of a fresh ring).
            let expected = transport == .socket ? "descriptor 1: \(why)" : "queue \(queue.id), ring entry 1: \(why)"
            #expect(e.message == expected)
        }
    }

    @Test("requests before HELLO are refused; framing errors close the connection")
    func framing() throws {
        let server = try TestServer()
        let early = try RawClient(path: server.path, hello: false)
        #expect(try early.expectError(packet(.status, version: 1))?.0 == .notNegotiated)
        for bytes in [packet(.status).enumerated().map { $0.offset == 0 ? 0x58 : $0.element }, packet(.status, version: 9)] {
            let raw = try RawClient(path: server.path)
            let answer = try raw.expectError(bytes)
            #expect(answer?.0 == .badMagic || answer?.0 == .unsupportedVersion)
            #expect(try raw.receive() == nil, "connection should be closed after a framing error")
        }
        // A client that speaks only versions this server does not.
        let old = try RawClient(path: server.path, hello: false)
        #expect(try old.expectError(Message.hello(Hello(minVersion: Wire.version + 1, maxVersion: Wire.version + 4)).encode(requestID: 1))?.0 == .unsupportedVersion)
    }

    @Test("a packet larger than the maximum is TOO_LARGE")
    func oversized() throws {
        let server = try TestServer()
        let raw = try RawClient(path: server.path)
        var big = packet(.status, body: [UInt8](repeating: 0, count: 70000 - 24))
        big.replaceSubrange(8..<12, with: le(UInt32(big.count)))
        #expect(try raw.expectError(big)?.0 == .tooLarge)
        #expect(try raw.expectError(packet(.free, body: le(UInt32(12345)) + le(UInt32(0))))?.0 == .badHandle)
    }

    @Test("descriptors passed where none belong are refused and closed; REGISTER checks memfd and seals")
    func descriptors() async throws {
        let server = try TestServer()
        let raw = try RawClient(path: server.path)
        let baseline = server.settledFDs()
        var pipeFDs: [Int32] = [0, 0]
        #expect(pipe(&pipeFDs) == 0)
        let pipeRead = FileDescriptor(owning: pipeFDs[0])
        let pipeWrite = FileDescriptor(owning: pipeFDs[1])
        let registerBody = le(UInt32(0)) + le(UInt32(0))
        #expect(try raw.expectError(packet(.status), fds: [pipeRead.rawValue])?.0 == .unexpectedFD)
        #expect(try raw.expectError(packet(.register, body: registerBody), fds: [pipeRead.rawValue])?.0 == .notMemfd)
        #expect(try raw.expectError(packet(.register, body: registerBody), fds: [pipeRead.rawValue, pipeWrite.rawValue])?.0 == .missingFD)
        let unsealed = try Memfd.create(name: "unsealed", size: 4096, hugepages: false)
        #expect(try raw.expectError(packet(.register, body: registerBody), fds: [unsealed.rawValue])?.0 == .notSealed)
        let empty = try Memfd.create(name: "empty", size: 0, hugepages: false)
        try Memfd.addSeals([.shrink], to: empty)
        #expect(try raw.expectError(packet(.register, body: registerBody), fds: [empty.rawValue])?.0 == .badLength)
        let path = "/tmp/ioatd-test-regular-\(getpid())"
        _ = FileManager.default.createFile(atPath: path, contents: Data(count: 4096))
        defer { unlink(path) }
        let regular = FileDescriptor(owning: open(path, O_RDWR | O_CLOEXEC))
        #expect(try raw.expectError(packet(.register, body: registerBody), fds: [regular.rawValue])?.0 == .notMemfd)
        // Every refused descriptor was closed by the server (before it answered).
        #expect(server.openFDs() <= baseline, "server fds \(server.openFDs()) vs baseline \(baseline)")
    }

    @Test("a write-sealed memfd registers read-only: a source, never a destination")
    func readOnlyRegistration() async throws {
        let server = try TestServer()
        let client = try await server.connect()
        let memfd = try IOATClient.makeSealedMemfd(size: 8192)
        let text = Array("read only source".utf8)
        _ = text.withUnsafeBytes { pwrite(memfd.rawValue, $0.baseAddress, $0.count, 0) }
        try Memfd.addSeals([.write], to: memfd)
        let ro = try await client.register(memfd: memfd)
        #expect(ro.flags.contains(.readOnly))
        let dst = try await client.allocate(size: 4096)
        let queue = try await client.openQueue(depth: 4)
        #expect(try await queue.copy(from: ro, to: dst, length: text.count).status == .success)
        #expect(dst.read(at: 0, count: text.count) == text)
        do {
            _ = try await queue.copy(from: dst, to: ro, length: 8)
            Issue.record("copy into a read-only buffer was accepted")
        } catch {
            #expect(error.code == .readOnly)
        }
    }

    @Test("handles and queues of one connection mean nothing on another")
    func isolation() async throws {
        let server = try TestServer()
        let alice = try await server.connect()
        let bob = try await server.connect()
        let secret = try await alice.allocate(size: 4096)
        secret.write(Array("alice's bytes".utf8), at: 0)
        let aliceQueue = try await alice.openQueue(depth: 4)
        let bobQueue = try await bob.openQueue(depth: 4)
        // Bob has no buffers: alice's handle number names nothing for him. A raw descriptor, so the server
        // is what refuses it (the client library would already refuse a buffer of another connection).
        #expect(!secret.isUsable(on: bobQueue))
        do {
            _ = try await bobQueue.submit(.fill(secret.address(0), length: 13, pattern: 0))
            Issue.record("bob wrote through alice's handle number")
        } catch {
            #expect(error.code == .badHandle)
        }
        #expect(secret.read(at: 0, count: 13) == Array("alice's bytes".utf8))
        // Alice's queue id names nothing on another connection either: the SUBMIT is refused BAD_QUEUE. (A
        // raw connection, so that an accepted SUBMIT shows as a COMPLETION instead of the awaited ERROR.)
        let carol = try RawClient(path: server.path)
        let refusal = try carol.expectError(Message.encodeSubmit(queue: aliceQueue.id, descriptors: [.null(flags: .interrupt)],
                                                                 requestID: carol.requestID()))
        #expect(refusal?.0 == .badQueue, "alice's queue \(aliceQueue.id) on another connection: \(String(describing: refusal))")
        #expect(refusal?.1.contains("\(aliceQueue.id)") == true)
        // Handle numbers are server-wide: once bob has buffers of his own, alice's number is still not one
        // of them, and still refused.
        var mine: [IOATBuffer] = []
        for _ in 0..<4 { mine.append(try await bob.allocate(size: 4096)) }
        #expect(!mine.contains { $0.handle == secret.handle })
        do {
            _ = try await bobQueue.submit(.copy(from: secret.address(0), to: mine[0].address(0), length: 13))
            Issue.record("bob read through alice's handle number")
        } catch {
            #expect(error.code == .badHandle)
            #expect("\(error)".contains("\(secret.handle)"), "\(error)")
        }
        #expect(mine[0].read(at: 0, count: 13) == [UInt8](repeating: 0, count: 13))
        #expect(secret.read(at: 0, count: 13) == Array("alice's bytes".utf8))
    }
}

@Suite("ioatd refuses bad version-2 input")
struct BadInputV2Tests {
    @Test("bad entries in SG and XOR lists, and RESERVE / SET_COALESCE on unknown queues, get their codes")
    func listsAndQueueRequests() async throws {
        let server = try TestServer()
        let client = try await server.connect()
        let a = try await client.allocate(size: 65536)
        let list = try await client.allocate(size: 4096)
        let queue = try await client.openQueue(depth: 8)
        func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        func sgEntry(src: UInt32, dst: UInt32, length: UInt64) -> [UInt8] {
            le(src) + le(dst) + le(UInt64(0)) + le(UInt64(4096)) + le(length)
        }
        let cases: [(String, [UInt8], Descriptor, ErrorCode)] = [
            ("SG entry of length 0", sgEntry(src: a.handle, dst: a.handle, length: 0),
             Descriptor(opcode: .copySG, length: 8, auxiliary: list.address(0), arg: 1), .badLength),
            ("SG entry with an unopened handle", sgEntry(src: 0xBEEF, dst: a.handle, length: 8),
             Descriptor(opcode: .copySG, length: 8, auxiliary: list.address(0), arg: 1), .badHandle),
            // The destination starts at 4096, so a.size bytes (whatever ALLOC rounded to) run past the end.
            ("SG entry past the end", sgEntry(src: a.handle, dst: a.handle, length: UInt64(a.size)),
             Descriptor(opcode: .copySG, length: UInt64(a.size), auxiliary: list.address(0), arg: 1), .outOfRange),
            ("XOR source with a reserved field", le(a.handle) + le(UInt32(1)) + le(UInt64(0)) + le(a.handle) + le(UInt32(0)) + le(UInt64(8)),
             Descriptor(opcode: .xor, length: 8, destination: a.address(4096), auxiliary: list.address(0), arg: 2), .reservedNotZero),
        ]
        for (name, entries, descriptor, code) in cases {
            list.write(entries, at: 0)
            do {
                let r = try await queue.submit(descriptor)
                Issue.record("\(name): accepted with \(r.status)")
            } catch {
                #expect(error.code == code, "\(name): \(error)")
            }
        }
        let raws: [(String, Message, ErrorCode)] = [
            ("RESERVE on an unknown queue", .reserve(queue: 99, credits: 1, noWait: false), .badQueue),
            ("SET_COALESCE on an unknown queue", .setCoalesce(queue: 99, microseconds: 10), .badQueue),
        ]
        for (name, message, code) in raws {
            do {
                _ = try await client.rawRequest(message.encode(requestID: client.reserveRequestID(), version: client.server.version))
                Issue.record("\(name): accepted")
            } catch {
                #expect(error.code == code, "\(name): \(error)")
            }
        }
    }
}
