/// What a descriptor asks the engine to do (SPEC.md §6.2). Values are never reused.
public enum Opcode: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// Does nothing; a completion and ordering point. Mirrors ioat(4) `ioat_null`.
    case null = 0
    /// Copies `length` bytes from source to destination. Mirrors ioat(4) `ioat_copy`.
    case copy = 1
    /// Writes a repeating 64-bit pattern over the destination. Mirrors ioat(4) `ioat_blockfill`.
    case fill = 2
    /// Computes the CRC32C of the source. Mirrors ioat(4) `ioat_crc`.
    case crc32c = 3
    /// Copies and computes the CRC32C of the bytes copied. Mirrors ioat(4) `ioat_copy_crc`.
    case copyCRC32C = 4

    /// Bit of this opcode in a channel's capability mask.
    public var capabilityBit: UInt64 { 1 << UInt64(rawValue) }

    /// Whether the opcode reads a source range.
    public var readsSource: Bool { self == .copy || self == .crc32c || self == .copyCRC32C }
    /// Whether the opcode writes a destination range.
    public var writesDestination: Bool { self == .copy || self == .fill || self == .copyCRC32C }
    /// Whether the opcode computes a CRC32C.
    public var computesCRC: Bool { self == .crc32c || self == .copyCRC32C }

    /// The SPEC.md name, e.g. `COPY_CRC32C`.
    public var name: String {
        switch self {
        case .null: "NULL"
        case .copy: "COPY"
        case .fill: "FILL"
        case .crc32c: "CRC32C"
        case .copyCRC32C: "COPY_CRC32C"
        }
    }

    public var description: String { name }
}

/// One bounds-checked place in a buffer: a handle and an offset in it.
public struct BufferAddress: Hashable, Sendable {
    /// Buffer handle, per connection. 0 is never a valid handle and means "unused".
    public var handle: UInt32
    /// Byte offset inside the buffer.
    public var offset: UInt64

    /// Creates an address.
    public init(handle: UInt32, offset: UInt64) {
        self.handle = handle
        self.offset = offset
    }

    /// The unused address (handle 0, offset 0).
    public static let none = BufferAddress(handle: 0, offset: 0)
}

/// One 64-byte operation in a SUBMIT (SPEC.md §6.1). Laid out like `struct ioatd_desc` in ioatd.h.
public struct Descriptor: Hashable, Sendable {
    /// Per-descriptor flags (u16).
    public struct Flags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }

        /// Deliver this op's completion (and every earlier undelivered one of the queue) as soon as it
        /// completes. Mirrors ioat(4) `DMA_INT_EN`.
        public static let interrupt = Flags(rawValue: 1 << 0)
        /// Start only after every earlier op of the queue has completed. Mirrors ioat(4) `DMA_FENCE`.
        public static let fence = Flags(rawValue: 1 << 1)
        /// Refuse the whole SUBMIT with NO_SPACE instead of waiting for credits. Mirrors ioat(4)
        /// `DMA_NO_WAIT`.
        public static let noWait = Flags(rawValue: 1 << 2)
        /// CRC ops: start from `arg`'s low 32 bits (a CRC32C value) instead of the empty CRC.
        /// Mirrors the `initialseed` argument of ioat(4) `ioat_crc`.
        public static let crcSeed = Flags(rawValue: 1 << 3)

        /// Every flag defined in this protocol version.
        public static let defined: Flags = [.interrupt, .fence, .noWait, .crcSeed]
    }

    /// Wire size of one descriptor.
    public static let size = 64

    /// What to do.
    public var opcode: Opcode
    /// Modifiers.
    public var flags: Flags
    /// Opaque to the server; returned in the completion.
    public var cookie: UInt64
    /// Bytes to process.
    public var length: UInt64
    /// Source range start.
    public var source: BufferAddress
    /// Destination range start.
    public var destination: BufferAddress
    /// Third address, reserved for later opcodes; must be unused (handle and offset zero).
    public var auxiliary: BufferAddress
    /// Op-specific: FILL pattern; CRC seed in the low 32 bits with `crcSeed`.
    public var arg: UInt64

    /// Creates a descriptor; unused fields default to zero.
    public init(
        opcode: Opcode, flags: Flags = [], cookie: UInt64 = 0, length: UInt64 = 0,
        source: BufferAddress = .none, destination: BufferAddress = .none,
        auxiliary: BufferAddress = .none, arg: UInt64 = 0
    ) {
        self.opcode = opcode
        self.flags = flags
        self.cookie = cookie
        self.length = length
        self.source = source
        self.destination = destination
        self.auxiliary = auxiliary
        self.arg = arg
    }

    /// A copy of `length` bytes.
    public static func copy(from source: BufferAddress, to destination: BufferAddress, length: UInt64,
                            flags: Flags = [], cookie: UInt64 = 0) -> Descriptor {
        Descriptor(opcode: .copy, flags: flags, cookie: cookie, length: length, source: source,
                   destination: destination)
    }

    /// A fill of `length` bytes with `pattern` (little-endian byte order, restarting at the destination).
    public static func fill(_ destination: BufferAddress, length: UInt64, pattern: UInt64,
                            flags: Flags = [], cookie: UInt64 = 0) -> Descriptor {
        Descriptor(opcode: .fill, flags: flags, cookie: cookie, length: length, destination: destination,
                   arg: pattern)
    }

    /// A CRC32C of `length` bytes, optionally continuing from `seed`.
    public static func crc32c(of source: BufferAddress, length: UInt64, seed: UInt32? = nil,
                              flags: Flags = [], cookie: UInt64 = 0) -> Descriptor {
        Descriptor(opcode: .crc32c, flags: seed == nil ? flags : flags.union(.crcSeed), cookie: cookie,
                   length: length, source: source, arg: UInt64(seed ?? 0))
    }

    /// A copy that also computes the CRC32C of the bytes copied.
    public static func copyCRC32C(from source: BufferAddress, to destination: BufferAddress, length: UInt64,
                                  seed: UInt32? = nil, flags: Flags = [], cookie: UInt64 = 0) -> Descriptor {
        Descriptor(opcode: .copyCRC32C, flags: seed == nil ? flags : flags.union(.crcSeed), cookie: cookie,
                   length: length, source: source, destination: destination, arg: UInt64(seed ?? 0))
    }

    /// A no-op.
    public static func null(flags: Flags = [], cookie: UInt64 = 0) -> Descriptor {
        Descriptor(opcode: .null, flags: flags, cookie: cookie)
    }
}

extension Descriptor {
    /// Appends the 64-byte wire form.
    public func encode(into writer: inout WireWriter) {
        writer.write(opcode.rawValue)
        writer.write(UInt8(0))
        writer.write(flags.rawValue)
        writer.write(source.handle)
        writer.write(cookie)
        writer.write(length)
        writer.write(source.offset)
        writer.write(destination.handle)
        writer.write(auxiliary.handle)
        writer.write(destination.offset)
        writer.write(auxiliary.offset)
        writer.write(arg)
    }

    /// Decodes and validates the descriptor at `offset` of `bytes` (SPEC.md §6.3: everything that can be
    /// checked without knowing the connection's buffers). `index` names it in error messages.
    public static func decode(_ bytes: UnsafeRawBufferPointer, at offset: Int, index: UInt32) throws(ProtocolError)
        -> Descriptor
    {
        let r = WireReader(bytes)
        guard let rawOpcode: UInt8 = r.get(at: offset), let reserved: UInt8 = r.get(at: offset + 1),
            let rawFlags: UInt16 = r.get(at: offset + 2), let srcHandle: UInt32 = r.get(at: offset + 4),
            let cookie: UInt64 = r.get(at: offset + 8), let length: UInt64 = r.get(at: offset + 16),
            let srcOffset: UInt64 = r.get(at: offset + 24), let dstHandle: UInt32 = r.get(at: offset + 32),
            let auxHandle: UInt32 = r.get(at: offset + 36), let dstOffset: UInt64 = r.get(at: offset + 40),
            let auxOffset: UInt64 = r.get(at: offset + 48), let arg: UInt64 = r.get(at: offset + 56)
        else {
            throw ProtocolError(.malformed, "descriptor \(index): truncated", index: index)
        }
        guard let opcode = Opcode(rawValue: rawOpcode) else {
            throw ProtocolError(.unknownOpcode, "descriptor \(index): opcode \(rawOpcode) is not defined",
                                index: index)
        }
        guard reserved == 0 else {
            throw ProtocolError(.reservedNotZero, "descriptor \(index): reserved byte 1 is \(reserved), must be 0",
                                index: index)
        }
        let flags = Flags(rawValue: rawFlags)
        let unknown = flags.subtracting(.defined)
        guard unknown.isEmpty else {
            throw ProtocolError(
                .unknownFlags, "descriptor \(index): flag bits 0x\(String(unknown.rawValue, radix: 16)) are not defined",
                index: index)
        }
        let d = Descriptor(
            opcode: opcode, flags: flags, cookie: cookie, length: length,
            source: BufferAddress(handle: srcHandle, offset: srcOffset),
            destination: BufferAddress(handle: dstHandle, offset: dstOffset),
            auxiliary: BufferAddress(handle: auxHandle, offset: auxOffset), arg: arg)
        try d.validateShape(index: index)
        return d
    }

    /// Checks the rules of SPEC.md §6.3 that depend on the descriptor alone: which fields an opcode uses,
    /// which must be zero, which flags it accepts.
    public func validateShape(index: UInt32) throws(ProtocolError) {
        func unused(_ what: String) -> ProtocolError {
            ProtocolError(.reservedNotZero, "descriptor \(index): \(opcode.name) does not use \(what); it must be 0",
                          index: index)
        }
        if auxiliary != .none { throw unused("the auxiliary address") }
        if opcode == .null {
            if length != 0 {
                throw ProtocolError(.badLength, "descriptor \(index): NULL takes length 0, got \(length)", index: index)
            }
        } else if length == 0 {
            throw ProtocolError(.badLength, "descriptor \(index): \(opcode.name) needs a length above 0", index: index)
        }
        if !opcode.readsSource && source != .none { throw unused("a source") }
        if !opcode.writesDestination && destination != .none { throw unused("a destination") }
        if opcode.readsSource && source.handle == 0 {
            throw ProtocolError(.badHandle, "descriptor \(index): \(opcode.name) needs a source handle; 0 is never valid",
                                index: index)
        }
        if opcode.writesDestination && destination.handle == 0 {
            throw ProtocolError(.badHandle,
                                "descriptor \(index): \(opcode.name) needs a destination handle; 0 is never valid",
                                index: index)
        }
        if flags.contains(.crcSeed) && !opcode.computesCRC {
            throw ProtocolError(.badFlags, "descriptor \(index): CRC_SEED is only valid on CRC32C and COPY_CRC32C",
                                index: index)
        }
        switch opcode {
        case .fill: break
        case .crc32c, .copyCRC32C:
            if !flags.contains(.crcSeed) && arg != 0 { throw unused("arg without CRC_SEED") }
            if arg >> 32 != 0 { throw unused("the high 32 bits of arg") }
        case .null, .copy:
            if arg != 0 { throw unused("arg") }
        }
    }
}
