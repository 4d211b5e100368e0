/// One entry of an XOR source list (SPEC.md §6.2): 16 bytes, `handle` (u32), `reserved` (u32, zero),
/// `offset` (u64). Laid out like `struct ioatd_xor_src` in ioatd.h.
public struct XorSource: Hashable, Sendable {
    /// Wire size of one entry.
    public static let size = 16

    /// The source address.
    public var address: BufferAddress

    /// Creates an entry.
    public init(_ address: BufferAddress) { self.address = address }

    /// Appends the wire form.
    public func encode(into writer: inout WireWriter) {
        writer.write(address.handle)
        writer.write(UInt32(0))
        writer.write(address.offset)
    }

    /// Decodes entry `entry` of a list whose bytes are `list` (a private copy, or memory read once).
    /// `index` is the descriptor's position, for the error.
    public static func decode(_ list: UnsafeRawBufferPointer, entry: Int, index: UInt32) throws(ProtocolError) -> XorSource {
        let r = WireReader(list)
        let at = entry * size
        guard let handle: UInt32 = r.get(at: at), let reserved: UInt32 = r.get(at: at + 4),
            let offset: UInt64 = r.get(at: at + 8)
        else {
            throw ProtocolError(.outOfRange, "XOR source \(entry) lies past the end of its list", index: index)
        }
        guard reserved == 0 else {
            throw ProtocolError(.reservedNotZero, "XOR source \(entry) has reserved field \(reserved), must be 0",
                                index: index)
        }
        return XorSource(BufferAddress(handle: handle, offset: offset))
    }
}

/// One entry of a COPY_SG list (SPEC.md §6.2): 32 bytes, `src_handle` (u32), `dst_handle` (u32),
/// `src_offset` (u64), `dst_offset` (u64), `length` (u64, above 0). Laid out like `struct ioatd_sg_entry`.
public struct ScatterGatherEntry: Hashable, Sendable {
    /// Wire size of one entry.
    public static let size = 32

    public var source: BufferAddress
    public var destination: BufferAddress
    public var length: UInt64

    /// Creates an entry.
    public init(source: BufferAddress, destination: BufferAddress, length: UInt64) {
        self.source = source
        self.destination = destination
        self.length = length
    }

    /// Appends the wire form.
    public func encode(into writer: inout WireWriter) {
        writer.write(source.handle)
        writer.write(destination.handle)
        writer.write(source.offset)
        writer.write(destination.offset)
        writer.write(length)
    }

    /// Decodes entry `entry` of `list` and checks what it says on its own: a length above 0 and handles
    /// that are not 0. `index` is the descriptor's position, for the error.
    public static func decode(_ list: UnsafeRawBufferPointer, entry: Int, index: UInt32) throws(ProtocolError)
        -> ScatterGatherEntry
    {
        let r = WireReader(list)
        let at = entry * size
        guard let srcHandle: UInt32 = r.get(at: at), let dstHandle: UInt32 = r.get(at: at + 4),
            let srcOffset: UInt64 = r.get(at: at + 8), let dstOffset: UInt64 = r.get(at: at + 16),
            let length: UInt64 = r.get(at: at + 24)
        else {
            throw ProtocolError(.outOfRange, "COPY_SG entry \(entry) lies past the end of its list", index: index)
        }
        guard length > 0 else {
            throw ProtocolError(.badLength, "COPY_SG entry \(entry) has length 0", index: index)
        }
        guard srcHandle != 0, dstHandle != 0 else {
            throw ProtocolError(.badHandle, "COPY_SG entry \(entry) names handle 0; 0 is never valid",
                                index: index)
        }
        return ScatterGatherEntry(source: BufferAddress(handle: srcHandle, offset: srcOffset),
                                  destination: BufferAddress(handle: dstHandle, offset: dstOffset), length: length)
    }
}
