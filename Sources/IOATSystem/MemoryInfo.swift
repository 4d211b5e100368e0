import Glibc

/// What /proc/meminfo and sysconf(3) say about this machine's memory.
public struct MemoryInfo: Sendable, Equatable {
    /// MemTotal, in bytes.
    public var total: UInt64
    /// Hugepage size (Hugepagesize), in bytes; 0 when the kernel has none.
    public var hugepageSize: UInt64
    /// HugePages_Total and HugePages_Free: the reserved pool, and what of it no one uses.
    public var hugepagesTotal: UInt64
    public var hugepagesFree: UInt64

    /// The small page size (sysconf `_SC_PAGESIZE`).
    public static let smallPageSize = UInt64(sysconf(Int32(_SC_PAGESIZE)))

    /// Parses the text of /proc/meminfo.
    public init(meminfo text: String) {
        func value(_ key: String) -> UInt64 {
            guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(key + ":") }) else { return 0 }
            let number = UInt64(line.dropFirst(key.count + 1).filter(\.isNumber)) ?? 0
            return line.hasSuffix("kB") ? number * 1024 : number
        }
        total = value("MemTotal")
        hugepageSize = value("Hugepagesize")
        hugepagesTotal = value("HugePages_Total")
        hugepagesFree = value("HugePages_Free")
    }

    /// This machine, now; all zero when /proc/meminfo cannot be read.
    public static func current() -> MemoryInfo { MemoryInfo(meminfo: readSmallFile("/proc/meminfo") ?? "") }
}

/// What /proc/<pid>/status says of a process's memory (VmRSS, VmLck), in bytes.
public struct ProcessMemory: Sendable, Equatable {
    public var resident: UInt64
    public var locked: UInt64

    /// Process `pid` (this process when nil); nil when it cannot be read.
    public static func of(_ pid: Int32? = nil) -> ProcessMemory? {
        guard let text = readSmallFile("/proc/\(pid.map(String.init) ?? "self")/status") else { return nil }
        func kib(_ key: String) -> UInt64 {
            guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(key + ":") }) else { return 0 }
            return (UInt64(line.filter(\.isNumber)) ?? 0) * 1024
        }
        return ProcessMemory(resident: kib("VmRSS"), locked: kib("VmLck"))
    }
}
