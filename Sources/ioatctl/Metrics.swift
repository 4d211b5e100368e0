import ArgumentParser
import Foundation
import IOATClient
import IOATProtocol

struct Metrics: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the server's counters in the Prometheus text format.",
        discussion: """
            One scrape of STATUS (every page), as the Prometheus text exposition format (version 0.0.4, which
            OpenMetrics parsers read too): per channel, per tenant and server-wide, in base units (bytes,
            seconds), counters ending in _total. A uid other than root and the server's sees only itself.
            With --output the text goes to that file atomically, for node_exporter's textfile collector
            (deploy/ioatd-metrics.timer).
            """)
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Write to this file instead of standard output: a temporary file beside it, then renamed over it.")
    var output: String?

    func run() async throws {
        let document = try await connection.connect().status()
        let text = Exposition(document).text
        guard let output else {
            print(text, terminator: "")
            return
        }
        let url = URL(fileURLWithPath: output)
        let temporary = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).\(getpid()).tmp").path
        do {
            try Data(text.utf8).write(to: URL(fileURLWithPath: temporary))
        } catch {
            throw CLIError("cannot write \(temporary): \(error.localizedDescription)")
        }
        // rename(2) replaces the old file in one step: a reader sees the old text or the new, never half.
        guard rename(temporary, output) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw CLIError("cannot rename \(temporary) to \(output): \(reason)")
        }
    }
}

/// The Prometheus text exposition of a STATUS document.
struct Exposition {
    private(set) var text = ""

    init(_ doc: StatusDocument) {
        let s = doc.server
        family("ioatd_up", .gauge, "Whether the server answered STATUS.") { $0.sample([:], 1) }
        family("ioatd_info", .gauge, "The server's engine, protocol version and pid, as labels.") {
            $0.sample(["engine": s.engine, "protocol_version": "\(s.protocolVersion)", "pid": "\(s.pid)"], 1)
        }
        family("ioatd_state", .gauge, "1 for the state the server is in.") { f in
            for state in ["starting", "serving", "draining", "stopped"] { f.sample(["state": state], state == s.state ? 1 : 0) }
        }
        family("ioatd_uptime_seconds", .gauge, "Seconds since the server started.") { $0.sample([:], s.uptimeSeconds) }
        family("ioatd_connections", .gauge, "Client connections open now.") { $0.sample([:], Double(s.connections)) }
        counter("ioatd_connections_accepted_total", "Connections accepted.", Double(s.connectionsAccepted))
        counter("ioatd_connections_refused_total", "Connections refused by policy or limits.", Double(s.connectionsRefused))
        counter("ioatd_policy_reloads_total", "Policy reloads (SIGHUP) that took effect.", Double(s.policyReloads))
        counter("ioatd_policy_reload_failures_total", "Policy reloads refused; the old policy stayed.", Double(s.policyReloadFailures))
        if let b = s.bufferBudget {
            family("ioatd_buffer_budget_bytes", .gauge, "The server-wide budget of buffer memory (max_total_buffer_bytes).") {
                $0.sample([:], Double(b.limit))
            }
            family("ioatd_buffer_bytes", .gauge, "Bytes of buffers that exist, locked in memory or not.") { f in
                f.sample(["locked": "true"], Double(b.locked))
                f.sample(["locked": "false"], Double(b.unlocked))
            }
            family("ioatd_buffer_hugepage_bytes", .gauge, "Of the buffer bytes, those on hugepages.") { $0.sample([:], Double(b.hugepages)) }
            family("ioatd_buffer_reserved_bytes", .gauge, "Bytes of buffers being made.") { $0.sample([:], Double(b.reserved)) }
        }
        if let total = s.hugepagesTotal, let free = s.hugepagesFree {
            family("ioatd_hugepages", .gauge, "The machine's hugepage pool, in pages: reserved, and free.") { f in
                f.sample(["state": "total"], Double(total))
                f.sample(["state": "free"], Double(free))
            }
        }

        func channelLabels(_ c: StatusDocument.Channel) -> [String: String] {
            ["channel": "\(c.index)", "name": c.name, "engine": c.engine]
        }
        let channels = doc.channels
        func channelFamily(_ name: String, _ type: Kind, _ help: String, _ value: (StatusDocument.Channel) -> Double) {
            family(name, type, help) { f in for c in channels { f.sample(channelLabels(c), value(c)) } }
        }
        channelFamily("ioatd_channel_ops_total", .counter, "Ops completed on the channel.") { Double($0.ops) }
        channelFamily("ioatd_channel_bytes_total", .counter, "Bytes processed by the channel's completed ops.") { Double($0.bytes) }
        channelFamily("ioatd_channel_errors_total", .counter, "Ops that failed (any status but SUCCESS and MISMATCH).") { Double($0.errors) }
        channelFamily("ioatd_channel_halts_total", .counter, "Times the channel's engine halted.") { Double($0.halts) }
        channelFamily("ioatd_channel_resets_total", .counter, "Resets after a halt.") { Double($0.resets) }
        channelFamily("ioatd_channel_replayed_total", .counter, "Ops run again after a reset.") { Double($0.replayed) }
        channelFamily("ioatd_channel_busy_seconds_total", .counter, "Seconds the channel's engine had ops to run.") { $0.busySeconds ?? 0 }
        family("ioatd_channel_runner_ops_total", .counter, "Ops by what ran them: the DMA device, or the CPU.") { f in
            for c in channels {
                let device = c.device?.deviceOps ?? 0
                let cpu = c.device?.cpuOps ?? c.ops
                f.sample(channelLabels(c).merging(["runner": "device"]) { a, _ in a }, Double(device))
                f.sample(channelLabels(c).merging(["runner": "cpu"]) { a, _ in a }, Double(cpu))
            }
        }
        channelFamily("ioatd_channel_queues", .gauge, "Queues open on the channel.") { Double($0.queues) }
        channelFamily("ioatd_channel_in_engine", .gauge, "Ops (or pieces) in the channel's engine now.") { Double($0.inEngine) }

        let tenants = doc.tenants
        // `tenant` names it (a uid, a unit, a cgroup): several tenants may share a uid (containers run as root).
        func tenantLabels(_ t: StatusDocument.Tenant) -> [String: String] { ["uid": "\(t.uid)", "tenant": t.name ?? "uid \(t.uid)"] }
        func tenantFamily(_ name: String, _ type: Kind, _ help: String, _ value: (StatusDocument.Tenant) -> Double) {
            family(name, type, help) { f in for t in tenants { f.sample(tenantLabels(t), value(t)) } }
        }
        tenantFamily("ioatd_tenant_ops_total", .counter, "Ops the tenant's queues completed.") { Double($0.ops) }
        tenantFamily("ioatd_tenant_bytes_total", .counter, "Bytes the tenant's completed ops processed.") { Double($0.bytes) }
        tenantFamily("ioatd_tenant_errors_total", .counter, "The tenant's failed ops.") { Double($0.errors) }
        tenantFamily("ioatd_tenant_refusals_total", .counter, "Requests of the tenant refused for its limits.") { Double($0.refusals) }
        tenantFamily("ioatd_tenant_served_cost_bytes_total", .counter,
                     "Service the fair scheduler charged the tenant: bytes plus a per-op cost.") { Double($0.servedCost) }
        tenantFamily("ioatd_tenant_connections", .gauge, "The tenant's connections.") { Double($0.connections) }
        tenantFamily("ioatd_tenant_connections_limit", .gauge, "The most connections its policy allows.") { Double($0.maxConnections) }
        tenantFamily("ioatd_tenant_buffer_bytes", .gauge, "Buffer bytes the tenant holds.") { Double($0.bufferBytes) }
        tenantFamily("ioatd_tenant_buffer_bytes_limit", .gauge, "The most buffer bytes its policy allows.") { Double($0.maxBufferBytes) }
        tenantFamily("ioatd_tenant_hugepage_bytes", .gauge, "Of its buffer bytes, those on hugepages.") { Double($0.hugepageBytes ?? 0) }
        tenantFamily("ioatd_tenant_queues", .gauge, "Queues the tenant has open.") { Double($0.queues) }
        tenantFamily("ioatd_tenant_queues_limit", .gauge, "The most queues its policy allows.") { Double($0.maxQueues) }
        tenantFamily("ioatd_tenant_inflight_capacity", .gauge, "The sum of its queues' depths.") { Double($0.inflightCapacity) }
        tenantFamily("ioatd_tenant_inflight_limit", .gauge, "The most in-flight descriptors its policy allows.") { Double($0.maxInflight) }
        tenantFamily("ioatd_tenant_credits_in_use", .gauge, "Ops accepted and not yet delivered.") { Double($0.creditsInUse ?? 0) }
        histogram("ioatd_tenant_queue_wait_seconds", "From SUBMIT accepted to the engine taking the op.", tenants.map { (tenantLabels($0), $0.queueWaitBuckets) })
        histogram("ioatd_tenant_latency_seconds", "From SUBMIT accepted to the op's completion.", tenants.map { (tenantLabels($0), $0.latencyBuckets) })
    }

    enum Kind: String {
        case counter, gauge, histogram
    }

    /// Collects the samples of one family.
    struct Family {
        let name: String
        var lines: [String] = []
        mutating func sample(_ labels: [String: String], _ value: Double, suffix: String = "") {
            lines.append(name + suffix + Exposition.format(labels) + " " + Exposition.format(value))
        }
    }

    private mutating func family(_ name: String, _ kind: Kind, _ help: String, _ body: (inout Family) -> Void) {
        var f = Family(name: name)
        body(&f)
        text += "# HELP \(name) \(help)\n# TYPE \(name) \(kind.rawValue)\n"
        for line in f.lines { text += line + "\n" }
    }

    private mutating func counter(_ name: String, _ help: String, _ value: Double) {
        family(name, .counter, help) { $0.sample([:], value) }
    }

    private mutating func histogram(_ name: String, _ help: String, _ series: [([String: String], StatusDocument.Buckets?)]) {
        family(name, .histogram, help) { f in
            for (labels, buckets) in series {
                guard let b = buckets else { continue }
                for (bound, count) in zip(b.boundsUs, b.counts) {
                    f.sample(labels.merging(["le": Exposition.format(bound / 1e6)]) { a, _ in a }, Double(count), suffix: "_bucket")
                }
                f.sample(labels.merging(["le": "+Inf"]) { a, _ in a }, Double(b.count), suffix: "_bucket")
                f.sample(labels, b.sumUs / 1e6, suffix: "_sum")
                f.sample(labels, Double(b.count), suffix: "_count")
            }
        }
    }

    /// `{a="1",b="x"}`, keys sorted, values escaped; empty for no labels.
    static func format(_ labels: [String: String]) -> String {
        guard !labels.isEmpty else { return "" }
        let parts = labels.keys.sorted().map { key -> String in
            let value = labels[key]!.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                .replacingOccurrences(of: "\n", with: "\\n")
            return "\(key)=\"\(value)\""
        }
        return "{" + parts.joined(separator: ",") + "}"
    }

    /// Integers without a fraction; others in the shortest form that reads back exactly.
    static func format(_ value: Double) -> String {
        if value.isNaN { return "NaN" }
        if value.isInfinite { return value > 0 ? "+Inf" : "-Inf" }
        if value == value.rounded(), abs(value) < 1e15 { return String(Int64(value)) }
        return "\(value)"
    }
}
