import ArgumentParser
import Foundation
import IOATClient
import IOATProtocol
import IOATSystem

struct Top: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A live view of the server: per channel and per tenant ops/s, GB/s, latency and credits.",
        discussion: """
            Refreshes every --interval seconds, like iotop; tenants and channels sorted by throughput. Rates
            are over the last interval; latency percentiles are of the ops completed in it (to the bucket
            bound that holds them), or since start when none completed. q (or Ctrl-C) quits and puts the
            terminal back. Fits 80 × 24 and any larger terminal; needs only plain ANSI escapes, so it works
            over SSH.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Seconds between refreshes.")
    var interval = 1.0

    func run() async throws {
        guard Terminal.isTerminal(STDIN_FILENO), Terminal.isTerminal(STDOUT_FILENO) else {
            throw CLIError("top needs a terminal; use `ioatctl status` or `ioatctl metrics` in scripts")
        }
        let client = try await connection.connect()
        let terminal: Terminal
        do {
            terminal = try Terminal(rawInput: STDIN_FILENO)
        } catch {
            throw CLIError("cannot set the terminal up: \(error)")
        }
        // The alternate screen and a hidden cursor, put back however this ends.
        Terminal.write("\u{1B}[?1049h\u{1B}[?25l")
        defer {
            Terminal.write("\u{1B}[?25h\u{1B}[?1049l")
            terminal.restore()
        }
        var previous: (document: StatusDocument, at: Double)? = nil
        while true {
            let document = try await client.status()
            let at = now()
            let (rows, columns) = Terminal.size()
            let lines = Screen(document, previous: previous, at: at, interval: interval).lines(rows: rows, columns: columns)
            Terminal.write("\u{1B}[H" + lines.map { $0 + "\u{1B}[K" }.joined(separator: "\r\n") + "\u{1B}[J")
            previous = (document, at)
            let deadline = at + interval
            while now() < deadline {
                if let key = terminal.key(waiting: Int32(max(1, (deadline - now()) * 1000))), key == UInt8(ascii: "q") || key == 3 {
                    return
                }
            }
        }
    }
}

/// One frame of `ioatctl top`.
struct Screen {
    let document: StatusDocument
    let previous: StatusDocument?
    let seconds: Double
    let interval: Double

    init(_ document: StatusDocument, previous: (document: StatusDocument, at: Double)?, at: Double, interval: Double) {
        self.document = document
        self.previous = previous?.document
        seconds = previous.map { max(0.001, at - $0.at) } ?? 0
        self.interval = interval
    }

    /// Ops and bytes per second from the previous frame (0 on the first).
    func rate(_ now: UInt64, _ before: UInt64?) -> Double {
        guard let before, seconds > 0, now >= before else { return 0 }
        return Double(now - before) / seconds
    }

    /// The percentile `p` of the ops completed since the previous frame, from the bucket deltas: the bound
    /// of the bucket that holds it; nil when none completed.
    static func percentile(_ p: Double, _ now: StatusDocument.Buckets?, _ before: StatusDocument.Buckets?) -> Double? {
        guard let now else { return nil }
        let total = now.count - (before?.count ?? 0)
        guard total > 0 else { return nil }
        for (i, bound) in now.boundsUs.enumerated() {
            let count = now.counts[i] - (before.map { $0.counts[i] } ?? 0)
            if Double(count) >= p * Double(total) { return bound }
        }
        return now.boundsUs.last.map { $0 * 10 }  // beyond the last bound
    }

    static func bytes(_ n: Double) -> String {
        let (k, m, g) = (1024.0, 1048576.0, 1073741824.0)
        return n >= g ? String(format: "%.1fG", n / g) : n >= m ? String(format: "%.1fM", n / m)
            : n >= k ? String(format: "%.1fK", n / k) : String(format: "%.0f", n)
    }

    static func micros(_ us: Double?) -> String {
        guard let us else { return "-" }
        return us >= 10_000 ? String(format: "%.0fms", us / 1000) : String(format: "%.0f", us)
    }

    func lines(rows: Int, columns: Int) -> [String] {
        let s = document.server
        var out: [String] = []
        out.append("ioatd top - pid \(s.pid) \(s.state) - engine \(s.engine) - up \(Int(s.uptimeSeconds)) s - \(s.connections) clients")
        var second = "every \(interval) s, q quits"
        if let b = s.bufferBudget {
            second = "buffers \(Self.bytes(Double(b.locked + b.unlocked)))/\(Self.bytes(Double(b.limit)))"
                + (s.hugepagesTotal.map { " - hugepages free \(s.hugepagesFree ?? 0)/\($0)" } ?? "") + " - " + second
        }
        out.append(second)
        out.append("")
        out.append(pad("CHANNEL", 16) + pad("OPS/S", 10, right: true) + pad("GB/S", 8, right: true) + pad("QUEUES", 8, right: true)
                   + pad("INFLIGHT", 10, right: true) + pad("BUSY%", 7, right: true) + pad("ERRORS", 9, right: true))
        let before = Dictionary(uniqueKeysWithValues: (previous?.channels ?? []).map { ($0.index, $0) })
        let channels = document.channels.map { c -> (StatusDocument.Channel, Double, Double, Double) in
            let was = before[c.index]
            let busy = seconds > 0 ? max(0, ((c.busySeconds ?? 0) - (was?.busySeconds ?? 0)) / seconds * 100) : 0
            return (c, rate(c.ops, was?.ops), rate(c.bytes, was?.bytes), busy)
        }.sorted { ($0.2, $0.1) > ($1.2, $1.1) }
        for (c, ops, bytes, busy) in channels {
            out.append(pad("\(c.index) \(c.name)", 16) + pad(String(format: "%.0f", ops), 10, right: true)
                       + pad(String(format: "%.2f", bytes / 1e9), 8, right: true) + pad("\(c.queues)", 8, right: true)
                       + pad("\(c.inEngine)", 10, right: true) + pad(String(format: "%.0f", min(100, busy)), 7, right: true)
                       + pad("\(c.errors)", 9, right: true))
        }
        out.append("")
        // Tenants are told apart by name: several may share a uid (units, cgroups).
        func name(_ t: StatusDocument.Tenant) -> String { t.name ?? "uid \(t.uid)" }
        let width = max(12, (document.tenants.map { name($0).count }.max() ?? 0) + 2)
        out.append(pad("TENANT", width) + pad("OPS/S", 10, right: true) + pad("GB/S", 8, right: true) + pad("P50us", 8, right: true)
                   + pad("P99us", 8, right: true) + pad("CREDITS", 11, right: true) + pad("BUFFERS", 9, right: true)
                   + pad("CONN", 6, right: true))
        let tenantsBefore = Dictionary((previous?.tenants ?? []).map { (name($0), $0) }) { first, _ in first }
        let tenants = document.tenants.map { t -> (StatusDocument.Tenant, Double, Double) in
            let was = tenantsBefore[name(t)]
            return (t, rate(t.ops, was?.ops), rate(t.bytes, was?.bytes))
        }.sorted { ($0.2, $0.1, name($1.0)) > ($1.2, $1.1, name($0.0)) }
        let room = max(0, rows - out.count - 1)
        for (t, ops, bytes) in tenants.prefix(room) {
            let was = tenantsBefore[name(t)]
            let p50 = Self.percentile(0.5, t.latencyBuckets, was?.latencyBuckets) ?? (t.ops > 0 ? t.latencyUs.p50 : nil)
            let p99 = Self.percentile(0.99, t.latencyBuckets, was?.latencyBuckets) ?? (t.ops > 0 ? t.latencyUs.p99 : nil)
            out.append(pad(name(t), width) + pad(String(format: "%.0f", ops), 10, right: true)
                       + pad(String(format: "%.2f", bytes / 1e9), 8, right: true) + pad(Self.micros(p50), 8, right: true)
                       + pad(Self.micros(p99), 8, right: true) + pad("\(t.creditsInUse ?? 0)/\(t.inflightCapacity)", 11, right: true)
                       + pad(Self.bytes(Double(t.bufferBytes)), 9, right: true) + pad("\(t.connections)", 6, right: true))
        }
        if tenants.count > room { out[out.count - 1] = "... and \(tenants.count - room + 1) more tenants" }
        return out.prefix(rows).map { String($0.prefix(columns)) }
    }

    func pad(_ s: String, _ width: Int, right: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, width - s.count))
        return right ? fill + s : s + fill
    }
}
