import Foundation
import Glibc
import IOATClient
import IOATEngine
import IOATProtocol
import IOATSystem
import IOATTestKit
import Testing

/// Places where the server once contradicted SPEC.md, found by a client written from the spec alone;
/// each test fails on the old behaviour.
@Suite("the server does what SPEC.md says, over a real socket")
struct SpecConformanceTests {
    @Test("after HELLO_OK, the ERROR refusing another version's frame or a bad magic is framed with the negotiated version (§2.2)",
          arguments: [UInt16(2), 3])
    func refusalFraming(_ negotiated: UInt16) throws {
        let server = try TestServer()
        for bad in ["version 1 frame", "bad magic"] {
            let c = try RawClient(path: server.path, maxVersion: negotiated)
            #expect(c.helloReply?.version == negotiated)
            var p = packet(.status, requestID: 9, version: bad == "bad magic" ? negotiated : 1)
            if bad == "bad magic" { p[0] = 0x58 }
            try c.send(p)
            let answer = try c.receive()
            guard case .error(let e) = answer?.message else {
                Issue.record("\(bad): no ERROR: \(String(describing: answer?.message))")
                continue
            }
            #expect(e.code == (bad == "bad magic" ? .badMagic : .unsupportedVersion))
            #expect(answer?.header.version == negotiated, "\(bad): the ERROR was framed with version \(answer?.header.version ?? 0)")
            #expect(try c.receive() == nil, "the connection closes")
        }
    }

    @Test("rings are granted as §4.3 says: by default, and not with `rings = false` in [server]")
    func ringsSetting() throws {
        let config = temporarySocketPath() + ".toml"
        defer { unlink(config) }
        try "[server]\nrings = false\n".write(toFile: config, atomically: true, encoding: .utf8)
        for (arguments, granted) in [([String](), true), (["--config", config], false)] {
            let server = try TestServer(arguments: arguments)
            let c = try RawClient(path: server.path, maxVersion: 3, features: Wire.featureRings)
            #expect(c.helloReply?.version == 3)
            #expect((c.helloReply?.features ?? 0) & Wire.featureRings == (granted ? Wire.featureRings : 0), "\(arguments)")
        }
    }

    @Test("a 0-byte packet is MALFORMED and the connection goes on (§2.2)")
    func emptyPacket() throws {
        let server = try TestServer()
        let raw = try RawClient(path: server.path)
        let answer = try raw.expectError([])
        #expect(answer?.0 == .malformed && answer?.1.contains("0 bytes") == true, "\(String(describing: answer))")
        #expect(try raw.expectError(packet(.free, body: le(UInt32(12345)) + le(UInt32(0))))?.0 == .badHandle, "still open")
    }

    @Test("TOO_LARGE starts at max_message + 1 bytes (§2.2)")
    func tooLargeBoundary() throws {
        let server = try TestServer()
        let raw = try RawClient(path: server.path)
        let big = packet(.status, body: [UInt8](repeating: 0, count: 65537 - 24), requestID: 31)
        try raw.send(big)
        let answer = try #require(try raw.receive())
        guard case .error(let e) = answer.message else { throw ProtocolError(.internal, "no ERROR") }
        #expect(e.code == .tooLarge && answer.header.requestID == 31, "\(e)")
        #expect(try raw.expectError(packet(.status, body: [UInt8](repeating: 0, count: 65536 - 24)))?.0 == .malformed)
    }

    @Test("REGISTER with five descriptors is MISSING_FD, and every one is closed (§3)")
    func registerWithFiveDescriptors() throws {
        let server = try TestServer()
        let raw = try RawClient(path: server.path)
        let baseline = server.settledFDs()
        let memfds = try (0..<5).map { _ in try IOATClient.makeSealedMemfd(size: 4096) }
        let answer = try raw.expectError(packet(.register, body: le(UInt32(0)) + le(UInt32(0))), fds: memfds.map(\.rawValue))
        #expect(answer?.0 == .missingFD && answer?.1.contains("more than") == true, "\(String(describing: answer))")
        #expect(try raw.expectError(packet(.status), fds: memfds.map(\.rawValue))?.0 == .unexpectedFD)
        #expect(server.openFDs() <= baseline, "server fds \(server.openFDs()) vs baseline \(baseline)")
    }

    @Test("an ERROR that closes the connection reaches a client that pipelined requests behind it (§7)")
    func closingErrorWithPipelinedRequests() throws {
        let server = try TestServer()
        for bad in [packet(.status, version: 9), Array([0x58] + packet(.status).dropFirst())] {
            let raw = try RawClient(path: server.path)
            try raw.send(bad)
            // Pipelined behind it. Once the server has refused the bad packet it takes no more from this
            // client (SPEC.md §7), so a later send may fail with EPIPE: the ERROR is still there to read.
            for i in 0..<16 {
                do {
                    try raw.send(packet(.status, requestID: 100 + UInt64(i)))
                } catch let error as SystemError where error.errno == EPIPE {
                    break
                }
            }
            let answer = try #require(try raw.receive(), "the ERROR was lost")
            guard case .error(let e) = answer.message else { throw ProtocolError(.internal, "no ERROR: \(answer.message.type.name)") }
            #expect(e.code == .unsupportedVersion || e.code == .badMagic)
            #expect(try raw.receive() == nil, "then the end of the stream, not a reset")
        }
    }

    @Test("a 4 KiB ALLOC under a 1 MiB limit is not charged a 2 MiB hugepage (§5.1)")
    func allocUnderSmallLimit() async throws {
        let server = try InProcessServer(engine: try CPUEngine(channelCount: 1, busyPollMicroseconds: 0)) { $0.maxBufferBytes = 1 << 20 }
        defer { server.stop() }
        let client = try await IOATClient.connect(path: server.path)
        let small = try await client.allocate(size: 4096)
        #expect(small.size == 4096 && !small.flags.contains(.hugepages), "\(small.size) \(small.flags)")
        do {
            _ = try await client.allocate(size: 1 << 20)
            Issue.record("1 MiB more was accepted over a 1 MiB limit")
        } catch {
            #expect(error.code == .quotaExceeded)
        }
        do {
            _ = try await client.allocate(size: 4096, pages: .requireHuge)
            Issue.record("a required hugepage buffer was accepted over the limit, or without hugepages")
        } catch {
            #expect(error.code == .quotaExceeded || error.code == .noHugepages, "\(error)")
        }
    }

    @Test("RESERVE and SET_COALESCE before HELLO are NOT_NEGOTIATED, whichever version frames them (§4)")
    func v2RequestsBeforeHello() throws {
        let server = try TestServer()
        let raw = try RawClient(path: server.path, hello: false)
        for version: UInt16 in [1, 2] {
            let reserve = packet(.reserve, body: le(UInt32(1)) + le(UInt32(1)) + le(UInt32(0)) + le(UInt32(0)), version: version)
            #expect(try raw.expectError(reserve)?.0 == .notNegotiated, "RESERVE framed with \(version)")
            #expect(try raw.expectError(packet(.setCoalesce, body: le(UInt32(1)) + le(UInt32(0)), version: version))?.0 == .notNegotiated)
        }
    }

    @Test("two SUBMITs of 512 NULL ops, INT_EN on the last only, arrive as COMPLETIONs of 512 and 512 (§6.4)")
    func fullMessagesOnly() throws {
        let server = try TestServer()
        try expectTwoFullMessages(server.path)
    }
}

/// Sends two SUBMITs of 512 NULL ops to a queue of depth 1024, INT_EN on the very last, and expects the
/// records in two COMPLETIONs of 512: a full message goes out whole, the rest waits for the flush point.
func expectTwoFullMessages(_ path: String) throws {
    for round in 0..<3 {
        let raw = try RawClient.withBufferAndQueue(path, bufferSize: 4096, depth: 1024)
        for s in 0..<2 {
            let ops = (0..<512).map { i in Descriptor.null(flags: s == 1 && i == 511 ? .interrupt : [], cookie: UInt64(s * 512 + i)) }
            try raw.send(Message.encodeSubmit(queue: raw.queue, descriptors: ops, requestID: UInt64(10 + s)))
        }
        var counts: [Int] = []
        var cookies: [UInt64] = []
        while cookies.count < 1024 {
            let answer = try #require(try raw.receive(timeout: 30))
            guard case .completion(let view) = answer.message else {
                Issue.record("round \(round): \(answer.message.type.name) instead of a COMPLETION")
                return
            }
            counts.append(view.count)
            for i in 0..<view.count { cookies.append(try view.record(at: i).cookie) }
        }
        #expect(counts == [512, 512], "round \(round): COMPLETION sizes \(counts)")
        #expect(cookies == (0..<1024).map { UInt64($0) })
    }
}
