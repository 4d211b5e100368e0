import CIOATShim
import Glibc

/// Credentials of the process at the other end of a Unix socket (SO_PEERCRED).
public struct PeerCredentials: Hashable, Sendable {
    public var pid: Int32
    public var uid: UInt32
    /// The primary group.
    public var gid: UInt32
    /// Supplementary groups, in the kernel's (ascending) order; empty where SO_PEERGROUPS is missing.
    public var groups: [UInt32]
    /// The peer's cgroup, unit and slice, read at accept (`PeerCgroup.ofPeer`); nil where the host has no
    /// cgroup v2 or it was not read.
    public var cgroup: PeerCgroup?
    public init(pid: Int32, uid: UInt32, gid: UInt32, groups: [UInt32] = [], cgroup: PeerCgroup? = nil) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.cgroup = cgroup
    }
}

/// What one recvmsg(2) delivered.
public struct ReceivedPacket {
    /// Bytes stored in the caller's buffer.
    public var count: Int
    /// The packet's real size when it was larger than the buffer (MSG_TRUNC), else `count`.
    public var fullSize: Int
    /// Descriptors that came with it (at most the cap; the rest were closed on arrival).
    public var fds: [FileDescriptor]
    /// How many descriptors arrived, counting those closed for being over the cap.
    public var fdsReceived: Int
    /// Whether a control message other than SCM_RIGHTS arrived.
    public var foreignControl: Bool
    /// Whether more descriptors came than the receive space holds (MSG_CTRUNC); the kernel closed the rest.
    public var descriptorsOverflowed = false
    /// Whether the read returned nothing: the peer closed the connection, or sent an empty packet. On
    /// Linux the two look alike; `UnixSocket.peerHasShutDown` tells them apart.
    public var isEmpty: Bool { count == 0 && fullSize == 0 && fdsReceived == 0 && !descriptorsOverflowed }
    /// Whether the peer closed the connection (a zero-length read with no packet). Use `isEmpty` and
    /// `UnixSocket.peerHasShutDown` where an empty packet must not be taken for the end.
    public var isEndOfStream: Bool { isEmpty }
    /// Whether the packet was cut short by the buffer.
    public var isTruncated: Bool { fullSize > count }
}

/// AF_UNIX / SOCK_SEQPACKET sockets with descriptor passing.
public enum UnixSocket {
    /// Most descriptors kept from one message; more are closed on arrival.
    public static let maxFDsPerMessage = 4

    private static func withAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) throws(SystemError) -> R {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else { throw SystemError("socket path \"\(path)\"", errno: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    /// Creates a non-blocking SOCK_SEQPACKET listener at `path`. A stale socket file there is replaced;
    /// any other kind of file is left alone and reported as EADDRINUSE.
    public static func listen(path: String, backlog: Int32 = 128, mode: mode_t = 0o666) throws(SystemError) -> FileDescriptor {
        let raw = try retryingOnInterrupt("socket") { socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0) }
        let fd = FileDescriptor(owning: raw)
        var st = stat()
        if lstat(path, &st) == 0 {
            guard st.st_mode & S_IFMT == S_IFSOCK else { throw SystemError("bind \(path) (not a socket)", errno: EADDRINUSE) }
            unlink(path)
        }
        let rc = try withAddress(path) { Glibc.bind(fd.rawValue, $0, $1) }
        guard rc == 0 else { throw SystemError.current("bind \(path)") }
        chmod(path, mode)
        guard Glibc.listen(fd.rawValue, backlog) == 0 else { throw SystemError.current("listen") }
        return fd
    }

    /// Connects a blocking SOCK_SEQPACKET socket to `path`.
    public static func connect(path: String) throws(SystemError) -> FileDescriptor {
        let raw = try retryingOnInterrupt("socket") { socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        let fd = FileDescriptor(owning: raw)
        let rc = try withAddress(path) { addr, len in
            var r: Int32
            repeat { r = Glibc.connect(fd.rawValue, addr, len) } while r == -1 && errno == EINTR
            return r
        }
        guard rc == 0 else { throw SystemError.current("connect \(path)") }
        return fd
    }

    /// Connects a non-blocking socket to `path` by `deadlineNanoseconds` (Clock.nanoseconds; nil: none).
    /// A listener whose backlog is full answers EAGAIN, which nothing can poll for on a Unix socket: the
    /// connect is tried again every 5 ms until the deadline, then fails with ETIMEDOUT. The socket stays
    /// non-blocking.
    public static func connect(path: String, deadlineNanoseconds: UInt64?) throws(SystemError) -> FileDescriptor {
        let flags = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        let fd = FileDescriptor(owning: try retryingOnInterrupt("socket") { socket(AF_UNIX, flags, 0) })
        while true {
            let (rc, failure) = try withAddress(path) { addr, len -> (Int32, Int32) in
                var r: Int32
                repeat { r = Glibc.connect(fd.rawValue, addr, len) } while r == -1 && errno == EINTR
                return (r, r == 0 ? 0 : errno)
            }
            if rc == 0 { return fd }
            guard failure == EAGAIN else { throw SystemError("connect \(path)", errno: failure) }
            if let deadline = deadlineNanoseconds, Clock.nanoseconds() >= deadline { throw SystemError("connect \(path)", errno: ETIMEDOUT) }
            _ = poll(nil, 0, 5)
        }
    }

    /// A connected pair of SOCK_SEQPACKET sockets.
    public static func pair() throws(SystemError) -> (FileDescriptor, FileDescriptor) {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw SystemError.current("socketpair")
        }
        return (FileDescriptor(owning: fds[0]), FileDescriptor(owning: fds[1]))
    }

    /// A doorbell: a connected pair of SOCK_DGRAM sockets, one end for each side of a ring queue. Each end
    /// is its own open file, so neither side can change the other's flags (an eventfd shared between two
    /// processes is one open file: the client could clear O_NONBLOCK and make the server's write block).
    public static func doorbellPair() throws(SystemError) -> (FileDescriptor, FileDescriptor) {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw SystemError.current("socketpair")
        }
        return (FileDescriptor(owning: fds[0]), FileDescriptor(owning: fds[1]))
    }

    /// Rings a doorbell: one byte, never blocking. A full socket already rings, so EAGAIN is success;
    /// returns false when the peer's end is gone.
    @discardableResult
    public static func ring(_ doorbell: FileDescriptor) -> Bool {
        var one: UInt8 = 1
        let n = Glibc.send(doorbell.rawValue, &one, 1, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL))
        return n == 1 || errno == EAGAIN || errno == EINTR
    }

    /// Empties a doorbell without blocking, reading at most `limit` rings (a peer that rings without end
    /// costs a bounded amount per call).
    public static func drainDoorbell(_ doorbell: FileDescriptor, limit: Int = 64) {
        var bytes: (UInt64, UInt64) = (0, 0)
        for _ in 0..<limit {
            guard withUnsafeMutableBytes(of: &bytes, { recv(doorbell.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }) > 0
            else { return }
        }
    }

    /// Accepts one connection, non-blocking and close-on-exec; `nil` when none is waiting.
    public static func accept(_ listener: FileDescriptor) throws(SystemError) -> FileDescriptor? {
        try accept(listener: listener.rawValue)
    }

    /// `accept(_:)` on a listener this process does not own as a FileDescriptor (one systemd passed).
    public static func accept(listener: Int32) throws(SystemError) -> FileDescriptor? {
        while true {
            let raw = cioat_accept_nonblock(listener)
            if raw >= 0 { return FileDescriptor(owning: raw) }
            switch errno {
            case EINTR, ECONNABORTED: continue
            case EAGAIN: return nil
            default: throw SystemError.current("accept4")
            }
        }
    }

    /// Whether `fd` is a listening AF_UNIX SOCK_SEQPACKET socket.
    public static func isSeqpacketListener(_ fd: Int32) -> Bool {
        var type: Int32 = 0, listening: Int32 = 0
        var domain = sockaddr_storage()
        var len = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 else { return false }
        len = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 else { return false }
        var alen = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let ok = withUnsafeMutablePointer(to: &domain) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &alen) == 0 }
        }
        return ok && domain.ss_family == sa_family_t(AF_UNIX) && type == Int32(SOCK_SEQPACKET.rawValue) && listening == 1
    }

    /// The peer's credentials.
    public static func peerCredentials(_ fd: FileDescriptor) throws(SystemError) -> PeerCredentials {
        var pid: pid_t = 0, uid: uid_t = 0, gid: gid_t = 0
        guard cioat_peercred(fd.rawValue, &pid, &uid, &gid) == 0 else { throw SystemError.current("getsockopt(SO_PEERCRED)") }
        return PeerCredentials(pid: pid, uid: uid, gid: gid, groups: peerGroups(fd))
    }

    /// The peer's supplementary groups as the kernel recorded them at connect(2) (SO_PEERGROUPS), so
    /// they cannot change under the server as /proc/PID/status could; empty on kernels before 4.13.
    static func peerGroups(_ fd: FileDescriptor) -> [UInt32] {
        var room = 32
        while true {
            var groups = [gid_t](repeating: 0, count: room)
            let count = Int(cioat_peergroups(fd.rawValue, &groups, Int32(room)))
            if count < 0 { return [] }
            if count <= room { return Array(groups.prefix(count)) }
            room = count
        }
    }

    /// Sends one packet, with `fds` attached as SCM_RIGHTS. Throws EAGAIN on a full non-blocking socket.
    public static func send(_ fd: FileDescriptor, _ bytes: UnsafeRawBufferPointer, fds: [Int32] = []) throws(SystemError) {
        var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
        var failure: Int32 = 0
        let sent: Int = withUnsafeMutablePointer(to: &iov) { iovp in
            var msg = msghdr()
            msg.msg_iov = iovp
            msg.msg_iovlen = 1
            func attempt(_ msg: inout msghdr) -> Int {
                var n: Int
                repeat { n = sendmsg(fd.rawValue, &msg, Int32(MSG_NOSIGNAL)) } while n == -1 && errno == EINTR
                if n < 0 { failure = errno }
                return n
            }
            if fds.isEmpty { return attempt(&msg) }
            let space = cioat_cmsg_space_fds(UInt32(fds.count))
            return withUnsafeTemporaryAllocation(byteCount: space, alignment: 8) { control in
                control.initializeMemory(as: UInt8.self, repeating: 0)
                msg.msg_control = control.baseAddress
                msg.msg_controllen = fds.withUnsafeBufferPointer {
                    cioat_cmsg_put_fds(control.baseAddress, space, $0.baseAddress, UInt32(fds.count))
                }
                return attempt(&msg)
            }
        }
        if sent < 0 { throw SystemError("sendmsg", errno: failure) }
        // SOCK_SEQPACKET sends whole packets or fails.
        precondition(sent == bytes.count, "sendmsg on SOCK_SEQPACKET sent \(sent) of \(bytes.count) bytes")
    }

    /// Sends one packet of `bytes`.
    public static func send(_ fd: FileDescriptor, _ bytes: [UInt8], fds: [Int32] = []) throws(SystemError) {
        let failure: SystemError? = bytes.withUnsafeBytes { b in
            do throws(SystemError) {
                try send(fd, b, fds: fds)
                return nil
            } catch {
                return error
            }
        }
        if let failure { throw failure }
    }

    /// Receives one packet into `buffer`, descriptors marked close-on-exec on arrival (MSG_CMSG_CLOEXEC).
    /// Only SCM_RIGHTS is accepted; descriptors beyond `maxFDsPerMessage` are closed at once.
    /// Throws EAGAIN on an empty non-blocking socket.
    public static func receive(_ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer) throws(SystemError) -> ReceivedPacket {
        var iov = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
        let space = cioat_cmsg_space_fds(UInt32(maxFDsPerMessage))
        var failure: Int32 = 0
        let packet: ReceivedPacket? = withUnsafeTemporaryAllocation(byteCount: space, alignment: 8) { control in
            withUnsafeMutablePointer(to: &iov) { iovp in
                var msg = msghdr()
                msg.msg_iov = iovp
                msg.msg_iovlen = 1
                msg.msg_control = control.baseAddress
                msg.msg_controllen = space
                var n: Int
                repeat { n = recvmsg(fd.rawValue, &msg, Int32(MSG_TRUNC) | cioat_MSG_CMSG_CLOEXEC) } while n == -1 && errno == EINTR
                if n < 0 {
                    failure = errno
                    return nil
                }
                var packet = ReceivedPacket(count: min(n, buffer.count), fullSize: n, fds: [], fdsReceived: 0, foreignControl: false)
                if msg.msg_flags & Int32(MSG_CTRUNC) != 0 { packet.descriptorsOverflowed = true }
                if msg.msg_controllen > 0 {
                    var raw = [Int32](repeating: -1, count: maxFDsPerMessage)
                    var foreign: Int32 = 0
                    let received = Int(cioat_cmsg_take_fds(&msg, &raw, UInt32(maxFDsPerMessage), &foreign))
                    packet.fdsReceived = received
                    packet.foreignControl = foreign != 0
                    packet.fds = raw.prefix(min(received, maxFDsPerMessage)).map { FileDescriptor(owning: $0) }
                }
                return packet
            }
        }
        guard let packet else { throw SystemError("recvmsg", errno: failure) }
        return packet
    }

    /// Whether the peer has closed or shut down its sending side: after a zero-length read, this tells
    /// the end of the stream from an empty packet (poll(2) reports POLLRDHUP or POLLHUP only for the end).
    public static func peerHasShutDown(_ fd: FileDescriptor) -> Bool {
        var p = pollfd(fd: fd.rawValue, events: Int16(POLLIN) | Int16(cioat_POLLRDHUP), revents: 0)
        var n: Int32
        repeat { n = poll(&p, 1, 0) } while n == -1 && errno == EINTR
        guard n > 0 else { return false }
        return p.revents & (Int16(cioat_POLLRDHUP) | Int16(POLLHUP)) != 0
    }

    /// Before a close: stops the peer from sending more (shutdown of our reading side) and discards what
    /// it had already sent, closing any descriptors that came with it. Closing a Unix socket with unread
    /// packets resets the peer, and the reset would hide the last ERROR from it (SPEC.md §1, §7).
    /// Bounded: at most `limit` packets are read. Then shuts the socket down both ways, so the peer
    /// reads the end of the stream after what was already sent to it.
    public static func discardUnread(_ fd: FileDescriptor, limit: Int = 4096) {
        _ = Glibc.shutdown(fd.rawValue, Int32(SHUT_RD))
        withUnsafeTemporaryAllocation(byteCount: 64, alignment: 8) { scratch in
            for _ in 0..<limit {
                guard let unread = try? receive(fd, into: scratch), !unread.isEmpty else { break }
            }
        }
        _ = Glibc.shutdown(fd.rawValue, Int32(SHUT_RDWR))
    }
}
