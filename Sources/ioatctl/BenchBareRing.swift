import ArgumentParser
import CIOATRing
import Foundation
import Glibc
import IOATSystem

/// The design's own limit, measured in the same run as the server (issue 20): two processes sharing a
/// bare single-producer single-consumer ring of 64-byte descriptors and 32-byte records, doing the same
/// 64-byte copies as the small-op figure, with nothing else: no validation, tenancy, scheduling or
/// sleeping (both sides spin), on two CPUs. As in ioatd, the client publishes a batch at once and the
/// peer publishes the records of each run it took at once. What ioatd does on top of this is what its
/// ratio to it measures.
///
/// The memory is a memfd this process makes; the peer (`ioatctl bare-ring-peer`, a second process)
/// opens it through /proc. Layout: each index on a cache line of its own (the client's `sq_tail` and
/// `cq_head`, the peer's `sq_head` and `cq_tail`), then a stop word and a ready word, the submission and
/// completion rings, and the data the copies read and write.
enum BareRing {
    static let entries = 256
    static let sqTail = 0, sqHead = 64, cqTail = 128, cqHead = 192, stop = 256, ready = 320
    static let submissions = 512
    static let completions = submissions + entries * 64
    static let data = completions + entries * 32
    /// Each copy's source and destination slots, 128 bytes apart as in the small-op figure.
    static let stride = 128

    static func size(batch: Int) -> Int { data + batch * stride * 2 }

    /// Runs `inFlight` batches of `batch` 64-byte copies through the ring for `seconds`: ops per second.
    static func measure(batch: Int, inFlight: Int, seconds: Double) throws -> Double {
        guard batch * inFlight <= entries else { throw CLIError("bare ring: \(batch * inFlight) ops in flight do not fit \(entries) entries") }
        let fd = try Memfd.create(name: "ioatctl-bare-ring", size: UInt64(size(batch: batch)), hugepages: false)
        let mapping = try Mapping(fd: fd, length: size(batch: batch), writable: true, populate: true)
        let base = mapping.unsafeBase
        memset(base, 0, size(batch: batch))
        // The limit is two processes on two CPUs: with both spinning on one CPU it is a tenth of it.
        let cpus = Affinity.current()
        let me = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let peer = try SpawnedPeer(me, ["bare-ring-peer", "--memory", "/proc/\(getpid())/fd/\(fd.rawValue)", "--batch", "\(batch)"]
                                   + (cpus.count >= 2 ? ["--cpu", "\(cpus[1])"] : []))
        defer {
            ioatd_store_release(word(base, stop), 1)
            peer.wait()
        }
        // Wait for the condition (the peer says it is ready), bounded.
        let deadline = now() + 10
        while ioatd_load_acquire(word(base, ready)) == 0 {
            guard now() < deadline, peer.isRunning else { throw CLIError("bare ring: the peer process did not start") }
            sched_yield()
        }
        for i in 0..<batch * 2 { (base + data + i * stride).initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: i), count: 64) }
        if cpus.count >= 2 { try? Affinity.pinCurrentThread(to: [cpus[0]]) }
        defer { try? Affinity.pinCurrentThread(to: cpus) }
        var tail: UInt32 = 0, head: UInt32 = 0
        // 50 ms of warm-up, then three windows; the median window is the figure.
        var rates: [Double] = []
        for window in 0..<4 {
            var ops = 0
            let start = now()
            let length = window == 0 ? 0.05 : seconds / 3
            var elapsed = 0.0
            repeat {
                // Keep `inFlight` batches in the ring.
                while tail &- head + UInt32(batch) <= UInt32(batch * inFlight) {
                    for i in 0..<batch {
                        let d = base + submissions + Int(tail & UInt32(entries - 1)) * 64
                        d.storeBytes(of: UInt64(data + i * stride), toByteOffset: 0, as: UInt64.self)
                        d.storeBytes(of: UInt64(data + (batch + i) * stride), toByteOffset: 8, as: UInt64.self)
                        d.storeBytes(of: UInt64(64), toByteOffset: 16, as: UInt64.self)
                        d.storeBytes(of: UInt64(tail), toByteOffset: 24, as: UInt64.self)
                        tail &+= 1
                    }
                    ioatd_store_release(word(base, sqTail), tail)
                }
                let done = ioatd_load_acquire(word(base, cqTail))
                while head != done {
                    let r = base + completions + Int(head & UInt32(entries - 1)) * 32
                    guard r.load(fromByteOffset: 0, as: UInt64.self) == UInt64(head) else {
                        throw CLIError("bare ring: record \(head) names op \(r.load(fromByteOffset: 0, as: UInt64.self))")
                    }
                    head &+= 1
                    ops += 1
                }
                ioatd_store_release(word(base, cqHead), head)
                elapsed = now() - start
                // A window ends once its time is up and a record came back: on a crowded machine a
                // window of a few milliseconds can pass before the peer runs at all, and a rate of 0
                // is no figure (the ratio to it was infinite). Bounded: a peer that never answers fails.
                if ops == 0 && elapsed > 10 { throw CLIError("bare ring: the peer process took no descriptor in 10 s") }
            } while elapsed < length || ops == 0
            if window > 0 { rates.append(Double(ops) / elapsed) }
        }
        guard memcmp(base + data, base + data + batch * stride, batch * stride) == 0 else {
            throw CLIError("bare ring: the copies' bytes differ from their sources")
        }
        return rates.sorted()[1]
    }

    /// The peer's loop: takes each descriptor, copies, writes its record, until told to stop.
    static func serve(path: String, batch: Int) throws {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw CLIError("bare-ring-peer: cannot open \(path): \(String(cString: strerror(errno)))") }
        let owned = FileDescriptor(owning: fd)
        let mapping = try Mapping(fd: owned, length: size(batch: batch), writable: true, populate: true)
        let base = mapping.unsafeBase
        ioatd_store_release(word(base, ready), 1)
        var head: UInt32 = 0, cqTail: UInt32 = 0, looks = 0
        while ioatd_load_acquire(word(base, stop)) == 0 {
            let tail = ioatd_load_acquire(word(base, sqTail))
            if tail == head {
                looks += 1
                if looks & 0xFFFF == 0 { sched_yield() }  // so a stop is seen on a busy machine
                continue
            }
            while head != tail && cqTail &- ioatd_load_acquire(word(base, cqHead)) < UInt32(entries) {
                let d = base + submissions + Int(head & UInt32(entries - 1)) * 64
                let src = Int(d.load(fromByteOffset: 0, as: UInt64.self)), dst = Int(d.load(fromByteOffset: 8, as: UInt64.self))
                let length = Int(d.load(fromByteOffset: 16, as: UInt64.self)), cookie = d.load(fromByteOffset: 24, as: UInt64.self)
                memcpy(base + dst, base + src, length)
                let r = base + completions + Int(cqTail & UInt32(entries - 1)) * 32
                r.storeBytes(of: cookie, toByteOffset: 0, as: UInt64.self)
                r.storeBytes(of: UInt64(0), toByteOffset: 8, as: UInt64.self)
                head &+= 1
                cqTail &+= 1
            }
            // The run's records at once, as ioatd's router publishes a run of one queue's finished ops.
            ioatd_store_release(word(base, sqHead), head)
            ioatd_store_release(word(base, BareRing.cqTail), cqTail)
        }
    }

    private static func word(_ base: UnsafeMutableRawPointer, _ offset: Int) -> UnsafeMutablePointer<UInt32> {
        (base + offset).assumingMemoryBound(to: UInt32.self)
    }
}

/// A child process of this program, reaped by this object.
private final class SpawnedPeer {
    let pid: pid_t
    private var status: Int32? = nil

    init(_ path: String, _ arguments: [String]) throws {
        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, nil, nil, argv, environ)
        guard rc == 0 else { throw CLIError("bare ring: cannot start \(path): \(String(cString: strerror(rc)))") }
        self.pid = pid
    }

    var isRunning: Bool {
        if status != nil { return false }
        var raw: Int32 = 0
        if waitpid(pid, &raw, WNOHANG) == pid { status = raw }
        return status == nil
    }

    func wait() {
        guard status == nil else { return }
        var raw: Int32 = 0
        while waitpid(pid, &raw, 0) == -1 && errno == EINTR {}
        status = raw
    }
}

/// `ioatctl bare-ring-peer`: the other process of the bare-ring figure (internal).
struct BareRingPeer: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "bare-ring-peer", abstract: "The peer of bench's bare-ring figure (internal).",
                                                    shouldDisplay: false)
    @Option var memory: String
    @Option var batch: Int
    @Option var cpu: Int?

    func run() throws {
        if let cpu { try Affinity.pinCurrentThread(to: [cpu]) }
        try BareRing.serve(path: memory, batch: batch)
    }
}
