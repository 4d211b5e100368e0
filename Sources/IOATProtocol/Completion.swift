/// The per-operation result vocabulary, the same on every engine (SPEC.md §6.5). Covers DPDK dmadev's
/// `rte_dma_status_code` values. Values are never reused.
public struct CompletionStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The wire value (u16).
    public let rawValue: UInt16
    /// Wraps a wire value.
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// Done; `bytesDone` equals the length.
    @inlinable public static var success: CompletionStatus { CompletionStatus(rawValue: 0) }
    /// A compare or CRC test found a difference (reserved for compare opcodes).
    @inlinable public static var mismatch: CompletionStatus { CompletionStatus(rawValue: 1) }
    /// Skipped because an earlier op of the same queue failed (SPEC.md §6.6).
    @inlinable public static var notAttempted: CompletionStatus { CompletionStatus(rawValue: 2) }
    /// The engine ring had no room (reserved; the server waits or refuses the SUBMIT instead).
    @inlinable public static var noSpace: CompletionStatus { CompletionStatus(rawValue: 3) }
    /// The engine could not read the source address.
    @inlinable public static var invalidSourceAddress: CompletionStatus { CompletionStatus(rawValue: 4) }
    /// The engine could not write the destination address.
    @inlinable public static var invalidDestinationAddress: CompletionStatus { CompletionStatus(rawValue: 5) }
    /// The engine refused the length.
    @inlinable public static var invalidLength: CompletionStatus { CompletionStatus(rawValue: 6) }
    /// The engine refused the opcode.
    @inlinable public static var invalidOpcode: CompletionStatus { CompletionStatus(rawValue: 7) }
    /// A bus error while reading.
    @inlinable public static var busReadError: CompletionStatus { CompletionStatus(rawValue: 8) }
    /// A bus error while writing.
    @inlinable public static var busWriteError: CompletionStatus { CompletionStatus(rawValue: 9) }
    /// The source held poisoned data.
    @inlinable public static var dataPoison: CompletionStatus { CompletionStatus(rawValue: 10) }
    /// An unresolvable page fault.
    @inlinable public static var pageFault: CompletionStatus { CompletionStatus(rawValue: 11) }
    /// Aborted by the user.
    @inlinable public static var userAbort: CompletionStatus { CompletionStatus(rawValue: 12) }
    /// The channel halted while the op ran and the op was not re-run.
    @inlinable public static var channelHalted: CompletionStatus { CompletionStatus(rawValue: 13) }
    /// Any other engine error.
    @inlinable public static var engineError: CompletionStatus { CompletionStatus(rawValue: 14) }
    /// Cancelled before it ran (the server is stopping).
    @inlinable public static var cancelled: CompletionStatus { CompletionStatus(rawValue: 15) }
    /// (v3, feature bit 1) The server restarted while the op was in flight (SPEC.md §5.11): it may or may
    /// not have run, and its destination holds anything from the old bytes to the new.
    @inlinable public static var restarted: CompletionStatus { CompletionStatus(rawValue: 16) }
    /// Base of the statuses a ring queue (version 3) gives a descriptor the server refused: the status
    /// is this plus the error code the SUBMIT path would have answered (SPEC.md §5.10.4).
    public static let refusedBase: UInt16 = 0x0100
    /// The status of a ring descriptor refused with `code`.
    public static func refused(_ code: ErrorCode) -> CompletionStatus { CompletionStatus(rawValue: refusedBase + UInt16(truncatingIfNeeded: code.rawValue)) }
    /// The refusal this status names, if it is one.
    public var refusal: ErrorCode? {
        rawValue > Self.refusedBase && rawValue < Self.refusedBase + 0x100 ? ErrorCode(rawValue: UInt32(rawValue - Self.refusedBase)) : nil
    }
    /// Never on the wire: the client library's status for an op whose connection dropped before its
    /// completion arrived. The op may or may not have run.
    public static let connectionLost = CompletionStatus(rawValue: 0xFFFF)

    /// The SPEC.md name.
    public var name: String {
        switch rawValue {
        case 0: "SUCCESS"
        case 1: "MISMATCH"
        case 2: "NOT_ATTEMPTED"
        case 3: "NO_SPACE"
        case 4: "INVALID_SRC_ADDR"
        case 5: "INVALID_DST_ADDR"
        case 6: "INVALID_LENGTH"
        case 7: "INVALID_OPCODE"
        case 8: "BUS_READ_ERROR"
        case 9: "BUS_WRITE_ERROR"
        case 10: "DATA_POISON"
        case 11: "PAGE_FAULT"
        case 12: "USER_ABORT"
        case 13: "CHANNEL_HALTED"
        case 14: "ENGINE_ERROR"
        case 15: "CANCELLED"
        case 16: "RESTARTED"
        case 0xFFFF: "CONNECTION_LOST"
        default: refusal.map { "REFUSED_\($0.name)" } ?? "STATUS_\(rawValue)"
        }
    }

    /// Whether this status ends the op without error.
    @inlinable public var isSuccess: Bool { rawValue == 0 }
    /// Whether the op failed: anything but SUCCESS and MISMATCH (a result, not a failure). What the
    /// FENCE failure window and the failure counters count.
    @inlinable public var isFailure: Bool { rawValue > 1 }

    public var description: String { name }
}

/// One 32-byte record in a COMPLETION message (SPEC.md §6.4).
public struct CompletionRecord: Hashable, Sendable {
    /// Wire size of one record.
    @inlinable public static var size: Int { 32 }

    /// The descriptor's cookie.
    public var cookie: UInt64
    /// How it ended.
    public var status: CompletionStatus
    /// The descriptor's opcode, echoed.
    public var opcode: UInt8
    /// CRC32C of the bytes processed, for CRC opcodes; else 0.
    public var result: UInt32
    /// Bytes processed before the op ended.
    public var bytesDone: UInt64

    /// Creates a record.
    public init(cookie: UInt64, status: CompletionStatus, opcode: UInt8, result: UInt32, bytesDone: UInt64) {
        self.cookie = cookie
        self.status = status
        self.opcode = opcode
        self.result = result
        self.bytesDone = bytesDone
    }

    /// Appends the 32-byte wire form.
    public func encode(into writer: inout WireWriter) {
        writer.write(cookie)
        writer.write(status.rawValue)
        writer.write(opcode)
        writer.write(UInt8(0))
        writer.write(result)
        writer.write(bytesDone)
        writer.write(UInt64(0))
    }

    /// Decodes the record at `offset`.
    public static func decode(_ bytes: UnsafeRawBufferPointer, at offset: Int, index: Int) throws(ProtocolError)
        -> CompletionRecord
    {
        try check(bytes, at: offset, index: index)
        return unchecked(bytes, at: offset)
    }

    /// Checks what a record's decode checks (it lies inside `bytes`, its reserved fields are zero)
    /// without decoding the rest.
    public static func check(_ bytes: UnsafeRawBufferPointer, at offset: Int, index: Int) throws(ProtocolError) {
        guard offset >= 0, offset <= bytes.count - size else {
            throw ProtocolError(.malformed, "completion record \(index): truncated")
        }
        guard bytes[offset + 11] == 0, bytes.loadUnaligned(fromByteOffset: offset + 24, as: UInt64.self) == 0 else {
            throw ProtocolError(.reservedNotZero, "completion record \(index): reserved fields must be 0")
        }
    }

    /// Decodes a record `check` has passed.
    @inlinable
    public static func unchecked(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> CompletionRecord {
        CompletionRecord(cookie: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)),
                         status: CompletionStatus(rawValue: UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 8, as: UInt16.self))),
                         opcode: bytes[offset + 10],
                         result: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self)),
                         bytesDone: UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 16, as: UInt64.self)))
    }
}
