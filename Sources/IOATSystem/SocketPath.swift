import Glibc

/// The default socket path, the same rule in server and client (SPEC.md §1):
/// `$IOATD_SOCKET`, else `/run/ioatd/ioatd.sock` for root, else `$XDG_RUNTIME_DIR/ioatd.sock`
/// (falling back to `/tmp/ioatd-<uid>.sock` when XDG_RUNTIME_DIR is unset).
public enum SocketPath {
    /// The path to use when none is given on the command line.
    public static func resolved(environment: [String: String] = currentEnvironment(), uid: UInt32 = getuid()) -> String {
        if let explicit = environment["IOATD_SOCKET"], !explicit.isEmpty { return explicit }
        if uid == 0 { return "/run/ioatd/ioatd.sock" }
        if let runtime = environment["XDG_RUNTIME_DIR"], !runtime.isEmpty { return runtime + "/ioatd.sock" }
        return "/tmp/ioatd-\(uid).sock"
    }

    /// This process's environment.
    public static func currentEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let s = String(cString: entry)
            if let eq = s.firstIndex(of: "=") { result[String(s[..<eq])] = String(s[s.index(after: eq)...]) }
            p += 1
        }
        return result
    }
}
