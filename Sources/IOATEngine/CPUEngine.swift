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

    /// Largest transfer one CPU op takes (larger descriptors are split by the server).
    public static let maxTransfer: UInt64 = 1 << 62
    /// Ring slots per channel.
    public static let ringSize = 4096

    /// Starts `channelCount` channels.
    public init(channelCount: Int, ringSize: Int = CPUEngine.ringSize) throws(SystemError) {
        precondition(channelCount > 0, "CPUEngine needs at least one channel")
        let notifier = try EventFD()
        self.notifier = notifier
        var channels: [any EngineChannel] = []
        for i in 0..<channelCount {
            let info = ChannelInfo(
                index: UInt32(i), engine: .cpu, hardwareVersion: 0,
                opcodes: Opcode.allCases.reduce(0) { $0 | $1.capabilityBit },
                maxTransfer: Self.maxTransfer, maxDepth: UInt32(ringSize), maxCoalesceMicroseconds: 16383,
                name: "cpu\(i)")
            channels.append(try CPUChannel(info: info, ringSize: ringSize, notifier: notifier))
        }
        self.channels = channels
    }

    public func shutdown() {
        for c in channels { c.shutdown() }
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
    /// Set when the worker has signalled `notifier` and the consumer has not reaped since.
    private let notified = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private let doorbell: EventFD
    private let notifier: EventFD
    private var worker: OSThread?

    init(info: ChannelInfo, ringSize: Int, notifier: EventFD) throws(SystemError) {
        self.info = info
        capacity = ringSize
        ops = .allocate(capacity: ringSize)
        ops.initialize(repeating: .empty)
        done = .allocate(capacity: ringSize)
        done.initialize(repeating: .empty)
        self.notifier = notifier
        doorbell = try EventFD(blocking: true)
        worker = OSThread(name: "ioatd-\(info.name)") { [unowned self] in self.run() }
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

    func reap(into completions: UnsafeMutableBufferPointer<EngineCompletion>) -> Int {
        notified.store(false, ordering: .sequentiallyConsistent)
        let available = completed.load(ordering: .acquiring) - reaped
        let n = min(available, completions.count)
        for i in 0..<n { completions[i] = done[(reaped + i) % capacity] }
        reaped += n
        return n
    }

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
        while true {
            let limit = submitted.load(ordering: .acquiring)
            if next == limit {
                if stopping.load(ordering: .sequentiallyConsistent) { return }
                sleeping.store(true, ordering: .sequentiallyConsistent)
                if submitted.load(ordering: .sequentiallyConsistent) != next || stopping.load(ordering: .sequentiallyConsistent) {
                    sleeping.store(false, ordering: .sequentiallyConsistent)
                    continue
                }
                doorbell.drain()
                continue
            }
            while next < limit {
                let slot = next % capacity
                done[slot] = Kernels.execute(ops[slot])
                next += 1
                completed.store(next, ordering: .releasing)
                if !notified.exchange(true, ordering: .sequentiallyConsistent) { notifier.signal() }
            }
        }
    }
}
