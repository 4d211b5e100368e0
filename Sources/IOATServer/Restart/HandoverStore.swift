import Glibc
import IOATSystem

/// Where the server keeps, while it runs, every descriptor the next instance needs to carry on: its
/// clients' connections, their buffers' memfds, ring memory and doorbells, and the state that ties them
/// together (SPEC.md §5.11). Under systemd this is the service's file-descriptor store (`FDSTORE=1`,
/// `FDSTOREREMOVE=1`); the store survives a crash of the process, which is why each descriptor goes in
/// when it is made, not when the server stops.
public protocol HandoverStore: AnyObject, Sendable {
    /// How many descriptors the store holds at most.
    var capacity: Int { get }
    /// Keeps a copy of `fd` under `name` (the caller keeps its own). Names are the server's to keep unique.
    func store(_ fd: FileDescriptor, name: String)
    /// Drops what is stored under `name`.
    func remove(name: String)
}

/// What a previous instance left in the store, by name: handed to the next server, which takes what
/// its state names and gives the rest back to the store's owner to drop.
public final class StoredFiles: @unchecked Sendable {
    private var byName: [String: FileDescriptor]

    public init(_ files: [(name: String, fd: FileDescriptor)]) {
        var byName: [String: FileDescriptor] = [:]
        for (name, fd) in files { byName[name] = fd }  // a name stored twice keeps its last descriptor
        self.byName = byName
    }

    public var isEmpty: Bool { byName.isEmpty }
    public var names: [String] { Array(byName.keys) }

    /// Takes the descriptor stored under `name`, once.
    public func take(_ name: String) -> FileDescriptor? { byName.removeValue(forKey: name) }

    /// Takes every descriptor not taken yet.
    func takeRest() -> [(String, FileDescriptor)] {
        defer { byName.removeAll() }
        return byName.map { ($0.key, $0.value) }
    }
}

/// The names under which the server stores things. systemd allows printable ASCII without ':' in a name.
enum StoreName {
    static func connection(_ id: UInt64) -> String { "c\(id)" }
    static func ringMemory(_ token: UInt64) -> String { "r\(token)" }
    static func doorbell(_ token: UInt64) -> String { "d\(token)" }
    static func state(_ serial: UInt64) -> String { "state.\(serial)" }
    /// The serial of a state's name, or nil for another kind of name.
    static func stateSerial(_ name: String) -> UInt64? {
        name.hasPrefix("state.") ? UInt64(name.dropFirst(6)) : nil
    }
}

/// The server's account of what it stored, on the event-loop thread: a buffer's memfd is stored once
/// per file however many handles name it (systemd keeps one copy of a file, so a second store of the
/// same file would be dropped, and removing it for one handle would remove it for all), and nothing is
/// stored past the store's capacity (the request that would need it is refused instead).
final class StoreLedger {
    let store: any HandoverStore
    /// Buffer files by (device, inode): their name and the handles that use them.
    private var files: [FileKey: (name: String, users: Int)] = [:]
    private var users: [String: FileKey] = [:]
    /// Descriptors stored now (the state's included).
    private(set) var stored = 0

    struct FileKey: Hashable {
        let device: UInt64
        let inode: UInt64
    }

    init(store: any HandoverStore) { self.store = store }

    /// Whether `count` more descriptors fit (one place stays for the next state).
    func hasRoom(_ count: Int) -> Bool { stored + count + 1 <= store.capacity }

    /// Stores a socket, ring or doorbell under its own name.
    func keep(_ fd: FileDescriptor, name: String) {
        store.store(fd, name: name)
        stored += 1
    }

    /// Drops what `keep` stored under `name`.
    func drop(_ name: String) {
        store.remove(name: name)
        stored -= 1
    }

    /// Stores a buffer's file (once per file) and returns the name it is stored under.
    func keepFile(_ fd: FileDescriptor) -> String? {
        var st = stat()
        guard fstat(fd.rawValue, &st) == 0 else { return nil }
        let key = FileKey(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))
        if var entry = files[key] {
            entry.users += 1
            files[key] = entry
            return entry.name
        }
        let name = "m\(key.device).\(key.inode)"
        files[key] = (name, 1)
        users[name] = key
        keep(fd, name: name)
        return name
    }

    /// Takes a buffer file the previous instance stored under `name` into the account (it is in the
    /// store already); a second handle on the same file counts one more user.
    func adoptFile(_ name: String, _ fd: FileDescriptor) {
        if let key = users[name] {
            files[key]!.users += 1
            return
        }
        var st = stat()
        let key = fstat(fd.rawValue, &st) == 0 ? FileKey(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)) : FileKey(device: 0, inode: 0)
        files[key] = (name, 1)
        users[name] = key
        stored += 1
    }

    /// Counts a socket, ring or doorbell the previous instance stored (it is in the store already).
    func adopt() { stored += 1 }

    /// One handle less uses the file stored under `name`; the last one drops it.
    func releaseFile(_ name: String) {
        guard let key = users[name], var entry = files[key] else { return }
        entry.users -= 1
        if entry.users > 0 {
            files[key] = entry
            return
        }
        files[key] = nil
        users[name] = nil
        drop(name)
    }
}
