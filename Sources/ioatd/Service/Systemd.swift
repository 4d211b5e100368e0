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
