import IOATServer
import IOATSystem
import Synchronization

/// A handover store in this process's memory, standing in for systemd's file-descriptor store in tests: it
/// keeps a duplicate of each descriptor stored, as systemd does, and hands duplicates of what it holds to
/// the next server (`previous()`), as systemd's LISTEN_FDS would.
public final class MemoryHandoverStore: HandoverStore, @unchecked Sendable {
    public let capacity: Int
    private let files = Mutex<[String: FileDescriptor]>([:])

    public init(capacity: Int = 4096) { self.capacity = capacity }

    public func store(_ fd: FileDescriptor, name: String) {
        guard let copy = try? fd.duplicate() else { return }
        files.withLock { $0[name] = copy }
    }

    public func remove(name: String) { _ = files.withLock { $0.removeValue(forKey: name) } }

    /// A duplicate of what is stored under `name` (a test looks into it as a client could have).
    public func duplicate(_ name: String) -> FileDescriptor? { files.withLock { try? $0[name]?.duplicate() } }

    /// Names stored now.
    public var names: [String] { files.withLock { Array($0.keys) } }

    /// Duplicates of everything stored, for the next server.
    public func previous() -> StoredFiles {
        StoredFiles(files.withLock { $0.compactMap { name, fd in (try? fd.duplicate()).map { (name, $0) } } })
    }

    /// Drops everything (the unit stopped).
    public func clear() { files.withLock { $0.removeAll() } }
}
