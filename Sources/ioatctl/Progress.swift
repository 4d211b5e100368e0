import Glibc
import IOATSystem

/// A one-line progress note on standard error, rewritten in place, only when standard error is a terminal:
/// piped or redirected, long-running commands stay quiet and their output stays clean.
struct Progress {
    /// Whether notes are shown.
    let isShown: Bool
    private var lastUpdate = 0.0

    init() { isShown = Terminal.isTerminal(STDERR_FILENO) }

    /// Shows `text` in place of the previous note (at most a few times a second).
    mutating func update(_ text: String, force: Bool = false) {
        guard isShown else { return }
        let t = now()
        guard force || t - lastUpdate >= 0.1 else { return }
        lastUpdate = t
        let width = Terminal.size(STDERR_FILENO).columns - 1
        Terminal.write("\r\u{1B}[K" + String(text.prefix(max(1, width))), to: STDERR_FILENO)
    }

    /// Removes the note.
    func clear() {
        guard isShown else { return }
        Terminal.write("\r\u{1B}[K", to: STDERR_FILENO)
    }
}
