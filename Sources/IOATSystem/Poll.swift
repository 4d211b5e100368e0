import Glibc

/// poll(2) over a few descriptors.
public enum Poll {
    /// What to wait for, and what happened.
    public struct Events: OptionSet, Sendable {
        public let rawValue: Int16
        public init(rawValue: Int16) { self.rawValue = rawValue }
        public static let readable = Events(rawValue: Int16(POLLIN))
        public static let writable = Events(rawValue: Int16(POLLOUT))
        public static let hangup = Events(rawValue: Int16(POLLHUP))
        public static let error = Events(rawValue: Int16(POLLERR))
    }

    /// Waits until one of `targets` is ready or `timeoutMilliseconds` pass (-1: forever); returns the
    /// events of each target, in order (empty on timeout or interruption).
    public static func wait(_ targets: [(FileDescriptor, Events)], timeoutMilliseconds: Int32 = -1) throws(SystemError) -> [Events] {
        var fds = targets.map { pollfd(fd: $0.0.rawValue, events: $0.1.rawValue, revents: 0) }
        let n = poll(&fds, nfds_t(fds.count), timeoutMilliseconds)
        if n < 0 {
            if errno == EINTR { return [] }
            throw SystemError.current("poll")
        }
        return fds.map { Events(rawValue: $0.revents) }
    }

    /// A set of descriptors to wait on, kept between waits so that a thread polling in a loop allocates
    /// nothing per round (a list made and mapped per wait was three allocations a round).
    public struct Targets {
        private var fds: [pollfd] = []

        public init(capacity: Int = 4) { fds.reserveCapacity(capacity) }

        /// Forgets every descriptor (the storage stays).
        public mutating func removeAll() { fds.removeAll(keepingCapacity: true) }

        /// Adds a descriptor to wait on; its index is its place in the order added.
        public mutating func add(_ fd: FileDescriptor, _ events: Events) {
            fds.append(pollfd(fd: fd.rawValue, events: events.rawValue, revents: 0))
        }

        /// What happened to the descriptor added `index`th, after `wait` (empty before, on timeout and
        /// on interruption).
        public func events(_ index: Int) -> Events { Events(rawValue: fds[index].revents) }

        /// Waits until one of the descriptors is ready or `timeoutMilliseconds` pass (-1: forever).
        public mutating func wait(timeoutMilliseconds: Int32 = -1) throws(SystemError) {
            for i in fds.indices { fds[i].revents = 0 }
            let n = poll(&fds, nfds_t(fds.count), timeoutMilliseconds)
            if n < 0 && errno != EINTR { throw SystemError.current("poll") }
        }
    }
}
