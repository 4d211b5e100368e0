import Foundation
import Glibc
import IOATClient
import IOATConformance
import IOATProtocol
import IOATServer
@testable import ioatd
import IOATSystem
import Synchronization
import Testing

/// A datagram socket the test owns, given to ioatd as NOTIFY_SOCKET: what systemd would receive. Like
/// systemd it reads every datagram as it comes (a Unix datagram queue holds only about ten, and
/// sd_notify blocks when it is full).
final class NotifySocket: @unchecked Sendable {
    /// What the reader thread shares; the thread holds it strongly, never the NotifySocket itself.
    private final class State: Sendable {
        let fd: FileDescriptor
        let received = Mutex<[String]>([])
        let stop = Atomic<Bool>(false)
        init(fd: FileDescriptor) { self.fd = fd }
    }

    let path: String
    private let state: State
    private let reader: OSThread

    init() throws {
        let path = temporarySocketPath() + ".notify"
        self.path = path
        unlink(path)
        let fd = FileDescriptor(owning: socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0))
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd.rawValue, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw SystemError.current("bind notify socket") }
        let state = State(fd: fd)
        self.state = state
        reader = OSThread(name: "notify-reader") {
            while !state.stop.load(ordering: .relaxed) {
                var pfd = pollfd(fd: state.fd.rawValue, events: Int16(POLLIN), revents: 0)
                guard poll(&pfd, 1, 50) == 1 else { continue }
                var buffer = [UInt8](repeating: 0, count: 4096)
                let n = recv(state.fd.rawValue, &buffer, buffer.count, 0)
                if n > 0 {
                    let text = String(decoding: buffer[0..<n], as: UTF8.self)
                    state.received.withLock { $0.append(text) }
                }
            }
        }
    }

    deinit {
        state.stop.store(true, ordering: .relaxed)
        reader.join()
        unlink(path)
    }

    /// The first datagram containing `needle`, waiting up to `timeout` seconds.
    func wait(for needle: String, timeout: Double = 10) -> String? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let hit = state.received.withLock({ $0.first { $0.contains(needle) } }) { return hit }
            if Date() >= deadline { return nil }
            usleep(20_000)
        }
    }
}

/// ioatd run by Tests/support/socket-holder.py, which holds the socket and restarts ioatd when it dies.
/// Spawned without Foundation's Process, whose exit detection breaks when the holder's children inherit
/// its descriptors.
/// Connects to `path` until a connection succeeds (closing it at once) or `attempts` have failed,
/// sleeping `pause` microseconds between attempts; whether one succeeded.
func waitForListener(_ path: String, attempts: Int, pause: UInt32) -> Bool {
    for _ in 0..<attempts {
        if (try? UnixSocket.connect(path: path)) != nil { return true }
        usleep(pause)
    }
    return false
}

final class HeldServer: @unchecked Sendable {
    let path = temporarySocketPath()
    let outputPath: String
    let holder: SpawnedProcess

    init(arguments: [String] = []) throws {
        outputPath = path + ".out"
        holder = try SpawnedProcess("/usr/bin/python3", [
            repositoryRoot.appendingPathComponent("Tests/support/socket-holder.py").path, path, "--",
            buildDirectory.appendingPathComponent("ioatd").path, "--log-level", "warning",
        ] + arguments, output: outputPath)
        guard childPIDs(waitingFor: 1).count >= 1 else { throw SystemError("socket holder did not start ioatd", errno: ETIMEDOUT) }
        // One probe connection, once the socket answers. (A `for … where connect(…)` filter would connect on
        // every one of its rounds: 200 connections queued for the new ioatd, over a tenant's limit.)
        _ = waitForListener(path, attempts: 200, pause: 10_000)
    }

    private var lines: [String] { (readSmallFile(outputPath) ?? "").split(separator: "\n").map(String.init) }

    /// The PIDs of the ioatd processes started so far, waiting until there are `count`.
    func childPIDs(waitingFor count: Int, timeout: Double = 10) -> [Int32] {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let pids = lines.filter { $0.hasPrefix("child ") }.compactMap { Int32($0.dropFirst(6)) }
            if pids.count >= count || Date() >= deadline { return pids }
            usleep(20_000)
        }
    }

    var exitLines: [String] { lines.filter { $0.hasPrefix("exit ") } }

    deinit {
        kill(holder.pid, SIGTERM)
        if holder.wait(timeout: 10) == nil { kill(holder.pid, SIGKILL) }
        for pid in childPIDs(waitingFor: 0, timeout: 0) { kill(pid, SIGKILL) }
        unlink(path)
        unlink(outputPath)
    }
}

@Suite("systemd service")
struct ServiceTests {
    @Test("systemd-analyze verify accepts the units", .enabled(if: isExecutable("/usr/bin/systemd-analyze"), "needs systemd-analyze"))
    func verifyUnits() throws {
        let dir = "/tmp/ioatd-units-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let template = try String(contentsOf: repositoryRoot.appendingPathComponent("deploy/ioatd.service.in"), encoding: .utf8)
        let unit = template.replacingOccurrences(of: "@BINDIR@", with: buildDirectory.path)
            .replacingOccurrences(of: "@SYSCONFDIR@", with: "/etc").replacingOccurrences(of: "@DOCDIR@", with: "/usr/share/doc/ioatd")
        try unit.write(toFile: "\(dir)/ioatd.service", atomically: true, encoding: .utf8)
        let metrics = try String(contentsOf: repositoryRoot.appendingPathComponent("deploy/ioatd-metrics.service.in"), encoding: .utf8)
            .replacingOccurrences(of: "@BINDIR@", with: buildDirectory.path).replacingOccurrences(of: "@DOCDIR@", with: "/usr/share/doc/ioatd")
        try metrics.write(toFile: "\(dir)/ioatd-metrics.service", atomically: true, encoding: .utf8)
        for name in ["ioatd.socket", "ioatd-metrics.timer"] {
            try FileManager.default.copyItem(atPath: repositoryRoot.appendingPathComponent("deploy/\(name)").path, toPath: "\(dir)/\(name)")
        }
        let (status, output) = try runTool("/usr/bin/systemd-analyze", ["verify", "--man=no", "\(dir)/ioatd.socket", "\(dir)/ioatd.service",
                                                                         "\(dir)/ioatd-metrics.service", "\(dir)/ioatd-metrics.timer"],
                                           mergingErrors: true)
        #expect(status == 0, "\(output)")
        #expect(!output.contains("ioatd.s"), "systemd-analyze complained: \(output)")
    }

    @Test("the example configuration parses, and bad files name their line")
    func configuration() throws {
        let example = try String(contentsOf: repositoryRoot.appendingPathComponent("deploy/ioatd.toml"), encoding: .utf8)
        let defaults = DaemonConfiguration(socketPath: "/x")
        let parsed = try DaemonConfiguration.parse(example, source: "ioatd.toml", defaults: defaults)
        #expect(parsed.server.busyPollMicroseconds == 50 && parsed.server.maxQueueDepth == 1024 && parsed.channels == nil)
        let bad: [(String, Int, String)] = [
            ("[server]\nbusy_poll_us = 5\nmax_conections = 3\n", 3, "server.max_conections: unknown key"),
            ("[server]\nbusy_poll_us = \"fast\"\n", 2, "must be an integer"),
            ("[engine]\n\nchannels = 99\n", 3, "99 is outside 0...64"),
            ("[nope]\nx = 1\n", 1, "unknown section"),
            ("[server\n", 1, "expected ']'"),
            ("[server]\nsocket_mode = \"0999\"\n", 2, "octal"),
            ("[policy.cgroups.\"machine.slice\"]\nweight = 2\n", 1, "is not a cgroup path"),
            ("[policy.units.\"a/b.scope\"]\nweight = 2\n", 1, "is not a unit name"),
            ("[policy.units.\"x.scope\"]\nshared = 1\n", 2, "must be true or false"),
            ("[policy.units.\"x.scope\"]\nadmins = true\n", 2, "unknown key"),
        ]
        // Units and cgroups: limits like a user's, and sharing and the full view.
        let scoped = try DaemonConfiguration.parse("""
            [policy.default]
            max_queues = 7
            [policy.units."docker-*.scope"]
            weight = 4
            shared = true
            [policy.cgroups."/machine.slice"]
            max_buffer_bytes = 1024
            admin = true
            """, source: "t.toml", defaults: defaults)
        let unit = try #require(scoped.server.policy.units["docker-*.scope"])
        #expect(unit.limits.weight == 4 && unit.shared && !unit.admin && unit.limits.maxQueues == 7)
        let cgroup = try #require(scoped.server.policy.cgroups["/machine.slice"])
        #expect(cgroup.limits.maxBufferBytes == 1024 && cgroup.admin && !cgroup.shared)
        for (text, line, fragment) in bad {
            do {
                _ = try DaemonConfiguration.parse(text, source: "t.toml", defaults: defaults)
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.line == line, "\(error)")
                #expect(error.message.contains(fragment), "\(error)")
            }
        }
        let path = "/tmp/ioatd-bad-\(getpid()).toml"
        try "[server]\nmax_conections = 3\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { unlink(path) }
        let (status, _) = try runTool("ioatd", ["--config", path])
        #expect(status == 2)
    }

    @Test("under systemd-socket-activate: activation, READY=1, STATUS, ops, STOPPING=1 and exit 0", .enabled(if: isExecutable("/usr/bin/systemd-socket-activate"), "needs systemd-socket-activate"))
    func socketActivation() async throws {
        let notify = try NotifySocket()
        let path = temporarySocketPath()
        defer { unlink(path) }
        // Not Foundation's Process: systemd-socket-activate closes inherited descriptors, which Process
        // mistakes for an exit.
        let process = try SpawnedProcess("/usr/bin/systemd-socket-activate", [
            "--seqpacket", "-l", path, "-E", "NOTIFY_SOCKET=\(notify.path)", "-E", "WATCHDOG_USEC=400000",
            buildDirectory.appendingPathComponent("ioatd").path, "--log-level", "info",
        ])
        // systemd-socket-activate starts ioatd on the first connection.
        var client: IOATClient? = nil
        for _ in 0..<100 where client == nil {
            client = try? await IOATClient.connect(path: path)
            if client == nil { try await Task.sleep(nanoseconds: 50_000_000) }
        }
        guard let client else {
            Issue.record("could not connect through the activated socket")
            return
        }
        #expect(notify.wait(for: "READY=1")?.contains("STATUS=serving") == true)
        #expect(notify.wait(for: "WATCHDOG=1") != nil)
        let status = try await statusDocument(client)
        #expect(status.server.socket.contains("socket-activated"))
        let results = await ConformanceSuite(iterations: 30, seed: 3, bufferSize: 1 << 20).run(client)
        #expect(results.allSatisfy { $0.passed }, "\(results.filter { !$0.passed }.map { "\($0.name): \($0.detail)" })")
        kill(process.pid, SIGTERM)
        #expect(notify.wait(for: "STOPPING=1") != nil)
        #expect(process.wait() == 0)
    }

    @Test("SIGTERM under load: clients get GOODBYE, accepted ops complete, new work is refused, exit 0")
    func gracefulStopUnderLoad() throws {
        let server = try TestServer()
        let raw = try RawClient.withBufferAndQueue(server.path, bufferSize: 128 << 20, depth: 8)
        let ops = (0..<8).map { i in
            Descriptor.copy(from: .init(handle: raw.buffer, offset: 0), to: .init(handle: raw.buffer, offset: 64 << 20), length: 64 << 20, cookie: UInt64(i))
        }
        try raw.send(Message.encodeSubmit(queue: raw.queue, descriptors: ops, requestID: 4))
        // Stop once the server holds the ops: its STATUS shows them in the engine.
        let probe = try RawClient(path: server.path)
        let inFlight = waitUntil(timeout: 10) {
            try? probe.send(packet(.status, requestID: probe.requestID()))
            guard let answer = try? probe.receive(), case .statusReply(let json) = answer.message,
                let doc = try? JSONDecoder().decode(StatusDocument.self, from: Data(json.utf8)) else { return false }
            return doc.channels.contains { $0.inEngine > 0 }
        }
        #expect(inFlight, "the ops never reached the engine")
        kill(server.pid, SIGTERM)
        var sawGoodbye = false
        var records: [CompletionRecord] = []
        var refused: ErrorCode? = nil
        while let answer = try raw.receive(timeout: 20) {
            switch answer.message {
            case .goodbye(let drain):
                sawGoodbye = true
                #expect(drain == 5000)
                try raw.send(Message.encodeSubmit(queue: raw.queue, descriptors: [.null(cookie: 99)], requestID: 5))
            case .error(let e): refused = e.code
            default:
                try answer.storage.withUnsafeBytes { bytes in
                    if case .completion(let view) = try Message.decode(bytes).1 {
                        for i in 0..<view.count { records.append(try view.record(at: i)) }
                    }
                }
            }
        }
        #expect(sawGoodbye)
        #expect(refused == .shuttingDown)
        #expect(records.map(\.cookie) == (0..<8).map { UInt64($0) })
        #expect(records.allSatisfy { $0.status == .success })
        server.process.waitUntilExit()
        #expect(server.process.terminationStatus == 0)
    }

    @Test("kill -9 under load of verified copies, restart on the same socket: no op is reported done wrongly, clients go on", .enabled(if: isExecutable("/usr/bin/python3"), "needs python3 for the socket holder"))
    func crashAndRestart() async throws {
        let held = try HeldServer()
        let clientCount = 4
        final class Shared: Sendable {
            let verifiedAfterRestart = Mutex(0)
            let wrong = Mutex<[String]>([])
            let restarted = Atomic<Bool>(false)
        }
        let shared = Shared()
        try await withThrowingTaskGroup(of: (done: Int, failed: Int).self) { group in
            for c in 0..<clientCount {
                group.addTask {
                    var client: IOATClient? = nil
                    var done = 0, failed = 0, round = 0
                    var size = 256 << 10
                    var setup: (IOATBuffer, IOATBuffer, IOATQueue)? = nil
                    let deadline = Date().addingTimeInterval(30)
                    while Date() < deadline {
                        round += 1
                        do {
                            if client == nil { client = try await IOATClient.connect(path: held.path) }
                            let client = client!
                            if setup == nil {
                                let a = try await client.allocate(size: 4 << 20, pages: .normal)
                                let b = try await client.allocate(size: 4 << 20, pages: .normal)
                                setup = (a, b, try await client.openQueue(depth: 8))
                            }
                            let (a, b, q) = setup!
                            size = (size * 5 + 4096) % (4 << 20) + 1
                            a.fillPseudoRandom(0..<size, seed: UInt64(c * 1_000_000 + round))
                            b.set(0..<size, to: 0)
                            let r = try await q.copy(from: a, to: b, length: size)
                            if r.status == .success {
                                if memcmp(a.unsafeBytes(0..<size).baseAddress!, b.unsafeBytes(0..<size).baseAddress!, size) != 0 {
                                    shared.wrong.withLock { $0.append("client \(c) round \(round): reported done but bytes differ") }
                                }
                                done += 1
                                if shared.restarted.load(ordering: .relaxed) { shared.verifiedAfterRestart.withLock { $0 += 1 } }
                            } else {
                                failed += 1
                            }
                        } catch let error as IOATError {
                            switch error {
                            case .connectionLost:
                                // The op is reported failed, never done. Buffers and queues belong to the
                                // dead connection; the next call reconnects.
                                failed += 1
                                setup = nil
                            case .system:
                                break  // connect refused while the holder restarts ioatd
                            default:
                                throw error
                            }
                            try await Task.sleep(nanoseconds: 20_000_000)
                        }
                        if shared.verifiedAfterRestart.withLock({ $0 }) >= clientCount * 20 { break }
                    }
                    return (done, failed)
                }
            }
            // Let the load run, then kill the server hard; the holder starts it again.
            try await Task.sleep(nanoseconds: 400_000_000)
            let first = held.childPIDs(waitingFor: 1)[0]
            kill(first, SIGKILL)
            #expect(held.childPIDs(waitingFor: 2).count == 2, "the holder did not restart ioatd")
            shared.restarted.store(true, ordering: .relaxed)
            var total = (done: 0, failed: 0)
            for try await r in group {
                total.done += r.done
                total.failed += r.failed
            }
            #expect(total.done > 0)
        }
        #expect(shared.wrong.withLock { $0 }.isEmpty, "\(shared.wrong.withLock { $0 })")
        #expect(shared.verifiedAfterRestart.withLock { $0 } >= clientCount * 20, "clients did not go on after the restart")
        #expect(held.exitLines.first == "exit -9")
    }

    @Test("after a restart, an old buffer is refused rather than aliased, and re-registering it keeps its bytes", .enabled(if: isExecutable("/usr/bin/python3"), "needs python3 for the socket holder"))
    func staleBuffersAfterRestart() async throws {
        let held = try HeldServer()
        let client = try await IOATClient.connect(path: held.path)
        let old = try await client.allocate(size: 65536, pages: .normal)
        old.fillPseudoRandom(0..<65536, seed: 5)
        kill(held.childPIDs(waitingFor: 1)[0], SIGKILL)
        #expect(held.childPIDs(waitingFor: 2).count == 2)
        // The next calls reconnect; on the new connection handle 1 is `fresh`, the number `old` also has.
        var queue: IOATQueue? = nil
        for _ in 0..<100 where queue == nil {
            queue = try? await client.openQueue(depth: 4)
            if queue == nil { try await Task.sleep(nanoseconds: 20_000_000) }
        }
        let q = try #require(queue)
        let fresh = try await client.allocate(size: 65536, pages: .normal)
        #expect(client.reconnectCount >= 1)
        #expect(!old.isUsable(on: q) && fresh.isUsable(on: q))
        do {
            _ = try await q.copy(from: old, to: fresh, length: 4096)
            Issue.record("a buffer of the dead connection was used on the new one")
        } catch {
            guard case .connectionLost = error else { Issue.record("\(error)"); return }
        }
        // Re-registering the old memfd on the new connection keeps its bytes.
        let again = try await client.register(old)
        #expect(try await q.copy(from: again, to: fresh, length: 65536).status == .success)
        #expect(same(old, 0, fresh, 0, 65536))
    }

    @Test("with JOURNAL_STREAM set, log lines carry syslog priorities")
    func journalFormat() throws {
        let path = temporarySocketPath()
        let process = Process()
        process.executableURL = buildDirectory.appendingPathComponent("ioatd")
        process.arguments = ["--socket", path, "--log-level", "info"]
        process.environment = ["JOURNAL_STREAM": "8:12345", "PATH": "/usr/bin:/bin"]
        let err = Pipe()
        process.standardError = err
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        _ = waitForListener(path, attempts: 100, pause: 20_000)
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        let lines = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n")
        #expect(!lines.isEmpty)
        #expect(lines.allSatisfy { $0.hasPrefix("<") && $0.dropFirst(2).hasPrefix(">") }, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("<6>serving") })
        #expect(lines.contains { $0.hasPrefix("<5>signal received") })
        unlink(path)
    }
}
