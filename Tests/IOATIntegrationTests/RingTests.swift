import Foundation
import Glibc
import CIOATRing
@testable import IOATClient
import IOATConformance
import IOATProtocol
import IOATSystem
import Synchronization
import Testing

/// Ring queues (protocol version 3, SPEC.md §5.10) against a real ioatd.
@Suite("ring queues")
struct RingTests {
    @Test("IOATQueue runs over a ring when granted: copies byte-checked, guard bytes untouched, no SUBMIT sent")
    func queueOverRing() async throws {
        let server = try TestServer()
        let client = try await server.connect()
        #expect(client.server.version == 3)
        #expect(client.ringsGranted)
        let a = try await client.allocate(size: 1 << 20)
        let b = try await client.allocate(size: 1 << 20)
        a.fillPseudoRandom(0..<(1 << 20), seed: 11)
        b.write([UInt8](repeating: 0xA5, count: 1 << 20), at: 0)
        let queue = try await client.openQueue(depth: 64)
        #expect(queue.isRing)
        let before = client.packetCounts
        // 300 descriptors through a ring of 64 slots: the client feeds them in as room frees.
        let ops = (0..<300).map { i in
            Descriptor.copy(from: a.address(i * 3000 + 1), to: b.address(i * 3000 + 8), length: 2990, cookie: UInt64(1000 + i))
        }
        let records = try await queue.submit(ops)
        #expect(records.map(\.cookie) == (0..<300).map { UInt64(1000 + $0) })
        #expect(records.allSatisfy { $0.status == .success && $0.bytesDone == 2990 })
        for i in 0..<300 {
            #expect(b.read(at: i * 3000 + 8, count: 2990) == a.read(at: i * 3000 + 1, count: 2990), "copy \(i)")
            #expect(b.read(at: i * 3000, count: 8) == [UInt8](repeating: 0xA5, count: 8), "guard bytes before copy \(i)")
            #expect(b.read(at: i * 3000 + 2998, count: 2) == [0xA5, 0xA5], "guard bytes after copy \(i)")
        }
        // The ops went through shared memory, not the socket.
        #expect(client.packetCounts.sent == before.sent)
        let crc = try await queue.crc32c(of: a, length: 1 << 20)
        #expect(crc == ReferenceCRC32C.checksum(a.read(at: 0, count: 1 << 20)))
        try await queue.close()
    }

    @Test("a refused ring descriptor completes with its refusal as status; the queue goes on, and a FENCE behind it is NOT_ATTEMPTED")
    func refusalsAreRecords() async throws {
        let server = try TestServer()
        let client = try await server.connect()
        // 4 KiB pages, so the buffers are exactly 64 KiB (hugepages would round them up).
        let a = try await client.allocate(size: 65536, pages: .normal)
        let b = try await client.allocate(size: 65536, pages: .normal)
        a.fillPseudoRandom(0..<65536, seed: 5)
        let ring = try await client.openRing(depth: 16)
        let ops: [Descriptor] = [
            .copy(from: a.address(0), to: b.address(0), length: 100, cookie: 1),
            .copy(from: a.address(0), to: BufferAddress(handle: 0xDEAD, offset: 0), length: 100, cookie: 2),  // BAD_HANDLE
            .copy(from: a.address(65000), to: b.address(0), length: 1000, cookie: 3),  // OUT_OF_RANGE
            .copy(from: a.address(200), to: b.address(200), length: 100, flags: .fence, cookie: 4),  // behind failures
            .copy(from: a.address(300), to: b.address(300), length: 100, cookie: 5),
        ]
        for d in ops { #expect(ring.push(d)) }
        var unknown = [UInt8](repeating: 0, count: 64)
        unknown[0] = 99  // UNKNOWN_OPCODE
        unknown[8] = 6   // cookie 6
        unknown.withUnsafeBytes { #expect(ring.push(raw: $0)) }
        try ring.submit()
        try ring.wait(for: 6, timeoutMilliseconds: 10_000)
        var records: [CompletionRecord] = []
        ring.reap { records.append($0) }
        #expect(records.map(\.cookie) == [1, 2, 3, 4, 5, 6])
        #expect(records.map(\.status) == [.success, .refused(.badHandle), .refused(.outOfRange), .notAttempted, .success, .refused(.unknownOpcode)])
        #expect(records[5].opcode == 99)
        #expect(records[1].status.name == "REFUSED_BAD_HANDLE")
        #expect(b.read(at: 0, count: 100) == a.read(at: 0, count: 100))
        #expect(b.read(at: 200, count: 100) == [UInt8](repeating: 0, count: 100), "the NOT_ATTEMPTED copy did not run")
        #expect(b.read(at: 300, count: 100) == a.read(at: 300, count: 100))
        #expect(ring.brokenCode == nil)
        try await ring.close()
    }

    /// Issue 23: a client that rewrites a COPY_SG or XOR list the moment it sees sq_head pass the
    /// descriptor must not change what runs (SPEC.md §5.10.2: sq_head moves once the lists are read).
    /// Each list is rewritten to name other source bytes and, for COPY_SG, an entry past its buffer.
    @Test("lists are read before sq_head passes their descriptor: rewriting them at once changes nothing that runs",
          arguments: [Opcode.copySG, .xor])
    func listsReadBeforeHandBack(_ opcode: Opcode) async throws {
        let server = try TestServer()
        let client = try await server.connect()
        let ops = 64, entries = 16, chunk = 64
        let size = ops * entries * chunk
        let old = try await client.allocate(size: size)
        let other = try await client.allocate(size: size)
        let dst = try await client.allocate(size: size)
        let lists = try await client.allocate(size: ops * entries * ScatterGatherEntry.size)
        old.fillPseudoRandom(0..<size, seed: 11)
        other.fillPseudoRandom(0..<size, seed: 12)
        let listBytes = opcode == .copySG ? ScatterGatherEntry.size : XorSource.size
        // Op i: COPY_SG copies chunk j of `source` to chunk j of dst, for its 16 chunks; XOR takes its 16
        // chunks of `source` as sources of one chunk of dst.
        func list(_ i: Int, from source: IOATBuffer, sabotaged: Bool) -> [UInt8] {
            var w = WireWriter()
            for j in 0..<entries {
                let at = (i * entries + j) * chunk
                if opcode == .copySG {
                    ScatterGatherEntry(source: source.address(at), destination: dst.address(at),
                                       length: sabotaged && j == 1 ? UInt64(size) : UInt64(chunk)).encode(into: &w)
                } else {
                    XorSource(source.address(at)).encode(into: &w)
                }
            }
            return w.bytes
        }
        func expected() -> [UInt8] {
            if opcode == .copySG { return old.read(at: 0, count: size) }
            var out = [UInt8](repeating: 0, count: size)
            let bytes = old.read(at: 0, count: size)
            for i in 0..<ops {
                for j in 0..<entries {
                    for k in 0..<chunk { out[i * chunk + k] ^= bytes[(i * entries + j) * chunk + k] }
                }
            }
            return out
        }
        let ring = try await client.openRing(depth: ops)
        let sqHead = ring.memory.ring.pointee.sq_head!
        for round in 0..<3 {
            for i in 0..<ops { lists.write(list(i, from: old, sabotaged: false), at: i * entries * listBytes) }
            dst.write([UInt8](repeating: 0, count: size), at: 0)
            let start = ioatd_load_acquire(sqHead)
            for i in 0..<ops {
                let d = Descriptor(opcode: opcode, cookie: UInt64(i), length: UInt64(opcode == .copySG ? entries * chunk : chunk),
                                   destination: opcode == .xor ? dst.address(i * chunk) : .none,
                                   auxiliary: lists.address(i * entries * listBytes), arg: UInt64(entries))
                #expect(ring.push(d))
            }
            try ring.submit()
            // As each descriptor's slot is handed back, its list names other bytes (and a bad entry).
            var rewritten = 0
            let deadline = Date().addingTimeInterval(20)
            while rewritten < ops && Date() < deadline {
                let passed = Int(ioatd_load_acquire(sqHead) &- start)
                while rewritten < passed {
                    lists.write(list(rewritten, from: other, sabotaged: true), at: rewritten * entries * listBytes)
                    rewritten += 1
                }
            }
            #expect(rewritten == ops, "round \(round): sq_head passed \(rewritten) of \(ops) descriptors")
            var statuses: [UInt64: CompletionStatus] = [:]
            while statuses.count < ops {
                _ = try ring.wait(for: 1, timeoutMilliseconds: 10_000)
                _ = ring.reap { statuses[$0.cookie] = $0.status }
            }
            #expect(statuses.values.allSatisfy { $0 == .success }, "round \(round): \(statuses.filter { $0.value != .success })")
            let got = dst.read(at: 0, count: opcode == .copySG ? size : ops * chunk)
            let want = expected()
            let wrong = (0..<(got.count / chunk)).filter { got[$0 * chunk..<($0 + 1) * chunk] != want[$0 * chunk..<($0 + 1) * chunk] }
            #expect(wrong.count == 0, "round \(round): \(wrong.count) of \(got.count / chunk) chunks ran from the rewritten lists")
        }
        try await ring.close()
    }

    @Test("indices past the ring break only that queue, with RING_BROKEN naming the value; the connection and other queues go on")
    func brokenIndices() async throws {
        let server = try TestServer()
        let client = try await server.connect()
        let a = try await client.allocate(size: 4096)
        let b = try await client.allocate(size: 4096)
        let bad = try await client.openRing(depth: 8)
        let good = try await client.openQueue(depth: 8)
        // A submission tail 1000 entries ahead of the head the server keeps.
        ioatd_store_release(bad.memory.ring.pointee.sq_tail, 1000)
        bad.memory.ring.pointee.sq_tail_local = 1000
        try? bad.memory.submit()
        _ = ioatd_ring_kick(bad.memory.ring)
        #expect(await eventually { bad.brokenCode == .ringBroken })
        #expect(throws: IOATError.self) { try bad.wait(for: 1, timeoutMilliseconds: 5000) }
        a.fillPseudoRandom(0..<4096, seed: 9)
        let record = try await good.copy(from: a, to: b, length: 4096)
        #expect(record.status == .success)
        #expect(b.read(at: 0, count: 4096) == a.read(at: 0, count: 4096))
        #expect(server.log.contains("sq_tail 1000 is 1000 entries ahead of sq_head 0; the ring holds 8"))
        try await bad.close()  // nothing outstanding: CLOSE works on a broken ring
    }

    @Test("the socket transport still runs SUBMIT and COMPLETION; a version-2 client is served without rings")
    func socketTransport() async throws {
        let server = try TestServer()
        let client = try await IOATClient.connect(path: server.path, transport: .socket)
        #expect(!client.ringsGranted)
        let queue = try await client.openQueue(depth: 8)
        #expect(!queue.isRing)
        let a = try await client.allocate(size: 4096)
        let before = client.packetCounts
        _ = try await queue.fill(a, length: 4096, pattern: 0x0102_0304_0506_0708)
        #expect(client.packetCounts.sent == before.sent + 1)
        #expect(a.read(at: 8, count: 8) == [8, 7, 6, 5, 4, 3, 2, 1])

        let raw = try RawClient(path: server.path, maxVersion: 2, features: Wire.featureRings)
        #expect(raw.helloReply?.version == 2)
        #expect(raw.helloReply?.features == 0, "rings are a version-3 feature")
        let (code, text) = try #require(try raw.expectError(packet(.ring, body: le(UInt32(1)) + le(UInt32(0)), version: 2)))
        #expect(code == .unknownType, "\(text)")
    }

    @Test("each RING refusal, and each request a ring queue refuses, gets its code; a cq_head past the records breaks the ring")
    func ringRefusals() async throws {
        let server = try TestServer()
        // Version 3 without feature bit 0: RING is PERMISSION_DENIED.
        let plain = try RawClient(path: server.path)
        try plain.send(packet(.open, body: le(UInt32(0)) + le(UInt32(8)), requestID: 3))
        guard case .openReply(let q) = try plain.receive()?.message else { Issue.record("no OPEN_OK"); return }
        #expect(try plain.expectError(packet(.ring, body: le(q.queue) + le(UInt32(0))))?.0 == .permissionDenied)
        // PERMISSION_DENIED comes before BAD_QUEUE (SPEC.md §5.10): whatever the queue.
        #expect(try plain.expectError(packet(.ring, body: le(UInt32(0xDEAD)) + le(UInt32(0))))?.0 == .permissionDenied)

        let raw = try RawClient(path: server.path, features: Wire.featureRings)
        #expect(raw.helloReply?.features == Wire.featureRings)
        #expect(try raw.expectError(packet(.ring, body: le(UInt32(0xDEAD)) + le(UInt32(0))))?.0 == .badQueue, "no such queue")
        try raw.send(packet(.open, body: le(UInt32(0)) + le(UInt32(8)), requestID: 4))
        guard case .openReply(let open) = try raw.receive()?.message else { Issue.record("no OPEN_OK"); return }
        try raw.send(packet(.ring, body: le(open.queue) + le(UInt32(0)), requestID: 5))
        guard let answer = try raw.receive(), case .ringReply(let reply) = answer.message else { Issue.record("no RING_OK"); return }
        #expect(answer.fds.count == 2 && reply.queue == open.queue && reply.submissionEntries == 8 && reply.completionEntries == 8)
        #expect(try raw.expectError(packet(.ring, body: le(open.queue) + le(UInt32(0))))?.0 == .badQueue, "already a ring queue")
        let null = [UInt8](repeating: 0, count: 64)
        #expect(try raw.expectError(packet(.submit, body: le(open.queue) + le(UInt32(1)) + null))?.0 == .badQueue, "SUBMIT to a ring queue")
        #expect(try raw.expectError(packet(.reserve, body: le(open.queue) + le(UInt32(1)) + le(UInt32(0)) + le(UInt32(0))))?.0 == .badQueue,
                "RESERVE on a ring queue")

        // A completion head past the records written breaks the ring, naming the value.
        let client = try await server.connect()
        let ring = try await client.openRing(depth: 8)
        ring.unsafeMemory.storeBytes(of: UInt32(5), toByteOffset: RingLayout.completionHead, as: UInt32.self)
        _ = ring.push(.null())
        try ring.submit()
        var one: UInt8 = 1
        _ = send(ring.doorbell, &one, 1, Int32(MSG_DONTWAIT))
        #expect(await eventually { ring.brokenError != nil })
        #expect(ring.brokenError?.code == .ringBroken)
        #expect(ring.brokenError?.message.contains("cq_head 5 is 5 records past") == true, "\(String(describing: ring.brokenError))")
    }

    /// SPEC.md §5.10.1 and §5.10.2 (issue 23): undefined bits of cq_flags are ignored; a cq_head moved
    /// back before what the server read breaks the ring. Polls without sleeping (cq_flags holds the
    /// garbage, so nobody arms the doorbell), yielding the CPU to the server as it looks.
    @Test("undefined cq_flags bits are ignored; a cq_head moved back past what the server read breaks the ring")
    func ringWordsAsFound() async throws {
        let server = try TestServer()
        let client = try await server.connect()
        let ring = try await client.openRing(depth: 8)
        ring.unsafeMemory.storeBytes(of: UInt32(0xFFFF_FFFE), toByteOffset: RingLayout.completionFlags, as: UInt32.self)
        func runOne(_ cookie: UInt64) throws -> CompletionStatus? {
            #expect(ring.push(.null(cookie: cookie)))
            try ring.submit()
            var one: UInt8 = 1
            _ = send(ring.doorbell, &one, 1, Int32(MSG_DONTWAIT))
            var status: CompletionStatus? = nil
            let deadline = Date().addingTimeInterval(10)
            while status == nil && Date() < deadline {
                if ring.reap(limit: 1, { status = $0.status }) == 0 { sched_yield() }
            }
            return status
        }
        for cookie in 0..<4 as Range<UInt64> {
            #expect(try runOne(cookie) == .success, "op \(cookie) with cq_flags 0xFFFFFFFE")
        }
        #expect(ring.brokenError == nil)
        // The server has read cq_head 3 at least (it took op 3 after it). Back to 1: broken.
        ring.unsafeMemory.storeBytes(of: UInt32(1), toByteOffset: RingLayout.completionHead, as: UInt32.self)
        _ = ring.push(.null(cookie: 9))
        try ring.submit()
        var one: UInt8 = 1
        _ = send(ring.doorbell, &one, 1, Int32(MSG_DONTWAIT))
        #expect(await eventually { ring.brokenError != nil })
        #expect(ring.brokenError?.code == .ringBroken, "\(String(describing: ring.brokenError))")
    }

    @Test("a batch whose doorbell fails (the server closed its end) completes once: when the connection goes, not also at submit")
    func doorbellFailureCompletesOnce() throws {
        // A ring as the server lays it out, with the server asleep (NEED_WAKEUP set) and its doorbell end closed.
        let layout = RingLayout(queue: 7, depth: 8)
        let memfd = try Memfd.create(name: "ring-test", size: UInt64(layout.size), hugepages: false)
        let map = try Mapping(fd: memfd, length: layout.size, writable: true, populate: true)
        layout.writeHeader(to: map.unsafeBase)
        RingConsumer(layout: layout, base: map.unsafeBase).setNeedWakeup(true)
        let clientEnd = try UnixSocket.doorbellPair().1  // the server's end is closed as the tuple goes
        let memory = try RingMemory(reply: RingReply(queue: 7, submissionEntries: layout.submissionCount,
                                                     completionEntries: layout.completionCount, size: UInt64(layout.size)),
                                    memfd: memfd, doorbell: clientEnd)
        let feeder = RingFeeder(memory: memory)
        let completions = Mutex<[IOATClient.BatchResult]>([])
        feeder.submit([.null(cookie: 1), .null(cookie: 2)]) { result in completions.withLock { $0.append(result) } }
        // The descriptors are in the ring; the failed doorbell did not end the batch.
        #expect(completions.withLock { $0.count } == 0)
        #expect(feeder.isBusy)
        feeder.fail(.serverStopped("test"))
        let seen = completions.withLock { $0 }
        #expect(seen.count == 1, "the batch completed \(seen.count) times")
        if case .failure(.serverStopped) = seen.first {} else { Issue.record("the batch ended with \(String(describing: seen.first))") }
        // A batch after the loss fails at once, once.
        feeder.submit([.null(cookie: 3)]) { result in completions.withLock { $0.append(result) } }
        #expect(completions.withLock { $0.count } == 2)
    }
}
