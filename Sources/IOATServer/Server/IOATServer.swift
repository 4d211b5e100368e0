import Glibc
import IOATEngine
import IOATProtocol
import IOATSystem
import Logging
import Synchronization

/// The ioatd broker. `run()` is its whole life: it serves until asked to stop, drains, and returns.
///
/// One event-loop thread owns every connection, queue and buffer table; engines run ops on their own
/// threads and signal the loop through one eventfd. Nothing on the per-op path allocates or takes a lock.
public final class IOATServer: @unchecked Sendable {
    /// Where the server is in its life.
    public enum State: String, Sendable {
        case starting, serving, draining, handingOver, stopped
    }

    /// The format of the restart state this code writes and reads (SPEC.md §5.11).
    public static let stateFormat = 1

    let configuration: ServerConfiguration
    let engine: any Engine
    let logger: Logger
    /// One per engine channel: scheduling, fence, split, halt and replay.
    let channels: [Channel]
    /// Delivers finished ops' records to their connections.
    let router: CompletionRouter
    let listener: FileDescriptor
    /// The socket file this server made itself (not socket-activated), with its inode: removed at exit
    /// while it is still this one (a newer server may have replaced it).
    private let boundSocket: (path: String, inode: ino_t)?
    let epoll: Epoll
    private let wakeup: EventFD
    let observer: (any ServerObserver)?
    private let stopRequested = Atomic<Int>(0)
    /// Whether the stop asked for is a handover to a next instance (`requestHandover`).
    private let handoverRequested = Atomic<Bool>(false)
    /// Set by `abandon()`: the loop ends as a crash would end it.
    private let abandonRequested = Atomic<Bool>(false)
    /// The handover store's account, when the server keeps its clients across restarts; nil without one.
    let ledger: StoreLedger?
    /// What the previous instance left, until `run` takes it over.
    private var previous: StoredFiles?
    /// The serial of the last state written, and the names of the states in the store.
    var stateSerial: UInt64 = 0
    var storedStates: [String] = []
    /// A policy (or a refused reload's reason) handed over from another thread, applied on the loop.
    private let policyUpdate = Mutex<PolicyUpdate?>(nil)
    private enum PolicyUpdate: Sendable {
        case apply(Policy)
        case refused(String)
    }
    private let publishedState = Mutex<State>(.starting)
    /// Hugepage size of this machine (from /proc/meminfo), 0 when unknown.
    let hugepageSize: UInt64
    let startedAt: Double

    var connections: [UInt64: Connection] = [:]
    var nextConnectionID: UInt64 = 1
    /// Connections with a request waiting for credits.
    var parked: [Connection] = []
    /// Setup threads: buffer creation, mapping, registration and unmapping, off the event loop.
    let workers: BufferWorkers
    /// Every mapped buffer, and the pins that ops hold on them.
    let bufferTable: BufferTable
    /// Buffers being made, by ticket.
    var pendingSetups: [UInt64: PendingSetup] = [:]
    var setupTickets: UInt64 = 0
    /// The server-wide budget of buffer memory.
    var budget: MemoryBudget
    private let reapBuffer: UnsafeMutableBufferPointer<EngineCompletion>
    var state: State = .starting {
        didSet { publishedState.withLock { $0 = state } }
    }
    /// The last buffer or queue handle given out, server-wide.
    var handleCounter: UInt32 = 0
    /// Tenant policy in force (replaced by `apply(policy:)`).
    private(set) var policy: Policy
    /// Tenants with at least one connection, by key (uid, unit, cgroup or shared entry).
    var tenants: [TenantKey: Tenant] = [:]
    /// The last tenant id given out (`Tenant.id`).
    var nextTenantID: UInt32 = 0
    /// A SUBMIT's resolved descriptors between validation and queueing; capacity kept across SUBMITs.
    var submitScratch: [PendingOp] = []
    /// Ring queues, by doorbell token, and in polling order.
    var rings: [UInt64: ServerRing] = [:]
    var ringList: [ServerRing] = []
    var nextRingToken: UInt64 = ringTokenBase
    /// Descriptors copied out of a ring (once, before anything reads them).
    let ringScratch: UnsafeMutableRawPointer
    /// Whether the log said once that peers are named by pid (no SO_PEERPIDFD).
    private var warnedNoPidfd = false
    /// Cgroup paths by id, for peers' cgroups read through their pidfds.
    let cgroupPaths = CgroupPaths()
    /// Lifetime counters.
    var connectionsAccepted: UInt64 = 0
    var connectionsRefused: UInt64 = 0
    var policyReloads: UInt64 = 0
    var policyReloadFailures: UInt64 = 0

    /// Busy turns (rings moved, or a channel ran ops it had deferred) between two looks at epoll while
    /// busy-polling.
    static let busyTurnsPerLook = 8
    private static let listenerToken: UInt64 = 0
    private static let engineToken: UInt64 = 1
    private static let wakeupToken: UInt64 = 2
    private static let setupToken: UInt64 = 4
    private static let firstConnectionToken: UInt64 = 16
    /// Ring doorbells have tokens from here on (connection tokens stay far below).
    static let ringTokenBase: UInt64 = 1 << 62

    /// Creates a server on `engine`. With `listener`, serves that already-listening socket (socket
    /// activation); otherwise binds `configuration.socketPath`. With `observer`, the loop reports when it
    /// serves, ticks at the observer's interval, and reports when it stops. Whoever runs the server
    /// handles signals and files: `requestStop()` stops it, `apply(policy:)` changes the tenant policy,
    /// both from any thread.
    ///
    /// With `store`, every connection, buffer and ring is kept in it from the moment it is made, with
    /// the state that ties them together, so that a next instance takes them over (`previous`: what an
    /// earlier instance left there, restored when `run` starts). SPEC.md §5.11.
    public init(configuration: ServerConfiguration, engine: any Engine, logger: Logger,
                listener: FileDescriptor? = nil, observer: (any ServerObserver)? = nil,
                store: (any HandoverStore)? = nil, previous: StoredFiles? = nil) throws(SystemError) {
        self.configuration = configuration
        ledger = store.map(StoreLedger.init(store:))
        self.previous = previous
        self.policy = configuration.policy
        self.engine = engine
        self.logger = logger
        self.observer = observer
        if let listener {
            try listener.setNonBlocking(true)
            self.listener = listener
            boundSocket = nil
        } else {
            self.listener = try UnixSocket.listen(path: configuration.socketPath, mode: mode_t(configuration.socketMode))
            var st = stat()
            boundSocket = lstat(configuration.socketPath, &st) == 0 ? (configuration.socketPath, st.st_ino) : nil
        }
        epoll = try Epoll()
        wakeup = try EventFD()
        let bufferTable = BufferTable()
        self.bufferTable = bufferTable
        channels = engine.channels.map {
            Channel(engine: $0, buffers: bufferTable, window: configuration.engineWindow, windowBytes: configuration.engineWindowBytes,
                    opCost: configuration.opCostBytes, quantum: configuration.quantumBytes, inlineBytes: configuration.inlineBytes)
        }
        router = CompletionRouter(maxRecordsPerMessage: configuration.maxRecordsPerMessage)
        workers = try BufferWorkers(count: configuration.setupThreads, engine: engine)
        budget = MemoryBudget(limit: configuration.maxTotalBufferBytes)
        submitScratch.reserveCapacity(configuration.maxDescriptors)
        ringScratch = .allocate(byteCount: max(1, configuration.maxDescriptors) * Descriptor.size, alignment: 64)
        reapBuffer = .allocate(capacity: 256)
        reapBuffer.initialize(repeating: .empty)
        hugepageSize = Self.readHugepageSize()
        startedAt = Clock.seconds()
        try epoll.add(self.listener.rawValue, .readable, token: Self.listenerToken)
        try epoll.add(engine.notifier.fd.rawValue, .readable, token: Self.engineToken)
        try epoll.add(wakeup.fd.rawValue, .readable, token: Self.wakeupToken)
        try epoll.add(workers.done.fd.rawValue, .readable, token: Self.setupToken)
    }

    deinit {
        reapBuffer.deallocate()
        ringScratch.deallocate()
    }

    /// The current state, readable from any thread.
    public var currentState: State { publishedState.withLock { $0 } }

    /// Asks `run()` to stop gracefully (first call) or at once (second call). Safe from any thread.
    public func requestStop() {
        stopRequested.add(1, ordering: .sequentiallyConsistent)
        wakeup.signal()
    }

    /// Asks `run()` to hand every client over to the next instance and return (SPEC.md §5.11): no new work
    /// is taken, what was taken finishes and is answered (within the drain timeout), the state is written
    /// and nothing is closed. Without a store it is `requestStop()`. Safe from any thread.
    public func requestHandover() {
        if ledger != nil { handoverRequested.store(true, ordering: .sequentiallyConsistent) }
        requestStop()
    }

    /// Ends `run()` at once as a crash would, for tests of the restart after one: no drain, no last state,
    /// nothing closed or told (what the store holds stays as the server left it). Safe from any thread.
    public func abandon() {
        abandonRequested.store(true, ordering: .sequentiallyConsistent)
        wakeup.signal()
    }

    /// Whether this server keeps its clients across restarts (it has a handover store).
    public var keepsClientsAcrossRestarts: Bool { ledger != nil }

    /// Puts `policy` in force for every tenant, connected or not, without dropping anyone (a reload).
    /// Safe from any thread: the loop applies it on its next turn.
    public func apply(policy: Policy) {
        policyUpdate.withLock { $0 = .apply(policy) }
        wakeup.signal()
    }

    /// A reload that was refused (its reason, for the log): the policy in force stays, and STATUS counts
    /// the failure. Safe from any thread.
    public func policyRefused(reason: String) {
        policyUpdate.withLock { $0 = .refused(reason) }
        wakeup.signal()
    }

    /// Serves until stopped, then drains in-flight ops (bounded by `drainTimeoutMilliseconds`), closes
    /// every connection and stops the engine.
    public func run() throws(SystemError) {
        if let previous {
            self.previous = nil
            restore(previous)
        } else {
            persist()
        }
        state = .serving
        logger.info("serving", metadata: [
            "version": "\(configuration.serverVersion)", "restart_store": "\(ledger.map { "\($0.store.capacity) descriptors" } ?? "none")",
            "socket": "\(configuration.socketPath)", "engine": "\(engine.name)",
            "channels": "\(engine.channels.count)", "hugepage_size": "\(hugepageSize)",
        ])
        var drainDeadline = Double.infinity
        let busyPoll = UInt64(max(0, configuration.busyPollMicroseconds)) * 1000
        var lastActivity: UInt64 = 0
        // Busy turns since epoll was last looked at.
        var turnsWithoutLook = 0
        let tickInterval = observer?.tickInterval ?? Double.infinity
        var nextTick = Clock.seconds() + tickInterval
        observer?.serving(summary)
        while true {
            if abandonRequested.load(ordering: .sequentiallyConsistent) { break }
            let stops = stopRequested.load(ordering: .sequentiallyConsistent)
            if stops >= 2 {
                logger.warning("second stop signal: stopping at once")
                break
            }
            if stops == 1 && state == .serving {
                drainDeadline = handoverRequested.load(ordering: .sequentiallyConsistent) ? beginHandover() : beginDrain()
            }
            // (Looked at on the turns that look at epoll: a clock read per busy turn showed in the profile.)
            if tickInterval.isFinite, turnsWithoutLook == 0, let observer, Clock.seconds() >= nextTick {
                observer.tick(summary)
                nextTick = Clock.seconds() + tickInterval
            }
            if let update = policyUpdate.withLock({ $0.take() }) { applyPolicyUpdate(update) }
            if state == .draining {
                if channels.allSatisfy({ $0.isIdle }) && connections.values.allSatisfy({ $0.backlog.isEmpty }) { break }
                if Clock.seconds() >= drainDeadline {
                    logger.warning("drain timed out; stopping with ops in flight")
                    break
                }
            }
            if state == .handingOver {
                if everythingSettled { break }
                if Clock.seconds() >= drainDeadline {
                    logger.warning("handover: the drain timed out; clients still owed something will be told their work was lost")
                    break
                }
            }
            var busy = !ringList.isEmpty && pollRings()
            // Ops a channel kept for this turn once its inline budget was spent.
            if channels.contains(where: \.deferred) {
                for channel in channels where channel.deferred { channel.dispatch() }
                deliver()
                busy = true
            }
            var now = Clock.nanoseconds()
            if busy { lastActivity = now }
            let polling = busyPoll > 0 && (busy || now &- lastActivity < busyPoll)
            if polling, channels.contains(where: { $0.engine.hasCompletions }) {
                // (Not counted as busy: a turn that only reaped still looks at epoll and yields, so the
                // engine's workers get the CPU on a machine with few.)
                reapCompletions()
                now = Clock.nanoseconds()
                lastActivity = now
            }
            var timeout: Int32 = polling ? 0 : state == .draining || state == .handingOver ? 50 : -1
            let untilCoalesced = router.expireCoalesced(now: now)
            deliver()
            if untilCoalesced >= 0 && timeout != 0 { timeout = timeout < 0 ? untilCoalesced : min(timeout, untilCoalesced) }
            if timeout != 0 && tickInterval.isFinite {
                let untilTick = Int32(max(0, min(60_000, (nextTick - Clock.seconds()) * 1000)).rounded(.up))
                timeout = timeout < 0 ? untilTick : min(timeout, untilTick)
            }
            if timeout != 0 && channels.contains(where: \.deferred) { timeout = 0 }
            if timeout != 0 && !engine.armNotifier() { timeout = 0 }
            // Before sleeping, every ring says so (NEED_WAKEUP) and is looked at once more (SPEC.md §5.10.3).
            if timeout != 0 && !ringList.isEmpty && !armRings() {
                timeout = 0
                lastActivity = Clock.nanoseconds()
            }
            // Debug builds: before each sleep, every pin in the buffer table belongs to an op in a queue,
            // an engine slot or a halted channel's hand-back list.
            assert(timeout == 0 || pinsAccountedFor(), "buffer pins: the table holds \(bufferTable.totalPins), the ops name \(pinsNamed())")
            // While rings keep the loop busy, the sockets, the listener and the engine's notifier are
            // looked at every few turns rather than every turn: a look is a system call, which costs as
            // much as a batch of small ring ops (a socket client waits a few turns at most).
            if timeout == 0 && busy && turnsWithoutLook < Self.busyTurnsPerLook {
                turnsWithoutLook += 1
                continue
            }
            turnsWithoutLook = 0
            let n = try epoll.wait(timeoutMilliseconds: timeout)
            if timeout != 0 { engine.disarmNotifier() }
            if n > 0 {
                lastActivity = Clock.nanoseconds()
            } else if polling {
                // Busy-polling with nothing to do this turn: the CPU is offered to any other runnable
                // thread (an engine worker, a buffer setup, a client on a crowded machine), which costs a
                // system call when there is none. A turn that did work goes straight on: yielding after
                // every turn was a system call per batch while rings kept the loop busy.
                if !busy { Clock.yield() }
            } else if channels.contains(where: { $0.engine.hasCompletions }) {
                reapCompletions()
            }
            for i in 0..<n {
                let (token, ready) = epoll.event(at: i)
                switch token {
                case Self.listenerToken: acceptConnections()
                case Self.engineToken:
                    engine.notifier.drain()
                    reapCompletions()
                case Self.wakeupToken: wakeup.drain()
                case Self.setupToken: setupsFinished()
                default:
                    if token >= Self.ringTokenBase {
                        if let ring = rings[token] { doorbellRang(ring) }
                        continue
                    }
                    guard let connection = connections[token] else { continue }
                    if ready.contains(.writable) || ready.contains(.error) { connectionWritable(connection) }
                    if ready.contains(.readable) || ready.contains(.hangup) { connectionReadable(connection) }
                }
            }
        }
        let handedOver = state == .handingOver
        if abandonRequested.load(ordering: .sequentiallyConsistent) {
            logger.warning("abandoned: ending as a crash would")
        } else if handedOver {
            // Nothing is closed: the store keeps every connection, buffer and ring for the next instance.
            finishHandover()
        } else {
            for connection in Array(connections.values) { close(connection, reason: "server stopping") }
        }
        engine.shutdown()
        workers.shutdown()
        if let boundSocket {
            var st = stat()
            if lstat(boundSocket.path, &st) == 0 && st.st_ino == boundSocket.inode { unlink(boundSocket.path) }
        }
        state = .stopped
        logger.info("stopped")
    }

    /// Stops accepting, tells every client with GOODBYE, and returns the drain deadline. The listening
    /// socket stays open (with socket activation systemd keeps it, and queued connections go to the next
    /// instance).
    private func beginDrain() -> Double {
        state = .draining
        epoll.remove(listener.rawValue)
        let inFlight = channels.reduce(0) { $0 + $1.inEngine + $1.pendingCount }
        logger.info("draining", metadata: ["in_flight": "\(inFlight)", "clients": "\(connections.count)"])
        observer?.stopping(summary)
        let goodbye = Message.goodbye(drainMilliseconds: UInt32(configuration.drainTimeoutMilliseconds))
        for connection in Array(connections.values) {
            reply(connection, goodbye, requestID: 0)
        }
        return Clock.seconds() + Double(configuration.drainTimeoutMilliseconds) / 1000
    }

    /// What the observer is told.
    var summary: ServerSummary {
        ServerSummary(state: state, engine: engine.name, channels: channels.count, clients: connections.count,
                      opsCompleted: channels.reduce(0) { $0 + $1.opsCompleted },
                      inFlight: channels.reduce(0) { $0 + $1.inEngine + $1.pendingCount }, at: Clock.seconds())
    }

    /// Applies a policy handed over by `apply(policy:)`, or counts a refused reload.
    private func applyPolicyUpdate(_ update: PolicyUpdate) {
        let fresh: Policy
        switch update {
        case .refused(let reason):
            policyReloadFailures += 1
            logger.error("reload refused; the previous policy stays in force", metadata: ["error": "\(reason)"])
            return
        case .apply(let policy):
            fresh = policy
        }
        policy = fresh
        policyReloads += 1
        for tenant in tenants.values {
            // A tenant stays the tenant it is (its connections came as it); its limits and view follow the
            // entry that now matches its first connection's identity.
            let resolved = policy.resolve(tenant.identity, serverUID: ProcessIdentity.uid)
            (tenant.limits, tenant.policySource, tenant.seesAll) = (resolved.limits, resolved.source, resolved.seesAll)
        }
        logger.notice("policy reloaded", metadata: [
            "users": "\(policy.users.count)", "groups": "\(policy.groups.count)", "tenants": "\(tenants.count)",
        ])
    }

    // MARK: Connections

    private func acceptConnections() {
        while true {
            let fd: FileDescriptor
            do throws(SystemError) {
                guard let accepted = try UnixSocket.accept(listener) else { return }
                fd = accepted
            } catch {
                logger.error("accept failed", metadata: ["error": "\(error)"])
                return
            }
            guard var peer = try? UnixSocket.peerCredentials(fd) else { continue }
            // Where the peer runs (its cgroup, unit and slice), fixed at connect like its uid. A process
            // that has exited by now is refused: its pid may already name another.
            switch PeerCgroup.ofPeer(fd, pid: peer.pid, resolver: cgroupPaths) {
            case .success(let cgroup):
                peer.cgroup = cgroup
                if !cgroup.viaPidfd && !warnedNoPidfd {
                    warnedNoPidfd = true
                    logger.notice("this kernel has no SO_PEERPIDFD: a peer's cgroup is read by its pid, checked alive afterwards", metadata: [
                        "pid": "\(peer.pid)",
                    ])
                }
            case .failure(.exited(let pid)):
                refuse(fd, peer, .permissionDenied, "process \(pid) exited before its identity could be read")
                continue
            case .failure(let error):
                // No cgroup v2 here (or /proc unreadable): the peer is known by its uid alone.
                logger.debug("peer cgroup unknown", metadata: ["pid": "\(peer.pid)", "error": "\(error)"])
            }
            guard connections.count < configuration.maxConnections else {
                refuse(fd, peer, .quotaExceeded, "the server has \(connections.count) connections, its limit")
                continue
            }
            let resolved = policy.resolve(peer, serverUID: ProcessIdentity.uid)
            let (limits, source) = (resolved.limits, resolved.source)
            let existing = tenants[resolved.tenant]
            let who = resolved.scoped ? "\(resolved.tenant.name) (uid \(peer.uid))" : "uid \(peer.uid) (gid \(peer.gid))"
            guard limits.allowed else {
                refuse(fd, peer, .permissionDenied, "\(who) is not allowed to use ioatd (policy: \(source))")
                continue
            }
            guard (existing?.connections ?? 0) < limits.maxConnections else {
                existing?.refusals += 1
                refuse(fd, peer, .quotaExceeded,
                       "\(resolved.scoped ? resolved.tenant.name : "uid \(peer.uid)") already has \(existing?.connections ?? 0) connections; its limit is \(limits.maxConnections) (policy: \(source))")
                continue
            }
            guard ledger?.hasRoom(1) ?? true else {
                refuse(fd, peer, .quotaExceeded, "the restart store is full (\(ledger!.store.capacity) descriptors; raise FileDescriptorStoreMax=)")
                continue
            }
            let tenant = existing ?? tenant(for: peer, resolved: resolved)
            let id = nextConnectionID + Self.firstConnectionToken
            nextConnectionID += 1
            let connection = Connection(id: id, fd: fd, peer: peer, tenant: tenant, maxMessage: configuration.maxMessage,
                                        maxDescriptors: configuration.maxDescriptors, now: Clock.seconds())
            do throws(SystemError) {
                try epoll.add(fd.rawValue, .readable, token: id)
            } catch {
                logger.error("epoll add failed", metadata: ["error": "\(error)"])
                connection.releaseAll(closingIn: bufferTable)
                forgetIfIdle(tenant)
                continue
            }
            connections[id] = connection
            connectionsAccepted += 1
            ledger?.keep(fd, name: StoreName.connection(id))
            persist()
            logger.info("client connected", metadata: [
                "client": "\(id)", "pid": "\(peer.pid)", "uid": "\(peer.uid)", "gid": "\(peer.gid)",
                "cgroup": "\(peer.cgroup?.path ?? "unknown")", "unit": "\(peer.cgroup?.unit ?? "none")",
            ])
        }
    }

    /// The tenant a peer belongs to (made when it has no connection yet).
    func tenant(for peer: PeerCredentials, resolved: Policy.Resolution? = nil) -> Tenant {
        let resolved = resolved ?? policy.resolve(peer, serverUID: ProcessIdentity.uid)
        if let existing = tenants[resolved.tenant] { return existing }
        nextTenantID &+= 1
        let tenant = Tenant(key: resolved.tenant, id: nextTenantID, identity: peer, limits: resolved.limits, policySource: resolved.source,
                            seesAll: resolved.seesAll)
        tenants[resolved.tenant] = tenant
        return tenant
    }

    /// Refuses a new connection: one ERROR naming the reason (request_id 0), then close.
    private func refuse(_ fd: FileDescriptor, _ peer: PeerCredentials, _ code: ErrorCode, _ message: String) {
        connectionsRefused += 1
        logger.warning("connection refused", metadata: [
            "pid": "\(peer.pid)", "uid": "\(peer.uid)", "gid": "\(peer.gid)", "code": "\(code.name)", "reason": "\(message)",
        ])
        let packet = Message.error(ErrorReply(ProtocolError(code, message))).encode(requestID: 0, version: 1)
        packet.withUnsafeBytes { _ = try? UnixSocket.send(fd, $0, fds: []) }
        // Discard what the client already sent (its HELLO, usually), so it reads the ERROR, not a reset.
        UnixSocket.discardUnread(fd)
    }

    /// Drops a tenant with no connection left (its lanes go too; statistics start again next time).
    private func forgetIfIdle(_ tenant: Tenant) {
        guard tenant.connections == 0, tenants[tenant.key] === tenant else { return }
        tenants[tenant.key] = nil
        for scheduler in channels { scheduler.forget(tenant) }
    }

    /// Closes `connection`: stops watching it, drops its pending ops and tables. Ops already in the
    /// engine finish; their buffers are unmapped when the last of them completes.
    func close(_ connection: Connection, reason: String) {
        guard !connection.isClosed else { return }
        connection.machine.close()
        epoll.remove(connection.fd.rawValue)
        // The peer reads what was sent (an ERROR that closes, say), then the end: never a reset.
        UnixSocket.discardUnread(connection.fd)
        connections[connection.id] = nil
        parked.removeAll { $0 === connection }
        for queue in connection.queues.values {
            if let ring = queue.ring { dropRing(ring) }
            router.orphaned(channels[queue.channel].cancelPending(of: queue), of: queue)
            channels[queue.channel].queueCount -= 1
            queue.connection = nil
            router.dropHeld(of: queue)
        }
        if let ledger {
            ledger.drop(StoreName.connection(connection.id))
            for buffer in connection.buffers.byHandle.values { releaseStoredFile(buffer) }
        }
        connection.releaseAll(closingIn: bufferTable)
        connection.backlog.removeAll()
        forgetIfIdle(connection.tenant)
        persist()
        logger.info("client disconnected", metadata: [
            "client": "\(connection.id)", "pid": "\(connection.peer.pid)", "reason": "\(reason)",
        ])
    }

    /// A buffer's handle is closed: its file leaves the store once no handle names it.
    func releaseStoredFile(_ buffer: OpenBuffer) {
        if let ledger, let name = bufferTable.buffer(buffer.slot)?.storedAs { ledger.releaseFile(name) }
    }

    /// Pins that the ops the server holds account for: queued in a connection's queue, or held by a
    /// channel (engine slots, ops a halt handed back).
    func pinsNamed() -> Int {
        var named = channels.reduce(0) { $0 + $1.pinsHeld }
        for connection in connections.values {
            for queue in connection.queues.values { named += queue.pending.pinsNamed }
        }
        return named
    }

    func pinsAccountedFor() -> Bool { pinsNamed() == bufferTable.totalPins }

    func updateInterest(_ connection: Connection) {
        guard !connection.isClosed else { return }
        var wanted: Epoll.Events = []
        if connection.wantsToRead { wanted.insert(.readable) }
        if !connection.backlog.isEmpty { wanted.insert(.writable) }
        guard wanted != connection.interest else { return }
        connection.interest = wanted
        do throws(SystemError) {
            try epoll.modify(connection.fd.rawValue, wanted, token: connection.id)
        } catch {
            close(connection, reason: "epoll: \(error)")
        }
    }

    private func connectionWritable(_ connection: Connection) {
        do throws(SystemError) {
            try connection.flushBacklog { queue, records in router.delivered(records, of: queue) }
        } catch {
            close(connection, reason: "send: \(error)")
            return
        }
        if connection.backlog.isEmpty && connection.machine.closesOnceWritten {
            close(connection, reason: "protocol error; its ERROR was delivered")
            return
        }
        updateInterest(connection)
        resumeParked()
        if connection.wantsToRead { connectionReadable(connection) }
    }

    /// Reads and handles up to a bounded number of packets, so one busy client cannot hold the loop.
    func connectionReadable(_ connection: Connection) {
        var budget = 64
        while budget > 0 && connection.wantsToRead {
            budget -= 1
            var packet: ReceivedPacket
            do throws(SystemError) {
                packet = try UnixSocket.receive(connection.fd, into: connection.receiveBuffer)
            } catch where error.errno == EAGAIN {
                break
            } catch {
                close(connection, reason: "receive: \(error)")
                return
            }
            // A zero-length read is the end of the stream, or an empty packet (MALFORMED, SPEC.md §2.2).
            if packet.isEmpty && UnixSocket.peerHasShutDown(connection.fd) {
                close(connection, reason: "client closed the connection")
                return
            }
            connection.requests += 1
            handlePacket(connection, &packet)
        }
        updateInterest(connection)
        if connection.wantsToRead && budget == 0 {
            // More may be waiting; epoll is level-triggered and will report it again.
        }
    }

    /// Sends the reply to a request; closes the connection if the socket failed.
    func reply(_ connection: Connection, _ message: Message, requestID: UInt64, fds: [FileDescriptor] = []) {
        let bytes = message.encode(requestID: requestID, version: connection.version)
        let result = bytes.withUnsafeBytes { connection.send($0, fds: fds) }
        if case .failed(let error) = result { close(connection, reason: "send: \(error)") }
        updateInterest(connection)
    }

    /// Sends ERROR for a refused request; closes the connection when the code says so (SPEC.md §7).
    /// Sends the ERROR for `error`; the connection's state machine says whether it then closes (`closes`
    /// when it already did, for a packet it refused itself).
    func refuse(_ connection: Connection, _ error: ProtocolError, requestID: UInt64, closes: Bool? = nil) {
        connection.errors += 1
        logger.debug("request refused", metadata: [
            "client": "\(connection.id)", "code": "\(error.code.name)", "message": "\(error.message)",
        ])
        let closing = closes ?? connection.machine.refused(error)
        reply(connection, .error(ErrorReply(error)), requestID: requestID)
        guard closing, !connection.isClosed else { return }
        if connection.backlog.isEmpty {
            close(connection, reason: "protocol error \(error.code.name)")
        } else {
            // The ERROR waits behind other output: the machine closes it once that is written.
            updateInterest(connection)
        }
    }

    // MARK: Completions

    /// Collects finished ops from every channel, routes their records to queues, sends the records that
    /// reached a flush point, and refills the engine windows.
    func reapCompletions() {
        for channel in channels {
            if channel.reap(into: reapBuffer) {
                let replayed = channel.recover()
                logger.warning("channel halted and reset", metadata: [
                    "channel": "\(channel.engine.info.index)", "replayed": "\(replayed)",
                    "error": "\(channel.lastError ?? "")",
                ])
            }
            channel.dispatch()
        }
        deliver()
        resumeParked()
    }

    /// Routes every channel's finished ops, sends what reached a flush point, and closes connections
    /// whose socket failed.
    func deliver(now given: UInt64 = 0) {
        // The clock is read only when something finished and the caller has no fresh reading: most calls
        // (the loop's, after a pump already delivered) have nothing to route, and a clock read costs as
        // much as routing a few records.
        var now = given
        for channel in channels {
            channel.takeFinished {
                if now == 0 { now = Clock.nanoseconds() }
                router.route($0, now: now)
            }
        }
        router.flush(now: now)
        for (connection, error) in router.failed { close(connection, reason: "send: \(error)") }
        for connection in router.touched { updateInterest(connection) }
    }

    /// Retries parked requests whose queues may have credits again; a connection whose request went
    /// through reads its next packets.
    private func resumeParked() {
        guard !parked.isEmpty else { return }
        let waiting = parked
        parked.removeAll(keepingCapacity: true)
        for connection in waiting where !connection.isClosed {
            guard let request = connection.parked else { continue }
            guard request.queue.freeCredits >= request.credits else {
                parked.append(connection)
                continue
            }
            _ = connection.unpark()
            switch request {
            case .submit(let queue, let ops): accept(ops, into: queue)
            case .reserve(let queue, _, let requestID):
                reply(connection, .reserveReply(freeCredits: UInt32(queue.freeCredits)), requestID: requestID)
            }
            updateInterest(connection)
            connectionReadable(connection)
        }
    }

    // MARK: Helpers

    private static func readHugepageSize() -> UInt64 {
        guard let meminfo = readSmallFile("/proc/meminfo") else { return 0 }
        for line in meminfo.split(separator: "\n") where line.hasPrefix("Hugepagesize:") {
            return (UInt64(line.filter(\.isNumber)) ?? 0) * 1024
        }
        return 0
    }
}
