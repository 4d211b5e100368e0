import ArgumentParser
import Foundation
import IOATClient
import IOATProtocol
import IOATSystem

/// `ioatctl`: operator and test tool for ioatd.
@main
struct IOATCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ioatctl",
        abstract: "Inspect, test and measure a running ioatd.",
        discussion: "Every subcommand connects to --socket, else $IOATD_SOCKET, else the default path.",
        subcommands: [Status.self, Metrics.self, Top.self, SelfTest.self, CRC.self, Bench.self, Stress.self, Scribble.self, BenchWorker.self, BareRingPeer.self])

    /// Runs the command line, taking `--socket PATH` before the subcommand as well as after it
    /// (`ioatctl --socket /run/ioatd/ioatd.sock status`).
    static func main() async {
        let arguments = hoistingSocketOption(Array(CommandLine.arguments.dropFirst()))
        do {
            var command = try parseAsRoot(arguments)
            if var asynchronous = command as? AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }

    /// `--socket PATH` (or `--socket=PATH`) given before the subcommand, moved after it.
    static func hoistingSocketOption(_ arguments: [String]) -> [String] {
        var before: [String] = []
        var i = 0
        while i < arguments.count, arguments[i].hasPrefix("--socket") {
            if arguments[i] == "--socket", i + 1 < arguments.count {
                before += arguments[i...i + 1]
                i += 2
            } else if arguments[i].hasPrefix("--socket=") {
                before.append(arguments[i])
                i += 1
            } else {
                break
            }
        }
        guard !before.isEmpty, i < arguments.count else { return arguments }
        return [arguments[i]] + before + arguments[(i + 1)...]
    }
}

/// Options every subcommand shares.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "ioatd socket path (default: $IOATD_SOCKET, else the per-user or system default).")
    var socket: String?

    @Option(help: ArgumentHelp("Seconds to wait for the server to take the connection and answer HELLO (0: no bound).",
                               discussion: "Default: $IOATD_CONNECT_TIMEOUT_MS (milliseconds, -1: none), else 5."))
    var connectTimeout: Double?

    @Option(help: ArgumentHelp("Seconds to wait for each request's answer (0: no bound).",
                               discussion: "Default: $IOATD_CALL_TIMEOUT_MS (milliseconds, -1: none), else 30."))
    var callTimeout: Double?

    func validate() throws {
        for (name, value) in [("--connect-timeout", connectTimeout), ("--call-timeout", callTimeout)] {
            if let value, !(value >= 0 && value <= 86_400) { throw ValidationError("\(name) must be 0...86400 seconds, got \(value)") }
        }
    }

    /// The environment's bounds, with the options' over them.
    var timeouts: IOATClient.Timeouts {
        var t = IOATClient.Timeouts.fromEnvironment()
        if let connectTimeout { t.connect = connectTimeout == 0 ? nil : .milliseconds(Int64(connectTimeout * 1000)) }
        if let callTimeout { t.call = callTimeout == 0 ? nil : .milliseconds(Int64(callTimeout * 1000)) }
        return t
    }

    func connect(transport: IOATClient.Transport = .automatic) async throws -> IOATClient {
        try await Self.connect(path: socket, transport: transport, timeouts: timeouts)
    }

    /// Connects, or says in one line why not.
    static func connect(path: String?, transport: IOATClient.Transport, timeouts: IOATClient.Timeouts) async throws -> IOATClient {
        do {
            return try await IOATClient.connect(path: path, transport: transport, timeouts: timeouts)
        } catch {
            throw CLIError("cannot connect to ioatd at \(path ?? SocketPath.forClient()): \(error)")
        }
    }
}

/// Which transports a command runs over: `ring`, `socket`, or `both` (each in turn, in one run).
enum TransportChoice: String, ExpressibleByArgument, CaseIterable {
    case ring, socket, both

    var transports: [IOATClient.Transport] {
        switch self {
        case .ring: [.ring]
        case .socket: [.socket]
        case .both: [.ring, .socket]
        }
    }
}

/// A failure reported to the user as one line, with exit status 1.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Monotonic seconds.
func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the server, its engine, channels, clients and buffers.")
    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Print the STATUS document as JSON.")
    var json = false

    func run() async throws {
        let client = try await connection.connect()
        let doc = try await client.status()
        if json {
            // Every page merged into one document.
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
            print(String(decoding: try encoder.encode(doc), as: UTF8.self))
            return
        }
        let server = doc.server
        print("ioatd pid \(server.pid) · \(server.state) · engine \(server.engine) · protocol v\(server.protocolVersion)")
        print("socket \(server.socket) · up \(server.uptimeSeconds) s · hugepage size \(server.hugepageSize) B")
        print("clients \(server.connections) (accepted \(server.connectionsAccepted), refused \(server.connectionsRefused))")
        if let b = server.bufferBudget {
            print("buffer budget \(b.locked + b.unlocked)/\(b.limit) B (locked \(b.locked), unlocked \(b.unlocked), hugepages \(b.hugepages), being made \(b.reserved))"
                  + " · hugepages free \(server.hugepagesFree ?? 0)/\(server.hugepagesTotal ?? 0)")
        }
        if let devices = server.dpdkDevices {
            print("dpdk devices \(devices) · iova \(server.dpdkIovaMode ?? "?") · dma registrations \(server.dmaRegistrations ?? 0)")
        }
        print("\nchannels:")
        for c in doc.channels {
            print("  \(c.index) \(c.name) [\(c.engine)] queues \(c.queues) · ops \(c.ops) · bytes \(c.bytes) · errors \(c.errors) · max depth \(c.maxDepth)")
            print("      opcodes \(c.opcodes)")
            if Set(c.runs.values) != ["cpu"] {
                let device = c.runs.filter { $0.value != "cpu" }.keys.sorted().joined(separator: ",")
                print("      on \(c.device?.driver ?? "the device"): \(device); the rest on the CPU")
            }
            if c.halts > 0 { print("      halts \(c.halts) · resets \(c.resets) · replayed \(c.replayed) · last error \(c.lastError)") }
        }
        print("\ntenants (latency µs from SUBMIT: queue wait to the engine / to completion, p50 p99):")
        for t in doc.tenants {
            let who = t.name.map { $0 == "uid \(t.uid)" ? $0 : "\($0), uid \(t.uid)" } ?? "uid \(t.uid)"
            print("  \(who) (\(t.policy), weight \(t.weight)) · connections \(t.connections)/\(t.maxConnections)"
                  + " · buffers \(t.bufferBytes)/\(t.maxBufferBytes) B · queues \(t.queues)/\(t.maxQueues)"
                  + " · in flight \(t.inflightCapacity)/\(t.maxInflight)")
            print("      ops \(t.ops) · bytes \(t.bytes) · errors \(t.errors) · refusals \(t.refusals)"
                  + " · wait \(t.queueWaitUs.p50) \(t.queueWaitUs.p99) · latency \(t.latencyUs.p50) \(t.latencyUs.p99)")
        }
        print("\nclients:")
        for c in doc.clients {
            let place = c.unit.map { " · unit \($0)" } ?? c.cgroup.map { " · cgroup \($0)" } ?? ""
            print("  #\(c.id) pid \(c.pid) uid \(c.uid) gid \(c.gid)\(place) · buffers \(c.buffers) (\(c.bufferBytes) B) · queues \(c.queues) · ops \(c.ops) · errors \(c.errors)")
        }
        print("\nbuffers: \(doc.buffers.count) open, \(doc.buffers.bytes) bytes, \(doc.buffers.hugepageBacked) on hugepages")
    }
}

struct CRC: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "crc32c", abstract: "Print the CRC32C of each file, computed by the server.")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "Files to checksum.")
    var files: [String]

    func run() async throws {
        let client = try await connection.connect()
        let chunk = 4 << 20
        let buffer = try await client.allocate(size: chunk)
        let queue = try await client.openQueue(depth: 4)
        var failed = false
        for path in files {
            guard let handle = FileHandle(forReadingAtPath: path) else {
                FileHandle.standardError.write(Data("ioatctl: \(path): cannot open\n".utf8))
                failed = true
                continue
            }
            var crc: UInt32 = 0
            while true {
                let data = try handle.read(upToCount: chunk) ?? Data()
                if data.isEmpty { break }
                buffer.write(data, at: 0)
                crc = try await queue.crc32c(of: buffer, length: data.count, seed: crc)
            }
            try handle.close()
            print(String(format: "%08x  %@", crc, path))
        }
        if failed { throw ExitCode(1) }
    }
}
