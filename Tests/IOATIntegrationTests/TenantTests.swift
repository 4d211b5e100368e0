import Foundation
import Glibc
import IOATClient
import IOATProtocol
import IOATServer
import Testing

/// Reads the ERROR a refused connection gets before the server closes it.
func refusal(at path: String) throws -> (ErrorCode, String)? {
    let raw = try RawClient(path: path, hello: false)
    guard case .error(let e) = try raw.receive(timeout: 5)?.message else { return nil }
    return (e.code, e.message)
}

/// Whether a connection is accepted (HELLO answered).
func accepted(at path: String) -> Bool { (try? RawClient(path: path)) != nil }

@Suite("Tenants: policy, isolation between uids, statistics", .serialized)
struct TenantTests {
    @Test("Another uid sees only itself in STATUS and cannot name the first tenant's buffer")
    func secondTenantView() async throws {
        let server = try TestServer()
        let owner = try await server.connect()
        let secret = try await owner.allocate(size: 4096)
        secret.write(Array("root's bytes....".utf8), at: 0)
        let (status, out) = try runTool("/usr/bin/setpriv", [
            "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
            FileManager.default.currentDirectoryPath + "/Tests/support/other-tenant.py", server.path, "\(secret.handle)",
        ], mergingErrors: true)
        #expect(status == 0, "\(out)")
        let lines = out.split(separator: "\n").map(String.init)
        let statusLine = try #require(lines.first { $0.hasPrefix("STATUS ") }, "\(out)")
        let doc = try statusDocument(line: statusLine)
        #expect(doc.clients.count == 1 && doc.clients.allSatisfy { $0.uid == 65534 }, "\(doc.clients)")
        #expect(doc.tenants.map(\.uid) == [65534], "\(doc.tenants)")
        #expect(doc.page.clientsTotal == 1 && doc.page.tenantsTotal == 1, "totals count only what the viewer may see")
        #expect(doc.buffers.count == 0, "the other tenant's buffer totals are not shown")
        let fill = try #require(lines.first { $0.hasPrefix("FILL ") }, "\(out)")
        #expect(fill.hasPrefix("FILL ERROR \(ErrorCode.badHandle.rawValue) "), "\(fill)")
        #expect(fill.contains("\(secret.handle)"), "the message names the handle: \(fill)")
        #expect(secret.read(at: 0, count: 16) == Array("root's bytes....".utf8))
        // Root's own view shows its tenant (the other one left when its connection closed).
        let full = try await statusDocument(owner)
        #expect(full.tenants.contains { $0.uid == 0 })
    }

    @Test("Policy refuses, limits and reloads on SIGHUP without dropping clients; a bad file is refused with its line")
    func policyAndReload() async throws {
        let config = temporarySocketPath() + ".toml"
        defer { unlink(config) }
        try "[policy.users.root]\nallowed = false\n".write(toFile: config, atomically: true, encoding: .utf8)
        let server = try TestServer(arguments: ["--config", config])
        let denied = try #require(try refusal(at: server.path))
        #expect(denied.0 == .permissionDenied)
        #expect(denied.1.contains("uid 0") && denied.1.contains("user 0"), "\(denied.1)")

        // Allowed again, with small limits, on SIGHUP.
        try """
            [policy.default]
            max_connections = 1

            [policy.users.root]
            max_connections = 2
            max_buffer_bytes = 1048576
            max_queues = 2
            max_inflight = 16
            weight = 5
            """.write(toFile: config, atomically: true, encoding: .utf8)
        kill(server.pid, SIGHUP)
        #expect(await eventually { accepted(at: server.path) })
        let a = try await server.connect()
        let b = try await server.connect()
        let third = try #require(try refusal(at: server.path))
        #expect(third.0 == .quotaExceeded)
        #expect(third.1.contains("2 connections") && third.1.contains("user 0"), "\(third.1)")
        // A client whose HELLO is queued before the server gets to the connection reads the ERROR as well:
        // the server discards the unread HELLO before closing, since closing over unread packets resets
        // the peer, and the reset would hide the ERROR. The server is stopped so the HELLO surely waits.
        kill(server.pid, SIGSTOP)
        let early = try RawClient(path: server.path, hello: false)
        try early.send(Message.hello(Hello()).encode(requestID: 1))
        kill(server.pid, SIGCONT)
        // Read only once the server has closed its end, as a slower client would.
        var hangup = pollfd(fd: early.fd.rawValue, events: 0, revents: 0)  // POLLHUP is always reported
        #expect(poll(&hangup, 1, 5000) == 1 && hangup.revents & Int16(POLLHUP) != 0, "the server kept a refused connection open")
        do {
            guard case .error(let e) = try early.receive(timeout: 5)?.message else {
                Issue.record("a refused client that had sent HELLO got no ERROR")
                return
            }
            #expect(e.code == .quotaExceeded)
        } catch {
            Issue.record("a refused client that had sent HELLO saw \(error), not the server's ERROR")
        }

        // Limits add up over the tenant's connections.
        _ = try await a.allocate(size: 768 << 10, pages: .normal)
        do {
            _ = try await b.allocate(size: 512 << 10, pages: .normal)
            Issue.record("the tenant went over max_buffer_bytes through a second connection")
        } catch {
            #expect(error.code == .quotaExceeded)
            #expect("\(error)".contains("1048576"), "\(error)")
        }
        _ = try await a.openQueue(depth: 8)
        do {
            _ = try await b.openQueue(depth: 9)
            Issue.record("the tenant went over max_inflight")
        } catch {
            #expect(error.code == .quotaExceeded)
            #expect("\(error)".contains("17 descriptors in flight"), "\(error)")
        }
        _ = try await b.openQueue(depth: 8)
        do {
            _ = try await b.openQueue(depth: 1)
            Issue.record("the tenant went over max_queues")
        } catch {
            #expect(error.code == .quotaExceeded)
        }
        var doc = try await statusDocument(a)
        let tenant = try #require(doc.tenants.first)
        #expect(tenant.weight == 5)
        #expect(tenant.policy == "user 0")
        #expect(tenant.connections == 2)
        #expect(tenant.inflightCapacity == 16)
        #expect(tenant.refusals >= 3)

        // A broken file is refused with its line; the policy in force stays, and nobody is dropped.
        try "[policy.users.root]\nweight = 5\nmax_queues = \"many\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        kill(server.pid, SIGHUP)
        #expect(await eventually { server.log.contains("reload refused") })
        #expect(server.log.contains("\(config):3"), "the log names the file and line")
        #expect(server.log.contains("max_queues"))
        doc = try await statusDocument(a)
        #expect(doc.server.policyReloadFailures == 1)
        #expect(doc.tenants.first?.weight == 5)
        #expect(try refusal(at: server.path)?.0 == .quotaExceeded, "still two connections at most")
        _ = try await b.status()
    }

    @Test("A client refused before its HELLO went out still reports the server's reason, not a broken pipe", .enabled(if: isExecutable("/usr/bin/strace"), "needs strace to delay the client's HELLO"))
    func refusedBeforeHello() throws {
        let config = temporarySocketPath() + ".toml"
        defer { unlink(config) }
        try "[policy.users.root]\nallowed = false\n".write(toFile: config, atomically: true, encoding: .utf8)
        let server = try TestServer(arguments: ["--config", config])
        // strace holds the client's first sendmsg (its HELLO) for 300 ms: the server has refused and closed
        // the connection by then, so the send fails with EPIPE while the ERROR waits to be read.
        let (status, out) = try runTool("/usr/bin/strace", [
            "-f", "-o", "/dev/null", "-e", "trace=none", "-e", "inject=sendmsg:delay_enter=300000:when=1",
            buildDirectory.appendingPathComponent("ioatctl").path, "status", "--socket", server.path,
        ], mergingErrors: true)
        
        #expect(status != 0)
        #expect(out.contains("PERMISSION_DENIED") && out.contains("uid 0"), "\(out)")
        #expect(!out.contains("Broken pipe"), "\(out)")
    }

    @Test("Group entries match supplementary groups too: a denying group wins, then the primary group, then the lowest gid")
    func groupResolution() {
        var policy = Policy()
        var seven = TenantLimits(), denied = TenantLimits(), primary = TenantLimits(), mine = TenantLimits()
        seven.weight = 7
        denied.allowed = false
        primary.weight = 2
        mine.weight = 9
        policy.groups = [4242: seven, 4243: denied, 100: primary, 4244: seven]
        #expect(policy.limits(uid: 5, gid: 5).source == "default")
        #expect(policy.limits(uid: 5, gid: 5, groups: [4244, 4242]) == (seven, "group 4242"))
        #expect(policy.limits(uid: 5, gid: 100, groups: [4242]) == (primary, "group 100"))
        #expect(policy.limits(uid: 5, gid: 100, groups: [4242, 4243]) == (denied, "group 4243"))
        policy.users[5] = mine
        #expect(policy.limits(uid: 5, gid: 100, groups: [4243]) == (mine, "user 5"), "a user entry wins over every group")
    }

    @Test("A process's supplementary groups, as the kernel reports them, select its group policy")
    func supplementaryGroupsThroughTheKernel() async throws {
        let config = temporarySocketPath() + ".toml"
        defer { unlink(config) }
        try "[policy.groups.4242]\nweight = 7\n\n[policy.groups.4243]\nallowed = false\n".write(toFile: config, atomically: true, encoding: .utf8)
        let server = try TestServer(arguments: ["--config", config])
        func runAs(groups: String) throws -> (Int32, String) {
            try runTool("/usr/bin/setpriv", [
                "--reuid=65534", "--regid=65534", "--groups=\(groups)", "/usr/bin/python3",
                FileManager.default.currentDirectoryPath + "/Tests/support/other-tenant.py", server.path, "1",
            ], mergingErrors: true)
        }
        let (status, out) = try runAs(groups: "4242")
        #expect(status == 0, "\(out)")
        let statusLine = try #require(out.split(separator: "\n").first { $0.hasPrefix("STATUS ") }, "\(out)")
        let doc = try statusDocument(line: statusLine)
        let tenant = try #require(doc.tenants.first, "\(doc)")
        #expect(tenant.policy == "group 4242")
        #expect(tenant.weight == 7)
        #expect(tenant.groups == [4242])

        // A member of a denied group is refused, whatever else it belongs to.
        let (refusedStatus, refusedOut) = try runAs(groups: "4242,4243")
        #expect(refusedStatus != 0 && refusedOut.contains("no HELLO_OK"), "\(refusedOut)")
        #expect(await eventually { server.log.contains("policy: group 4243") }, "\(server.log)")
    }

    @Test("Unknown users and groups in the policy are refused at start with their line")
    func unknownNames() throws {
        let config = temporarySocketPath() + ".toml"
        defer { unlink(config) }
        try "[policy.default]\nweight = 1\n\n[policy.groups.no-such-group-here]\nweight = 2\n".write(toFile: config, atomically: true, encoding: .utf8)
        let (status, out) = try runTool("ioatd", ["--config", config, "--socket", temporarySocketPath()], mergingErrors: true)
        #expect(status == 2)
        #expect(out.contains(":4:") && out.contains("no group named \"no-such-group-here\""), "\(out)")
    }

    @Test("Per-tenant statistics: ops, bytes, errors and latency percentiles")
    func statistics() async throws {
        let server = try TestServer()
        let client = try await server.connect()
        let buffer = try await client.allocate(size: 1 << 20)
        let queue = try await client.openQueue(depth: 16)
        for _ in 0..<20 { _ = try await queue.copy(from: buffer, at: 0, to: buffer, at: 1 << 19, length: 4096) }
        let doc = try await statusDocument(client)
        let tenant = try #require(doc.tenants.first { $0.uid == 0 })
        #expect(tenant.ops == 20)
        #expect(tenant.bytes == 20 * 4096)
        #expect(tenant.errors == 0)
        let latency = tenant.latencyUs
        let wait = tenant.queueWaitUs
        #expect(latency.p50 > 0 && latency.p99 >= latency.p50)
        #expect(wait.p50 >= 0 && wait.max <= latency.max)
        #expect(tenant.servedCost >= 20 * 4096)
    }
}
