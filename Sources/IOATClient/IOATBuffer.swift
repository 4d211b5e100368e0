import Glibc
import IOATProtocol
import IOATSystem

/// A buffer shared with the server, mapped into this process. Views are bounds-checked; raw access is
/// named `unsafe…`. The mapping lives as long as this object.
public final class IOATBuffer: @unchecked Sendable {
    /// The handle to name it by in descriptors.
    public let handle: UInt32
    /// Usable bytes.
    public let size: Int
    /// Page size backing it.
    public let pageSize: UInt64
    /// What the server reported about it.
    public let flags: BufferReply.Flags
    /// The memfd behind it; pass it to another process to share the memory (it registers it itself).
    public let memfd: FileDescriptor
    private let mapping: Mapping

    /// The connection the handle belongs to: on any other, the same number names something else.
    let session: UInt64

    init(reply: BufferReply, memfd: FileDescriptor, session: UInt64) throws(SystemError) {
        self.session = session
        handle = reply.handle
        size = Int(reply.size)
        pageSize = reply.pageSize
        flags = reply.flags
        self.memfd = memfd
        do throws(SystemError) {
            mapping = try Mapping(fd: memfd, length: Int(reply.size), writable: true, populate: false)
        } catch where error.errno == EPERM || error.errno == EACCES {
            // A write-sealed memfd: this process may only read it too.
            mapping = try Mapping(fd: memfd, length: Int(reply.size), writable: false, populate: false)
        }
    }

    /// Whether this process can write the buffer through its views.
    public var isWritable: Bool { mapping.isWritable }

    /// Whether the server backs it with hugepages.
    public var isHugepageBacked: Bool { flags.contains(.hugepages) }

    /// Whether descriptors naming this buffer may go to `queue`: both must belong to the same connection.
    /// After a reconnect, a buffer's handle names nothing — or another buffer — on the new connection;
    /// allocate it again or re-register its memfd (`IOATClient.register(_:)`).
    public func isUsable(on queue: IOATQueue) -> Bool { session == queue.session.id }

    /// The address of `offset` in this buffer, for a descriptor. Send it only to a queue of the same
    /// connection (`isUsable(on:)`); the queue's `copy`, `fill` and `crc32c` check this for you.
    public func address(_ offset: Int = 0) -> BufferAddress {
        BufferAddress(handle: handle, offset: UInt64(offset))
    }

    /// The bytes in `range`, bounds-checked.
    public func unsafeBytes(_ range: Range<Int>) -> UnsafeMutableRawBufferPointer {
        precondition(range.lowerBound >= 0 && range.upperBound <= size, "range \(range) is outside buffer \(handle) of \(size) bytes")
        return UnsafeMutableRawBufferPointer(rebasing: mapping.unsafeBytes[range])
    }

    /// Calls `body` with the whole buffer's bytes.
    public func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(mapping.unsafeBytes)
    }

    /// Copies `bytes` in at `offset`.
    public func write(_ bytes: some Collection<UInt8>, at offset: Int) {
        let target = unsafeBytes(offset..<offset + bytes.count)
        target.copyBytes(from: bytes)
    }

    /// A copy of `count` bytes at `offset`.
    public func read(at offset: Int, count: Int) -> [UInt8] {
        Array(unsafeBytes(offset..<offset + count))
    }

    /// Sets every byte in `range` to `value`.
    public func set(_ range: Range<Int>, to value: UInt8) {
        let target = unsafeBytes(range)
        if let base = target.baseAddress { memset(base, Int32(value), target.count) }
    }

    /// Fills `range` with bytes from a simple deterministic generator seeded by `seed` (for tests and
    /// benchmarks: cheap, and different per seed).
    public func fillPseudoRandom(_ range: Range<Int>, seed: UInt64) {
        let target = unsafeBytes(range)
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        for i in 0..<target.count {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            target[i] = UInt8(truncatingIfNeeded: state)
        }
    }
}
