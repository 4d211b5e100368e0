import Glibc
import IOATProtocol
import IOATSystem
import Synchronization

/// The CPU engine: one worker thread per channel runs that channel's ops in order, with exactly the
/// semantics a DMA channel has (SPEC.md §8). It is the reference every other engine is tested against.
public final class CPUEngine: Engine {
    public let name = "cpu"
    public let channels: [any EngineChannel]

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
        let signal = try CompletionSignal()
        self.signal = signal
        var channels: [CPUChannel] = []
        for i in 0..<channelCount {
            let info = ChannelInfo(
                index: UInt32(i), engine: .cpu, hardwareVersion: 0,
                opcodes: Opcode.allCases.reduce(0) { $0 | $1.capabilityBit },
                maxTransfer: Self.maxTransfer, maxDepth: UInt32(ringSize), maxCoalesceMicroseconds: 16383,
                name: "cpu\(i)")
            let ring = try ChannelRing(capacity: ringSize, signal: signal,
                                       busyPollNanoseconds: UInt64(max(0, busyPollMicroseconds)) * 1000)
            channels.append(CPUChannel(info: info, ring: ring, cpu: i < workerCPUs.count ? workerCPUs[i] : nil))
        }
        self.channels = channels
        cpuChannels = channels
    }

    private let signal: CompletionSignal
    private let cpuChannels: [CPUChannel]

    public var notifier: EventFD { signal.notifier }

    public func armNotifier() -> Bool { signal.arm { cpuChannels.contains(where: \.hasCompletions) } }

    public func disarmNotifier() { signal.disarm() }

    public func shutdown() {
        for c in channels { c.shutdown() }
    }
}

/// One CPU channel: a worker thread runs the ring's ops in order, one at a time.
final class CPUChannel: EngineChannel, @unchecked Sendable {
    let info: ChannelInfo
    private let ring: ChannelRing
    private var worker: OSThread?
    private let busy = Atomic<UInt64>(0)
    var busyNanoseconds: UInt64 { busy.load(ordering: .relaxed) }

    init(info: ChannelInfo, ring: ChannelRing, cpu: Int?) {
        self.info = info
        self.ring = ring
        // Strong capture: the cycle is broken by shutdown(), which joins the thread and drops it.
        worker = OSThread(name: "ioatd-\(info.name)", cpu: cpu) { self.run() }
    }

    var freeSlots: Int { ring.freeSlots }
    func enqueue(_ op: EngineOp) -> Bool { ring.enqueue(op) }
    func submit() { ring.submit() }
    var hasCompletions: Bool { ring.hasCompletions }
    func reap(into completions: UnsafeMutableBufferPointer<EngineCompletion>) -> Int { ring.reap(into: completions) }

    /// The caller's thread runs the kernel: no hand-off to the worker, no wake-up (SPEC.md §8 order is
    /// kept by the caller, who does this only with nothing in the ring).
    func executeInline(_ op: EngineOp) -> EngineCompletion? { Kernels.execute(op) }
    func executeInline(common opcode: Opcode, cookie: UInt64, source: UnsafeRawPointer?, destination: UnsafeMutableRawPointer?,
                       length: Int, arg: UInt64) -> EngineCompletion? {
        switch opcode {
        case .null, .copy, .fill:
            return Kernels.executeCommon(opcode, cookie: cookie, source: source, destination: destination, length: length, arg: arg)
        default:
            return Kernels.execute(EngineOp(cookie: cookie, opcode: opcode, source: source, destination: destination, length: length, arg: arg))
        }
    }
    var runsInline: Bool { true }

    func noteInlineBusy(_ nanoseconds: UInt64) { busy.add(nanoseconds, ordering: .relaxed) }

    /// The CPU never halts; nothing to reset.
    func reset() {}

    func shutdown() {
        guard let worker else { return }
        ring.stop()
        worker.join()
        self.worker = nil
    }

    private func run() {
        var next = 0
        while let limit = ring.waitForWork(after: next) {
            let start = Clock.nanoseconds()
            while next < limit {
                ring.publish(Kernels.execute(ring.op(at: next)), at: next)
                next += 1
            }
            busy.add(Clock.nanoseconds(since: start), ordering: .relaxed)
        }
    }
}
