import Glibc
import Logging
import Synchronization

/// Logs to stderr the way journald reads a stream (sd-daemon(3)): each line starts with the syslog
/// priority in angle brackets, `<6>` for info, so `journalctl -p warning` filters correctly. Used when
/// JOURNAL_STREAM is set; plain `StreamLogHandler` lines otherwise.
struct JournalLogHandler: LogHandler {
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    let label: String
    private static let lock = Mutex<Void>(())

    init(label: String) { self.label = label }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// syslog(3) priority of a swift-log level.
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        let fields = all.sorted { $0.key < $1.key }.map { " \($0.key)=\($0.value)" }.joined()
        let line = "<\(Self.priority(event.level))>\(event.message)\(fields)\n"
        let bytes = Array(line.utf8)
        Self.lock.withLock { _ in
            // One write(2) per line, so lines from different threads never interleave.
            _ = bytes.withUnsafeBytes { write(STDERR_FILENO, $0.baseAddress, $0.count) }
        }
    }
}
