import Glibc
import IOATProtocol
import IOATSystem

extension IOATServer {
    /// Takes one received packet through the connection's state machine (SPEC.md §2.2's order), then
    /// carries out the request it holds. Takes the packet's descriptors: none stays open past the reply.
    func handlePacket(_ connection: Connection, _ packet: inout ReceivedPacket) {
        var fds = packet.fds
        packet.fds = []
        let bytes = UnsafeRawBufferPointer(rebasing: connection.receiveBuffer[0..<packet.count])
        let facts = PacketFacts(size: packet.fullSize, descriptors: packet.fdsReceived,
                                descriptorsOverflowed: packet.descriptorsOverflowed, foreignControl: packet.foreignControl)
        switch connection.machine.receive(bytes, facts, stopping: state != .serving) {
        case .refuse(let error, let requestID, _):
            fds.removeAll()
            refuse(connection, error, requestID: requestID)
        case .hello(let version, let requestID):
            let answer = HelloReply(
                version: version, features: 0, maxMessage: UInt32(configuration.maxMessage),
                maxDescriptors: UInt32(configuration.maxDescriptors), maxQueueDepth: UInt32(configuration.maxQueueDepth),
                maxQueues: UInt32(configuration.maxQueues), maxBuffers: UInt32(configuration.maxBuffers),
                maxBufferBytes: configuration.maxBufferBytes, hugepageSize: configuration.hugepages ? hugepageSize : 0,
                channels: engine.channels.map(\.info))
            reply(connection, .helloReply(answer), requestID: requestID)  // framed with version 1, like HELLO
        case .request(let message, let requestID):
            do throws(ProtocolError) {
                try carryOut(message, on: connection, requestID: requestID, fds: &fds)
            } catch {
                fds.removeAll()
                refuse(connection, error, requestID: requestID)
            }
        }
    }

    /// Carries out one checked request. Every refusal is an ERROR with the spec's code. The server keeps
    /// no received descriptor: they are closed before the reply is sent, so a client that has the answer
    /// knows the server no longer holds them.
    private func carryOut(_ message: Message, on connection: Connection, requestID: UInt64,
                          fds: inout [FileDescriptor]) throws(ProtocolError) {
        switch message {
        case .alloc(let alloc): try handleAllocate(connection, alloc, requestID: requestID)
        case .register:
            // The memfd is closed at the end of this statement, before the reply goes out.
            let registered = try registerBuffer(connection, fds.removeFirst())
            reply(connection, .registerReply(registered), requestID: requestID)
        case .free(let handle): try handleFree(connection, handle: handle, requestID: requestID)
        case .open(let channel, let depth): try handleOpen(connection, channel: channel, depth: depth, requestID: requestID)
        case .close(let queue): try handleClose(connection, queue: queue, requestID: requestID)
        case .submit(let submit): try handleSubmit(connection, submit)
        case .status(let page):
            reply(connection, .statusReply(json: statusJSON(for: connection.peer, page: page ?? .first, version: connection.version)), requestID: requestID)
        case .setCoalesce(let id, let microseconds):
            guard let queue = connection.queues[id] else {
                throw ProtocolError(.badQueue, "SET_COALESCE on queue \(id), which is not open on this connection")
            }
            let maximum = channels[queue.channel].engine.info.maxCoalesceMicroseconds
            guard microseconds <= maximum else {
                throw ProtocolError(.badPeriod, "coalescing period \(microseconds) µs is above channel \(queue.channel)'s maximum of \(maximum) µs")
            }
            queue.coalesceNanoseconds = UInt64(microseconds) * 1000
            reply(connection, .coalesceReply(microseconds: microseconds), requestID: requestID)
        case .reserve(let queue, let credits, let noWait):
            try handleReserve(connection, queue: queue, credits: credits, noWait: noWait, requestID: requestID)
        default: preconditionFailure("the state machine passes on requests only, and answers HELLO itself")
        }
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

    /// Whether `size` more buffer bytes fit the connection's and its tenant's limits (no refusal counted).
    private func fitsBufferQuota(_ connection: Connection, adding size: UInt64) -> Bool {
        let (total, overflow) = connection.bufferBytes.addingReportingOverflow(size)
        let (tenantTotal, tenantOverflow) = connection.tenant.bufferBytes.addingReportingOverflow(size)
        return !overflow && total <= configuration.maxBufferBytes && !tenantOverflow
            && tenantTotal <= connection.tenant.limits.maxBufferBytes
    }

    /// A handle number for a new buffer or queue: unique across every connection of the server (until
    /// 2^32 handles have been made), so a number seen on another connection names nothing on this one.
    private func nextHandle(_ connection: Connection) -> UInt32 {
        repeat {
            handleCounter &+= 1
        } while handleCounter == 0 || connection.buffers.contains(handleCounter) || connection.queues[handleCounter] != nil
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
        // The quota is checked against what will really be charged: the hugepage-rounded size only when
        // hugepages are tried. A preferred hugepage buffer that would go over the quota where 4 KiB pages
        // would not is made of 4 KiB pages (SPEC.md §5.1).
        try checkBufferQuota(connection, adding: try rounded(smallPage))
        var tryHuge = wantHuge
        if wantHuge {
            let size = try rounded(hugepageSize)
            if request.pages == .requireHuge {
                try checkBufferQuota(connection, adding: size)
            } else if !fitsBufferQuota(connection, adding: size) {
                tryHuge = false
            }
        }
        let handle = nextHandle(connection)
        let name = "ioatd:\(connection.id):\(handle)"

        var created: (FileDescriptor, Mapping, UInt64)? = nil
        var hugeFailure: SystemError? = nil
        if tryHuge {
            let size = try rounded(hugepageSize)
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
            index = channels.indices.min { channels[$0].queueCount < channels[$1].queueCount }!
        } else {
            guard Int(channel) < channels.count else {
                throw ProtocolError(.badChannel, "channel \(channel) does not exist; this server has channels 0...\(channels.count - 1)")
            }
            index = Int(channel)
        }
        let maxDepth = min(configuration.maxQueueDepth, Int(channels[index].engine.info.maxDepth))
        guard depth >= 1, Int(depth) <= maxDepth else {
            throw ProtocolError(.badDepth, "queue depth \(depth) is outside 1...\(maxDepth)")
        }
        guard tenant.inflightCapacity + Int(depth) <= tenant.limits.maxInflight else {
            tenant.refusals += 1
            throw ProtocolError(.quotaExceeded,
                                "a queue of depth \(depth) would let uid \(tenant.uid) have \(tenant.inflightCapacity + Int(depth)) descriptors in flight; its limit is \(tenant.limits.maxInflight) (policy: \(tenant.policySource))")
        }
        let id = nextHandle(connection)
        connection.add(Queue(id: id, channel: index, depth: Int(depth), connection: connection, lane: channels[index].lane(for: tenant)))
        channels[index].queueCount += 1
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
        channels[queue.channel].queueCount -= 1
        reply(connection, .closeReply, requestID: requestID)
    }

    /// RESERVE (SPEC.md §5.8): answered once the queue has `credits` free; parked like a SUBMIT until then.
    private func handleReserve(_ connection: Connection, queue id: UInt32, credits: UInt32, noWait: Bool,
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
            connection.parked = .reserve(queue: queue, credits: Int(credits), requestID: requestID)
            parked.append(connection)
        }
    }

    /// Validates a whole SUBMIT, then queues all of it or none of it (SPEC.md §6.3): first what concerns
    /// the SUBMIT as a whole (its queue, its count against the depth), then each descriptor in turn.
    /// Parks the resolved ops when the queue lacks credits and no descriptor says NO_WAIT.
    private func handleSubmit(_ connection: Connection, _ submit: SubmitView) throws(ProtocolError) {
        guard let queue = connection.queues[submit.queue] else {
            throw ProtocolError(.badQueue, "SUBMIT to queue \(submit.queue), which is not open on this connection")
        }
        guard submit.count <= queue.depth else {
            throw ProtocolError(.badCount, "SUBMIT of \(submit.count) descriptors to queue \(queue.id) of depth \(queue.depth)")
        }
        // Resolved into reused scratch space; references to buffers are dropped on every exit.
        defer { submitScratch.removeAll(keepingCapacity: true) }
        let noWait = try SubmitValidator(channel: channels[queue.channel].engine.info)
            .validate(submit, buffers: connection, into: &submitScratch)
        guard submit.count <= queue.freeCredits else {
            if noWait {
                throw ProtocolError(.noSpace, "queue \(queue.id) has \(queue.freeCredits) free credits; the SUBMIT needs \(submit.count) (NO_WAIT)")
            }
            connection.parked = .submit(queue: queue, ops: submitScratch)
            parked.append(connection)
            return
        }
        accept(submitScratch, into: queue)
    }

    /// Queues validated ops and starts what the channel's window takes.
    func accept(_ ops: [PendingOp], into queue: Queue) {
        let now = Clock.nanoseconds()
        for var op in ops {
            op.serial = nextSerial
            op.acceptedAt = now
            nextSerial += 1
            queue.pending.append(op)
        }
        queue.takeCredits(ops.count)
        let channel = channels[queue.channel]
        channel.schedule(queue)
        channel.dispatch()
        deliver()
    }
}
