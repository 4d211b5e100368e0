import Foundation
import Glibc
import IOATConformance
import IOATProtocol
import Testing

@Suite("ioatctl against a running server")
struct ToolTests {
    @Test("ioatctl test passes and prints its counts")
    func selfTest() throws {
        let server = try TestServer()
        let (status, out) = try runTool("ioatctl", ["test", "--socket", server.path, "--iterations", "50"])
        #expect(status == 0, "\(out)")
        // Both transports, each whole: the default is --transport both.
        #expect(out.components(separatedBy: " passed, 0 failed").count == 3, "\(out)")
        #expect(out.contains("transport ring") && out.contains("transport socket"))
    }

    @Test("ioatctl crc32c prints the CRC of each file, honouring IOATD_SOCKET")
    func crc() throws {
        let server = try TestServer()
        let dir = "/tmp/ioatd-crc-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var rng = SplitMix64(seed: 1)
        let big = (0..<(9 << 20) + 123).map { _ in UInt8(truncatingIfNeeded: rng.next()) }  // spans several server chunks
        let files: [(String, [UInt8])] = [("digits", Array("123456789".utf8)), ("empty", []), ("big", big)]
        for (name, bytes) in files { _ = FileManager.default.createFile(atPath: "\(dir)/\(name)", contents: Data(bytes)) }
        var env = ProcessInfo.processInfo.environment
        env["IOATD_SOCKET"] = server.path
        let (status, out) = try runTool("ioatctl", ["crc32c"] + files.map { "\(dir)/\($0.0)" }, environment: env)
        #expect(status == 0)
        let expected = files.map { name, bytes in
            let c = String(ReferenceCRC32C.checksum(bytes), radix: 16)
            return String(repeating: "0", count: 8 - c.count) + c + "  \(dir)/\(name)"
        }
        #expect(out.split(separator: "\n").map(String.init) == expected)
        #expect(expected[0].hasPrefix("e3069283"))
    }

    @Test("ioatctl status --json is a STATUS document; plain status is readable")
    func status() throws {
        let server = try TestServer(arguments: ["--channels", "2"])
        let (status, out) = try runTool("ioatctl", ["status", "--json", "--socket", server.path])
        #expect(status == 0)
        let doc = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
        #expect((doc?["channels"] as? [Any])?.count == 2)
        #expect((doc?["server"] as? [String: Any])?["engine"] as? String == "cpu")
        let (plainStatus, plain) = try runTool("ioatctl", ["status", "--socket", server.path])
        #expect(plainStatus == 0)
        #expect(plain.contains("engine cpu"))
    }

    @Test("ioatctl refuses a timeout option out of range, naming it", arguments: ["--connect-timeout", "--call-timeout"])
    func timeoutOptionRefused(_ option: String) throws {
        for bad in ["-1", "90000"] {
            let (status, out) = try runTool("ioatctl", ["status", "--socket", "/nonexistent/ioatd.sock", "\(option)=\(bad)"], mergingErrors: true)
            #expect(status == 64 && out.contains(option) && out.contains(bad), "\(option) \(bad): \(status) \(out)")
        }
    }

    /// Every figure bench prints must fit the buffers it made: a single size smaller than the QD1 and
    /// small-op figures' own ranges once failed with REFUSED_OUT_OF_RANGE (issue 19).
    @Test("ioatctl bench with a single small size runs every figure", arguments: [["--sizes", "4K"], ["--sizes", "64", "--small-batch", "1"]])
    func benchSmallestSize(_ sizes: [String]) throws {
        let server = try TestServer()
        for transport in ["ring", "socket"] {
            let (status, out) = try runTool("ioatctl", ["bench", "--socket", server.path, "--transport", transport, "--ops", "copy",
                                                        "--seconds", "0.02", "--json"] + sizes)
            #expect(status == 0, "\(transport) \(sizes): \(out)")
            let reports = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]] ?? []
            #expect(reports.count == 1 && (reports.first?["rows"] as? [[String: Any]])?.count == 1, "\(out)")
            #expect(((reports.first?["qd1"] as? [String: Any])?["copy64_us"] as? [String: Any])?["p50"] as? Double ?? 0 > 0, "\(out)")
        }
    }

    @Test("ioatctl bench reports a baseline, the server's figure and their ratio (never asserted)")
    func bench() throws {
        let server = try TestServer()
        let (status, out) = try runTool("ioatctl", ["bench", "--socket", server.path, "--sizes", "4K,64K", "--seconds", "0.05",
                                                    "--small-batch", "8", "--json"])
        #expect(status == 0, "\(out)")
        // One report per transport (--transport both is the default), each with every figure.
        let reports = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [[String: Any]] ?? []
        #expect(reports.map { $0["transport"] as? String } == ["ring", "socket"])
        for doc in reports {
            let rows = doc["rows"] as? [[String: Any]] ?? []
            #expect(rows.count == 6)
            #expect(rows.allSatisfy { ($0["baseline_g_bps"] as? Double ?? 0) > 0 && ($0["ioatd_g_bps"] as? Double ?? 0) > 0 })
            let small = doc["small"] as? [String: Any]
            #expect((small?["ops_per_s"] as? Double ?? 0) > 0 && (small?["cpu_us_per_op"] as? Double ?? 0) > 0)
            let qd1 = (doc["qd1"] as? [String: Any])?["null_us"] as? [String: Any]
            #expect((qd1?["p50"] as? Double ?? 0) > 0 && (qd1?["p99"] as? Double ?? 0) >= (qd1?["p50"] as? Double ?? 0))
        }
        // The design's limit beside the ring's small-op figure (issue 20), and only there.
        let bare = reports.map { ($0["small"] as? [String: Any])?["bare_ring_ops_per_s"] as? Double }
        #expect((bare.first ?? nil) ?? 0 > 0 && bare.count == 2 && bare[1] == nil, "\(bare)")
        let bareRatio = (reports.first?["small"] as? [String: Any])?["bare_ring_ratio"] as? Double ?? 0
        #expect(bareRatio > 0, "bare_ring_ratio \(bareRatio)")
        // Over the ring the small ops send no packets; over the socket fewer than one per op.
        let packets = reports.map { (($0["small"] as? [String: Any])?["packets_per_op"] as? Double) ?? 9 }
        #expect(packets.count == 2 && packets[0] == 0 && packets[1] < 1, "\(packets)")
    }

    @Test("ioatctl fails clearly when no server listens")
    func noServer() throws {
        let (status, _) = try runTool("ioatctl", ["status", "--socket", "/tmp/ioatd-nobody-\(getpid()).sock"])
        #expect(status != 0)
    }
}

@Suite("C header")
struct HeaderTests {
    @Test("protocol/ioatd.h compiles with its static asserts and encodes like the Swift codec")
    func header() throws {
        let dir = "/tmp/ioatd-header-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let source = """
            #include <stdio.h>
            #include <string.h>
            #include "ioatd.h"
            int main(void) {
                unsigned char buf[24 + 8 + 64];
                struct ioatd_header h = { IOATD_MAGIC, IOATD_VERSION, IOATD_MSG_SUBMIT, sizeof buf, 0, 77 };
                struct ioatd_submit s = { 3, 1 };
                struct ioatd_desc d = { IOATD_OP_COPY, 0, IOATD_F_INT_EN | IOATD_F_FENCE, 5, 0x1122334455667788ull, 4096, 64, 6, 0, 128, 0, 0 };
                memcpy(buf, &h, 24); memcpy(buf + 24, &s, 8); memcpy(buf + 32, &d, 64);
                for (size_t i = 0; i < sizeof buf; i++) printf("%02x", buf[i]);
                printf("\\n");
                return 0;
            }
            """
        try source.write(toFile: "\(dir)/t.c", atomically: true, encoding: .utf8)
        let include = repositoryRoot.appendingPathComponent("protocol").path
        let (cc, ccOut) = try runTool("/usr/bin/cc", ["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", include, "\(dir)/t.c", "-o", "\(dir)/t"])
        #expect(cc == 0, "\(ccOut)")
        // The ring fast path compiles as strictly, and attaches only to memory laid out as SPEC.md §5.10.1 says.
        let ring = """
            #include <stdio.h>
            #include <stdlib.h>
            #include <string.h>
            #include "ioatd_ring.h"
            int main(void) {
                size_t size = 512 + 8 * 64 + 8 * 32;
                unsigned char *m = aligned_alloc(4096, 4096);
                memset(m, 0, 4096);
                struct ioatd_ring_header h = { IOATD_RING_MAGIC, IOATD_RING_LAYOUT, 128, 5, 8, 8, 8, size,
                    { 128, 192, 132, 512, 320, 256, 324, 328, 512 + 8 * 64, 260, { 0 } }, { 0 } };
                memcpy(m, &h, sizeof h);
                struct ioatd_ring r;
                if (ioatd_ring_attach(&r, m, size, -1) != 0) return 1;
                if (ioatd_ring_sq_space(&r) != 8 || ioatd_ring_ready(&r) != 0) return 2;
                struct ioatd_desc *d = ioatd_ring_get_desc(&r);
                if (d == NULL || (unsigned char *)d != m + 512) return 3;
                h.magic = 0; memcpy(m, &h, sizeof h);
                if (ioatd_ring_attach(&r, m, size, -1) != -EINVAL) return 4;
                printf("ok\\n");
                return 0;
            }
            """
        try ring.write(toFile: "\(dir)/r.c", atomically: true, encoding: .utf8)
        let (rcc, rccOut) = try runTool("/usr/bin/cc", ["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", include, "\(dir)/r.c", "-o", "\(dir)/r"])
        #expect(rcc == 0, "\(rccOut)")
        let (rrun, rout) = try runTool("\(dir)/r", [])
        #expect(rrun == 0 && rout.contains("ok"), "ioatd_ring.h: exit \(rrun) \(rout)")
        let (run, hex) = try runTool("\(dir)/t", [])
        #expect(run == 0)
        let swift = Message.encodeSubmit(queue: 3, descriptors: [
            .copy(from: .init(handle: 5, offset: 64), to: .init(handle: 6, offset: 128), length: 4096, flags: [.interrupt, .fence],
                  cookie: 0x1122_3344_5566_7788),
        ], requestID: 77)
        #expect(hex.trimmingCharacters(in: .whitespacesAndNewlines) == swift.map { String(format: "%02x", $0) }.joined())
    }
}

@Suite("a client in another language")
struct OtherLanguageTests {
    @Test("protocol/examples/crc32c_client.py, written from SPEC.md alone, gets the right CRC through SCM_RIGHTS", .enabled(if: isExecutable("/usr/bin/python3"), "needs python3"))
    func pythonClient() throws {
        let server = try TestServer()
        let file = "/tmp/ioatd-py-\(getpid())"
        var rng = SplitMix64(seed: 77)
        let bytes = (0..<(3 << 20) + 5).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        _ = FileManager.default.createFile(atPath: file, contents: Data(bytes))
        defer { unlink(file) }
        let script = repositoryRoot.appendingPathComponent("protocol/examples/crc32c_client.py").path
        let (status, out) = try runTool("/usr/bin/python3", [script, server.path, file])
        #expect(status == 0)
        let c = String(ReferenceCRC32C.checksum(bytes), radix: 16)
        #expect(out == String(repeating: "0", count: 8 - c.count) + c + "  \(file)\n")
    }
}
