import Glibc
import IOATServer
import IOATSystem
import Logging
import TOMLKit

/// Which engine drives the channels.
public enum EngineKind: String, Sendable, CaseIterable {
    /// CPU threads with the hardware's semantics.
    case cpu
    /// DPDK dmadev (I/OAT, DSA, dma_skeleton): only in a build with the `DPDK` trait.
    case dpdk

    /// Whether this build has the engine.
    public var isBuilt: Bool {
        #if DPDK
        true
        #else
        self == .cpu
        #endif
    }
}

/// A configuration file that could not be used: where, and why. The server keeps what it had.
public struct ConfigurationError: Error, CustomStringConvertible, Sendable {
    /// The file (or "<string>").
    public var source: String
    /// 1-based line, when known.
    public var line: Int?
    /// What is wrong, naming the key and value.
    public var message: String

    public var description: String { "\(source)\(line.map { ":\($0)" } ?? ""): \(message)" }
}

/// Everything `ioatd` reads from its TOML configuration file (deploy/ioatd.toml documents every key).
/// Command-line options override the file.
public struct DaemonConfiguration: Sendable {
    /// The server's settings.
    public var server: ServerConfiguration
    /// Engine kind: "cpu", or "dpdk" in a build with the `DPDK` trait.
    public var engine = EngineKind.cpu
    /// EAL arguments for the DPDK engine, split on spaces (no quoting).
    public var dpdkEALArguments: [String] = []
    /// Channels; nil: one per CPU but one.
    public var channels: Int? = nil
    /// Whether CPU workers get CPUs of their own. Off by default: on a host that is never idle, a pinned
    /// worker that slept waits for whatever else runs on its CPU, even a niced one, while another CPU
    /// is free (QD1 NULL p99 went from about 0.2 ms to 4 ms next to one `nice -n 19` busy loop).
    public var pinWorkers = false
    /// swift-log level name.
    public var logLevel = Logger.Level.info

    /// The defaults, listening at `socketPath`.
    public init(socketPath: String) {
        server = ServerConfiguration(socketPath: socketPath)
    }

    /// Reads and checks `path`. Unknown sections and keys, wrong types and out-of-range values are
    /// errors that name the line.
    public static func load(path: String, defaults: DaemonConfiguration) throws(ConfigurationError) -> DaemonConfiguration {
        guard let text = readSmallFile(path, limit: 16 << 20) else {
            throw ConfigurationError(source: path, line: nil, message: "cannot read the file")
        }
        return try parse(text, source: path, defaults: defaults)
    }

    /// Parses TOML `text` over `defaults`.
    public static func parse(_ text: String, source: String, defaults: DaemonConfiguration) throws(ConfigurationError) -> DaemonConfiguration {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConfigurationError(source: source, line: Int(error.source.begin.line), message: error.description)
        } catch {
            throw ConfigurationError(source: source, line: nil, message: "\(error)")
        }
        var config = defaults
        let reader = Reader(text: text, source: source)
        try reader.check(table, sections: ["server", "engine", "buffers", "limits", "policy"])
        if let s = try reader.section(table, "server") {
            try reader.keys(s, "server", ["socket", "socket_mode", "log_level", "busy_poll_us", "drain_timeout_ms", "max_connections", "rings"])
            if let v = try reader.string(s, "server", "socket") { config.server.socketPath = v }
            if let v = try reader.string(s, "server", "socket_mode") {
                guard let mode = UInt32(v, radix: 8), mode <= 0o777 else {
                    throw reader.error("server", "socket_mode", "\"\(v)\" is not an octal file mode such as \"0660\"")
                }
                config.server.socketMode = mode
            }
            if let v = try reader.string(s, "server", "log_level") {
                guard let level = Logger.Level(rawValue: v) else {
                    throw reader.error("server", "log_level", "\"\(v)\" is not one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                config.logLevel = level
            }
            if let v = try reader.int(s, "server", "busy_poll_us", 0...10_000) { config.server.busyPollMicroseconds = v }
            if let v = try reader.int(s, "server", "drain_timeout_ms", 0...600_000) { config.server.drainTimeoutMilliseconds = v }
            if let v = try reader.int(s, "server", "max_connections", 1...65_536) { config.server.maxConnections = v }
            if let v = try reader.bool(s, "server", "rings") { config.server.rings = v }
        }
        if let s = try reader.section(table, "engine") {
            try reader.keys(s, "engine", ["kind", "channels", "pin_workers", "window", "window_bytes", "op_cost_bytes", "quantum_bytes",
                                         "dpdk_eal_args", "inline_bytes"])
            if let v = try reader.int(s, "engine", "inline_bytes", 0...(1 << 20)) { config.server.inlineBytes = v }
            if let v = try reader.string(s, "engine", "kind") {
                guard let kind = EngineKind(rawValue: v), kind.isBuilt else {
                    throw reader.error("engine", "kind", "\"\(v)\" is not an engine this build has (\(Self.engines.joined(separator: ", ")))")
                }
                config.engine = kind
            }
            if let v = try reader.string(s, "engine", "dpdk_eal_args") { config.dpdkEALArguments = Self.splitArguments(v) }
            if let v = try reader.int(s, "engine", "channels", 0...64) { config.channels = v == 0 ? nil : v }
            if let v = try reader.bool(s, "engine", "pin_workers") { config.pinWorkers = v }
            if let v = try reader.int(s, "engine", "window", 1...4096) { config.server.engineWindow = v }
            if let v = try reader.int(s, "engine", "window_bytes", 4096...(1 << 34)) { config.server.engineWindowBytes = v }
            if let v = try reader.int(s, "engine", "op_cost_bytes", 0...(1 << 24)) { config.server.opCostBytes = v }
            if let v = try reader.int(s, "engine", "quantum_bytes", 4096...(1 << 30)) { config.server.quantumBytes = v }
        }
        if let s = try reader.section(table, "buffers") {
            try reader.keys(s, "buffers", ["hugepages", "lock", "max_total_bytes", "setup_threads", "hugepage_share_percent"])
            if let v = try reader.bool(s, "buffers", "hugepages") { config.server.hugepages = v }
            if let v = try reader.bool(s, "buffers", "lock") { config.server.lockBuffers = v }
            if let v = try reader.int(s, "buffers", "max_total_bytes", 4096...Int.max) { config.server.maxTotalBufferBytes = UInt64(v) }
            if let v = try reader.int(s, "buffers", "setup_threads", 1...64) { config.server.setupThreads = v }
            if let v = try reader.int(s, "buffers", "hugepage_share_percent", 1...100) { config.server.hugepageSharePercent = v }
        }
        if let s = try reader.section(table, "limits") {
            try reader.keys(s, "limits", ["max_buffers", "max_buffer_bytes", "max_queues", "max_queue_depth", "max_descriptors"])
            if let v = try reader.int(s, "limits", "max_buffers", 1...1_000_000) { config.server.maxBuffers = v }
            if let v = try reader.int(s, "limits", "max_buffer_bytes", 4096...Int.max) { config.server.maxBufferBytes = UInt64(v) }
            if let v = try reader.int(s, "limits", "max_queues", 1...4096) { config.server.maxQueues = v }
            if let v = try reader.int(s, "limits", "max_queue_depth", 1...65_536) { config.server.maxQueueDepth = v }
            if let v = try reader.int(s, "limits", "max_descriptors", 1...1000) { config.server.maxDescriptors = v }
        }
        if let p = try reader.section(table, "policy") {
            config.server.policy = try parsePolicy(p, reader)
        }
        return config
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

    /// `[policy.default]`, `[policy.users.<name or uid>]`, `[policy.groups.<name or gid>]`,
    /// `[policy.units."<unit or pattern>"]`, `[policy.cgroups."<cgroup path prefix>"]`.
    static func parsePolicy(_ table: TOMLTable, _ reader: Reader) throws(ConfigurationError) -> Policy {
        try reader.keys(table, "policy", ["default", "users", "groups", "units", "cgroups"])
        var policy = Policy()
        if let d = try reader.table(table, "policy", "default") {
            policy.defaults = try reader.limits(d, "policy.default", base: TenantLimits())
        }
        for (kind, resolve) in [("users", resolveUser), ("groups", resolveGroup)] {
            guard let entries = try reader.table(table, "policy", kind) else { continue }
            for name in entries.keys.sorted() {
                let section = "policy.\(kind).\(name)"
                guard let entry = entries[name]?.table else { throw reader.error("policy.\(kind)", name, "must be a table ([\(section)])") }
                guard let id = resolve(name) else {
                    throw reader.error(nil, section, "no \(kind == "users" ? "user" : "group") named \"\(name)\" on this system")
                }
                let limits = try reader.limits(entry, section, base: policy.defaults)
                if kind == "users" { policy.users[id] = limits } else { policy.groups[id] = limits }
            }
        }
        for kind in ["units", "cgroups"] {
            guard let entries = try reader.table(table, "policy", kind) else { continue }
            for name in entries.keys.sorted() {
                let section = "policy.\(kind).\"\(name)\""
                guard let entry = entries[name]?.table else { throw reader.error("policy.\(kind)", name, "must be a table ([\(section)])") }
                if kind == "units" {
                    guard !name.isEmpty, !name.contains("/") else {
                        throw reader.error(nil, section, "\"\(name)\" is not a unit name or pattern (docker-*.scope, qemu-vm1.scope)")
                    }
                } else {
                    guard name.hasPrefix("/"), !name.contains("//"), !name.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else {
                        throw reader.error(nil, section, "\"\(name)\" is not a cgroup path (it starts with /, as in /machine.slice)")
                    }
                }
                let shared = try reader.bool(entry, section, "shared") ?? false
                let admin = try reader.bool(entry, section, "admin") ?? false
                let limits = try reader.limits(entry, section, base: policy.defaults, also: ["shared", "admin"])
                let value = ScopeEntry(limits: limits, shared: shared, admin: admin)
                if kind == "units" { policy.units[name] = value } else { policy.cgroups[name] = value }
            }
        }
        return policy
    }

    /// The engines this build has: "dpdk" only with the `DPDK` trait.
    public static var engines: [String] { EngineKind.allCases.filter(\.isBuilt).map(\.rawValue) }

    /// Splits an argument string on spaces and tabs (EAL arguments never need quoting).
    public static func splitArguments(_ text: String) -> [String] {
        text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map(String.init)
    }

    /// Typed access to a parsed table that reports the offending line.
    struct Reader {
        let lines: [Substring]
        let source: String

        init(text: String, source: String) {
            lines = text.split(separator: "\n", omittingEmptySubsequences: false)
            self.source = source
        }

        /// The line of `key` in `[section]` (or of `[key]` itself when `section` is nil).
        func line(_ section: String?, _ key: String) -> Int? {
            var current: String? = nil
            for (i, raw) in lines.enumerated() {
                let l = raw.trimmingPrefix(while: { $0 == " " || $0 == "\t" })
                if l.hasPrefix("[") {
                    current = String(l.dropFirst().prefix(while: { $0 != "]" }).filter { $0 != " " && $0 != "\t" })
                    if section == nil && current == key { return i + 1 }
                    continue
                }
                if current == section, l.hasPrefix(key) {
                    let rest = l.dropFirst(key.count).trimmingPrefix(while: { $0 == " " || $0 == "\t" })
                    if rest.hasPrefix("=") { return i + 1 }
                }
            }
            return nil
        }

        func error(_ section: String?, _ key: String, _ message: String) -> ConfigurationError {
            let name = section.map { "\($0).\(key)" } ?? key
            return ConfigurationError(source: source, line: line(section, key), message: "\(name): \(message)")
        }

        func check(_ table: TOMLTable, sections: [String]) throws(ConfigurationError) {
            for key in table.keys where !sections.contains(key) {
                let isTable = table[key]?.table != nil
                throw error(nil, key, isTable ? "unknown section; known sections are \(sections.joined(separator: ", "))"
                                              : "top-level keys are not allowed; put it in a section")
            }
        }

        func section(_ table: TOMLTable, _ name: String) throws(ConfigurationError) -> TOMLTable? {
            guard let value = table[name] else { return nil }
            guard let t = value.table else { throw error(nil, name, "must be a table ([\(name)])") }
            return t
        }

        func keys(_ table: TOMLTable, _ section: String, _ known: [String]) throws(ConfigurationError) {
            for key in table.keys where !known.contains(key) {
                throw error(section, key, "unknown key; [\(section)] takes \(known.joined(separator: ", "))")
            }
        }

        func string(_ t: TOMLTable, _ section: String, _ key: String) throws(ConfigurationError) -> String? {
            guard let value = t[key] else { return nil }
            guard let s = value.string else { throw error(section, key, "must be a string") }
            return s
        }

        func table(_ t: TOMLTable, _ section: String, _ key: String) throws(ConfigurationError) -> TOMLTable? {
            guard let value = t[key] else { return nil }
            guard let sub = value.table else { throw error(section, key, "must be a table ([\(section).\(key)])") }
            return sub
        }

        /// One policy entry over `base`.
        func limits(_ t: TOMLTable, _ section: String, base: TenantLimits, also: [String] = []) throws(ConfigurationError) -> TenantLimits {
            try keys(t, section, ["allowed", "max_connections", "max_buffer_bytes", "max_queues", "max_inflight", "weight"] + also)
            var l = base
            if let v = try bool(t, section, "allowed") { l.allowed = v }
            if let v = try int(t, section, "max_connections", 0...65_536) { l.maxConnections = v }
            if let v = try int(t, section, "max_buffer_bytes", 0...Int.max) { l.maxBufferBytes = UInt64(v) }
            if let v = try int(t, section, "max_queues", 0...65_536) { l.maxQueues = v }
            if let v = try int(t, section, "max_inflight", 0...(1 << 24)) { l.maxInflight = v }
            if let v = try int(t, section, "weight", 1...1000) { l.weight = v }
            return l
        }

        func bool(_ t: TOMLTable, _ section: String, _ key: String) throws(ConfigurationError) -> Bool? {
            guard let value = t[key] else { return nil }
            guard let b = value.bool else { throw error(section, key, "must be true or false") }
            return b
        }

        func int(_ t: TOMLTable, _ section: String, _ key: String, _ range: ClosedRange<Int>) throws(ConfigurationError) -> Int? {
            guard let value = t[key] else { return nil }
            guard let n = value.int else { throw error(section, key, "must be an integer") }
            guard range.contains(n) else { throw error(section, key, "\(n) is outside \(range.lowerBound)...\(range.upperBound)") }
            return n
        }
    }
}

