import Glibc

/// What this process may lock in memory: RLIMIT_MEMLOCK and the CAP_IPC_LOCK capability.
public enum ProcessLimits {
    /// The soft memlock limit in bytes; nil when unlimited.
    public static func memlock() -> UInt64? {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(8), &limit) == 0 else { return 0 }  // RLIMIT_MEMLOCK
        return limit.rlim_cur == rlim_t.max ? nil : UInt64(limit.rlim_cur)  // RLIM_INFINITY
    }

    /// Whether the effective capability set holds CAP_IPC_LOCK (bit 14), from /proc/self/status.
    public static func canLockWithoutLimit() -> Bool {
        guard let status = readSmallFile("/proc/self/status"),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapEff:") }),
            let mask = UInt64(line.dropFirst("CapEff:".count).trimmingCharacters(whereSpaceOrTab: ()), radix: 16)
        else { return false }
        return mask & (1 << 14) != 0
    }
}

extension Substring {
    fileprivate func trimmingCharacters(whereSpaceOrTab: Void) -> String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}

/// Who this process is.
public enum ProcessIdentity {
    /// getpid(2).
    public static var pid: Int32 { getpid() }
    /// getuid(2).
    public static var uid: UInt32 { getuid() }
}
