import IOATProtocol
@testable import IOATServer
import Testing

/// A packet built field by field: header then body.
func packet(_ type: MessageType, body: [UInt8] = [], requestID: UInt64 = 7, version: UInt16 = Wire.version) -> [UInt8] {
    var w = WireWriter()
    MessageHeader(version: version, type: type, length: UInt32(24 + body.count), requestID: requestID).encode(into: &w)
    w.write(bytes: body)
    return w.bytes
}

func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

extension ConnectionStateMachine {
    /// Feeds `bytes` as one packet and returns the refusal's code, whether it closes, and the echoed id;
    /// nil when the packet was accepted.
    mutating func refusal(_ bytes: [UInt8], size: Int? = nil, descriptors: Int = 0, overflowed: Bool = false,
                          foreign: Bool = false, stopping: Bool = false) -> (code: ErrorCode, close: Bool, requestID: UInt64)? {
        let facts = PacketFacts(size: size ?? bytes.count, descriptors: descriptors, descriptorsOverflowed: overflowed,
                                foreignControl: foreign)
        let action = bytes.withUnsafeBytes { receive($0, facts, stopping: stopping) }
        guard case .refuse(let error, let requestID, let close) = action else { return nil }
        return (error.code, close, requestID)
    }

    /// Answers HELLO (versions 1...2 offered); the connection is then negotiated.
    mutating func negotiate(max: UInt16 = Wire.version) {
        let hello = Message.hello(Hello(minVersion: 1, maxVersion: max)).encode(requestID: 1)
        let action = hello.withUnsafeBytes { receive($0, PacketFacts(size: hello.count), stopping: false) }
        guard case .hello = action else { preconditionFailure("HELLO was not answered: \(action)") }
    }
}

@Suite("connection state machine: the check order of SPEC.md §2.2, §3 and §4, without sockets")
struct ConnectionStateMachineTests {
    func machine() -> ConnectionStateMachine { ConnectionStateMachine(maxMessage: 65536, maxDescriptors: 512) }

    @Test("an empty packet is MALFORMED and the connection stays; so is any packet shorter than a header")
    func emptyAndShort() {
        var m = machine()
        #expect(m.refusal([])! == (.malformed, false, 0))
        #expect(m.refusal([UInt8](repeating: 0x49, count: 23))! == (.malformed, false, 0))
        #expect(m.state == .awaitingHello)
    }

    @Test("TOO_LARGE from max_message + 1 bytes, with the request id of the bytes received; max_message itself is decoded")
    func tooLarge() {
        var m = machine()
        m.negotiate()
        var big = packet(.status, body: [UInt8](repeating: 0, count: 65537 - 24), requestID: 99)
        #expect(m.refusal(big)! == (.tooLarge, false, 99))
        big = packet(.status, body: [UInt8](repeating: 0, count: 65536 - 24), requestID: 98)
        #expect(m.refusal(big)! == (.malformed, false, 98), "65,536 bytes is within the limit: decoded, and its body is wrong")
        // Larger than the receive buffer: the kept bytes hold the header, the size is the real one.
        #expect(m.refusal(Array(big.prefix(65537)), size: 200_000)! == (.tooLarge, false, 98))
    }

    @Test("before HELLO every request type, RESERVE and SET_COALESCE included, whatever version frames it, is NOT_NEGOTIATED")
    func beforeHello() {
        for type in MessageType.allCases where type.isRequest && type != .hello {
            for version: UInt16 in [1, 2, 3] {
                var m = machine()
                let r = m.refusal(packet(type, version: version))
                #expect(r?.code == .notNegotiated && r?.close == false, "\(type.name) framed with version \(version): \(String(describing: r))")
            }
        }
        var m = machine()
        #expect(m.refusal(packet(.status, version: 4))! == (.unsupportedVersion, true, 7), "a version the server does not speak")
        #expect(m.state == .closing(version: 1))
        #expect(m.version == 1, "a refusal before HELLO_OK is framed with version 1")
    }

    @Test("after HELLO: ALREADY_NEGOTIATED, the negotiated framing, UNEXPECTED_TYPE, and type before descriptors")
    func afterHello() {
        var m = machine()
        m.negotiate(max: 1)
        #expect(m.version == 1)
        #expect(m.refusal(Message.hello(Hello()).encode(requestID: 3))! == (.alreadyNegotiated, false, 3))
        #expect(m.refusal(packet(.status, version: 2))! == (.unsupportedVersion, true, 7), "framed with another version than negotiated")
        var v2 = machine()
        v2.negotiate(max: 2)
        let reserve = le(UInt32(5)) + le(UInt32(1)) + le(UInt32(0)) + le(UInt32(0))
        #expect(v2.refusal(packet(.reserve, body: reserve, version: 2)) == nil)
        let ring = le(UInt32(5)) + le(UInt32(0))
        #expect(v2.refusal(packet(.ring, body: ring, version: 2))?.code == .unknownType, "a v3 type on a v2 connection")
        var v3 = machine()
        v3.negotiate()
        #expect(v3.version == 3)
        #expect(v3.refusal(packet(.ring, body: ring, version: 3)) == nil)
        #expect(v3.refusal(packet(.ring, body: le(UInt32(5)) + le(UInt32(1)), version: 3))?.code == .reservedNotZero)
        var v1 = machine()
        v1.negotiate(max: 1)
        #expect(v1.refusal(packet(.reserve, body: reserve, version: 1))?.code == .unknownType, "a v2 type on a v1 connection")
        #expect(v3.refusal(packet(.helloReply))?.code == .unexpectedType)
        #expect(v3.refusal(packet(.completion), descriptors: 1)?.code == .unexpectedType, "the type is checked before descriptors")
    }

    @Test("descriptors: REGISTER needs exactly one (more than the cap is MISSING_FD too); others take none; foreign control is UNEXPECTED_FD")
    func descriptors() {
        var m = machine()
        m.negotiate()
        let register = packet(.register, body: [UInt8](repeating: 0, count: 8))
        #expect(m.refusal(register, descriptors: 1) == nil)
        #expect(m.refusal(register, descriptors: 0)?.code == .missingFD)
        #expect(m.refusal(register, descriptors: 2)?.code == .missingFD)
        #expect(m.refusal(register, descriptors: 4, overflowed: true)?.code == .missingFD, "five or more descriptors")
        #expect(m.refusal(packet(.status), descriptors: 1)?.code == .unexpectedFD)
        #expect(m.refusal(packet(.status), descriptors: 4, overflowed: true)?.code == .unexpectedFD)
        #expect(m.refusal(packet(.status), foreign: true)?.code == .unexpectedFD)
        // Before HELLO, NOT_NEGOTIATED comes before the descriptor check.
        var early = machine()
        #expect(early.refusal(register, descriptors: 2)?.code == .notNegotiated)
    }

    @Test("SUBMIT: the body's size is checked before the count, so a huge count with a short body is MALFORMED")
    func submitBody() {
        var m = machine()
        m.negotiate()
        #expect(m.refusal(packet(.submit, body: le(UInt32(5)) + le(UInt32(0xFFFF_FFFF))))?.code == .malformed)
        #expect(m.refusal(packet(.submit, body: le(UInt32(5)) + le(UInt32(2)) + [UInt8](repeating: 0, count: 64)))?.code == .malformed)
        #expect(m.refusal(packet(.submit, body: le(UInt32(5)) + le(UInt32(0))))?.code == .badCount)
        let tooMany = le(UInt32(5)) + le(UInt32(513)) + [UInt8](repeating: 0, count: 513 * 64)
        var roomy = ConnectionStateMachine(maxMessage: 1 << 20, maxDescriptors: 512)
        roomy.negotiate()
        #expect(roomy.refusal(packet(.submit, body: tooMany))?.code == .badCount)
        // Descriptors are left for the validator: an undefined opcode passes the state machine.
        #expect(m.refusal(packet(.submit, body: le(UInt32(5)) + le(UInt32(1)) + [0xEE] + [UInt8](repeating: 0, count: 63))) == nil)
    }

    @Test("while stopping, SUBMIT, ALLOC, REGISTER and OPEN are SHUTTING_DOWN; the rest are answered")
    func stopping() {
        var m = machine()
        m.negotiate()
        #expect(m.refusal(packet(.alloc, body: le(UInt64(4096)) + le(UInt32(0)) + le(UInt32(0))), stopping: true)?.code == .shuttingDown)
        #expect(m.refusal(packet(.open, body: le(UInt32(0)) + le(UInt32(4))), stopping: true)?.code == .shuttingDown)
        #expect(m.refusal(packet(.status), stopping: true) == nil)
        #expect(m.refusal(packet(.free, body: le(UInt32(1)) + le(UInt32(0))), stopping: true) == nil)
    }

    @Test("bad magic closes, with the request id as received; HELLO with no common version closes")
    func closing() {
        var m = machine()
        var bad = packet(.status, requestID: 42)
        bad[0] = 0x58
        #expect(m.refusal(bad)! == (.badMagic, true, 42))
        var old = machine()
        let hello = Message.hello(Hello(minVersion: 4, maxVersion: 9)).encode(requestID: 5)
        #expect(old.refusal(hello)! == (.unsupportedVersion, true, 5))
    }

    /// SPEC.md §2.2: after HELLO_OK every message is framed with the negotiated version, the ERROR that
    /// closes the connection for BAD_MAGIC or UNSUPPORTED_VERSION included (it was framed with 1).
    @Test("after HELLO_OK, the refusal that closes the connection keeps the negotiated framing", arguments: [UInt16(2), 3])
    func closingKeepsVersion(_ negotiated: UInt16) {
        for bad in ["version 1 frame", "bad magic"] {
            var m = machine()
            #expect(m.refusal(Message.hello(Hello(maxVersion: negotiated)).encode(requestID: 1)) == nil)
            var p = packet(.status, requestID: 8, version: bad == "bad magic" ? negotiated : 1)
            if bad == "bad magic" { p[0] = 0x58 }
            let r = m.refusal(p)
            #expect(r?.close == true && (r?.code == .unsupportedVersion || r?.code == .badMagic), "\(bad): \(String(describing: r))")
            #expect(m.state == .closing(version: negotiated) && m.version == negotiated, "\(bad) on version \(negotiated): framed with \(m.version)")
        }
    }

    @Test("a connection's life: reads while serving, not while a buffer is made or a request is parked, and a closing refusal closes it once its output is written")
    func life() {
        var m = machine()
        #expect(m.reads && !m.isClosed)
        m.negotiate()
        #expect(m.reads && m.state == .negotiated(version: Wire.version))
        m.setupStarted()
        #expect(!m.reads && m.state == .awaitingSetup(version: Wire.version) && m.version == Wire.version)
        m.setupEnded()
        #expect(m.reads)
        m.park()
        #expect(!m.reads && m.state == .parked(version: Wire.version))
        m.unpark()
        #expect(m.reads)
        // A refusal that does not close decides so, and nothing changes.
        let stays = m.refused(ProtocolError(.badHandle, "x"))
        #expect(!stays && m.reads && !m.closesOnceWritten)
        // One that closes: nothing more is read, and the connection closes once its output is written.
        let closes = m.refused(ProtocolError(.badMagic, "x"))
        #expect(closes && !m.reads && m.isClosing && m.version == Wire.version)
        let again = m.refused(ProtocolError(.unsupportedVersion, "x"))
        #expect(again && m.closesOnceWritten, "a second closing refusal still closes")
        m.close()
        let closedAgain = m.refused(ProtocolError(.badMagic, "x"))
        #expect(m.isClosed && !m.reads && !closedAgain, "a closed connection is not closed again")
    }
}
