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
        case .refuse(let error, let requestID, let closes):
            fds.removeAll()
            refuse(connection, error, requestID: requestID, closes: closes)
        case .hello(let version, let offered, let requestID):
            connection.ringsGranted = version >= 3 && configuration.rings && offered & Wire.featureRings != 0
            // Restart support is granted only where there is a store to keep the connection in.
            connection.restartGranted = version >= 3 && ledger != nil && offered & Wire.featureRestart != 0
            let answer = HelloReply(
                version: version, features: (connection.ringsGranted ? Wire.featureRings : 0) | (connection.restartGranted ? Wire.featureRestart : 0), maxMessage: UInt32(configuration.maxMessage),
                maxDescriptors: UInt32(configuration.maxDescriptors), maxQueueDepth: UInt32(configuration.maxQueueDepth),
                maxQueues: UInt32(configuration.maxQueues), maxBuffers: UInt32(configuration.maxBuffers),
                maxBufferBytes: configuration.maxBufferBytes, hugepageSize: configuration.hugepages ? hugepageSize : 0,
                channels: engine.channels.map(\.info))
            persist()
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
            // The memfd goes to a setup thread, which closes it before the reply goes out.
            try handleRegister(connection, fds.removeFirst(), requestID: requestID)
        case .free(let handle): try handleFree(connection, handle: handle, requestID: requestID)
        case .open(let channel, let depth): try handleOpen(connection, channel: channel, depth: depth, requestID: requestID)
        case .close(let queue): try handleClose(connection, queue: queue, requestID: requestID)
        case .submit(let submit): try handleSubmit(connection, submit)
        case .status(let page):
            reply(connection, .statusReply(json: statusJSON(for: connection, page: page ?? .first, version: connection.version)), requestID: requestID)
        case .setCoalesce(let id, let microseconds):
            guard let queue = connection.queues[id] else {
                throw ProtocolError(.badQueue, "SET_COALESCE on queue \(id), which is not open on this connection")
            }
            let maximum = channels[queue.channel].engine.info.maxCoalesceMicroseconds
            guard microseconds <= maximum else {
                throw ProtocolError(.badPeriod, "coalescing period \(microseconds) µs is above channel \(queue.channel)'s maximum of \(maximum) µs")
            }
            queue.coalesceNanoseconds = UInt64(microseconds) * 1000
            persist()
            reply(connection, .coalesceReply(microseconds: microseconds), requestID: requestID)
        case .reserve(let queue, let credits, let noWait):
            try handleReserve(connection, queue: queue, credits: credits, noWait: noWait, requestID: requestID)
        case .ring(let queue): try handleRing(connection, queue: queue, requestID: requestID)
        case .resync:
            guard connection.restartGranted else {
                throw ProtocolError(.permissionDenied, "RESYNC: this connection was not granted restart support (HELLO feature bit 1 of version 3)")
            }
            connection.awaitingResync = false
            reply(connection, .resyncReply, requestID: requestID)
        default: preconditionFailure("the state machine passes on requests only, and answers HELLO itself")
        }
    }

    private func handleFree(_ connection: Connection, handle: UInt32, requestID: UInt64) throws(ProtocolError) {
        guard let buffer = connection.removeBuffer(handle) else {
            throw ProtocolError(.badHandle, "FREE of handle \(handle), which is not open on this connection")
        }
        // Unmapped now, or when the last op that names it finishes.
        releaseStoredFile(buffer)
        bufferTable.close(buffer.slot)
        persist()
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
        let id = nextHandle(for: connection)
        connection.add(Queue(id: id, channel: index, depth: Int(depth), connection: connection, lane: channels[index].lane(for: tenant)))
        channels[index].queueCount += 1
        persist()
        reply(connection, .openReply(OpenReply(queue: id, channel: UInt32(index), depth: depth)), requestID: requestID)
    }

    private func handleClose(_ connection: Connection, queue id: UInt32, requestID: UInt64) throws(ProtocolError) {
        guard let queue = connection.queues[id] else {
            throw ProtocolError(.badQueue, "CLOSE of queue \(id), which is not open on this connection")
        }
        if let ring = queue.ring, ring.broken == nil {
            // Records the client consumed since the loop last looked return their credits first.
            do throws(ProtocolError) {
                consumed(try ring.consumer.reclaim(), of: queue)
            } catch {
                breakRing(ring, error)
            }
        }
        guard queue.outstanding == 0 else {
            throw ProtocolError(.busy, "queue \(id) has \(queue.outstanding) ops whose completions are not delivered yet")
        }
        _ = connection.removeQueue(id)
        if let ring = queue.ring { dropRing(ring) }
        queue.connection = nil
        channels[queue.channel].queueCount -= 1
        persist()
        reply(connection, .closeReply, requestID: requestID)
    }

    /// RESERVE (SPEC.md §5.8): answered once the queue has `credits` free; parked like a SUBMIT until then.
    private func handleReserve(_ connection: Connection, queue id: UInt32, credits: UInt32, noWait: Bool,
                               requestID: UInt64) throws(ProtocolError) {
        guard let queue = connection.queues[id] else {
            throw ProtocolError(.badQueue, "RESERVE on queue \(id), which is not open on this connection")
        }
        try refuseIfRing(queue, "RESERVE")
        guard Int(credits) <= queue.depth else {
            throw ProtocolError(.badCount, "RESERVE of \(credits) credits on queue \(id) of depth \(queue.depth)")
        }
        if queue.freeCredits >= Int(credits) {
            reply(connection, .reserveReply(freeCredits: UInt32(queue.freeCredits)), requestID: requestID)
        } else if noWait {
            throw ProtocolError(.noSpace, "queue \(id) has \(queue.freeCredits) free credits; RESERVE asked for \(credits) (NO_WAIT)")
        } else {
            connection.park(.reserve(queue: queue, credits: Int(credits), requestID: requestID))
            parked.append(connection)
        }
    }

    /// Validates a whole SUBMIT, then queues all of it or none of it (SPEC.md §6.3): first what concerns
    /// the SUBMIT as a whole (its queue, its count against the depth), then each descriptor in turn.
    /// Parks the resolved ops when the queue lacks credits and no descriptor says NO_WAIT.
    private func handleSubmit(_ connection: Connection, _ submit: SubmitView) throws(ProtocolError) {
        // After RESTARTED with LOST the client failed what it had sent; what it sent before its RESYNC is
        // discarded, unanswered (SPEC.md §5.11).
        if connection.awaitingResync { return }
        guard let queue = connection.queues[submit.queue] else {
            throw ProtocolError(.badQueue, "SUBMIT to queue \(submit.queue), which is not open on this connection")
        }
        try refuseIfRing(queue, "SUBMIT")
        guard submit.count <= queue.depth else {
            throw ProtocolError(.badCount, "SUBMIT of \(submit.count) descriptors to queue \(queue.id) of depth \(queue.depth)")
        }
        // Resolved into reused scratch space; references to buffers are dropped on every exit.
        defer { submitScratch.removeAll(keepingCapacity: true) }
        let noWait = try channels[queue.channel].validator
            .validate(submit, buffers: connection, into: &submitScratch)
        guard submit.count <= queue.freeCredits else {
            if noWait {
                throw ProtocolError(.noSpace, "queue \(queue.id) has \(queue.freeCredits) free credits; the SUBMIT needs \(submit.count) (NO_WAIT)")
            }
            connection.park(.submit(queue: queue, ops: submitScratch))
            parked.append(connection)
            return
        }
        accept(submitScratch, into: queue)
    }

    /// Admits a SUBMIT's validated ops and pumps their channel.
    func accept(_ ops: [PendingOp], into queue: Queue) {
        let now = Clock.nanoseconds()
        let channel = channels[queue.channel]
        for op in ops { admit(op, into: queue, on: channel, at: now) }
        pump(queue)
    }
}
