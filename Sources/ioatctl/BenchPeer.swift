import Foundation
import Glibc
import IOATEngine
import IOATProtocol
import IOATSystem
#if DPDK
import IOATDPDK
#endif

/// The peer figure of `bench` in the DPDK build: DPDK's dma_skeleton driven from this process through
/// the same engine code ioatd uses (enqueue, submit, reap; no server, no transport), 4 KiB copies with
/// `depth` in flight. What a transport to the server is measured against.
struct PeerFigure: Codable {
    var device: String
    var size: Int
    var depth: Int
    var gBps: Double

    /// EAL arguments for dma_skeleton with no hugepages and no shared files (runtime files named after
    /// this process, so it never meets a server's).
    static var skeletonArguments: [String] {
        ["--no-huge", "--no-pci", "-m", "256", "--no-shconf", "--no-telemetry", "--log-level=error", "--file-prefix=ioatctl-\(getpid())",
         "-d", "/usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0/librte_dma_skeleton.so", "--vdev=dma_skeleton"]
    }

    /// Measures it, or says why it cannot (a build without DPDK, an EAL that would not start).
    static func measure(size: Int, depth: Int, seconds: Double) -> Result<PeerFigure, CLIError> {
        #if DPDK
        // The EAL pins the thread that starts it; the thread's CPUs are put back afterwards.
        let cpus = Affinity.current()
        let engine: DPDKEngine
        do throws(DPDKEngine.StartError) {
            engine = try DPDKEngine(options: DPDKEngine.Options(ealArguments: skeletonArguments))
        } catch {
            try? Affinity.pinCurrentThread(to: cpus)
            return .failure(CLIError("dma_skeleton did not start in this process: \(error)"))
        }
        try? Affinity.pinCurrentThread(to: cpus)
        defer { engine.shutdown() }
        guard let channel = engine.channels.first else { return .failure(CLIError("the DPDK engine found no channel")) }
        let bytes = size * depth * 2
        let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 4096)
        defer { memory.deallocate() }
        memory.initializeMemory(as: UInt8.self, repeating: 7)
        let registration: AnyObject?
        do throws(SystemError) {
            registration = try engine.register(memory: memory, pageSize: 4096)
        } catch {
            return .failure(CLIError("dma_skeleton: registering the buffers failed: \(error)"))
        }
        let completions = UnsafeMutableBufferPointer<EngineCompletion>.allocate(capacity: depth)
        defer { completions.deallocate() }
        let base = memory.baseAddress!
        var inFlight = 0
        var done = 0
        var slot = 0
        let start = now()
        var elapsed = 0.0
        while true {
            elapsed = now() - start
            let running = elapsed < seconds
            var queued = false
            while running && inFlight < depth && channel.freeSlots > 0 {
                let i = slot % depth
                slot += 1
                guard channel.enqueue(EngineOp(cookie: UInt64(i), opcode: .copy, source: UnsafeRawPointer(base + i * size),
                                               destination: base + (depth + i) * size, length: size)) else { break }
                inFlight += 1
                queued = true
            }
            if queued { channel.submit() }
            if inFlight == 0 { break }
            let n = channel.reap(into: completions)
            for c in completions.prefix(n) where c.status != .success {
                return .failure(CLIError("dma_skeleton: a copy completed with \(c.status)"))
            }
            inFlight -= n
            done += n
            if n == 0 { Clock.yield() }
        }
        withExtendedLifetime(registration) {}
        return .success(PeerFigure(device: channel.info.name, size: size, depth: depth, gBps: Double(done * size) / elapsed / 1e9))
        #else
        return .failure(CLIError("built without the DPDK trait"))
        #endif
    }
}
