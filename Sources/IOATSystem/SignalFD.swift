import CIOATShim
import Glibc

/// Delivers chosen signals as readable events on a descriptor (signalfd(2)), so the event loop handles
/// them like any other input. Create it before starting threads: the signals are blocked in the
/// creating thread, and threads started later inherit that mask.
public final class SignalFD: @unchecked Sendable {
    /// The descriptor, for registering with epoll.
    public let fd: FileDescriptor

    /// Blocks `signals` for the calling thread (and threads it starts) and routes them here.
    public init(signals: [Int32]) throws(SystemError) {
        var mask = sigset_t()
        sigemptyset(&mask)
        for s in signals { sigaddset(&mask, s) }
        guard pthread_sigmask(SIG_BLOCK, &mask, nil) == 0 else { throw SystemError.current("pthread_sigmask") }
        fd = FileDescriptor(owning: try retryingOnInterrupt("signalfd") { signalfd(-1, &mask, Int32(SFD_CLOEXEC | SFD_NONBLOCK)) })
    }

    /// The next pending signal number, or `nil` when none is pending.
    public func next() -> Int32? {
        var info = signalfd_siginfo()
        let n = withUnsafeMutableBytes(of: &info) { read(fd.rawValue, $0.baseAddress, $0.count) }
        guard n == MemoryLayout<signalfd_siginfo>.size else { return nil }
        return Int32(info.ssi_signo)
    }
}
