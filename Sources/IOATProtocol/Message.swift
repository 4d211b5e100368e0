/// HELLO: the client's offer (SPEC.md §4.1).
public struct Hello: Hashable, Sendable {
    /// Lowest version the client speaks.
    public var minVersion: UInt16
    /// Highest version the client speaks.
    public var maxVersion: UInt16
    /// Feature bits the client would like.
    public var features: UInt64
    /// Creates an offer.
    public init(minVersion: UInt16 = Wire.minimumVersion, maxVersion: UInt16 = Wire.version, features: UInt64 = 0) {
        self.minVersion = minVersion
        self.maxVersion = maxVersion
        self.features = features
    }
}

/// Properties of one channel, as sent in HELLO_OK (SPEC.md §4.2).
public struct ChannelInfo: Hashable, Sendable {
    /// Which engine drives the channel.
    public enum Engine: UInt16, Sendable {
        case cpu = 1
        case dpdk = 2
    }
    /// Wire size of one entry.
    public static let size = 48

    /// Channel index, used in OPEN.
    public var index: UInt32
    /// The engine kind.
    public var engine: Engine
    /// Hardware version (ioat(4) `ioat_get_hwversion`); 0 for the CPU engine.
    public var hardwareVersion: UInt16
    /// Bit `1 << opcode` set for every opcode the channel runs.
    public var opcodes: UInt64
    /// Largest single transfer the engine takes (ioat(4) `ioat_get_max_io_size`).
    public var maxTransfer: UInt64
    /// Largest queue depth OPEN grants on this channel.
    public var maxDepth: UInt32
    /// Largest interrupt-coalescing period in microseconds (ioat(4) `ioat_get_max_coalesce_period`).
    public var maxCoalesceMicroseconds: UInt32
    /// Short name, at most 15 bytes of UTF-8.
    public var name: String

    /// Creates an entry.
    public init(index: UInt32, engine: Engine, hardwareVersion: UInt16, opcodes: UInt64, maxTransfer: UInt64,
                maxDepth: UInt32, maxCoalesceMicroseconds: UInt32, name: String) {
        self.index = index
        self.engine = engine
        self.hardwareVersion = hardwareVersion
        self.opcodes = opcodes
        self.maxTransfer = maxTransfer
        self.maxDepth = maxDepth
        self.maxCoalesceMicroseconds = maxCoalesceMicroseconds
        self.name = name
    }

    /// Whether the channel runs `opcode`.
    @inlinable public func supports(_ opcode: Opcode) -> Bool { opcodes & opcode.capabilityBit != 0 }
}

/// HELLO_OK: the server's answer (SPEC.md §4.2).
public struct HelloReply: Hashable, Sendable {
    /// The version both sides now speak.
    public var version: UInt16
    /// Features granted (a subset of those offered).
    public var features: UInt64
    /// Largest message the server accepts or sends.
    public var maxMessage: UInt32
    /// Most descriptors in one SUBMIT.
    public var maxDescriptors: UInt32
    /// Largest depth of one queue.
    public var maxQueueDepth: UInt32
    /// Most queues open on one connection.
    public var maxQueues: UInt32
    /// Most buffers open on one connection.
    public var maxBuffers: UInt32
    /// Most buffer bytes open on one connection.
    public var maxBufferBytes: UInt64
    /// Size of the server's hugepages, or 0 when none are configured.
    public var hugepageSize: UInt64
    /// The channels.
    public var channels: [ChannelInfo]

    /// Creates a reply.
    public init(version: UInt16, features: UInt64, maxMessage: UInt32, maxDescriptors: UInt32,
                maxQueueDepth: UInt32, maxQueues: UInt32, maxBuffers: UInt32, maxBufferBytes: UInt64,
                hugepageSize: UInt64, channels: [ChannelInfo]) {
        self.version = version
        self.features = features
        self.maxMessage = maxMessage
        self.maxDescriptors = maxDescriptors
        self.maxQueueDepth = maxQueueDepth
        self.maxQueues = maxQueues
        self.maxBuffers = maxBuffers
        self.maxBufferBytes = maxBufferBytes
        self.hugepageSize = hugepageSize
        self.channels = channels
    }
}

/// ALLOC: a server-owned shared buffer (SPEC.md §5.1).
/// Flag bits of RESERVE (v2).
public enum ReserveFlags {
    /// Refuse with NO_SPACE instead of waiting (ioat(4) `M_NOWAIT`).
    public static let noWait: UInt32 = 1 << 0
}

/// ALLOC: a server-owned shared buffer (SPEC.md §5.1).
public struct Alloc: Hashable, Sendable {
    /// How hard to try for hugepages.
    public enum Pages: Sendable, Hashable {
        /// Hugepages if the server has them, else 4 KiB pages.
        case preferHuge
        /// Hugepages or NO_HUGEPAGES.
        case requireHuge
        /// Ordinary pages.
        case normal
    }
    /// Flag bits of ALLOC.
    public static let flagRequireHuge: UInt32 = 1 << 0
    /// Flag bits of ALLOC.
    public static let flagNoHuge: UInt32 = 1 << 1

    /// Bytes wanted; the server rounds up to its page size.
    public var size: UInt64
    /// Page policy.
    public var pages: Pages
    /// Creates a request.
    public init(size: UInt64, pages: Pages = .preferHuge) {
        self.size = size
        self.pages = pages
    }
}

/// ALLOC_OK and REGISTER_OK: a buffer now open on the connection (SPEC.md §5.1, §5.2).
public struct BufferReply: Hashable, Sendable {
    /// Flags of a buffer reply.
    public struct Flags: OptionSet, Hashable, Sendable {
        public let rawValue: UInt32
        @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
        /// Backed by hugepages.
        @inlinable public static var hugepages: Flags { Flags(rawValue: 1 << 0) }
        /// Locked in memory by the server (mlock).
        @inlinable public static var locked: Flags { Flags(rawValue: 1 << 1) }
        /// The server could map it read-only only (the memfd has F_SEAL_WRITE); it cannot be a destination.
        @inlinable public static var readOnly: Flags { Flags(rawValue: 1 << 2) }
        /// Every flag defined.
        public static let defined: Flags = [.hugepages, .locked, .readOnly]
    }
    /// The handle to name it by in descriptors.
    public var handle: UInt32
    /// Properties.
    public var flags: Flags
    /// Usable bytes.
    public var size: UInt64
    /// Page size backing it.
    public var pageSize: UInt64
    /// Creates a reply.
    public init(handle: UInt32, flags: Flags, size: UInt64, pageSize: UInt64) {
        self.handle = handle
        self.flags = flags
        self.size = size
        self.pageSize = pageSize
    }
}

/// OPEN_OK (SPEC.md §5.4).
public struct OpenReply: Hashable, Sendable {
    /// The queue id to name in SUBMIT and CLOSE.
    public var queue: UInt32
    /// The channel it runs on.
    public var channel: UInt32
    /// Its depth: the most ops in flight at once.
    public var depth: UInt32
    /// Creates a reply.
    public init(queue: UInt32, channel: UInt32, depth: UInt32) {
        self.queue = queue
        self.channel = channel
        self.depth = depth
    }
}

/// A SUBMIT whose descriptors are still the received bytes; decode them one by one with `descriptor(at:)`.
/// Valid only while those bytes are.
public struct SubmitView {
    /// The target queue.
    public var queue: UInt32
    /// How many descriptors follow.
    public var count: Int
    /// The descriptor bytes (count × 64).
    public var body: UnsafeRawBufferPointer

    /// The protocol version the SUBMIT was framed with.
    public var version: UInt16 = Wire.version

    /// A view of `count` descriptors in `body` (count × 64 bytes), framed with `version`.
    public init(queue: UInt32, count: Int, body: UnsafeRawBufferPointer, version: UInt16 = Wire.version) {
        self.queue = queue
        self.count = count
        self.body = body
        self.version = version
    }

    /// Decodes and shape-checks descriptor `i`.
    public func descriptor(at i: Int) throws(ProtocolError) -> Descriptor {
        try Descriptor.decode(body, at: i * Descriptor.size, index: UInt32(i), version: version)
    }
}

/// A COMPLETION whose records are still the received bytes. Valid only while those bytes are.
public struct CompletionView {
    /// The queue whose ops completed.
    public var queue: UInt32
    /// How many records follow.
    public var count: Int
    /// The record bytes (count × 32).
    public var body: UnsafeRawBufferPointer

    /// Decodes record `i`.
    public func record(at i: Int) throws(ProtocolError) -> CompletionRecord {
        try CompletionRecord.decode(body, at: i * CompletionRecord.size, index: i)
    }

    /// Each record in order, decoded once: `Message.decode` has already checked every record's reserved
    /// fields (what `record(at:)` would check again), so this only reads them.
    @inlinable
    public func forEachRecord(_ body: (CompletionRecord) throws -> Void) rethrows {
        for i in 0..<count { try body(CompletionRecord.unchecked(self.body, at: i * CompletionRecord.size)) }
    }
}

/// RING_OK (SPEC.md §5.10): the ring's geometry; the memfd and the doorbell come with it.
public struct RingReply: Hashable, Sendable {
    public var queue: UInt32
    public var submissionEntries: UInt32
    public var completionEntries: UInt32
    /// Bytes of the ring memfd, all of which the client maps.
    public var size: UInt64

    public init(queue: UInt32, submissionEntries: UInt32, completionEntries: UInt32, size: UInt64) {
        self.queue = queue
        self.submissionEntries = submissionEntries
        self.completionEntries = completionEntries
        self.size = size
    }
}

/// ERROR (SPEC.md §7).
public struct ErrorReply: Hashable, Sendable {
    /// The code.
    public var code: ErrorCode
    /// The descriptor index, or `Wire.noIndex`.
    public var index: UInt32
    /// What went wrong, naming the bad value.
    public var message: String
    /// (v3) The ring queue an unsolicited ERROR is about (a refused ring descriptor, whose ring entry is
    /// `index`, or RING_BROKEN); 0 otherwise (SPEC.md §7).
    public var queue: UInt32
    /// Creates a reply.
    public init(code: ErrorCode, index: UInt32 = Wire.noIndex, message: String, queue: UInt32 = 0) {
        self.code = code
        self.index = index
        self.message = message
        self.queue = queue
    }
    /// The reply for a refused request.
    /// The ERROR for `error`; a descriptor's refusal is told as a SUBMIT's ("descriptor i: what was wrong").
    public init(_ error: ProtocolError) {
        self.init(code: error.code, index: error.index ?? Wire.noIndex,
                  message: error.index.map { "descriptor \($0): \(error.message)" } ?? error.message)
    }
}

/// RESTARTED's body (SPEC.md §5.11).
public struct RestartNotice: Hashable, Sendable {
    /// Flag bit 0: the previous instance ended without handing over (a crash): what it had taken and not
    /// answered is lost, and the server discards SUBMITs on this connection until RESYNC.
    public static let flagLost: UInt32 = 1 << 0
    /// Whether the previous instance crashed (`flagLost`).
    public var lost: Bool
    /// Restarts this connection has lived through, this one included.
    public var restarts: UInt32

    public init(lost: Bool, restarts: UInt32) {
        self.lost = lost
        self.restarts = restarts
    }
}

/// Every message of protocol version 1, decoded. SUBMIT and COMPLETION borrow the packet's bytes.
public enum Message {
    case hello(Hello)
    case alloc(Alloc)
    case register
    case free(handle: UInt32)
    case open(channel: UInt32, depth: UInt32)
    case close(queue: UInt32)
    case submit(SubmitView)
    /// STATUS, for the page that starts where `StatusRequest` says; nil is the empty body (the first page).
    case status(StatusRequest?)
    /// (v2) Answered once `queue` has at least `credits` free credits; with NO_WAIT, refused at once
    /// with NO_SPACE when it has not.
    case reserve(queue: UInt32, credits: UInt32, noWait: Bool)
    /// (v2) Hold a queue's records for up to `microseconds` after a flush point, to send fewer messages.
    case setCoalesce(queue: UInt32, microseconds: UInt32)
    case helloReply(HelloReply)
    case allocReply(BufferReply)
    case registerReply(BufferReply)
    case freeReply
    case openReply(OpenReply)
    case closeReply
    case statusReply(json: String)
    /// (v2) The queue's free credits when RESERVE was answered.
    case reserveReply(freeCredits: UInt32)
    /// (v2) The period now in force.
    case coalesceReply(microseconds: UInt32)
    /// (v3) RING: turn `queue` into a ring queue (SPEC.md §5.10).
    case ring(queue: UInt32)
    /// (v3) RING_OK; the ring memfd and the doorbell socket travel with it.
    case ringReply(RingReply)
    case completion(CompletionView)
    /// The server is stopping: it takes no new work, and in-flight ops have `drainMilliseconds` to finish.
    case goodbye(drainMilliseconds: UInt32)
    /// (v3, feature bit 1) A new server instance serves this connection (SPEC.md §5.11).
    case restarted(RestartNotice)
    /// (v3, feature bit 1) The client failed what it had outstanding when RESTARTED said LOST.
    case resync
    case resyncReply
    case error(ErrorReply)

    /// The wire type.
    public var type: MessageType {
        switch self {
        case .hello: .hello
        case .alloc: .alloc
        case .register: .register
        case .free: .free
        case .open: .open
        case .close: .close
        case .submit: .submit
        case .status: .status
        case .reserve: .reserve
        case .setCoalesce: .setCoalesce
        case .helloReply: .helloReply
        case .allocReply: .allocReply
        case .registerReply: .registerReply
        case .freeReply: .freeReply
        case .openReply: .openReply
        case .closeReply: .closeReply
        case .statusReply: .statusReply
        case .reserveReply: .reserveReply
        case .coalesceReply: .coalesceReply
        case .ring: .ring
        case .ringReply: .ringReply
        case .completion: .completion
        case .goodbye: .goodbye
        case .restarted: .restarted
        case .resync: .resync
        case .resyncReply: .resyncReply
        case .error: .error
        }
    }
}
