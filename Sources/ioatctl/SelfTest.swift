import ArgumentParser
import IOATClient
import IOATConformance

struct SelfTest: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "test",
        abstract: "Run the conformance suite against the server: every opcode, random sizes, offsets and alignments, byte-checked.",
        discussion: "Exits non-zero on any mismatch. The seed is printed so a failing run can be repeated.")
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Random single ops to run.")
    var iterations = 200
    @Option(help: "Seed for the random choices (default: a fixed seed).")
    var seed: UInt64 = 0x10A7_D5EE_D000_0001
    @Option(help: "Channel to test (default: the server picks).")
    var channel: UInt32?

    @Option(help: "Transport to run the suite over: ring (shared-memory rings, protocol version 3), socket (SUBMIT and COMPLETION messages), or both, one after the other.")
    var transport: TransportChoice = .both

    func run() async throws {
        var failed = 0
        for t in transport.transports {
            let client = try await connection.connect(transport: t)
            print("ioatctl test: server \(client.path), \(client.server.channels.count) channel(s), transport \(t.rawValue), seed \(seed)")
            failed += await runSuite(client)
            client.close()
        }
        if failed > 0 { throw ExitCode(1) }
    }

    /// Runs the suite over one connection and prints each case; returns the failures.
    private func runSuite(_ client: IOATClient) async -> Int {
        let suite = ConformanceSuite(iterations: iterations, seed: seed, channel: channel)
        var progress = Progress()
        var finished = 0
        progress.update("test: running the first case", force: true)
        let results = await suite.run(client) { r in
            progress.clear()
            print(r.passed ? "ok    \(r.name)" : r.skipped ? "skip  \(r.name): \(r.detail)" : "FAIL  \(r.name): \(r.detail)")
            finished += 1
            progress.update("test: \(finished) cases done, running the next", force: true)
        }
        progress.clear()
        let skipped = results.filter(\.skipped).count
        let failed = results.filter { !$0.passed && !$0.skipped }.count
        print("\(results.count - failed - skipped) passed, \(failed) failed" + (skipped > 0 ? ", \(skipped) skipped" : ""))
        return failed
    }
}
