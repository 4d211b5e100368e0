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

    public func armNotifier() -> Bool { inner.armNotifier() }
    public func disarmNotifier() { inner.disarmNotifier() }
    public func shutdown() { inner.shutdown() }
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

    init(inner: any EngineChannel, index: Int, plan: @escaping @Sendable (Int, Int, EngineOp) -> Fault?) {
        self.inner = inner
        self.index = index
        self.plan = plan
    }

    var info: ChannelInfo { inner.info }
    var freeSlots: Int { inner.freeSlots }
    var hasCompletions: Bool { inner.hasCompletions }

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
            }
        }
        if accepted { ordinal += 1 }
        return accepted
    }

    func submit() { inner.submit() }

    func reap(into completions: UnsafeMutableBufferPointer<EngineCompletion>) -> Int {
        let n = inner.reap(into: completions)
        for i in 0..<n {
            let cookie = completions[i].cookie
            if let status = overrides.removeValue(forKey: cookie) {
                completions[i] = EngineCompletion(cookie: cookie, status: status)
            }
            if let d = corruptions.removeValue(forKey: cookie) {
                d.storeBytes(of: d.load(as: UInt8.self) ^ 0xFF, as: UInt8.self)
            }
        }
        return n
    }

    func reset() {
        halted = false
        inner.reset()
    }

    func shutdown() { inner.shutdown() }
}
