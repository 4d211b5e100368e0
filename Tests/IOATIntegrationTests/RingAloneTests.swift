import CMallocCounter
import Foundation
import Glibc
import IOATClient
import IOATConformance
import IOATProtocol
import IOATSystem
import Synchronization
import Testing

/// Ring tests that measure the process or the server while they run: `make test` runs this suite on its
/// own, after the others (like ResourceTests), so that nothing else allocates in this process or loads the
/// server meanwhile.
@Suite("Rings, alone: a scribbling tenant, and allocations on the data path", .serialized)
struct RingAloneTests {
    /// How long the scribbler scribbles (IOATD_SCRIBBLE_SECONDS, 30 by default as issue 11 asks).
    static let scribbleSeconds = Double(ProcessInfo.processInfo.environment["IOATD_SCRIBBLE_SECONDS"] ?? "") ?? 30

    @Test("a client scribbling on its own rings breaks only them: another tenant's copies stay byte-exact, the server stays up, its fds and memory come back",
          .enabled(if: getuid() == 0, "needs root (setpriv) to make the scribbler another tenant"))
    func scribbler() async throws {
        let server = try TestServer()
        let client = try await server.connect()
        let size = 1 << 20
        let a = try await client.allocate(size: size, pages: .normal)
        let b = try await client.allocate(size: size, pages: .normal)
        a.fillPseudoRandom(0..<size, seed: 77)
        let queue = try await client.openQueue(depth: 32)
        #expect(queue.isRing)
        try await Task.sleep(for: .milliseconds(200))  // let the server settle before its baseline is read
        let fdBaseline = server.settledFDs()
        let memoryBaseline = try #require(ProcessMemory.of(server.pid))

        /// Byte-checked 4 KiB copies for `seconds`; returns ops per second and the first wrong copy.
        func copies(for seconds: Double, round: UInt64) async throws -> (rate: Double, wrong: String?) {
            var rng = SplitMix64(seed: round)
            let start = Clock.seconds()
            var ops = 0
            while Clock.seconds() - start < seconds {
                let batch = (0..<16).map { i in
                    Descriptor.copy(from: a.address(Int(rng.next() % UInt64(size - 4096))), to: b.address(i * 65536), length: 4096,
                                    cookie: UInt64(i))
                }
                let records = try await queue.submit(batch)
                for (i, d) in batch.enumerated() {
                    guard records[i].status == .success,
                          b.read(at: i * 65536, count: 4096) == a.read(at: Int(d.source.offset), count: 4096)
                    else { return (0, "copy \(i) of round \(round): \(records[i].status)") }
                }
                ops += batch.count
            }
            return (Double(ops) / (Clock.seconds() - start), nil)
        }

        let alone = try await copies(for: 2, round: 1)
        #expect(alone.wrong == nil, "\(alone.wrong ?? "")")
        let output = temporarySocketPath() + ".scribble"
        defer { unlink(output) }
        let scribbler = try SpawnedProcess("/usr/bin/setpriv", [
            "--reuid=65534", "--regid=65534", "--clear-groups", buildDirectory.appendingPathComponent("ioatctl").path,
            "scribble", "--socket", server.path, "--seconds", "\(Self.scribbleSeconds)", "--seed", "11",
        ], output: output)
        var during: [Double] = []
        var round: UInt64 = 2
        while scribbler.wait(timeout: 0) == nil {
            let r = try await copies(for: 1, round: round)
            #expect(r.wrong == nil, "while scribbled on: \(r.wrong ?? "")")
            if r.wrong != nil { break }
            during.append(r.rate)
            round += 1
        }
        let status = scribbler.wait()
        let report = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        #expect(status == 0, "scribbler: \(report)")
        #expect(report.contains("rings broken by the server with RING_BROKEN"), "\(report)")
        let broken = Int(report.split(separator: ",").last?.split(separator: " ").first ?? "") ?? 0
        #expect(broken >= 1, "the scribbler's rings were never failed: \(report)")
        // The server is up and serves everyone; what the scribbler had is gone.
        let after = try await copies(for: 1, round: 999)
        #expect(after.wrong == nil)
        #expect(kill(server.pid, 0) == 0, "the server died")
        #expect(waitUntil(timeout: 20) { server.openFDs() == fdBaseline }, "server fds \(server.openFDs()), baseline \(fdBaseline)")
        let (settled, last) = await settlesBack(server.pid, to: memoryBaseline)
        #expect(settled, "server memory \(String(describing: last)), baseline \(memoryBaseline)")
        let share = during.isEmpty ? 0 : during.sorted()[during.count / 2] / alone.rate
        print("scribbler: \(report.trimmingCharacters(in: .whitespacesAndNewlines)); the other tenant's 4 KiB copies: \(Int(alone.rate)) ops/s alone, median \(Int(share * alone.rate)) ops/s while scribbled on (\(String(format: "%.2f", share))×; never asserted)")
    }

    /// The release ioatd, which `make test` builds: the allocation contract is the optimised build's (a
    /// debug build allocates in unspecialised generic code on every turn of the loop).
    static let releaseServer = buildDirectory.deletingLastPathComponent().appendingPathComponent("release/ioatd")

    /// Builds Tests/support/malloc-count.c as an LD_PRELOAD library; its path.
    static func mallocCounterLibrary() throws -> String {
        let out = NSTemporaryDirectory() + "ioatd-malloc-count-\(getpid()).so"
        let source = repositoryRoot.appendingPathComponent("Tests/support/malloc-count.c").path
        let (status, output) = try runTool("/usr/bin/gcc", ["-shared", "-fPIC", "-O2", "-Wall", "-Werror", source, "-o", out], mergingErrors: true)
        guard status == 0 else { throw SystemError("gcc \(source): \(output)", errno: EINVAL) }
        return out
    }

    @Test("the server's event loop (release build) allocates nothing per op under steady traffic, over a ring and over the socket",
          .enabled(if: isExecutable(RingAloneTests.releaseServer.path), "needs .build/release/ioatd (make test builds it)"),
          arguments: [IOATClient.Transport.ring, .socket])
    func serverLoopAllocations(transport: IOATClient.Transport) async throws {
        let library = try Self.mallocCounterLibrary()
        defer { unlink(library) }
        let countFile = NSTemporaryDirectory() + "ioatd-malloc-count-\(getpid())-\(transport.rawValue)"
        defer { unlink(countFile) }
        let server = try TestServer(arguments: ["--engine", "cpu", "--channels", "1"], executable: Self.releaseServer,
                                    environment: ["LD_PRELOAD": library, "IOATD_MALLOC_COUNT_FILE": countFile])
        /// Allocations the server's loop (its main thread) has made so far.
        func loopAllocations() throws -> UInt64 {
            let data = try #require(FileManager.default.contents(atPath: countFile), "the preloaded counter made \(countFile)")
            return data.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        }
        let client = try await IOATClient.connect(path: server.path, transport: transport)
        defer { client.close() }
        let a = try await client.allocate(size: 1 << 16, pages: .normal)
        let copies = (0..<32).map { i in Descriptor.copy(from: a.address(i * 64), to: a.address(8192 + i * 64), length: 64, cookie: UInt64(i)) }
        let rounds = 300, ops = rounds * copies.count
        var during: UInt64 = 0
        #expect(try loopAllocations() > 0, "the counter counts the loop's allocations (it set up the connection and the buffer)")
        if transport == .ring {
            let ring = try await client.openRing(depth: 64)
            @Sendable func drive(_ rounds: Int) throws {
                for _ in 0..<rounds {
                    for d in copies { _ = ring.push(d) }
                    try ring.submit()
                    var reaped = 0
                    while reaped < copies.count {
                        try ring.wait(for: 1, spinMicroseconds: 200, timeoutMilliseconds: 10_000)
                        reaped += ring.reap { precondition($0.status == .success, "\($0.status)") }
                    }
                }
            }
            try await OSThread.run(name: "loop-malloc") { () throws in try drive(50) }  // warm up: capacities grow to size
            let before = try loopAllocations()
            try await OSThread.run(name: "loop-malloc") { () throws in try drive(rounds) }
            during = try loopAllocations() - before
            try await ring.close()
        } else {
            let queue = try await client.openQueue(depth: 64)
            for _ in 0..<50 { _ = try await queue.submit(copies) }
            let before = try loopAllocations()
            for _ in 0..<rounds {
                let records = try await queue.submit(copies)
                #expect(records.allSatisfy { $0.status == .success })
            }
            during = try loopAllocations() - before
        }
        #expect(during == 0, "the server's loop allocated \(during) times over \(ops) 64-byte copies (\(transport))")
    }

    @Test("the ring data path allocates nothing per op: IOATRing none at all, IOATQueue's callbacks no more for a batch of 32 than for a batch of 1")
    func allocations() async throws {
        let server = try TestServer()
        let client = try await server.connect()
        let a = try await client.allocate(size: 1 << 16, pages: .normal)
        let ring = try await client.openRing(depth: 64)
        let copies = (0..<32).map { i in Descriptor.copy(from: a.address(i * 64), to: a.address(8192 + i * 64), length: 64, cookie: UInt64(i)) }

        /// Pushes, submits, waits and reaps `rounds` batches on this thread; the allocations this thread
        /// made meanwhile (only this thread runs an IOATRing's data path).
        @Sendable func driveRing(rounds: Int, counting: Bool) throws -> UInt64 {
            if counting { cmalloc_counting_thread(1) }
            defer { cmalloc_counting_thread(0) }
            for _ in 0..<rounds {
                for i in 0..<copies.count { _ = ring.push(copies[i]) }
                try ring.submit()
                var reaped = 0
                while reaped < copies.count {
                    try ring.wait(for: 1, spinMicroseconds: 200, timeoutMilliseconds: 10_000)
                    reaped += ring.reap { precondition($0.status == .success, "\($0.status)") }
                }
            }
            return cmalloc_thread_count()
        }
        let ringCount = try await OSThread.run(name: "ring-malloc") { () throws -> UInt64 in
            _ = try driveRing(rounds: 50, counting: false)  // warm up: first-use metadata and caches
            return try driveRing(rounds: 300, counting: true)
        }
        #expect(ringCount == 0, "\(ringCount) allocations over 9,600 ring ops")
        try await ring.close()

        // IOATQueue: allocations per batch do not grow with the batch (a batch allocates its records
        // array and its completion, never anything per op). Counted process-wide, since the client's
        // reader thread completes the batches; an allocation per op would add 31 per batch of 32, so the
        // margin below (16) tells that apart from the noise of other work in the process.
        let queue = try await client.openQueue(depth: 64)
        #expect(queue.isRing)
        func batches(_ size: Int, count: Int) async -> UInt64 {
            let batch = Array(copies.prefix(size))
            let done = Atomic<Int>(0)
            cmalloc_counting(1)
            for _ in 0..<count {
                await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                    queue.submit(batch) { result in
                        if case .success = result { done.add(1, ordering: .relaxed) }
                        c.resume()
                    }
                }
            }
            cmalloc_counting(0)
            #expect(done.load(ordering: .relaxed) == count)
            return cmalloc_count()
        }
        _ = await batches(32, count: 50)  // warm up
        let small = await batches(1, count: 400)
        let large = await batches(32, count: 400)
        print("allocations: IOATRing \(ringCount) over 9,600 ops; IOATQueue callbacks \(Double(small) / 400) per batch of 1, \(Double(large) / 400) per batch of 32")
        #expect(Double(large) / 400 < Double(small) / 400 + 16, "a batch of 32 allocates \(large) vs \(small) for batches of 1 (400 each)")
    }
}
