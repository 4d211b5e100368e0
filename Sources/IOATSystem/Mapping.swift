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

    /// Work on a large mapping (prefaulting, locking, unmapping) goes in steps of this many bytes: each
    /// step holds the process's mmap lock only briefly, so other threads that fault or map (the event
    /// loop allocating, say) wait for one step, never for gigabytes.
    public static let step = 16 << 20

    /// Maps `length` bytes of `fd` shared. With `populate`, the pages are faulted in now, step by step
    /// (MADV_POPULATE_READ/WRITE; MAP_POPULATE where the kernel lacks those).
    public init(fd: FileDescriptor, length: Int, writable: Bool, populate: Bool) throws(SystemError) {
        precondition(length > 0, "Mapping needs a positive length")
        let prot = writable ? PROT_READ | PROT_WRITE : PROT_READ
        guard let p = mmap(nil, length, prot, MAP_SHARED, fd.rawValue, 0), p != MAP_FAILED else {
            throw SystemError.current("mmap")
        }
        unsafeBase = p
        count = length
        isWritable = writable
        guard populate else { return }
        let advice = writable ? MADV_POPULATE_WRITE : MADV_POPULATE_READ
        var offset = 0
        while offset < length {
            let n = min(Self.step, length - offset)
            if madvise(p + offset, n, advice) != 0 {
                let error = errno
                if error == EINVAL {
                    // A kernel before 5.14: fault the rest in at once.
                    _ = madvise(p + offset, length - offset, MADV_WILLNEED)
                    return
                }
                if error == EINTR || error == EAGAIN { continue }
                munmap(p, length)
                throw SystemError("madvise(MADV_POPULATE)", errno: error)
            }
            offset += n
        }
    }

    deinit {
        // Step by step, from the end, so no single call holds the mmap lock for the whole mapping.
        var end = count
        while end > 0 {
            let n = min(Self.step, end)
            let start = unsafeBase + (end - n)
            if isLocked { munlock(start, n) }
            munmap(start, n)
            end -= n
        }
    }

    /// Locks the pages in memory (mlock(2)), step by step; on failure the mapping stays usable, unlocked.
    public func lock() throws(SystemError) {
        guard !isLocked else { return }
        var offset = 0
        while offset < count {
            let n = min(Self.step, count - offset)
            guard mlock(unsafeBase + offset, n) == 0 else {
                let error = errno
                if offset > 0 { munlock(unsafeBase, offset) }
                throw SystemError("mlock", errno: error)
            }
            offset += n
        }
        isLocked = true
    }

    /// The whole mapping as a raw buffer.
    public var unsafeBytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: unsafeBase, count: count) }
}
