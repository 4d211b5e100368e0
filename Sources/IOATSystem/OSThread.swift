import CIOATShim
import Glibc

/// A joinable POSIX thread running one closure. Engine workers and the server's event loop use these,
/// so their loops never share a cooperative thread pool with async callers.
public final class OSThread: @unchecked Sendable {
    private var handle: pthread_t
    private final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// Starts `body` on a new thread named `name` (at most 15 bytes show), pinned to `cpu` if given
    /// (best effort: a CPU the process may not use leaves the thread unpinned).
    public init(name: String, cpu: Int? = nil, _ body: @escaping @Sendable () -> Void) {
        let threadName = String(name.prefix(15))
        let box = Unmanaged.passRetained(Box({
            cioat_set_thread_name(threadName)
            if let cpu { try? Affinity.pinCurrentThread(to: [cpu]) }
            body()
        })).toOpaque()
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        handle = t
    }

    /// Waits for the thread to finish.
    public func join() {
        pthread_join(handle, nil)
    }

    /// Whether the caller is running on this thread.
    public var isCurrent: Bool { pthread_equal(handle, pthread_self()) != 0 }

    /// Lets the thread clean up after itself when it ends, instead of being joined.
    public func detach() {
        pthread_detach(handle)
    }

    /// Runs `body` on a thread of its own (not the cooperative pool, which a polling loop would starve)
    /// and returns what it returned, or throws what it threw.
    public static func run<T: Sendable>(name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
        let result: Result<T, any Error> = await withCheckedContinuation { c in
            detached(name: name) { c.resume(returning: Result { try body() }) }
        }
        return try result.get()
    }

    /// Runs `body` on a new thread that cleans up after itself (nobody joins it).
    public static func detached(name: String, _ body: @escaping @Sendable () -> Void) {
        OSThread(name: name, body).detach()
    }
}
