import Foundation
import Glibc
import Histogram
import IOATProtocol
import IOATSystem

extension IOATServer {
    /// The STATUS document (SPEC.md §5.6) for `viewer` (a connection; nil: everything, for tests). A
    /// tenant that sees everything (root or the server's uid outside every unit and cgroup entry, or an
    /// entry with `admin = true`) sees every client and tenant; any other sees the server and channel
    /// summaries and only its own tenant's clients and entry.
    /// `version` is the viewer connection's negotiated version, reported as `protocol_version`.
    func statusDocument(for viewer: Connection? = nil, page: StatusRequest = .first, version: UInt16 = Wire.version)
        -> StatusDocument
    {
        statusPage(for: viewer, page: page, version: version).document
    }

    /// The STATUS document as JSON, sized to fit one message.
    func statusJSON(for viewer: Connection? = nil, page: StatusRequest = .first, version: UInt16 = Wire.version) -> String {
        statusPage(for: viewer, page: page, version: version).json
    }

    /// Builds the page: the server, channels and totals always; then as many clients (by id, from
    /// `page.clientFrom`) and then tenants (by id, from `page.tenantFrom`) as fit in `max_message`.
    private func statusPage(for viewer: Connection?, page: StatusRequest, version: UInt16)
        -> (document: StatusDocument, json: String)
    {
        let seesAll = viewer.map { $0.tenant.seesAll } ?? true
        func visible(_ tenant: Tenant) -> Bool { seesAll || tenant === viewer?.tenant }
        let clients = connections.values.filter { visible($0.tenant) }.sorted { $0.id < $1.id }
        let tenantList = tenants.values.filter { visible($0) }.sorted { $0.id < $1.id }

        var server = StatusDocument.Server(
            protocolVersion: Int(version), pid: Int(ProcessIdentity.pid), state: state.rawValue, engine: engine.name,
            socket: configuration.socketPath, uptimeSeconds: ((Clock.seconds() - startedAt) * 1000).rounded() / 1000,
            hugepageSize: hugepageSize, connections: connections.count, connectionsAccepted: connectionsAccepted,
            connectionsRefused: connectionsRefused, policyReloads: policyReloads, policyReloadFailures: policyReloadFailures)
        if let facts = engine.status {
            server.dpdkDevices = facts.devices.map { "\($0.name) (\($0.driver), \($0.channels) vchan\($0.channels == 1 ? "" : "s"))" }
                .joined(separator: ", ")
            server.dpdkIovaMode = facts.iovaIsVirtual ? "va" : "pa"
            server.dmaRegistrations = facts.registrations
        }
        server.bufferBudget = StatusDocument.Budget(limit: budget.limit, locked: budget.locked, unlocked: budget.unlocked,
                                                    hugepages: budget.hugepages, reserved: budget.reserved)
        let pool = MemoryInfo.current()
        server.hugepagesTotal = pool.hugepagesTotal
        server.hugepagesFree = pool.hugepagesFree
        var totals = StatusDocument.Buffers(count: 0, bytes: 0, hugepageBacked: 0)
        for c in clients {
            totals.count += c.buffers.count
            totals.bytes += c.bufferBytes
            totals.hugepageBacked += c.buffers.byHandle.values.filter { $0.flags.contains(.hugepages) }.count
        }
        var document = StatusDocument(
            server: server, channels: channels.map(Self.status(of:)), clients: [], tenants: [], buffers: totals,
            page: StatusDocument.Page(clientsTotal: clients.count, tenantsTotal: tenantList.count,
                                      nextClient: nil, nextTenant: nil))

        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        func size<T: Encodable>(_ value: T) -> Int { (try? encoder.encode(value).count) ?? Int.max / 4 }
        // Room for the entries: the message limit less the header, the document without entries, and
        // the page's numbers at their widest.
        var room = configuration.maxMessage - Wire.headerSize - size(document) - 64
        /// Appends entries of `items` while they fit; returns the key of the first that did not.
        func fill<Item, Entry: Encodable, Key>(_ items: some Sequence<Item>, key: (Item) -> Key, entry: (Item) -> Entry,
                                              into list: inout [Entry]) -> Key? {
            for item in items {
                let e = entry(item)
                let cost = size(e) + 1
                guard cost <= room else { return key(item) }
                room -= cost
                list.append(e)
            }
            return nil
        }
        document.page.nextClient = fill(clients.drop { $0.id < page.clientFrom }, key: \.id, entry: Self.status(of:),
                                        into: &document.clients)
        let pendingTenants = tenantList.drop { $0.id < page.tenantFrom || page.tenantFrom == StatusRequest.endOfTenants }
        if document.page.nextClient != nil {
            // The clients filled the page: tenants start on a later one, from where this one was asked to.
            document.page.nextTenant = pendingTenants.first?.id
        } else {
            document.page.nextTenant = fill(pendingTenants, key: \.id, entry: status(of:), into: &document.tenants)
        }
        let json = (try? encoder.encode(document)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        return (document, json)
    }

    private static func status(of channel: Channel) -> StatusDocument.Channel {
        let info = channel.engine.info
        var runs: [String: String] = [:]
        for opcode in Opcode.allCases where info.supports(opcode) { runs[opcode.name] = channel.engine.runner(of: opcode) }
        return StatusDocument.Channel(
            index: info.index, name: info.name, engine: info.engine == .cpu ? "cpu" : "dpdk",
            hardwareVersion: info.hardwareVersion, opcodes: Opcode.allCases.filter(info.supports).map(\.name).joined(separator: ","),
            runs: runs, maxTransfer: info.maxTransfer, maxDepth: info.maxDepth, maxCoalesceUs: info.maxCoalesceMicroseconds,
            queues: channel.queueCount, inEngine: channel.inEngine, ops: channel.opsCompleted, bytes: channel.bytesCompleted,
            errors: channel.opsFailed, halts: channel.halts, resets: channel.resets, replayed: channel.replayed,
            lastError: channel.lastError ?? "", busySeconds: Double(channel.engine.busyNanoseconds) / 1e9,
            device: channel.engine.deviceStatus.map {
                StatusDocument.Device(name: $0.name, driver: $0.driver, vchan: $0.vchan, deviceOps: $0.deviceOps, cpuOps: $0.cpuOps,
                                      restarts: $0.restarts, lastError: $0.lastError ?? "none")
            })
    }

    private static func status(of c: Connection) -> StatusDocument.Client {
        var entry = StatusDocument.Client(
            id: c.id, pid: c.peer.pid, uid: c.peer.uid, gid: c.peer.gid, groups: c.peer.groups, buffers: c.buffers.count,
            bufferBytes: c.bufferBytes, queues: c.queues.count, requests: c.requests, errors: c.errors,
            ops: c.queues.values.reduce(0) { $0 + $1.opsCompleted }, bytes: c.queues.values.reduce(0) { $0 + $1.bytesCompleted })
        entry.cgroup = c.peer.cgroup?.path
        entry.unit = c.peer.cgroup?.unit
        entry.slice = c.peer.cgroup?.slice
        return entry
    }

    /// Latencies in microseconds, from SUBMIT acceptance to the engine taking the op (queue wait) and to
    /// its completion (latency).
    private static func percentiles(_ h: Histogram<UInt64>) -> StatusDocument.Percentiles {
        func us(_ p: Double) -> Double { h.totalCount == 0 ? 0 : Double(h.valueAtPercentile(p)) / 1000 }
        return StatusDocument.Percentiles(p50: us(50), p90: us(90), p99: us(99), p999: us(99.9),
                                          max: h.totalCount == 0 ? 0 : Double(h.max) / 1000)
    }

    /// A histogram as cumulative buckets at the standard bounds.
    private static func buckets(_ h: Histogram<UInt64>, sum: UInt64) -> StatusDocument.Buckets {
        let bounds = StatusDocument.Buckets.standardBoundsUs
        let counts = bounds.map { h.totalCount == 0 ? 0 : h.count(within: 0...UInt64($0 * 1000)) }
        return StatusDocument.Buckets(boundsUs: bounds, counts: counts, count: h.totalCount, sumUs: Double(sum) / 1000)
    }

    private func creditsInUse(of tenant: Tenant) -> Int {
        connections.values.reduce(0) { total, c in
            c.tenant === tenant ? total + c.queues.values.reduce(0) { $0 + $1.outstanding } : total
        }
    }

    private func status(of t: Tenant) -> StatusDocument.Tenant {
        var entry = Self.status(of: t)
        entry.creditsInUse = creditsInUse(of: t)
        entry.queueWaitBuckets = Self.buckets(t.queueWait, sum: t.queueWaitSum)
        entry.latencyBuckets = Self.buckets(t.latency, sum: t.latencySum)
        return entry
    }

    private static func status(of t: Tenant) -> StatusDocument.Tenant {
        var entry = StatusDocument.Tenant(
            uid: t.uid, gid: t.gid, groups: t.groups, policy: t.policySource, weight: t.limits.weight, connections: t.connections,
            maxConnections: t.limits.maxConnections, bufferBytes: t.bufferBytes, maxBufferBytes: t.limits.maxBufferBytes,
            queues: t.queues, maxQueues: t.limits.maxQueues, inflightCapacity: t.inflightCapacity, maxInflight: t.limits.maxInflight,
            ops: t.ops, bytes: t.bytes, errors: t.errors, refusals: t.refusals, servedCost: t.served,
            hugepageBytes: t.hugepageBytes,
            queueWaitUs: percentiles(t.queueWait), latencyUs: percentiles(t.latency))
        entry.id = t.id
        entry.name = t.name
        return entry
    }
}
