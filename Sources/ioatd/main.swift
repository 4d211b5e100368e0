import ArgumentParser
import Glibc
import IOATEngine
import IOATServer
import IOATSystem
import Logging

/// `ioatd`: the memory-copy offload server.
struct IOATDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ioatd",
        abstract: "Serve DMA-style copy, fill and CRC32C offload over a Unix socket.",
        discussion: """
            Default socket: $IOATD_SOCKET, else /run/ioatd/ioatd.sock as root, else $XDG_RUNTIME_DIR/ioatd.sock.
            SIGTERM or SIGINT stops gracefully (in-flight ops finish); a second signal stops at once.
            """)

    enum EngineKind: String, ExpressibleByArgument, CaseIterable {
        case cpu
    }

    @Option(help: "Socket path to listen on.")
    var socket: String?

    @Option(help: "Engine that runs the ops.")
    var engine: EngineKind = .cpu

    @Option(help: "Number of channels (CPU engine: one worker thread each). Default: one fewer than the CPUs available, at least 1.")
    var channels: Int?

    @Flag(inversion: .prefixedNo, help: "Pin each CPU-engine worker to a CPU of its own when there are more CPUs than workers.")
    var pinWorkers = true

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(help: "Microseconds the event loop and CPU workers poll before sleeping after activity (0: never poll).")
    var busyPollUs: Int = 50

    @Flag(help: "Never use hugepages for ALLOC.")
    var noHugepages = false

    func validate() throws {
        guard (0...10_000).contains(busyPollUs) else { throw ValidationError("--busy-poll-us must be in 0...10000, got \(busyPollUs)") }
        if let channels, !(1...64).contains(channels) { throw ValidationError("--channels must be in 1...64, got \(channels)") }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")); got \(logLevel)")
        }
    }

    func run() throws {
        let level = Logger.Level(rawValue: logLevel)!
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "ioatd")
        let path = socket ?? SocketPath.resolved()
        var config = ServerConfiguration(socketPath: path)
        config.hugepages = !noHugepages
        config.busyPollMicroseconds = busyPollUs
        let failure: SystemError?
        do throws(SystemError) {
            try serve(config, logger: logger)
            failure = nil
        } catch {
            failure = error
        }
        if let failure {
            logger.critical("ioatd failed", metadata: ["error": "\(failure)"])
            throw ExitCode(1)
        }
    }

    private func serve(_ config: ServerConfiguration, logger: Logger) throws(SystemError) {
        // Signals must be blocked before any thread starts so only the event loop sees them.
        let signals = try SignalFD(signals: [SIGTERM, SIGINT])
        signal(SIGPIPE, SIG_IGN)
        let directory = config.socketPath.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if !directory.isEmpty { mkdir(directory, 0o755) }
        let cpus = Affinity.current()
        let channelCount = channels ?? max(1, cpus.count - 1)
        let plan = Affinity.Plan(workerCount: channelCount, cpus: cpus, enabled: pinWorkers)
        let cpu = try CPUEngine(channelCount: channelCount, busyPollMicroseconds: busyPollUs, workerCPUs: plan.workers)
        if !plan.others.isEmpty { try Affinity.pinCurrentThread(to: plan.others) }
        logger.info("engine started", metadata: [
            "engine": "cpu", "channels": "\(channelCount)",
            "worker_cpus": "\(plan.workers.map { $0.map(String.init) ?? "any" }.joined(separator: ","))",
            "event_loop_cpus": "\(plan.others.isEmpty ? "any" : plan.others.map(String.init).joined(separator: ","))",
        ])
        let server = try IOATServer(configuration: config, engine: cpu, logger: logger, signals: signals)
        try server.run()
    }
}

IOATDaemon.main()
