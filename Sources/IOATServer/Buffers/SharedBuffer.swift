import IOATProtocol
import IOATSystem

/// One buffer open on a connection: a mapping of a server-allocated or client-registered memfd.
/// In-flight ops hold a reference, so a buffer freed or orphaned while the engine uses it is
/// unmapped only when the last such op completes — on a setup thread when the server has them, so
/// unmapping gigabytes never stalls the event loop.
final class SharedBuffer {
    let handle: UInt32
    let mapping: Mapping
    let flags: BufferReply.Flags
    let pageSize: UInt64
    /// The engine's DMA registration of the mapping (DPDK: external memory and IOMMU mapping); undone
    /// before the mapping goes.
    private var registration: AnyObject?
    /// What it costs the server-wide budget, returned when it is unmapped.
    let charge: BudgetCharge
    /// Where the unmap happens; inline when nil.
    private let workers: BufferWorkers?
    var size: UInt64 { UInt64(mapping.count) }
    /// Whether the server made it (ALLOC) rather than mapped a client's memfd (REGISTER).
    let allocated: Bool
    /// The name its memfd is kept under in the handover store, when there is one.
    var storedAs: String? = nil

    init(handle: UInt32, mapping: Mapping, flags: BufferReply.Flags, pageSize: UInt64, registration: AnyObject?,
         charge: BudgetCharge = BudgetCharge(), workers: BufferWorkers? = nil, allocated: Bool = true) {
        self.handle = handle
        self.allocated = allocated
        self.mapping = mapping
        self.flags = flags
        self.pageSize = pageSize
        self.registration = registration
        self.charge = charge
        self.workers = workers
    }

    deinit {
        let disposal = Disposal(mapping: mapping, registration: registration)
        registration = nil
        if let workers, workers.submit(.dispose(disposal, charge)) { return }
        // No setup threads (tests, or the server has stopped): the unmap happens here, the registration first.
        _ = consume disposal
    }

    /// The reply that describes this buffer.
    var reply: BufferReply { BufferReply(handle: handle, flags: flags, size: size, pageSize: pageSize) }
}
