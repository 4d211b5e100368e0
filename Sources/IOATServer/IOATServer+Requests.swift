import Glibc
import IOATProtocol
import IOATSystem

extension IOATServer {
    /// Checks the transport-level facts of a packet (size, attached descriptors), then handles it.
    /// Takes the packet's descriptors: none stays open past the reply.
    func handlePacket(_ connection: Connection, _ packet: inout ReceivedPacket) {
        var fds = packet.fds
        packet.fds = []
        let bytes = UnsafeRawBufferPointer(rebasing: connection.receiveBuffer[0..<packet.count])
        let requestID = WireReader(bytes).get(at: 16, as: UInt64.self) ?? 0
        if packet.isTruncated {
            fds.removeAll()
            refuse(connection, ProtocolError(.tooLarge, "packet of \(packet.fullSize) bytes exceeds the maximum of \(configuration.maxMessage)"),
                   requestID: requestID)
            return
        }
        if packet.foreignControl {
            fds.removeAll()
            refuse(connection, ProtocolError(.unexpectedFD, "control messages other than SCM_RIGHTS are not accepted; they were discarded"),
                   requestID: requestID)
            return
        }
        handleRequest(connection, packet: bytes, fds: &fds, fdsReceived: packet.fdsReceived)
    }

    /// Decodes and carries out one request. Every refusal is an ERROR with the spec's code. The server
    /// keeps no received descriptor: they are closed before the reply is sent, so a client that has the
    /// answer knows the server no longer holds them.
    func handleRequest(_ connection: Connection, packet: UnsafeRawBufferPointer, fds: inout [FileDescriptor], fdsReceived: Int = 0) {
        let requestID = WireReader(packet).get(at: 16, as: UInt64.self) ?? 0
        do throws(ProtocolError) {
            let (header, message) = try Message.decode(packet, version: connection.version,
                                                       maxDescriptors: configuration.maxDescriptors)
            guard let type = MessageType(rawValue: header.type), type.isRequest else {
                throw ProtocolError(.unexpectedType, "message type \(MessageType(rawValue: header.type)?.name ?? "?") is sent by the server, not to it")
            }
            let received = max(fdsReceived, fds.count)
            if type.carriesFD {
                guard received == 1 else {
                    throw ProtocolError(.missingFD, "\(type.name) needs exactly one file descriptor, got \(received)")
                }
            } else if received > 0 {
                throw ProtocolError(.unexpectedFD, "\(type.name) takes no file descriptors, got \(received); they were closed")
            }
            if !connection.negotiated && type != .hello {
                throw ProtocolError(.notNegotiated, "\(type.name) before HELLO; the first message must be HELLO")
            }
            if state != .serving && (type == .submit || type == .alloc || type == .register || type == .open) {
                throw ProtocolError(.shuttingDown, "the server is stopping and takes no new \(type.name)")
            }
            switch message {
            case .hello(let hello): try handleHello(connection, hello, requestID: requestID)
            case .alloc(let alloc): try handleAllocate(connection, alloc, requestID: requestID)
            case .register:
                // The memfd is closed at the end of this statement, before the reply goes out.
                let registered = try registerBuffer(connection, fds.removeFirst())
                reply(connection, .registerReply(registered), requestID: requestID)
            case .free(let handle): try handleFree(connection, handle: handle, requestID: requestID)
            case .open(let channel, let depth): try handleOpen(connection, channel: channel, depth: depth, requestID: requestID)
            case .close(let queue): try handleClose(connection, queue: queue, requestID: requestID)
            case .submit(let submit): try handleSubmit(connection, submit, packetLength: packet.count)
            case .status: reply(connection, .statusReply(json: statusJSON(for: connection.peer)), requestID: requestID)
            case .setCoalesce(let id, let microseconds):
                guard let queue = connection.queues[id] else {
                    throw ProtocolError(.badQueue, "SET_COALESCE on queue \(id), which is not open on this connection")
                }
                let maximum = schedulers[queue.channel].engine.info.maxCoalesceMicroseconds
                guard microseconds <= maximum else {
                    throw ProtocolError(.badPeriod, "coalescing period \(microseconds) µs is above channel \(queue.channel)'s maximum of \(maximum) µs")
                }
                queue.coalesceNanoseconds = UInt64(microseconds) * 1000
                reply(connection, .coalesceReply(microseconds: microseconds), requestID: requestID)
            case .reserve(let queue, let credits, let noWait):
                try handleReserve(connection, queue: queue, credits: credits, noWait: noWait, packetLength: packet.count, requestID: requestID)
            default: preconditionFailure("request types are covered above")
            }
        } catch {
            fds.removeAll()
            refuse(connection, error, requestID: requestID)
        }
    }

    private func handleHello(_ connection: Connection, _ hello: Hello, requestID: UInt64) throws(ProtocolError) {
        guard !connection.negotiated else { throw ProtocolError(.alreadyNegotiated, "HELLO was already answered on this connection") }
        let chosen = min(hello.maxVersion, Wire.version)
        guard chosen >= max(hello.minVersion, Wire.minimumVersion) else {
            throw ProtocolError(.unsupportedVersion,
                                "client speaks versions \(hello.minVersion)...\(hello.maxVersion); this server speaks \(Wire.minimumVersion)...\(Wire.version)")
        }
        connection.negotiated = true
        let answer = HelloReply(
            version: chosen, features: 0, maxMessage: UInt32(configuration.maxMessage),
            maxDescriptors: UInt32(configuration.maxDescriptors), maxQueueDepth: UInt32(configuration.maxQueueDepth),
            maxQueues: UInt32(configuration.maxQueues), maxBuffers: UInt32(configuration.maxBuffers),
            maxBufferBytes: configuration.maxBufferBytes, hugepageSize: configuration.hugepages ? hugepageSize : 0,
            channels: engine.channels.map(\.info))
        reply(connection, .helloReply(answer), requestID: requestID)
        connection.version = chosen  // HELLO_OK itself is framed with version 1, like HELLO
    }

    private func checkBufferQuota(_ connection: Connection, adding size: UInt64) throws(ProtocolError) {
        guard connection.buffers.count < configuration.maxBuffers else {
            throw ProtocolError(.quotaExceeded, "connection already has \(connection.buffers.count) buffers; the limit is \(configuration.maxBuffers)")
        }
        let (total, overflow) = connection.bufferBytes.addingReportingOverflow(size)
        guard !overflow, total <= configuration.maxBufferBytes else {
            throw ProtocolError(.quotaExceeded,
                                "\(size) more bytes would bring this connection to \(overflow ? "more than 2^64" : "\(total)") buffer bytes; the limit is \(configuration.maxBufferBytes)")
        }
        let tenant = connection.tenant
        let (tenantTotal, tenantOverflow) = tenant.bufferBytes.addingReportingOverflow(size)
        guard !tenantOverflow, tenantTotal <= tenant.limits.maxBufferBytes else {
            tenant.refusals += 1
            throw ProtocolError(.quotaExceeded,
                                "\(size) more bytes would bring uid \(tenant.uid) to \(tenantOverflow ? "more than 2^64" : "\(tenantTotal)") buffer bytes over all its connections; its limit is \(tenant.limits.maxBufferBytes) (policy: \(tenant.policySource))")
        }
    }

    /// A handle number for a new buffer or queue: unique across every connection of the server (until
    /// 2^32 handles have been made), so a number seen on another connection names nothing on this one.
    private func nextHandle(_ connection: Connection) -> UInt32 {
        repeat {
            handleCounter &+= 1
        } while handleCounter == 0 || connection.buffers[handleCounter] != nil || connection.queues[handleCounter] != nil
        return handleCounter
    }

    private func handleAllocate(_ connection: Connection, _ request: Alloc, requestID: UInt64) throws(ProtocolError) {
        let wantHuge = request.pages != .normal && configuration.hugepages && hugepageSize > 0
        if request.pages == .requireHuge && !wantHuge {
            throw ProtocolError(.noHugepages, "ALLOC of \(request.size) bytes requires hugepages, but this server has none configured")
        }
        func rounded(_ page: UInt64) throws(ProtocolError) -> UInt64 {
            let (sum, overflow) = request.size.addingReportingOverflow(page - 1)
            guard !overflow, sum / page * page <= UInt64(Int.max) else {
                throw ProtocolError(.badLength, "ALLOC size \(request.size) is too large")
            }
            return sum / page * page
        }
        let smallPage = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        try checkBufferQuota(connection, adding: try rounded(smallPage))
        let handle = nextHandle(connection)
        let name = "ioatd:\(connection.id):\(handle)"

        var created: (FileDescriptor, Mapping, UInt64)? = nil
        var hugeFailure: SystemError? = nil
        if wantHuge {
            let size = try rounded(hugepageSize)
            try checkBufferQuota(connection, adding: size)
            do throws(SystemError) {
                let fd = try Memfd.create(name: name, size: size, hugepages: true)
                created = (fd, try Mapping(fd: fd, length: Int(size), writable: true, populate: true), hugepageSize)
            } catch {
                hugeFailure = error
            }
        }
        if created == nil {
            if request.pages == .requireHuge {
                throw ProtocolError(.noHugepages, "ALLOC of \(request.size) bytes requires hugepages: \(hugeFailure.map { "\($0)" } ?? "none")")
            }
            if let hugeFailure {
                logger.warning("hugepages unavailable; using 4 KiB pages", metadata: [
                    "client": "\(connection.id)", "size": "\(request.size)", "error": "\(hugeFailure)",
                ])
            }
            let size = try rounded(smallPage)
            do throws(SystemError) {
                let fd = try Memfd.create(name: name, size: size, hugepages: false)
                created = (fd, try Mapping(fd: fd, length: Int(size), writable: true, populate: true), smallPage)
            } catch {
                throw ProtocolError(.noMemory, "ALLOC of \(request.size) bytes failed: \(error)")
            }
        }
        let (fd, mapping, pageSize) = created!
        do throws(SystemError) {
            try Memfd.addSeals([.shrink, .grow, .seal], to: fd)
        } catch {
            throw ProtocolError(.internal, "sealing the new buffer failed: \(error)")
        }
        var flags: BufferReply.Flags = pageSize > smallPage ? [.hugepages] : []
        if configuration.lockBuffers {
            do throws(SystemError) {
                try mapping.lock()
                flags.insert(.locked)
            } catch {
                logger.debug("mlock failed; buffer not locked", metadata: ["client": "\(connection.id)", "error": "\(error)"])
            }
        }
        let buffer = SharedBuffer(handle: handle, mapping: mapping, flags: flags, pageSize: pageSize,
                                  registration: try registerWithEngine(mapping, pageSize: pageSize, what: "ALLOC of \(request.size) bytes"))
        connection.add(buffer)
        reply(connection, .allocReply(buffer.reply), requestID: requestID, fds: [fd])
    }

    /// Makes a new buffer's mapping reachable by the engine's devices (nothing for the CPU engine).
    private func registerWithEngine(_ mapping: Mapping, pageSize: UInt64, what: String) throws(ProtocolError) -> AnyObject? {
        do throws(SystemError) {
            return try engine.register(memory: mapping.unsafeBytes, pageSize: Int(pageSize))
        } catch {
            throw ProtocolError(.noMemory, "\(what): making it DMA-addressable failed: \(error)")
        }
    }

    /// Maps a client memfd as a new buffer (SPEC.md §5.2) and returns its description.
    private func registerBuffer(_ connection: Connection, _ fd: FileDescriptor) throws(ProtocolError) -> BufferReply {
        let seals: Seals
        do throws(SystemError) {
            seals = try Memfd.seals(of: fd)
        } catch {
            throw ProtocolError(.notMemfd, "REGISTER takes a memfd; descriptor \(fd.rawValue) is not sealable (\(error))")
        }
        guard Memfd.isMemfd(fd) else {
            throw ProtocolError(.notMemfd, "REGISTER takes a memfd; the descriptor passed is another kind of file")
        }
        guard seals.contains(.shrink) else {
            throw ProtocolError(.notSealed, "REGISTER needs F_SEAL_SHRINK on the memfd (seals present: 0x\(String(seals.rawValue, radix: 16)))")
        }
        let size: UInt64
        let blockSize: UInt64
        do throws(SystemError) {
            size = try fd.size()
            blockSize = try fd.blockSize()
        } catch {
            throw ProtocolError(.internal, "fstat on the registered memfd failed: \(error)")
        }
        guard size > 0 else { throw ProtocolError(.badLength, "REGISTER of an empty memfd (size 0)") }
        guard size <= UInt64(Int.max) else { throw ProtocolError(.badLength, "REGISTER of a memfd of \(size) bytes is too large") }
        try checkBufferQuota(connection, adding: size)
        var flags: BufferReply.Flags = []
        let mapping: Mapping
        do throws(SystemError) {
            mapping = try Mapping(fd: fd, length: Int(size), writable: true, populate: true)
        } catch where error.errno == EPERM || error.errno == EACCES {
            do throws(SystemError) {
                mapping = try Mapping(fd: fd, length: Int(size), writable: false, populate: true)
                flags.insert(.readOnly)
            } catch {
                throw ProtocolError(.noMemory, "mapping the registered memfd (\(size) bytes) failed: \(error)")
            }
        } catch {
            throw ProtocolError(.noMemory, "mapping the registered memfd (\(size) bytes) failed: \(error)")
        }
        let smallPage = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        if blockSize > smallPage { flags.insert(.hugepages) }
        let pageSize = max(blockSize, smallPage)
        let registration = try registerWithEngine(mapping, pageSize: pageSize, what: "REGISTER of a memfd of \(size) bytes")
        let handle = nextHandle(connection)
        let buffer = SharedBuffer(handle: handle, mapping: mapping, flags: flags, pageSize: pageSize, registration: registration)
        connection.add(buffer)
        return buffer.reply
    }

    private func handleFree(_ connection: Connection, handle: UInt32, requestID: UInt64) throws(ProtocolError) {
        guard connection.removeBuffer(handle) != nil else {
            throw ProtocolError(.badHandle, "FREE of handle \(handle), which is not open on this connection")
        }
        reply(connection, .freeReply, requestID: requestID)
    }

    private func handleOpen(_ connection: Connection, channel: UInt32, depth: UInt32, requestID: UInt64) throws(ProtocolError) {
        guard connection.queues.count < configuration.maxQueues else {
            throw ProtocolError(.quotaExceeded, "connection already has \(connection.queues.count) queues; the limit is \(configuration.maxQueues)")
        }
        let tenant = connection.tenant
        guard tenant.queues < tenant.limits.maxQueues else {
            tenant.refusals += 1
            throw ProtocolError(.quotaExceeded,
                                "uid \(tenant.uid) already has \(tenant.queues) queues over all its connections; its limit is \(tenant.limits.maxQueues) (policy: \(tenant.policySource))")
        }
        let index: Int
        if channel == Wire.anyChannel {
            index = schedulers.indices.min { schedulers[$0].queueCount < schedulers[$1].queueCount }!
        } else {
            guard Int(channel) < schedulers.count else {
                throw ProtocolError(.badChannel, "channel \(channel) does not exist; this server has channels 0...\(schedulers.count - 1)")
            }
            index = Int(channel)
        }
        let maxDepth = min(configuration.maxQueueDepth, Int(schedulers[index].engine.info.maxDepth))
        guard depth >= 1, Int(depth) <= maxDepth else {
            throw ProtocolError(.badDepth, "queue depth \(depth) is outside 1...\(maxDepth)")
        }
        guard tenant.inflightCapacity + Int(depth) <= tenant.limits.maxInflight else {
            tenant.refusals += 1
            throw ProtocolError(.quotaExceeded,
                                "a queue of depth \(depth) would let uid \(tenant.uid) have \(tenant.inflightCapacity + Int(depth)) descriptors in flight; its limit is \(tenant.limits.maxInflight) (policy: \(tenant.policySource))")
        }
        let id = nextHandle(connection)
        connection.add(Queue(id: id, channel: index, depth: Int(depth), connection: connection, lane: schedulers[index].lane(for: tenant)))
        schedulers[index].queueCount += 1
        reply(connection, .openReply(OpenReply(queue: id, channel: UInt32(index), depth: depth)), requestID: requestID)
    }

    private func handleClose(_ connection: Connection, queue id: UInt32, requestID: UInt64) throws(ProtocolError) {
        guard let queue = connection.queues[id] else {
            throw ProtocolError(.badQueue, "CLOSE of queue \(id), which is not open on this connection")
        }
        guard queue.outstanding == 0 else {
            throw ProtocolError(.busy, "queue \(id) has \(queue.outstanding) ops whose completions are not delivered yet")
        }
        _ = connection.removeQueue(id)
        queue.connection = nil
        schedulers[queue.channel].queueCount -= 1
        reply(connection, .closeReply, requestID: requestID)
    }

    /// RESERVE (SPEC.md §5.8): answered once the queue has `credits` free; parked like a SUBMIT until then.
    private func handleReserve(_ connection: Connection, queue id: UInt32, credits: UInt32, noWait: Bool, packetLength: Int,
                               requestID: UInt64) throws(ProtocolError) {
        guard let queue = connection.queues[id] else {
            throw ProtocolError(.badQueue, "RESERVE on queue \(id), which is not open on this connection")
        }
        guard Int(credits) <= queue.depth else {
            throw ProtocolError(.badCount, "RESERVE of \(credits) credits on queue \(id) of depth \(queue.depth)")
        }
        if queue.freeCredits >= Int(credits) {
            reply(connection, .reserveReply(freeCredits: UInt32(queue.freeCredits)), requestID: requestID)
        } else if noWait {
            throw ProtocolError(.noSpace, "queue \(id) has \(queue.freeCredits) free credits; RESERVE asked for \(credits) (NO_WAIT)")
        } else {
            connection.parkedLength = packetLength
            parked.append(connection)
        }
    }

    /// Resolves a descriptor's range in one of the connection's buffers (SPEC.md §6.3).
    private func resolve(_ connection: Connection, _ address: BufferAddress, length: UInt64, role: String, index: Int,
                         writing: Bool) throws(ProtocolError) -> Placement {
        guard let buffer = connection.buffers[address.handle] else {
            throw ProtocolError(.badHandle, "descriptor \(index): \(role) handle \(address.handle) is not open on this connection",
                                index: UInt32(index))
        }
        let (end, overflow) = address.offset.addingReportingOverflow(length)
        guard !overflow else {
            throw ProtocolError(.overflow, "descriptor \(index): \(role) offset \(address.offset) + length \(length) overflows 64 bits",
                                index: UInt32(index))
        }
        guard end <= buffer.size else {
            throw ProtocolError(.outOfRange,
                                "descriptor \(index): \(role) offset \(address.offset) + length \(length) exceeds buffer \(address.handle) (size \(buffer.size))",
                                index: UInt32(index))
        }
        if writing && buffer.flags.contains(.readOnly) {
            throw ProtocolError(.readOnly, "descriptor \(index): \(role) buffer \(address.handle) is registered read-only",
                                index: UInt32(index))
        }
        return Placement(buffer: buffer, offset: Int(address.offset))
    }

    /// Resolves every range a descriptor names (SPEC.md §6.3 step 4), copying an XOR source list out of
    /// the client's memory so it cannot change after validation.
    private func resolveAll(_ connection: Connection, _ d: Descriptor, index i: Int) throws(ProtocolError) -> PendingOp {
        var op = PendingOp(cookie: d.cookie, opcode: d.opcode, flags: d.flags, source: nil, destination: nil, auxiliary: nil,
                           sources: nil, segments: nil, length: Int(clamping: d.length), arg: d.arg)
        if d.opcode.readsSource {
            op.source = try resolve(connection, d.source, length: d.length, role: "source", index: i, writing: false)
        }
        if d.opcode.usesDestination {
            op.destination = try resolve(connection, d.destination, length: d.length, role: "destination", index: i,
                                         writing: d.opcode.writesDestination)
        }
        switch d.opcode {
        case .dualcast:
            op.auxiliary = try resolve(connection, d.auxiliary, length: d.length, role: "second destination", index: i, writing: true)
        case .crc32c, .copyCRC32C:
            // (A `where` here would bind to .copyCRC32C alone.)
            guard !d.flags.isDisjoint(with: [.crcStore, .crcTest]) else { break }
            let store = d.flags.contains(.crcStore)
            if !d.flags.contains(.crcInline) {
                op.auxiliary = try resolve(connection, d.auxiliary, length: 4, role: store ? "CRC store" : "CRC test", index: i, writing: store)
            } else {
                // Inline: STORE after the destination data (after the source for CRC32C), TEST against the
                // 4 bytes after the source (ioat(4) DMA_CRC_INLINE).
                let base = store && d.opcode == .copyCRC32C ? d.destination : d.source
                let (at, overflow) = base.offset.addingReportingOverflow(d.length)
                guard !overflow else {
                    throw ProtocolError(.overflow, "descriptor \(i): inline CRC at offset \(base.offset) + length \(d.length) overflows 64 bits",
                                        index: UInt32(i))
                }
                op.auxiliary = try resolve(connection, BufferAddress(handle: base.handle, offset: at), length: 4,
                                           role: store ? "inline CRC store" : "inline CRC test", index: i, writing: store)
            }
        case .xor:
            let count = Int(d.arg)
            let list = try resolve(connection, d.auxiliary, length: UInt64(count * Descriptor.xorSourceEntrySize),
                                   role: "XOR source list", index: i, writing: false)
            var sources: [Placement] = []
            sources.reserveCapacity(count)
            let bytes = UnsafeRawBufferPointer(start: list.pointer, count: count * Descriptor.xorSourceEntrySize)
            let reader = WireReader(bytes)
            for s in 0..<count {
                let handle: UInt32 = reader.get(at: s * 16)!
                let reserved: UInt32 = reader.get(at: s * 16 + 4)!
                let offset: UInt64 = reader.get(at: s * 16 + 8)!
                guard reserved == 0 else {
                    throw ProtocolError(.reservedNotZero, "descriptor \(i): XOR source \(s) has reserved field \(reserved), must be 0",
                                        index: UInt32(i))
                }
                sources.append(try resolve(connection, BufferAddress(handle: handle, offset: offset), length: d.length,
                                           role: "XOR source \(s)", index: i, writing: false))
            }
            op.sources = sources
        case .copySG:
            let count = Int(d.arg)
            let list = try resolve(connection, d.auxiliary, length: UInt64(count * Descriptor.sgEntrySize),
                                   role: "COPY_SG entry list", index: i, writing: false)
            let reader = WireReader(UnsafeRawBufferPointer(start: list.pointer, count: count * Descriptor.sgEntrySize))
            var segments: [(source: Placement, destination: Placement, length: Int)] = []
            segments.reserveCapacity(count)
            var total: UInt64 = 0
            for e in 0..<count {
                let at = e * Descriptor.sgEntrySize
                let srcHandle: UInt32 = reader.get(at: at)!
                let dstHandle: UInt32 = reader.get(at: at + 4)!
                let srcOffset: UInt64 = reader.get(at: at + 8)!
                let dstOffset: UInt64 = reader.get(at: at + 16)!
                let length: UInt64 = reader.get(at: at + 24)!
                guard length > 0 else {
                    throw ProtocolError(.badLength, "descriptor \(i): COPY_SG entry \(e) has length 0", index: UInt32(i))
                }
                total = total &+ length
                let source = try resolve(connection, BufferAddress(handle: srcHandle, offset: srcOffset), length: length,
                                         role: "COPY_SG entry \(e) source", index: i, writing: false)
                let destination = try resolve(connection, BufferAddress(handle: dstHandle, offset: dstOffset), length: length,
                                              role: "COPY_SG entry \(e) destination", index: i, writing: true)
                segments.append((source, destination, Int(length)))
            }
            guard total == d.length else {
                throw ProtocolError(.badLength, "descriptor \(i): COPY_SG length \(d.length) is not the sum of its entries (\(total))",
                                    index: UInt32(i))
            }
            op.segments = segments
        default:
            break
        }
        return op
    }

    /// Validates a whole SUBMIT, then queues all of it or none of it (SPEC.md §6.3). Parks it when the
    /// queue lacks credits and no descriptor says NO_WAIT.
    private func handleSubmit(_ connection: Connection, _ submit: SubmitView, packetLength: Int) throws(ProtocolError) {
        guard let queue = connection.queues[submit.queue] else {
            throw ProtocolError(.badQueue, "SUBMIT to queue \(submit.queue), which is not open on this connection")
        }
        guard submit.count <= queue.depth else {
            throw ProtocolError(.badCount, "SUBMIT of \(submit.count) descriptors to queue \(queue.id) of depth \(queue.depth)")
        }
        let info = schedulers[queue.channel].engine.info
        var noWait = false
        // Resolve every descriptor once, into reused scratch space, before any is queued: the SUBMIT is
        // all or nothing, and an XOR source list is read from client memory exactly once.
        submitScratch.removeAll(keepingCapacity: true)
        defer { submitScratch.removeAll(keepingCapacity: true) }  // drop buffer references on every exit
        for i in 0..<submit.count {
            let d = try submit.descriptor(at: i)
            guard info.supports(d.opcode) else {
                throw ProtocolError(.unsupportedOpcode, "descriptor \(i): channel \(info.index) (\(info.name)) does not run \(d.opcode.name)",
                                    index: UInt32(i))
            }
            submitScratch.append(try resolveAll(connection, d, index: i))
            if d.flags.contains(.noWait) { noWait = true }
        }
        if submit.count > queue.freeCredits {
            if noWait {
                throw ProtocolError(.noSpace, "queue \(queue.id) has \(queue.freeCredits) free credits; the SUBMIT needs \(submit.count) (NO_WAIT)")
            }
            connection.parkedLength = packetLength
            parked.append(connection)
            return
        }
        let now = Clock.nanoseconds()
        for var op in submitScratch {
            op.serial = nextSerial
            op.acceptedAt = now
            nextSerial += 1
            queue.pending.append(op)
        }
        queue.outstanding += submit.count
        let scheduler = schedulers[queue.channel]
        scheduler.schedule(queue)
        scheduler.dispatch()
        flushMarked()
    }
}
