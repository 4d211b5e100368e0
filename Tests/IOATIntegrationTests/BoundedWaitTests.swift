import Foundation
import Glibc
import IOATClient
import IOATProtocol
import IOATSystem
import Testing

/// A listening socket that takes connections into its backlog and never answers: a wedged server, or
/// any process bound to the path.
private final class MuteSocket {
    let path = temporarySocketPath()
    private let fd: FileDescriptor

    init() throws { fd = try UnixSocket.listen(path: path) }
    deinit { unlink(path) }
}

/// Runs a tool, killing it after `bound` seconds if it has not ended; its status (nil when it had to
/// be killed), its output and standard error together, and how long it ran.
private func runBounded(_ name: String, _ arguments: [String], environment: [String: String] = [:], removing: [String] = [],
                        bound: Double = 30) throws
    -> (status: Int32?, output: String, seconds: Double)
{
    let process = Process()
    process.executableURL = buildDirectory.appendingPathComponent(name)
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }.filter { !removing.contains($0.key) }
    let out = Pipe()
    process.standardOutput = out
    process.standardError = out
    let start = Date()
    try process.run()
    let ended = waitUntil(timeout: bound) { !process.isRunning }
    if !ended { kill(process.processIdentifier, SIGKILL) }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (ended ? process.terminationStatus : nil, String(decoding: data, as: UTF8.self), Date().timeIntervalSince(start))
}

/// The text of the `timedOut` that `body` must end with; records an issue (and gives nil) when it
/// succeeds (`what` says what should not have) or fails another way.
private func timedOutText<T>(_ what: String, _ body: () async throws -> T) async -> String? {
    do {
        _ = try await body()
        Issue.record("\(what)")
    } catch {
        if case .timedOut(let text)? = error as? IOATError { return text }
        Issue.record("expected timedOut, got \(error)")
    }
    return nil
}

/// Nothing a client does waits forever on the server (issue 19): connecting and HELLO, and each
/// request, have bounds with defaults, an option and an environment variable, and the error names what
/// was awaited, the socket, the bound and where to look. `make test` runs this suite alone, after the
/// rest: in the parallel run, tests that block the cooperative pool's threads delay a test task by tens
/// of seconds, which says nothing about the client's bound.
@Suite("bounded waits")
struct BoundedWaitTests {
    @Test("ioatctl against a mute socket gives up within its bound, naming HELLO, the socket and the log")
    func ioatctlMuteSocket() throws {
        let mute = try MuteSocket()
        let option = try runBounded("ioatctl", ["status", "--socket", mute.path, "--connect-timeout", "0.5"])
        #expect(option.status == 1, "ioatctl status waited \(option.seconds) s: \(option.output)")
        #expect(option.seconds < 10)
        for needle in ["HELLO", mute.path, "500 ms", "journalctl -u ioatd"] {
            #expect(option.output.contains(needle), "\(needle) in: \(option.output)")
        }
        let environment = try runBounded("ioatctl", ["status", "--socket", mute.path], environment: ["IOATD_CONNECT_TIMEOUT_MS": "300"])
        #expect(environment.status == 1 && environment.output.contains("300 ms"), "\(environment.output)")
    }

    @Test("the default bound applies with no option and no environment")
    func ioatctlDefaultBound() throws {
        let mute = try MuteSocket()
        let run = try runBounded("ioatctl", ["status", "--socket", mute.path], environment: [:], removing: ["IOATD_CONNECT_TIMEOUT_MS"], bound: 30)
        #expect(run.status == 1 && run.output.contains("5000 ms"), "after \(run.seconds) s: \(run.output)")
    }

    @Test("the Swift client's connect gives up on a mute socket with timedOut")
    func swiftClientMuteSocket() async throws {
        let mute = try MuteSocket()
        let start = Date()
        guard let text = await timedOutText("connect to a mute socket succeeded", { try await IOATClient.connect(path: mute.path, timeouts: .init(connect: .milliseconds(300))) }) else { return }
        #expect(text.contains("HELLO") && text.contains(mute.path) && text.contains("300 ms") && text.contains("journalctl"), "\(text)")
        #expect(Date().timeIntervalSince(start) < 10)
    }

    @Test("a stopped server: a request times out, the connection stays usable, and ioatctl gives up on HELLO")
    func stoppedServer() async throws {
        let server = try TestServer()
        let client = try await IOATClient.connect(path: server.path, timeouts: .init(connect: .seconds(10), call: .milliseconds(300)))
        kill(server.pid, SIGSTOP)
        var resumed = false
        defer { if !resumed { kill(server.pid, SIGCONT) } }
        guard let text = await timedOutText("ALLOC answered by a stopped server", { try await client.allocate(size: 4096) }) else { return }
        #expect(text.contains("ALLOC") && text.contains(server.path) && text.contains("300 ms"), "\(text)")
        let tool = try runBounded("ioatctl", ["status", "--socket", server.path, "--connect-timeout", "0.3"])
        #expect(tool.status == 1 && tool.output.contains("HELLO"), "\(tool.output)")
        kill(server.pid, SIGCONT)
        resumed = true
        // The late ALLOC_OK finds no caller; the connection goes on.
        let buffer = try await client.allocate(size: 4096)
        #expect(buffer.size >= 4096)
    }

    @Test("ops on a stopped server: a batch gives up with timedOut on either transport, the queue goes on, and IOATRing.wait is bounded by default",
          arguments: [IOATClient.Transport.ring, .socket])
    func stoppedServerOps(_ transport: IOATClient.Transport) async throws {
        let server = try TestServer()
        let client = try await IOATClient.connect(path: server.path, transport: transport,
                                                  timeouts: .init(connect: .seconds(10), call: .milliseconds(300)))
        let a = try await client.allocate(size: 8192)
        let b = try await client.allocate(size: 8192)
        a.fillPseudoRandom(0..<8192, seed: 5)
        let queue = try await client.openQueue(depth: 8)
        #expect(queue.isRing == (transport == .ring))
        let ring = transport == .ring ? try await client.openRing(depth: 8) : nil
        kill(server.pid, SIGSTOP)
        var resumed = false
        defer { if !resumed { kill(server.pid, SIGCONT) } }
        let start = Date()
        guard let text = await timedOutText("a copy completed on a stopped server", { try await queue.copy(from: a, to: b, length: 4096) }) else { return }
        #expect(text.contains("1 op on") && text.contains(server.path) && text.contains("300 ms"), "\(text)")
        // Given up within 1⅛ of the bound, measured loosely (the suite runs alone).
        #expect(Date().timeIntervalSince(start) < 10)
        if let ring {
            _ = ring.push(.null(cookie: 1))
            try ring.submit()
            #expect(throws: IOATError.self) { try ring.wait(for: 1) }
        }
        kill(server.pid, SIGCONT)
        resumed = true
        // The late record is read in order and dropped; the queue goes on with the right bytes.
        let record = try await queue.copy(from: a, to: b, length: 8192)
        #expect(record.status == .success)
        #expect(b.read(at: 0, count: 8192) == a.read(at: 0, count: 8192))
        if let ring {
            #expect(try ring.wait(for: 1, timeoutMilliseconds: 10_000) >= 1)
            _ = ring.reap { _ in }
            try await ring.close()
        }
    }

    @Test("a socket-activated ioatd whose configuration is bad answers the waiting client with UNAVAILABLE, without the file's contents",
          .enabled(if: isExecutable("/usr/bin/systemd-socket-activate"), "needs systemd-socket-activate"))
    func unavailableOnBadConfiguration() async throws {
        let path = temporarySocketPath()
        let config = path + ".toml"
        defer {
            unlink(path)
            unlink(config)
        }
        try "[server]\nsecret_misspelt_key = \"hunter2\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        let process = try SpawnedProcess("/usr/bin/systemd-socket-activate", [
            "--seqpacket", "-l", path, buildDirectory.appendingPathComponent("ioatd").path, "--config", config,
        ])
        defer {
            kill(process.pid, SIGKILL)
            process.wait()
        }
        #expect(waitUntil(timeout: 10) { access(path, F_OK) == 0 }, "systemd-socket-activate did not listen")
        let start = Date()
        do {
            _ = try await IOATClient.connect(path: path, timeouts: .init(connect: .seconds(20)))
            Issue.record("connected to an ioatd that cannot start")
        } catch {
            guard case .refused(let e) = error else {
                Issue.record("expected UNAVAILABLE, got \(error)")
                return
            }
            #expect(e.code == .unavailable, "\(e)")
            #expect(e.message.contains("cannot start") && e.message.contains("journalctl"), "\(e.message)")
            #expect(!e.message.contains("secret_misspelt_key") && !e.message.contains("hunter2"), "the configuration leaked: \(e.message)")
        }
        #expect(Date().timeIntervalSince(start) < 10, "the refusal came after \(Date().timeIntervalSince(start)) s")
    }
}
