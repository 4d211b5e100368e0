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

/// The tenant policy: defaults, and overrides per user and per group (by primary gid, the one
/// SO_PEERCRED reports). A user entry wins over a group entry, which wins over the defaults; keys an
/// entry does not set come from `[policy.default]`.
public struct Policy: Sendable, Equatable {
    public var defaults = TenantLimits()
    public var users: [UInt32: TenantLimits] = [:]
    public var groups: [UInt32: TenantLimits] = [:]

    /// Every tenant allowed, with the defaults.
    public init() {}

    /// The limits for a peer, and where they came from ("user 1000", "group 100", "default").
    public func limits(uid: UInt32, gid: UInt32) -> (TenantLimits, source: String) {
        if let l = users[uid] { return (l, "user \(uid)") }
        if let l = groups[gid] { return (l, "group \(gid)") }
        return (defaults, "default")
    }

    /// A user name or a decimal uid.
    static func resolveUser(_ name: String) -> UInt32? {
        if let n = UInt32(name) { return n }
        return getpwnam(name).map { $0.pointee.pw_uid }
    }

    /// A group name or a decimal gid.
    static func resolveGroup(_ name: String) -> UInt32? {
        if let n = UInt32(name) { return n }
        return getgrnam(name).map { $0.pointee.gr_gid }
    }
}
