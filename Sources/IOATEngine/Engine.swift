import IOATProtocol
import IOATSystem

/// One operation as an engine sees it: addresses already resolved and bounds-checked by the server.
/// Shaped like a hardware descriptor; `cookie` comes back unchanged in the completion.
public struct EngineOp {
    /// Chosen by the submitter; the engine only echoes it.
    public var cookie: UInt64
    /// What to do.
    public var opcode: Opcode
    /// Descriptor flags (the engine honours `fence`; `crcSeed` selects `arg` as the seed).
    public var flags: Descriptor.Flags
    /// Source bytes (`length` long), for opcodes that read.
    public var source: UnsafeRawPointer?
    /// Destination bytes (`length` long), for opcodes that write.
    public var destination: UnsafeMutableRawPointer?
    /// Bytes to process.
    public var length: Int
    /// FILL and COMPARE_PATTERN pattern, CRC seed in the low 32 bits, or XOR source count.
    public var arg: UInt64
    /// DUALCAST second destination, or the 4 bytes a CRC STORE writes / TEST reads (inline or not).
    public var auxiliary: UnsafeMutableRawPointer?
    /// The queue's running CRC: read by CRC_CHAIN ops, written by every CRC op of the queue.
    public var crcState: UnsafeMutablePointer<UInt32>?
    /// XOR sources (`arg` of them, each `length` long).
    public var sources: UnsafePointer<UnsafeRawPointer>?

    /// Creates an op.
    @inlinable
    public init(cookie: UInt64, opcode: Opcode, flags: Descriptor.Flags = [], source: UnsafeRawPointer? = nil,
                destination: UnsafeMutableRawPointer? = nil, length: Int = 0, arg: UInt64 = 0,
                auxiliary: UnsafeMutableRawPointer? = nil, crcState: UnsafeMutablePointer<UInt32>? = nil,
                sources: UnsafePointer<UnsafeRawPointer>? = nil) {
        self.cookie = cookie
        self.opcode = opcode
        self.flags = flags
        self.source = source
        self.destination = destination
        self.length = length
        self.arg = arg
        self.auxiliary = auxiliary
        self.crcState = crcState
        self.sources = sources
    }

    /// A placeholder for preallocated rings.
    public static var empty: EngineOp { EngineOp(cookie: 0, opcode: .null) }
}

/// How one engine op ended.
public struct EngineCompletion: Sendable {
    /// The op's cookie.
    public var cookie: UInt64
    /// The result, in the one vocabulary every engine shares.
    public var status: CompletionStatus
    /// CRC32C for CRC opcodes.
    public var result: UInt32
    /// Bytes processed.
    public var bytesDone: UInt64

    /// Creates a completion.
    @inlinable
    public init(cookie: UInt64, status: CompletionStatus, result: UInt32 = 0, bytesDone: UInt64 = 0) {
        self.cookie = cookie
        self.status = status
        self.result = result
        self.bytesDone = bytesDone
    }

    /// A placeholder for preallocated rings.
    public static let empty = EngineCompletion(cookie: 0, status: .success)
}

/// One channel of an engine, driven like a DMA ring (dmaengine / liburing shape): `enqueue` prepares
/// descriptors, `submit` rings the doorbell, `reap` collects completions in submission order.
///
/// Threading: `enqueue`, `submit` and `reap` are called from one thread only (the server's event loop);
/// the engine runs ops on its own threads or hardware and signals `notifier` when `reap` has work.
public protocol EngineChannel: AnyObject, Sendable {
    /// Properties reported to clients.
    var info: ChannelInfo { get }
    /// Ring slots not holding an op that has been enqueued and not yet reaped.
    var freeSlots: Int { get }
    /// Places `op` in the ring without starting it; `false` when the ring is full.
    func enqueue(_ op: EngineOp) -> Bool
    /// Starts every op enqueued since the last `submit`.
    func submit()
    /// Moves finished ops, in submission order, into `completions`; returns how many.
    func reap(into completions: UnsafeMutableBufferPointer<EngineCompletion>) -> Int
    /// Whether `reap` would return something now (cheap: for polling loops).
    var hasCompletions: Bool { get }
    /// Brings a halted channel back into service (ioat(4)'s reset after a hardware error). Ops the
    /// engine reported NOT_ATTEMPTED because of the halt may then be enqueued again.
    func reset()
    /// Stops the channel's workers after the ops already submitted finish.
    func shutdown()
    /// What runs `opcode` on this channel: "cpu" or a device driver's name (for status).
    /// Runs `op` at once on the calling thread and returns its completion, for an engine that can (the
    /// CPU engine); nil when the op must go through the ring. The caller only does so when the channel
    /// holds no other op, so completion order is kept.
    func executeInline(_ op: EngineOp) -> EngineCompletion?
    /// `executeInline` for a COPY, FILL or NULL, given as its few fields: the loop's path for small
    /// ops, where building an `EngineOp` per op showed in the profile. The default builds one.
    func executeInline(common opcode: Opcode, cookie: UInt64, source: UnsafeRawPointer?, destination: UnsafeMutableRawPointer?,
                       length: Int, arg: UInt64) -> EngineCompletion?
    /// Whether `executeInline` runs ops (the CPU engine): the channel then keeps small ops on the loop
    /// thread, a budget per turn of the loop, instead of handing them to a worker.
    var runsInline: Bool { get }
    /// Adds time the caller spent running this channel's ops inline to `busyNanoseconds`.
    func noteInlineBusy(_ nanoseconds: UInt64)
    func runner(of opcode: Opcode) -> String
    /// The DMA device behind the channel, for status; nil for the CPU engine.
    var deviceStatus: DeviceStatus? { get }
    /// Nanoseconds the channel has spent with ops to run (its engine busy time), readable from any thread.
    var busyNanoseconds: UInt64 { get }
}

extension EngineChannel {
    public func runner(of opcode: Opcode) -> String { "cpu" }
    public func executeInline(_ op: EngineOp) -> EngineCompletion? { nil }
    public func executeInline(common opcode: Opcode, cookie: UInt64, source: UnsafeRawPointer?, destination: UnsafeMutableRawPointer?,
                              length: Int, arg: UInt64) -> EngineCompletion? {
        executeInline(EngineOp(cookie: cookie, opcode: opcode, source: source, destination: destination, length: length, arg: arg))
    }
    public var runsInline: Bool { false }
    public func noteInlineBusy(_ nanoseconds: UInt64) {}
    public var deviceStatus: DeviceStatus? { nil }
    public var busyNanoseconds: UInt64 { 0 }
}

/// A set of channels sharing one completion notifier.
public protocol Engine: AnyObject, Sendable {
    /// Short name for logs and status ("cpu", "dpdk").
    var name: String { get }
    /// The channels, indexed by `ChannelInfo.index`.
    var channels: [any EngineChannel] { get }
    /// Signalled when a channel has completions to reap while the notifier is armed.
    var notifier: EventFD { get }
    /// Called by the event loop just before it sleeps: from now on a completion signals `notifier`.
    /// Returns false when completions are already waiting (then the loop must not sleep). Until this is
    /// called again after `disarmNotifier`, the loop polls `hasCompletions` and engines need not signal
    /// (the io_uring "need wakeup" idea: no syscall per op while the consumer is awake).
    func armNotifier() -> Bool
    /// Called by the event loop when it wakes.
    func disarmNotifier()
    /// Stops every channel.
    func shutdown()
    /// Makes `memory` (page-aligned, a whole number of `pageSize` pages) reachable by the engine's
    /// devices, for as long as the returned object lives; nil when nothing was needed. Called for every
    /// server-allocated and client-registered buffer before it is used.
    func register(memory: UnsafeMutableRawBufferPointer, pageSize: Int) throws(SystemError) -> AnyObject?
    /// Engine-wide facts for status (DPDK devices, IOVA mode, registrations); nil for the CPU engine.
    var status: EngineStatus? { get }
    /// Whether `register(memory:pageSize:)` pins the memory (an IOMMU mapping does); the server then counts
    /// a client's registered memory against its budget.
    var pinsRegisteredMemory: Bool { get }
}

extension Engine {
    /// CPU threads reach every mapping; nothing to do.
    public func register(memory: UnsafeMutableRawBufferPointer, pageSize: Int) throws(SystemError) -> AnyObject? { nil }
    public var status: EngineStatus? { nil }
    public var pinsRegisteredMemory: Bool { false }
}

/// What an engine says about itself, in its own terms; the server maps it into STATUS (SPEC.md §5.6).
public struct EngineStatus: Sendable, Equatable {
    /// The DMA devices it drives, each with its driver and channel count.
    public var devices: [(name: String, driver: String, channels: Int)]
    /// Whether devices reach memory by virtual address (IOVA as VA) rather than physical.
    public var iovaIsVirtual: Bool
    /// Memory registrations (DMA mappings) alive now.
    public var registrations: Int

    public init(devices: [(name: String, driver: String, channels: Int)], iovaIsVirtual: Bool, registrations: Int) {
        self.devices = devices
        self.iovaIsVirtual = iovaIsVirtual
        self.registrations = registrations
    }

    public static func == (a: EngineStatus, b: EngineStatus) -> Bool {
        a.iovaIsVirtual == b.iovaIsVirtual && a.registrations == b.registrations && a.devices.count == b.devices.count
            && zip(a.devices, b.devices).allSatisfy { $0.name == $1.name && $0.driver == $1.driver && $0.channels == $1.channels }
    }
}

/// One channel's DMA device: which, and what it has done.
public struct DeviceStatus: Sendable, Equatable {
    public var name: String
    public var driver: String
    /// The device's virtual channel this engine channel drives.
    public var vchan: UInt16
    /// Ops the device ran, and ops the channel's worker ran on the CPU instead.
    public var deviceOps: UInt64
    public var cpuOps: UInt64
    /// Times the device was stopped and started again after an error.
    public var restarts: UInt64
    /// The last error the device reported, if any.
    public var lastError: String?

    public init(name: String, driver: String, vchan: UInt16, deviceOps: UInt64, cpuOps: UInt64, restarts: UInt64, lastError: String?) {
        self.name = name
        self.driver = driver
        self.vchan = vchan
        self.deviceOps = deviceOps
        self.cpuOps = cpuOps
        self.restarts = restarts
        self.lastError = lastError
    }
}
