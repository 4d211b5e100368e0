import DequeModule
import Glibc
import IOATEngine
import IOATProtocol
import IOATSystem
import Synchronization

/// A mapping and its DMA registration, released in that order: the devices lose access before the
/// memory is unmapped.
final class Disposal: @unchecked Sendable {
    private var registration: AnyObject?
    private let mapping: Mapping
    init(mapping: Mapping, registration: AnyObject?) {
        self.mapping = mapping
        self.registration = registration
    }
    deinit { registration = nil }
}

/// What one buffer costs the server-wide budget (SPEC.md §5.1, `max_total_buffer_bytes`), by kind.
struct BudgetCharge: Sendable, Equatable {
    var bytes: UInt64 = 0
    /// Whether the bytes are locked in memory (mlock, or pinned for DMA).
    var locked = false
    /// Whether the bytes are hugepages.
    var hugepages = false
}

/// The buffer work that takes long — creating, prefaulting, locking, sealing, DMA registration, mapping a
/// client's memfd, and unmapping — done on a few threads of its own so the event loop never waits for
/// it (a 1 GiB buffer of 4 KiB pages is 262,144 page faults and locks). Jobs carry a ticket; outcomes come
/// back through `done`, an eventfd the event loop watches, and `takeOutcomes()`.
final class BufferWorkers: @unchecked Sendable {
    /// How to make a server buffer (ALLOC).
    struct AllocPlan: Sendable {
        var name: String
        /// Size rounded to small pages, and to hugepages when hugepages are to be tried.
        var smallSize: UInt64
        var hugeSize: UInt64?
        var hugepageSize: UInt64
        var requireHuge: Bool
        var lock: Bool
    }

    /// A buffer made by a setup thread, ready to be handed to its connection.
    struct Made: @unchecked Sendable {
        /// The memfd (ALLOC: sent to the client; REGISTER: already closed, or kept for the handover store).
        var fd: FileDescriptor?
        var mapping: Mapping
        var pageSize: UInt64
        var flags: BufferReply.Flags
        var registration: AnyObject?
        var charge: BudgetCharge
        /// Why hugepages were wanted and not used, for the log.
        var hugeFailure: String?
    }

    enum Job: @unchecked Sendable {
        case allocate(ticket: UInt64, AllocPlan)
        /// `keep`: the memfd comes back in `Made.fd` (for the handover store) instead of being closed.
        case register(ticket: UInt64, FileDescriptor, pins: Bool, keep: Bool)
        /// Drops a buffer's DMA registration, then its mapping (when the job is released, in that order:
        /// `Disposal` holds them).
        case dispose(Disposal, BudgetCharge)
    }

    enum Outcome: @unchecked Sendable {
        case made(ticket: UInt64, Result<Made, ProtocolError>)
        case disposed(BudgetCharge)
    }

    /// Signalled whenever outcomes wait.
    let done: EventFD
    private let engine: any Engine
    private let jobs = Mutex<(queue: Deque<Job>, stopping: Bool)>(([], false))
    private let outcomes = Mutex<[Outcome]>([])
    private let work = Semaphore()
    private var threads: [OSThread] = []

    /// Starts `count` setup threads for `engine`'s buffers.
    init(count: Int, engine: any Engine) throws(SystemError) {
        done = try EventFD()
        self.engine = engine
        for i in 0..<max(1, count) {
            threads.append(OSThread(name: "ioatd-setup\(i)") { [unowned self] in self.serve() })
        }
    }

    /// Queues a job; false when the workers have stopped (the caller then does it itself).
    @discardableResult
    func submit(_ job: Job) -> Bool {
        let accepted = jobs.withLock { state -> Bool in
            guard !state.stopping else { return false }
            state.queue.append(job)
            return true
        }
        if accepted { work.signal() }
        return accepted
    }

    /// The outcomes since the last call.
    func takeOutcomes() -> [Outcome] {
        _ = done.drain()
        return outcomes.withLock { list in
            defer { list.removeAll(keepingCapacity: true) }
            return list
        }
    }

    /// Finishes every queued job, then stops the threads.
    func shutdown() {
        jobs.withLock { $0.stopping = true }
        for _ in threads { work.signal() }
        for t in threads { t.join() }
        threads.removeAll()
    }

    private func serve() {
        while true {
            work.wait()
            let next = jobs.withLock { state -> Job?? in
                if let job = state.queue.popFirst() { return .some(job) }
                return state.stopping ? .none : .some(nil)
            }
            guard case .some(var job) = next else { return }  // stopping, and nothing left
            guard let current = job else { continue }
            let outcome = perform(current)
            // Every descriptor and mapping the job held is released before the outcome is published: a
            // registered memfd is closed before its reply goes out, and an unmap is done before it counts.
            job = nil
            _ = consume current
            outcomes.withLock { $0.append(outcome) }
            done.signal()
        }
    }

    private func perform(_ job: Job) -> Outcome {
        switch job {
        case .allocate(let ticket, let plan): return .made(ticket: ticket, allocate(plan))
        case .register(let ticket, let fd, let pins, let keep): return .made(ticket: ticket, map(fd, pins: pins, keep: keep))
        case .dispose(_, let charge): return .disposed(charge)
        }
    }

    /// Makes a server buffer: hugepages first when planned, else (or when they fail) small pages.
    private func allocate(_ plan: AllocPlan) -> Result<Made, ProtocolError> {
        var hugeFailure: String? = nil
        if let hugeSize = plan.hugeSize {
            do throws(SystemError) {
                let fd = try Memfd.create(name: plan.name, size: hugeSize, hugepages: true)
                let mapping = try Mapping(fd: fd, length: Int(hugeSize), writable: true, populate: true)
                return finish(fd, mapping, pageSize: plan.hugepageSize, plan: plan, hugeFailure: nil)
            } catch {
                hugeFailure = "\(error)"
            }
        }
        if plan.requireHuge {
            return .failure(ProtocolError(.noHugepages, "ALLOC of \(plan.smallSize) bytes requires hugepages: \(hugeFailure ?? "none")"))
        }
        do throws(SystemError) {
            let fd = try Memfd.create(name: plan.name, size: plan.smallSize, hugepages: false)
            let mapping = try Mapping(fd: fd, length: Int(plan.smallSize), writable: true, populate: true)
            return finish(fd, mapping, pageSize: MemoryInfo.smallPageSize, plan: plan, hugeFailure: hugeFailure)
        } catch {
            return .failure(ProtocolError(.noMemory, "ALLOC of \(plan.smallSize) bytes failed: \(error)"))
        }
    }

    private func finish(_ fd: FileDescriptor, _ mapping: Mapping, pageSize: UInt64, plan: AllocPlan,
                        hugeFailure: String?) -> Result<Made, ProtocolError> {
        do throws(SystemError) {
            try Memfd.addSeals([.shrink, .grow, .seal], to: fd)
        } catch {
            return .failure(ProtocolError(.internal, "sealing the new buffer failed: \(error)"))
        }
        var flags: BufferReply.Flags = pageSize > MemoryInfo.smallPageSize ? [.hugepages] : []
        if plan.lock, (try? mapping.lock()) != nil { flags.insert(.locked) }
        let registration: AnyObject?
        do throws(SystemError) {
            registration = try engine.register(memory: mapping.unsafeBytes, pageSize: Int(pageSize))
        } catch {
            return .failure(ProtocolError(.noMemory, "ALLOC of \(plan.smallSize) bytes: making it DMA-addressable failed: \(error)"))
        }
        let huge = flags.contains(.hugepages)
        return .success(Made(fd: fd, mapping: mapping, pageSize: pageSize, flags: flags, registration: registration,
                             charge: BudgetCharge(bytes: UInt64(mapping.count), locked: flags.contains(.locked) || huge, hugepages: huge),
                             hugeFailure: hugeFailure))
    }

    /// Maps a client's memfd (checked on the loop: memfd, sealed, size) and registers it for DMA.
    private func map(_ fd: FileDescriptor, pins: Bool, keep: Bool) -> Result<Made, ProtocolError> {
        let size: UInt64
        let blockSize: UInt64
        do throws(SystemError) {
            size = try fd.size()
            blockSize = try fd.blockSize()
        } catch {
            return .failure(ProtocolError(.internal, "fstat on the registered memfd failed: \(error)"))
        }
        var flags: BufferReply.Flags = []
        let mapping: Mapping
        do throws(SystemError) {
            mapping = try Mapping(fd: fd, length: Int(size), writable: true, populate: true)
        } catch where error.errno == EPERM || error.errno == EACCES {
            do throws(SystemError) {
                mapping = try Mapping(fd: fd, length: Int(size), writable: false, populate: true)
                flags.insert(.readOnly)
            } catch {
                return .failure(ProtocolError(.noMemory, "mapping the registered memfd (\(size) bytes) failed: \(error)"))
            }
        } catch {
            return .failure(ProtocolError(.noMemory, "mapping the registered memfd (\(size) bytes) failed: \(error)"))
        }
        if blockSize > MemoryInfo.smallPageSize { flags.insert(.hugepages) }
        let pageSize = max(blockSize, MemoryInfo.smallPageSize)
        let registration: AnyObject?
        do throws(SystemError) {
            registration = try engine.register(memory: mapping.unsafeBytes, pageSize: Int(pageSize))
        } catch {
            return .failure(ProtocolError(.noMemory, "REGISTER of a memfd of \(size) bytes: making it DMA-addressable failed: \(error)"))
        }
        // A client's memory counts against the budget only for what the server pins (DMA mappings).
        let charge = pins ? BudgetCharge(bytes: size, locked: true, hugepages: flags.contains(.hugepages)) : BudgetCharge()
        return .success(Made(fd: keep ? fd : nil, mapping: mapping, pageSize: pageSize, flags: flags, registration: registration,
                             charge: charge, hugeFailure: nil))
    }
}
