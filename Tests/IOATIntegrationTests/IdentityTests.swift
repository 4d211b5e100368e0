import Foundation
import Glibc
import IOATClient
import IOATProtocol
import Testing

/// Where cgroup v2 is mounted here (the `cgroup2` line of /proc/self/mountinfo; /sys/fs/cgroup/unified on
/// this hybrid VM, /sys/fs/cgroup on most hosts), when this process may make cgroups in it.
let writableCgroupRoot: String? = {
    guard let info = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return nil }
    for line in info.split(separator: "\n") {
        let fields = line.split(separator: " ")
        guard let dash = fields.firstIndex(of: "-"), dash + 1 < fields.count, fields[dash + 1] == "cgroup2", fields.count > 4 else { continue }
        let root = String(fields[4])
        let probe = root + "/ioatd-probe-\(getpid())"
        guard mkdir(probe, 0o755) == 0 else { continue }
        rmdir(probe)
        return root
    }
    return nil
}()

/// A client's identity beyond its uid (issue 21, item 1): its cgroup, unit and slice, read at accept.
@Suite("Peer identity at accept: cgroup, unit and slice", .serialized)
struct IdentityTests {
    @Test("A client started in a cgroup made here is listed in STATUS with that cgroup and its unit",
          .enabled(if: writableCgroupRoot != nil, "needs a writable cgroup v2 hierarchy"))
    func cgroupShown() async throws {
        let root = try #require(writableCgroupRoot)
        let slice = "ioatd-test-\(getpid()).slice", scope = "tenant-a.scope"
        let directory = "\(root)/\(slice)/\(scope)"
        #expect(mkdir("\(root)/\(slice)", 0o755) == 0 && mkdir(directory, 0o755) == 0, "made \(directory)")
        defer {
            rmdir(directory)
            rmdir("\(root)/\(slice)")
        }
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
