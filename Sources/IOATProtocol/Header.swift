/// Protocol-wide constants (SPEC.md §2).
public enum Wire {
    /// "IOAT" as the first four bytes of every message (read as a little-endian u32).
    public static let magic: UInt32 = 0x5441_4F49
    /// The newest protocol version this code speaks. HELLO is always framed with version 1.
    public static let version: UInt16 = 3
    /// The oldest protocol version this code still speaks.
    public static let minimumVersion: UInt16 = 1
    /// Size of the fixed header.
    public static let headerSize = 24
    /// Largest message either side may send before HELLO_OK says otherwise.
    public static let defaultMaxMessage = 65536
    /// The channel value in OPEN that means "any channel".
    public static let anyChannel: UInt32 = 0xFFFF_FFFF
    /// HELLO feature bit 0 (version 3): shared-memory ring queues (SPEC.md §4.3, §5.10).
    public static let featureRings: UInt64 = 1 << 0
    /// HELLO feature bit 1 (version 3): the connection lives through a restart of the server (SPEC.md §4.3,
    /// §5.11): RESTARTED, RESYNC and the completion status RESTARTED.
    public static let featureRestart: UInt64 = 1 << 1
    /// Every feature bit this code knows.
    public static let knownFeatures: UInt64 = featureRings | featureRestart
    /// The index value in ERROR that means "not about a descriptor".
    public static let noIndex: UInt32 = 0xFFFF_FFFF
}

/// Message types (SPEC.md §3). Requests have the high byte 0x00, their replies 0x80, unsolicited
/// server messages 0xC0, errors 0xFF. Values are never reused.
public enum MessageType: UInt16, Sendable, CaseIterable {
    case hello = 0x0001
    case alloc = 0x0002
    case register = 0x0003
    case free = 0x0004
    case open = 0x0005
    case close = 0x0006
    case submit = 0x0007
    case status = 0x0008
    /// (v2) Wait until a queue has this many free credits (ioat(4) `ioat_acquire_reserve`).
    case reserve = 0x0009
    /// (v2) Set a queue's completion-coalescing period (ioat(4) `ioat_set_interrupt_coalesce`).
    case setCoalesce = 0x000A
    /// (v3) Turn an open queue into a shared-memory ring queue (SPEC.md §5.10).
    case ring = 0x000B
    /// (v3, feature bit 1) The client has failed what it had outstanding after RESTARTED with LOST
    /// (SPEC.md §5.11).
    case resync = 0x000C
    case helloReply = 0x8001
    case allocReply = 0x8002
    case registerReply = 0x8003
    case freeReply = 0x8004
    case openReply = 0x8005
    case closeReply = 0x8006
    case statusReply = 0x8008
    case reserveReply = 0x8009
    case coalesceReply = 0x800A
    case ringReply = 0x800B
    case resyncReply = 0x800C
    case completion = 0xC001
    case goodbye = 0xC002
    /// (v3, feature bit 1) A new server instance took the connection over (SPEC.md §5.11).
    case restarted = 0xC003
    case error = 0xFFFF

    /// Whether a client may send this type.
    public var isRequest: Bool { rawValue < 0x8000 }

    /// The protocol version that introduced the type.
    public var version: UInt16 {
        switch self {
        case .reserve, .reserveReply, .setCoalesce, .coalesceReply: 2
        case .ring, .ringReply, .resync, .resyncReply, .restarted: 3
        default: 1
        }
    }

    /// The SPEC.md name.
    public var name: String {
        switch self {
        case .hello: "HELLO"
        case .alloc: "ALLOC"
        case .register: "REGISTER"
        case .free: "FREE"
        case .open: "OPEN"
        case .close: "CLOSE"
        case .submit: "SUBMIT"
        case .status: "STATUS"
        case .reserve: "RESERVE"
        case .reserveReply: "RESERVE_OK"
        case .setCoalesce: "SET_COALESCE"
        case .coalesceReply: "COALESCE_OK"
        case .ring: "RING"
        case .ringReply: "RING_OK"
        case .resync: "RESYNC"
        case .resyncReply: "RESYNC_OK"
        case .restarted: "RESTARTED"
        case .helloReply: "HELLO_OK"
        case .allocReply: "ALLOC_OK"
        case .registerReply: "REGISTER_OK"
        case .freeReply: "FREE_OK"
        case .openReply: "OPEN_OK"
        case .closeReply: "CLOSE_OK"
        case .statusReply: "STATUS_OK"
        case .completion: "COMPLETION"
        case .goodbye: "GOODBYE"
        case .error: "ERROR"
        }
    }

    /// The type a checked header names, if it is defined in protocol `version` (`UNKNOWN_TYPE` otherwise).
    public static func of(_ header: MessageHeader, definedBy version: UInt16) throws(ProtocolError) -> MessageType {
        guard let type = MessageType(rawValue: header.type), type.version <= version else {
            throw ProtocolError(.unknownType, "message type 0x\(String(header.type, radix: 16)) is not defined in protocol version \(version)")
        }
        return type
    }

    /// Whether a message of this type carries exactly one file descriptor.
    public var carriesFD: Bool { self == .register || self == .allocReply }
}

/// The 24-byte header that starts every message (SPEC.md §2.2).
public struct MessageHeader: Hashable, Sendable {
    /// Protocol version the message is framed with.
    public var version: UInt16
    /// Raw message type (may be unknown to this version).
    public var type: UInt16
    /// Total bytes, header included.
    public var length: UInt32
    /// Chosen by the client; echoed in the reply. 0 in COMPLETION.
    public var requestID: UInt64

    /// Creates a header.
    public init(version: UInt16 = Wire.version, type: MessageType, length: UInt32, requestID: UInt64) {
        self.version = version
        self.type = type.rawValue
        self.length = length
        self.requestID = requestID
    }

    /// Appends the wire form.
    public func encode(into writer: inout WireWriter) {
        writer.write(Wire.magic)
        writer.write(version)
        writer.write(type)
        writer.write(length)
        writer.write(UInt32(0))
        writer.write(requestID)
    }

    /// Decodes and checks a header against the packet it came in: magic, version, length, reserved.
    /// `version` is the version the connection speaks (1 before the handshake).
    public static func decode(_ packet: UnsafeRawBufferPointer, version expected: UInt16) throws(ProtocolError)
        -> MessageHeader
    {
        try decode(packet, accepting: expected...expected)
    }

    /// The request id of a packet as received, before anything in it is trusted: bytes 16–23 when the
    /// packet holds a whole header, else 0 (SPEC.md §7: the id an ERROR echoes).
    public static func requestID(of packet: UnsafeRawBufferPointer) -> UInt64 {
        WireReader(packet).get(at: 16, as: UInt64.self) ?? 0
    }

    /// Decodes and checks a header, in the order of SPEC.md §2.2: size, magic, version (one of
    /// `accepting`), length, reserved. The type is not checked here.
    public static func decode(_ packet: UnsafeRawBufferPointer, accepting versions: ClosedRange<UInt16>) throws(ProtocolError)
        -> MessageHeader
    {
        var r = WireReader(packet)
        guard let magic: UInt32 = r.read(), let version: UInt16 = r.read(), let type: UInt16 = r.read(),
            let length: UInt32 = r.read(), let reserved: UInt32 = r.read(), let requestID: UInt64 = r.read()
        else {
            throw ProtocolError(.malformed, "packet of \(packet.count) bytes is shorter than the 24-byte header")
        }
        guard magic == Wire.magic else {
            throw ProtocolError(.badMagic, "magic 0x\(String(magic, radix: 16)) is not 0x\(String(Wire.magic, radix: 16)) (\"IOAT\")")
        }
        guard versions.contains(version) else {
            let expected = versions.count == 1 ? "\(versions.lowerBound)" : "\(versions.lowerBound)...\(versions.upperBound)"
            throw ProtocolError(.unsupportedVersion, "message framed with version \(version); this connection speaks \(expected)")
        }
        guard Int(length) == packet.count else {
            throw ProtocolError(.malformed, "length field says \(length) bytes but the packet has \(packet.count)")
        }
        guard reserved == 0 else {
            throw ProtocolError(.reservedNotZero, "header reserved field is 0x\(String(reserved, radix: 16)), must be 0")
        }
        var header = MessageHeader(version: version, type: .hello, length: length, requestID: requestID)
        header.type = type
        return header
    }
}
