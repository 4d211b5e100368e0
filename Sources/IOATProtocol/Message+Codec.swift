extension Message {
    /// Encodes the message with its header. `version` is the connection's (1 for HELLO).
    /// HELLO and HELLO_OK are always framed with version 1, whatever `version` says.
    public func encode(requestID: UInt64, version: UInt16 = Wire.version) -> [UInt8] {
        var w = WireWriter(capacity: 128)
        let framing: UInt16 = type == .hello || type == .helloReply ? 1 : version
        MessageHeader(version: framing, type: type, length: 0, requestID: requestID).encode(into: &w)
        switch self {
        case .hello(let h):
            w.write(h.minVersion)
            w.write(h.maxVersion)
            w.write(UInt32(0))
            w.write(h.features)
        case .alloc(let a):
            w.write(a.size)
            switch a.pages {
            case .preferHuge: w.write(UInt32(0))
            case .requireHuge: w.write(Alloc.flagRequireHuge)
            case .normal: w.write(Alloc.flagNoHuge)
            }
            w.write(UInt32(0))
        case .register:
            w.write(UInt32(0))
            w.write(UInt32(0))
        case .free(let handle):
            w.write(handle)
            w.write(UInt32(0))
        case .open(let channel, let depth):
            w.write(channel)
            w.write(depth)
        case .close(let queue):
            w.write(queue)
            w.write(UInt32(0))
        case .reserve(let queue, let credits, let noWait):
            w.write(queue)
            w.write(credits)
            w.write(noWait ? ReserveFlags.noWait : 0)
            w.write(UInt32(0))
        case .reserveReply(let free):
            w.write(free)
            w.write(UInt32(0))
        case .setCoalesce(let queue, let microseconds):
            w.write(queue)
            w.write(microseconds)
        case .coalesceReply(let microseconds):
            w.write(microseconds)
            w.write(UInt32(0))
        case .ring(let queue):
            w.write(queue)
            w.write(UInt32(0))
        case .ringReply(let r):
            w.write(r.queue)
            w.write(r.submissionEntries)
            w.write(r.completionEntries)
            w.write(UInt32(0))
            w.write(r.size)
        case .submit(let s):
            w.write(s.queue)
            w.write(UInt32(s.count))
            w.write(bytes: s.body)
        case .status(let page):
            if let page {
                w.write(page.clientFrom)
                w.write(page.tenantFrom)
                w.write(UInt32(0))
            }
        case .freeReply, .closeReply:
            break
        case .helloReply(let r):
            w.write(r.version)
            w.write(UInt16(r.channels.count))
            w.write(r.maxMessage)
            w.write(r.features)
            w.write(r.maxDescriptors)
            w.write(r.maxQueueDepth)
            w.write(r.maxQueues)
            w.write(r.maxBuffers)
            w.write(r.maxBufferBytes)
            w.write(r.hugepageSize)
            for c in r.channels {
                w.write(c.index)
                w.write(c.engine.rawValue)
                w.write(c.hardwareVersion)
                w.write(c.opcodes)
                w.write(c.maxTransfer)
                w.write(c.maxDepth)
                w.write(c.maxCoalesceMicroseconds)
                let name = Array(c.name.utf8.prefix(15))
                w.write(bytes: name)
                w.writeZeros(16 - name.count)
            }
        case .allocReply(let b), .registerReply(let b):
            w.write(b.handle)
            w.write(b.flags.rawValue)
            w.write(b.size)
            w.write(b.pageSize)
        case .openReply(let o):
            w.write(o.queue)
            w.write(o.channel)
            w.write(o.depth)
            w.write(UInt32(0))
        case .statusReply(let json):
            w.write(bytes: json.utf8)
        case .completion(let c):
            w.write(c.queue)
            w.write(UInt32(c.count))
            w.write(bytes: c.body)
        case .goodbye(let drain):
            w.write(drain)
            w.write(UInt32(0))
        case .restarted(let notice):
            w.write(notice.lost ? RestartNotice.flagLost : 0)
            w.write(notice.restarts)
        case .resync, .resyncReply:
            w.write(UInt64(0))
        case .error(let e):
            let text = Array(e.message.utf8)
            w.write(e.code.rawValue)
            w.write(e.index)
            w.write(UInt32(text.count))
            w.write(version >= 3 ? e.queue : 0)
            w.write(bytes: text)
        }
        w.set(UInt32(w.bytes.count), at: 8)
        return w.bytes
    }

    /// Encodes a SUBMIT of `descriptors` to `queue`.
    public static func encodeSubmit(queue: UInt32, descriptors: some Collection<Descriptor>, requestID: UInt64,
                                    version: UInt16 = Wire.version) -> [UInt8] {
        var w = WireWriter(capacity: Wire.headerSize + 8 + descriptors.count * Descriptor.size)
        encodeSubmit(queue: queue, descriptors: descriptors, requestID: requestID, version: version, into: &w)
        return w.bytes
    }

    /// Appends a SUBMIT of `descriptors` to `writer` (no allocation when it has the capacity).
    public static func encodeSubmit(queue: UInt32, descriptors: some Collection<Descriptor>, requestID: UInt64,
                                    version: UInt16 = Wire.version, into w: inout WireWriter) {
        let start = w.bytes.count
        let length = Wire.headerSize + 8 + descriptors.count * Descriptor.size
        MessageHeader(version: version, type: .submit, length: UInt32(length), requestID: requestID).encode(into: &w)
        w.write(queue)
        w.write(UInt32(descriptors.count))
        for d in descriptors { d.encode(into: &w) }
        assert(w.bytes.count - start == length)
    }

    /// Decodes one packet. Checks the header, the body's exact size for its type, reserved fields,
    /// flag bits, and for SUBMIT the shape of every descriptor (SPEC.md §2–§7). Does not check things
    /// that need the connection's state (handles, queues, bounds).
    public static func decode(_ packet: UnsafeRawBufferPointer, version: UInt16 = Wire.version,
                              maxDescriptors: Int = Int(UInt32.max)) throws(ProtocolError) -> (MessageHeader, Message)
    {
        // HELLO and HELLO_OK are framed with version 1 on every connection (SPEC.md §4).
        let rawType = WireReader(packet).get(at: 6, as: UInt16.self)
        let framing: UInt16 = rawType == MessageType.hello.rawValue || rawType == MessageType.helloReply.rawValue ? 1 : version
        let header = try MessageHeader.decode(packet, version: framing)
        let type = try MessageType.of(header, definedBy: header.version)
        return (header, try decodeBody(type, header: header, packet: packet, maxDescriptors: maxDescriptors))
    }

    /// Decodes the body of a packet whose header was checked and whose type is `type` (SPEC.md §2.2's last
    /// step and the body rules of §4–§7). With `validateDescriptors` false a SUBMIT's descriptors are left
    /// for the receiver to check one by one (`SubmitView.descriptor(at:)`), so that the first bad one,
    /// whatever the reason, is the one reported.
    public static func decodeBody(_ type: MessageType, header: MessageHeader, packet: UnsafeRawBufferPointer,
                                  maxDescriptors: Int = Int(UInt32.max), validateDescriptors: Bool = true)
        throws(ProtocolError) -> Message
    {
        var r = WireReader(packet, cursor: Wire.headerSize)
        let bodySize = r.remaining

        func expectBody(_ size: Int) throws(ProtocolError) {
            guard bodySize == size else {
                throw ProtocolError(.malformed, "\(type.name) body must be \(size) bytes, got \(bodySize)")
            }
        }
        func reserved32(_ value: UInt32, _ field: String) throws(ProtocolError) {
            guard value == 0 else {
                throw ProtocolError(.reservedNotZero, "\(type.name) \(field) is 0x\(String(value, radix: 16)), must be 0")
            }
        }
        // Every read below is inside a body whose size was checked first, so `!` cannot fail.
        switch type {
        case .hello:
            try expectBody(16)
            let h = Hello(minVersion: r.read()!, maxVersion: r.read()!, features: 0)
            try reserved32(r.read()!, "reserved")
            var hello = h
            hello.features = r.read()!
            guard hello.minVersion <= hello.maxVersion else {
                throw ProtocolError(.malformed, "HELLO min_version \(hello.minVersion) is above max_version \(hello.maxVersion)")
            }
            return .hello(hello)
        case .alloc:
            try expectBody(16)
            let size: UInt64 = r.read()!
            let flags: UInt32 = r.read()!
            try reserved32(r.read()!, "reserved")
            let known = Alloc.flagRequireHuge | Alloc.flagNoHuge
            guard flags & ~known == 0 else {
                throw ProtocolError(.unknownFlags, "ALLOC flag bits 0x\(String(flags & ~known, radix: 16)) are not defined")
            }
            guard flags != known else {
                throw ProtocolError(.badFlags, "ALLOC cannot set both HUGEPAGE_REQUIRED and NO_HUGEPAGE")
            }
            guard size > 0 else { throw ProtocolError(.badLength, "ALLOC size must be above 0") }
            let pages: Alloc.Pages = flags == Alloc.flagRequireHuge ? .requireHuge
                : flags == Alloc.flagNoHuge ? .normal : .preferHuge
            return .alloc(Alloc(size: size, pages: pages))
        case .register:
            try expectBody(8)
            let flags: UInt32 = r.read()!
            guard flags == 0 else {
                throw ProtocolError(.unknownFlags, "REGISTER flag bits 0x\(String(flags, radix: 16)) are not defined")
            }
            try reserved32(r.read()!, "reserved")
            return .register
        case .free:
            try expectBody(8)
            let handle: UInt32 = r.read()!
            try reserved32(r.read()!, "reserved")
            return .free(handle: handle)
        case .open:
            try expectBody(8)
            return .open(channel: r.read()!, depth: r.read()!)
        case .close:
            try expectBody(8)
            let queue: UInt32 = r.read()!
            try reserved32(r.read()!, "reserved")
            return .close(queue: queue)
        case .submit:
            guard bodySize >= 8 else { throw ProtocolError(.malformed, "SUBMIT body must be at least 8 bytes, got \(bodySize)") }
            let queue: UInt32 = r.read()!
            let count: UInt32 = r.read()!
            // §2.2: the body's size for its type comes first, then the count's bounds.
            guard r.remaining == Int(count) * Descriptor.size else {
                throw ProtocolError(.malformed, "SUBMIT says \(count) descriptors (\(Int(count) * Descriptor.size) bytes) but carries \(r.remaining) bytes")
            }
            guard count > 0 else { throw ProtocolError(.badCount, "SUBMIT to queue \(queue) carries no descriptors") }
            guard Int(count) <= maxDescriptors else {
                throw ProtocolError(.badCount, "SUBMIT carries \(count) descriptors; the most is \(maxDescriptors)")
            }
            let view = SubmitView(queue: queue, count: Int(count), body: r.readBytes(r.remaining)!, version: header.version)
            if validateDescriptors {
                for i in 0..<view.count { _ = try view.descriptor(at: i) }
            }
            return .submit(view)
        case .status:
            // Empty (the first page) or a paging body (SPEC.md §5.6).
            guard bodySize == 0 || bodySize == StatusRequest.size else {
                throw ProtocolError(.malformed, "STATUS body must be 0 or \(StatusRequest.size) bytes, got \(bodySize)")
            }
            guard bodySize > 0 else { return .status(nil) }
            let clientFrom: UInt64 = r.read()!
            let tenantFrom: UInt32 = r.read()!
            try reserved32(r.read()!, "reserved")
            return .status(StatusRequest(clientFrom: clientFrom, tenantFrom: tenantFrom))
        case .reserve:
            try expectBody(16)
            let queue: UInt32 = r.read()!
            let credits: UInt32 = r.read()!
            let flags: UInt32 = r.read()!
            guard flags & ~ReserveFlags.noWait == 0 else {
                throw ProtocolError(.unknownFlags, "RESERVE flag bits 0x\(String(flags & ~ReserveFlags.noWait, radix: 16)) are not defined")
            }
            try reserved32(r.read()!, "reserved")
            guard credits > 0 else { throw ProtocolError(.badCount, "RESERVE of 0 credits") }
            return .reserve(queue: queue, credits: credits, noWait: flags & ReserveFlags.noWait != 0)
        case .setCoalesce:
            try expectBody(8)
            return .setCoalesce(queue: r.read()!, microseconds: r.read()!)
        case .ring:
            try expectBody(8)
            let queue: UInt32 = r.read()!
            try reserved32(r.read()!, "reserved")
            return .ring(queue: queue)
        case .ringReply:
            try expectBody(24)
            let queue: UInt32 = r.read()!
            let sq: UInt32 = r.read()!
            let cq: UInt32 = r.read()!
            try reserved32(r.read()!, "reserved")
            return .ringReply(RingReply(queue: queue, submissionEntries: sq, completionEntries: cq, size: r.read()!))
        case .coalesceReply:
            try expectBody(8)
            let microseconds: UInt32 = r.read()!
            try reserved32(r.read()!, "reserved")
            return .coalesceReply(microseconds: microseconds)
        case .reserveReply:
            try expectBody(8)
            let free: UInt32 = r.read()!
            try reserved32(r.read()!, "reserved")
            return .reserveReply(freeCredits: free)
        case .freeReply:
            try expectBody(0)
            return .freeReply
        case .closeReply:
            try expectBody(0)
            return .closeReply
        case .helloReply:
            guard bodySize >= 48 else { throw ProtocolError(.malformed, "HELLO_OK body must be at least 48 bytes, got \(bodySize)") }
            let version: UInt16 = r.read()!
            let channelCount: UInt16 = r.read()!
            try expectBody(48 + Int(channelCount) * ChannelInfo.size)
            let maxMessage: UInt32 = r.read()!
            let features: UInt64 = r.read()!
            var reply = HelloReply(version: version, features: features, maxMessage: maxMessage,
                                   maxDescriptors: r.read()!, maxQueueDepth: r.read()!, maxQueues: r.read()!,
                                   maxBuffers: r.read()!, maxBufferBytes: r.read()!, hugepageSize: r.read()!,
                                   channels: [])
            for _ in 0..<channelCount {
                let index: UInt32 = r.read()!
                let rawEngine: UInt16 = r.read()!
                guard let engine = ChannelInfo.Engine(rawValue: rawEngine) else {
                    throw ProtocolError(.malformed, "channel \(index): engine kind \(rawEngine) is not defined")
                }
                let hw: UInt16 = r.read()!
                let opcodes: UInt64 = r.read()!
                let maxTransfer: UInt64 = r.read()!
                let maxDepth: UInt32 = r.read()!
                let coalesce: UInt32 = r.read()!
                let nameBytes = r.readBytes(16)!
                let name = String(decoding: nameBytes.prefix(while: { $0 != 0 }), as: UTF8.self)
                reply.channels.append(ChannelInfo(index: index, engine: engine, hardwareVersion: hw, opcodes: opcodes,
                                                  maxTransfer: maxTransfer, maxDepth: maxDepth,
                                                  maxCoalesceMicroseconds: coalesce, name: name))
            }
            return .helloReply(reply)
        case .allocReply, .registerReply:
            try expectBody(24)
            let handle: UInt32 = r.read()!
            let flags = BufferReply.Flags(rawValue: r.read()!)
            guard flags.subtracting(.defined).isEmpty else {
                throw ProtocolError(.unknownFlags, "\(type.name) flag bits 0x\(String(flags.subtracting(.defined).rawValue, radix: 16)) are not defined")
            }
            let reply = BufferReply(handle: handle, flags: flags, size: r.read()!, pageSize: r.read()!)
            return type == .allocReply ? .allocReply(reply) : .registerReply(reply)
        case .openReply:
            try expectBody(16)
            let reply = OpenReply(queue: r.read()!, channel: r.read()!, depth: r.read()!)
            try reserved32(r.read()!, "reserved")
            return .openReply(reply)
        case .statusReply:
            let bytes = r.readBytes(r.remaining)!
            guard let json = String(validating: bytes, as: UTF8.self) else {
                throw ProtocolError(.malformed, "STATUS_OK body is not UTF-8")
            }
            return .statusReply(json: json)
        case .completion:
            guard bodySize >= 8 else { throw ProtocolError(.malformed, "COMPLETION body must be at least 8 bytes, got \(bodySize)") }
            let queue: UInt32 = r.read()!
            let count: UInt32 = r.read()!
            guard r.remaining == Int(count) * CompletionRecord.size else {
                throw ProtocolError(.malformed, "COMPLETION says \(count) records but carries \(r.remaining) bytes")
            }
            let view = CompletionView(queue: queue, count: Int(count), body: r.readBytes(r.remaining)!)
            // Checked here, decoded once where they are used (`CompletionView.forEachRecord`).
            for i in 0..<view.count { try CompletionRecord.check(view.body, at: i * CompletionRecord.size, index: i) }
            return .completion(view)
        case .goodbye:
            try expectBody(8)
            let drain: UInt32 = r.read()!
            try reserved32(r.read()!, "reserved")
            return .goodbye(drainMilliseconds: drain)
        case .restarted:
            try expectBody(8)
            let flags: UInt32 = r.read()!
            guard flags & ~RestartNotice.flagLost == 0 else {
                throw ProtocolError(.unknownFlags, "RESTARTED flag bits 0x\(String(flags & ~RestartNotice.flagLost, radix: 16)) are not defined")
            }
            return .restarted(RestartNotice(lost: flags & RestartNotice.flagLost != 0, restarts: r.read()!))
        case .resync, .resyncReply:
            try expectBody(8)
            try reserved32(r.read()!, "reserved")
            try reserved32(r.read()!, "reserved")
            return type == .resync ? .resync : .resyncReply
        case .error:
            guard bodySize >= 16 else { throw ProtocolError(.malformed, "ERROR body must be at least 16 bytes, got \(bodySize)") }
            let code = ErrorCode(rawValue: r.read()!)
            let index: UInt32 = r.read()!
            let textLength: UInt32 = r.read()!
            // Version 3 names the ring queue of an unsolicited ERROR here; before, the field is reserved.
            let queue: UInt32 = r.read()!
            if header.version < 3 { try reserved32(queue, "reserved") }
            guard Int(textLength) == r.remaining else {
                throw ProtocolError(.malformed, "ERROR says \(textLength) text bytes but carries \(r.remaining)")
            }
            guard let text = String(validating: r.readBytes(r.remaining)!, as: UTF8.self) else {
                throw ProtocolError(.malformed, "ERROR text is not UTF-8")
            }
            return .error(ErrorReply(code: code, index: index, message: text, queue: queue))
        }
    }
}
