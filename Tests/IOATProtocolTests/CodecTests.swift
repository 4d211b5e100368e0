import IOATProtocol
import Testing

@Suite("codec")
struct CodecTests {
    func roundTrip(_ message: Message, requestID: UInt64 = 5) throws -> Message {
        let bytes = message.encode(requestID: requestID)
        return try bytes.withUnsafeBytes { raw in
            let (header, decoded) = try Message.decode(raw, maxDescriptors: 512)
            #expect(header.requestID == requestID)
            #expect(Int(header.length) == bytes.count)
            #expect(decoded.encode(requestID: requestID) == bytes)
            return decoded
        }
    }

    @Test("descriptors survive encode and decode with every field")
    func descriptorRoundTrip() throws {
        let d = Descriptor(opcode: .copyCRC32C, flags: [.interrupt, .fence, .crcSeed], cookie: .max, length: 1 << 40,
                           source: BufferAddress(handle: 7, offset: 123), destination: BufferAddress(handle: .max, offset: .max - 1),
                           arg: 0xDEAD_BEEF)
        let bytes = Message.encodeSubmit(queue: 3, descriptors: [d, .null()], requestID: 9)
        #expect(bytes.count == 24 + 8 + 128)
        try bytes.withUnsafeBytes { raw in
            guard case .submit(let view) = try Message.decode(raw).1 else {
                Issue.record("not a SUBMIT")
                return
            }
            #expect(view.queue == 3)
            #expect(view.count == 2)
            #expect(try view.descriptor(at: 0) == d)
            #expect(try view.descriptor(at: 1) == .null())
        }
    }

    @Test("a SUBMIT with more descriptors than the limit is BAD_COUNT")
    func tooManyDescriptors() {
        let bytes = Message.encodeSubmit(queue: 1, descriptors: Array(repeating: Descriptor.null(), count: 513), requestID: 1)
        bytes.withUnsafeBytes { raw in
            #expect(throws: ProtocolError.self) { try Message.decode(raw, maxDescriptors: 512) }
            do throws(ProtocolError) { _ = try Message.decode(raw, maxDescriptors: 512) } catch { #expect(error.code == .badCount) }
        }
    }

    @Test("error replies carry code, index and text")
    func errorRoundTrip() throws {
        let e = ErrorReply(code: .outOfRange, index: 4, message: "descriptor 4: naïve text ✓")
        guard case .error(let got) = try roundTrip(.error(e)) else {
            Issue.record("not an ERROR")
            return
        }
        #expect(got == e)
    }

    @Test("channel names are cut to 15 bytes and NUL-padded")
    func channelNames() throws {
        let c = ChannelInfo(index: 0, engine: .cpu, hardwareVersion: 0, opcodes: 31, maxTransfer: 1, maxDepth: 2,
                            maxCoalesceMicroseconds: 3, name: "a-very-long-channel-name")
        let r = HelloReply(version: 1, features: 0, maxMessage: 65536, maxDescriptors: 512, maxQueueDepth: 1024, maxQueues: 64,
                           maxBuffers: 1024, maxBufferBytes: 1 << 32, hugepageSize: 0, channels: [c])
        guard case .helloReply(let got) = try roundTrip(.helloReply(r)) else {
            Issue.record("not HELLO_OK")
            return
        }
        #expect(got.channels[0].name == "a-very-long-cha")
    }

    @Test("every truncation of a valid packet is refused, never trapped on")
    func truncations() {
        let packets: [[UInt8]] = [
            Message.hello(Hello()).encode(requestID: 1),
            Message.encodeSubmit(queue: 1, descriptors: [.copy(from: .init(handle: 1, offset: 0), to: .init(handle: 2, offset: 0), length: 8)],
                                 requestID: 2),
            Message.error(ErrorReply(code: .busy, message: "x")).encode(requestID: 3),
        ]
        for p in packets {
            for cut in 0..<p.count {
                _ = Array(p[0..<cut]).withUnsafeBytes { raw in
                    #expect(throws: ProtocolError.self) { try Message.decode(raw) }
                }
            }
        }
    }
}
