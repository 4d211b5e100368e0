import Glibc

/// A failed system call: which call, and the errno it returned.
public struct SystemError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The call that failed, e.g. "mmap".
    public var call: String
    /// The errno value.
    public var errno: Int32

    /// Creates an error.
    public init(_ call: String, errno: Int32) {
        self.call = call
        self.errno = errno
    }

    /// The error for the calling thread's current errno.
    public static func current(_ call: String) -> SystemError { SystemError(call, errno: Glibc.errno) }

    public var description: String { "\(call): \(String(cString: strerror(errno))) (errno \(errno))" }
}

/// Runs `body` until it stops failing with EINTR. The one place EINTR is retried.
/// `body` returns -1 with errno set on failure, as system calls do.
@inline(__always)
public func retryingOnInterrupt<T: FixedWidthInteger>(_ call: String, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let e = Glibc.errno
        if e != EINTR { throw SystemError(call, errno: e) }
    }
}
