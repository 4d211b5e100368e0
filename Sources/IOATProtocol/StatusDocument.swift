/// The STATUS_OK document (SPEC.md §5.6), as typed values. The server encodes it as JSON and clients decode
/// it; both use these types, so a member exists in exactly one place. Unknown members are ignored when
/// decoding (JSON decoders skip keys they do not know), which is what §5.6 asks of clients.
///
/// `clients` and `tenants` are paged (§5.6): one STATUS_OK holds as many entries as fit in `max_message`,
/// and `page` says where the next page starts.
public struct StatusDocument: Codable, Sendable, Equatable {
    /// Server-wide facts.
    public var server: Server
    /// Every channel, by index.
    public var channels: [Channel]
    /// Connections visible to the viewer, by ascending `id`, from the page's start.
    public var clients: [Client]
    /// Tenants visible to the viewer, by ascending `uid`, from the page's start.
    public var tenants: [Tenant]
    /// Buffer totals over every client visible to the viewer (all pages).
    public var buffers: Buffers
    /// Where this page sits in the lists, and where the next one starts.
    public var page: Page

    /// Creates a document.
    public init(server: Server, channels: [Channel], clients: [Client], tenants: [Tenant], buffers: Buffers, page: Page) {
        self.server = server
        self.channels = channels
        self.clients = clients
        self.tenants = tenants
        self.buffers = buffers
        self.page = page
    }

    /// Server-wide facts.
    public struct Server: Codable, Sendable, Equatable {
        public var protocolVersion: Int
        public var pid: Int
        public var state: String
        public var engine: String
        public var socket: String
        public var uptimeSeconds: Double
        public var hugepageSize: UInt64
        public var connections: Int
        public var connectionsAccepted: UInt64
        public var connectionsRefused: UInt64
        public var policyReloads: UInt64
        public var policyReloadFailures: UInt64
        /// The server-wide budget of buffer memory, and what uses it.
        public var bufferBudget: Budget?
        /// The machine's hugepage pool (HugePages_Total, HugePages_Free), in pages of `hugepage_size`.
        public var hugepagesTotal: UInt64?
        public var hugepagesFree: UInt64?
        /// DPDK engine only.
        public var dpdkDevices: String?
        public var dpdkIovaMode: String?
        public var dmaRegistrations: Int?

        enum CodingKeys: String, CodingKey {
            case bufferBudget = "buffer_budget", hugepagesTotal = "hugepages_total", hugepagesFree = "hugepages_free"
            case protocolVersion = "protocol_version", pid, state, engine, socket, uptimeSeconds = "uptime_seconds"
            case hugepageSize = "hugepage_size", connections, connectionsAccepted = "connections_accepted"
            case connectionsRefused = "connections_refused", policyReloads = "policy_reloads"
            case policyReloadFailures = "policy_reload_failures", dpdkDevices = "dpdk_devices"
            case dpdkIovaMode = "dpdk_iova_mode", dmaRegistrations = "dma_registrations"
        }

        /// Creates the server part; the DPDK members start empty.
        public init(protocolVersion: Int, pid: Int, state: String, engine: String, socket: String, uptimeSeconds: Double,
                    hugepageSize: UInt64, connections: Int, connectionsAccepted: UInt64, connectionsRefused: UInt64,
                    policyReloads: UInt64, policyReloadFailures: UInt64) {
            self.protocolVersion = protocolVersion
            self.pid = pid
            self.state = state
            self.engine = engine
            self.socket = socket
            self.uptimeSeconds = uptimeSeconds
            self.hugepageSize = hugepageSize
            self.connections = connections
            self.connectionsAccepted = connectionsAccepted
            self.connectionsRefused = connectionsRefused
            self.policyReloads = policyReloads
            self.policyReloadFailures = policyReloadFailures
        }
    }

    /// The server-wide buffer budget (SPEC.md §5.1): bytes.
    public struct Budget: Codable, Sendable, Equatable {
        /// `max_total_buffer_bytes`.
        public var limit: UInt64
        /// Buffers that exist, locked in memory (mlock, hugepages, DMA pins) and not.
        public var locked: UInt64
        public var unlocked: UInt64
        /// Of those, hugepages.
        public var hugepages: UInt64
        /// Buffers being made.
        public var reserved: UInt64

        /// Creates the budget's figures.
        public init(limit: UInt64, locked: UInt64, unlocked: UInt64, hugepages: UInt64, reserved: UInt64) {
            self.limit = limit
            self.locked = locked
            self.unlocked = unlocked
            self.hugepages = hugepages
            self.reserved = reserved
        }
    }

    /// One channel.
    public struct Channel: Codable, Sendable, Equatable {
        public var index: UInt32
        public var name: String
        /// "cpu" or "dpdk".
        public var engine: String
        /// The wire `hw_version` (0 for the CPU engine).
        public var hardwareVersion: UInt16
        /// Opcode names, comma-separated.
        public var opcodes: String
        /// For each opcode the channel runs, what runs it: "cpu" or a DPDK driver's name.
        public var runs: [String: String]
        public var maxTransfer: UInt64
        public var maxDepth: UInt32
        public var maxCoalesceUs: UInt32
        public var queues: Int
        public var inEngine: Int
        public var ops: UInt64
        public var bytes: UInt64
        public var errors: UInt64
        public var halts: UInt64
        public var resets: UInt64
        public var replayed: UInt64
        public var lastError: String
        /// Seconds the channel had ops to run since the server started (engine busy time).
        public var busySeconds: Double?
        /// DPDK engine only.
        public var device: Device?

        enum CodingKeys: String, CodingKey {
            case index, name, engine, hardwareVersion = "hardware_version", opcodes, runs, maxTransfer = "max_transfer"
            case maxDepth = "max_depth", maxCoalesceUs = "max_coalesce_us", queues, inEngine = "in_engine", ops, bytes
            case errors, halts, resets, replayed, lastError = "last_error", busySeconds = "busy_seconds", device
        }

        /// Creates a channel entry.
        public init(index: UInt32, name: String, engine: String, hardwareVersion: UInt16, opcodes: String,
                    runs: [String: String], maxTransfer: UInt64, maxDepth: UInt32, maxCoalesceUs: UInt32, queues: Int,
                    inEngine: Int, ops: UInt64, bytes: UInt64, errors: UInt64, halts: UInt64, resets: UInt64,
                    replayed: UInt64, lastError: String, busySeconds: Double? = nil, device: Device? = nil) {
            self.index = index
            self.name = name
            self.engine = engine
            self.hardwareVersion = hardwareVersion
            self.opcodes = opcodes
            self.runs = runs
            self.maxTransfer = maxTransfer
            self.maxDepth = maxDepth
            self.maxCoalesceUs = maxCoalesceUs
            self.queues = queues
            self.inEngine = inEngine
            self.ops = ops
            self.bytes = bytes
            self.errors = errors
            self.halts = halts
            self.resets = resets
            self.replayed = replayed
            self.lastError = lastError
            self.busySeconds = busySeconds
            self.device = device
        }
    }

    /// The DMA device behind a DPDK channel.
    public struct Device: Codable, Sendable, Equatable {
        /// DPDK device name.
        public var name: String
        /// DPDK driver name.
        public var driver: String
        public var vchan: UInt16
        /// Ops the device ran, and ops the channel's worker ran on the CPU.
        public var deviceOps: UInt64
        public var cpuOps: UInt64
        public var restarts: UInt64
        public var lastError: String

        enum CodingKeys: String, CodingKey {
            case name, driver, vchan, deviceOps = "device_ops", cpuOps = "cpu_ops", restarts, lastError = "last_error"
        }

        /// Creates a device entry.
        public init(name: String, driver: String, vchan: UInt16, deviceOps: UInt64, cpuOps: UInt64, restarts: UInt64,
                    lastError: String) {
            self.name = name
            self.driver = driver
            self.vchan = vchan
            self.deviceOps = deviceOps
            self.cpuOps = cpuOps
            self.restarts = restarts
            self.lastError = lastError
        }
    }

    /// One connection.
    public struct Client: Codable, Sendable, Equatable {
        public var id: UInt64
        public var pid: Int32
        public var uid: UInt32
        public var gid: UInt32
        public var groups: [UInt32]
        public var buffers: Int
        public var bufferBytes: UInt64
        public var queues: Int
        public var requests: UInt64
        public var errors: UInt64
        public var ops: UInt64
        public var bytes: UInt64
        /// The cgroup v2 path the client ran in when it connected, and the systemd unit and slice in that
        /// path; absent where the server could not read them.
        public var cgroup: String?
        public var unit: String?
        public var slice: String?

        enum CodingKeys: String, CodingKey {
            case id, pid, uid, gid, groups, buffers, bufferBytes = "buffer_bytes", queues, requests, errors, ops, bytes
            case cgroup, unit, slice
        }

        /// Creates a client entry.
        public init(id: UInt64, pid: Int32, uid: UInt32, gid: UInt32, groups: [UInt32], buffers: Int, bufferBytes: UInt64,
                    queues: Int, requests: UInt64, errors: UInt64, ops: UInt64, bytes: UInt64) {
            self.id = id
            self.pid = pid
            self.uid = uid
            self.gid = gid
            self.groups = groups
            self.buffers = buffers
            self.bufferBytes = bufferBytes
            self.queues = queues
            self.requests = requests
            self.errors = errors
            self.ops = ops
            self.bytes = bytes
        }
    }

    /// A latency distribution as cumulative buckets (the Prometheus shape): `counts[i]` ops took at most
    /// `bounds_us[i]` µs; `count` ops in all, `sum_us` µs in all.
    public struct Buckets: Codable, Sendable, Equatable {
        public var boundsUs: [Double]
        public var counts: [UInt64]
        public var count: UInt64
        public var sumUs: Double

        enum CodingKeys: String, CodingKey { case boundsUs = "bounds_us", counts, count, sumUs = "sum_us" }

        /// Creates buckets.
        public init(boundsUs: [Double], counts: [UInt64], count: UInt64, sumUs: Double) {
            self.boundsUs = boundsUs
            self.counts = counts
            self.count = count
            self.sumUs = sumUs
        }

        /// The bounds every server uses, in µs: 1 µs to 1 s.
        public static let standardBoundsUs: [Double] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 20_000,
                                                        50_000, 100_000, 200_000, 500_000, 1_000_000]
    }

    /// Percentiles of a latency distribution, in microseconds.
    public struct Percentiles: Codable, Sendable, Equatable {
        public var p50: Double
        public var p90: Double
        public var p99: Double
        public var p999: Double
        public var max: Double

        /// Creates a set of percentiles.
        public init(p50: Double, p90: Double, p99: Double, p999: Double, max: Double) {
            self.p50 = p50
            self.p90 = p90
            self.p99 = p99
            self.p999 = p999
            self.max = max
        }
    }

    /// One tenant (every connection of one uid).
    public struct Tenant: Codable, Sendable, Equatable {
        /// The server's number for it (STATUS pages tenants by it); absent from servers before it.
        public var id: UInt32?
        /// How operators name it: "uid 1000", a systemd unit, a cgroup path, or a shared entry.
        public var name: String?
        /// Its first connection's uid.
        public var uid: UInt32
        public var gid: UInt32
        public var groups: [UInt32]
        /// The policy entry its limits came from.
        public var policy: String
        public var weight: Int
        public var connections: Int
        public var maxConnections: Int
        public var bufferBytes: UInt64
        public var maxBufferBytes: UInt64
        public var queues: Int
        public var maxQueues: Int
        public var inflightCapacity: Int
        public var maxInflight: Int
        /// Of `buffer_bytes`, bytes on hugepages.
        public var hugepageBytes: UInt64?
        public var ops: UInt64
        public var bytes: UInt64
        public var errors: UInt64
        public var refusals: UInt64
        public var servedCost: UInt64
        public var queueWaitUs: Percentiles
        public var latencyUs: Percentiles
        /// Ops accepted and not yet delivered, over its queues (credits in use).
        public var creditsInUse: Int?
        /// The same distributions as `queue_wait_us` and `latency_us`, as buckets.
        public var queueWaitBuckets: Buckets?
        public var latencyBuckets: Buckets?

        enum CodingKeys: String, CodingKey {
            case id, name, uid, gid, groups, policy, weight, connections, maxConnections = "max_connections"
            case bufferBytes = "buffer_bytes", maxBufferBytes = "max_buffer_bytes", queues, maxQueues = "max_queues"
            case inflightCapacity = "inflight_capacity", maxInflight = "max_inflight", hugepageBytes = "hugepage_bytes"
            case ops, bytes, errors, refusals
            case servedCost = "served_cost", queueWaitUs = "queue_wait_us", latencyUs = "latency_us"
            case creditsInUse = "credits_in_use", queueWaitBuckets = "queue_wait_buckets", latencyBuckets = "latency_buckets"
        }

        /// Creates a tenant entry.
        public init(uid: UInt32, gid: UInt32, groups: [UInt32], policy: String, weight: Int, connections: Int,
                    maxConnections: Int, bufferBytes: UInt64, maxBufferBytes: UInt64, queues: Int, maxQueues: Int,
                    inflightCapacity: Int, maxInflight: Int, ops: UInt64, bytes: UInt64, errors: UInt64, refusals: UInt64,
                    servedCost: UInt64, hugepageBytes: UInt64? = nil, queueWaitUs: Percentiles, latencyUs: Percentiles) {
            self.uid = uid
            self.gid = gid
            self.groups = groups
            self.policy = policy
            self.weight = weight
            self.connections = connections
            self.maxConnections = maxConnections
            self.bufferBytes = bufferBytes
            self.maxBufferBytes = maxBufferBytes
            self.queues = queues
            self.maxQueues = maxQueues
            self.inflightCapacity = inflightCapacity
            self.maxInflight = maxInflight
            self.hugepageBytes = hugepageBytes
            self.ops = ops
            self.bytes = bytes
            self.errors = errors
            self.refusals = refusals
            self.servedCost = servedCost
            self.queueWaitUs = queueWaitUs
            self.latencyUs = latencyUs
        }
    }

    /// Buffer totals.
    public struct Buffers: Codable, Sendable, Equatable {
        public var count: Int
        public var bytes: UInt64
        public var hugepageBacked: Int

        enum CodingKeys: String, CodingKey { case count, bytes, hugepageBacked = "hugepage_backed" }

        /// Creates the totals.
        public init(count: Int, bytes: UInt64, hugepageBacked: Int) {
            self.count = count
            self.bytes = bytes
            self.hugepageBacked = hugepageBacked
        }
    }

    /// Where a page sits (SPEC.md §5.6).
    public struct Page: Codable, Sendable, Equatable {
        /// Entries of each list visible to the viewer, over all pages.
        public var clientsTotal: Int
        public var tenantsTotal: Int
        /// The `client_from` and `tenant_from` of the next STATUS, or nil when this page holds the list's end.
        public var nextClient: UInt64?
        public var nextTenant: UInt32?

        enum CodingKeys: String, CodingKey {
            case clientsTotal = "clients_total", tenantsTotal = "tenants_total", nextClient = "next_client"
            case nextTenant = "next_tenant"
        }

        /// Creates a page description.
        public init(clientsTotal: Int, tenantsTotal: Int, nextClient: UInt64?, nextTenant: UInt32?) {
            self.clientsTotal = clientsTotal
            self.tenantsTotal = tenantsTotal
            self.nextClient = nextClient
            self.nextTenant = nextTenant
        }

        /// Whether both lists ended on this page.
        public var isLast: Bool { nextClient == nil && nextTenant == nil }
    }

    /// Appends the entries of a later page (the server and channels of the first page stay).
    public mutating func append(page next: StatusDocument) {
        clients += next.clients
        tenants += next.tenants
        page = next.page
    }
}

/// STATUS's optional body (SPEC.md §5.6): where each paged list starts. An empty body is the first page.
public struct StatusRequest: Hashable, Sendable {
    /// Wire size of the paging body.
    public static let size = 16
    /// The first page: both lists from their start.
    public static let first = StatusRequest(clientFrom: 0, tenantFrom: 0)
    /// The list a page request skips entirely (its previous page held its end).
    public static let endOfClients: UInt64 = .max
    public static let endOfTenants: UInt32 = .max

    /// List connections whose id is at least this.
    public var clientFrom: UInt64
    /// List tenants whose uid is at least this.
    public var tenantFrom: UInt32

    /// Creates a page request.
    public init(clientFrom: UInt64, tenantFrom: UInt32) {
        self.clientFrom = clientFrom
        self.tenantFrom = tenantFrom
    }

    /// The request for the page after `page`, or nil when `page` was the last.
    public static func after(_ page: StatusDocument.Page) -> StatusRequest? {
        guard !page.isLast else { return nil }
        return StatusRequest(clientFrom: page.nextClient ?? endOfClients, tenantFrom: page.nextTenant ?? endOfTenants)
    }
}
