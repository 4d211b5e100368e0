import IOATProtocol
import IOATSystem

/// Everything an IOATClient call can fail with.
public enum IOATError: Error, CustomStringConvertible, Sendable {
    /// The server refused the request with a SPEC.md error code and a message naming the bad value.
    case refused(ProtocolError)
    /// The connection dropped before the answer arrived. An op that was in flight may or may not have run.
    case connectionLost(String)
    /// A local system call failed (connect, mmap, memfd_create…).
    case system(SystemError)
    /// The server sent something the protocol does not allow.
    case invalidReply(String)
    /// The caller asked for something the client can check without the server (e.g. a range outside a buffer).
    case invalidArgument(String)
    /// The process answering at the socket is not one this client trusts with its memory (SPEC.md §1).
    case untrustedServer(String)
    /// The server said GOODBYE (it is stopping) and then closed the connection: a clean stop, not a crash.
    /// Ops without a record did not run to completion. Connect again later (a socket-activated server
    /// starts again on the next connection).
    case serverStopped(String)
    /// A wait with a time limit ran out (`IOATRing.wait`).
    case timedOut(String)
    /// The server restarted after a crash while this request was under way (SPEC.md §5.11): it may or
    /// may not have been carried out. The connection carries on; asking again is safe for everything but
    /// ALLOC and REGISTER, whose buffer may exist unnamed until the connection closes.
    case serverRestarted(String)

    /// The spec's error code, when the server refused.
    public var code: ErrorCode? {
        if case .refused(let e) = self { return e.code }
        return nil
    }

    public var description: String {
        switch self {
        case .refused(let e): "server refused: \(e.code.name): \(e.message)"
        case .connectionLost(let why): "connection lost: \(why)"
        case .system(let e): "\(e)"
        case .invalidReply(let why): "invalid reply from server: \(why)"
        case .invalidArgument(let why): "invalid argument: \(why)"
        case .untrustedServer(let why): "untrusted server: \(why)"
        case .serverStopped(let why): "server stopped: \(why)"
        case .timedOut(let why): "timed out: \(why)"
        case .serverRestarted(let why): "server restarted: \(why)"
        }
    }
}
