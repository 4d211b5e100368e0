import CSystemd
import Glibc
import IOATServer
import IOATSystem

/// libsystemd's socket activation.
enum Systemd {
    /// Sockets passed by the service manager (sd_listen_fds_with_names), as (descriptor, name).
    /// The LISTEN_* variables are removed from the environment so children do not inherit them.
    static func listenedSockets() -> [(Int32, String)] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = nil
        let n = sd_listen_fds_with_names(1, &names)
        guard n > 0 else { return [] }
        var result: [(Int32, String)] = []
        for i in 0..<Int(n) {
            let name = names?[i].map { String(decoding: UnsafeRawBufferPointer(start: $0, count: strlen($0)), as: UTF8.self) } ?? "unknown"
            result.append((SD_LISTEN_FDS_START + Int32(i), name))
            free(names?[i])
        }
        free(names)
        return result
    }
}

/// Tells systemd what the server does (sd_notify(3) to the socket NOTIFY_SOCKET names): READY=1 when it
/// serves, WATCHDOG=1 at half of WATCHDOG_USEC and a STATUS= line every two seconds (both from the event
/// loop's ticks, so a loop that stops turning stops the watchdog), STOPPING=1 when it drains.
final class SystemdObserver: ServerObserver, @unchecked Sendable {
    /// Seconds between STATUS= lines.
    static let statusInterval = 2.0
    /// Half of WATCHDOG_USEC, or nil when the watchdog is off.
    let watchdogInterval: Double?
    // Touched by the loop thread only (the observer's calls all come from it).
    private var lastWatchdog = 0.0
    private var lastStatus: (at: Double, ops: UInt64) = (0, 0)

    /// The observer for this process: systemd's when NOTIFY_SOCKET is set, else nil.
    static func fromEnvironment() -> SystemdObserver? {
        guard let socket = getenv("NOTIFY_SOCKET"), socket.pointee != 0 else { return nil }
        var usec: UInt64 = 0
        let watchdog = sd_watchdog_enabled(0, &usec) > 0 && usec > 0 ? Double(usec) / 2e6 : nil
        return SystemdObserver(watchdogInterval: watchdog)
    }

    init(watchdogInterval: Double?) { self.watchdogInterval = watchdogInterval }

    var tickInterval: Double? { min(Self.statusInterval, watchdogInterval ?? Self.statusInterval) }

    func serving(_ s: ServerSummary) {
        lastStatus = (s.at, s.opsCompleted)
        lastWatchdog = s.at
        notify("READY=1\nSTATUS=\(line(s, opsPerSecond: 0))")
    }

    func tick(_ s: ServerSummary) {
        if let watchdogInterval, s.at - lastWatchdog >= watchdogInterval * 0.9 {
            notify("WATCHDOG=1")
            lastWatchdog = s.at
        }
        if s.at - lastStatus.at >= Self.statusInterval * 0.9 {
            notify("STATUS=\(line(s, opsPerSecond: Double(s.opsCompleted - lastStatus.ops) / (s.at - lastStatus.at)))")
            lastStatus = (s.at, s.opsCompleted)
        }
    }

    func stopping(_ s: ServerSummary) {
        notify("STOPPING=1\nSTATUS=stopping: \(s.inFlight) ops in flight, \(s.clients) clients")
    }

    private func line(_ s: ServerSummary, opsPerSecond: Double) -> String {
        "\(s.state.rawValue): engine \(s.engine), \(s.channels) channels, \(s.clients) clients, \(Int(opsPerSecond)) ops/s"
    }

    private func notify(_ state: String) { _ = sd_notify(0, state) }
}

/// systemd's file-descriptor store (sd_pid_notify_with_fds(3), `FDSTORE=1`): what ioatd keeps there
/// outlives the process, through a crash as through `systemctl restart`, and comes back to the next
/// instance with the socket unit's listener (LISTEN_FDS, named by LISTEN_FDNAMES). systemd drops it when
/// the unit stops with no job queued. Messages go out in order on one socket, so a store followed by a
/// remove of another name is seen in that order.
final class SystemdHandoverStore: HandoverStore, @unchecked Sendable {
    let capacity: Int

    init(capacity: Int) { self.capacity = capacity }

    /// The store when ioatd runs as a systemd service whose unit has FileDescriptorStoreMax= above 0
    /// (asked over D-Bus), else nil with the reason.
    static func fromEnvironment() -> (store: SystemdHandoverStore?, why: String) {
        guard let socket = getenv("NOTIFY_SOCKET"), socket.pointee != 0 else { return (nil, "not run by systemd (no NOTIFY_SOCKET)") }
        let max = csd_fd_store_max()
        guard max >= 0 else { return (nil, "the service manager could not be asked for FileDescriptorStoreMax= (\(String(cString: strerror(Int32(-max)))))") }
        guard max > 0 else { return (nil, "the unit has FileDescriptorStoreMax=0") }
        return (SystemdHandoverStore(capacity: Int(max)), "FileDescriptorStoreMax=\(max)")
    }

    func store(_ fd: FileDescriptor, name: String) {
        let r = csd_fdstore_add(fd.rawValue, name)
        if r < 0 { Self.report("FDSTORE=1 of \(name)", r) }
    }

    func remove(name: String) {
        let r = csd_fdstore_remove(name)
        if r < 0 { Self.report("FDSTOREREMOVE=1 of \(name)", r) }
    }

    /// A notification systemd did not get: a restart now may lose what it was about (journal, warning).
    private static func report(_ what: String, _ r: Int32) {
        FileHandle.standardError.write("<4>ioatd: \(what) could not be sent to the service manager: \(String(cString: strerror(-r))); a restart now may drop the client it names\n")
    }

    /// Whether the service manager is restarting this unit now (its job is a restart): SIGTERM then hands
    /// the clients over instead of saying GOODBYE. nil when it cannot be asked.
    static func restartJobRunning() -> Bool? {
        let r = csd_restart_job_running()
        return r < 0 ? nil : r == 1
    }
}
