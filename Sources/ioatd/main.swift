import ArgumentParser
import Glibc
import IOATEngine
import IOATProtocol
import IOATServer
#if DPDK
import IOATDPDK
#endif
import IOATSystem
import Logging

/// `ioatd`: the memory-copy offload server.
struct IOATDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ioatd",
        abstract: "Serve DMA-style copy, fill and CRC32C offload over a Unix socket.",
        discussion: """
            Socket: the one passed by systemd (socket activation), else --socket, else the config file's, else
            $IOATD_SOCKET, else /run/ioatd/ioatd.sock as root, else $XDG_RUNTIME_DIR/ioatd.sock.
            Options given here override the configuration file.
            SIGTERM or SIGINT stops gracefully (clients are told, in-flight ops finish); a second signal stops at once.
            Under systemd with FileDescriptorStoreMax= above 0, SIGTERM during a restart job hands every client over
            to the next instance instead (SPEC.md §5.11): clients see a pause, not a lost connection.
            SIGHUP reads the configuration file's [policy] again without dropping clients; a file that does not
            load is refused with its line and reason, and the policy in force stays.
            """)


    @Option(help: "TOML configuration file (see deploy/ioatd.toml).")
    var config: String?

    @Option(help: "Socket path to listen on when not socket-activated.")
    var socket: String?

    @Option(help: "Engine that runs the ops.")
    var engine: EngineKind?

    @Option(parsing: .unconditional, help: ArgumentHelp("EAL arguments for --engine dpdk, one string split on spaces.",
                               discussion: "For example: --no-huge --no-pci -m 256 -d <pmds dir>/librte_dma_skeleton.so --vdev=dma_skeleton"))
    var dpdkEalArgs: String?

    @Option(help: "Number of channels (CPU engine: one worker thread each). Default: one fewer than the CPUs available, at least 1.")
    var channels: Int?

    @Flag(inversion: .prefixedNo, help: "Pin each CPU-engine worker to a CPU of its own when there are more CPUs than workers (default: off: a pinned worker waits behind any busy process on its CPU).")
    var pinWorkers: Bool?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default: info).")
    var logLevel: String?

    @Option(help: "Microseconds the event loop and CPU workers poll before sleeping after activity (0: never poll; default 50).")
    var busyPollUs: Int?

    @Option(help: "Ops of at most this many bytes run on the event loop's thread when the engine can (CPU engine) and is idle (0: never; default 65536; at most sixteen times this per dispatch).")
    var inlineBytes: Int?

    @Option(help: ArgumentHelp("The restart state's format to write (tests only: a state another ioatd cannot read).", visibility: .hidden))
    var stateFormat: Int?

    @Flag(help: "Print the version and exit.")
    var version = false

    @Flag(help: "Never use hugepages for ALLOC.")
    var noHugepages = false

    @Flag(help: "Read the configuration (the file and the options) and exit: 0 when it would start, 2 with the reason when not. `systemctl reload` runs this first, so a bad policy fails the reload.")
    var checkConfig = false

    func validate() throws {
        if let busyPollUs, !(0...10_000).contains(busyPollUs) { throw ValidationError("--busy-poll-us must be in 0...10000, got \(busyPollUs)") }
        if let inlineBytes, !(0...(1 << 20)).contains(inlineBytes) { throw ValidationError("--inline-bytes must be in 0...1048576, got \(inlineBytes)") }
        if let channels, !(1...64).contains(channels) { throw ValidationError("--channels must be in 1...64, got \(channels)") }
        if let logLevel, Logger.Level(rawValue: logLevel) == nil {
            throw ValidationError("--log-level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")); got \(logLevel)")
        }
    }

    /// Defaults, then the file, then the command line.
    func settings() throws -> DaemonConfiguration {
        var settings = DaemonConfiguration(socketPath: SocketPath.resolved())
        if let config {
            do {
                settings = try DaemonConfiguration.load(path: config, defaults: settings)
            } catch {
                FileHandle.standardError.writeStartupError("ioatd: configuration: \(error)")
                throw ExitCode(2)
            }
        }
        if let socket { settings.server.socketPath = socket }
        if let engine {
            guard engine.isBuilt else {
                FileHandle.standardError.writeStartupError("ioatd: --engine \(engine.rawValue): this ioatd was built without it; build with `swift build --traits DPDK` (make build-dpdk)")
                throw ExitCode(2)
            }
            settings.engine = engine
        }
        if let dpdkEalArgs { settings.dpdkEALArguments = DaemonConfiguration.splitArguments(dpdkEalArgs) }
        if let channels { settings.channels = channels }
        if let pinWorkers { settings.pinWorkers = pinWorkers }
        if let logLevel, let level = Logger.Level(rawValue: logLevel) { settings.logLevel = level }
        if let busyPollUs { settings.server.busyPollMicroseconds = busyPollUs }
        if let inlineBytes { settings.server.inlineBytes = inlineBytes }
        if noHugepages { settings.server.hugepages = false }
        return settings
    }

    func run() throws {
        if version {
            FileHandle.standardOutput.write("ioatd \(ioatdVersion) (protocol \(Wire.minimumVersion)...\(Wire.version), restart state format \(IOATServer.stateFormat))\n")
            return
        }
        let settings: DaemonConfiguration
        do {
            settings = try self.settings()
        } catch {
            if !checkConfig { Self.answerWaitingClients(what: "its configuration or options were refused") }
            throw error
        }
        if checkConfig {
            FileHandle.standardOutput.write("ioatd: configuration \(config ?? "(defaults)") is good: engine \(settings.engine.rawValue), \(settings.server.policy.users.count) user and \(settings.server.policy.groups.count) group policy entries\n")
            return
        }
        let level = settings.logLevel
        let journal = getenv("JOURNAL_STREAM") != nil
        LoggingSystem.bootstrap { label in
            if journal {
                var handler = JournalLogHandler(label: label)
                handler.logLevel = level
                return handler
            }
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "ioatd")
        // Without CAP_IPC_LOCK a low memlock limit makes every mlock fail, quietly: say so once, at start.
        if settings.server.lockBuffers && !ProcessLimits.canLockWithoutLimit(), let limit = ProcessLimits.memlock(), limit < 1 << 30 {
            logger.warning("buffers will not be locked in memory: no CAP_IPC_LOCK and a memlock limit of \(limit) bytes; give the service AmbientCapabilities=CAP_IPC_LOCK or LimitMEMLOCK=infinity", metadata: [
                "memlock_limit": "\(limit)",
            ])
        }
        let failure: String?
        do throws(SystemError) {
            failure = try serve(settings, logger: logger)
        } catch {
            failure = "\(error)"
        }
        if let failure {
            logger.critical("ioatd failed", metadata: ["error": "\(failure)"])
            throw ExitCode(1)
        }
    }

    /// Before exiting because it cannot start: answers each client waiting on a socket systemd passed
    /// (SPEC.md §1, `UNAVAILABLE`). Without socket activation nobody can be waiting yet.
    static func answerWaitingClients(what: String) {
        for (fd, _) in Systemd.listenedSockets() where UnixSocket.isSeqpacketListener(fd) {
            let answered = StartFailure.answerWaitingClients(listener: fd, what: what)
            if answered > 0 {
                FileHandle.standardError.writeStartupError("ioatd: told \(answered) waiting client\(answered == 1 ? "" : "s") that the service cannot start")
            }
        }
    }

    /// Serves until stopped; returns a reason when it cannot start (after answering the clients waiting
    /// on a socket-activated listener).
    private func serve(_ settings: DaemonConfiguration, logger: Logger) throws(SystemError) -> String? {
        var listener: FileDescriptor? = nil
        do throws(SystemError) {
            let failure = try serve(settings, logger: logger, listener: &listener)
            if failure != nil, let listener { answer(listener, what: "its engine or service did not start", logger: logger) }
            return failure
        } catch {
            if let listener { answer(listener, what: "its engine or service did not start", logger: logger) }
            throw error
        }
    }

    private func answer(_ listener: FileDescriptor, what: String, logger: Logger) {
        let answered = StartFailure.answerWaitingClients(listener: listener.rawValue, what: what)
        if answered > 0 { logger.notice("told waiting clients that the service cannot start", metadata: ["clients": "\(answered)"]) }
    }

    private func serve(_ settings: DaemonConfiguration, logger: Logger, listener: inout FileDescriptor?) throws(SystemError) -> String? {
        var config = settings.server
        // Signals must be blocked before any thread starts so only the signal thread sees them.
        let signals = try SignalHandling(try SignalFD(signals: [SIGTERM, SIGINT, SIGHUP]))
        signal(SIGPIPE, SIG_IGN)

        // Under systemd with a file-descriptor store, the clients of a previous instance come back with the
        // listener: every passed descriptor that is not a listening socket is one of them (SPEC.md §5.11).
        let (store, storeWhy) = SystemdHandoverStore.fromEnvironment()
        var stored: [(name: String, fd: FileDescriptor)] = []
        var listeners: [(Int32, String)] = []
        for (fd, name) in Systemd.listenedSockets() {
            if UnixSocket.isSeqpacketListener(fd) {
                listeners.append((fd, name))
            } else {
                stored.append((name, FileDescriptor(owning: fd)))
            }
        }
        if !stored.isEmpty && store == nil {
            logger.warning("descriptors from a previous instance were passed, but this one keeps no store; its clients are told GOODBYE", metadata: [
                "descriptors": "\(stored.count)", "why": "\(storeWhy)",
            ])
        }
        if !listeners.isEmpty {
            let (fd, name) = listeners[0]
            listener = FileDescriptor(owning: fd)
            for (extra, _) in listeners.dropFirst() { close(extra) }
            config.socketPath = "fd \(fd) (\(name), socket-activated)"
            logger.info("socket activation", metadata: ["fd": "\(fd)", "name": "\(name)", "passed": "\(listeners.count + stored.count)"])
        } else if !stored.isEmpty && store != nil {
            return "the service manager passed \(stored.count) stored descriptors but no listening AF_UNIX SOCK_SEQPACKET socket; "
                + "use ListenSequentialPacket= in the .socket unit"
        } else {
            let directory = config.socketPath.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
            if !directory.isEmpty { mkdir(directory, 0o755) }
        }
        logger.info("restart store", metadata: ["enabled": "\(store != nil)", "why": "\(storeWhy)"])

        let engine: any Engine
        if settings.engine == .dpdk {
            guard let dpdk = startDPDK(settings, busyPoll: config.busyPollMicroseconds, logger: logger) else {
                return "the DPDK engine did not start (see the log line above)"
            }
            engine = dpdk
        } else {
            let cpus = Affinity.current()
            let channelCount = settings.channels ?? max(1, cpus.count - 1)
            let plan = Affinity.Plan(workerCount: channelCount, cpus: cpus, enabled: settings.pinWorkers)
            engine = try CPUEngine(channelCount: channelCount, busyPollMicroseconds: config.busyPollMicroseconds, workerCPUs: plan.workers)
            if !plan.others.isEmpty { try Affinity.pinCurrentThread(to: plan.others) }
            logger.info("engine started", metadata: [
                "engine": "cpu", "channels": "\(channelCount)",
                "worker_cpus": "\(plan.workers.map { $0.map(String.init) ?? "any" }.joined(separator: ","))",
                "event_loop_cpus": "\(plan.others.isEmpty ? "any" : plan.others.map(String.init).joined(separator: ","))",
            ])
        }
        // SIGHUP reads the configuration file again for its [policy] (the rest needs a restart).
        var reload: (@Sendable () throws -> Policy)? = nil
        if let path = self.config {
            reload = { () throws -> Policy in
                try DaemonConfiguration.load(path: path, defaults: DaemonConfiguration(socketPath: "")).server.policy
            }
        }
        if let stateFormat { config.stateFormat = stateFormat }
        let previous = stored.isEmpty ? nil : StoredFiles(stored)
        // The server owns them now: what it does not take back is closed when it lets go of them.
        stored.removeAll()
        let server = try IOATServer(configuration: config, engine: engine, logger: logger, listener: listener,
                                    observer: SystemdObserver.fromEnvironment(), store: store, previous: previous)
        listener = nil // the server's now: a failure from here on is not a failure to start
        signals.start(server: server, logger: logger, reload: reload, restarting: store == nil ? nil : SystemdHandoverStore.restartJobRunning)
        defer { signals.finish() }
        try server.run()
        return nil
    }
}

/// Starts the DPDK engine, logging why when it cannot.
private func startDPDK(_ settings: DaemonConfiguration, busyPoll: Int, logger: Logger) -> (any Engine)? {
    #if DPDK
    var options = DPDKEngine.Options(ealArguments: settings.dpdkEALArguments)
    options.busyPollMicroseconds = busyPoll
    do throws(DPDKEngine.StartError) {
        let engine = try DPDKEngine(options: options)
        logger.info("engine started", metadata: [
            "engine": "dpdk", "channels": "\(engine.channels.count)", "iova": "\(engine.iovaIsVirtual ? "va" : "pa")",
            "devices": "\(engine.devices.map { "\($0.name) (\($0.driver))" }.joined(separator: ", "))",
        ])
        return engine
    } catch {
        logger.critical("DPDK engine failed to start", metadata: ["error": "\(error)"])
        return nil
    }
    #else
    logger.critical("this ioatd was built without the DPDK engine; build with `swift build --traits DPDK`")
    return nil
    #endif
}

extension FileHandle {
    /// Writes a line to this stream with one write(2).
    func write(_ text: String) {
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }
}

/// The standard streams, without Foundation.
struct FileHandle {
    let fd: Int32
    static let standardError = FileHandle(fd: STDERR_FILENO)
    static let standardOutput = FileHandle(fd: STDOUT_FILENO)

    /// Whether standard error goes to the journal (systemd sets JOURNAL_STREAM).
    static var toJournal: Bool { getenv("JOURNAL_STREAM") != nil }

    /// An error before logging starts: with the journal, every line carries `<3>` (error), so
    /// `journalctl -p warning` shows why the service did not start.
    func writeStartupError(_ text: String) {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        write(lines.map { (FileHandle.toJournal ? "<3>" : "") + $0 }.joined(separator: "\n") + "\n")
    }
}

/// ArgumentParser's own errors (a bad option) go out like every other startup error.
func runDaemon() {
    do {
        var command = try IOATDaemon.parseAsRoot()
        try command.run()
    } catch {
        let code = IOATDaemon.exitCode(for: error)
        if FileHandle.toJournal && code != .success, !(error is ExitCode) {
            FileHandle.standardError.writeStartupError(IOATDaemon.fullMessage(for: error))
            exit(code.rawValue)
        }
        IOATDaemon.exit(withError: error)
    }
}

runDaemon()

extension EngineKind: ExpressibleByArgument {}
