import IOATProtocol
import IOATSystem

/// ALLOC and REGISTER: the checks and the charge on the event loop, the slow part on a setup thread
/// (`BufferWorkers`), and the reply when it is done. While a connection's buffer is being made it reads
/// no further request, so its replies stay in order; every other connection goes on being served.
extension IOATServer {
    /// A buffer being made for a connection.
    struct PendingSetup {
        let connection: Connection
        let requestID: UInt64
        let isAlloc: Bool
        /// Bytes held against the budget, and against the tenant's limit, until the outcome arrives.
        let budgetReserved: UInt64
        let tenantReserved: UInt64
    }

    /// A handle number for a new buffer or queue: unique across every connection of the server (until
    /// 2^32 handles have been made), so a number seen on another connection names nothing on this one.
    func nextHandle(for connection: Connection) -> UInt32 {
        repeat {
            handleCounter &+= 1
        } while handleCounter == 0 || connection.buffers.contains(handleCounter) || connection.queues[handleCounter] != nil
        return handleCounter
    }

    /// Checks the connection's and its tenant's limits for `size` more bytes (what is being made counts).
    private func checkBufferQuota(_ connection: Connection, adding size: UInt64) throws(ProtocolError) {
        try checkStoreRoom(1)
        guard connection.buffers.count < configuration.maxBuffers else {
            throw ProtocolError(.quotaExceeded, "connection already has \(connection.buffers.count) buffers; the limit is \(configuration.maxBuffers)")
        }
        let (total, overflow) = connection.bufferBytes.addingReportingOverflow(size)
        guard !overflow, total <= configuration.maxBufferBytes else {
            throw ProtocolError(.quotaExceeded,
                                "\(size) more bytes would bring this connection to \(overflow ? "more than 2^64" : "\(total)") buffer bytes; the limit is \(configuration.maxBufferBytes)")
        }
        let tenant = connection.tenant
        let (tenantTotal, tenantOverflow) = tenant.bufferBytes.addingReportingOverflow(size &+ tenant.reservedBytes)
        guard !tenantOverflow, tenantTotal <= tenant.limits.maxBufferBytes else {
            tenant.refusals += 1
            throw ProtocolError(.quotaExceeded,
                                "\(size) more bytes would bring uid \(tenant.uid) to \(tenantOverflow ? "more than 2^64" : "\(tenantTotal)") buffer bytes over all its connections; its limit is \(tenant.limits.maxBufferBytes) (policy: \(tenant.policySource))")
        }
    }

    /// Refuses what would need more descriptors than the handover store has room for.
    func checkStoreRoom(_ count: Int) throws(ProtocolError) {
        guard let ledger, !ledger.hasRoom(count) else { return }
        throw ProtocolError(.quotaExceeded, "the restart store is full: it holds \(ledger.stored) of \(ledger.store.capacity) descriptors (FileDescriptorStoreMax=)")
    }

    /// Whether `size` more bytes fit every limit — connection, tenant, budget — (no refusal counted).
    private func fits(_ connection: Connection, adding size: UInt64) -> Bool {
        let (total, overflow) = connection.bufferBytes.addingReportingOverflow(size)
        let (tenantTotal, tenantOverflow) = connection.tenant.bufferBytes.addingReportingOverflow(size &+ connection.tenant.reservedBytes)
        return !overflow && total <= configuration.maxBufferBytes && !tenantOverflow
            && tenantTotal <= connection.tenant.limits.maxBufferBytes && budget.fits(size)
    }

    /// Whether the tenant may take `size` more bytes of hugepages: at most its share of the pool.
    private func hugepageShareAllows(_ tenant: Tenant, _ size: UInt64, pool: MemoryInfo) -> Bool {
        let share = pool.hugepagesTotal * pool.hugepageSize * UInt64(configuration.hugepageSharePercent) / 100
        return tenant.hugepageBytes + size <= share
    }

    func handleAllocate(_ connection: Connection, _ request: Alloc, requestID: UInt64) throws(ProtocolError) {
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
        // Limits are checked against what will really be charged: the hugepage-rounded size only when
        // hugepages are tried. A preferred hugepage buffer that would go over a limit, or over the tenant's
        // share of the hugepage pool, where 4 KiB pages would not, is made of 4 KiB pages (SPEC.md §5.1).
        let smallSize = try rounded(MemoryInfo.smallPageSize)
        try checkBufferQuota(connection, adding: smallSize)
        var hugeSize: UInt64? = nil
        if wantHuge {
            let size = try rounded(hugepageSize)
            let pool = MemoryInfo.current()
            let shareAllows = hugepageShareAllows(connection.tenant, size, pool: pool)
            if request.pages == .requireHuge {
                // A share of an empty pool is no hugepages (SPEC.md §5.1), not a quota.
                guard pool.hugepagesTotal > 0 else {
                    throw ProtocolError(.noHugepages, "ALLOC of \(request.size) bytes requires hugepages, and the system has none reserved (vm.nr_hugepages = 0)")
                }
                try checkBufferQuota(connection, adding: size)
                guard shareAllows else {
                    connection.tenant.refusals += 1
                    throw ProtocolError(.quotaExceeded,
                                        "uid \(connection.tenant.uid) holds \(connection.tenant.hugepageBytes) bytes of hugepages; \(size) more would pass its share, \(configuration.hugepageSharePercent)% of the \(pool.hugepagesTotal * pool.hugepageSize)-byte pool")
                }
                hugeSize = size
            } else if shareAllows && fits(connection, adding: size) {
                hugeSize = size
            } else if pool.hugepagesTotal == 0 {
                // Nothing to try: the same warning as a failed attempt, so an operator sees why.
                logger.warning("hugepages unavailable; using 4 KiB pages", metadata: [
                    "client": "\(connection.id)", "size": "\(smallSize)", "error": "no hugepages reserved (vm.nr_hugepages = 0)",
                ])
            }
        }
        let reserved = hugeSize.map { max($0, smallSize) } ?? smallSize
        try budget.reserve(reserved)
        let plan = BufferWorkers.AllocPlan(name: "ioatd:\(connection.id):\(requestID)", smallSize: smallSize, hugeSize: hugeSize,
                                           hugepageSize: hugepageSize, requireHuge: request.pages == .requireHuge,
                                           lock: configuration.lockBuffers)
        let ticket = nextTicket()
        startSetup(ticket, .allocate(ticket: ticket, plan), PendingSetup(
            connection: connection, requestID: requestID, isAlloc: true, budgetReserved: reserved, tenantReserved: reserved))
    }

    /// REGISTER (SPEC.md §5.2): the cheap checks here, the mapping on a setup thread.
    func handleRegister(_ connection: Connection, _ fd: FileDescriptor, requestID: UInt64) throws(ProtocolError) {
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
        do throws(SystemError) {
            size = try fd.size()
        } catch {
            throw ProtocolError(.internal, "fstat on the registered memfd failed: \(error)")
        }
        guard size > 0 else { throw ProtocolError(.badLength, "REGISTER of an empty memfd (size 0)") }
        guard size <= UInt64(Int.max) else { throw ProtocolError(.badLength, "REGISTER of a memfd of \(size) bytes is too large") }
        try checkBufferQuota(connection, adding: size)
        // A client's memory counts against the budget only when the server pins it (DMA mappings).
        let pins = engine.pinsRegisteredMemory
        let reserved = pins ? size : 0
        try budget.reserve(reserved)
        let ticket = nextTicket()
        startSetup(ticket, .register(ticket: ticket, fd, pins: pins, keep: ledger != nil), PendingSetup(
            connection: connection, requestID: requestID, isAlloc: false, budgetReserved: reserved, tenantReserved: size))
    }

    private func nextTicket() -> UInt64 {
        setupTickets &+= 1
        return setupTickets
    }

    /// Hands a job to the setup threads; the connection reads nothing more until its reply is sent.
    private func startSetup(_ ticket: UInt64, _ job: BufferWorkers.Job, _ pending: PendingSetup) {
        pending.connection.tenant.reservedBytes += pending.tenantReserved
        pendingSetups[ticket] = pending
        pending.connection.machine.setupStarted()
        let queued = workers.submit(job)
        precondition(queued, "the setup threads stop only after the event loop")
    }

    /// Takes what the setup threads finished: replies for new buffers, budget back for unmapped ones.
    func setupsFinished() {
        for outcome in workers.takeOutcomes() {
            switch outcome {
            case .disposed(let charge): budget.release(charge)
            case .made(let ticket, let result): finishSetup(ticket, result)
            }
        }
    }

    private func finishSetup(_ ticket: UInt64, _ result: Result<BufferWorkers.Made, ProtocolError>) {
        guard let pending = pendingSetups.removeValue(forKey: ticket) else { preconditionFailure("setup outcome for unknown ticket \(ticket)") }
        let connection = pending.connection
        budget.cancel(pending.budgetReserved)
        connection.tenant.reservedBytes -= pending.tenantReserved
        connection.machine.setupEnded()
        switch result {
        case .failure(let error):
            if !connection.isClosed { refuse(connection, error, requestID: pending.requestID) }
        case .success(let made):
            budget.commit(made.charge)
            // Made into a SharedBuffer even for a connection that has gone: dropping it returns the memory
            // (and the budget) through the setup threads.
            let buffer = SharedBuffer(handle: nextHandle(for: connection), mapping: made.mapping, flags: made.flags,
                                      pageSize: made.pageSize, registration: made.registration, charge: made.charge, workers: workers,
                                      allocated: pending.isAlloc)
            guard !connection.isClosed else { return }
            if let ledger, let fd = made.fd { buffer.storedAs = ledger.keepFile(fd) }
            if let why = made.hugeFailure {
                logger.warning("hugepages unavailable; using 4 KiB pages", metadata: [
                    "client": "\(connection.id)", "size": "\(buffer.size)", "error": "\(why)",
                ])
            }
            connection.add(OpenBuffer(buffer, slot: bufferTable.insert(buffer)))
            persist()
            if pending.isAlloc {
                reply(connection, .allocReply(buffer.reply), requestID: pending.requestID, fds: made.fd.map { [$0] } ?? [])
            } else {
                reply(connection, .registerReply(buffer.reply), requestID: pending.requestID)
            }
        }
        guard !connection.isClosed else { return }
        updateInterest(connection)
        connectionReadable(connection)
    }
}
