import Foundation
import Glibc
import IOATClient
import IOATEngine
import IOATProtocol
import IOATSystem
import IOATTestKit
import Synchronization
import Testing

/// What a client of the system service relies on, and what an operator sees, tested without a systemd as
/// PID 1 (`make test-systemd` runs the rest under one).
@Suite("The system service's clients and operators")
struct ServiceClientTests {
    @Test("Clients find the system socket when it exists; IOATD_SOCKET still wins; the per-user rule otherwise")
    func clientSocketRule() {
        #expect(SocketPath.forClient(environment: [:], uid: 1000, exists: { $0 == SocketPath.system }) == SocketPath.system)
        #expect(SocketPath.forClient(environment: ["IOATD_SOCKET": "/x.sock"], uid: 1000, exists: { _ in true }) == "/x.sock")
        #expect(SocketPath.forClient(environment: ["XDG_RUNTIME_DIR": "/run/user/1000"], uid: 1000, exists: { _ in false })
                == "/run/user/1000/ioatd.sock")
        #expect(SocketPath.forClient(environment: [:], uid: 1000, exists: { _ in false }) == "/tmp/ioatd-1000.sock")
        // The server's own default stays as it was.
        #expect(SocketPath.resolved(environment: [:], uid: 1000) == "/tmp/ioatd-1000.sock")
    }

    @Test("A client trusts root, the ioatd user, or itself on a socket of its own; nobody else",
          .enabled(if: getuid() == 0, "needs root to give a socket file to another uid"))
    func trustRule() throws {
        #expect(SocketPath.distrust(serverUID: 0, path: "/anything", clientUID: 1000, serviceUID: 990) == nil)
        #expect(SocketPath.distrust(serverUID: 990, path: "/anything", clientUID: 1000, serviceUID: 990) == nil)
        let stranger = try #require(SocketPath.distrust(serverUID: 4242, path: "/tmp/ioatd-1000.sock", clientUID: 1000, serviceUID: 990))
        #expect(stranger.contains("uid 4242"), "\(stranger)")
        // Its own uid: only for a socket file it owns, in a directory others cannot write to (or sticky).
        let mine = temporarySocketPath()
        let listener = try UnixSocket.listen(path: mine, mode: 0o600)
        defer { unlink(mine) }
        let user: UInt32 = 4242
        try withExtendedLifetime(listener) {
            #expect(SocketPath.distrust(serverUID: user, path: mine, clientUID: user, serviceUID: nil)?.contains("owned by uid") == true)
            try #require(chown(mine, user, user) == 0)
            #expect(SocketPath.distrust(serverUID: user, path: mine, clientUID: user, serviceUID: nil) == nil, "/tmp is sticky")
        }
        let open = "/tmp/ioatd-open-\(getpid())"
        mkdir(open, 0o777)
        chmod(open, 0o777)  // writable by anyone, not sticky
        defer { rmdir(open) }
        let there = "\(open)/ioatd.sock"
        let other = try UnixSocket.listen(path: there, mode: 0o600)
        defer { unlink(there) }
        try withExtendedLifetime(other) {
            try #require(chown(there, user, user) == 0)
            let why = SocketPath.distrust(serverUID: user, path: there, clientUID: user, serviceUID: nil)
            #expect(why?.contains("can be written by others") == true, "\(String(describing: why))")
        }
    }

    @Test("A client refuses a squatter: another uid listening on its socket path gets no HELLO and no memfd",
          .enabled(if: getuid() == 0 && isExecutable("/usr/bin/python3"), "needs root (setpriv) and python3"))
    func squatter() async throws {
        let path = temporarySocketPath()
        let ready = path + ".ready"
        let got = path + ".got"
        defer { unlink(path); unlink(ready); unlink(got) }
        // uid 65534 binds the path first, and records whatever a client sends it.
        let script = """
            import socket, sys
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.bind(sys.argv[1]); s.listen(4)
            import os; os.chmod(sys.argv[1], 0o777); open(sys.argv[2], "w").close()
            c, _ = s.accept(); c.settimeout(3)
            try: data = c.recv(65536)
            except Exception: data = b""
            open(sys.argv[3], "w").write(str(len(data)))
            """
        chmod("/tmp", 0o1777)
        let squatter = try SpawnedProcess("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c",
                                                               script, path, ready, got])
        #expect(waitUntil(timeout: 10) { access(ready, F_OK) == 0 }, "the squatter did not start")
        do throws(IOATError) {
            _ = try await IOATClient.connect(path: path)
            Issue.record("the client talked to a server run by uid 65534")
        } catch {
            guard case .untrustedServer(let why) = error else {
                Issue.record("expected untrustedServer, got \(error)")
                return
            }
            #expect(why.contains("uid 65534") && why.contains(path), "\(why)")
        }
        _ = squatter.wait(timeout: 10)
        #expect((try? String(contentsOfFile: got, encoding: .utf8)) == "0", "the client sent the squatter something")
    }

    @Test("ioatctl takes --socket before its subcommand too")
    func socketBeforeSubcommand() throws {
        let server = try TestServer()
        for arguments in [["--socket", server.path, "status"], ["--socket=\(server.path)", "status"], ["status", "--socket", server.path]] {
            let (status, out) = try runTool("ioatctl", arguments, mergingErrors: true)
            #expect(status == 0 && out.contains("ioatd pid \(server.pid)"), "\(arguments): \(out)")
        }
    }

    @Test("Errors before logging starts carry a journal priority; --check-config says whether the file would load")
    func startupErrors() throws {
        let bad = temporarySocketPath() + ".toml"
        try "[server]\nbogus = 1\n".write(toFile: bad, atomically: true, encoding: .utf8)
        defer { unlink(bad) }
        let journal = ["JOURNAL_STREAM": "8:12345", "PATH": "/usr/bin:/bin"]
        // A bad file exits 2, a bad option 64 (EX_USAGE): the unit restarts neither.
        for (arguments, code) in [(["--config", bad], Int32(2)), (["--engine", "bogus"], Int32(64))] {
            let (status, out) = try runTool("ioatd", arguments + ["--socket", temporarySocketPath()], environment: journal, mergingErrors: true)
            #expect(status == code, "\(arguments): \(status)")
            let lines = out.split(separator: "\n")
            #expect(!lines.isEmpty && lines.allSatisfy { $0.hasPrefix("<3>") }, "\(arguments): \(out)")
        }
        // Without the journal: plain text.
        let (plainStatus, plain) = try runTool("ioatd", ["--config", bad], mergingErrors: true)
        #expect(plainStatus == 2 && plain.hasPrefix("ioatd: configuration: ") && plain.contains(":2:"), "\(plain)")
        // What `systemctl reload` runs first.
        #expect(try runTool("ioatd", ["--config", bad, "--check-config"], mergingErrors: true).0 == 2)
        let good = repositoryRoot.appendingPathComponent("deploy/ioatd.toml").path
        let (goodStatus, goodOut) = try runTool("ioatd", ["--config", good, "--check-config"], mergingErrors: true)
        #expect(goodStatus == 0 && goodOut.contains("is good"), "\(goodOut)")
    }

    @Test("Without CAP_IPC_LOCK and with a low memlock limit, ioatd warns once at start, naming the limit",
          .enabled(if: getuid() == 0 && isExecutable("/usr/bin/setpriv") && isExecutable("/usr/bin/prlimit"), "needs root, setpriv and prlimit"))
    func memlockWarning() throws {
        let path = temporarySocketPath()
        let log = path + ".log"
        defer { unlink(path); unlink(log) }
        // (Through a shell, for the log on standard error.)
        let daemon = try SpawnedProcess("/bin/sh", ["-c", "exec /usr/bin/setpriv --bounding-set=-ipc_lock --inh-caps=-ipc_lock /usr/bin/prlimit "
                                                    + "--memlock=65536 \(buildDirectory.appendingPathComponent("ioatd").path) --socket \(path) 2>&1"],
                                        output: log)
        defer { kill(daemon.pid, SIGTERM); _ = daemon.wait(timeout: 10) }
        let warned = waitUntil(timeout: 10) { ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains("serving") }
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(warned, "\(text)")
        #expect(text.contains("buffers will not be locked") && text.contains("65536"), "\(text)")
        // With the capability (root as it is), no warning.
        let quiet = try TestServer()
        #expect(!quiet.log.contains("buffers will not be locked"))
    }

    @Test("A client tells a clean stop from a crash: GOODBYE calls its handler, and ops cut off fail serverStopped")
    func goodbye() async throws {
        let server = try InProcessServer(engine: try CPUEngine(channelCount: 1, busyPollMicroseconds: 0)) { $0.drainTimeoutMilliseconds = 200 }
        let client = try await IOATClient.connect(path: server.path)
        let seen = Mutex<UInt32?>(nil)
        client.onServerStopping { drain in seen.withLock { $0 = drain } }
        let queue = try await client.openQueue(depth: 4)
        #expect(!client.isServerStopping)
        server.server.requestStop()
        #expect(await eventually { seen.withLock { $0 } != nil }, "no GOODBYE reached the handler")
        #expect(seen.withLock { $0 } == 200)
        #expect(client.isServerStopping)
        // The connection closes once the drain is over; a call then fails as a clean stop.
        let outcome = await eventually(timeout: 10) {
            do throws(IOATError) {
                _ = try await queue.submit(.null())
                return false
            } catch {
                if case .serverStopped = error { return true }
                if case .refused(let e) = error, e.code == .shuttingDown { return false }
                Issue.record("after GOODBYE a call failed with \(error), not serverStopped")
                return true
            }
        }
        #expect(outcome)
        server.stop()
    }

    @Test("systemd-analyze security scores the unit 1.0 or better", .enabled(if: isExecutable("/usr/bin/systemd-analyze"), "needs systemd-analyze"))
    func securityScore() throws {
        let dir = "/tmp/ioatd-security-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let unit = try String(contentsOf: repositoryRoot.appendingPathComponent("deploy/ioatd.service.in"), encoding: .utf8)
            .replacingOccurrences(of: "@BINDIR@", with: "/usr/bin").replacingOccurrences(of: "@SYSCONFDIR@", with: "/etc")
            .replacingOccurrences(of: "@DOCDIR@", with: "/usr/share/doc/ioatd")
        try unit.write(toFile: "\(dir)/ioatd.service", atomically: true, encoding: .utf8)
        let (_, out) = try runTool("/usr/bin/systemd-analyze", ["security", "--offline=true", "\(dir)/ioatd.service"], mergingErrors: true)
        let line = try #require(out.split(separator: "\n").first { $0.contains("Overall exposure level") }, "\(out)")
        let score = Double(line.split(separator: ":").last?.split(separator: " ").first ?? "") ?? 99
        #expect(score <= 1.0, "\(line)")
    }
}
