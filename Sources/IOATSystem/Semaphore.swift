import Glibc

/// A counting semaphore (POSIX `sem_t`) for threads of this process: `signal` adds one, `wait` takes one,
/// sleeping while there is none. EINTR is retried here.
public final class Semaphore: @unchecked Sendable {
    private let sem: UnsafeMutablePointer<sem_t>

    /// A semaphore holding `value`.
    public init(value: UInt32 = 0) {
        sem = .allocate(capacity: 1)
        precondition(sem_init(sem, 0, value) == 0, "sem_init failed: \(errno)")
    }

    deinit {
        sem_destroy(sem)
        sem.deallocate()
    }

    /// Adds one, waking a waiter if there is one.
    public func signal() { sem_post(sem) }

    /// Takes one, sleeping until there is one.
    public func wait() {
        while sem_wait(sem) != 0 && errno == EINTR {}
    }
}
