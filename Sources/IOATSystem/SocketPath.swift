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

    /// The system service's socket (ioatd.socket).
    public static let system = "/run/ioatd/ioatd.sock"

    /// The path a client connects to when none is given (SPEC.md §1): `$IOATD_SOCKET`; else the system
    /// service's socket when it exists, since unprivileged clients are its main users; else the per-user
    /// rule of `resolved`.
    public static func forClient(environment: [String: String] = currentEnvironment(), uid: UInt32 = getuid(),
                                 exists: (String) -> Bool = { access($0, F_OK) == 0 }) -> String {
        if let explicit = environment["IOATD_SOCKET"], !explicit.isEmpty { return explicit }
        if exists(system) { return system }
        return resolved(environment: environment, uid: uid)
    }

    /// Whether a client may trust a server whose process runs as `serverUID` at `path` (SPEC.md §1): root,
    /// the service's own user (`ioatd`), or the client's own uid when the socket is the client's own — a
    /// file it owns in a directory no one else may write to (or a sticky one, like /tmp, where no one else
    /// can replace it). Returns why not, or nil when trusted.
    public static func distrust(serverUID: UInt32, path: String, clientUID: UInt32 = getuid(),
                                serviceUID: UInt32? = serviceUser()) -> String? {
        if serverUID == 0 || serverUID == serviceUID { return nil }
        guard serverUID == clientUID else {
            return "the server at \(path) runs as uid \(serverUID); a client trusts only root, the ioatd user"
                + "\(serviceUID.map { " (uid \($0))" } ?? "") or itself (set IOATD_SOCKET to a server you trust)"
        }
        var file = stat()
        guard lstat(path, &file) == 0 else { return "cannot stat \(path): \(String(cString: strerror(errno)))" }
        guard file.st_uid == clientUID else { return "\(path) is owned by uid \(file.st_uid), not by this user (uid \(clientUID))" }
        let directory = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        var dir = stat()
        guard stat(directory.isEmpty ? "/" : directory, &dir) == 0 else {
            return "cannot stat \(directory): \(String(cString: strerror(errno)))"
        }
        let othersWrite = dir.st_mode & (S_IWGRP | S_IWOTH) != 0
        let sticky = dir.st_mode & S_ISVTX != 0
        guard dir.st_uid == clientUID || dir.st_uid == 0, !othersWrite || sticky else {
            return "\(directory) can be written by others, so \(path) could be replaced there"
        }
        return nil
    }

    /// The uid of the `ioatd` user, if there is one.
    public static func serviceUser() -> UInt32? {
        guard let entry = getpwnam("ioatd") else { return nil }
        return entry.pointee.pw_uid
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
