import ArgumentParser
import Glibc
import IOATClient
import IOATEngine
import IOATConformance
import IOATProtocol
import IOATSystem

/// `ioatctl stress`: one client's share of a load test.
struct Stress: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run random copy, fill and CRC32C ops on buffers of this client's own and check every byte.",
        discussion: """
            Each batch gives every op its own slot of the destination buffer, then checks the slot (the
            copied bytes, the fill pattern), the CRC against one computed here (ISA-L, which the
            conformance suite checks against an independent reference), and that the source did not change. Exits 0 when every op was right; prints the first wrong op and exits 1 otherwise.
            Run many at once, and kill some, to load a server (the load test does).
            """)
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Ops to run, over all queues.")
    var ops = 2000
    @Option(help: "Ops per SUBMIT.")
    var batch = 16
    @Option(help: "Size of each of the two buffers of each queue (bytes).")
    var bufferSize = 256 << 10
    @Option(help: "Queues, each with buffers of its own, run at once on one connection.")
    var queues = 1
    @Option(help: "Transport: ring (shared-memory rings), socket (SUBMIT and COMPLETION), or automatic.")
    var transport: StressTransport = .automatic
    @Option(help: "Stop after this many seconds even if --ops are not done (0: no limit).")
    var seconds: Double = 0
    @Option(help: "Random seed (default: random).")
    var seed: UInt64?

    enum StressTransport: String, ExpressibleByArgument, CaseIterable {
        case automatic, ring, socket
        var client: IOATClient.Transport {
            switch self {
            case .automatic: .automatic
            case .ring: .ring
            case .socket: .socket
            }
        }
    }

    /// What one queue's run saw.
    struct Tally: Sendable {
        var verified = 0
        /// Ops completed RESTARTED: in flight when the server crashed (SPEC.md §5.11); not checked.
        var restarted = 0
        /// The longest a batch waited for its records, in seconds: a restart shows as a pause here.
        var longestWait = 0.0
    }

    func run() async throws {
        guard ops > 0, (1...256).contains(batch), bufferSize >= batch * 64, (1...64).contains(queues) else {
            throw ValidationError("bad --ops, --batch, --buffer-size or --queues")
        }
        let seed = self.seed ?? UInt64.random(in: 0...UInt64.max)
        let client = try await connection.connect(transport: transport.client)
        let share = (ops + queues - 1) / queues
        let until = seconds > 0 ? Clock.seconds() + seconds : Double.infinity
        let tallies = try await withThrowingTaskGroup(of: Tally.self) { group in
            for q in 0..<queues {
                let ops = min(share, self.ops - q * share)
                guard ops > 0 else { continue }
                group.addTask { try await runQueue(client, ops: ops, seed: seed &+ UInt64(q), announce: q == 0, until: until) }
            }
            var all: [Tally] = []
            for try await tally in group { all.append(tally) }
            return all
        }
        let verified = tallies.reduce(0) { $0 + $1.verified }
        let restarted = tallies.reduce(0) { $0 + $1.restarted }
        let longest = tallies.map(\.longestWait).max() ?? 0
        let restarts = client.serverRestarts
        print("stress: \(verified) ops verified, \(restarted) completed RESTARTED (seed \(seed)); server restarts \(restarts.total) (\(restarts.crashes) crashes); longest wait \(Int(longest * 1000)) ms")
    }

    private func runQueue(_ client: IOATClient, ops: Int, seed: UInt64, announce: Bool, until: Double) async throws -> Tally {
        var rng = SplitMix64(seed: seed)
        let source = try await client.allocate(size: bufferSize, pages: .normal)
        let destination = try await client.allocate(size: bufferSize, pages: .normal)
        source.fillPseudoRandom(0..<bufferSize, seed: seed)
        let original = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 64)
        defer { original.deallocate() }
        original.copyMemory(from: UnsafeRawBufferPointer(source.unsafeBytes(0..<bufferSize)))
        let queue = try await client.openQueue(depth: max(32, batch))
        let slot = bufferSize / batch
        var tally = Tally()
        var done = 0
        var progress = Progress()
        defer { progress.clear() }
        while done < ops && (done == 0 || Clock.seconds() < until) {
            if announce { progress.update("stress: \(done) of \(ops) ops verified") }
            let n = min(batch, ops - done)
            var descriptors: [Descriptor] = []
            var checks: [(kind: Int, at: Int, from: Int, length: Int, pattern: UInt64)] = []
            for i in 0..<n {
                let length = Int.random(in: 1...slot, using: &rng)
                let at = i * slot + Int.random(in: 0...(slot - length), using: &rng)
                let from = Int.random(in: 0...(bufferSize - length), using: &rng)
                let pattern = UInt64.random(in: 0...UInt64.max, using: &rng)
                let kind = Int.random(in: 0..<3, using: &rng)
                switch kind {
                case 0: descriptors.append(.copy(from: source.address(from), to: destination.address(at), length: UInt64(length)))
                case 1: descriptors.append(.fill(destination.address(at), length: UInt64(length), pattern: pattern))
                default: descriptors.append(.crc32c(of: source.address(from), length: UInt64(length)))
                }
                checks.append((kind, at, from, length, pattern))
            }
            let started = Clock.seconds()
            let records = try await queue.submit(descriptors)
            tally.longestWait = max(tally.longestWait, Clock.seconds() - started)
            for (i, (record, check)) in zip(records, checks).enumerated() {
                let what = "seed \(seed), op \(done + i) (\(["copy", "fill", "crc32c"][check.kind]) of \(check.length) bytes)"
                // In flight when the server crashed: it may or may not have run, so its bytes say nothing.
                if record.status == .restarted {
                    tally.restarted += 1
                    continue
                }
                guard record.status == .success else { throw CLIError("\(what): status \(record.status)") }
                switch check.kind {
                case 0:
                    guard memcmp(destination.unsafeBytes(check.at..<check.at + check.length).baseAddress!,
                                 original.baseAddress! + check.from, check.length) == 0 else {
                        throw CLIError("\(what): destination differs from the source")
                    }
                case 1:
                    // The pattern repeats every 8 bytes: check the first 8, then that the rest repeats them.
                    let bytes = destination.unsafeBytes(check.at..<check.at + check.length)
                    let head = min(8, check.length)
                    let expected = (0..<head).map { UInt8(truncatingIfNeeded: check.pattern >> (8 * UInt64($0))) }
                    guard Array(bytes[0..<head]) == expected,
                          check.length <= 8 || memcmp(bytes.baseAddress! + 8, bytes.baseAddress!, check.length - 8) == 0 else {
                        throw CLIError("\(what): fill pattern wrong")
                    }
                default:
                    let expected = CRC32C.update(seed: 0, original.baseAddress! + check.from, length: check.length)
                    guard record.result == expected else { throw CLIError("\(what): CRC \(record.result), expected \(expected)") }
                }
                tally.verified += 1
            }
            done += n
            if done == n && announce {
                // After the first verified batch: a mark a supervising test can wait for.
                // Written unbuffered: standard output may be a file, where print(_:) is block-buffered.
                progress.clear()
                let mark = "stress: running\n"
                _ = mark.withCString { write(STDOUT_FILENO, $0, strlen($0)) }
            }
        }
        guard memcmp(source.unsafeBytes(0..<bufferSize).baseAddress!, original.baseAddress!, bufferSize) == 0 else { throw CLIError("seed \(seed): the source buffer changed") }
        return tally
    }
}
