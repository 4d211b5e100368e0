import IOATProtocol
import IOATSystem

/// Ring queues (SPEC.md §5.10): making them, taking descriptors out of them, sleeping and waking.
/// A ring is only an ingress: what it yields goes through `SubmitValidator` and `accept`, the same path
/// as a SUBMIT, and its records leave through the `CompletionRouter`.
extension IOATServer {
    /// RING: turns an open, idle queue into a ring queue and sends the ring memfd and doorbell.
    func handleRing(_ connection: Connection, queue id: UInt32, requestID: UInt64) throws(ProtocolError) {
        guard connection.ringsGranted else {
            throw ProtocolError(.permissionDenied, "RING on queue \(id): this connection was not granted rings (HELLO feature bit 0 of version 3\(configuration.rings ? "" : "; this server has rings turned off"))")
        }
        guard let queue = connection.queues[id] else {
            throw ProtocolError(.badQueue, "RING on queue \(id), which is not open on this connection")
        }
        guard queue.ring == nil else { throw ProtocolError(.badQueue, "queue \(id) is already a ring queue") }
        guard queue.outstanding == 0 else {
            throw ProtocolError(.busy, "queue \(id) has \(queue.outstanding) ops outstanding; RING needs an idle queue")
        }
        try checkStoreRoom(2)
        let token = nextRingToken
        nextRingToken += 1
        let made: (ServerRing, memfd: FileDescriptor, doorbell: FileDescriptor)
        do throws(SystemError) {
            made = try ServerRing.make(queue: queue, token: token)
            try epoll.add(made.0.doorbell.rawValue, .readable, token: token)
        } catch {
            throw ProtocolError(.noMemory, "could not make the ring of queue \(id): \(error)")
        }
        let ring = made.0
        queue.ring = ring
        rings[token] = ring
        ringList.append(ring)
        if let ledger {
            ledger.keep(made.memfd, name: StoreName.ringMemory(token))
            ledger.keep(ring.doorbell, name: StoreName.doorbell(token))
            persist()
        }
        let layout = ring.consumer.layout
        reply(connection, .ringReply(RingReply(queue: id, submissionEntries: layout.submissionCount,
                                               completionEntries: layout.completionCount, size: UInt64(layout.size))),
              requestID: requestID, fds: [made.memfd, made.doorbell])
    }

    /// SUBMIT and RESERVE are for queues fed by SUBMIT; a ring queue's client submits and counts its
    /// credits in the ring.
    func refuseIfRing(_ queue: Queue, _ request: String) throws(ProtocolError) {
        guard queue.ring != nil else { return }
        throw ProtocolError(.badQueue, "\(request) on queue \(queue.id), which is a ring queue: use its ring")
    }

    /// Looks at every ring once; returns whether any moved.
    func pollRings() -> Bool {
        var moved = false
        for ring in ringList where ingest(ring) { moved = true }
        return moved
    }

    /// The client rang: empties the doorbell (a bounded amount) and looks at the ring.
    func doorbellRang(_ ring: ServerRing) {
        UnixSocket.drainDoorbell(ring.doorbell)
        _ = ingest(ring)
    }

    /// Before the loop sleeps: sets NEED_WAKEUP on every ring, fences, and looks once more. Returns true
    /// when the loop may sleep; false (every flag cleared again) when a ring moved meanwhile.
    func armRings() -> Bool {
        for ring in ringList where ring.broken == nil && !ring.sleeping {
            ring.sleeping = true
            ring.consumer.setNeedWakeup(true)
        }
        var moved = false
        for ring in ringList where ingest(ring, stayAsleep: true) { moved = true }
        if moved {
            for ring in ringList where ring.sleeping {
                ring.sleeping = false
                ring.consumer.setNeedWakeup(false)
            }
        }
        return !moved
    }

    /// Takes back the credits of the records the client consumed, then takes what the client published,
    /// as far as the queue's credits go: each descriptor is copied out of shared memory once, then
    /// validated like a SUBMIT's; one the SUBMIT path would refuse becomes a record with that refusal
    /// (SPEC.md §5.10.4), and the queue goes on. Indices that break the ring's rules fail the queue with
    /// RING_BROKEN. Returns whether anything moved.
    @discardableResult
    func ingest(_ ring: ServerRing, stayAsleep: Bool = false) -> Bool {
        guard ring.broken == nil, let queue = ring.queue, let connection = queue.connection, !connection.isClosed else { return false }
        if ring.sleeping && !stayAsleep {
            ring.sleeping = false
            ring.consumer.setNeedWakeup(false)
        }
        var moved = false
        do throws(ProtocolError) {
            let consumed = try ring.consumer.reclaim()
            if consumed > 0 {
                self.consumed(consumed, of: queue)
                moved = true
            }
            let waiting = try ring.consumer.available()
            // While stopping, no new work: descriptors stay in the ring (SPEC.md §5.7).
            // Output the socket would not take (refusal texts, say) holds the ring back, as it holds a
            // connection's requests back (SPEC.md §8).
            let count = state == .serving && connection.backlog.isEmpty ? min(waiting, queue.freeCredits, configuration.maxDescriptors) : 0
            guard count > 0 else { return moved }
            let channel = channels[queue.channel]
            let firstEntry = ring.consumer.submissionHead
            // sq_head moves only once the descriptors and the XOR and COPY_SG lists they name have been
            // read: a client that reuses a list as soon as it sees sq_head pass cannot change what runs.
            ring.consumer.copyOut(count, into: ringScratch)
            let ranUntil = resolveRingDescriptors(count, firstEntry: firstEntry, ring: ring, queue: queue, on: channel, connection: connection)
            ring.consumer.handBack(count)
            guard !connection.isClosed else { return true }
            connection.requests += 1
            pump(queue, on: channel, now: ranUntil)
            return true
        } catch {
            breakRing(ring, error)
            return true
        }
    }

    /// Validates the `count` descriptors copied into `ringScratch`, one at a time, straight into the
    /// queue (its credits were counted before they were taken). While nothing of the queue waits and the
    /// channel is free (`Channel.runsNow`), a common small op runs at once and its record goes straight
    /// into the ring; from the first op that cannot, the rest are admitted behind it, in order. A
    /// refusal's text goes to the client in an ERROR naming the queue and the ring entry (SPEC.md
    /// §5.10.4), sent before its record is visible.
    /// Returns when the ops it ran at once were done (0 when it ran none).
    private func resolveRingDescriptors(_ count: Int, firstEntry: UInt32, ring: ServerRing, queue: Queue, on channel: Channel,
                                        connection: Connection) -> UInt64 {
        let descriptors = UnsafeRawBufferPointer(start: ringScratch, count: count * Descriptor.size)
        let now = Clock.nanoseconds()
        var runsNow = channel.runsNow(queue)
        var ranNow = CompletedStretch()
        // One text per look at the ring: a client that publishes garbage by the thousand must not turn
        // each descriptor into a message (and a system call) on the event loop.
        var textSent = false
        // The descriptors' credits, counted against the free credits by the caller.
        router.take(count, of: queue)
        descriptors: for i in 0..<count {
            if let common = channel.validator.resolveCommon(descriptors, at: i * Descriptor.size, buffers: connection) {
                if runsNow {
                    switch channel.runNow(common, in: queue, at: now) {
                    case .ran(let record):
                        router.routeNow(record, of: queue, ring: ring, acceptedAt: now, stretch: &ranNow)
                        continue
                    case .halted:
                        runsNow = false
                        continue
                    case .notRun:
                        runsNow = false
                    }
                }
                if let p = common.source { bufferTable.pin(p.slot) }
                if let p = common.destination { bufferTable.pin(p.slot) }
                channel.admitPinned(common.pending, into: queue, at: now)
                continue
            }
            runsNow = false
            var op: PendingOp
            var refusal: ProtocolError? = nil
            do throws(ProtocolError) {
                op = try channel.validator.resolve(descriptors, at: i * Descriptor.size, index: i, version: connection.version, buffers: connection)
            } catch {
                let cookie = descriptors.loadUnaligned(fromByteOffset: i * Descriptor.size + 8, as: UInt64.self).littleEndian
                op = .refused(error.code, cookie: cookie, opcode: descriptors[i * Descriptor.size])
                refusal = error
            }
            channel.admit(op, into: queue, at: now)
            if let error = refusal {
                connection.errors += 1
                guard !textSent else { continue }
                textSent = true
                let entry = firstEntry &+ UInt32(i)
                reply(connection, .error(ErrorReply(code: error.code, index: entry,
                                                    message: "queue \(queue.id), ring entry \(entry): \(error.message)", queue: queue.id)),
                      requestID: 0)
                if connection.isClosed {
                    // The rest never run: their credits come back.
                    router.orphaned(count - i - 1, of: queue)
                    break descriptors
                }
            }
        }
        guard ranNow.count > 0 else { return 0 }
        // One clock reading for the ops run at once: their records' completion time, the engine's busy
        // time, and (through `pump`) the time their ring is published at.
        let ranUntil = Clock.nanoseconds()
        router.endRun(ranNow, of: queue, now: ranUntil)
        channel.ranNow(until: ranUntil, of: queue)
        return ranUntil
    }

    /// Fails a ring whose client broke its rules: the code goes into the ring, an ERROR (request_id 0)
    /// names the bad value, and the queue takes no more descriptors and writes no more records. Its ops
    /// in the engine finish; their credits (and those of records not consumed) return, so CLOSE works.
    func breakRing(_ ring: ServerRing, _ error: ProtocolError) {
        guard ring.broken == nil else { return }
        ring.markBroken(error)
        if let queue = ring.queue { router.orphaned(ring.consumer.unconsumed, of: queue) }
        epoll.remove(ring.doorbell.rawValue)
        UnixSocket.ring(ring.doorbell)
        // Debug, not warning: a client that breaks its rings on purpose must not flood the journal.
        logger.debug("ring queue broken", metadata: [
            "client": "\(ring.queue?.connection.map { "\($0.id)" } ?? "gone")", "error": "\(error.message)",
        ])
        if let connection = ring.queue?.connection {
            connection.errors += 1
            reply(connection, .error(ErrorReply(code: error.code, message: error.message, queue: ring.consumer.layout.queue)), requestID: 0)
        }
    }

    /// Forgets a ring whose queue or connection closed; its memory is unmapped when the last reference goes.
    func dropRing(_ ring: ServerRing) {
        if ring.broken == nil { epoll.remove(ring.doorbell.rawValue) }
        if let ledger {
            ledger.drop(StoreName.ringMemory(ring.token))
            ledger.drop(StoreName.doorbell(ring.token))
        }
        rings[ring.token] = nil
        ringList.removeAll { $0 === ring }
        ring.queue = nil
    }
}
