import ArgumentParser
import Foundation
import IOATClient
import IOATEngine
import IOATProtocol
import IOATSystem

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure copy, fill and CRC32C through the server beside an in-process baseline from the same run.",
        discussion: """
            The baseline runs the same kernel (memmove, the fill kernel, ISA-L crc32_iscsi) in this process on
            the same shared buffers; the ratio is ioatd throughput / baseline throughput. The small-op line
            submits 64-byte copies in batches and reports ops per second, client+server CPU per op (from
            /proc) and socket packets per op. With --transport both (the default) every figure is measured
            over shared-memory rings and over the socket, one after the other in the same run.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "Transport: ring (shared-memory rings, protocol version 3), socket (SUBMIT and COMPLETION messages), or both.")
    var transport: TransportChoice = .both
    @Option(help: "Transfer sizes (K, M suffixes).")
    var sizes = "4K,64K,1M,16M,64M"
    @Option(help: "Ops: copy, fill, crc32c.")
    var ops = "copy,fill,crc32c"
    @Option(help: "Ops kept in flight (queue depth).")
    var depth = 4
    @Option(help: "Seconds per figure, split over the rounds.")
    var seconds = 0.6
    @Option(help: "Rounds per figure: baseline and server alternate, and the median per-round ratio is reported, so drift on a noisy machine hits both sides alike.")
    var rounds = 3
    @Option(help: "Batch size for the small-op line (0 to skip).")
    var smallBatch = 32
    @Option(help: "NULL round trips at queue depth 1 for the QD1 line: each waits for its completion before the next (0 to skip).")
    var qd1 = 2000
    @Option(help: "Channel to use (default: the server picks).")
    var channel: UInt32?
    @Option(help: "A second ioatd's socket (say a CPU-engine server beside a DPDK one): every figure is also measured there, in the same rounds against the same baseline, and printed beside the first.")
    var beside: String?
    @Option(help: "Also run this many client processes at once (as as many uids when run as root), each copying --clients-size bytes with --depth in flight, beside one client alone in the same run: the aggregate, each client's share, Jain's fairness index.")
    var clients = 0
    @Option(help: "Transfer size for --clients (K, M suffixes).")
    var clientsSize = "64K"
    @Flag(inversion: .prefixedNo, help: "In a build with the DPDK trait, first measure DPDK's dma_skeleton driven in this process (4 KiB copies, depth at least 32): the peer figure for the transports.")
    var peerFigure = true
    @Flag(help: "Print JSON.")
    var json = false
    @Flag(help: "Print CSV, one row per figure: kind, op, size, depth, side, value, unit, ratio, ratio_min, ratio_max.")
    var csv = false
    @Option(help: "Also draw the throughput figures as an SVG chart in this file: GB/s against transfer size on log axes, a line per op and side, and the ratio below.")
    var plot: String?

    struct Row: Codable {
        var op: String
        var size: Int
        var depth: Int
        /// Medians over the rounds.
        var baselineGBps: Double
        var ioatdGBps: Double
        var ratio: Double
        /// Lowest and highest per-round ratio.
        var ratioMin: Double
        var ratioMax: Double
        /// The same figure on the --beside server.
        var beside: Beside?
    }

    struct Beside: Codable {
        var engine: String
        var ioatdGBps: Double
        var ratio: Double
        var ratioMin: Double
        var ratioMax: Double
    }

    /// One server under measurement: its buffers and queue.
    struct Target {
        var client: IOATClient
        var engine: String
        var src: IOATBuffer
        var dst: IOATBuffer
        var queue: IOATQueue

        static func open(_ client: IOATClient, size: Int, channel: UInt32?, depth: Int) async throws -> Target {
            let src = try await client.allocate(size: size)
            let dst = try await client.allocate(size: size)
            src.fillPseudoRandom(0..<size, seed: 1)
            dst.fillPseudoRandom(0..<size, seed: 2)
            let queue = try await client.openQueue(channel: channel, depth: depth)
            let engine = client.server.channels.first { $0.index == queue.channel }.map { $0.engine == .cpu ? "cpu" : "dpdk" } ?? "?"
            return Target(client: client, engine: engine, src: src, dst: dst, queue: queue)
        }
    }

    /// Seconds of one measurement in one round.
    var slice: Double { seconds / Double(max(1, rounds)) }

    struct SmallOps: Codable {
        var size: Int
        var batch: Int
        var batchesInFlight: Int
        var baselineOpsPerSecond: Double
        var opsPerS: Double
        var ratio: Double
        var packetsPerOp: Double
        /// Client and server CPU time per op (user + system, from /proc), in µs.
        var cpuUsPerOp: Double
        var clientCpuUsPerOp: Double
        var serverCpuUsPerOp: Double
        /// The design's limit in the same run: two processes on a bare SPSC ring, the same copies
        /// (`BareRing`), and ioatd's figure as a share of it. Nil when it could not be measured.
        var bareRingOpsPerS: Double?
        var bareRingRatio: Double?
        /// The lowest and highest of the rounds' ratios (ioatd and the bare ring alternate, round by round).
        var bareRingRatioMin: Double?
        var bareRingRatioMax: Double?
    }

    /// Round trips at queue depth 1, in microseconds.
    struct Percentiles: Codable {
        var p50: Double
        var p99: Double
        var max: Double
    }

    struct QD1: Codable {
        var ops: Int
        var nullUs: Percentiles
        /// 64-byte COPY round trips, one at a time.
        var copy64Us: Percentiles
        /// The floor of any socket transport, in the same run: 64-byte round trips between two threads of
        /// this process over a SOCK_SEQPACKET socketpair, both sides polling.
        var barePingPongUs: Percentiles
    }

    struct Report: Codable {
        /// "ring" or "socket".
        var transport: String
        var engine: String
        var channels: Int
        var hugepages: Bool
        var qd1: QD1?
        var rows: [Row]
        var small: SmallOps?
        var manyClients: ManyClients?
        /// DPDK build: dma_skeleton driven in this process, the same figure in every report.
        var peer: PeerFigure?
    }

    static func parseSize(_ s: Substring) throws -> Int {
        let upper = s.uppercased()
        let (digits, scale) = upper.hasSuffix("K") ? (upper.dropLast(), 1 << 10) : upper.hasSuffix("M") ? (upper.dropLast(), 1 << 20)
            : upper.hasSuffix("G") ? (upper.dropLast(), 1 << 30) : (Substring(upper), 1)
        guard let n = Int(digits), n > 0 else { throw ValidationError("bad size \(s)") }
        return n * scale
    }

    func run() async throws {
        let sizeList = try sizes.split(separator: ",").map(Self.parseSize)
        let opList = ops.split(separator: ",").map(String.init)
        for op in opList where !["copy", "fill", "crc32c"].contains(op) { throw ValidationError("unknown op \(op)") }
        guard depth > 0 else { throw ValidationError("--depth must be above 0") }
        var reports: [Report] = []
        var peer: PeerFigure? = nil
        #if DPDK
        if peerFigure {
            switch PeerFigure.measure(size: 4096, depth: max(32, depth), seconds: seconds) {
            case .success(let figure):
                peer = figure
                if !json && !csv {
                    print(String(format: "peer: DPDK %@ driven in this process (no server, no transport): 4K copies, depth %d: %.2f GB/s\n",
                                 figure.device, figure.depth, figure.gBps))
                }
            case .failure(let why):
                if !json && !csv { print("peer: not measured: \(why)\n") }
            }
        }
        #endif
        for t in transport.transports {
            var report = try await measure(over: t, sizes: sizeList, ops: opList)
            report.peer = peer
            reports.append(report)
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            encoder.keyEncodingStrategy = .convertToSnakeCase
            print(String(decoding: try encoder.encode(reports), as: UTF8.self))
        }
        if csv { print(Self.csv(reports), terminator: "") }
        if let plot {
            let svg = Self.plot(reports, title: "ioatd bench: engine \(reports[0].engine), depth \(depth), \(reports[0].hugepages ? "hugepages" : "4 KiB pages")")
            do {
                try Data(svg.utf8).write(to: URL(fileURLWithPath: plot))
            } catch {
                throw CLIError("cannot write \(plot): \(error.localizedDescription)")
            }
            if !json && !csv { print("\nchart: \(plot)") }
        }
    }

    /// Every figure over one transport, each beside its baseline from the same rounds.
    func measure(over transport: IOATClient.Transport, sizes sizeList: [Int], ops opList: [String]) async throws -> Report {
        let largest = Self.bufferBytes(sizes: sizeList, smallBatch: smallBatch)
        let queueDepth = max(depth, smallBatch * 4)
        let client = try await connection.connect(transport: transport)
        defer { client.close() }
        let main = try await Target.open(client, size: largest, channel: channel, depth: queueDepth)
        var other: Target? = nil
        if let beside {
            let client: IOATClient
            do {
                client = try await IOATClient.connect(path: beside, transport: transport, timeouts: connection.timeouts)
            } catch {
                throw CLIError("cannot connect to the --beside ioatd at \(beside): \(error)")
            }
            other = try await Target.open(client, size: largest, channel: nil, depth: queueDepth)
        }
        let (src, dst, queue) = (main.src, main.dst, main.queue)
        var report = Report(transport: transport.rawValue, engine: main.engine, channels: client.server.channels.count,
                            hugepages: src.isHugepageBacked, rows: [])
        let table = !json && !csv
        var progress = Progress()
        defer { progress.clear() }
        if table {
            print("ioatd bench over the \(transport.rawValue)\(queue.isRing ? " (shared-memory rings)" : " (SUBMIT and COMPLETION messages)"): engine \(main.engine), channel \(queue.channel), depth \(depth), buffers on \(src.isHugepageBacked ? "hugepages" : "4 KiB pages"), \(seconds) s per figure")
            if let other { print("beside it: engine \(other.engine) at \(beside!), channel \(other.queue.channel), measured in the same rounds") }
        }
        if qd1 > 0 {
            progress.update("QD1: \(qd1) NULL and 64-byte COPY round trips", force: true)
            let figure = try await measureQD1(client: client, queue: queue, src: src, dst: dst)
            progress.clear()
            report.qd1 = figure
            if table {
                print(String(format: "QD1 round trips over %d ops: NULL p50 %.2f µs, p99 %.2f µs; 64 B COPY p50 %.2f µs, p99 %.2f µs; bare polled SEQPACKET ping-pong p50 %.2f µs, p99 %.2f µs (NULL p50 ratio %.2f)",
                             figure.ops, figure.nullUs.p50, figure.nullUs.p99, figure.copy64Us.p50, figure.copy64Us.p99,
                             figure.barePingPongUs.p50, figure.barePingPongUs.p99, figure.nullUs.p50 / max(0.001, figure.barePingPongUs.p50)))
            }
        }
        if smallBatch > 0 {
            progress.update("64-byte copies in batches of \(smallBatch)", force: true)
            let small = try await measureSmallOps(client: client, queue: queue, src: src, dst: dst)
            progress.clear()
            report.small = small
            if table {
                print(String(format: "64-byte copies, batches of %d, %d batches in flight: ioatd %.0f ops/s, baseline memcpy %.0f ops/s (ratio %.4f); CPU per op %.3f µs (client %.3f + server %.3f); %.3f socket packets per op",
                             small.batch, small.batchesInFlight, small.opsPerS, small.baselineOpsPerSecond, small.ratio, small.cpuUsPerOp,
                             small.clientCpuUsPerOp, small.serverCpuUsPerOp, small.packetsPerOp))
                if let bare = small.bareRingOpsPerS, let ratio = small.bareRingRatio {
                    print(String(format: "the same copies between two processes on a bare SPSC ring (no validation, tenancy or scheduling): %.0f ops/s; ioatd at %.3f of it (%.3f-%.3f over %d rounds, alternating)",
                                 bare, ratio, small.bareRingRatioMin ?? ratio, small.bareRingRatioMax ?? ratio, max(1, rounds)))
                }
            }
        }
        if table {
            print("op       size   baseline GB/s   \(Self.pad(main.engine, 4, right: true)) GB/s   ratio (min-max of \(rounds) rounds)"
                  + (other.map { "   \(Self.pad($0.engine, 4, right: true)) GB/s   ratio (min-max)" } ?? ""))
        }
        for op in opList {
            for size in sizeList {
                var baselines: [Double] = []
                var served: [Double] = []
                var servedBeside: [Double] = []
                for round in 0..<max(1, rounds) {
                    progress.update("\(op) \(Self.label(size)): round \(round + 1) of \(max(1, rounds))", force: true)
                    baselines.append(measureBaseline(op: op, size: size, src: src, dst: dst))
                    served.append(try await measureServer(op: op, size: size, client: client, queue: queue, src: src, dst: dst))
                    if let other {
                        servedBeside.append(try await measureServer(op: op, size: size, client: other.client, queue: other.queue,
                                                                    src: other.src, dst: other.dst))
                    }
                }
                let ratios = zip(served, baselines).map { $0 / $1 }
                var row = Row(op: op, size: size, depth: depth, baselineGBps: Self.median(baselines), ioatdGBps: Self.median(served),
                              ratio: Self.median(ratios), ratioMin: ratios.min()!, ratioMax: ratios.max()!)
                if let other {
                    let besideRatios = zip(servedBeside, baselines).map { $0 / $1 }
                    row.beside = Beside(engine: other.engine, ioatdGBps: Self.median(servedBeside), ratio: Self.median(besideRatios),
                                        ratioMin: besideRatios.min()!, ratioMax: besideRatios.max()!)
                }
                report.rows.append(row)
                progress.clear()
                if table {
                    print(Self.pad(op, 7) + " " + Self.pad(Self.label(size), 6, right: true)
                          + String(format: " %15.2f %12.2f %7.2f  (%.2f-%.2f)", row.baselineGBps, row.ioatdGBps, row.ratio, row.ratioMin, row.ratioMax)
                          + (row.beside.map { String(format: "     %12.2f %7.2f  (%.2f-%.2f)", $0.ioatdGBps, $0.ratio, $0.ratioMin, $0.ratioMax) } ?? ""))
                }
            }
        }
        if clients > 0 {
            let size = try Self.parseSize(Substring(clientsSize))
            progress.update("\(clients) client processes at once, and one alone", force: true)
            let seconds = max(1.0, self.seconds * 2)
            let asUIDs = getuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")
            let alone = try ManyClients.runWorkers(count: 1, socket: client.path, transport: transport, size: size, depth: depth,
                                                   seconds: seconds, asUIDs: asUIDs)
            let rates = try ManyClients.runWorkers(count: clients, socket: client.path, transport: transport, size: size, depth: depth,
                                                   seconds: seconds, asUIDs: asUIDs)
            progress.clear()
            let many = ManyClients(clients: clients, transport: transport.rawValue, size: size, depth: depth, aloneGBps: alone[0],
                                   aggregateGBps: rates.reduce(0, +), perClientGBps: rates, jain: ManyClients.jain(rates))
            report.manyClients = many
            if table {
                print(String(format: "%d clients at once (%@), %@ copies, depth %d: %.2f GB/s together, %.2f× one client alone (%.2f GB/s); Jain's index %.3f; shares %@",
                             clients, asUIDs ? "one uid each" : "one uid", Self.label(size), depth, many.aggregateGBps,
                             many.aggregateGBps / max(1e-9, many.aloneGBps), many.aloneGBps, many.jain,
                             rates.map { String(format: "%.2f", $0 / max(1e-9, many.aggregateGBps)) }.joined(separator: " ")))
            }
        }
        if table { print("") }
        other?.client.close()
        return report
    }

    /// One CSV row per figure, the transport last.
    static func csv(_ reports: [Report]) -> String {
        var out = "kind,op,size,depth,side,value,unit,ratio,ratio_min,ratio_max,transport\n"
        for report in reports {
            func row(_ fields: [String]) { out += (fields + [report.transport]).joined(separator: ",") + "\n" }
            func f(_ v: Double) -> String { String(format: "%.6g", v) }
            if let q = report.qd1 {
                row(["qd1", "null", "0", "1", report.engine, f(q.nullUs.p50), "us_p50", "", "", ""])
                row(["qd1", "null", "0", "1", report.engine, f(q.nullUs.p99), "us_p99", "", "", ""])
                row(["qd1", "copy", "64", "1", report.engine, f(q.copy64Us.p50), "us_p50", "", "", ""])
                row(["qd1", "copy", "64", "1", report.engine, f(q.copy64Us.p99), "us_p99", "", "", ""])
                row(["qd1", "null", "0", "1", "bare_seqpacket", f(q.barePingPongUs.p50), "us_p50", "", "", ""])
                row(["qd1", "null", "0", "1", "bare_seqpacket", f(q.barePingPongUs.p99), "us_p99", "", "", ""])
            }
            for r in report.rows {
                row(["throughput", r.op, "\(r.size)", "\(r.depth)", "baseline", f(r.baselineGBps), "GB/s", "1", "1", "1"])
                row(["throughput", r.op, "\(r.size)", "\(r.depth)", report.engine, f(r.ioatdGBps), "GB/s", f(r.ratio), f(r.ratioMin), f(r.ratioMax)])
                if let b = r.beside {
                    row(["throughput", r.op, "\(r.size)", "\(r.depth)", "beside:\(b.engine)", f(b.ioatdGBps), "GB/s", f(b.ratio), f(b.ratioMin),
                         f(b.ratioMax)])
                }
            }
            if let s = report.small {
                row(["small_ops", "copy", "\(s.size)", "\(s.batch * s.batchesInFlight)", "baseline", f(s.baselineOpsPerSecond), "ops/s", "1", "1", "1"])
                row(["small_ops", "copy", "\(s.size)", "\(s.batch * s.batchesInFlight)", report.engine, f(s.opsPerS), "ops/s", f(s.ratio), "", ""])
                row(["small_ops", "copy", "\(s.size)", "\(s.batch * s.batchesInFlight)", report.engine, f(s.cpuUsPerOp), "cpu_us_per_op", "", "", ""])
                if let bare = s.bareRingOpsPerS, let ratio = s.bareRingRatio {
                    row(["small_ops", "copy", "\(s.size)", "\(s.batch * s.batchesInFlight)", "bare_ring", f(bare), "ops/s", f(ratio),
                         s.bareRingRatioMin.map(f) ?? "", s.bareRingRatioMax.map(f) ?? ""])
                }
            }
        }
        return out
    }

    /// The chart of the throughput rows: a line per op, side and transport.
    static func plot(_ reports: [Report], title: String) -> String {
        var throughput: [Plot.Series] = []
        var ratios: [Plot.Series] = []
        for report in reports {
            let via = reports.count > 1 ? " \(report.transport)" : ""
            for op in report.rows.map(\.op).reduce(into: [String](), { if !$0.contains($1) { $0.append($1) } }) {
                let rows = report.rows.filter { $0.op == op }
                throughput.append(Plot.Series(name: "\(op) baseline\(via)", op: op, dash: "6 4", points: rows.map { ($0.size, $0.baselineGBps) }))
                throughput.append(Plot.Series(name: "\(op) \(report.engine)\(via)", op: op, dash: report.transport == "socket" && reports.count > 1 ? "1 2" : "",
                                              points: rows.map { ($0.size, $0.ioatdGBps) }))
                ratios.append(Plot.Series(name: "ratio \(op) \(report.engine)\(via)", op: op, dash: report.transport == "socket" && reports.count > 1 ? "1 2" : "",
                                          points: rows.map { ($0.size, $0.ratio) }))
                if let engine = rows.first?.beside?.engine {
                    throughput.append(Plot.Series(name: "\(op) beside \(engine)\(via)", op: op, dash: "2 3",
                                                  points: rows.compactMap { r in r.beside.map { (r.size, $0.ioatdGBps) } }))
                    ratios.append(Plot.Series(name: "ratio \(op) beside \(engine)\(via)", op: op, dash: "2 3",
                                              points: rows.compactMap { r in r.beside.map { (r.size, $0.ratio) } }))
                }
            }
        }
        return Plot(title: title, throughput: throughput, ratios: ratios).svg()
    }

    /// The bytes each of the two buffers needs so that every figure fits, whatever `--sizes` says: the
    /// largest size (one op each), `smallBatch` 64-byte copies 128 bytes apart, and QD1's 64-byte copy.
    static func bufferBytes(sizes: [Int], smallBatch: Int) -> Int {
        max(sizes.max() ?? 0, smallBatch * 128, qd1CopyBytes)
    }

    /// The length of QD1's COPY, from offset 0 of one buffer to offset 0 of the other.
    static let qd1CopyBytes = 64

    /// NULL and 64-byte COPY ops one at a time, each waited for, driven from one thread of this process
    /// that polls: over a ring through `IOATRing`, over the socket with SUBMIT and COMPLETION on a
    /// connection of its own (what a C client does). The bare SEQPACKET ping-pong is the floor of any
    /// socket transport on this machine, measured in the same run.
    func measureQD1(client: IOATClient, queue: IOATQueue, src: IOATBuffer, dst: IOATBuffer) async throws -> QD1 {
        let qd1 = self.qd1
        let path = client.path
        let bound = client.timeouts.call.map { Double($0.nanoseconds) / 1e9 } ?? 86_400
        let (null, copy): ([Double], [Double])
        if queue.isRing {
            let ring = try await client.openRing(channel: queue.channel, depth: 8)
            let descriptors: [Descriptor] = [.null(), .copy(from: src.address(0), to: dst.address(0), length: UInt64(Self.qd1CopyBytes))]
            let samples = try await OSThread.run(name: "ioatctl-qd1") { () throws -> [[Double]] in
                try descriptors.map { d in
                    var out: [Double] = []
                    out.reserveCapacity(qd1)
                    var warmUp = WarmUp(samples: qd1)
                    while out.count < qd1 {
                        let start = now()
                        guard ring.push(d) else { throw CLIError("the QD1 ring is full") }
                        try ring.submit()
                        try ring.wait(for: 1, spinMicroseconds: 1000)
                        var status = CompletionStatus.success
                        ring.reap { status = $0.status }
                        let elapsed = (now() - start) * 1e6
                        guard status == .success else { throw CLIError("a QD1 \(d.opcode.name) op completed with \(status)") }
                        if warmUp.keeps(start) { out.append(elapsed) }
                    }
                    return out
                }
            }
            try await ring.close()
            (null, copy) = (samples[0], samples[1])
        } else {
            let samples = try await OSThread.run(name: "ioatctl-qd1") { () throws -> [[Double]] in
                let raw = try RawSocketClient(path: path, bound: bound)
                return try [raw.roundTrips(.null(), keep: qd1),
                            raw.roundTrips(.copy(from: raw.address(0), to: raw.address(4096), length: 64), keep: qd1)]
            }
            (null, copy) = (samples[0], samples[1])
        }
        return QD1(ops: qd1, nullUs: Self.percentiles(null), copy64Us: Self.percentiles(copy), barePingPongUs: try Self.barePingPong(count: qd1))
    }

    static func percentiles(_ values: [Double]) -> Percentiles {
        let sorted = values.sorted()
        func at(_ p: Double) -> Double { sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
        return Percentiles(p50: at(0.5), p99: at(0.99), max: sorted.last ?? 0)
    }

    /// 64-byte round trips over a SOCK_SEQPACKET socketpair between this thread and an echo thread, both
    /// polling (MSG_DONTWAIT): what one socket round trip costs on this machine, with no server at all.
    static func barePingPong(count: Int) throws -> Percentiles {
        let (a, b) = try UnixSocket.pair()
        // The echo thread answers until a 1-byte message says stop.
        let echo = OSThread(name: "ioatctl-echo") {
            var buffer = [UInt8](repeating: 0, count: 64)
            while true {
                var n = -1
                while n < 0 { n = buffer.withUnsafeMutableBytes { recv(b.rawValue, $0.baseAddress, 64, Int32(MSG_DONTWAIT)) } }
                if n <= 1 { return }
                _ = buffer.withUnsafeBytes { send(b.rawValue, $0.baseAddress, n, 0) }
            }
        }
        var message = [UInt8](repeating: 7, count: 64)
        var samples: [Double] = []
        samples.reserveCapacity(count)
        // Warmed up as the QD1 figures are, so the ratio compares like with like.
        var warmUp = WarmUp(samples: count)
        while samples.count < count {
            let start = now()
            _ = message.withUnsafeBytes { send(a.rawValue, $0.baseAddress, 64, 0) }
            var n = -1
            while n < 0 { n = message.withUnsafeMutableBytes { recv(a.rawValue, $0.baseAddress, 64, Int32(MSG_DONTWAIT)) } }
            if warmUp.keeps(start) { samples.append((now() - start) * 1e6) }
        }
        _ = message.withUnsafeBytes { send(a.rawValue, $0.baseAddress, 1, 0) }
        echo.join()
        return percentiles(samples)
    }

    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    static func pad(_ s: String, _ width: Int, right: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, width - s.count))
        return right ? fill + s : s + fill
    }

    static func label(_ size: Int) -> String {
        size >= 1 << 20 && size % (1 << 20) == 0 ? "\(size >> 20)M" : size >= 1 << 10 && size % (1 << 10) == 0 ? "\(size >> 10)K" : "\(size)"
    }

    /// GB/s of the same kernel run in this process on the same buffers.
    func measureBaseline(op: String, size: Int, src: IOATBuffer, dst: IOATBuffer) -> Double {
        let s = src.unsafeBytes(0..<size).baseAddress!
        let d = dst.unsafeBytes(0..<size).baseAddress!
        var sink: UInt32 = 0
        let body: () -> Void
        switch op {
        case "copy": body = { memmove(d, s, size) }
        case "fill": body = { Kernels.fill(d, length: size, pattern: 0x0123_4567_89AB_CDEF) }
        default: body = { sink ^= CRC32C.update(seed: 0, s, length: size) }
        }
        body()  // warm up
        var count = 0
        let start = now()
        var elapsed = 0.0
        repeat {
            body()
            count += 1
            elapsed = now() - start
        } while elapsed < slice
        if sink == 0xFFFF_FFFF { print("") }  // keep the CRC from being optimised away
        return Double(count) * Double(size) / elapsed / 1e9
    }

    /// GB/s through the server with `depth` ops kept in flight: over a ring through `IOATRing` on one
    /// polling thread (as the small-op line), so the figure is the server's and the ring's, not the cost
    /// of a callback per op in the client; over the socket through `IOATQueue`'s callbacks.
    func measureServer(op: String, size: Int, client: IOATClient, queue: IOATQueue, src: IOATBuffer, dst: IOATBuffer) async throws -> Double {
        let descriptor: Descriptor
        switch op {
        case "copy": descriptor = .copy(from: src.address(), to: dst.address(), length: UInt64(size))
        case "fill": descriptor = .fill(dst.address(), length: UInt64(size), pattern: 0x0123_4567_89AB_CDEF)
        default: descriptor = .crc32c(of: src.address(), length: UInt64(size))
        }
        let slice = self.slice, depth = self.depth
        if queue.isRing {
            let ring = try await client.openRing(channel: queue.channel, depth: depth)
            let (ops, elapsed) = try await OSThread.run(name: "ioatctl-ring") { () throws -> (Int, Double) in
                _ = try Self.pumpRing(ring, batch: [descriptor], inFlight: 1, seconds: 0.001)  // warm up
                return try Self.pumpRing(ring, batch: [descriptor], inFlight: depth, seconds: slice)
            }
            try await ring.close()
            return Double(ops) * Double(size) / elapsed / 1e9
        }
        _ = try await queue.submit(descriptor)  // warm up
        let (ops, elapsed) = try await Pump.run(queue: queue, batch: [descriptor], inFlight: depth, seconds: slice)
        return Double(ops) * Double(size) / elapsed / 1e9
    }

    /// 64-byte copies in batches, four batches in flight, for `seconds`: over a ring through `IOATRing`
    /// on one polling thread, over the socket through `IOATQueue`'s callbacks. CPU per op is the time this
    /// process and the server spent on a CPU (every thread, /proc/PID/task/*/schedstat) over the ops done.
    func measureSmallOps(client: IOATClient, queue: IOATQueue, src: IOATBuffer, dst: IOATBuffer) async throws -> SmallOps {
        let size = 64
        let batch = (0..<smallBatch).map { i in
            Descriptor.copy(from: src.address(i * 128), to: dst.address(i * 128), length: UInt64(size))
        }
        // Baseline: the same 64-byte copies in a loop in this process (options read once: an option's
        // getter per batch showed in the profile of the baseline).
        let s = src.unsafeBytes(0..<smallBatch * 128).baseAddress!
        let d = dst.unsafeBytes(0..<smallBatch * 128).baseAddress!
        let smallBatch = self.smallBatch, seconds = self.seconds
        var count = 0
        let baseStart = now()
        var elapsed = 0.0
        repeat {
            for i in 0..<smallBatch { memmove(d + i * 128, s + i * 128, size) }
            count += smallBatch
            elapsed = now() - baseStart
        } while elapsed < seconds
        let baseline = Double(count) / elapsed

        let inFlight = 4
        let serverPID = Int32(try await client.status().server.pid)
        var ring: IOATRing? = nil
        if queue.isRing { ring = try await client.openRing(channel: queue.channel, depth: smallBatch * inFlight) }
        let before = client.packetCounts
        var ops = 0
        var servedSeconds = 0.0
        var rates: [Double] = []
        var bares: [Double] = []
        // The bare ring only where ioatd's own figure is a ring's: the socket transport's limit is another.
        // It alternates with ioatd round by round and the ratio is the median of the rounds' ratios: on
        // this kind of VM the bare ring's figure moves fivefold with where the host puts the two vCPUs
        // (a cache line passed between them is the whole of its cost), ioatd's much less.
        let withBare = ring != nil && smallBatch * inFlight <= BareRing.entries
        let windows = withBare ? max(1, rounds) : 1
        var cpu = (client: UInt64(0), server: UInt64(0))
        for _ in 0..<windows {
            let cpuBefore = (CPUTime.ownProcess(), CPUTime.process(serverPID))
            let window: (Int, Double)
            if let ring {
                window = try await OSThread.run(name: "ioatctl-small") { () throws -> (Int, Double) in
                    try Self.pumpRing(ring, batch: batch, inFlight: inFlight, seconds: seconds / Double(windows))
                }
            } else {
                window = try await Pump.run(queue: queue, batch: batch, inFlight: inFlight, seconds: seconds)
            }
            let cpuAfter = (CPUTime.ownProcess(), CPUTime.process(serverPID))
            cpu.client += cpuAfter.0 - cpuBefore.0
            cpu.server += cpuAfter.1 - cpuBefore.1
            ops += window.0
            servedSeconds += window.1
            rates.append(Double(window.0) / window.1)
            if withBare {
                bares.append(try await OSThread.run(name: "ioatctl-bare") { () throws -> Double in
                    try BareRing.measure(batch: smallBatch, inFlight: inFlight, seconds: seconds / Double(windows))
                })
            }
        }
        let after = client.packetCounts
        if let ring { try await ring.close() }
        let served = Self.median(rates)
        let packets = Double(after.sent - before.sent + after.received - before.received)
        let clientCPU = Double(cpu.client) / 1000 / Double(max(1, ops))
        let serverCPU = Double(cpu.server) / 1000 / Double(max(1, ops))
        let bareRatios = zip(rates, bares).map { $0 / $1 }
        return SmallOps(size: size, batch: smallBatch, batchesInFlight: inFlight, baselineOpsPerSecond: baseline,
                        opsPerS: served, ratio: served / baseline, packetsPerOp: packets / Double(max(1, ops)),
                        cpuUsPerOp: clientCPU + serverCPU, clientCpuUsPerOp: clientCPU, serverCpuUsPerOp: serverCPU,
                        bareRingOpsPerS: withBare ? Self.median(bares) : nil, bareRingRatio: withBare ? Self.median(bareRatios) : nil,
                        bareRingRatioMin: bareRatios.min(), bareRingRatioMax: bareRatios.max())
    }

    /// Keeps `inFlight` batches in a ring for `seconds` from this thread: pushes a batch whenever one
    /// completes, and polls for records (then sleeps on the doorbell, if they are slow).
    static func pumpRing(_ ring: IOATRing, batch: [Descriptor], inFlight: Int, seconds: Double) throws -> (Int, Double) {
        let start = now()
        var ops = 0
        var outstanding = 0
        var failure: CompletionStatus? = nil
        while true {
            let running = now() - start < seconds
            while running && outstanding + batch.count <= batch.count * inFlight && ring.space >= batch.count {
                for d in batch { _ = ring.push(d) }
                outstanding += batch.count
                try ring.submit()
            }
            if outstanding == 0 { break }
            try ring.wait(for: 1, spinMicroseconds: 1000)
            let n = ring.reap { r in if r.status != .success { failure = r.status } }
            ops += n
            outstanding -= n
            if let failure { throw CLIError("a 64-byte copy completed with \(failure)") }
        }
        return (ops, now() - start)
    }
}

/// CPU time of a process, in nanoseconds.
enum CPUTime {
    /// This process, threads that ended included (getrusage).
    static func ownProcess() -> UInt64 {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func ns(_ t: timeval) -> UInt64 { UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_usec) * 1000 }
        return ns(usage.ru_utime) + ns(usage.ru_stime)
    }

    /// Every living thread of another process (/proc/PID/task/*/schedstat, first field).
    static func process(_ pid: Int32) -> UInt64 {
        guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else { return 0 }
        var total: UInt64 = 0
        for task in tasks {
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/schedstat", encoding: .utf8),
                let first = text.split(separator: " ").first, let ns = UInt64(first)
            else { continue }
            total += ns
        }
        return total
    }
}

/// A client of ioatd written against SPEC.md with nothing but the socket: HELLO (no rings), an ALLOC and
/// an OPEN, then SUBMIT and COMPLETION one op at a time, polling. What a C client does; the socket
/// transport's QD1 figure without the Swift client's threads.
final class RawSocketClient {
    private let fd: FileDescriptor
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 65537, alignment: 16)
    private var handle: UInt32 = 0
    private var queue: UInt32 = 0
    private var version: UInt16 = 1
    private var nextID: UInt64 = 1

    init(path: String, bound: Double) throws {
        self.bound = bound
        fd = try UnixSocket.connect(path: path)
        guard case .helloReply(let hello) = try exchange(.hello(Hello())) else { throw CLIError("raw client: no HELLO_OK") }
        version = hello.version
        guard case .allocReply(let b) = try exchange(.alloc(Alloc(size: 8192, pages: .normal))) else { throw CLIError("raw client: no ALLOC_OK") }
        handle = b.handle
        guard case .openReply(let o) = try exchange(.open(channel: Wire.anyChannel, depth: 4)) else { throw CLIError("raw client: no OPEN_OK") }
        queue = o.queue
        try fd.setNonBlocking(true)
    }

    deinit { buffer.deallocate() }

    func address(_ offset: UInt64) -> BufferAddress { BufferAddress(handle: handle, offset: offset) }

    /// How long the raw client waits for any answer before it gives up (the client's call bound; a day
    /// when there is none, since a benchmark must end).
    private let bound: Double

    private func exchange(_ message: Message) throws -> Message {
        try UnixSocket.send(fd, message.encode(requestID: nextID, version: version))
        nextID += 1
        guard try Poll.wait([(fd, .readable)], timeoutMilliseconds: Int32(bound * 1000)).first?.isEmpty == false else {
            throw CLIError("raw client: no answer to \(message.type.name) within \(bound) s; the server's log says why: journalctl -u ioatd")
        }
        let packet = try UnixSocket.receive(fd, into: buffer)
        return try Message.decode(UnsafeRawBufferPointer(rebasing: buffer[0..<packet.count]), version: version).1
    }

    /// `keep` timed round trips of `descriptor` (with INT_EN), after a `WarmUp`; in µs.
    func roundTrips(_ descriptor: Descriptor, keep: Int) throws -> [Double] {
        var d = descriptor
        d.flags.insert(.interrupt)
        let packet = Message.encodeSubmit(queue: queue, descriptors: [d], requestID: 0, version: version)
        var samples: [Double] = []
        samples.reserveCapacity(keep)
        var warmUp = WarmUp(samples: keep)
        while samples.count < keep {
            let start = now()
            try UnixSocket.send(fd, packet)
            while true {
                let n = recv(fd.rawValue, buffer.baseAddress, buffer.count, Int32(MSG_DONTWAIT))
                if n > 0 {
                    guard case .completion(let view) = try Message.decode(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), version: version).1,
                        try view.record(at: 0).status == .success
                    else { throw CLIError("raw client: the op did not complete with SUCCESS") }
                    break
                }
                if n == 0 || (errno != EAGAIN && errno != EINTR) { throw CLIError("raw client: the connection failed") }
                if now() - start > bound {
                    throw CLIError("raw client: no COMPLETION within \(bound) s; the server's log says why: journalctl -u ioatd")
                }
            }
            if warmUp.keeps(start) { samples.append((now() - start) * 1e6) }
        }
        return samples
    }
}

/// Round trips before timed samples are kept: at least a tenth as many as will be kept, and at least
/// 50 ms. On this 2-core VM the first few milliseconds after a client thread starts can run at 8 µs a
/// round trip instead of 1.5 µs (the client and the event loop, both polling, on one CPU until Linux's
/// load balancer moves one; pinned to different CPUs they never are), and a 2,000-op sample is 3 ms long.
struct WarmUp {
    static let seconds = 0.05
    private var left: Int
    private let until = now() + WarmUp.seconds

    init(samples: Int) { left = samples / 10 }

    /// Whether the round trip that started at `start` is timed (else it is one more warm-up round).
    mutating func keeps(_ start: Double) -> Bool {
        if left <= 0 && start >= until { return true }
        left -= 1
        return false
    }
}

/// Keeps `inFlight` batches in flight for `seconds`: each completion callback (on the client's reader
/// thread) checks the records and submits the batch again, so no task hop sits between an op finishing
/// and the next one being sent.
final class Pump: @unchecked Sendable {
    private let queue: IOATQueue
    private let batch: [Descriptor]
    private let deadline: Double
    private let lock = NSLock()
    private var ops = 0
    private var running: Int
    private var failure: Error?
    private var finished: CheckedContinuation<Void, Never>?

    private init(queue: IOATQueue, batch: [Descriptor], inFlight: Int, deadline: Double) {
        self.queue = queue
        self.batch = batch
        self.deadline = deadline
        running = inFlight
    }

    static func run(queue: IOATQueue, batch: [Descriptor], inFlight: Int, seconds: Double) async throws -> (ops: Int, elapsed: Double) {
        let start = now()
        let pump = Pump(queue: queue, batch: batch, inFlight: inFlight, deadline: start + seconds)
        await withCheckedContinuation { c in
            pump.finished = c
            for _ in 0..<inFlight { pump.next() }
        }
        if let failure = pump.failure { throw failure }
        return (pump.ops, now() - start)
    }

    private func next() {
        queue.submit(batch) { [self] result in
            lock.lock()
            switch result {
            case .success(let records) where records.allSatisfy({ $0.status == .success }):
                ops += records.count
            case .success(let records):
                failure = CLIError("an op completed with \(records.first { $0.status != .success }!.status)")
            case .failure(let error):
                failure = error
            }
            let again = failure == nil && now() < deadline
            if !again { running -= 1 }
            let done = running == 0 ? finished : nil
            lock.unlock()
            if again { next() } else { done?.resume() }
        }
    }
}
