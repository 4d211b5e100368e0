#if DPDK
import CDPDK
import Glibc
import IOATEngine
import IOATProtocol
import IOATSystem
import Synchronization

/// The DPDK dmadev engine: every vchan of every dmadev the EAL finds (I/OAT/CBDMA through the `ioat`
/// driver, DSA through `idxd`, or the `dma_skeleton` software device) becomes one ioatd channel.
///
/// dmadev runs copy (and, where the device says so, fill). Every other opcode runs on the CPU, on the
/// channel's own worker thread, in ring order: a CPU op starts only after every earlier device op of
/// the channel has completed, and later device ops start only after it. So a channel keeps the CPU
/// engine's ordering whichever runs each op (SPEC.md §8), and FENCE holds across the two.
///
/// Each channel has one worker thread; it is the only thread that calls the dmadev data path of its
/// vchan (dmadev is not thread-safe per vchan), and it polls for completions while the device holds
/// ops — dmadev has no completion interrupt.
public final class DPDKEngine: Engine, @unchecked Sendable {
    public let name = "dpdk"
    public let channels: [any EngineChannel]

    /// What the engine was started with.
    public struct Options: Sendable {
        /// EAL arguments (without a program name).
        public var ealArguments: [String]
        /// Descriptors per vchan ring (clamped to what each device allows).
        public var ringSize: Int = 1024
        /// Largest transfer one device op takes. dmadev reports none; 1 MiB is within every CBDMA
        /// generation's transfer cap and DSA's default max transfer size, and the server splits larger
        /// descriptors (SPEC.md §6.7).
        public var maxTransfer: UInt64 = 1 << 20
        /// How long an idle worker polls its ring before it sleeps.
        public var busyPollMicroseconds: Int = 50

        /// Options with defaults and these EAL arguments.
        public init(ealArguments: [String]) { self.ealArguments = ealArguments }
    }

    /// Why the engine could not start.
    public struct StartError: Error, CustomStringConvertible {
        public var description: String
    }

    /// The devices found, for logs.
    public let devices: [Device]
    /// Whether device addresses are virtual addresses (EAL IOVA-as-VA mode).
    public let iovaIsVirtual: Bool

    private let signal: CompletionSignal
    private let dmaChannels: [DPDKChannel]
    /// Live DMA memory registrations (for status and the tests).
    let registrations = Atomic<Int>(0)

    /// One dmadev.
    public struct Device: Sendable {
        public var id: Int16
        public var name: String
        public var driver: String
        public var capabilities: UInt64
        public var vchans: Int
        public var ringSize: Int
        public var sharedVirtualAddressing: Bool { capabilities & ioatd_dpdk_capa_sva != 0 }
    }

    /// Whether this process already ran rte_eal_init: DPDK allows one per process.
    private static let started = Mutex(false)

    /// Starts the EAL and every dmadev. Fails when the EAL does not start, no dmadev is found, or a
    /// device cannot be configured.
    public init(options: Options) throws(StartError) {
        let alreadyStarted = Self.started.withLock { started in
            defer { started = true }
            return started
        }
        guard !alreadyStarted else {
            throw StartError(description: "the DPDK EAL was already started in this process; it can be started once")
        }
        var error = [CChar](repeating: 0, count: 256)
        let arguments = ["ioatd"] + options.ealArguments
        let cArguments = arguments.map { strdup($0) }
        defer { for a in cArguments { free(a) } }
        // rte_eal_init may reorder argv; it gets a copy of the pointers.
        var argv = cArguments
        let rc = argv.withUnsafeMutableBufferPointer { argv in
            ioatd_dpdk_init(Int32(argv.count), argv.baseAddress, &error, error.count)
        }
        guard rc == 0 else {
            let reason = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw StartError(description: "\(reason); EAL arguments: \(options.ealArguments.joined(separator: " "))")
        }
        iovaIsVirtual = ioatd_dpdk_iova_is_va() == 1

        var devices: [Device] = []
        for i in 0..<Int(ioatd_dpdk_device_count()) {
            var raw = ioatd_dpdk_device()
            guard ioatd_dpdk_device_info(Int32(i), &raw) == 0 else { continue }
            let name = withUnsafeBytes(of: raw.name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            let driver = withUnsafeBytes(of: raw.driver) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            let ring = min(max(options.ringSize, Int(raw.min_desc)), Int(raw.max_desc == 0 ? UInt16(options.ringSize) : raw.max_desc))
            devices.append(Device(id: raw.id, name: name, driver: driver, capabilities: raw.capabilities,
                                  vchans: max(1, Int(raw.max_vchans)), ringSize: ring))
        }
        guard !devices.isEmpty else {
            throw StartError(description: "the EAL found no dmadev; bind a CBDMA function to vfio-pci, configure a DSA work queue, or pass --vdev=dma_skeleton (deploy/HARDWARE.md)")
        }
        for device in devices {
            guard device.capabilities & ioatd_dpdk_capa_mem_to_mem != 0, device.capabilities & ioatd_dpdk_capa_copy != 0 else {
                throw StartError(description: "dmadev \(device.name) (\(device.driver)) cannot copy memory to memory")
            }
            guard device.sharedVirtualAddressing || iovaIsVirtual else {
                throw StartError(description: "dmadev \(device.name) (\(device.driver)) needs IOVA addresses and the EAL runs in physical-address mode; pass --iova-mode=va (with vfio-pci and an IOMMU)")
            }
            let rc = ioatd_dpdk_device_start(device.id, UInt16(device.vchans), UInt16(device.ringSize))
            guard rc == 0 else {
                throw StartError(description: "starting dmadev \(device.name) (\(device.driver)) with \(device.vchans) vchans of \(device.ringSize) descriptors failed: \(String(cString: strerror(-rc)))")
            }
        }
        self.devices = devices

        do throws(SystemError) {
            signal = try CompletionSignal()
            var channels: [DPDKChannel] = []
            for device in devices {
                for vchan in 0..<device.vchans {
                    let index = channels.count
                    let label = device.vchans == 1 ? device.name : "\(device.name)/\(vchan)"
                    let info = ChannelInfo(
                        index: UInt32(index), engine: .dpdk, hardwareVersion: 0,
                        opcodes: Opcode.allCases.reduce(0) { $0 | $1.capabilityBit },
                        maxTransfer: options.maxTransfer, maxDepth: UInt32(device.ringSize), maxCoalesceMicroseconds: 16383,
                        name: String(decoding: label.utf8.suffix(15), as: UTF8.self))
                    let ring = try ChannelRing(capacity: device.ringSize, signal: signal,
                                               busyPollNanoseconds: UInt64(max(0, options.busyPollMicroseconds)) * 1000)
                    channels.append(DPDKChannel(info: info, device: device, vchan: UInt16(vchan), ring: ring))
                }
            }
            dmaChannels = channels
            self.channels = channels
        } catch {
            for device in devices { _ = ioatd_dpdk_device_close(device.id) }
            throw StartError(description: "\(error)")
        }
    }

    public var notifier: EventFD { signal.notifier }

    public func armNotifier() -> Bool { signal.arm { dmaChannels.contains(where: \.hasCompletions) } }

    public func disarmNotifier() { signal.disarm() }

    /// Stops the workers, then closes the devices. The EAL itself stays up until the process exits:
    /// DPDK cannot start it again in the same process.
    public func shutdown() {
        for channel in dmaChannels { channel.shutdown() }
        for device in devices { _ = ioatd_dpdk_device_close(device.id) }
    }

    /// Registers the buffer with the EAL as external memory and, for devices without shared virtual
    /// addressing, maps it in their IOMMU domain (rte_dev_dma_map). Undone when the returned object
    /// is released, which the server does once the buffer is freed and no op uses it.
    public func register(memory: UnsafeMutableRawBufferPointer, pageSize: Int) throws(SystemError) -> AnyObject? {
        let length = (memory.count + pageSize - 1) / pageSize * pageSize
        let rc = ioatd_dpdk_register_memory(memory.baseAddress, length, pageSize)
        guard rc == 0 else { throw SystemError("rte_extmem_register/rte_dev_dma_map", errno: -rc) }
        registrations.add(1, ordering: .relaxed)
        return Registration(base: memory.baseAddress!, length: length, engine: self)
    }

    /// Memory registrations alive now.
    public var liveRegistrations: Int { registrations.load(ordering: .relaxed) }

    /// Devices without shared virtual addressing reach memory through IOMMU mappings, which pin it.
    public var pinsRegisteredMemory: Bool { devices.contains { !$0.sharedVirtualAddressing } }

    public var status: EngineStatus? {
        EngineStatus(devices: devices.map { ($0.name, $0.driver, Int($0.vchans)) }, iovaIsVirtual: iovaIsVirtual,
                     registrations: liveRegistrations)
    }

    final class Registration {
        let base: UnsafeMutableRawPointer
        let length: Int
        let engine: DPDKEngine
        init(base: UnsafeMutableRawPointer, length: Int, engine: DPDKEngine) {
            self.base = base
            self.length = length
            self.engine = engine
        }
        deinit {
            _ = ioatd_dpdk_unregister_memory(base, length)
            engine.registrations.subtract(1, ordering: .relaxed)
        }
    }
}

/// One vchan of one dmadev, with its worker thread.
final class DPDKChannel: EngineChannel, @unchecked Sendable {
    let info: ChannelInfo
    let device: DPDKEngine.Device
    let vchan: UInt16
    private let ring: ChannelRing
    private var worker: OSThread?
    /// Opcodes the device runs; the rest run on the worker's CPU.
    let deviceOpcodes: Set<Opcode>
    /// After a halt: ops below this ring index complete NOT_ATTEMPTED; `reset()` sets it to the
    /// ring's end, and the worker restarts the device when it reaches that point.
    private let resumeFrom = Atomic<Int>(0)
    /// Counters for status.
    private let deviceOps = Atomic<UInt64>(0)
    private let busy = Atomic<UInt64>(0)
    var busyNanoseconds: UInt64 { busy.load(ordering: .relaxed) }
    private let cpuOps = Atomic<UInt64>(0)
    private let restarts = Atomic<UInt64>(0)
    private let lastDeviceError = Mutex<String?>(nil)

    init(info: ChannelInfo, device: DPDKEngine.Device, vchan: UInt16, ring: ChannelRing) {
        self.info = info
        self.device = device
        self.vchan = vchan
        self.ring = ring
        var opcodes: Set<Opcode> = [.copy]
        if device.capabilities & ioatd_dpdk_capa_fill != 0 { opcodes.insert(.fill) }
        deviceOpcodes = opcodes
        // Strong capture: the cycle is broken by shutdown(), which joins the thread and drops it.
        worker = OSThread(name: "ioatd-dma\(info.index)") { self.run() }
    }

    var freeSlots: Int { ring.freeSlots }
    func enqueue(_ op: EngineOp) -> Bool { ring.enqueue(op) }
    func submit() { ring.submit() }
    var hasCompletions: Bool { ring.hasCompletions }
    func reap(into completions: UnsafeMutableBufferPointer<EngineCompletion>) -> Int { ring.reap(into: completions) }

    /// Called by the server once every op the halt stopped has come back: ops enqueued from now on run.
    func reset() { resumeFrom.store(ring.enqueued, ordering: .sequentiallyConsistent) }

    func shutdown() {
        guard let worker else { return }
        ring.stop()
        worker.join()
        self.worker = nil
    }

    /// COPY_SG reaches the engine as copies of its entries, so it runs where COPY runs.
    func runner(of opcode: Opcode) -> String {
        deviceOpcodes.contains(opcode == .copySG ? .copy : opcode) ? device.driver : "cpu"
    }

    var deviceStatus: DeviceStatus? {
        DeviceStatus(name: device.name, driver: device.driver, vchan: vchan, deviceOps: deviceOps.load(ordering: .relaxed),
                     cpuOps: cpuOps.load(ordering: .relaxed), restarts: restarts.load(ordering: .relaxed),
                     lastError: lastDeviceError.withLock { $0 })
    }

    private func runsOnDevice(_ op: EngineOp) -> Bool { deviceOpcodes.contains(op.opcode) && op.length > 0 }

    /// Hands one op to the device; a ring index or a negative errno.
    private func issue(_ op: EngineOp) -> Int32 {
        let flags = op.flags.contains(.fence) ? ioatd_dpdk_flag_fence : 0
        let destination = ioatd_dpdk_iova(op.destination)
        switch op.opcode {
        case .fill:
            return ioatd_dpdk_fill(device.id, vchan, op.arg, destination, UInt32(op.length), flags)
        default:
            return ioatd_dpdk_copy(device.id, vchan, ioatd_dpdk_iova(op.source), destination, UInt32(op.length), flags)
        }
    }

    /// The worker. Ring indices [published, next) are on the device; everything below `published` has
    /// its completion published; CPU ops run only when the device holds nothing.
    private func run() {
        var next = 0
        var published = 0
        var halted = false
        let statusCapacity = 64
        let statuses = UnsafeMutablePointer<UInt32>.allocate(capacity: statusCapacity)
        defer { statuses.deallocate() }

        func publish(_ status: CompletionStatus, bytes: Int = 0) {
            let op = ring.op(at: published)
            ring.publish(EngineCompletion(cookie: op.cookie, status: status, bytesDone: UInt64(bytes)), at: published)
            published += 1
        }

        // Busy from the moment work arrives until everything taken has completed.
        var busySince: UInt64 = 0
        while true {
            var limit = ring.submittedCount
            if published == next && limit == next {
                if busySince != 0 {
                    busy.add(Clock.nanoseconds(since: busySince), ordering: .relaxed)
                    busySince = 0
                }
                guard let more = ring.waitForWork(after: next) else { return }
                limit = more
            }
            if busySince == 0 { busySince = Clock.nanoseconds() }
            var issued = false
            while next < limit {
                let op = ring.op(at: next)
                if halted {
                    if next < resumeFrom.load(ordering: .sequentiallyConsistent) {
                        next += 1
                        publish(.notAttempted)
                        continue
                    }
                    let rc = ioatd_dpdk_device_restart(device.id)
                    restarts.add(1, ordering: .relaxed)
                    if rc != 0 { noteError("restart after halt failed: \(String(cString: strerror(-rc)))") }
                    halted = false
                }
                if runsOnDevice(op) {
                    let rc = issue(op)
                    if rc == -ENOSPC { break }
                    if rc < 0 {
                        // Refused: reported in order, once the ops before it have completed.
                        guard published == next else { break }
                        noteError("enqueue refused: \(String(cString: strerror(-rc)))")
                        next += 1
                        publish(.engineError)
                        continue
                    }
                    next += 1
                    issued = true
                    deviceOps.add(1, ordering: .relaxed)
                } else {
                    // Ordering across the two: a CPU op waits for the device ops before it.
                    guard published == next else { break }
                    next += 1
                    cpuOps.add(1, ordering: .relaxed)
                    let completion = Kernels.execute(op)
                    ring.publish(completion, at: published)
                    published += 1
                }
            }
            if issued { _ = ioatd_dpdk_submit(device.id, vchan) }

            guard published < next else { continue }
            let n = Int(ioatd_dpdk_completed(device.id, vchan, UInt16(min(statusCapacity, next - published)), statuses))
            if n == 0 {
                Clock.yield()
                continue
            }
            for i in 0..<n {
                let raw = statuses[i]
                guard raw != DmadevStatus.successful.rawValue else {
                    publish(.success, bytes: ring.op(at: published).length)
                    continue
                }
                let name = DmadevStatus(rawValue: raw)?.name ?? "status \(raw)"
                noteError("op failed: \(name)")
                if ioatd_dpdk_vchan_halted(device.id, vchan) == 1 {
                    // The device stopped: this op halted it, the rest it held did not run. Stop it
                    // until the server has taken them back and called reset().
                    resumeFrom.store(Int.max, ordering: .sequentiallyConsistent)
                    halted = true
                    _ = ioatd_dpdk_device_stop(device.id)
                    publish(.channelHalted)
                    while published < next { publish(.notAttempted) }
                    break
                }
                publish(DmadevStatus.completionStatus(raw: raw))
            }
        }
    }

    private func noteError(_ text: String) {
        lastDeviceError.withLock { $0 = "\(device.name)/\(vchan): \(text)" }
    }
}
#endif
