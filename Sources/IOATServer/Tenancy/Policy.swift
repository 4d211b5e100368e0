import Glibc
import IOATSystem

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

/// A policy entry for systemd units or cgroups (`[policy.units."…"]`, `[policy.cgroups."…"]`): limits
/// like a user's, and how the processes it matches are grouped into tenants.
public struct ScopeEntry: Sendable, Equatable {
    public var limits: TenantLimits
    /// Whether everything the entry matches is one tenant; by default each unit (or each cgroup directly
    /// under a cgroup prefix) it matches is a tenant of its own.
    public var shared = false
    /// Whether its tenants see every client and tenant in STATUS, as root outside every such entry does.
    public var admin = false

    public init(limits: TenantLimits, shared: Bool = false, admin: Bool = false) {
        self.limits = limits
        self.shared = shared
        self.admin = admin
    }
}

/// Who a tenant is: a uid, a systemd unit, a cgroup, or everything one shared entry matches.
public enum TenantKey: Hashable, Sendable, Comparable {
    case uid(UInt32)
    case unit(String)
    case cgroup(String)
    /// A `shared = true` entry ("units:docker-*.scope", "cgroups:/machine.slice").
    case entry(String)

    /// How operators see it: "uid 1000", "qemu-vm1.scope", "/machine.slice/libpod-abc.scope",
    /// "units:docker-*.scope".
    public var name: String {
        switch self {
        case .uid(let uid): "uid \(uid)"
        case .unit(let unit): unit
        case .cgroup(let path): path
        case .entry(let entry): entry
        }
    }
}

/// The tenant policy: defaults, and overrides per user, per group, per systemd unit and per cgroup. The
/// most specific entry wins: a unit entry naming the peer's unit exactly, then the most specific unit
/// pattern matching it (the one with the most characters that are not wildcards), then the longest
/// cgroup prefix of the peer's cgroup path, then the user entry, then group entries, then the
/// defaults. Keys an entry does not set come from `[policy.default]`.
///
/// Groups are the peer's primary group (SO_PEERCRED) and its supplementary groups (SO_PEERGROUPS), as
/// the kernel recorded them when it connected. When several have entries: one that denies wins (a
/// member of a denied group is refused whatever else it belongs to); else the primary group's entry;
/// else the entry of the lowest-numbered supplementary group.
public struct Policy: Sendable, Equatable {
    public var defaults = TenantLimits()
    public var users: [UInt32: TenantLimits] = [:]
    public var groups: [UInt32: TenantLimits] = [:]
    /// By unit name, or a pattern of one (`*`, `?` and `[…]`, as in a shell).
    public var units: [String: ScopeEntry] = [:]
    /// By cgroup v2 path prefix ("/machine.slice"), matched on whole components.
    public var cgroups: [String: ScopeEntry] = [:]

    /// Every tenant allowed, with the defaults.
    public init() {}

    /// What the policy says of one peer: its limits, the entry they came from, its tenant, and whether it
    /// sees everything in STATUS.
    public struct Resolution: Sendable, Equatable {
        public var limits: TenantLimits
        /// "unit qemu-vm1.scope", "units docker-*.scope", "cgroup /machine.slice", "user 1000", "group 100",
        /// "default".
        public var source: String
        public var tenant: TenantKey
        /// Whether a unit or cgroup entry matched it (then it is a tenant like any other, whatever its uid).
        public var scoped: Bool
        /// Whether it sees every client and tenant in STATUS.
        public var seesAll: Bool
    }

    /// Resolves a peer. `serverUID` is the server's own uid, which sees everything as root does unless a
    /// unit or cgroup entry matched it.
    public func resolve(_ peer: PeerCredentials, serverUID: UInt32) -> Resolution {
        if let (entry, source, tenant) = scopeEntry(for: peer.cgroup) {
            return Resolution(limits: entry.limits, source: source, tenant: tenant, scoped: true, seesAll: entry.admin)
        }
        let (limits, source) = limits(uid: peer.uid, gid: peer.gid, groups: peer.groups)
        return Resolution(limits: limits, source: source, tenant: .uid(peer.uid), scoped: false,
                          seesAll: peer.uid == 0 || peer.uid == serverUID)
    }

    /// The unit or cgroup entry for a peer's cgroup, with where it came from and the tenant it makes.
    func scopeEntry(for cgroup: PeerCgroup?) -> (ScopeEntry, String, TenantKey)? {
        guard let cgroup else { return nil }
        if let unit = cgroup.unit {
            if let entry = units[unit], !Self.isPattern(unit) {
                return (entry, "unit \(unit)", entry.shared ? .entry("units:\(unit)") : .unit(unit))
            }
            let patterns = units.keys.filter { Self.isPattern($0) && fnmatch($0, unit, 0) == 0 }
            if let best = patterns.max(by: { (Self.literalCount($0), $1) < (Self.literalCount($1), $0) }), let entry = units[best] {
                return (entry, "units \(best)", entry.shared ? .entry("units:\(best)") : .unit(unit))
            }
        }
        let prefixes = cgroups.keys.filter { Self.isPrefix($0, of: cgroup.path) }
        if let best = prefixes.max(by: { $0.count < $1.count }), let entry = cgroups[best] {
            return (entry, "cgroup \(best)", entry.shared ? .entry("cgroups:\(best)") : .cgroup(Self.child(of: best, in: cgroup.path)))
        }
        return nil
    }

    static func isPattern(_ name: String) -> Bool { name.contains { $0 == "*" || $0 == "?" || $0 == "[" } }

    static func literalCount(_ pattern: String) -> Int { pattern.filter { $0 != "*" && $0 != "?" }.count }

    /// A cgroup prefix without a trailing slash ("/" stays "/").
    static func trimmed(_ prefix: String) -> String {
        prefix.count > 1 && prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix
    }

    /// Whether `prefix` is `path` or one of its ancestors ("/" is everyone's).
    static func isPrefix(_ prefix: String, of path: String) -> Bool {
        let p = trimmed(prefix)
        return p == "/" || path == p || path.hasPrefix(p + "/")
    }

    /// The cgroup one component below `prefix` on the way to `path` (or `path` itself when it is the prefix):
    /// each such cgroup is a tenant of its own.
    static func child(of prefix: String, in path: String) -> String {
        let p = trimmed(prefix)
        guard path != p else { return path }
        let rest = path.dropFirst(p == "/" ? 1 : p.count + 1)
        let first = rest.split(separator: "/", maxSplits: 1).first.map(String.init) ?? String(rest)
        return (p == "/" ? "" : p) + "/" + first
    }

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
