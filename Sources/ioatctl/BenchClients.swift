import ArgumentParser
import Foundation
import Glibc
import IOATClient
import IOATProtocol
import IOATSystem

/// `ioatctl bench --clients N`: N client processes at once (as N uids when run as root), each copying
/// with its own queue, against one client alone in the same run. Prints the aggregate, each client's
/// share and Jain's fairness index.
struct ManyClients: Codable {
    var clients: Int
    var transport: String
    var size: Int
    var depth: Int
    /// One client alone, then all of them at once, in GB/s.
    var aloneGBps: Double
    var aggregateGBps: Double
    var perClientGBps: [Double]
    /// (Σx)² / (n·Σx²): 1 when every client got the same.
    var jain: Double

    /// Runs `count` workers at once for `seconds`, starting together; their GB/s.
    static func runWorkers(count: Int, socket: String, transport: IOATClient.Transport, size: Int, depth: Int, seconds: Double,
                           asUIDs: Bool) throws -> [Double] {
        let me = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let start = Clock.seconds() + 1.0 + 0.05 * Double(count)  // everyone connects and warms up first
        var children: [(pid_t, String)] = []
        for i in 0..<count {
            let output = "/tmp/ioatctl-bench-\(getpid())-\(i).out"
            var argv = [me, "bench-worker", "--socket", socket, "--transport", transport.rawValue, "--size", "\(size)",
                        "--depth", "\(depth)", "--seconds", "\(seconds)", "--start", "\(start)"]
            if asUIDs { argv = ["/usr/bin/setpriv", "--reuid=\(61000 + i)", "--regid=\(61000 + i)", "--clear-groups"] + argv }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            let cArgs = argv.map { strdup($0) } + [nil]
            var pid: pid_t = 0
            let rc = posix_spawn(&pid, argv[0], &actions, nil, cArgs, environ)
            cArgs.forEach { free($0) }
            posix_spawn_file_actions_destroy(&actions)
            guard rc == 0 else { throw CLIError("cannot start a bench worker: \(String(cString: strerror(rc)))") }
            children.append((pid, output))
        }
        var rates: [Double] = []
        for (pid, output) in children {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
            defer { unlink(output) }
            let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            guard status == 0, let rate = Double(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw CLIError("a bench worker failed (status \(status)): \(text)")
            }
            rates.append(rate)
        }
        return rates
    }

    static func jain(_ x: [Double]) -> Double {
        let sum = x.reduce(0, +)
        let squares = x.reduce(0) { $0 + $1 * $1 }
        return squares > 0 ? sum * sum / (Double(x.count) * squares) : 0
    }
}

/// One client of `bench --clients`: copies `size` bytes with `depth` in flight from `start` (wall clock,
/// monotonic seconds) for `seconds`, and prints its GB/s.
struct BenchWorker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bench-worker", abstract: "One client of `bench --clients` (internal).",
                                                    shouldDisplay: false)
    @OptionGroup var connection: ConnectionOptions
    @Option var transport: TransportChoice = .ring
    @Option var size = 65536
    @Option var depth = 8
    @Option var seconds = 2.0
    @Option var start = 0.0

    func run() async throws {
        let client = try await connection.connect(transport: transport.transports[0])
        let src = try await client.allocate(size: size)
        let dst = try await client.allocate(size: size)
        src.fillPseudoRandom(0..<size, seed: 3)
        let queue = try await client.openQueue(depth: depth)
        let copy = Descriptor.copy(from: src.address(), to: dst.address(), length: UInt64(size))
        _ = try await queue.submit(copy)
        while Clock.seconds() < start { try await Task.sleep(for: .milliseconds(1)) }
        let (ops, elapsed) = try await Pump.run(queue: queue, batch: [copy], inFlight: depth, seconds: seconds)
        print(Double(ops) * Double(size) / elapsed / 1e9)
    }
}
