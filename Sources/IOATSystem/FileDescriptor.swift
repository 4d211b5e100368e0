import Glibc

/// Sole owner of one open file descriptor: `deinit` closes it, and nothing else does.
/// `close` is never retried (on Linux the descriptor is gone even when close reports EINTR).
public final class FileDescriptor: @unchecked Sendable {
    /// The raw descriptor; borrow it only while this object is alive.
    public let rawValue: Int32

    /// Takes ownership of `rawValue`, which must be open.
    public init(owning rawValue: Int32) {
        precondition(rawValue >= 0, "FileDescriptor(owning:) needs an open descriptor, got \(rawValue)")
        self.rawValue = rawValue
    }

    deinit { _ = Glibc.close(rawValue) }

    /// Duplicates the descriptor (close-on-exec).
    public func duplicate() throws(SystemError) -> FileDescriptor {
        let fd = try retryingOnInterrupt("fcntl(F_DUPFD_CLOEXEC)") { fcntl(rawValue, F_DUPFD_CLOEXEC, 0) }
        return FileDescriptor(owning: fd)
    }

    /// Size in bytes, from fstat(2).
    public func size() throws(SystemError) -> UInt64 {
        var st = stat()
        _ = try retryingOnInterrupt("fstat") { fstat(rawValue, &st) }
        return UInt64(st.st_size)
    }

    /// The block size fstat(2) reports; for hugetlbfs files, the hugepage size.
    public func blockSize() throws(SystemError) -> UInt64 {
        var st = stat()
        _ = try retryingOnInterrupt("fstat") { fstat(rawValue, &st) }
        return UInt64(st.st_blksize)
    }

    /// Sets or clears O_NONBLOCK.
    public func setNonBlocking(_ on: Bool) throws(SystemError) {
        let flags = try retryingOnInterrupt("fcntl(F_GETFL)") { fcntl(rawValue, F_GETFL) }
        let new = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK
        _ = try retryingOnInterrupt("fcntl(F_SETFL)") { fcntl(rawValue, F_SETFL, new) }
    }
}

/// Counts the open descriptors of this process (entries of /proc/self/fd, less the one used to list it).
public func openDescriptorCount() -> Int {
    guard let dir = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(dir) }
    var count = 0
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        if name != "." && name != ".." { count += 1 }
    }
    return count - 1
}
