import IOATSystem
import Synchronization

/// The event loop's side of completion notification, shared by every channel of an engine: the
/// io_uring "need wakeup" idea, so a worker signals only when the event loop is about to sleep.
public final class CompletionSignal: Sendable {
    /// Set while the event loop sleeps; a worker that finds it set clears it and signals `notifier`.
    let sleeping = Atomic<Bool>(false)
    /// What the event loop waits on.
    public let notifier: EventFD

    /// A signal on a new eventfd.
    public init() throws(SystemError) { notifier = try EventFD() }

    /// Event loop: about to sleep. Returns false (and stays awake) when `pending()` says completions
    /// are already waiting.
    public func arm(pending: () -> Bool) -> Bool {
        sleeping.store(true, ordering: .sequentiallyConsistent)
        if pending() {
            sleeping.store(false, ordering: .sequentiallyConsistent)
            return false
        }
        return true
    }

    /// Event loop: awake again.
    public func disarm() { sleeping.store(false, ordering: .sequentiallyConsistent) }

    /// Worker: a completion was published.
    public func completed() {
        if sleeping.load(ordering: .sequentiallyConsistent) && sleeping.exchange(false, ordering: .sequentiallyConsistent) {
            notifier.signal()
        }
    }
}

/// The two rings between the event loop and one channel's worker thread: ops in, completions out,
/// each single-producer single-consumer. Indices only grow; slot = index % capacity. An op's
/// completion goes in the same slot as the op, so the ring never holds more than `capacity` of either.
///
/// The event loop calls the producer half (`enqueue`, `submit`, `reap`, ...); the worker calls the
/// worker half (`waitForWork`, `op(at:)`, `publish`). Every engine that runs ops on its own thread
/// (the CPU engine, the DPDK engine) is built on it.
public final class ChannelRing: @unchecked Sendable {
    /// Slots.
    public let capacity: Int
    private let ops: UnsafeMutableBufferPointer<EngineOp>
    private let done: UnsafeMutableBufferPointer<EngineCompletion>

    /// Next slot the producer fills (producer only).
    public private(set) var enqueued = 0
    /// Ops visible to the worker.
    private let submitted = Atomic<Int>(0)
    /// Ops the worker finished.
    private let completed = Atomic<Int>(0)
    /// Next completion the producer reaps (producer only).
    private var reaped = 0
    /// Set by the worker before it blocks on `doorbell`.
    private let sleeping = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private let doorbell: EventFD
    private let signal: CompletionSignal
    private let busyPollNanoseconds: UInt64

    /// A ring of `capacity` slots whose worker polls for `busyPollNanoseconds` before it sleeps.
    public init(capacity: Int, signal: CompletionSignal, busyPollNanoseconds: UInt64) throws(SystemError) {
        precondition(capacity > 0, "ChannelRing needs at least one slot")
        self.capacity = capacity
        self.signal = signal
        self.busyPollNanoseconds = busyPollNanoseconds
        ops = .allocate(capacity: capacity)
        ops.initialize(repeating: .empty)
        done = .allocate(capacity: capacity)
        done.initialize(repeating: .empty)
        doorbell = try EventFD(blocking: true)
    }

    deinit {
        ops.deallocate()
        done.deallocate()
    }

    // MARK: Producer (event loop)

    /// Slots not holding an op that has been enqueued and not yet reaped.
    public var freeSlots: Int { capacity - (enqueued - reaped) }

    /// Places `op` in the ring without starting it; `false` when the ring is full.
    public func enqueue(_ op: EngineOp) -> Bool {
        guard enqueued - reaped < capacity else { return false }
        ops[enqueued % capacity] = op
        enqueued += 1
        return true
    }

    /// Makes every enqueued op visible to the worker, waking it if it sleeps.
    public func submit() {
        guard submitted.load(ordering: .relaxed) != enqueued else { return }
        submitted.store(enqueued, ordering: .sequentiallyConsistent)
        if sleeping.exchange(false, ordering: .sequentiallyConsistent) { doorbell.signal() }
    }

    /// Whether `reap` would return something now.
    public var hasCompletions: Bool { completed.load(ordering: .sequentiallyConsistent) != reaped }

    /// Moves finished ops, in order, into `completions`; returns how many.
    public func reap(into completions: UnsafeMutableBufferPointer<EngineCompletion>) -> Int {
        let available = completed.load(ordering: .acquiring) - reaped
        let n = min(available, completions.count)
        for i in 0..<n { completions[i] = done[(reaped + i) % capacity] }
        reaped += n
        return n
    }

    /// Tells the worker to return from `waitForWork` once it has run out of ops.
    public func stop() {
        stopping.store(true, ordering: .sequentiallyConsistent)
        doorbell.signal()
    }

    // MARK: Worker

    /// Ops submitted so far (the worker may run ops below this index), without waiting.
    public var submittedCount: Int { submitted.load(ordering: .acquiring) }

    /// Waits until ops past `next` are submitted and returns the new limit, polling for the ring's
    /// busy-poll time before sleeping. Returns nil once `stop()` was called and nothing is left.
    public func waitForWork(after next: Int) -> Int? {
        var idleSince: UInt64 = 0
        while true {
            let limit = submitted.load(ordering: .acquiring)
            if limit != next { return limit }
            if stopping.load(ordering: .sequentiallyConsistent) { return nil }
            if busyPollNanoseconds > 0 {
                let now = Clock.nanoseconds()
                if idleSince == 0 { idleSince = now }
                if now - idleSince < busyPollNanoseconds {
                    Clock.yield()
                    continue
                }
            }
            idleSince = 0
            sleeping.store(true, ordering: .sequentiallyConsistent)
            if submitted.load(ordering: .sequentiallyConsistent) != next || stopping.load(ordering: .sequentiallyConsistent) {
                sleeping.store(false, ordering: .sequentiallyConsistent)
                continue
            }
            doorbell.drain()
        }
    }

    /// The op at ring index `index` (submitted, not yet published).
    public func op(at index: Int) -> EngineOp { ops[index % capacity] }

    /// Publishes the completion of the op at `index`, which must be the oldest unpublished one.
    public func publish(_ completion: EngineCompletion, at index: Int) {
        done[index % capacity] = completion
        completed.store(index + 1, ordering: .sequentiallyConsistent)
        signal.completed()
    }
}
