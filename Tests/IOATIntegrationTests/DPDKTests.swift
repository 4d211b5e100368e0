import Foundation
import Glibc
import IOATClient
import IOATConformance
import IOATDPDK
import IOATEngine
import IOATProtocol
import IOATSystem
import IOATTestKit
import Testing

#if DPDK
/// EAL arguments for DPDK's software dmadev: no hugepages, no PCI scan, and no shared runtime files or
/// telemetry socket, so servers started side by side neither collide nor leave files behind.
func skeletonEALArguments() -> String {
    "--no-huge --no-pci -m 256 --no-shconf --no-telemetry --file-prefix=ioatd-test "
        + "-d /usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0/librte_dma_skeleton.so --vdev=dma_skeleton"
}

/// A server on the DPDK engine over dma_skeleton.
func dpdkServer(_ extra: [String] = []) throws -> TestServer {
    try TestServer(arguments: ["--engine", "dpdk", "--dpdk-eal-args", skeletonEALArguments()] + extra)
}

@Suite("DPDK dmadev engine on dma_skeleton")
struct DPDKTests {
    @Test("FENCE behind a failure on the DPDK engine: the same window rule, through the fault wrapper in this process")
    func fenceWindowOnDPDK() async throws {
        // The EAL starts once per process; this is the only test that starts it in the test process. It
        // pins the calling thread, so the thread's CPUs are put back afterwards.
        let cpus = Affinity.current()
        let dpdk: DPDKEngine
        do throws(DPDKEngine.StartError) {
            dpdk = try DPDKEngine(options: DPDKEngine.Options(
                ealArguments: skeletonEALArguments().replacingOccurrences(of: "ioatd-test", with: "ioatd-inproc-\(getpid())")
                    .split(separator: " ").map(String.init)))
        } catch {
            try? Affinity.pinCurrentThread(to: cpus)
            Issue.record("the DPDK engine did not start in the test process: \(error)")
            return
        }
        try Affinity.pinCurrentThread(to: cpus)
        let server = try InProcessServer(engine: FaultInjectingEngine(wrapping: dpdk, plan: failPoisonLength))
        defer { server.stop() }
        try await fenceWindowScenario(path: server.path)
    }

    @Test("Two SUBMITs of 512 NULL ops, INT_EN on the last only, arrive as COMPLETIONs of 512 and 512 on dma_skeleton too")
    func fullMessagesOnly() throws {
        let server = try dpdkServer()
        try expectTwoFullMessages(server.path)
    }

    @Test("ioatctl test passes on the DPDK engine, and status says which engine ran which op")
    func conformance() async throws {
        let server = try dpdkServer()
        let (status, out) = try runTool("ioatctl", ["test", "--socket", server.path, "--iterations", "100"])
        #expect(status == 0, "\(out)\n\(server.log)")
        #expect(out.components(separatedBy: " passed, 0 failed").count == 3, "both transports: \(out)")
        #expect(out.contains("transport ring") && out.contains("transport socket"))

        let client = try await server.connect()
        let doc = try await statusDocument(client)
        #expect(doc.server.engine == "dpdk")
        let channels = doc.channels
        #expect(channels.count == 1)
        let channel = try #require(channels.first)
        #expect(channel.device?.driver == "dma_skeleton")
        #expect(channel.engine == "dpdk")
        let runs = channel.runs
        #expect(runs["COPY"] == "dma_skeleton")
        #expect(runs["COPY_SG"] == "dma_skeleton")
        #expect(runs["FILL"] == "cpu", "dma_skeleton has no fill capability")
        #expect(runs["CRC32C"] == "cpu")
        // The suite's copies ran on the device and the rest on the CPU.
        #expect(channel.device?.deviceOps ?? 0 > 0)
        #expect(channel.device?.cpuOps ?? 0 > 0)
        #expect(channel.maxTransfer == 1 << 20)
    }

    @Test("Ordering holds across the device and the CPU: each op sees the bytes of the ops before it, without FENCE")
    func orderingAcrossRunners() async throws {
        let server = try dpdkServer()
        let client = try await server.connect()
        let size = 256 << 10
        let a = try await client.allocate(size: size)
        let b = try await client.allocate(size: size)
        let c = try await client.allocate(size: size)
        let queue = try await client.openQueue(depth: 64)
        for round in 0..<20 {
            a.fillPseudoRandom(0..<size, seed: UInt64(round))
            let original = a.read(at: 0, count: size)
            b.set(0..<size, to: 0)
            let pattern = 0x0101_0101_0101_0101 &* UInt64(round + 1)
            // copy (device) → CRC of its destination (CPU) → fill (CPU) → copy of the filled bytes (device)
            // → COPY_CRC32C (CPU) of what that copy wrote, in one SUBMIT with no fences.
            let records = try await queue.submit([
                .copy(from: a.address(), to: b.address(), length: UInt64(size)),
                .crc32c(of: b.address(), length: UInt64(size)),
                .fill(a.address(), length: UInt64(size / 2), pattern: pattern),
                .copy(from: a.address(), to: c.address(), length: UInt64(size / 2)),
                .copyCRC32C(from: c.address(), to: b.address(size / 2), length: UInt64(size / 2)),
            ])
            #expect(records.allSatisfy { $0.status == .success }, "round \(round): \(records.map(\.status))")
            #expect(records[1].result == ReferenceCRC32C.checksum(original), "the CRC ran after the copy before it")
            let patternBytes = (0..<size / 2).map { UInt8(truncatingIfNeeded: pattern >> (8 * UInt64($0 % 8))) }
            #expect(c.read(at: 0, count: size / 2) == patternBytes)
            #expect(b.read(at: 0, count: size / 2) == Array(original[0..<size / 2]))
            #expect(b.read(at: size / 2, count: size / 2) == patternBytes)
            #expect(records[4].result == ReferenceCRC32C.checksum(patternBytes))
        }
    }

    @Test("Buffers are registered with the EAL for DMA while open and unregistered when freed")
    func memoryRegistration() async throws {
        let server = try dpdkServer()
        let client = try await server.connect()
        func registrations() async throws -> Int {
            (try await statusDocument(client)).server.dmaRegistrations ?? -1
        }
        #expect(try await registrations() == 0)
        let allocated = try await client.allocate(size: 3 << 20)
        let memfd = try IOATClient.makeSealedMemfd(size: 5000)
        let registered = try await client.register(memfd: memfd)
        #expect(try await registrations() == 2)
        // The device copies between the server's buffer and the client's own memfd (a partial last page).
        allocated.fillPseudoRandom(0..<5000, seed: 9)
        let queue = try await client.openQueue()
        _ = try await queue.copy(from: allocated, to: registered, length: 5000)
        #expect(registered.read(at: 0, count: 5000) == allocated.read(at: 0, count: 5000))
        try await client.free(allocated)
        try await client.free(registered)
        #expect(try await registrations() == 0)
        // A client that goes away leaves no registration behind.
        let other = try await server.connect()
        _ = try await other.allocate(size: 1 << 20)
        #expect(try await registrations() == 1)
        other.close()
        #expect(try await eventually { try await registrations() == 0 })
    }

    @Test("When the EAL has no memory-segment list left for a buffer, ALLOC is NO_MEMORY and says why; FREE makes room")
    func registrationExhausted() async throws {
        let server = try dpdkServer()
        let client = try await server.connect()
        var buffers: [IOATBuffer] = []
        var refusal: IOATError? = nil
        for _ in 0..<400 {
            do {
                buffers.append(try await client.allocate(size: 4096, pages: .normal))
            } catch {
                refusal = error
                break
            }
        }
        let error = try #require(refusal, "400 buffers were all registered")
        #expect(error.code == .noMemory)
        #expect("\(error)".contains("DMA-addressable") && "\(error)".contains("ALLOC of 4096 bytes"), "\(error)")
        try await client.free(buffers.removeLast())
        buffers.append(try await client.allocate(size: 4096, pages: .normal))
    }

    @Test("The configuration file selects the DPDK engine and its EAL arguments")
    func configurationFile() async throws {
        let path = temporarySocketPath() + ".toml"
        try "[engine]\nkind = \"dpdk\"\ndpdk_eal_args = \"\(skeletonEALArguments())\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { unlink(path) }
        let server = try TestServer(arguments: ["--config", path])
        let client = try await server.connect()
        #expect(client.server.channels.first?.engine == .dpdk)
    }

    @Test("Bad EAL arguments stop ioatd with DPDK's reason")
    func badEALArguments() throws {
        let (status, out) = try runTool("ioatd", ["--socket", temporarySocketPath(), "--engine", "dpdk", "--dpdk-eal-args",
                                                  "--no-huge --no-pci -m 256 --no-shconf --no-telemetry --file-prefix=ioatd-test --no-such-eal-option"],
                                        mergingErrors: true)
        #expect(status == 1)
        #expect(out.contains("rte_eal_init failed"), "\(out)")
    }

    @Test("Without a dmadev the DPDK engine refuses to start and says how to get one")
    func noDevice() throws {
        let (status, out) = try runTool("ioatd", ["--socket", temporarySocketPath(), "--engine", "dpdk", "--dpdk-eal-args",
                                                  "--no-huge --no-pci -m 256 --no-shconf --no-telemetry --file-prefix=ioatd-test"],
                                        mergingErrors: true)
        #expect(status == 1)
        #expect(out.contains("found no dmadev"), "\(out)")
    }

    @Test("ioatctl bench --beside prints the DPDK engine's figures beside the CPU engine's")
    func benchBeside() throws {
        let dpdk = try dpdkServer()
        let cpu = try TestServer()
        let (status, out) = try runTool("ioatctl", ["bench", "--socket", dpdk.path, "--beside", cpu.path, "--sizes", "64K",
                                                    "--ops", "copy,crc32c", "--seconds", "0.05", "--small-batch", "0", "--json"])
        #expect(status == 0, "\(out)")
        let reports = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]] ?? []
        #expect(reports.count == 2, "a report per transport: \(out)")
        for doc in reports {
            #expect(doc["engine"] as? String == "dpdk")
            // The peer figure: dma_skeleton driven in ioatctl's own process, in the same run.
            let peer = doc["peer"] as? [String: Any]
            #expect(peer?["device"] as? String != nil && (peer?["g_bps"] as? Double ?? 0) > 0, "\(String(describing: peer))")
            let rows = doc["rows"] as? [[String: Any]] ?? []
            #expect(rows.count == 2)
            for row in rows {
                let beside = row["beside"] as? [String: Any]
                #expect(beside?["engine"] as? String == "cpu")
                #expect((beside?["ioatd_g_bps"] as? Double ?? 0) > 0)
                #expect((row["ioatd_g_bps"] as? Double ?? 0) > 0)
            }
        }
    }
}
#else
@Suite("DPDK engine absent")
struct NoDPDKTests {
    @Test("A build without the DPDK trait refuses --engine dpdk and says how to get it")
    func refused() throws {
        let (status, out) = try runTool("ioatd", ["--socket", temporarySocketPath(), "--engine", "dpdk"], mergingErrors: true)
        #expect(status == 2)
        #expect(out.contains("built without it"), "\(out)")
    }
}
#endif
