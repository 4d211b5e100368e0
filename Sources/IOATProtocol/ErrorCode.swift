/// The closed set of request errors defined in protocol/SPEC.md §7. Never a raw errno.
public struct ErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The wire value (u32).
    public let rawValue: UInt32
    /// Wraps a wire value; unknown values are kept so a newer server's code can still be shown.
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The packet's `length` field disagrees with its size, or its body has the wrong size for its type.
    public static let malformed = ErrorCode(rawValue: 1)
    /// The header's magic is not "IOAT". Closes the connection.
    public static let badMagic = ErrorCode(rawValue: 2)
    /// No common protocol version, or a message carries a version other than the negotiated one.
    /// Closes the connection.
    public static let unsupportedVersion = ErrorCode(rawValue: 3)
    /// The message type is not defined.
    public static let unknownType = ErrorCode(rawValue: 4)
    /// A reserved field is not zero.
    public static let reservedNotZero = ErrorCode(rawValue: 5)
    /// A flags field has a bit that is not defined for it.
    public static let unknownFlags = ErrorCode(rawValue: 6)
    /// Defined flags combined in a way the spec forbids.
    public static let badFlags = ErrorCode(rawValue: 7)
    /// A request other than HELLO arrived before the handshake.
    public static let notNegotiated = ErrorCode(rawValue: 8)
    /// A second HELLO on a negotiated connection.
    public static let alreadyNegotiated = ErrorCode(rawValue: 9)
    /// The packet is larger than the negotiated maximum message size.
    public static let tooLarge = ErrorCode(rawValue: 10)
    /// File descriptors were attached to a message that takes none (they are closed unread).
    public static let unexpectedFD = ErrorCode(rawValue: 11)
    /// A message that needs exactly one file descriptor arrived with none or several.
    public static let missingFD = ErrorCode(rawValue: 12)
    /// A buffer handle is not open on this connection.
    public static let badHandle = ErrorCode(rawValue: 13)
    /// offset + length goes past the end of the buffer.
    public static let outOfRange = ErrorCode(rawValue: 14)
    /// offset + length overflows 64 bits.
    public static let overflow = ErrorCode(rawValue: 15)
    /// A length is zero where the operation needs bytes, non-zero where it takes none, or too large.
    public static let badLength = ErrorCode(rawValue: 16)
    /// The descriptor's opcode is not defined.
    public static let unknownOpcode = ErrorCode(rawValue: 17)
    /// The opcode is defined but the queue's channel does not support it.
    public static let unsupportedOpcode = ErrorCode(rawValue: 18)
    /// The queue id is not open on this connection.
    public static let badQueue = ErrorCode(rawValue: 19)
    /// The channel index does not exist.
    public static let badChannel = ErrorCode(rawValue: 20)
    /// A queue depth of zero or above the maximum.
    public static let badDepth = ErrorCode(rawValue: 21)
    /// A SUBMIT with no descriptors, more than the maximum, or more than the queue's depth.
    public static let badCount = ErrorCode(rawValue: 22)
    /// NO_WAIT was set and the queue has fewer free credits than the SUBMIT needs.
    public static let noSpace = ErrorCode(rawValue: 23)
    /// The passed descriptor is not a memfd.
    public static let notMemfd = ErrorCode(rawValue: 24)
    /// The passed memfd does not carry F_SEAL_SHRINK.
    public static let notSealed = ErrorCode(rawValue: 25)
    /// A registered buffer that the server could map only read-only is used as a destination.
    public static let readOnly = ErrorCode(rawValue: 26)
    /// The server could not allocate or map memory.
    public static let noMemory = ErrorCode(rawValue: 27)
    /// ALLOC asked for hugepages and none are available.
    public static let noHugepages = ErrorCode(rawValue: 28)
    /// A per-connection limit (buffers, bytes, queues) would be exceeded.
    public static let quotaExceeded = ErrorCode(rawValue: 29)
    /// FREE or CLOSE while operations using the buffer or queue are in flight.
    public static let busy = ErrorCode(rawValue: 30)
    /// Policy does not allow this client to do this.
    public static let permissionDenied = ErrorCode(rawValue: 31)
    /// The server is stopping and takes no new work.
    public static let shuttingDown = ErrorCode(rawValue: 32)
    /// A server-to-client message type was sent to the server.
    public static let unexpectedType = ErrorCode(rawValue: 33)
    /// The server failed in a way that is not the client's fault.
    public static let `internal` = ErrorCode(rawValue: 34)
    /// A coalescing period above the channel's `max_coalesce_us`. (v2)
    public static let badPeriod = ErrorCode(rawValue: 35)
    /// A ring queue's shared memory broke the ring's rules (indices past what exists); the queue takes
    /// no more descriptors (version 3, SPEC.md §5.10).
    public static let ringBroken = ErrorCode(rawValue: 36)
    /// The service cannot start (its configuration or engine failed): sent, with `request_id` 0, to
    /// each connection that was waiting when it gave up, which is then closed. The text says what
    /// failed, never the configuration's contents; the server's log says why. Any version.
    public static let unavailable = ErrorCode(rawValue: 37)

    /// Every defined code, in wire order.
    public static let all: [ErrorCode] = (1...37).map { ErrorCode(rawValue: $0) }

    /// The SPEC.md name, e.g. `OUT_OF_RANGE`.
    public var name: String {
        switch rawValue {
        case 1: "MALFORMED"
        case 2: "BAD_MAGIC"
        case 3: "UNSUPPORTED_VERSION"
        case 4: "UNKNOWN_TYPE"
        case 5: "RESERVED_NOT_ZERO"
        case 6: "UNKNOWN_FLAGS"
        case 7: "BAD_FLAGS"
        case 8: "NOT_NEGOTIATED"
        case 9: "ALREADY_NEGOTIATED"
        case 10: "TOO_LARGE"
        case 11: "UNEXPECTED_FD"
        case 12: "MISSING_FD"
        case 13: "BAD_HANDLE"
        case 14: "OUT_OF_RANGE"
        case 15: "OVERFLOW"
        case 16: "BAD_LENGTH"
        case 17: "UNKNOWN_OPCODE"
        case 18: "UNSUPPORTED_OPCODE"
        case 19: "BAD_QUEUE"
        case 20: "BAD_CHANNEL"
        case 21: "BAD_DEPTH"
        case 22: "BAD_COUNT"
        case 23: "NO_SPACE"
        case 24: "NOT_MEMFD"
        case 25: "NOT_SEALED"
        case 26: "READ_ONLY"
        case 27: "NO_MEMORY"
        case 28: "NO_HUGEPAGES"
        case 29: "QUOTA_EXCEEDED"
        case 30: "BUSY"
        case 31: "PERMISSION_DENIED"
        case 32: "SHUTTING_DOWN"
        case 33: "UNEXPECTED_TYPE"
        case 34: "INTERNAL"
        case 35: "BAD_PERIOD"
        case 36: "RING_BROKEN"
        case 37: "UNAVAILABLE"
        default: "UNKNOWN_ERROR_\(rawValue)"
        }
    }

    /// Looks a code up by its SPEC.md name.
    public init?(name: String) {
        guard let code = Self.all.first(where: { $0.name == name }) else { return nil }
        self = code
    }

    /// Whether the server closes the connection after sending this error (SPEC.md §7): only when the
    /// peer's framing cannot be trusted any more.
    public var closesConnection: Bool { self == .badMagic || self == .unsupportedVersion }

    public var description: String { name }
}

/// A request the server refuses: the spec's code, a message naming the offending value, and for SUBMIT
/// the index of the first bad descriptor.
public struct ProtocolError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The wire code.
    public var code: ErrorCode
    /// Human-readable, names the bad value and what to do. A refusal of one descriptor (`index` set) says
    /// what was wrong with it and not which it was: the index is data, and the text naming it is composed
    /// once, where the refusal is sent ("descriptor 3: …" for a SUBMIT, "queue 5, ring entry 12: …" for a
    /// ring; `ErrorReply.init(_:)`).
    public var message: String
    /// Index of the offending descriptor in a SUBMIT, or `nil`.
    public var index: UInt32?

    /// Creates an error.
    public init(_ code: ErrorCode, _ message: String, index: UInt32? = nil) {
        self.code = code
        self.message = message
        self.index = index
    }

    public var description: String { "\(code.name): \(message)" }
}
