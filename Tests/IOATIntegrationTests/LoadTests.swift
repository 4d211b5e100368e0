import Foundation
import Glibc
import Testing

/// Resident set of a process in bytes (VmRSS), or 0.
func residentBytes(of pid: Int32) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
          let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    else { return 0 }
    return kib << 10
}

@Suite("Load: many client processes, some killed mid-flight", .serialized)
struct LoadTests {
    /// Runs `count` `ioatctl stress` clients of `ops` ops each against `server`, killing those whose index
    /// is in `victims` once each has verified its first batch (it prints "stress: running"), so each is
    /// surely mid-flight; returns the survivors' exit statuses and outputs.
    func run(_ server: TestServer, count: Int, ops: Int, victims: Set<Int> = []) throws
        -> [(index: Int, status: Int32, output: String)]
    {
        let dir = temporarySocketPath() + ".out"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let tool = buildDirectory.appendingPathComponent("ioatctl").path
        // Victims are given far more ops than they can finish, so they are surely mid-flight when killed.
        let clients = try (0..<count).map { i in
            try SpawnedProcess(tool, ["stress", "--socket", server.path, "--ops", "\(victims.contains(i) ? 10_000_000 : ops)",
                                      "--seed", "\(1000 + i)"],
                               output: "\(dir)/\(i)")
        }
        for i in victims {
            let started = waitUntil(timeout: 120) {
                ((try? String(contentsOfFile: "\(dir)/\(i)", encoding: .utf8)) ?? "").contains("stress: running")
            }
            #expect(started, "victim \(i) never verified its first batch")
            kill(clients[i].pid, SIGKILL)
        }
        var results: [(Int, Int32, String)] = []
        for (i, client) in clients.enumerated() {
            let status = client.wait(timeout: 240) ?? -999
            if victims.contains(i) {
                #expect(status == -SIGKILL, "victim \(i) was killed, not finished")
            } else {
                results.append((i, status, (try? String(contentsOfFile: "\(dir)/\(i)", encoding: .utf8)) ?? ""))
            }
        }
        return results
    }

    @Test("32 clients of thousands of verified ops, 8 killed mid-flight: the rest are right and the server returns to its fd and memory baseline")
    func loadAndKill() throws {
        let server = try TestServer(arguments: ["--log-level", "warning"])
        // Baseline after a warm-up round, so first-use allocations of the server are in it.
        for result in try run(server, count: 4, ops: 500) { #expect(result.status == 0, "warm-up client \(result.index): \(result.output)") }
        let baselineFDs = server.settledFDs()
        let baselineRSS = residentBytes(of: server.pid)

        let victims: Set<Int> = [3, 7, 11, 15, 19, 23, 27, 31]
        let results = try run(server, count: 32, ops: 3000, victims: victims)
        #expect(results.count == 24)
        for result in results {
            #expect(result.status == 0, "client \(result.index): \(result.output)")
            #expect(result.output.contains("stress: 3000 ops verified"), "client \(result.index): \(result.output)")
        }
        #expect(kill(server.pid, 0) == 0, "the server survived")

        // Everything the clients held is gone once the engine has finished with it.
        #expect(server.settledFDs() == baselineFDs)
        var rss = residentBytes(of: server.pid)
        for _ in 0..<100 where rss > baselineRSS + (16 << 20) {
            usleep(50_000)
            rss = residentBytes(of: server.pid)
        }
        #expect(rss <= baselineRSS + (16 << 20), "RSS \(rss >> 10) KiB against a baseline of \(baselineRSS >> 10) KiB")
        // And the server still serves.
        for result in try run(server, count: 2, ops: 200) { #expect(result.status == 0, "\(result.output)") }
    }
}
