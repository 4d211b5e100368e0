import CIOATShim
import Glibc

/// An epoll(7) instance.
public final class Epoll: @unchecked Sendable {
    /// Readiness bits.
    public struct Events: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let readable = Events(rawValue: EPOLLIN.rawValue)
        public static let writable = Events(rawValue: EPOLLOUT.rawValue)
        public static let hangup = Events(rawValue: EPOLLHUP.rawValue)
        public static let error = Events(rawValue: EPOLLERR.rawValue)
    }

    private let fd: FileDescriptor
    private let ready: UnsafeMutableBufferPointer<epoll_event>

    /// Creates the instance; one `wait` reports at most `capacity` ready descriptors.
    public init(capacity: Int = 64) throws(SystemError) {
        fd = FileDescriptor(owning: try retryingOnInterrupt("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) })
        ready = .allocate(capacity: capacity)
        ready.initialize(repeating: epoll_event())
    }

    deinit { ready.deallocate() }

    private func control(_ op: Int32, _ target: Int32, _ events: Events, _ token: UInt64) throws(SystemError) {
        var ev = epoll_event()
        ev.events = events.rawValue
        ev.data.u64 = token
        _ = try retryingOnInterrupt("epoll_ctl") { epoll_ctl(fd.rawValue, op, target, &ev) }
    }

    /// Watches `target` for `events`, reporting `token`.
    public func add(_ target: Int32, _ events: Events, token: UInt64) throws(SystemError) {
        try control(EPOLL_CTL_ADD, target, events, token)
    }

    /// Changes what `target` is watched for.
    public func modify(_ target: Int32, _ events: Events, token: UInt64) throws(SystemError) {
        try control(EPOLL_CTL_MOD, target, events, token)
    }

    /// Stops watching `target`.
    public func remove(_ target: Int32) {
        var ev = epoll_event()
        _ = epoll_ctl(fd.rawValue, EPOLL_CTL_DEL, target, &ev)
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever). Returns how many descriptors are ready (0 on
    /// timeout or interruption); read them with `event(at:)` before the next wait.
    public func wait(timeoutMilliseconds: Int32) throws(SystemError) -> Int {
        let n = epoll_wait(fd.rawValue, ready.baseAddress, Int32(ready.count), timeoutMilliseconds)
        if n < 0 {
            if errno == EINTR { return 0 }
            throw SystemError.current("epoll_wait")
        }
        return Int(n)
    }

    /// The token and events of ready descriptor `i` from the last `wait`.
    public func event(at i: Int) -> (token: UInt64, events: Events) {
        (ready[i].data.u64, Events(rawValue: ready[i].events))
    }
}

/// An eventfd(2) counter used to wake a thread blocked in epoll.
public final class EventFD: @unchecked Sendable {
    /// The descriptor, for registering with epoll.
    public let fd: FileDescriptor

    /// Creates an eventfd; a `blocking` one makes `drain` wait until it is signalled.
    public init(blocking: Bool = false) throws(SystemError) {
        let flags = Int32(EFD_CLOEXEC) | (blocking ? 0 : Int32(EFD_NONBLOCK))
        fd = FileDescriptor(owning: try retryingOnInterrupt("eventfd") { eventfd(0, flags) })
    }

    /// Adds one to the counter, waking a waiter. Safe from any thread.
    public func signal() {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { Glibc.write(fd.rawValue, $0.baseAddress, 8) }
    }

    /// Resets the counter (waiting for a signal first if blocking); returns whether it was set.
    @discardableResult
    public func drain() -> Bool {
        var value: UInt64 = 0
        return withUnsafeMutableBytes(of: &value) { Glibc.read(fd.rawValue, $0.baseAddress, 8) } == 8
    }
}
