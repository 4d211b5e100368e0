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
        subcommands: [Status.self, SelfTest.self, CRC.self, Bench.self, Stress.self])
}

/// Options every subcommand shares.
struct ConnectionOptions: ParsableArguments {
    @Option(help: "ioatd socket path (default: $IOATD_SOCKET, else the per-user or system default).")
    var socket: String?

    func connect() async throws -> IOATClient {
        do {
            return try await IOATClient.connect(path: socket)
        } catch {
            throw CLIError("cannot connect to ioatd at \(socket ?? SocketPath.resolved()): \(error)")
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
        let text = try await client.status()
        if json {
            print(text)
            return
        }
        guard let doc = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
            let server = doc["server"] as? [String: Any]
        else { throw CLIError("server sent a STATUS document that is not a JSON object") }
        print("ioatd pid \(server["pid"] ?? "?") · \(server["state"] ?? "?") · engine \(server["engine"] ?? "?") · protocol v\(server["protocol_version"] ?? "?")")
        print("socket \(server["socket"] ?? "?") · up \(server["uptime_seconds"] ?? "?") s · hugepage size \(server["hugepage_size"] ?? 0) B")
        print("clients \(server["connections"] ?? 0) (accepted \(server["connections_accepted"] ?? 0), refused \(server["connections_refused"] ?? 0))")
        print("\nchannels:")
        for c in doc["channels"] as? [[String: Any]] ?? [] {
            print("  \(c["index"] ?? "?") \(c["name"] ?? "?") [\(c["engine"] ?? "?")] queues \(c["queues"] ?? 0) · ops \(c["ops"] ?? 0) · bytes \(c["bytes"] ?? 0) · errors \(c["errors"] ?? 0) · max depth \(c["max_depth"] ?? 0)")
            print("      opcodes \(c["opcodes"] ?? "")")
            if let runs = c["runs"] as? [String: String], Set(runs.values) != ["cpu"] {
                let device = runs.filter { $0.value != "cpu" }.keys.sorted().joined(separator: ",")
                print("      on \(c["driver"] ?? "the device"): \(device); the rest on the CPU")
            }
        }
        print("\ntenants (latency µs from SUBMIT: queue wait to the engine / to completion, p50 p99):")
        for t in doc["tenants"] as? [[String: Any]] ?? [] {
            let wait = t["queue_wait_us"] as? [String: Any] ?? [:]
            let latency = t["latency_us"] as? [String: Any] ?? [:]
            print("  uid \(t["uid"] ?? "?") (\(t["policy"] ?? "?"), weight \(t["weight"] ?? 1)) · connections \(t["connections"] ?? 0)/\(t["max_connections"] ?? 0)"
                  + " · buffers \(t["buffer_bytes"] ?? 0)/\(t["max_buffer_bytes"] ?? 0) B · queues \(t["queues"] ?? 0)/\(t["max_queues"] ?? 0)"
                  + " · in flight \(t["inflight_capacity"] ?? 0)/\(t["max_inflight"] ?? 0)")
            print("      ops \(t["ops"] ?? 0) · bytes \(t["bytes"] ?? 0) · errors \(t["errors"] ?? 0) · refusals \(t["refusals"] ?? 0)"
                  + " · wait \(wait["p50"] ?? 0) \(wait["p99"] ?? 0) · latency \(latency["p50"] ?? 0) \(latency["p99"] ?? 0)")
        }
        print("\nclients:")
        for c in doc["clients"] as? [[String: Any]] ?? [] {
            print("  #\(c["id"] ?? "?") pid \(c["pid"] ?? "?") uid \(c["uid"] ?? "?") gid \(c["gid"] ?? "?") · buffers \(c["buffers"] ?? 0) (\(c["buffer_bytes"] ?? 0) B) · queues \(c["queues"] ?? 0) · ops \(c["ops"] ?? 0) · errors \(c["errors"] ?? 0)")
        }
        if let b = doc["buffers"] as? [String: Any] {
            print("\nbuffers: \(b["count"] ?? 0) open, \(b["bytes"] ?? 0) bytes, \(b["hugepage_backed"] ?? 0) on hugepages")
        }
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
