import IOATProtocol
@testable import IOATServer
import IOATSystem
import Testing

/// A queue's pending ops (`OpRing`): order kept through wrap-around, growth and prepends, and every
/// buffer reference an op holds let go exactly when the op leaves (moved out, removed, or the ring ends).
@Suite("op ring")
struct OpRingTests {
    static func op(_ cookie: UInt64, _ buffer: SharedBuffer) -> PendingOp {
        PendingOp(cookie: cookie, opcode: .copy, flags: [], source: Placement(buffer: buffer, offset: 0),
                  destination: Placement(buffer: buffer, offset: 64), auxiliary: nil, sources: nil, segments: nil,
                  length: 64, arg: 0)
    }

    /// A ring exercised in FIFO order, left holding `left` ops of a buffer no one else holds.
    static func exercised(left: Int) throws -> OpRing {
        let fd = try Memfd.create(name: "opring", size: 4096, hugepages: false)
        let buffer = SharedBuffer(handle: 1, mapping: try Mapping(fd: fd, length: 4096, writable: true, populate: false),
                                  flags: [], pageSize: 4096, registration: nil)
        var ring = OpRing(minimumCapacity: 4)
        var next: UInt64 = 0, expected: UInt64 = 0
        // Wrap around the first 8 slots many times, then grow with the start in the middle of the ring.
        for round in 0..<20 {
            for _ in 0..<(round % 7 + 1) {
                ring.append(op(next, buffer))
                next += 1
            }
            for _ in 0..<(round % 5) where !ring.isEmpty {
                let head = ring.head.pointee.cookie
                let removed = ring.removeFirst().cookie
                #expect(head == expected && removed == expected)
                expected += 1
            }
        }
        for _ in 0..<30 {
            ring.append(op(next, buffer))
            next += 1
        }
        ring.prepend(op(999, buffer))
        let count = ring.count
        #expect(count == Int(next - expected) + 1)
        let first = ring.removeFirst().cookie
        #expect(first == 999)
        while !ring.isEmpty {
            let removed = ring.removeFirst().cookie
            #expect(removed == expected)
            expected += 1
        }
        #expect(expected == next)
        for i in 0..<left { ring.append(op(UInt64(i), buffer)) }
        if left > 0 {
            ring.head.pointee.dispatched = 32
            let head = ring.head.pointee
            #expect(head.dispatched == 32 && head.cookie == 0, "written in place")
        }
        return ring
    }

    @Test("FIFO through wrap-around and growth; prepend goes first; removeAll and the ring's end release the buffers")
    func order() throws {
        weak var watched: SharedBuffer?
        var ring = try Self.exercised(left: 10)
        watched = ring.head.pointee.source?.buffer
        #expect(watched != nil, "the ops still held keep their buffer")
        ring.removeAll()
        let empty = ring.isEmpty
        #expect(empty)
        #expect(watched == nil, "removeAll let go of every reference")

        var again = try Self.exercised(left: 5)
        watched = again.head.pointee.source?.buffer
        #expect(watched != nil)
        _ = consume again  // the ring's end drops what it still holds
        #expect(watched == nil, "the ring's end let go of every reference")
    }
}
