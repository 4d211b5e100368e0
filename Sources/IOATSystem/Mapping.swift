import Glibc

/// Sole owner of one shared mapping of a file: `deinit` unlocks and unmaps it.
/// The bytes are exposed as a bounds-checked buffer; raw access is named `unsafe…`.
public final class Mapping: @unchecked Sendable {
    /// Start of the mapping.
    public let unsafeBase: UnsafeMutableRawPointer
    /// Length in bytes.
    public let count: Int
    /// Whether the pages are mlock'ed.
    public private(set) var isLocked = false
    /// Whether the mapping is writable.
    public let isWritable: Bool

    /// Maps `length` bytes of `fd` shared. With `populate`, the pages are faulted in now (MAP_POPULATE).
    public init(fd: FileDescriptor, length: Int, writable: Bool, populate: Bool) throws(SystemError) {
        precondition(length > 0, "Mapping needs a positive length")
        let prot = writable ? PROT_READ | PROT_WRITE : PROT_READ
        let flags = MAP_SHARED | (populate ? MAP_POPULATE : 0)
        guard let p = mmap(nil, length, prot, flags, fd.rawValue, 0), p != MAP_FAILED else {
            throw SystemError.current("mmap")
        }
        unsafeBase = p
        count = length
        isWritable = writable
    }

    deinit {
        if isLocked { munlock(unsafeBase, count) }
        munmap(unsafeBase, count)
    }

    /// Locks the pages in memory (mlock(2)); on failure the mapping stays usable, unlocked.
    public func lock() throws(SystemError) {
        guard !isLocked else { return }
        guard mlock(unsafeBase, count) == 0 else { throw SystemError.current("mlock") }
        isLocked = true
    }

    /// The whole mapping as a raw buffer.
    public var unsafeBytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: unsafeBase, count: count) }
}
