import Glibc
import Histogram
import IOATProtocol
import IOATSystem

/// A minimal JSON writer for the STATUS reply (SPEC.md §5.6); keys are written in the order given.
struct JSONWriter {
    private(set) var text = ""
    private var needsComma = [false]

    mutating func beginObject(_ key: String? = nil) { open(key, "{") }
    mutating func endObject() { close("}") }
    mutating func beginArray(_ key: String? = nil) { open(key, "[") }
    mutating func endArray() { close("]") }

    mutating func field(_ key: String, _ value: String) {
        separate(key)
        text += Self.quoted(value)
    }
    mutating func field<T: BinaryInteger>(_ key: String, _ value: T) {
        separate(key)
        text += "\(value)"
    }
    mutating func field(_ key: String, _ value: Double) {
        separate(key)
        text += value.isFinite ? "\(value)" : "null"
    }
    mutating func field(_ key: String, _ value: Bool) {
        separate(key)
        text += value ? "true" : "false"
    }
    mutating func field<T: BinaryInteger>(_ key: String, _ values: [T]) {
        separate(key)
        text += "[" + values.map { "\($0)" }.joined(separator: ",") + "]"
    }

    private mutating func open(_ key: String?, _ bracket: String) {
        separate(key)
        text += bracket
        needsComma.append(false)
    }
    private mutating func close(_ bracket: String) {
        needsComma.removeLast()
        text += bracket
    }
    private mutating func separate(_ key: String?) {
        if needsComma[needsComma.count - 1] { text += "," }
        needsComma[needsComma.count - 1] = true
        if let key { text += Self.quoted(key) + ":" }
    }

    static func quoted(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

extension IOATServer {
    /// The STATUS document: server, channels, clients and buffer totals (SPEC.md §5.6).
    /// Root and the server's own uid see every client and tenant; any other tenant sees the server and
    /// channel summaries and only its own clients and tenant entry (another tenant's pids, uids and
    /// usage are not its business).
    func statusJSON(for viewer: PeerCredentials? = nil) -> String {
        let seesAll = viewer.map { $0.uid == 0 || $0.uid == getuid() } ?? true
        func visible(_ uid: UInt32) -> Bool { seesAll || uid == viewer?.uid }
        var j = JSONWriter()
        j.beginObject()
        j.beginObject("server")
        j.field("protocol_version", Int(Wire.version))
        j.field("pid", Int(getpid()))
        j.field("state", state.rawValue)
        j.field("engine", engine.name)
        j.field("socket", configuration.socketPath)
        j.field("uptime_seconds", ((Self.now() - startedAt) * 1000).rounded() / 1000)
        j.field("hugepage_size", hugepageSize)
        j.field("connections", connections.count)
        j.field("connections_accepted", connectionsAccepted)
        j.field("connections_refused", connectionsRefused)
        j.field("policy_reloads", policyReloads)
        j.field("policy_reload_failures", policyReloadFailures)
        for (key, value) in engine.details { j.field(key, value) }
        j.endObject()
        j.beginArray("channels")
        for s in schedulers {
            let info = s.engine.info
            j.beginObject()
            j.field("index", info.index)
            j.field("name", info.name)
            j.field("engine", info.engine == .cpu ? "cpu" : "dpdk")
            // A DPDK channel's hardware version is its driver's name; the CPU engine's is the wire number (0).
            let details = s.engine.details
            if let driver = details.first(where: { $0.0 == "hardware_version" }) {
                j.field("hardware_version", driver.1)
            } else {
                j.field("hardware_version", info.hardwareVersion)
            }
            j.field("opcodes", Opcode.allCases.filter(info.supports).map(\.name).joined(separator: ","))
            // Which engine runs which op: on the DPDK engine, copy (and fill where the device has it)
            // run on the device and the rest on the CPU.
            j.beginObject("runs")
            for opcode in Opcode.allCases where info.supports(opcode) { j.field(opcode.name, s.engine.runner(of: opcode)) }
            j.endObject()
            for (key, value) in details where key != "hardware_version" { j.field(key, value) }
            j.field("max_transfer", info.maxTransfer)
            j.field("max_depth", info.maxDepth)
            j.field("max_coalesce_us", info.maxCoalesceMicroseconds)
            j.field("queues", s.queueCount)
            j.field("in_engine", s.inEngine)
            j.field("ops", s.opsCompleted)
            j.field("bytes", s.bytesCompleted)
            j.field("errors", s.opsFailed)
            j.field("halts", s.halts)
            j.field("resets", s.resets)
            j.field("replayed", s.replayed)
            j.field("last_error", s.lastError ?? "")
            j.endObject()
        }
        j.endArray()
        var bufferCount = 0
        var bufferBytes: UInt64 = 0
        var hugeBuffers = 0
        j.beginArray("clients")
        for c in connections.values.sorted(by: { $0.id < $1.id }) where visible(c.peer.uid) {
            bufferCount += c.buffers.count
            bufferBytes += c.bufferBytes
            hugeBuffers += c.buffers.values.filter { $0.flags.contains(.hugepages) }.count
            j.beginObject()
            j.field("id", c.id)
            j.field("pid", Int(c.peer.pid))
            j.field("uid", c.peer.uid)
            j.field("gid", c.peer.gid)
            j.field("groups", c.peer.groups)
            j.field("buffers", c.buffers.count)
            j.field("buffer_bytes", c.bufferBytes)
            j.field("queues", c.queues.count)
            j.field("requests", c.requests)
            j.field("errors", c.errors)
            j.field("ops", c.queues.values.reduce(UInt64(0)) { $0 + $1.opsCompleted })
            j.field("bytes", c.queues.values.reduce(UInt64(0)) { $0 + $1.bytesCompleted })
            j.endObject()
        }
        j.endArray()
        // Tenants: one per uid with a connection. Latencies in microseconds, from SUBMIT acceptance to the
        // engine taking the op (queue wait) and to its completion (latency).
        j.beginArray("tenants")
        for t in tenants.values.sorted(by: { $0.uid < $1.uid }) where visible(t.uid) {
            j.beginObject()
            j.field("uid", t.uid)
            j.field("gid", t.gid)
            j.field("groups", t.groups)
            j.field("policy", t.policySource)
            j.field("weight", t.limits.weight)
            j.field("connections", t.connections)
            j.field("max_connections", t.limits.maxConnections)
            j.field("buffer_bytes", t.bufferBytes)
            j.field("max_buffer_bytes", t.limits.maxBufferBytes)
            j.field("queues", t.queues)
            j.field("max_queues", t.limits.maxQueues)
            j.field("inflight_capacity", t.inflightCapacity)
            j.field("max_inflight", t.limits.maxInflight)
            j.field("ops", t.ops)
            j.field("bytes", t.bytes)
            j.field("errors", t.errors)
            j.field("refusals", t.refusals)
            j.field("served_cost", t.served)
            for (name, histogram) in [("queue_wait_us", t.queueWait), ("latency_us", t.latency)] {
                j.beginObject(name)
                for (label, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9)] {
                    j.field(label, histogram.totalCount == 0 ? 0 : Double(histogram.valueAtPercentile(p)) / 1000)
                }
                j.field("max", histogram.totalCount == 0 ? 0 : Double(histogram.max) / 1000)
                j.endObject()
            }
            j.endObject()
        }
        j.endArray()
        j.beginObject("buffers")
        j.field("count", bufferCount)
        j.field("bytes", bufferBytes)
        j.field("hugepage_backed", hugeBuffers)
        j.endObject()
        j.endObject()
        return j.text
    }
}
