import CIOATShim
import Glibc

/// memfd seals (fcntl(2) `F_SEAL_*`).
public struct Seals: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    /// `F_SEAL_SEAL`: no more seals may be added.
    public static let seal = Seals(rawValue: cioat_F_SEAL_SEAL)
    /// `F_SEAL_SHRINK`: the file cannot shrink.
    public static let shrink = Seals(rawValue: cioat_F_SEAL_SHRINK)
    /// `F_SEAL_GROW`: the file cannot grow.
    public static let grow = Seals(rawValue: cioat_F_SEAL_GROW)
    /// `F_SEAL_WRITE`: the contents cannot change.
    public static let write = Seals(rawValue: cioat_F_SEAL_WRITE)
    /// `F_SEAL_FUTURE_WRITE`: no new writable mappings.
    public static let futureWrite = Seals(rawValue: cioat_F_SEAL_FUTURE_WRITE)
}

/// memfd_create(2) and file sealing.
public enum Memfd {
    /// Creates a sealable, close-on-exec memfd of `size` bytes, on hugetlbfs when `hugepages` is true.
    public static func create(name: String, size: UInt64, hugepages: Bool) throws(SystemError) -> FileDescriptor {
        var flags = cioat_MFD_CLOEXEC | cioat_MFD_ALLOW_SEALING
        if hugepages { flags |= cioat_MFD_HUGETLB }
        let raw = try retryingOnInterrupt("memfd_create") { cioat_memfd_create(name, flags) }
        let fd = FileDescriptor(owning: raw)
        _ = try retryingOnInterrupt("ftruncate") { ftruncate(fd.rawValue, off_t(size)) }
        return fd
    }

    /// The seals on `fd`. Throws EINVAL when `fd` is not a memfd (nor another sealable file).
    public static func seals(of fd: FileDescriptor) throws(SystemError) -> Seals {
        Seals(rawValue: try retryingOnInterrupt("fcntl(F_GET_SEALS)") { fcntl(fd.rawValue, cioat_F_GET_SEALS) })
    }

    /// Adds `seals` to `fd`.
    public static func addSeals(_ seals: Seals, to fd: FileDescriptor) throws(SystemError) {
        _ = try retryingOnInterrupt("fcntl(F_ADD_SEALS)") { fcntl(fd.rawValue, cioat_F_ADD_SEALS, seals.rawValue) }
    }

    /// Whether `fd` is a memfd: its /proc link names "/memfd:".
    public static func isMemfd(_ fd: FileDescriptor) -> Bool {
        var buffer = [CChar](repeating: 0, count: 256)
        let n = readlink("/proc/self/fd/\(fd.rawValue)", &buffer, buffer.count - 1)
        guard n > 0 else { return false }
        let target = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return target.hasPrefix("/memfd:")
    }
}
