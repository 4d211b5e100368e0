import ArgumentParser
import Glibc
import IOATClient
import IOATConformance
import IOATProtocol

/// `ioatctl scribble`: a hostile ring client, for testing the server (SPEC.md §5.10.4, §5.10.5).
struct Scribble: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Test tool: write random bytes and indices into this client's own ring queues for a while.",
        discussion: """
            A hostile client: it scribbles on every part of its rings' shared memory (header, indices,
            flags, descriptors), publishes garbage and plausible descriptors, and rings the doorbell. The
            server must refuse what it can refuse, fail the ring with RING_BROKEN when the indices break
            the rules, and go on serving everyone else. Each broken ring is closed and a new one opened.
            Prints what it did.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Seconds to scribble.")
    var seconds = 30.0
    @Option(help: "Random seed (default: random).")
    var seed: UInt64?

    func run() async throws {
        var rng = SplitMix64(seed: seed ?? UInt64.random(in: 0...UInt64.max))
        let deadline = now() + seconds
        var (writes, published, records, broken, rings) = (0, 0, 0, 0, 0)
        var client = try await connection.connect(transport: .ring)
        var buffer = try await client.allocate(size: 65536, pages: .normal)
        while now() < deadline {
            let ring: IOATRing
            do {
                ring = try await client.openRing(depth: 16)
            } catch {
                // Queues whose ops are still in flight cannot be closed yet; a new connection starts clean.
                client.close()
                client = try await connection.connect(transport: .ring)
                buffer = try await client.allocate(size: 65536, pages: .normal)
                continue
            }
            rings += 1
            let memory = ring.unsafeMemory
            while now() < deadline && ring.brokenError == nil {
                switch rng.next() % 10 {
                case 0...3:
                    // Random bytes anywhere in the ring.
                    let at = Int(rng.next() % UInt64(memory.count - 16))
                    for i in 0..<Int(rng.next() % 16 + 1) { memory[at + i] = UInt8(truncatingIfNeeded: rng.next()) }
                    writes += 1
                case 4:
                    // A random submission tail or completion head.
                    let word = [RingLayout.submissionTail, RingLayout.completionHead][Int(rng.next() % 2)]
                    memory.storeBytes(of: UInt32(truncatingIfNeeded: rng.next()), toByteOffset: word, as: UInt32.self)
                    writes += 1
                case 5...7:
                    // Plausible descriptors (some out of range) and garbage, published.
                    let length = UInt64(rng.next() % 70000)
                    _ = ring.push(.copy(from: buffer.address(Int(rng.next() % 65536)), to: buffer.address(Int(rng.next() % 65536)),
                                        length: length, cookie: rng.next()))
                    var garbage = [UInt8](repeating: 0, count: 64)
                    for i in garbage.indices { garbage[i] = UInt8(truncatingIfNeeded: rng.next()) }
                    _ = garbage.withUnsafeBytes { ring.push(raw: $0) }
                    try? ring.submit()
                    published += 2
                case 8:
                    records += ring.reap { _ in }
                default:
                    _ = ring.arm(for: Int(rng.next() % 4) + 1)
                    ring.disarm()
                }
            }
            if ring.brokenError != nil { broken += 1 }
            try? await ring.close()
        }
        print("ioatctl scribble: \(rings) rings, \(writes) scribbles, \(published) descriptors published, \(records) records read, \(broken) rings broken by the server with RING_BROKEN")
    }
}
