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
    /// Compares source with destination (both read); MISMATCH with the first differing offset. (v2)
    case compare = 5
    /// Compares source with the repeating 64-bit pattern in `arg`. (v2)
    case comparePattern = 6
    /// Copies source to destination and to the auxiliary address. (v2)
    case dualcast = 7
    /// Writes to destination the XOR of `arg` (2–16) sources listed at the auxiliary address. (v2)
    case xor = 8
    /// Completes once every earlier op of the queue has completed. (v2)
    case drain = 9
    /// Copies every (source, destination, length) entry of the list at the auxiliary address — `arg`
    /// entries, `length` bytes in all. Covers ioat(4) `ioat_copy_8k_aligned` (two 4 KiB entries). (v2)
    case copySG = 10

    /// The protocol version that introduced the opcode.
    public var version: UInt16 { rawValue <= 4 ? 1 : 2 }

    /// Bit of this opcode in a channel's capability mask.
    @inlinable public var capabilityBit: UInt64 { 1 << UInt64(rawValue) }

    /// Whether the opcode reads a source range.
    public var readsSource: Bool {
        switch self {
        case .copy, .crc32c, .copyCRC32C, .compare, .comparePattern, .dualcast: true
        default: false
        }
    }
    /// Whether the opcode uses the destination range (written, or read by COMPARE).
    public var usesDestination: Bool {
        switch self {
        case .copy, .fill, .copyCRC32C, .compare, .dualcast, .xor: true
        default: false
        }
    }
    /// Whether the opcode writes its destination range (COMPARE only reads it).
    public var writesDestination: Bool { usesDestination && self != .compare }
    /// Whether the opcode computes a CRC32C.
    @inlinable public var computesCRC: Bool { self == .crc32c || self == .copyCRC32C }
    /// Whether the opcode moves no bytes (length must be 0).
    public var takesNoLength: Bool { self == .null || self == .drain }

    /// The SPEC.md name, e.g. `COPY_CRC32C`.
    public var name: String {
        switch self {
        case .null: "NULL"
        case .copy: "COPY"
        case .fill: "FILL"
        case .crc32c: "CRC32C"
        case .copyCRC32C: "COPY_CRC32C"
        case .compare: "COMPARE"
        case .comparePattern: "COMPARE_PATTERN"
        case .dualcast: "DUALCAST"
        case .xor: "XOR"
        case .drain: "DRAIN"
        case .copySG: "COPY_SG"
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
        @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }

        /// Deliver this op's completion (and every earlier undelivered one of the queue) as soon as it
        /// completes. Mirrors ioat(4) `DMA_INT_EN`.
        @inlinable public static var interrupt: Flags { Flags(rawValue: 1 << 0) }
        /// Start only after every earlier op of the queue has completed. Mirrors ioat(4) `DMA_FENCE`.
        @inlinable public static var fence: Flags { Flags(rawValue: 1 << 1) }
        /// Refuse the whole SUBMIT with NO_SPACE instead of waiting for credits. Mirrors ioat(4)
        /// `DMA_NO_WAIT`.
        @inlinable public static var noWait: Flags { Flags(rawValue: 1 << 2) }
        /// CRC ops: start from `arg`'s low 32 bits (a CRC32C value) instead of the empty CRC.
        /// Mirrors the `initialseed` argument of ioat(4) `ioat_crc`.
        @inlinable public static var crcSeed: Flags { Flags(rawValue: 1 << 3) }
        /// CRC ops: write the CRC (u32, little-endian) to the auxiliary address, or after the data with
        /// `crcInline`. Mirrors ioat(4) `DMA_CRC_STORE`. (v2)
        @inlinable public static var crcStore: Flags { Flags(rawValue: 1 << 4) }
        /// CRC ops: compare the CRC with the u32 at the auxiliary address, or with the 4 bytes after the
        /// source with `crcInline`; a difference is status MISMATCH. Mirrors ioat(4) `DMA_CRC_TEST`. (v2)
        @inlinable public static var crcTest: Flags { Flags(rawValue: 1 << 5) }
        /// CRC ops: STORE or TEST next to the data instead of at the auxiliary address. Mirrors ioat(4)
        /// `DMA_CRC_INLINE`. (v2)
        @inlinable public static var crcInline: Flags { Flags(rawValue: 1 << 6) }
        /// CRC ops: continue from the CRC of the previous CRC op of the same queue (ioat(4)'s default
        /// "accumulate" mode). (v2)
        @inlinable public static var crcChain: Flags { Flags(rawValue: 1 << 7) }

        // The sets below are unions of the bits above, spelled as unions: an array literal of options
        // allocates an array in a debug build, on the per-descriptor path.

        /// Flags of protocol version 1.
        @inlinable public static var version1: Flags { interrupt.union(fence).union(noWait).union(crcSeed) }
        /// Every flag defined in the newest protocol version.
        @inlinable public static var defined: Flags { version1.union(crcModes) }
        /// The CRC flags: SEED, STORE, TEST, INLINE, CHAIN.
        @inlinable public static var crcModes: Flags { crcSeed.union(crcLocated).union(crcChain) }
        /// The CRC flags that name where a CRC goes or comes from: STORE, TEST, INLINE.
        @inlinable public static var crcLocated: Flags { crcStore.union(crcTest).union(crcInline) }
        /// STORE or TEST: the op reads or writes a CRC somewhere.
        @inlinable public static var crcStoreOrTest: Flags { crcStore.union(crcTest) }

        /// The flags defined in protocol `version`.
        @inlinable public static func defined(in version: UInt16) -> Flags { version >= 2 ? defined : version1 }
    }

    /// One entry of an XOR source list (16 bytes: u32 handle, u32 reserved, u64 offset). (v2)
    public static let xorSourceEntrySize = 16
    /// Fewest and most XOR sources.
    public static let xorSources = 2...16
    /// One entry of a COPY_SG list (32 bytes: u32 src handle, u32 dst handle, u64 src offset, u64 dst
    /// offset, u64 length). (v2)
    public static let sgEntrySize = 32
    /// Fewest and most COPY_SG entries.
    public static let sgEntries = 1...64

    /// Wire size of one descriptor.
    @inlinable public static var size: Int { 64 }

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
    public static func decode(_ bytes: UnsafeRawBufferPointer, at offset: Int, index: UInt32, version: UInt16 = Wire.version)
        throws(ProtocolError) -> Descriptor
    {
        // One bounds check for the whole descriptor, then plain loads (a checked, optional read per field
        // was a tenth of the server's time on 64-byte ring ops).
        guard offset >= 0, offset <= bytes.count - size, let base = bytes.baseAddress else {
            throw ProtocolError(.malformed, "truncated", index: index)
        }
        let p = base + offset
        func field<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T { T(littleEndian: p.loadUnaligned(fromByteOffset: at, as: T.self)) }
        let rawOpcode = field(0, UInt8.self), reserved = field(1, UInt8.self), rawFlags = field(2, UInt16.self)
        let srcHandle = field(4, UInt32.self), cookie = field(8, UInt64.self), length = field(16, UInt64.self)
        let srcOffset = field(24, UInt64.self), dstHandle = field(32, UInt32.self), auxHandle = field(36, UInt32.self)
        let dstOffset = field(40, UInt64.self), auxOffset = field(48, UInt64.self), arg = field(56, UInt64.self)
        guard let opcode = Opcode(rawValue: rawOpcode), opcode.version <= version else {
            throw ProtocolError(.unknownOpcode, "opcode \(rawOpcode) is not defined in protocol version \(version)",
                                index: index)
        }
        guard reserved == 0 else {
            throw ProtocolError(.reservedNotZero, "reserved byte 1 is \(reserved), must be 0",
                                index: index)
        }
        let flags = Flags(rawValue: rawFlags)
        let unknown = flags.subtracting(.defined(in: version))
        guard unknown.isEmpty else {
            throw ProtocolError(
                .unknownFlags, "flag bits 0x\(String(unknown.rawValue, radix: 16)) are not defined",
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
            ProtocolError(.reservedNotZero, "\(opcode.name) does not use \(what); it must be 0",
                          index: index)
        }
        func badFlags(_ why: String) -> ProtocolError {
            ProtocolError(.badFlags, "\(why)", index: index)
        }
        func needsHandle(_ role: String, _ handle: UInt32) throws(ProtocolError) {
            if handle == 0 {
                throw ProtocolError(.badHandle, "\(opcode.name) needs a \(role) handle; 0 is never valid",
                                    index: index)
            }
        }
        if opcode.takesNoLength {
            if length != 0 {
                throw ProtocolError(.badLength, "\(opcode.name) takes length 0, got \(length)", index: index)
            }
        } else if length == 0 {
            throw ProtocolError(.badLength, "\(opcode.name) needs a length above 0", index: index)
        }
        if !opcode.readsSource && source != .none { throw unused("a source") }
        if !opcode.usesDestination && destination != .none { throw unused("a destination") }
        if opcode.readsSource { try needsHandle("source", source.handle) }
        if opcode.usesDestination { try needsHandle("destination", destination.handle) }

        let crcFlags = Flags.crcModes
        if !opcode.computesCRC && !flags.isDisjoint(with: crcFlags) {
            throw badFlags("CRC flags are only valid on CRC32C and COPY_CRC32C")
        }
        if flags.contains(.crcStore) && flags.contains(.crcTest) { throw badFlags("CRC_STORE and CRC_TEST cannot be combined") }
        if flags.contains(.crcInline) && flags.isDisjoint(with: .crcStoreOrTest) {
            throw badFlags("CRC_INLINE needs CRC_STORE or CRC_TEST")
        }
        if flags.contains(.crcSeed) && flags.contains(.crcChain) { throw badFlags("CRC_SEED and CRC_CHAIN cannot be combined") }

        // The auxiliary address: second destination, CRC location, or XOR source list.
        let usesAuxiliary = opcode == .dualcast || opcode == .xor || opcode == .copySG
            || (opcode.computesCRC && !flags.isDisjoint(with: .crcStoreOrTest) && !flags.contains(.crcInline))
        if usesAuxiliary {
            try needsHandle("auxiliary", auxiliary.handle)
        } else if auxiliary != .none {
            throw unused("the auxiliary address")
        }
        switch opcode {
        case .fill, .comparePattern: break
        case .crc32c, .copyCRC32C:
            if !flags.contains(.crcSeed) && arg != 0 { throw unused("arg without CRC_SEED") }
            if arg >> 32 != 0 { throw unused("the high 32 bits of arg") }
        case .xor:
            guard Descriptor.xorSources.contains(Int(clamping: arg)) else {
                throw ProtocolError(.badCount, "XOR takes 2...16 sources in arg, got \(arg)", index: index)
            }
        case .copySG:
            guard Descriptor.sgEntries.contains(Int(clamping: arg)) else {
                throw ProtocolError(.badCount, "COPY_SG takes 1...64 entries in arg, got \(arg)", index: index)
            }
        case .null, .copy, .compare, .dualcast, .drain:
            if arg != 0 { throw unused("arg") }
        }
    }
}
