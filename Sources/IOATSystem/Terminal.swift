import Glibc

/// The controlling terminal, for full-screen tools (`ioatctl top`) and progress lines: whether a
/// descriptor is one, its size, and a raw-input mode that is always put back.
public final class Terminal {
    /// Whether `fd` is a terminal.
    public static func isTerminal(_ fd: Int32) -> Bool { isatty(fd) == 1 }

    /// Rows and columns of the terminal on `fd`; 24 × 80 when it does not say.
    public static func size(_ fd: Int32 = STDOUT_FILENO) -> (rows: Int, columns: Int) {
        var w = winsize()
        guard ioctl(fd, UInt(TIOCGWINSZ), &w) == 0, w.ws_row > 0, w.ws_col > 0 else { return (24, 80) }
        return (Int(w.ws_row), Int(w.ws_col))
    }

    private let fd: Int32
    private var saved = termios()
    private var active = false

    /// Puts the terminal on `fd` in raw input mode: keys arrive one at a time, unechoed, and Ctrl-C is a
    /// byte like any other (so the caller restores the screen before it quits). Output is unchanged.
    public init(rawInput fd: Int32 = STDIN_FILENO) throws(SystemError) {
        self.fd = fd
        guard tcgetattr(fd, &saved) == 0 else { throw SystemError.current("tcgetattr") }
        var raw = saved
        raw.c_lflag &= ~tcflag_t(ICANON | ECHO | ISIG | IEXTEN)
        raw.c_iflag &= ~tcflag_t(IXON | ICRNL)
        withUnsafeMutableBytes(of: &raw.c_cc) { cc in
            cc[Int(VMIN)] = 0
            cc[Int(VTIME)] = 0
        }
        guard tcsetattr(fd, TCSAFLUSH, &raw) == 0 else { throw SystemError.current("tcsetattr") }
        active = true
    }

    /// Puts the terminal back as it was (also done on deinit).
    public func restore() {
        guard active else { return }
        active = false
        _ = tcsetattr(fd, TCSAFLUSH, &saved)
    }

    deinit { restore() }

    /// Waits up to `milliseconds` for a key; the byte, or nil when none came.
    public func key(waiting milliseconds: Int32) -> UInt8? {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, milliseconds) > 0 else { return nil }
        var byte: UInt8 = 0
        return read(fd, &byte, 1) == 1 ? byte : nil
    }

    /// Writes `text` to `fd` whole (retrying short writes and EINTR).
    public static func write(_ text: String, to fd: Int32 = STDOUT_FILENO) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            bytes = bytes.dropFirst(n)
        }
    }
}
