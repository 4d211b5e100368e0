import Glibc
import IOATProtocol
import IOATSystem
import Synchronization

/// The CPU engine: one worker thread per channel runs that channel's ops in order, with exactly the
/// semantics a DMA channel has (SPEC.md §8). It is the reference every other engine is tested against.
public final class CPUEngine: Engine {
    public let name = "cpu"
    public let channels: [any EngineChannel]
    public let notifier: EventFD

    /// Largest transfer one CPU op takes; the server splits larger descriptors into pieces of this size,
    /// which also keeps one tenant's 64 MiB copy from holding a channel for long.
    public static let maxTransfer: UInt64 = 4 << 20
    /// Ring slots per channel.
    public static let ringSize = 4096

    /// Starts `channelCount` channels. A worker that runs out of ops polls its ring for
    /// `busyPollMicroseconds` before sleeping, which saves a thread wakeup (tens of µs in a VM) when the
    /// next op comes soon.
    /// With `workerCPUs`, worker i runs only on CPU `workerCPUs[i]` (nil: anywhere).
    public init(channelCount: Int, ringSize: Int = CPUEngine.ringSize, busyPollMicroseconds: Int = 50,
                workerCPUs: [Int?] = []) throws(SystemError) {
        precondition(channelCount > 0, "CPUEngine needs at least one channel")
        let notifier = try EventFD()
        self.notifier = notifier
        let consumer = Consumer(notifier: notifier)
        self.consumer = consumer
        var channels: [CPUChannel] = []
        for i in 0..<channelCount {
            let info = ChannelInfo(
                index: UInt32(i), engine: .cpu, hardwareVersion: 0,
                opcodes: Opcode.allCases.reduce(0) { $0 | $1.capabilityBit },
                maxTransfer: Self.maxTransfer, maxDepth: UInt32(ringSize), maxCoalesceMicroseconds: 16383,
                name: "cpu\(i)")
            channels.append(try CPUChannel(info: info, ringSize: ringSize, consumer: consumer,
                                           busyPollNanoseconds: UInt64(max(0, busyPollMicroseconds)) * 1000,
                                           cpu: i < workerCPUs.count ? workerCPUs[i] : nil))
        }
        self.channels = channels
        cpuChannels = channels
    }

    private let consumer: Consumer
    private let cpuChannels: [CPUChannel]

    public func armNotifier() -> Bool {
        consumer.sleeping.store(true, ordering: .sequentiallyConsistent)
        if cpuChannels.contains(where: \.hasCompletions) {
            consumer.sleeping.store(false, ordering: .sequentiallyConsistent)
            return false
        }
        return true
    }

    public func disarmNotifier() {
        consumer.sleeping.store(false, ordering: .sequentiallyConsistent)
    }

    public func shutdown() {
        for c in channels { c.shutdown() }
    }
}

/// The event loop's side of completion notification, shared by every channel of an engine.
final class Consumer: Sendable {
    /// Set while the event loop sleeps; a worker that finds it set clears it and signals `notifier`.
    let sleeping = Atomic<Bool>(false)
    let notifier: EventFD
    init(notifier: EventFD) { self.notifier = notifier }

    /// Called by a worker after publishing a completion.
    func completed() {
        if sleeping.load(ordering: .sequentiallyConsistent) && sleeping.exchange(false, ordering: .sequentiallyConsistent) {
            notifier.signal()
        }
    }
}

/// One CPU channel: a single-producer ring of ops consumed in order by a worker thread, and a ring of
/// completions consumed by the producer. Indices only grow; slot = index % capacity.
final class CPUChannel: EngineChannel, @unchecked Sendable {
    let info: ChannelInfo
    private let capacity: Int
    private let ops: UnsafeMutableBufferPointer<EngineOp>
    private let done: UnsafeMutableBufferPointer<EngineCompletion>

    /// Next slot the producer fills (producer only).
    private var enqueued = 0
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
    private let consumer: Consumer
    private let busyPollNanoseconds: UInt64
    private var worker: OSThread?

    init(info: ChannelInfo, ringSize: Int, consumer: Consumer, busyPollNanoseconds: UInt64, cpu: Int?) throws(SystemError) {
        self.info = info
        self.busyPollNanoseconds = busyPollNanoseconds
        capacity = ringSize
        ops = .allocate(capacity: ringSize)
        ops.initialize(repeating: .empty)
        done = .allocate(capacity: ringSize)
        done.initialize(repeating: .empty)
        self.consumer = consumer
        doorbell = try EventFD(blocking: true)
        // Strong capture: the cycle is broken by shutdown(), which joins the thread and drops it.
        worker = OSThread(name: "ioatd-\(info.name)", cpu: cpu) { self.run() }
    }

    deinit {
        ops.deallocate()
        done.deallocate()
    }

    var freeSlots: Int { capacity - (enqueued - reaped) }

    func enqueue(_ op: EngineOp) -> Bool {
        guard enqueued - reaped < capacity else { return false }
        ops[enqueued % capacity] = op
        enqueued += 1
        return true
    }

    func submit() {
        guard submitted.load(ordering: .relaxed) != enqueued else { return }
        submitted.store(enqueued, ordering: .sequentiallyConsistent)
        if sleeping.exchange(false, ordering: .sequentiallyConsistent) { ring() }
    }

    var hasCompletions: Bool { completed.load(ordering: .sequentiallyConsistent) != reaped }

    func reap(into completions: UnsafeMutableBufferPointer<EngineCompletion>) -> Int {
        let available = completed.load(ordering: .acquiring) - reaped
        let n = min(available, completions.count)
        for i in 0..<n { completions[i] = done[(reaped + i) % capacity] }
        reaped += n
        return n
    }

    /// The CPU never halts; nothing to reset.
    func reset() {}

    func shutdown() {
        guard let worker else { return }
        stopping.store(true, ordering: .sequentiallyConsistent)
        ring()
        worker.join()
        self.worker = nil
    }

    private func ring() { doorbell.signal() }

    private func run() {
        var next = 0
        var idleSince: UInt64 = 0
        while true {
            let limit = submitted.load(ordering: .acquiring)
            if next == limit {
                if stopping.load(ordering: .sequentiallyConsistent) { return }
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
                continue
            }
            idleSince = 0
            while next < limit {
                let slot = next % capacity
                done[slot] = Kernels.execute(ops[slot])
                next += 1
                completed.store(next, ordering: .sequentiallyConsistent)
                consumer.completed()
            }
        }
    }
}
