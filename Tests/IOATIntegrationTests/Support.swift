import Foundation
import Glibc
import IOATClient
import IOATProtocol
import IOATSystem
import Synchronization

/// Directory holding the built executables (the test binary sits beside them).
let buildDirectory: URL = {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    return URL(fileURLWithPath: exe).deletingLastPathComponent()
}()

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

private let socketCounter = Atomic<Int>(0)

/// Whether `path` is an executable file (for tests that need a tool: they are skipped, visibly, without it).
func isExecutable(_ path: String) -> Bool { FileManager.default.isExecutableFile(atPath: path) }

/// A unique socket path for one test server.
func temporarySocketPath() -> String {
    "/tmp/ioatd-test-\(getpid())-\(socketCounter.add(1, ordering: .relaxed).newValue).sock"
}

/// A real ioatd process on a temporary socket, stopped when the test ends.
final class TestServer: @unchecked Sendable {
    let path: String
    let process: Process
    let logPath: String

    /// With `executable`, another ioatd binary (the release build, say); `environment` is added to the
    /// test process's.
    init(arguments: [String] = [], executable: URL? = nil, environment: [String: String] = [:]) throws {
        path = temporarySocketPath()
        logPath = path + ".log"
        process = Process()
        process.executableURL = executable ?? buildDirectory.appendingPathComponent("ioatd")
        process.arguments = ["--socket", path, "--log-level", "debug"] + arguments
        if !environment.isEmpty { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.standardError = FileHandle(forWritingAtPath: logPath)
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if (try? UnixSocket.connect(path: path)) != nil { return }
            usleep(10_000)
        }
        throw SystemError("ioatd did not start listening at \(path); log: \(log)", errno: ETIMEDOUT)
    }

    var pid: Int32 { process.processIdentifier }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Open descriptors of the server process.
    func openFDs() -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).count
    }

    /// Open descriptors once the count has stopped changing (connections being torn down settle first).
    func settledFDs() -> Int {
        var last = openFDs()
        for _ in 0..<50 {
            usleep(20_000)
            let now = openFDs()
            if now == last { return now }
            last = now
        }
        return last
    }

    func connect() async throws -> IOATClient { try await IOATClient.connect(path: path) }

    /// Sends SIGTERM and waits for the exit status.
    @discardableResult
    func stop() -> Int32 {
        if process.isRunning {
            kill(pid, SIGTERM)
            process.waitUntilExit()
        }
        return process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
        }
        unlink(path)
        if ProcessInfo.processInfo.environment["IOATD_TEST_KEEP_LOGS"] == nil { unlink(logPath) }
    }
}

/// A connection that speaks raw packets, for sending what a well-behaved client never would.
final class RawClient {
    let fd: FileDescriptor
    private var nextID: UInt64 = 100
    /// The buffer and queue `withBufferAndQueue` opened (handle numbers are server-wide, so not 1).
    var buffer: UInt32 = 0
    var queue: UInt32 = 0

    /// The server's HELLO_OK, when `init` said HELLO.
    var helloReply: HelloReply? = nil

    init(path: String, hello: Bool = true, maxVersion: UInt16 = Wire.version, features: UInt64 = 0) throws {
        fd = try UnixSocket.connect(path: path)
        if hello {
            try send(Message.hello(Hello(maxVersion: maxVersion, features: features)).encode(requestID: 1))
            guard case .helloReply(let reply) = try receive()?.message else { throw SystemError("no HELLO_OK", errno: EPROTO) }
            helloReply = reply
        }
    }

    func requestID() -> UInt64 {
        nextID += 1
        return nextID
    }

    func send(_ bytes: [UInt8], fds: [Int32] = []) throws {
        try UnixSocket.send(fd, bytes, fds: fds)
    }

    struct Answer {
        var header: MessageHeader
        var message: Message
        var fds: [FileDescriptor]
        var storage: [UInt8]
    }

    /// The next packet, or nil when the server closed the connection. Fails after `timeout` seconds.
    func receive(timeout: Double = 10) throws -> Answer? {
        var pfd = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
        guard poll(&pfd, 1, Int32(timeout * 1000)) == 1 else { throw SystemError("no answer within \(timeout) s", errno: ETIMEDOUT) }
        var storage = [UInt8](repeating: 0, count: 70000)
        let packet = try storage.withUnsafeMutableBytes { try UnixSocket.receive(fd, into: $0) }
        if packet.isEndOfStream { return nil }
        storage.removeSubrange(packet.count...)
        // Decode with whatever version the server framed it with (1 before the handshake, then the
        // negotiated one): this client checks answers, not framing.
        let version = storage.count >= 6 ? UInt16(storage[4]) | UInt16(storage[5]) << 8 : Wire.version
        let (header, message) = try storage.withUnsafeBytes { try Message.decode($0, version: version) }
        // Views in `message` point into `storage`; keep only owned cases outside.
        return Answer(header: header, message: message, fds: packet.fds, storage: storage)
    }

    /// Sends `bytes` and returns the error code of the ERROR that answers it (nil if something else came).
    func expectError(_ bytes: [UInt8], fds: [Int32] = []) throws -> (ErrorCode, String)? {
        try send(bytes, fds: fds)
        guard let answer = try receive() else { return nil }
        guard case .error(let e) = answer.message else { return nil }
        return (e.code, e.message)
    }
}

/// A packet built field by field: header then body.
func packet(_ type: MessageType, body: [UInt8] = [], requestID: UInt64 = 7, version: UInt16 = Wire.version) -> [UInt8] {
    var w = WireWriter()
    MessageHeader(version: version, type: type, length: UInt32(24 + body.count), requestID: requestID).encode(into: &w)
    w.write(bytes: body)
    return w.bytes
}

func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

/// Runs a command and returns its exit status and standard output (with standard error too when
/// `mergingErrors`).
func runTool(_ name: String, _ arguments: [String], environment: [String: String]? = nil, mergingErrors: Bool = false) throws
    -> (Int32, String)
{
    let process = Process()
    process.executableURL = name.hasPrefix("/") ? URL(fileURLWithPath: name) : buildDirectory.appendingPathComponent(name)
    process.arguments = arguments
    if let environment { process.environment = environment }
    let out = Pipe()
    process.standardOutput = out
    process.standardError = mergingErrors ? out : FileHandle.nullDevice
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// Waits until `condition` holds, polling, without async; false after `timeout` seconds.
func waitUntil(timeout: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Waits until `condition` holds, polling; false after `timeout` seconds.
func eventually(timeout: Double = 10, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try await condition() { return true }
        try? await Task.sleep(nanoseconds: 20_000_000)
    }
    return try await condition()
}

/// The STATUS document as a dictionary.
func statusDocument(_ client: IOATClient) async throws -> StatusDocument {
    try await client.status()
}

/// A STATUS document printed by a helper script ("STATUS <json>").
func statusDocument(line: some StringProtocol) throws -> StatusDocument {
    try JSONDecoder().decode(StatusDocument.self, from: Data(line.dropFirst(7).utf8))
}

/// A child process started with posix_spawn and reaped with waitpid by this object. Used for programs
/// that close every inherited descriptor (systemd-socket-activate), which Foundation's Process takes for
/// an exit and then blocks on.
final class SpawnedProcess: @unchecked Sendable {
    let pid: pid_t
    private var status: Int32? = nil

    /// Starts `path` with `arguments`; standard output goes to `output` (or /dev/null), errors to /dev/null.
    init(_ path: String, _ arguments: [String], output: String? = nil) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, output ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, nil, argv, environ)
        guard rc == 0 else { throw SystemError("posix_spawn \(path)", errno: rc) }
        self.pid = pid
    }

    /// The exit status if the process has ended within `timeout` seconds, else nil.
    func wait(timeout: Double) -> Int32? {
        if let status { return status }
        let deadline = Date().addingTimeInterval(timeout)
        // Looks at least once, so a timeout of 0 asks "has it ended?".
        repeat {
            var raw: Int32 = 0
            if waitpid(pid, &raw, WNOHANG) == pid {
                status = raw & 0x7F == 0 ? (raw >> 8) & 0xFF : -(raw & 0x7F)
                return status
            }
            if Date() >= deadline { break }
            usleep(10_000)
        } while true
        return nil
    }

    /// Waits for the exit status (-signal when killed).
    @discardableResult
    func wait() -> Int32 {
        if let status { return status }
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) == -1 && errno == EINTR {}
        let code = raw & 0x7F == 0 ? (raw >> 8) & 0xFF : -(raw & 0x7F)
        status = code
        return code
    }

    deinit {
        if status == nil {
            kill(pid, SIGKILL)
            wait()
        }
    }
}

extension RawClient {
    /// A raw connection with one buffer of `bufferSize` bytes (`buffer`, 4 KiB pages) and one queue
    /// (`queue`) of `depth` on channel 0.
    static func withBufferAndQueue(_ path: String, bufferSize: UInt64, depth: UInt32) throws -> RawClient {
        let raw = try RawClient(path: path)
        try raw.send(packet(.alloc, body: le(bufferSize) + le(Alloc.flagNoHuge) + le(UInt32(0)), requestID: 2))
        guard case .allocReply(let b) = try raw.receive()?.message else { throw ProtocolError(.internal, "no ALLOC_OK") }
        try raw.send(packet(.open, body: le(UInt32(0)) + le(depth), requestID: 3))
        guard case .openReply(let q) = try raw.receive()?.message else { throw ProtocolError(.internal, "no OPEN_OK") }
        raw.buffer = b.handle
        raw.queue = q.queue
        return raw
    }
}
