import IOATProtocol
@testable import IOATServer
import IOATSystem
import Testing

/// A queue's pending ops (`OpRing`): order kept through wrap-around, growth and prepends; and the buffer
/// table's pins (`BufferTable`): a buffer closed while ops name it stays mapped until the last pin goes.
@Suite("op ring and buffer pins")
struct OpRingTests {
    static func op(_ cookie: UInt64, _ buffer: OpenBuffer) -> PendingOp {
        PendingOp(cookie: cookie, opcode: .copy, flags: [], source: Placement(buffer, offset: 0),
                  destination: Placement(buffer, offset: 64), auxiliary: nil, sources: nil, segments: nil,
                  length: 64, arg: 0)
    }

    static func sharedBuffer(handle: UInt32 = 1) throws -> SharedBuffer {
        let fd = try Memfd.create(name: "opring", size: 4096, hugepages: false)
        return SharedBuffer(handle: handle, mapping: try Mapping(fd: fd, length: 4096, writable: true, populate: false),
                            flags: [], pageSize: 4096, registration: nil)
    }

    @Test("FIFO through wrap-around and growth; prepend goes first; ops are written in place through head")
    func order() throws {
        let shared = try Self.sharedBuffer()
        let buffer = OpenBuffer(shared, slot: 0)
        var ring = OpRing(minimumCapacity: 4)
        var next: UInt64 = 0, expected: UInt64 = 0
        // Wrap around the first 8 slots many times, then grow with the start in the middle of the ring.
        for round in 0..<20 {
            for _ in 0..<(round % 7 + 1) {
                ring.append(Self.op(next, buffer))
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
            ring.append(Self.op(next, buffer))
            next += 1
        }
        ring.prepend(Self.op(999, buffer))
        let count = ring.count
        #expect(count == Int(next - expected) + 1)
        #expect(ring.pinsNamed == 2 * count, "each copy names two ranges")
        let first = ring.removeFirst().cookie
        #expect(first == 999)
        while !ring.isEmpty {
            let removed = ring.removeFirst().cookie
            #expect(removed == expected)
            expected += 1
        }
        #expect(expected == next)
        ring.append(Self.op(0, buffer))
        ring.head.pointee.dispatched = 32
        let head = ring.head.pointee
        #expect(head.dispatched == 32 && head.cookie == 0, "written in place")
        ring.removeAll()
        let empty = ring.isEmpty
        #expect(empty)
    }

    @Test("A buffer closed while pinned stays mapped until its last pin goes, then the table lets go of it; its slot is reused")
    func pins() throws {
        let table = BufferTable()
        weak var watched: SharedBuffer?
        var slot: UInt32 = 0
        do {
            let shared = try Self.sharedBuffer()
            watched = shared
            slot = table.insert(shared)
        }
        #expect(watched != nil && table.mapped == 1, "the table owns the buffer")
        let buffer = OpenBuffer(table.buffer(slot)!, slot: slot)
        let a = Self.op(1, buffer), b = Self.op(2, buffer)
        table.pin(a)
        table.pin(b)
        #expect(table.pins(slot) == 4 && table.totalPins == 4)
        table.close(slot)
        #expect(watched != nil && table.mapped == 1, "closed while pinned: still mapped")
        table.unpin(a)
        #expect(watched != nil && table.pins(slot) == 2)
        table.unpin(b)
        #expect(watched == nil && table.mapped == 0 && table.totalPins == 0, "the last pin unmapped it")

        // An unpinned buffer goes at close; the freed slot is the next one used.
        let other = try Self.sharedBuffer(handle: 2)
        let again = table.insert(other)
        #expect(again == slot)
        weak let second: SharedBuffer? = other
        _ = consume other
        #expect(second != nil)
        table.close(again)
        #expect(second == nil && table.mapped == 0)
    }
}
