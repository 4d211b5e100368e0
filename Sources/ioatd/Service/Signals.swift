import Glibc
import IOATServer
import IOATSystem
import Logging

/// The daemon's signals, on a thread of their own: SIGTERM or SIGINT asks the server to stop (a second
/// one, at once), SIGHUP reads the configuration file again and hands its policy to the server (or the
/// reason it was refused). The signals are blocked before any thread starts (`SignalFD`), so only this
/// thread sees them.
final class SignalHandling: @unchecked Sendable {
    private let signals: SignalFD
    private let stop: EventFD
    private var thread: OSThread?

    init(_ signals: SignalFD) throws(SystemError) {
        self.signals = signals
        stop = try EventFD()
    }

    /// Starts handling signals for `server`; `reload` reads the policy again (nil: nothing to read);
    /// `restarting` says whether the service manager is restarting the unit (nil: no handover store), so
    /// that SIGTERM hands the clients over instead of stopping.
    func start(server: IOATServer, logger: Logger, reload: (@Sendable () throws -> Policy)?,
               restarting: (@Sendable () -> Bool?)? = nil) {
        let signals = self.signals, stop = self.stop
        thread = OSThread(name: "ioatd-signals") {
            var fds = [pollfd(fd: signals.fd.rawValue, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stop.fd.rawValue, events: Int16(POLLIN), revents: 0)]
            while true {
                guard poll(&fds, 2, -1) >= 0 || errno == EINTR else { return }
                if fds[1].revents != 0 { return }
                while let signal = signals.next() {
                    logger.notice("signal received", metadata: ["signal": "\(signal)"])
                    guard signal == SIGHUP else {
                        if signal == SIGTERM, let restarting {
                            switch restarting() {
                            case true?:
                                logger.notice("the unit is being restarted: handing the clients over to the next instance")
                                server.requestHandover()
                            case false?:
                                server.requestStop()
                            case nil:
                                logger.warning("the service manager could not be asked whether this is a restart; stopping (clients are told GOODBYE)")
                                server.requestStop()
                            }
                            continue
                        }
                        server.requestStop()
                        continue
                    }
                    guard let reload else {
                        logger.notice("reload: no configuration file to read; the policy is unchanged")
                        continue
                    }
                    do {
                        server.apply(policy: try reload())
                    } catch {
                        server.policyRefused(reason: "\(error)")
                    }
                }
            }
        }
    }

    /// Stops the thread (the server has returned).
    func finish() {
        stop.signal()
        thread?.join()
        thread = nil
    }
}
