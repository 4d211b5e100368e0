import Foundation
import Glibc
import IOATClient
import IOATProtocol
import Testing

/// A metric family as the official Prometheus client's parser saw it.
struct ParsedFamily: Decodable {
    var type: String
    var samples: [Sample]

    struct Sample: Decodable {
        var name: String
        var labels: [String: String]
        var value: Double

        init(from decoder: Decoder) throws {
            var c = try decoder.unkeyedContainer()
            name = try c.decode(String.self)
            labels = try c.decode([String: String].self)
            if let v = try? c.decode(Double.self) { value = v } else { value = (try c.decode(String.self)) == "+Inf" ? .infinity : -.infinity }
        }
    }

    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { sample in sample.name == name && labels.allSatisfy { k, v in sample.labels[k] == v } }?.value
    }
}

/// Parses exposition text with `Tests/support/parse-metrics.py` (prometheus_client.parser).
func parseMetrics(_ text: String) throws -> [String: ParsedFamily] {
    let input = temporarySocketPath() + ".prom"
    try text.write(toFile: input, atomically: true, encoding: .utf8)
    defer { unlink(input) }
    let (status, out) = try runTool("/bin/sh", ["-c", "/usr/bin/python3 \(repositoryRoot.path)/Tests/support/parse-metrics.py < \(input)"],
                                    mergingErrors: true)
    try #require(status == 0, "the Prometheus parser refused the text: \(out)")
    return try JSONDecoder().decode([String: ParsedFamily].self, from: Data(out.utf8))
}

let hasPrometheusClient = isExecutable("/usr/bin/python3")
    && FileManager.default.fileExists(atPath: "/usr/lib/python3/dist-packages/prometheus_client/parser.py")

@Suite("What operators look at: metrics and top")
struct OperatorTests {
    @Test("ioatctl metrics parses with the official Prometheus parser and counts what ran", .enabled(if: hasPrometheusClient, "needs python3-prometheus-client"))
    func metrics() async throws {
        let server = try TestServer()
        let client = try await server.connect()
        let buffer = try await client.allocate(size: 1 << 20, pages: .normal)
        let queue = try await client.openQueue(depth: 8)
        for _ in 0..<10 { _ = try await queue.copy(from: buffer, at: 0, to: buffer, at: 1 << 19, length: 4096) }
        let (status, text) = try runTool("ioatctl", ["metrics", "--socket", server.path])
        #expect(status == 0, "\(text)")
        let families = try parseMetrics(text)
        #expect(families["ioatd_channel_ops"]?.type == "counter")
        #expect(families["ioatd_channel_ops"]?.value("ioatd_channel_ops_total", ["channel": "0"]) ?? 0 >= 10)
        #expect(families["ioatd_channel_busy_seconds"]?.value("ioatd_channel_busy_seconds_total") ?? 0 > 0)
        #expect(families["ioatd_tenant_ops"]?.value("ioatd_tenant_ops_total", ["uid": "0", "tenant": "uid 0"]) == 10,
                "each tenant sample names its tenant beside its uid")
        #expect(families["ioatd_tenant_bytes"]?.value("ioatd_tenant_bytes_total", ["uid": "0"]) == 40960)
        #expect(families["ioatd_tenant_buffer_bytes"]?.value("ioatd_tenant_buffer_bytes", ["uid": "0"]) == Double(1 << 20))
        #expect(families["ioatd_state"]?.value("ioatd_state", ["state": "serving"]) == 1)
        #expect(families["ioatd_connections_accepted"]?.type == "counter")
        // Histograms with real buckets: cumulative, ending in +Inf at the count.
        let latency = try #require(families["ioatd_tenant_latency_seconds"])
        #expect(latency.type == "histogram")
        let buckets = latency.samples.filter { $0.name == "ioatd_tenant_latency_seconds_bucket" && $0.labels["uid"] == "0" }
        #expect(buckets.count == StatusDocument.Buckets.standardBoundsUs.count + 1)
        #expect(zip(buckets, buckets.dropFirst()).allSatisfy { $0.value <= $1.value }, "buckets are not cumulative")
        #expect(buckets.last?.labels["le"] == "+Inf" && buckets.last?.value == 10)
        #expect(latency.value("ioatd_tenant_latency_seconds_count", ["uid": "0"]) == 10)
        #expect(latency.value("ioatd_tenant_latency_seconds_sum", ["uid": "0"]) ?? 0 > 0)

        // --output writes the file whole, with no temporary left beside it.
        let dir = temporarySocketPath() + ".textfile"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for _ in 0..<2 {
            let (written, out) = try runTool("ioatctl", ["metrics", "--socket", server.path, "--output", "\(dir)/ioatd.prom"], mergingErrors: true)
            #expect(written == 0, "\(out)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["ioatd.prom"])
        #expect(try parseMetrics(String(contentsOfFile: "\(dir)/ioatd.prom", encoding: .utf8))["ioatd_tenant_ops"] != nil)
    }

    @Test("A uid other than root sees only its own tenant in the metrics",
          .enabled(if: hasPrometheusClient && getuid() == 0, "needs root (setpriv) and python3-prometheus-client"))
    func metricsOfAnotherUid() async throws {
        let server = try TestServer()
        let root = try await server.connect()
        _ = try await root.allocate(size: 4096)
        let (status, text) = try runTool("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups",
                                                              buildDirectory.appendingPathComponent("ioatctl").path, "metrics", "--socket", server.path],
                                         mergingErrors: true)
        #expect(status == 0, "\(text)")
        let families = try parseMetrics(text)
        let uids = Set(families["ioatd_tenant_ops"]?.samples.compactMap { $0.labels["uid"] } ?? [])
        #expect(uids == ["65534"], "tenants visible to uid 65534: \(uids)")
    }

    @Test("ioatctl top in a real 80×24 terminal: live rates, q quits and the terminal is put back",
          .enabled(if: isExecutable("/usr/bin/tmux"), "needs tmux"))
    func top() async throws {
        let server = try TestServer()
        let client = try await server.connect()
        let buffer = try await client.allocate(size: 1 << 20)
        let queue = try await client.openQueue(depth: 8)
        let socket = "ioatd-top-\(getpid())"
        // tmux closes the descriptors it inherits, which Foundation's Process takes for an exit: run it with
        // posix_spawn, its output to a file.
        func tmux(_ args: [String]) throws -> (Int32, String) {
            let out = temporarySocketPath() + ".tmux"
            defer { unlink(out) }
            let process = try SpawnedProcess("/usr/bin/tmux", ["-L", socket] + args, output: out)
            let status = process.wait(timeout: 10) ?? -1
            return (status, (try? String(contentsOfFile: out, encoding: .utf8)) ?? "")
        }
        defer { _ = try? tmux(["kill-server"]) }
        let command = "\(buildDirectory.appendingPathComponent("ioatctl").path) top --socket \(server.path) --interval 0.3; "
            + "echo TOP-EXIT=$?; echo STTY: $(stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo); sleep 60"
        #expect(try tmux(["new-session", "-d", "-s", "top", "-x", "80", "-y", "24", command]).0 == 0)
        func screen() throws -> String { try tmux(["capture-pane", "-p", "-t", "top"]).1 }
        // Keep copies running while top watches, until it shows uid 0 moving.
        var seen = ""
        let live = await eventually(timeout: 20) {
            _ = try? await queue.copy(from: buffer, at: 0, to: buffer, at: 1 << 19, length: 64 << 10)
            seen = (try? screen()) ?? ""
            guard let row = seen.split(separator: "\n").first(where: { $0.hasPrefix("uid 0") }) else { return false }
            let opsPerSecond = row.split(separator: " ").dropFirst(2).first.flatMap { Double($0) } ?? 0
            return seen.contains("CHANNEL") && seen.contains("0 cpu0") && opsPerSecond > 0
        }
        #expect(live, "top never showed uid 0 doing ops:\n\(seen)")
        #expect(seen.split(separator: "\n", omittingEmptySubsequences: false).allSatisfy { $0.count <= 80 })
        #expect(try tmux(["send-keys", "-t", "top", "q"]).0 == 0)
        var after = ""
        let quit = await eventually(timeout: 10) {
            after = (try? screen()) ?? ""
            return after.contains("STTY:")
        }
        #expect(quit, "top did not quit on q:\n\(after)")
        #expect(after.contains("TOP-EXIT=0"), "\(after)")
        #expect(!after.contains("CHANNEL"), "the alternate screen was not left:\n\(after)")
        let stty = after.split(separator: "\n").first { $0.hasPrefix("STTY:") }.map(String.init) ?? ""
        #expect(stty.contains(" icanon") && stty.contains(" echo") && !stty.contains("-icanon") && !stty.contains("-echo"),
                "the terminal was not put back: \(stty)")
    }

    @Test("ioatctl bench --csv and --plot: a row per figure, and a valid SVG with a line per op and side; quiet when piped")
    func benchCSVAndPlot() throws {
        let server = try TestServer()
        let svg = temporarySocketPath() + ".svg"
        defer { unlink(svg) }
        let (status, out) = try runTool("ioatctl", ["bench", "--socket", server.path, "--sizes", "4K,64K", "--ops", "copy,fill", "--rounds", "1",
                                                    "--seconds", "0.05", "--qd1", "50", "--small-batch", "0", "--csv", "--plot", svg],
                                        mergingErrors: true)
        #expect(status == 0, "\(out)")
        #expect(!out.contains("\u{1B}") && !out.contains("\r"), "progress notes reached a pipe: \(out.debugDescription)")
        let lines = out.split(separator: "\n").map(String.init)
        #expect(lines.first == "kind,op,size,depth,side,value,unit,ratio,ratio_min,ratio_max,transport")
        let rows = lines.dropFirst().map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        #expect(rows.count == 2 * (6 + 2 * 2 * 2), "\(lines)")
        #expect(rows.allSatisfy { $0.count == 11 })
        for transport in ["ring", "socket"] {
            let mine = rows.filter { $0[10] == transport }
            let throughput = mine.filter { $0[0] == "throughput" }
            #expect(Set(throughput.map { "\($0[1]) \($0[2]) \($0[4])" })
                    == ["copy 4096 baseline", "copy 4096 cpu", "copy 65536 baseline", "copy 65536 cpu",
                        "fill 4096 baseline", "fill 4096 cpu", "fill 65536 baseline", "fill 65536 cpu"])
            #expect(throughput.allSatisfy { (Double($0[5]) ?? 0) > 0 && $0[6] == "GB/s" })
            #expect(mine.filter { $0[0] == "qd1" }.map { "\($0[1]) \($0[4]) \($0[6])" }
                    == ["null cpu us_p50", "null cpu us_p99", "copy cpu us_p50", "copy cpu us_p99",
                        "null bare_seqpacket us_p50", "null bare_seqpacket us_p99"])
        }
        // The chart parses as XML, is an SVG, and has a line per op and side, each with a point per size.
        let script = """
            import sys, xml.etree.ElementTree as ET
            root = ET.parse(sys.argv[1]).getroot()
            assert root.tag == '{http://www.w3.org/2000/svg}svg', root.tag
            for p in root.iter('{http://www.w3.org/2000/svg}polyline'):
                print(p.get('data-series') + '|' + str(len(p.get('points').split())))
            """
        let (parsed, series) = try runTool("/usr/bin/python3", ["-c", script, svg], mergingErrors: true)
        #expect(parsed == 0, "\(series)")
        let found = Dictionary(uniqueKeysWithValues: series.split(separator: "\n").map { line -> (String, Int) in
            let parts = line.split(separator: "|")
            return (String(parts[0]), Int(parts.last ?? "") ?? 0)
        })
        let names = ["copy baseline", "copy cpu", "ratio copy cpu", "fill baseline", "fill cpu", "ratio fill cpu"]
        #expect(Set(found.keys) == Set(["ring", "socket"].flatMap { t in names.map { "\($0) \(t)" } }), "\(found)")
        #expect(found.values.allSatisfy { $0 == 2 }, "\(found)")
    }

    @Test("Long-running commands show progress on a terminal", .enabled(if: isExecutable("/usr/bin/tmux"), "needs tmux"))
    func progressOnTerminal() async throws {
        let server = try TestServer()
        let socket = "ioatd-progress-\(getpid())"
        func tmux(_ args: [String]) throws -> (Int32, String) {
            let out = temporarySocketPath() + ".tmux"
            defer { unlink(out) }
            let process = try SpawnedProcess("/usr/bin/tmux", ["-L", socket] + args, output: out)
            return (process.wait(timeout: 10) ?? -1, (try? String(contentsOfFile: out, encoding: .utf8)) ?? "")
        }
        defer { _ = try? tmux(["kill-server"]) }
        let command = "\(buildDirectory.appendingPathComponent("ioatctl").path) stress --socket \(server.path) --ops 100000000; sleep 60"
        #expect(try tmux(["new-session", "-d", "-s", "p", "-x", "80", "-y", "24", command]).0 == 0)
        var seen = ""
        let shown = await eventually(timeout: 20) {
            seen = (try? tmux(["capture-pane", "-p", "-t", "p"]).1) ?? ""
            // A note that has moved past 0: "stress: 265216 of 100000000 ops verified".
            return seen.split(separator: "\n").contains { line in
                line.hasPrefix("stress: ") && line.hasSuffix(" of 100000000 ops verified")
                    && (Int(line.dropFirst(8).prefix { $0.isNumber }) ?? 0) > 0
            }
        }
        #expect(shown, "no progress on the terminal:\n\(seen)")
    }
}
