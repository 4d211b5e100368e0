import Foundation
import Glibc
import IOATClient
import IOATConformance
import IOATProtocol
import IOATSystem
import Testing

let hugepagePool = "/proc/sys/vm/nr_hugepages"

/// Whether this process can size the hugepage pool (root, and the sysctl exists).
let canSizeHugepagePool: Bool = getuid() == 0 && readSmallFile(hugepagePool) != nil

/// Sets the hugepage pool to `count` pages for the duration of `body` and puts the old size back. Fails
/// the test when the kernel would not give that many.
func withHugepagePool<R>(_ count: (Int) -> Int, _ body: () async throws -> R) async throws -> R {
    let before = try #require(readSmallFile(hugepagePool).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
    defer { writeSmallFile(hugepagePool, "\(before)\n") }
    let wanted = count(before)
    #expect(writeSmallFile(hugepagePool, "\(wanted)\n"))
    let now = try #require(readSmallFile(hugepagePool).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
    try #require(wanted == 0 || now >= wanted, "the kernel gave \(now) hugepages of the \(wanted) asked for")
    return try await body()
}

@Suite("buffers: hugepages and 4 KiB pages", .serialized)
struct HugepageTests {
    @Test("ALLOC with hugepages required gives hugepage-backed, sealed, working buffers",
          .enabled(if: canSizeHugepagePool, "needs root to reserve hugepages"))
    func hugepagePath() async throws {
        try await withHugepagePool({ $0 + 16 }) {
            let server = try TestServer()
            let client = try await server.connect()
            #expect(client.server.hugepageSize == 2 << 20)
            let huge = try await client.allocate(size: 3 << 20, pages: .requireHuge)
            #expect(huge.isHugepageBacked)
            #expect(huge.pageSize == 2 << 20)
            #expect(huge.size == 4 << 20)  // rounded up to whole hugepages
            let seals = try Memfd.seals(of: huge.memfd)
            #expect(seals.contains(.shrink) && seals.contains(.grow) && seals.contains(.seal))
            #expect(ftruncate(huge.memfd.rawValue, 0) != 0, "a sealed buffer must not shrink")
            let results = await ConformanceSuite(iterations: 60, seed: 11, bufferSize: 4 << 20).run(client)
            #expect(results.allSatisfy { $0.passed }, "\(results.filter { !$0.passed })")
            let queue = try await client.openQueue(depth: 4)
            huge.fillPseudoRandom(0..<(2 << 20), seed: 4)
            #expect(try await queue.copy(from: huge, at: 0, to: huge, at: 2 << 20, length: 2 << 20).status == .success)
            #expect(huge.read(at: 0, count: 2 << 20) == huge.read(at: 2 << 20, count: 2 << 20))
            let doc = try await statusDocument(client)
            #expect(doc.buffers.hugepageBacked >= 1)
            try await client.free(huge)
        }
    }

    @Test("without hugepages, ALLOC falls back to 4 KiB pages and says so; REQUIRED is refused")
    func smallPagePath() async throws {
        let server = try TestServer(arguments: ["--no-hugepages"])
        let client = try await server.connect()
        #expect(client.server.hugepageSize == 0)
        let buffer = try await client.allocate(size: 10_000)
        #expect(!buffer.isHugepageBacked)
        #expect(buffer.pageSize == 4096)
        #expect(buffer.size == 12288)
        do {
            _ = try await client.allocate(size: 4096, pages: .requireHuge)
            Issue.record("REQUIRED hugepages granted by a server with none")
        } catch {
            #expect(error.code == .noHugepages)
        }
        let queue = try await client.openQueue(depth: 4)
        buffer.fillPseudoRandom(0..<5000, seed: 8)
        #expect(try await queue.copy(from: buffer, at: 0, to: buffer, at: 6000, length: 5000).status == .success)
        #expect(buffer.read(at: 0, count: 5000) == buffer.read(at: 6000, count: 5000))
    }

    @Test("preferred hugepages fall back to 4 KiB pages when none are free, with a warning in the log",
          .enabled(if: canSizeHugepagePool, "needs root to empty the hugepage pool"))
    func preferredFallback() async throws {
        // An empty pool: no hugepage is free, whatever the machine had reserved.
        try await withHugepagePool({ _ in 0 }) {
            let server = try TestServer()
            let client = try await server.connect()
            let buffer = try await client.allocate(size: 1 << 20)
            #expect(!buffer.isHugepageBacked && buffer.pageSize == 4096)
            #expect(await eventually { server.log.contains("hugepages unavailable") })
            // Required, from an empty pool: NO_HUGEPAGES (SPEC.md §5.1), not a share of 0 bytes exceeded.
            do {
                _ = try await client.allocate(size: 1 << 20, pages: .requireHuge)
                Issue.record("a HUGEPAGE_REQUIRED ALLOC was granted from an empty pool")
            } catch {
                // (The text depends on whether another test's hugepages are still in the pool.)
                #expect((error as? IOATError)?.code == .noHugepages, "\(error)")
            }
        }
    }
}
