import Histogram

/// One tenant: every connection of one uid. Holds what the policy limits (summed over the tenant's
/// connections), its scheduling weight, and its statistics. Lives on the event-loop thread only.
final class Tenant {
    let uid: UInt32
    /// Primary gid and supplementary groups of its first connection (what group policy entries match).
    let gid: UInt32
    let groups: [UInt32]
    /// The limits in force, and which policy entry they came from; replaced on reload.
    var limits: TenantLimits
    var policySource: String

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

    init(uid: UInt32, gid: UInt32, groups: [UInt32], limits: TenantLimits, policySource: String) {
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.limits = limits
        self.policySource = policySource
    }

    /// Exact sums of what the histograms hold, in nanoseconds (for the Prometheus `_sum`).
    var queueWaitSum: UInt64 = 0
    var latencySum: UInt64 = 0

    /// Records one finished op.
    func completed(bytes: UInt64, failed: Bool, acceptedAt: UInt64, startedAt: UInt64, now: UInt64) {
        ops += 1
        self.bytes += bytes
        if failed { errors += 1 }
        if startedAt >= acceptedAt {
            let wait = max(1, startedAt - acceptedAt)
            _ = queueWait.record(wait)
            queueWaitSum &+= wait
        }
        if now >= acceptedAt {
            let total = max(1, now - acceptedAt)
            _ = latency.record(total)
            latencySum &+= total
        }
    }
}
