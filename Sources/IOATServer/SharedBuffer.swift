import IOATProtocol
import IOATSystem

/// One buffer open on a connection: a mapping of a server-allocated or client-registered memfd.
/// In-flight ops hold a reference, so a buffer freed or orphaned while the engine uses it is
/// unmapped only when the last such op completes.
final class SharedBuffer {
    let handle: UInt32
    let mapping: Mapping
    let flags: BufferReply.Flags
    let pageSize: UInt64
    /// The engine's DMA registration of the mapping (DPDK: external memory and IOMMU mapping); undone
    /// before the mapping goes.
    private var registration: AnyObject?
    var size: UInt64 { UInt64(mapping.count) }

    init(handle: UInt32, mapping: Mapping, flags: BufferReply.Flags, pageSize: UInt64, registration: AnyObject?) {
        self.handle = handle
        self.mapping = mapping
        self.flags = flags
        self.pageSize = pageSize
        self.registration = registration
    }

    deinit {
        // Explicitly first: the devices must lose access before the memory is unmapped.
        registration = nil
    }

    /// The reply that describes this buffer.
    var reply: BufferReply { BufferReply(handle: handle, flags: flags, size: size, pageSize: pageSize) }
}
