import CIOATShim
import Glibc

/// Where a connected peer runs: its cgroup (v2) and, from the cgroup's path, the systemd unit and slice
/// it belongs to. Read once, at accept, and fixed for the connection's life, like its uid.
public struct PeerCgroup: Hashable, Sendable {
    /// The cgroup v2 path, from the `0::` line of /proc/PID/cgroup ("/machine.slice/libpod-abc.scope").
    public var path: String
    /// The innermost `.service` or `.scope` component of the path, if any ("qemu-vm1.scope").
    public var unit: String?
    /// The innermost `.slice` component of the path, if any ("machine.slice").
    public var slice: String?
    /// Whether the process was named by a pidfd (SO_PEERPIDFD); false when only its pid was.
    public var viaPidfd: Bool

    public init(path: String, unit: String? = nil, slice: String? = nil, viaPidfd: Bool = true) {
        self.path = path
        self.unit = unit ?? Self.unit(of: path)
        self.slice = slice ?? Self.slice(of: path)
        self.viaPidfd = viaPidfd
    }

    /// The innermost `.service` or `.scope` component of a cgroup path.
    public static func unit(of path: String) -> String? {
        path.split(separator: "/").last { $0.hasSuffix(".service") || $0.hasSuffix(".scope") }.map(String.init)
    }

    /// The innermost `.slice` component of a cgroup path.
    public static func slice(of path: String) -> String? {
        path.split(separator: "/").last { $0.hasSuffix(".slice") }.map(String.init)
    }

    /// The cgroup v2 path in the text of /proc/PID/cgroup (its `0::` line), or nil without one.
    public static func parse(procCgroup text: String) -> String? {
        for line in text.split(separator: "\n") where line.hasPrefix("0::") {
            let path = String(line.dropFirst(3))
            return path.isEmpty ? nil : path
        }
        return nil
    }

    /// Why a peer's cgroup could not be read.
    public enum LookupError: Error, Sendable, Equatable, CustomStringConvertible {
        /// The process that connected has exited (its pid may already name another).
        case exited(pid: Int32)
        /// /proc/PID/cgroup had no cgroup v2 line, or could not be read.
        case unreadable(pid: Int32, reason: String)

        public var description: String {
            switch self {
            case .exited(let pid): "process \(pid) exited before its cgroup could be read"
            case .unreadable(let pid, let reason): "cannot read /proc/\(pid)/cgroup: \(reason)"
            }
        }
    }

    /// The cgroup of the process connected on `fd` (whose SO_PEERCRED pid is `pid`). Through the peer's
    /// pidfd where the kernel gives one (SO_PEERPIDFD, Linux 6.5): /proc/PID/cgroup is read, and the
    /// pidfd is asked afterwards whether the process still runs, so a pid that was reused in between is
    /// never believed. Where there is no SO_PEERPIDFD, the pid alone, with the same check after
    /// (`viaPidfd` false: the caller says so in its log). A process gone is `.exited`.
    public static func ofPeer(_ fd: FileDescriptor, pid: Int32, procRoot: String = "/proc") -> Result<PeerCgroup, LookupError> {
        let pidfd = cioat_peerpidfd(fd.rawValue)
        defer { if pidfd >= 0 { close(pidfd) } }
        func alive() -> Bool {
            if pidfd >= 0 { return cioat_pidfd_alive(pidfd) != 0 }
            return kill(pid, 0) == 0 || errno == EPERM
        }
        guard pid > 0, alive() else { return .failure(.exited(pid: pid)) }
        let (read, failure) = readSmallFile("\(procRoot)/\(pid)/cgroup")
        guard let text = read else {
            return .failure(alive() ? .unreadable(pid: pid, reason: failure ?? "unknown") : .exited(pid: pid))
        }
        // Read, then checked: a process that exited while we read may have left its pid to another.
        guard alive() else { return .failure(.exited(pid: pid)) }
        guard let path = parse(procCgroup: text) else {
            return .failure(.unreadable(pid: pid, reason: "no cgroup v2 (0::) line"))
        }
        return .success(PeerCgroup(path: path, viaPidfd: pidfd >= 0))
    }

    /// The file's text, or why it could not be read.
    private static func readSmallFile(_ path: String) -> (String?, String?) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return (nil, String(cString: strerror(errno))) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return (nil, String(cString: strerror(errno)))
            }
            if n == 0 { break }
            bytes += chunk[0..<n]
            if bytes.count > 1 << 16 { break }
        }
        return (String(decoding: bytes, as: UTF8.self), nil)
    }
}
