import Foundation
import Glibc
import IOATClient
import IOATProtocol
import IOATSystem
import Testing
@testable import ioatctl

/// Where cgroup v2 is mounted here (the `cgroup2` line of /proc/self/mountinfo; /sys/fs/cgroup/unified on
/// this hybrid VM, /sys/fs/cgroup on most hosts), when this process may make cgroups in it.
let writableCgroupRoot: String? = {
    guard let info = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8),
          let root = CgroupPaths.cgroup2Mount(in: info)?.point else { return nil }
    let probe = root + "/ioatd-probe-\(getpid())"
    guard mkdir(probe, 0o755) == 0 else { return nil }
    rmdir(probe)
    return root
}()

/// A slice of cgroups this test makes under the writable cgroup v2 root, removed by `remove()` (children
/// first; a cgroup goes once its processes have).
final class TestCgroups {
    let root: String
    let slice: String
    let children: [String]

    init(slice: String, children: [String]) throws {
        root = try #require(writableCgroupRoot)
        self.slice = slice
        self.children = children
        #expect(mkdir("\(root)/\(slice)", 0o755) == 0, "made \(root)/\(slice)")
        for child in children { #expect(mkdir(directory(child), 0o755) == 0, "made \(directory(child))") }
    }

    /// The directory of `child`, where a process moves itself by writing its pid to cgroup.procs.
    func directory(_ child: String) -> String { "\(root)/\(slice)/\(child)" }

    func remove() {
        for child in children { rmdir(directory(child)) }
        rmdir("\(root)/\(slice)")
    }
}

/// A client's identity beyond its uid (issue 21, item 1): its cgroup, unit and slice, read at accept.
@Suite("Peer identity at accept: cgroup, unit and slice", .serialized)
struct IdentityTests {
    @Test("A client started in a cgroup made here is listed in STATUS with that cgroup and its unit",
          .enabled(if: writableCgroupRoot != nil, "needs a writable cgroup v2 hierarchy"))
    func cgroupShown() async throws {
        let slice = "ioatd-test-\(getpid()).slice", scope = "tenant-a.scope"
        let cgroups = try TestCgroups(slice: slice, children: [scope])
        defer { cgroups.remove() }
        let directory = cgroups.directory(scope)
        let server = try TestServer()
        // The client moves itself into the cgroup, then becomes `ioatctl status --json`: it is in the
        // cgroup when it connects.
        let ioatctl = buildDirectory.appendingPathComponent("ioatctl").path
        let (status, out) = try runTool("/bin/sh", ["-c", "echo $$ > '\(directory)/cgroup.procs' && exec '\(ioatctl)' status --json --socket '\(server.path)'"],
                                        mergingErrors: true)
        #expect(status == 0, "\(out)")
        let doc = try JSONDecoder().decode(StatusDocument.self, from: Data(out.utf8))
        // The cgroup path as /proc/PID/cgroup names it: relative to this process's cgroup namespace root.
        let ownPath = try String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)
        #expect(ownPath.contains("0::"), "this host has cgroup v2")
        let entry = try #require(doc.clients.first { $0.cgroup?.hasSuffix("/\(slice)/\(scope)") == true }, "\(doc.clients)")
        #expect(entry.unit == scope && entry.slice == slice, "\(entry)")
    }

    @Test("A client whose process exited before the server read its identity is refused; no tenant is left; the server goes on")
    func exitedBeforeLookup() async throws {
        let server = try TestServer()
        let watcher = try await server.connect()
        let before = try await statusDocument(watcher).server.connectionsRefused
        // Stopped, the server cannot accept: the client connects into the backlog and exits, and is
        // reaped, before the server looks.
        #expect(kill(server.pid, SIGSTOP) == 0)
        let script = "import socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect('\(server.path)')"
        let (status, out) = try runTool("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script],
                                        mergingErrors: true)
        #expect(kill(server.pid, SIGCONT) == 0)
        #expect(status == 0, "\(out)")
        var refused = before
        var tenants: [UInt32] = []
        for _ in 0..<200 where refused == before {
            let doc = try await statusDocument(watcher)
            refused = doc.server.connectionsRefused
            tenants = doc.tenants.map(\.uid)
            if refused == before { usleep(10_000) }
        }
        #expect(refused == before + 1, "the dead client's connection was refused")
        #expect(!tenants.contains(65534), "no tenant left behind: \(tenants)")
        #expect(server.log.contains("exited before its identity could be read"), "the log says why")
        // And the server serves: a new client works.
        let again = try await server.connect()
        let queue = try await again.openQueue(depth: 2)
        _ = try await queue.submit(.null())
    }
}

/// A client of `Tests/support/cgroup-tenant.py` running in a cgroup, held until `finish`.
final class CgroupClient {
    let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    /// What it printed up to READY.
    private(set) var lines: [String] = []

    init(socket: String, cgroup: String, allocations: [Int]) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [repositoryRoot.appendingPathComponent("Tests/support/cgroup-tenant.py").path, socket, cgroup] + allocations.map(String.init)
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        try process.run()
        // Reads until READY (or its end): the condition, not a guessed time.
        var text = ""
        let handle = output.fileHandleForReading
        while !text.contains("READY\n") {
            let chunk = handle.availableData
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        lines = text.split(separator: "\n").map(String.init)
    }

    var allocations: [String] { lines.filter { $0.hasPrefix("ALLOC ") } }
    var status: StatusDocument? { lines.first { $0.hasPrefix("STATUS ") }.flatMap { try? statusDocument(line: $0) } }

    /// Lets it close its connection and exit.
    func finish() {
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
    }
}

@Suite("Units and cgroups as tenants", .serialized)
struct ScopedTenantTests {
    @Test("Two processes of uid 0 in two cgroups under one [policy.cgroups] prefix are two tenants: separate limits, separate views, named by cgroup",
          .enabled(if: writableCgroupRoot != nil, "needs a writable cgroup v2 hierarchy"))
    func twoCgroupsTwoTenants() async throws {
        let slice = "ioatd-test-\(getpid())-t.slice"
        let cgroups = try TestCgroups(slice: slice, children: ["a.scope", "b.scope"])
        defer { cgroups.remove() }
        let a = cgroups.directory("a.scope"), b = cgroups.directory("b.scope")
        // The path as /proc/PID/cgroup shows it (this process's cgroup namespace root is the hierarchy's).
        let prefix = "/\(slice)"
        let config = temporarySocketPath() + ".toml"
        defer { unlink(config) }
        try """
            [policy.cgroups."\(prefix)"]
            max_buffer_bytes = \(8 << 20)
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let server = try TestServer(arguments: ["--config", config])
        // A: 6 MiB granted, 6 more refused at its limit; B, beside it, is granted its own 6 MiB.
        let first = try CgroupClient(socket: server.path, cgroup: a, allocations: [6 << 20, 6 << 20])
        defer { first.finish() }
        let second = try CgroupClient(socket: server.path, cgroup: b, allocations: [6 << 20])
        defer { second.finish() }
        #expect(first.allocations.count == 2 && first.allocations[0].hasPrefix("ALLOC OK"), "\(first.lines)")
        #expect(first.allocations.last?.hasPrefix("ALLOC ERROR \(ErrorCode.quotaExceeded.rawValue) ") == true, "\(first.lines)")
        #expect(second.allocations == second.allocations.filter { $0.hasPrefix("ALLOC OK") } && second.allocations.count == 1,
                "the other cgroup's tenant has a limit of its own: \(second.lines)")
        // Each sees only itself, although both are root.
        let viewA = try #require(first.status, "\(first.lines)"), viewB = try #require(second.status, "\(second.lines)")
        #expect(viewA.tenants.compactMap(\.name) == ["\(prefix)/a.scope"] && viewA.clients.count == 1, "\(viewA.tenants)")
        #expect(viewB.tenants.compactMap(\.name) == ["\(prefix)/b.scope"] && viewB.clients.count == 1, "\(viewB.tenants)")
        #expect(viewA.tenants.first?.policy == "cgroup \(prefix)")
        // Root outside every entry sees both, by name.
        let operatorView = try await statusDocument(try await server.connect())
        let names = Set(operatorView.tenants.compactMap(\.name))
        #expect(names.isSuperset(of: ["\(prefix)/a.scope", "\(prefix)/b.scope", "uid 0"]), "\(names)")
    }
}

extension ScopedTenantTests {
    /// Starts `ioatctl bench-worker` in `cgroup`: 1 MiB copies, depth 128, over a ring, for `seconds`: ops
    /// large enough that the server, not the client, is the bottleneck, and deep enough that the tenant's
    /// queue does not empty behind an engine window of two while its client waits for a CPU (deficit round
    /// robin shares out service between tenants that stay backlogged; one that empties starts afresh).
    static func worker(socket: String, cgroup: String, seconds: Double) throws -> Process {
        let ioatctl = buildDirectory.appendingPathComponent("ioatctl").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "echo $$ > '\(cgroup)/cgroup.procs' && exec '\(ioatctl)' bench-worker --socket '\(socket)' --transport ring --size 1048576 --depth 128 --seconds \(seconds)"]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Each named tenant's served cost (the unit fair scheduling shares out), from root's STATUS.
    static func served(_ client: IOATClient, _ names: [String]) async throws -> [String: UInt64] {
        let doc = try await client.status()
        var out: [String: UInt64] = [:]
        for t in doc.tenants { if let name = t.name, names.contains(name) { out[name] = t.servedCost } }
        return out
    }

    /// Runs two always-backlogged workers in cgroups a and b under one prefix (an engine window of two
    /// ops, so the scheduler decides) and returns a's share of what the channel served while both ran.
    static func share(weightA: Int?) async throws -> Double {
        let slice = "ioatd-test-\(getpid())-f\(weightA ?? 1).slice"
        let cgroups = try TestCgroups(slice: slice, children: ["a.scope", "b.scope"])
        defer { cgroups.remove() }
        let a = cgroups.directory("a.scope"), b = cgroups.directory("b.scope")
        let config = temporarySocketPath() + ".toml"
        defer { unlink(config) }
        try """
            [engine]
            channels = 1
            window = 2
            [policy.cgroups."/\(slice)"]
            weight = 1
            \(weightA.map { "[policy.units.\"a.scope\"]\nweight = \($0)\n" } ?? "")
            """.write(toFile: config, atomically: true, encoding: .utf8)
        let server = try TestServer(arguments: ["--config", config])
        let watcher = try await server.connect()
        let names = weightA == nil ? ["/\(slice)/a.scope", "/\(slice)/b.scope"] : ["a.scope", "/\(slice)/b.scope"]
        let workers = [try worker(socket: server.path, cgroup: a, seconds: 20), try worker(socket: server.path, cgroup: b, seconds: 20)]
        defer {
            for w in workers where w.isRunning { kill(w.processIdentifier, SIGKILL) }
            for w in workers { w.waitUntilExit() }
        }
        // Conditions, not times: both tenants served something, then a window of 24 GiB of service.
        var first: [String: UInt64] = [:]
        for _ in 0..<2000 {
            first = try await served(watcher, names)
            if names.allSatisfy({ (first[$0] ?? 0) > 64 << 20 }) { break }
            usleep(10_000)
        }
        try #require(names.allSatisfy { first[$0] != nil }, "both tenants running: \(first)")
        var last = first
        for _ in 0..<2000 {
            last = try await served(watcher, names)
            if names.reduce(UInt64(0), { $0 + (last[$1] ?? 0) - (first[$1] ?? 0) }) >= 24 << 30 { break }
            usleep(10_000)
        }
        let delta = names.map { Double((last[$0] ?? 0) - (first[$0] ?? 0)) }
        #expect(delta.allSatisfy { $0 > 0 }, "\(delta)")
        return delta[0] / delta.reduce(0, +)
    }

    @Test("Two cgroup tenants of one uid, always backlogged on one channel: equal weights share it evenly (Jain ≥ 0.95)",
          .enabled(if: writableCgroupRoot != nil, "needs a writable cgroup v2 hierarchy"))
    func equalShares() async throws {
        let share = try await Self.share(weightA: nil)
        let jain = ManyClients.jain([share, 1 - share])
        #expect(jain >= 0.95, "a's share \(share), Jain's index \(jain)")
    }

    @Test("A [policy.units] weight is in force: weight 3 against 1 gets about three quarters",
          .enabled(if: writableCgroupRoot != nil, "needs a writable cgroup v2 hierarchy"))
    func weightedShares() async throws {
        let share = try await Self.share(weightA: 3)
        #expect(abs(share - 0.75) <= 0.1, "a's share \(share), expected 0.75")
    }
}
