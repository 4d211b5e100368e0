import IOATServer
import IOATSystem
import Testing

/// Which entry wins for a peer, which tenant it makes, and who sees everything (issue 21, item 2 and 3).
@Suite("policy by user, group, unit and cgroup: the most specific entry wins")
struct PolicyTests {
    static func peer(uid: UInt32 = 0, gid: UInt32 = 0, groups: [UInt32] = [], cgroup: String? = nil) -> PeerCredentials {
        PeerCredentials(pid: 1, uid: uid, gid: gid, groups: groups, cgroup: cgroup.map { PeerCgroup(path: $0) })
    }

    static func limits(weight: Int) -> TenantLimits {
        var l = TenantLimits()
        l.weight = weight
        return l
    }

    static let policy: Policy = {
        var p = Policy()
        p.users[0] = limits(weight: 2)
        p.groups[100] = limits(weight: 3)
        p.units["qemu-vm1.scope"] = ScopeEntry(limits: limits(weight: 10))
        p.units["qemu-*.scope"] = ScopeEntry(limits: limits(weight: 11))
        p.units["*.scope"] = ScopeEntry(limits: limits(weight: 12))
        p.units["docker-*.scope"] = ScopeEntry(limits: limits(weight: 13), shared: true)
        p.cgroups["/machine.slice"] = ScopeEntry(limits: limits(weight: 20))
        p.cgroups["/machine.slice/special"] = ScopeEntry(limits: limits(weight: 21), admin: true)
        p.cgroups["/system.slice"] = ScopeEntry(limits: limits(weight: 22), shared: true)
        return p
    }()

    func resolve(_ peer: PeerCredentials) -> Policy.Resolution { Self.policy.resolve(peer, serverUID: 999) }

    @Test("exact unit, then the most specific unit pattern, then the longest cgroup prefix, then user, group, default")
    func order() {
        let exact = resolve(Self.peer(cgroup: "/machine.slice/qemu-vm1.scope"))
        #expect(exact.limits.weight == 10 && exact.source == "unit qemu-vm1.scope" && exact.tenant == .unit("qemu-vm1.scope"))
        let pattern = resolve(Self.peer(cgroup: "/machine.slice/qemu-vm2.scope"))
        #expect(pattern.limits.weight == 11 && pattern.source == "units qemu-*.scope", "qemu-*.scope is more specific than *.scope")
        let loose = resolve(Self.peer(cgroup: "/machine.slice/other.scope"))
        #expect(loose.limits.weight == 12 && loose.tenant == .unit("other.scope"))
        let prefix = resolve(Self.peer(cgroup: "/machine.slice/vm3/inner"))
        #expect(prefix.limits.weight == 20 && prefix.tenant == .cgroup("/machine.slice/vm3"), "one tenant per cgroup directly under the prefix")
        let longer = resolve(Self.peer(cgroup: "/machine.slice/special/x"))
        #expect(longer.limits.weight == 21 && longer.tenant == .cgroup("/machine.slice/special/x"))
        let session = resolve(Self.peer(uid: 0, cgroup: "/user.slice/user-0.slice/session-1.scope/x"))
        #expect(session.limits.weight == 12 && session.tenant == .unit("session-1.scope"), "a session scope matches *.scope: \(session)")
        let plain = resolve(Self.peer(uid: 0, cgroup: "/user.slice/user-0.slice"))
        #expect(plain.limits.weight == 2 && plain.source == "user 0" && plain.tenant == .uid(0) && !plain.scoped)
        let group = resolve(Self.peer(uid: 5, gid: 100))
        #expect(group.limits.weight == 3 && group.source == "group 100")
        let fallback = resolve(Self.peer(uid: 5, gid: 5))
        #expect(fallback.limits.weight == 1 && fallback.source == "default" && fallback.tenant == .uid(5))
        #expect(resolve(Self.peer(cgroup: "/machine.slicex/a")).source == "user 0", "prefixes match whole components")
    }

    @Test("shared entries make one tenant of everything they match; others one tenant each")
    func sharing() {
        let a = resolve(Self.peer(cgroup: "/x/docker-a.scope")), b = resolve(Self.peer(cgroup: "/x/docker-b.scope"))
        #expect(a.tenant == .entry("units:docker-*.scope") && a.tenant == b.tenant)
        let s1 = resolve(Self.peer(cgroup: "/system.slice/a.service")), s2 = resolve(Self.peer(cgroup: "/system.slice/b/c"))
        #expect(s1.tenant == .entry("cgroups:/system.slice") && s2.tenant == s1.tenant && s2.limits.weight == 22)
        let unitFirst = resolve(Self.peer(cgroup: "/system.slice/a.scope"))
        #expect(unitFirst.limits.weight == 12 && unitFirst.tenant == .unit("a.scope"), "a unit pattern is more specific than a cgroup prefix")
    }

    @Test("root and the server's uid see everything outside every unit and cgroup entry; inside one, only an admin entry does")
    func views() {
        #expect(resolve(Self.peer(uid: 0, cgroup: "/user.slice/user-0.slice")).seesAll)
        #expect(resolve(Self.peer(uid: 999, gid: 999)).seesAll, "the server's own uid")
        #expect(!resolve(Self.peer(uid: 1000, gid: 1000)).seesAll)
        #expect(!resolve(Self.peer(uid: 0, cgroup: "/machine.slice/qemu-vm1.scope")).seesAll, "root in a container is a tenant like any other")
        #expect(resolve(Self.peer(uid: 1000, gid: 1000, cgroup: "/machine.slice/special/x")).seesAll, "admin = true")
    }

    @Test("tenant names: uid N, the unit, the cgroup, the shared entry")
    func names() {
        #expect(TenantKey.uid(7).name == "uid 7" && TenantKey.unit("a.scope").name == "a.scope")
        #expect(TenantKey.cgroup("/m/x").name == "/m/x" && TenantKey.entry("units:d-*.scope").name == "units:d-*.scope")
    }
}
