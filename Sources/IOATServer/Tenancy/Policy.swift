import Glibc

/// What one tenant (one uid) may hold and how much of a shared channel it gets. Limits add up over all
/// of the tenant's connections; the per-connection limits of `ServerConfiguration` apply as well.
public struct TenantLimits: Sendable, Equatable {
    /// Whether the tenant may connect at all.
    public var allowed = true
    /// Connections at once.
    public var maxConnections = 128
    /// Buffer bytes, allocated plus registered.
    public var maxBufferBytes: UInt64 = 4 << 30
    /// Queues open at once.
    public var maxQueues = 128
    /// Descriptors in flight: the sum of the depths of its open queues (a queue's depth bounds its
    /// outstanding ops, so this bounds what the tenant can have accepted and not yet delivered).
    public var maxInflight = 8192
    /// Share of a channel against other tenants backlogged on it (deficit round robin, in bytes plus a
    /// per-op cost): a tenant of weight 3 gets three times the service of a tenant of weight 1.
    public var weight = 1

    /// The documented defaults.
    public init() {}
}

/// The tenant policy: defaults, and overrides per user and per group. A user entry wins over group
/// entries, which win over the defaults; keys an entry does not set come from `[policy.default]`.
///
/// Groups are the peer's primary group (SO_PEERCRED) and its supplementary groups (SO_PEERGROUPS), as
/// the kernel recorded them when it connected. When several have entries: one that denies wins (a
/// member of a denied group is refused whatever else it belongs to); else the primary group's entry;
/// else the entry of the lowest-numbered supplementary group.
public struct Policy: Sendable, Equatable {
    public var defaults = TenantLimits()
    public var users: [UInt32: TenantLimits] = [:]
    public var groups: [UInt32: TenantLimits] = [:]

    /// Every tenant allowed, with the defaults.
    public init() {}

    /// The limits for a peer, and where they came from ("user 1000", "group 100", "default").
    public func limits(uid: UInt32, gid: UInt32, groups supplementary: [UInt32] = []) -> (TenantLimits, source: String) {
        if let l = users[uid] { return (l, "user \(uid)") }
        let candidates = [gid] + supplementary.sorted()
        let matching = candidates.compactMap { g in groups[g].map { (gid: g, limits: $0) } }
        if let entry = matching.first(where: { !$0.limits.allowed }) ?? matching.first {
            return (entry.limits, "group \(entry.gid)")
        }
        return (defaults, "default")
    }
}
