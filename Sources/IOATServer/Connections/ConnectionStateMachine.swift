import IOATProtocol

/// What the transport said about one received packet, beside its bytes.
struct PacketFacts {
    /// The packet's real size (above the bytes kept when it was cut short).
    var size: Int
    /// Descriptors that arrived with it (SCM_RIGHTS), counting those closed for being over the cap.
    var descriptors: Int
    /// Whether more descriptors came than the server takes from one packet (the kernel or the server
    /// closed the rest).
    var descriptorsOverflowed: Bool
    /// Whether a control message other than SCM_RIGHTS arrived.
    var foreignControl: Bool

    init(size: Int, descriptors: Int = 0, descriptorsOverflowed: Bool = false, foreignControl: Bool = false) {
        self.size = size
        self.descriptors = descriptors
        self.descriptorsOverflowed = descriptorsOverflowed
        self.foreignControl = foreignControl
    }
}

/// A connection's whole life as a value: it takes each received packet and says what to do with it, in
/// the check order of SPEC.md §2.2 and §3–§4 (which ERROR, whether the connection then closes, or which
/// request to carry out), and it is where the connection stands between packets: waiting for a buffer to
/// be made, parked for credits, flushing a closing refusal, closed. Whether a refusal closes the
/// connection is decided here, once (`refused`). It does no I/O, so every path is tested without sockets.
struct ConnectionStateMachine {
    /// Where the connection is.
    enum State: Equatable {
        /// Only HELLO is taken.
        case awaitingHello
        /// HELLO was answered; every message is framed with `version`; requests are read.
        case negotiated(version: UInt16)
        /// A setup thread makes a buffer for it: nothing is read until its reply is sent.
        case awaitingSetup(version: UInt16)
        /// A request waits for credits (SPEC.md §5.8): nothing is read until it goes through.
        case parked(version: UInt16)
        /// A refusal closed the connection: nothing more is read, and it closes once its output (the
        /// refusal last) is written. `version` frames that refusal: 1 before HELLO_OK, the negotiated one
        /// after (SPEC.md §2.2).
        case closing(version: UInt16)
        /// Gone.
        case closed
    }

    /// What to do with a packet.
    enum Action {
        /// Send ERROR with `requestID`; then close the connection when `close` says so (SPEC.md §7).
        case refuse(ProtocolError, requestID: UInt64, close: Bool)
        /// Answer HELLO with version `version`; the connection now speaks it. `offered`: the client's feature bits.
        case hello(version: UInt16, offered: UInt64, requestID: UInt64)
        /// Carry out a request whose framing and body were checked. A SUBMIT's descriptors are not
        /// checked yet: the request handler checks each in turn (SPEC.md §6.3).
        case request(Message, requestID: UInt64)
    }

    private(set) var state = State.awaitingHello
    /// Largest packet taken (`max_message`).
    let maxMessage: Int
    /// Most descriptors in one SUBMIT.
    let maxDescriptors: Int
    /// Versions this server speaks.
    let versions: ClosedRange<UInt16>

    init(maxMessage: Int, maxDescriptors: Int, versions: ClosedRange<UInt16> = Wire.minimumVersion...Wire.version) {
        self.maxMessage = maxMessage
        self.maxDescriptors = maxDescriptors
        self.versions = versions
    }

    /// The version replies are framed with: 1 until HELLO is answered, then the negotiated one, also
    /// for the refusal that closes the connection.
    var version: UInt16 {
        switch state {
        case .awaitingHello, .closed: 1
        case .negotiated(let version), .awaitingSetup(let version), .parked(let version), .closing(let version): version
        }
    }

    var isNegotiated: Bool {
        switch state {
        case .negotiated, .awaitingSetup, .parked: true
        case .awaitingHello, .closing, .closed: false
        }
    }

    /// Whether the server reads the connection's next packet (its output drained as well).
    var reads: Bool {
        switch state {
        case .awaitingHello, .negotiated: true
        case .awaitingSetup, .parked, .closing, .closed: false
        }
    }

    var isClosed: Bool { state == .closed }
    /// Whether a refusal is closing it once its output is written.
    var isClosing: Bool { if case .closing = state { true } else { false } }

    /// A refusal was sent (or is about to be): whether the connection closes for it. BAD_MAGIC and
    /// UNSUPPORTED_VERSION do (SPEC.md §7); the connection then reads nothing more. The one place this
    /// is decided.
    mutating func refused(_ error: ProtocolError) -> Bool {
        guard error.code.closesConnection, state != .closed else { return false }
        if !isClosing { state = .closing(version: version) }
        return true
    }

    /// A buffer's setup started on a setup thread; until it ends nothing is read.
    mutating func setupStarted() {
        precondition(state == .negotiated(version: version), "setup started in \(state)")
        state = .awaitingSetup(version: version)
    }

    /// The buffer's setup ended (its reply or refusal is being sent).
    mutating func setupEnded() {
        if case .awaitingSetup(let version) = state { state = .negotiated(version: version) }
    }

    /// A request waits for credits.
    mutating func park() {
        precondition(state == .negotiated(version: version), "parked in \(state)")
        state = .parked(version: version)
    }

    /// The parked request went through.
    mutating func unpark() {
        if case .parked(let version) = state { state = .negotiated(version: version) }
    }

    /// Its output is written: whether it closes now (a refusal was closing it).
    var closesOnceWritten: Bool { isClosing }

    mutating func close() { state = .closed }

    /// A connection taken over from a previous instance (SPEC.md §5.11): negotiated with `version`, or
    /// still awaiting HELLO (nil).
    mutating func resume(version: UInt16?) {
        state = version.map { .negotiated(version: $0) } ?? .awaitingHello
    }

    /// Decides what to do with one packet. `packet` holds the bytes kept (all of them unless the packet
    /// was larger than the receive buffer). `stopping`: the server takes no new work (SPEC.md §5.7).
    mutating func receive(_ packet: UnsafeRawBufferPointer, _ facts: PacketFacts, stopping: Bool) -> Action {
        // The id is echoed from the bytes as received whenever they hold a whole header, before anything
        // in them is trusted (SPEC.md §7); a packet shorter than a header gets 0.
        let requestID = MessageHeader.requestID(of: packet)
        switch decide(packet, facts, stopping: stopping, requestID: requestID) {
        case .success(let action): return action
        case .failure(let error):
            return .refuse(error, requestID: requestID, close: refused(error))
        }
    }

    private mutating func decide(_ packet: UnsafeRawBufferPointer, _ facts: PacketFacts, stopping: Bool,
                                 requestID: UInt64) -> Result<Action, ProtocolError> {
        do throws(ProtocolError) {
            return .success(try check(packet, facts, stopping: stopping, requestID: requestID))
        } catch {
            return .failure(error)
        }
    }

    private mutating func check(_ packet: UnsafeRawBufferPointer, _ facts: PacketFacts, stopping: Bool,
                                requestID: UInt64) throws(ProtocolError) -> Action {
        // Transport: size, then control messages.
        guard facts.size <= maxMessage else {
            throw ProtocolError(.tooLarge, "packet of \(facts.size) bytes exceeds the maximum of \(maxMessage)")
        }
        guard facts.size >= Wire.headerSize else {
            throw ProtocolError(.malformed, "packet of \(facts.size) bytes is shorter than the 24-byte header")
        }
        guard !facts.foreignControl else {
            throw ProtocolError(.unexpectedFD, "control messages other than SCM_RIGHTS are not accepted; they were discarded")
        }
        // Header: magic, version, length, reserved. HELLO is framed with version 1 always; before HELLO
        // any version the server speaks frames the other types, so that they reach NOT_NEGOTIATED.
        let rawType = WireReader(packet).get(at: 6, as: UInt16.self) ?? 0
        let isHello = rawType == MessageType.hello.rawValue
        let framing: ClosedRange<UInt16> = switch state {
        case .negotiated(let version), .awaitingSetup(let version), .parked(let version): isHello ? 1...1 : version...version
        case .awaitingHello, .closing, .closed: isHello ? 1...1 : versions
        }
        let header = try MessageHeader.decode(packet, accepting: framing)
        // Type: defined (in the negotiated version, or in any before HELLO), sent by clients, in its turn.
        let type = try MessageType.of(header, definedBy: isNegotiated ? version : versions.upperBound)
        guard type.isRequest else {
            throw ProtocolError(.unexpectedType, "message type \(type.name) is sent by the server, not to it")
        }
        if !isNegotiated && type != .hello {
            throw ProtocolError(.notNegotiated, "\(type.name) before HELLO; the first message must be HELLO")
        }
        if isNegotiated && type == .hello {
            throw ProtocolError(.alreadyNegotiated, "HELLO was already answered on this connection")
        }
        // Descriptors: exactly one on REGISTER, none on anything else.
        if type.carriesFD {
            guard facts.descriptors == 1 && !facts.descriptorsOverflowed else {
                let got = facts.descriptorsOverflowed ? "more than \(facts.descriptors)" : "\(facts.descriptors)"
                throw ProtocolError(.missingFD, "\(type.name) needs exactly one file descriptor, got \(got); they were closed")
            }
        } else if facts.descriptors > 0 || facts.descriptorsOverflowed {
            let got = facts.descriptorsOverflowed ? "more than \(facts.descriptors)" : "\(facts.descriptors)"
            throw ProtocolError(.unexpectedFD, "\(type.name) takes no file descriptors, got \(got); they were closed")
        }
        // Body.
        let message = try Message.decodeBody(type, header: header, packet: packet, maxDescriptors: maxDescriptors,
                                             validateDescriptors: false)
        if stopping && (type == .submit || type == .alloc || type == .register || type == .open || type == .ring) {
            throw ProtocolError(.shuttingDown, "the server is stopping and takes no new \(type.name)")
        }
        guard case .hello(let offer) = message else { return .request(message, requestID: requestID) }
        let chosen = min(offer.maxVersion, versions.upperBound)
        guard chosen >= max(offer.minVersion, versions.lowerBound) else {
            throw ProtocolError(.unsupportedVersion,
                                "client speaks versions \(offer.minVersion)...\(offer.maxVersion); this server speaks \(versions.lowerBound)...\(versions.upperBound)")
        }
        state = .negotiated(version: chosen)
        return .hello(version: chosen, offered: offer.features, requestID: requestID)
    }
}
