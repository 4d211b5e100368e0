import Histogram

import IOATSystem

/// One tenant: every connection of one uid, or of one systemd unit or cgroup that a policy entry names
/// (`TenantKey`). Holds what the policy limits (summed over the tenant's connections), its scheduling
/// weight, and its statistics. Lives on the event-loop thread only.
final class Tenant {
    let key: TenantKey
    /// Server-wide, in order of creation: the order STATUS lists tenants in, and its paging cursor.
    let id: UInt32
    /// Its first connection's identity: uid, groups and cgroup (what policy entries match, on reload too).
    let identity: PeerCredentials
    var uid: UInt32 { identity.uid }
    var gid: UInt32 { identity.gid }
    var groups: [UInt32] { identity.groups }
    /// How operators see it (`TenantKey.name`).
    var name: String { key.name }
    /// The limits in force, and which policy entry they came from; replaced on reload.
    var limits: TenantLimits
    var policySource: String
    /// Whether it sees every client and tenant in STATUS; replaced on reload.
    var seesAll: Bool

    /// Usage the limits bound.
    var connections = 0
    var bufferBytes: UInt64 = 0
    var queues = 0
    /// Sum of the depths of its open queues.
    var inflightCapacity = 0
    /// Buffer bytes being made for it on setup threads (counted against its limit meanwhile).
    var reservedBytes: UInt64 = 0
    /// Of its buffer bytes, those on hugepages (bounded by its share of the pool).
    var hugepageBytes: UInt64 = 0

    /// Statistics since its first current connection.
    var ops: UInt64 = 0
    var bytes: UInt64 = 0
    var errors: UInt64 = 0
    var refusals: UInt64 = 0
    /// Scheduling cost served (bytes plus the per-op cost), the unit fair scheduling shares out.
    var served: UInt64 = 0
    /// Nanoseconds from acceptance to the engine taking the op's first piece.
    var queueWait = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000_000, numberOfSignificantValueDigits: .two)
    /// Nanoseconds from acceptance to completion (the record's creation).
    var latency = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000_000_000, numberOfSignificantValueDigits: .two)

    init(key: TenantKey, id: UInt32, identity: PeerCredentials, limits: TenantLimits, policySource: String, seesAll: Bool) {
        self.key = key
        self.id = id
        self.identity = identity
        self.limits = limits
        self.policySource = policySource
        self.seesAll = seesAll
    }

    /// A uid's tenant (tests, and peers no unit or cgroup entry names).
    convenience init(uid: UInt32, gid: UInt32, groups: [UInt32], limits: TenantLimits, policySource: String, id: UInt32? = nil) {
        self.init(key: .uid(uid), id: id ?? uid, identity: PeerCredentials(pid: 0, uid: uid, gid: gid, groups: groups), limits: limits,
                  policySource: policySource, seesAll: uid == 0)
    }

    /// Exact sums of what the histograms hold, in nanoseconds (for the Prometheus `_sum`).
    var queueWaitSum: UInt64 = 0
    var latencySum: UInt64 = 0

    /// Records a stretch of finished ops that were accepted, started and completed at the same instants
    /// (one look at a ring takes its ops at one clock reading, one dispatch starts them at one, one
    /// delivery routes them at one): at once, exactly as one by one.
    func completed(_ stretch: CompletedStretch, now: UInt64) {
        guard stretch.count > 0 else { return }
        let n = UInt64(stretch.count), acceptedAt = stretch.acceptedAt
        ops += n
        bytes += stretch.bytes
        errors += UInt64(stretch.failed)
        if stretch.startedAt >= acceptedAt {
            let wait = max(1, stretch.startedAt - acceptedAt)
            _ = queueWait.record(wait, count: n)
            queueWaitSum &+= wait &* n
        }
        if now >= acceptedAt {
            let total = max(1, now - acceptedAt)
            _ = latency.record(total, count: n)
            latencySum &+= total &* n
        }
    }
}

/// Finished ops of one queue that were taken and started at the same instants, for their tenant's
/// statistics (`Tenant.completed`).
struct CompletedStretch {
    private(set) var count = 0
    private(set) var bytes: UInt64 = 0
    private(set) var failed = 0
    private(set) var acceptedAt: UInt64 = 0
    private(set) var startedAt: UInt64 = 0

    /// Whether an op taken at `acceptedAt` and started at `startedAt` belongs to this stretch (an empty
    /// stretch takes any op).
    func admits(acceptedAt: UInt64, startedAt: UInt64) -> Bool {
        count == 0 || (self.acceptedAt == acceptedAt && self.startedAt == startedAt)
    }

    mutating func add(bytes: UInt64, failed: Bool, acceptedAt: UInt64, startedAt: UInt64) {
        if count == 0 { (self.acceptedAt, self.startedAt) = (acceptedAt, startedAt) }
        count += 1
        self.bytes += bytes
        if failed { self.failed += 1 }
    }
}
