import IOATEngine
import IOATProtocol
import IOATSystem
import Synchronization

/// What to do to one op on its way into the engine.
public enum Fault: Sendable, Equatable {
    /// Do not run it; complete it with this status and no bytes done.
    case fail(CompletionStatus)
    /// Run it, then flip the first byte of its destination (a silent data error).
    case corrupt
    /// Do not run it; complete it with CHANNEL_HALTED, and every op after it with NOT_ATTEMPTED until the
    /// channel is reset — what DPDK's dmadev and ioat(4) do after a hardware error.
    case halt
    /// Run it, but report its completion — and so every later one of the channel, which completes in
    /// order — only this many microseconds after the engine finished it: a slow op.
    case delay(microseconds: Int)
}

/// An engine that wraps another and injects faults, for tests: `plan(channel, ordinal, op)` is asked for
/// every op enqueued (ordinals count from 0 per channel, pieces of split ops included).
public final class FaultInjectingEngine: Engine, @unchecked Sendable {
    public let inner: any Engine
    public let channels: [any EngineChannel]
    public var name: String { inner.name + "+faults" }
    public var notifier: EventFD { inner.notifier }

    public init(wrapping inner: any Engine, plan: @escaping @Sendable (_ channel: Int, _ ordinal: Int, _ op: EngineOp) -> Fault?) {
        self.inner = inner
        channels = inner.channels.enumerated().map { FaultyChannel(inner: $0.element, index: $0.offset, plan: plan) }
    }

    /// While a channel holds delayed completions the event loop must not sleep (nothing would wake it):
    /// it polls until they are due. Test support only.
    public func armNotifier() -> Bool {
        if channels.contains(where: { ($0 as? FaultyChannel)?.isHolding == true }) { return false }
        return inner.armNotifier()
    }
    public func disarmNotifier() { inner.disarmNotifier() }
    public func shutdown() { inner.shutdown() }
    public func register(memory: UnsafeMutableRawBufferPointer, pageSize: Int) throws(SystemError) -> AnyObject? {
        try inner.register(memory: memory, pageSize: pageSize)
    }
    public var status: EngineStatus? { inner.status }
    public var pinsRegisteredMemory: Bool { inner.pinsRegisteredMemory }
}

/// One wrapped channel. Like every channel it is driven from one thread (the event loop).
final class FaultyChannel: EngineChannel, @unchecked Sendable {
    let inner: any EngineChannel
    let index: Int
    let plan: @Sendable (Int, Int, EngineOp) -> Fault?
    private var ordinal = 0
    private var halted = false
    /// Engine cookie → what to report instead of the real completion, or which destination to corrupt.
    private var overrides: [UInt64: CompletionStatus] = [:]
    private var corruptions: [UInt64: UnsafeMutableRawPointer] = [:]
    private var delays: [UInt64: UInt64] = [:]
    /// Completions taken from the inner engine but not yet handed out, with the time they are due.
    private var held: [(EngineCompletion, UInt64)] = []

    init(inner: any EngineChannel, index: Int, plan: @escaping @Sendable (Int, Int, EngineOp) -> Fault?) {
        self.inner = inner
        self.index = index
        self.plan = plan
    }

    var info: ChannelInfo { inner.info }
    var deviceStatus: DeviceStatus? { inner.deviceStatus }
    var busyNanoseconds: UInt64 { inner.busyNanoseconds }
    func runner(of opcode: Opcode) -> String { inner.runner(of: opcode) }
    var freeSlots: Int { inner.freeSlots }
    var hasCompletions: Bool { !held.isEmpty || inner.hasCompletions }
    /// Whether completions are held back by a delay.
    var isHolding: Bool { !held.isEmpty }

    func enqueue(_ op: EngineOp) -> Bool {
        let fault = plan(index, ordinal, op)
        let replaced = EngineOp(cookie: op.cookie, opcode: .null)
        let accepted: Bool
        if halted {
            accepted = inner.enqueue(replaced)
            if accepted { overrides[op.cookie] = .notAttempted }
        } else {
            switch fault {
            case nil:
                accepted = inner.enqueue(op)
            case .fail(let status)?:
                accepted = inner.enqueue(replaced)
                if accepted { overrides[op.cookie] = status }
            case .halt?:
                accepted = inner.enqueue(replaced)
                if accepted {
                    overrides[op.cookie] = .channelHalted
                    halted = true
                }
            case .corrupt?:
                accepted = inner.enqueue(op)
                if accepted, let d = op.destination, op.length > 0 { corruptions[op.cookie] = d }
            case .delay(let microseconds)?:
                accepted = inner.enqueue(op)
                if accepted { delays[op.cookie] = UInt64(max(0, microseconds)) * 1000 }
            }
        }
        if accepted { ordinal += 1 }
        return accepted
    }

    func submit() { inner.submit() }

    func reap(into completions: UnsafeMutableBufferPointer<EngineCompletion>) -> Int {
        // Take everything the inner engine finished, apply the faults, and hold it in order.
        let now = Clock.nanoseconds()
        let n = inner.reap(into: completions)
        for i in 0..<n {
            var c = completions[i]
            if let status = overrides.removeValue(forKey: c.cookie) { c = EngineCompletion(cookie: c.cookie, status: status) }
            if let d = corruptions.removeValue(forKey: c.cookie) { d.storeBytes(of: d.load(as: UInt8.self) ^ 0xFF, as: UInt8.self) }
            let due = delays.removeValue(forKey: c.cookie).map { now + $0 } ?? 0
            held.append((c, max(due, held.last?.1 ?? 0)))  // completions stay in order behind a slow one
        }
        var out = 0
        while out < completions.count, let (c, due) = held.first, due <= now {
            completions[out] = c
            held.removeFirst()
            out += 1
        }
        return out
    }

    func reset() {
        halted = false
        inner.reset()
    }

    func shutdown() { inner.shutdown() }
}
