import Glibc
import IOATEngine
import IOATProtocol
import IOATSystem

/// Restart without dropping anyone (SPEC.md §5.11). While it serves, the server keeps every connection,
/// buffer memfd, ring memory and doorbell in the handover store from the moment it makes it, and keeps the
/// state that ties them together current on every change a client hears of. A handover (a restart job,
/// SIGTERM) stops taking work, lets what was taken finish and be answered, writes the state once more
/// with each connection marked settled, and exits without closing anything. Whatever ended the previous
/// instance, the next one takes the store back in `restore`.
extension IOATServer {
    // MARK: Writing the state

    /// Writes the state now: called after every change a client is about to be told of, before it is.
    /// Without a store, nothing.
    func persist(settled: Set<UInt64> = []) {
        // A stop (draining) ends with the store dropped by the service manager: nothing to keep current,
        // and closing N connections would write N states.
        guard let ledger, state != .draining else { return }
        stateSerial += 1
        let document = HandoverState(
            format: configuration.stateFormat, writer: configuration.serverVersion, serial: stateSerial,
            handleCounter: handleCounter, lastConnection: nextConnectionID, lastRingToken: nextRingToken,
            connections: connections.values.sorted { $0.id < $1.id }.map { describe($0, settled: settled.contains($0.id)) })
        let name = StoreName.state(stateSerial)
        do {
            let fd = try document.memfd()
            ledger.store.store(fd, name: name)
        } catch {
            logger.error("the restart state could not be written; a restart now would drop clients", metadata: ["error": "\(error)"])
            return
        }
        // The new state is stored before the old one goes: a crash in between leaves both, and the next
        // instance takes the newer.
        for old in storedStates where old != name { ledger.store.remove(name: old) }
        storedStates = [name]
    }

    private func describe(_ connection: Connection, settled: Bool) -> HandoverState.ConnectionState {
        var features: UInt64 = 0
        if connection.ringsGranted { features |= Wire.featureRings }
        if connection.restartGranted { features |= Wire.featureRestart }
        let buffers = connection.buffers.byHandle.values.sorted { $0.handle < $1.handle }.compactMap { open -> HandoverState.BufferState? in
            guard let buffer = bufferTable.buffer(open.slot), let file = buffer.storedAs else { return nil }
            return HandoverState.BufferState(handle: open.handle, file: file, allocated: buffer.allocated, size: open.size,
                                             pageSize: buffer.pageSize, flags: open.flags.rawValue)
        }
        let queues = connection.queues.values.sorted { $0.id < $1.id }.map { queue in
            HandoverState.QueueState(id: queue.id, channel: queue.channel, depth: queue.depth,
                                     coalesceNanoseconds: queue.coalesceNanoseconds, ring: queue.ring?.token)
        }
        return HandoverState.ConnectionState(id: connection.id, version: connection.machine.isNegotiated ? connection.version : nil,
                                             features: features, restarts: connection.restarts, settled: settled,
                                             buffers: buffers, queues: queues)
    }

    // MARK: Handing over

    /// A connection is settled when the server owes it nothing: no op taken and unanswered, no reply or
    /// record unsent, no buffer being made, no request parked.
    func isSettled(_ connection: Connection) -> Bool {
        guard connection.backlog.isEmpty, connection.parked == nil, connection.machine.reads || !connection.machine.isNegotiated else { return false }
        for queue in connection.queues.values {
            guard queue.isIdle, queue.undelivered.isEmpty else { return false }
            if let ring = queue.ring, ring.needsPublish { return false }
        }
        return true
    }

    /// Whether every connection is settled and nothing is being made.
    var everythingSettled: Bool {
        pendingSetups.isEmpty && parked.isEmpty && channels.allSatisfy(\.isIdle) && connections.values.allSatisfy(isSettled)
    }

    /// Stops taking work for a handover: no packet is read from now on (what clients send waits in their
    /// sockets for the next instance), no descriptor is taken from a ring, no connection is accepted.
    func beginHandover() -> Double {
        state = .handingOver
        epoll.remove(listener.rawValue)
        for connection in connections.values {
            connection.holding = true
            updateInterest(connection)
        }
        let inFlight = channels.reduce(0) { $0 + $1.inEngine + $1.pendingCount }
        logger.notice("handing over to the next instance", metadata: ["in_flight": "\(inFlight)", "clients": "\(connections.count)"])
        observer?.stopping(summary)
        return Clock.seconds() + Double(configuration.drainTimeoutMilliseconds) / 1000
    }

    /// The last state: each connection the server owes nothing is marked settled, so the next instance
    /// tells its client nothing was lost.
    func finishHandover() {
        let settled = Set(connections.values.filter(isSettled).map(\.id))
        persist(settled: settled)
        logger.notice("handed over", metadata: [
            "clients": "\(connections.count)", "settled": "\(settled.count)",
            "unsettled": "\(connections.count - settled.count)",
        ])
    }

    // MARK: Taking over

    /// Takes over what a previous instance left: the newest state that reads, and every descriptor it
    /// names. A state that does not read (another format, say) is refused as a whole: each stored
    /// connection is told GOODBYE and closed, as a stop does, and the server serves new clients.
    func restore(_ files: StoredFiles) {
        guard let ledger else {
            // No store now (ioatd runs without one this time): nothing can be kept for long; clients are
            // told, as at a stop.
            refuseAll(files, reason: "this instance runs without a handover store")
            return
        }
        let states = files.names.compactMap { name in StoreName.stateSerial(name).map { (serial: $0, name: name) } }
            .sorted { $0.serial > $1.serial }
        var found: HandoverState? = nil
        var failure = "no state was stored"
        for candidate in states {
            guard let fd = files.take(candidate.name) else { continue }
            storedStates.append(candidate.name)
            stateSerial = max(stateSerial, candidate.serial)
            if found != nil { continue }
            do throws(HandoverState.ReadError) {
                found = try HandoverState.read(fd)
            } catch {
                failure = error.description
            }
        }
        guard let state = found else {
            refuseAll(files, reason: failure)
            for name in storedStates { ledger.store.remove(name: name) }
            storedStates = []
            return
        }
        handleCounter = state.handleCounter
        // Serials go on from the previous instance's: a state named like one still in the store would be
        // removed with it.
        stateSerial = max(stateSerial, state.serial)
        nextConnectionID = max(nextConnectionID, state.lastConnection)
        nextRingToken = max(nextRingToken, state.lastRingToken)
        var taken: [String: FileDescriptor] = [:]
        var summary = (connections: 0, lost: 0, gone: 0, buffers: 0, queues: 0, rings: 0, inFlight: 0)
        for saved in state.connections {
            guard let fd = files.take(StoreName.connection(saved.id)) else {
                summary.gone += 1
                continue
            }
            ledger.adopt()
            guard let connection = restoreConnection(saved, fd: fd, files: files, taken: &taken) else { continue }
            summary.connections += 1
            if !saved.settled { summary.lost += 1 }
            summary.buffers += connection.buffers.count
            summary.queues += connection.queues.count
            for queue in connection.queues.values where queue.ring != nil {
                summary.rings += 1
                summary.inFlight += queue.outstanding
            }
        }
        // What no restored connection names (a client that left while no server ran, its buffers) goes.
        for (name, _) in files.takeRest() { ledger.store.remove(name: name) }
        persist()
        logger.notice("took over from the previous instance", metadata: [
            "state_writer": "\(state.writer)", "clients": "\(summary.connections)", "unsettled": "\(summary.lost)",
            "left_meanwhile": "\(summary.gone)", "buffers": "\(summary.buffers)", "queues": "\(summary.queues)",
            "rings": "\(summary.rings)", "ring_ops_outstanding": "\(summary.inFlight)",
        ])
    }

    /// Tells every stored connection GOODBYE and closes it; drops everything from the store.
    private func refuseAll(_ files: StoredFiles, reason: String) {
        var told = 0
        for (name, fd) in files.takeRest() {
            ledger?.store.remove(name: name)
            guard name.hasPrefix("c") else { continue }
            // The version it speaks is in the state that could not be read: the newest is the best guess
            // (a client of another version reads an ERROR-free end of stream either way).
            sayGoodbye(fd, version: Wire.version)
            told += 1
        }
        logger.error("the previous instance's state was refused; its clients were told GOODBYE", metadata: [
            "reason": "\(reason)", "clients": "\(told)",
        ])
    }

    /// Tells a stored connection that cannot carry on GOODBYE (`drain_ms` 0; nothing before HELLO_OK),
    /// so its client sees a stop, and lets it go: the peer reads that, then the end.
    private func sayGoodbye(_ fd: FileDescriptor, version: UInt16?) {
        if let version {
            let goodbye = Message.goodbye(drainMilliseconds: 0).encode(requestID: 0, version: version)
            goodbye.withUnsafeBytes { _ = try? UnixSocket.send(fd, $0, fds: []) }
        }
        UnixSocket.discardUnread(fd)
    }

    /// Restores one connection and what it had; nil when it cannot carry on (it is told and closed).
    private func restoreConnection(_ saved: HandoverState.ConnectionState, fd: FileDescriptor, files: StoredFiles,
                                   taken: inout [String: FileDescriptor]) -> Connection? {
        let restartGranted = saved.features & Wire.featureRestart != 0
        func drop(_ why: String) {
            ledger?.drop(StoreName.connection(saved.id))
            sayGoodbye(fd, version: saved.version)
            logger.notice("a client could not be carried over", metadata: ["client": "\(saved.id)", "reason": "\(why)"])
        }
        guard saved.settled || (saved.version != nil && restartGranted) else {
            drop(saved.version == nil ? "its handshake was under way when the previous instance ended"
                 : "it did not ask for restart support (HELLO feature bit 1), and the previous instance ended with work in flight")
            return nil
        }
        guard var peer = try? UnixSocket.peerCredentials(fd) else {
            drop("its peer credentials cannot be read")
            return nil
        }
        if case .success(let cgroup) = PeerCgroup.ofPeer(fd, pid: peer.pid, resolver: cgroupPaths) { peer.cgroup = cgroup }
        let tenant = tenant(for: peer)
        let connection = Connection(id: saved.id, fd: fd, peer: peer, tenant: tenant, maxMessage: configuration.maxMessage,
                                    maxDescriptors: configuration.maxDescriptors, now: Clock.seconds())
        connection.machine.resume(version: saved.version)
        connection.ringsGranted = saved.features & Wire.featureRings != 0
        connection.restartGranted = restartGranted
        connection.restarts = saved.restarts &+ 1
        for buffer in saved.buffers { restoreBuffer(buffer, into: connection, files: files, taken: &taken) }
        for queue in saved.queues { restoreQueue(queue, into: connection, files: files) }
        do throws(SystemError) {
            try epoll.add(fd.rawValue, .readable, token: connection.id)
        } catch {
            connection.releaseAll(closingIn: bufferTable)
            drop("epoll: \(error)")
            return nil
        }
        connections[connection.id] = connection
        if restartGranted {
            connection.awaitingResync = !saved.settled
            reply(connection, .restarted(RestartNotice(lost: !saved.settled, restarts: connection.restarts)), requestID: 0)
        }
        // Each ring's RESTARTED records become visible, and its client is woken to look (it may sleep
        // waiting for records the previous instance never wrote).
        for queue in connection.queues.values {
            guard let ring = queue.ring, ring.broken == nil else { continue }
            _ = ring.consumer.publish()
            UnixSocket.ring(ring.doorbell)
        }
        return connection
    }

    /// Maps a stored buffer again, checked as on first contact: a memfd, sealed against shrinking, at
    /// least as large as it was. One that fails is left out: its handle names nothing from now on.
    private func restoreBuffer(_ saved: HandoverState.BufferState, into connection: Connection, files: StoredFiles,
                               taken: inout [String: FileDescriptor]) {
        guard let fd = taken[saved.file] ?? files.take(saved.file) else {
            logger.warning("a restored client's buffer is missing from the store; its handle names nothing now", metadata: [
                "client": "\(connection.id)", "handle": "\(saved.handle)",
            ])
            return
        }
        taken[saved.file] = fd
        let flags = BufferReply.Flags(rawValue: saved.flags)
        let made: SharedBuffer
        do throws(SystemError) {
            let seals = try Memfd.seals(of: fd)
            guard Memfd.isMemfd(fd), seals.contains(.shrink), try fd.size() >= saved.size, saved.size > 0, saved.size <= UInt64(Int.max) else {
                throw SystemError("not a memfd sealed against shrinking of at least \(saved.size) bytes", errno: EINVAL)
            }
            let mapping = try Mapping(fd: fd, length: Int(saved.size), writable: !flags.contains(.readOnly), populate: true)
            if flags.contains(.locked) { try? mapping.lock() }
            let registration = try engine.register(memory: mapping.unsafeBytes, pageSize: Int(saved.pageSize))
            let huge = flags.contains(.hugepages)
            let charge = saved.allocated ? BudgetCharge(bytes: saved.size, locked: flags.contains(.locked) || huge, hugepages: huge)
                : engine.pinsRegisteredMemory ? BudgetCharge(bytes: saved.size, locked: true, hugepages: huge) : BudgetCharge()
            budget.commit(charge)
            made = SharedBuffer(handle: saved.handle, mapping: mapping, flags: flags, pageSize: saved.pageSize, registration: registration,
                                charge: charge, workers: workers, allocated: saved.allocated)
        } catch {
            logger.warning("a restored client's buffer failed its checks; its handle names nothing now", metadata: [
                "client": "\(connection.id)", "handle": "\(saved.handle)", "error": "\(error)",
            ])
            return
        }
        made.storedAs = saved.file
        ledger?.adoptFile(saved.file, fd)
        connection.add(OpenBuffer(made, slot: bufferTable.insert(made)))
    }

    /// Opens a stored queue again on its channel (the first channel when this engine has fewer), and its
    /// ring: ops the previous instance took from the ring and never recorded get RESTARTED records, in
    /// order, since nothing says whether they ran.
    private func restoreQueue(_ saved: HandoverState.QueueState, into connection: Connection, files: StoredFiles) {
        let index = saved.channel < channels.count ? saved.channel : 0
        let queue = Queue(id: saved.id, channel: index, depth: saved.depth, connection: connection, lane: channels[index].lane(for: connection.tenant))
        queue.coalesceNanoseconds = saved.coalesceNanoseconds
        connection.add(queue)
        channels[index].queueCount += 1
        guard let token = saved.ring else { return }
        guard let memfd = files.take(StoreName.ringMemory(token)), let doorbell = files.take(StoreName.doorbell(token)) else {
            logger.warning("a restored ring queue's memory or doorbell is missing from the store; the queue takes no more ops", metadata: [
                "client": "\(connection.id)", "queue": "\(saved.id)",
            ])
            return
        }
        ledger?.adopt()
        ledger?.adopt()
        let ring: ServerRing
        do throws(SystemError) {
            ring = try ServerRing.adopt(queue: queue, token: token, memfd: memfd, doorbell: doorbell)
        } catch {
            logger.warning("a restored ring's memory could not be mapped; the queue takes no more ops", metadata: [
                "client": "\(connection.id)", "queue": "\(saved.id)", "error": "\(error)",
            ])
            ledger?.drop(StoreName.ringMemory(token))
            ledger?.drop(StoreName.doorbell(token))
            return
        }
        queue.ring = ring
        rings[token] = ring
        ringList.append(ring)
        do throws(ProtocolError) {
            let (outstanding, inFlight) = try ring.resume()
            router.take(outstanding, of: queue)
            if inFlight > 0 {
                logger.notice("ops a crash left in flight on a ring completed RESTARTED", metadata: [
                    "client": "\(connection.id)", "queue": "\(saved.id)", "ops": "\(inFlight)",
                ])
            }
        } catch {
            ring.markBroken(error)
        }
        guard ring.broken == nil else { return }
        do throws(SystemError) {
            try epoll.add(ring.doorbell.rawValue, .readable, token: token)
        } catch {
            ring.markBroken(ProtocolError(.internal, "epoll: \(error)"))
        }
    }
}
