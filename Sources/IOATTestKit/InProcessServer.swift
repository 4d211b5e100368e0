import Glibc
import IOATEngine
import IOATServer
import IOATSystem
import Logging

/// An ioatd server running on a thread of this process, on a temporary socket, for tests that need an
/// engine of their own (a fault-injecting one, say). Stops and cleans up on `stop()` or deinit.
public final class InProcessServer: @unchecked Sendable {
    /// The socket clients connect to.
    public let path: String
    /// The server itself (for `currentState`).
    public let server: IOATServer
    private let thread: OSThread
    private var stopped = false

    /// Starts a server over `engine` with `configure` applied to the default configuration;
    /// `onLoopThread` runs on the server's event-loop thread before it serves.
    public init(engine: any Engine, configure: (inout ServerConfiguration) -> Void = { _ in },
                onLoopThread: (@Sendable () -> Void)? = nil) throws {
        path = "/tmp/ioatd-inproc-\(getpid())-\(UInt64.random(in: 0..<UInt64.max)).sock"
        var config = ServerConfiguration(socketPath: path)
        configure(&config)
        var logger = Logger(label: "ioatd-test")
        logger.logLevel = .warning
        let server = try IOATServer(configuration: config, engine: engine, logger: logger)
        self.server = server
        thread = OSThread(name: "ioatd-inproc") {
            onLoopThread?()
            do throws(SystemError) {
                try server.run()
            } catch {
                print("in-process ioatd stopped: \(error)")
            }
        }
    }

    /// Stops the server and waits for its thread.
    public func stop() {
        guard !stopped else { return }
        stopped = true
        server.requestStop()
        server.requestStop()
        thread.join()
        unlink(path)
    }

    deinit { stop() }
}
