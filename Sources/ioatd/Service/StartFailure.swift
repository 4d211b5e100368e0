import Glibc
import IOATProtocol
import IOATSystem

/// When ioatd cannot start (its configuration does not load, its engine fails), the clients that
/// connected meanwhile wait in the listening socket's backlog; under socket activation systemd keeps
/// that socket across restarts, so they would wait until their own bounds ran out, restart after
/// restart. Each one waiting is answered with ERROR `UNAVAILABLE` (request_id 0, version 1, SPEC.md §1)
/// and closed, as a connection the policy refuses is.
public enum StartFailure {
    /// The most connections answered in one go: a flood cannot keep a failing start going.
    static let maxAnswered = 4096

    /// Answers every connection waiting on `listener` with `UNAVAILABLE` and `what` (a text for anyone
    /// the socket admits: what failed, never the configuration's contents). Returns how many.
    public static func answerWaitingClients(listener: Int32, what: String) -> Int {
        let packet = Message.error(ErrorReply(ProtocolError(.unavailable, "ioatd cannot start: \(what); an administrator finds why in the server's log (journalctl -u ioatd)")))
            .encode(requestID: 0, version: 1)
        var answered = 0
        while answered < maxAnswered {
            var ready = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&ready, 1, 0) == 1 else { break }
            guard let fd = (try? UnixSocket.accept(listener: listener)) ?? nil else { break }
            // A client sends HELLO as soon as it connects: give it a moment to arrive, so that it is
            // discarded before the close, which then reads as end of stream and never as a reset.
            var hello = pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)
            _ = poll(&hello, 1, 100)
            packet.withUnsafeBytes { _ = try? UnixSocket.send(fd, $0, fds: []) }
            UnixSocket.discardUnread(fd)
            answered += 1
        }
        return answered
    }
}
