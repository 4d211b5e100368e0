import CSystemd
import Glibc
import IOATSystem

/// What the server tells its service manager. The event loop calls it; nothing else does.
public protocol ServiceNotifier: Sendable {
    /// Sends one sd_notify(3) state string ("READY=1", "STATUS=…", "STOPPING=1", "WATCHDOG=1").
    func notify(_ state: String)
    /// How often to send WATCHDOG=1 (half of WATCHDOG_USEC), or nil when the watchdog is off.
    var watchdogInterval: Double? { get }
}

/// libsystemd's socket activation and notification.
public enum Systemd {
    /// Sockets passed by the service manager (sd_listen_fds_with_names), as (descriptor, name).
    /// The LISTEN_* variables are removed from the environment so children do not inherit them.
    public static func listenedSockets() -> [(Int32, String)] {
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

    /// The notifier for this process: systemd's when NOTIFY_SOCKET is set, else nil.
    public static func notifier() -> SystemdNotifier? {
        guard let socket = getenv("NOTIFY_SOCKET"), socket.pointee != 0 else { return nil }
        var usec: UInt64 = 0
        let watchdog = sd_watchdog_enabled(0, &usec) > 0 && usec > 0 ? Double(usec) / 2e6 : nil
        return SystemdNotifier(watchdogInterval: watchdog)
    }
}

/// sd_notify(3) to the socket named by NOTIFY_SOCKET.
public struct SystemdNotifier: ServiceNotifier {
    public let watchdogInterval: Double?
    public func notify(_ state: String) { _ = sd_notify(0, state) }
}
