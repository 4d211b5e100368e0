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
    /// pidfd where the kernel gives one (SO_PEERPIDFD, Linux 6.5): its cgroup id from PIDFD_GET_INFO
    /// (Linux 6.13), which needs no /proc (a service with ProtectProc=invisible cannot see other users'
    /// processes there) and cannot name another process, turned into a path by `resolver`; else
    /// /proc/PID/cgroup is read, and the pidfd is asked afterwards whether the process still runs, so a
    /// pid that was reused in between is never believed. Where there is no SO_PEERPIDFD, the pid alone,
    /// with the same check after (`viaPidfd` false: the caller says so in its log). A process gone is
    /// `.exited`.
    public static func ofPeer(_ fd: FileDescriptor, pid: Int32, resolver: CgroupPaths? = nil,
                              procRoot: String = "/proc") -> Result<PeerCgroup, LookupError> {
        let pidfd = cioat_peerpidfd(fd.rawValue)
        defer { if pidfd >= 0 { close(pidfd) } }
        if pidfd >= 0, let resolver {
            var id: UInt64 = 0
            switch cioat_pidfd_cgroupid(pidfd, &id) {
            case 1:
                if let path = resolver.path(of: id) { return .success(PeerCgroup(path: path, viaPidfd: true)) }
            case 0:
                return .failure(.exited(pid: pid))
            default:
                break  // no PIDFD_GET_INFO here: /proc below
            }
        }
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

    /// The file's text (at most `limit` bytes of it), or why it could not be read.
    static func readSmallFile(_ path: String, limit: Int = 1 << 16) -> (String?, String?) {
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
            if bytes.count > limit { break }
        }
        return (String(decoding: bytes, as: UTF8.self), nil)
    }
}

/// Cgroup v2 paths by cgroup id (the inode number of the cgroup's directory), as the cgroup v2 mount of
/// this process shows them: a cache, filled by walking the hierarchy when an id is not in it. Ids are
/// never reused and grow as cgroups are made, so an entry never goes stale, and only an id above every
/// one seen can be a cgroup made since the last walk: a client in a cgroup this process cannot see costs
/// one walk, not one per connection. Used on one thread (the server's event loop).
public final class CgroupPaths {
    /// Where cgroup v2 is mounted here, and which cgroup path its root is.
    private let mount: (point: String, root: String)?
    private var paths: [UInt64: String] = [:]
    /// The highest id the last walk saw.
    private var highest: UInt64 = 0

    /// `mountInfo`: the text of /proc/self/mountinfo (read when nil).
    public init(mountInfo: String? = nil) {
        let text = mountInfo ?? PeerCgroup.readSmallFile("/proc/self/mountinfo", limit: 1 << 22).0
        mount = text.flatMap(Self.cgroup2Mount(in:))
    }

    /// The mount point and root of the first cgroup2 line of a mountinfo text.
    public static func cgroup2Mount(in mountInfo: String) -> (point: String, root: String)? {
        for line in mountInfo.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard let dash = fields.firstIndex(of: "-"), dash + 1 < fields.count, fields[dash + 1] == "cgroup2", fields.count > 4 else { continue }
            return (String(fields[4]), String(fields[3]))
        }
        return nil
    }

    /// The path of cgroup `id`, or nil when this process cannot see it.
    public func path(of id: UInt64) -> String? {
        if let known = paths[id] { return known }
        guard let mount, id > highest else { return nil }
        rescan(mount)
        // Not found: no cgroup made later than what this walk saw will have a smaller id.
        if paths[id] == nil { highest = max(highest, id) }
        return paths[id]
    }

    /// Walks the hierarchy (directories only) and remembers every cgroup's id.
    private func rescan(_ mount: (point: String, root: String)) {
        var pending: [(dir: String, path: String)] = [(mount.point, mount.root)]
        var seen = 0
        while let (dir, path) = pending.popLast(), seen < 1_000_000 {
            var st = stat()
            guard stat(dir, &st) == 0 else { continue }
            paths[UInt64(st.st_ino)] = path
            highest = max(highest, UInt64(st.st_ino))
            seen += 1
            guard let handle = opendir(dir) else { continue }
            while let entry = readdir(handle) {
                guard entry.pointee.d_type == UInt8(DT_DIR) else { continue }
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                guard name != ".", name != ".." else { continue }
                pending.append((dir + "/" + name, path == "/" ? "/" + name : path + "/" + name))
            }
            closedir(handle)
        }
    }
}
