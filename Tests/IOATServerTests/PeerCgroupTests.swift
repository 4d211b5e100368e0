import Foundation
import Glibc
import IOATSystem
import Testing

/// The peer's cgroup, unit and slice, as read at accept (issue 21's identity): parsing, and the lookup
/// through SO_PEERPIDFD with the liveness check that refuses a process gone by then.
@Suite("peer identity: cgroup, unit and slice at accept")
struct PeerCgroupTests {
    @Test("the 0:: line of /proc/PID/cgroup gives the path; the unit and slice are its innermost .service/.scope and .slice")
    func parsing() {
        let hybrid = "12:memory:/machine.slice\n1:name=systemd:/machine.slice/libpod-abc.scope\n0::/machine.slice/libpod-abc.scope/container\n"
        let path = PeerCgroup.parse(procCgroup: hybrid)
        #expect(path == "/machine.slice/libpod-abc.scope/container")
        let peer = PeerCgroup(path: path ?? "")
        #expect(peer.unit == "libpod-abc.scope" && peer.slice == "machine.slice", "\(peer)")
        #expect(PeerCgroup(path: "/system.slice/qemu-vm1.service").unit == "qemu-vm1.service")
        #expect(PeerCgroup(path: "/user.slice/user-1000.slice/session-3.scope").slice == "user-1000.slice")
        #expect(PeerCgroup(path: "/").unit == nil && PeerCgroup(path: "/").slice == nil)
        #expect(PeerCgroup.parse(procCgroup: "4:cpu:/x\n") == nil, "cgroup v1 only: no path")
        #expect(PeerCgroup.parse(procCgroup: "0::\n") == nil)
    }

    @Test("a connected peer that runs: its cgroup is this process's own, read through its pidfd")
    func livePeer() throws {
        var pair: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &pair) == 0)
        let mine = FileDescriptor(owning: pair[0])
        defer { close(pair[1]) }
        let own = try String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)
        let result = PeerCgroup.ofPeer(mine, pid: getpid())
        guard case .success(let peer) = result else {
            // A host without cgroup v2 has no 0:: line: nothing to compare, and the lookup says why.
            #expect(PeerCgroup.parse(procCgroup: own) == nil, "\(result)")
            return
        }
        #expect(peer.path == PeerCgroup.parse(procCgroup: own))
        #expect(peer.viaPidfd, "this kernel (6.5 or later) gives SO_PEERPIDFD")
    }

    @Test("cgroup ids resolve to paths through the cgroup v2 mount (PIDFD_GET_INFO's way, no /proc of the peer), and the lookup agrees with /proc")
    func throughCgroupIDs() throws {
        let own = try String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)
        guard let path = PeerCgroup.parse(procCgroup: own) else { return }  // no cgroup v2 here
        let mountInfo = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        let point = try #require(CgroupPaths.cgroup2Mount(in: mountInfo), "a cgroup2 mount").point
        var st = stat()
        #expect(stat(point + (path == "/" ? "" : path), &st) == 0)
        let paths = CgroupPaths(mountInfo: mountInfo)
        #expect(paths.path(of: UInt64(st.st_ino)) == path, "the directory's inode is the cgroup id")
        #expect(paths.path(of: UInt64.max) == nil, "an id no cgroup has")
        // Through a socket, with the resolver: the same path as /proc says.
        var pair: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &pair) == 0)
        let mine = FileDescriptor(owning: pair[0])
        defer { close(pair[1]) }
        guard case .success(let peer) = PeerCgroup.ofPeer(mine, pid: getpid(), resolver: paths) else {
            Issue.record("lookup failed")
            return
        }
        #expect(peer.path == path && peer.viaPidfd)
        // A resolver that sees no cgroup v2 mount falls back to /proc, with the same answer.
        guard case .success(let fallback) = PeerCgroup.ofPeer(mine, pid: getpid(), resolver: CgroupPaths(mountInfo: "")) else {
            Issue.record("fallback failed")
            return
        }
        #expect(fallback.path == path)
    }

    @Test("a peer that exited (and was reaped) before the lookup is .exited, whatever its pid names now")
    func exitedPeer() throws {
        let path = NSTemporaryDirectory() + "ioatd-peer-\(getpid()).sock"
        unlink(path)
        defer { unlink(path) }
        let listener = try UnixSocket.listen(path: path, mode: 0o600)
        var pid: pid_t = 0
        let script = "import socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect('\(path)')"
        let words: [String] = ["/usr/bin/python3", "-c", script]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        #expect(posix_spawn(&pid, "/usr/bin/python3", nil, nil, argv, environ) == 0)
        var status: Int32 = 0
        #expect(waitpid(pid, &status, 0) == pid, "the client connected and exited")
        var accepted: FileDescriptor? = nil
        for _ in 0..<100 where accepted == nil {
            accepted = try UnixSocket.accept(listener)
            if accepted == nil { usleep(10_000) }
        }
        let fd = try #require(accepted, "its connection is in the backlog")
        let peer = try UnixSocket.peerCredentials(fd)
        #expect(peer.pid == pid)
        #expect(PeerCgroup.ofPeer(fd, pid: peer.pid) == .failure(.exited(pid: pid)))
        #expect(PeerCgroup.ofPeer(fd, pid: peer.pid, resolver: CgroupPaths()) == .failure(.exited(pid: pid)), "through PIDFD_GET_INFO too")
    }
}
