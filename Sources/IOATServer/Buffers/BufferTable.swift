/// Every buffer mapped by the server, in one table on the event-loop thread: the one owner of each
/// `SharedBuffer`, and the one place a buffer's life ends.
///
/// An op does not hold its buffers. It names each by slot (`Placement.slot`), and the table keeps an
/// integer pin count per slot: an op pins the slots of every range it names when it is admitted into a
/// queue, a copy of it the engine holds (a piece of a split op) pins them again, and each unpins when it
/// goes. A buffer that is closed (FREE, or its connection went) while pinned stays mapped until its last
/// pin goes; then, and only then, the table drops the `SharedBuffer`, whose deinit hands the unmap to a
/// setup thread. So the per-op path counts integers in a table instead of retaining and releasing
/// objects (which was a third of the server's time on 64-byte ops), and an op is plain data.
///
/// A pinned slot is never reused, so a pin needs no generation; a handle, which a client can hold past
/// FREE, is checked against the connection's own table, never against slots.
final class BufferTable {
    private struct Entry {
        var buffer: SharedBuffer?
        /// Ops (and engine-held copies of ops) that name the buffer.
        var pins: Int = 0
        /// Whether a connection still has it open under its handle.
        var open = false
    }

    private var entries: UnsafeMutablePointer<Entry>
    private var capacity: Int
    /// Slots ever used (the high-water mark); slots below it are free or in use.
    private var used = 0
    private var free: [UInt32] = []
    /// Sum of every slot's pins: zero whenever no op is queued or in an engine (checked in debug builds).
    private(set) var totalPins = 0
    /// Buffers still mapped: open, or closed and pinned.
    private(set) var mapped = 0

    init(minimumCapacity: Int = 64) {
        capacity = max(8, minimumCapacity)
        entries = .allocate(capacity: capacity)
    }

    deinit {
        entries.deinitialize(count: used)
        entries.deallocate()
    }

    /// Takes `buffer` into the table, open; returns its slot.
    func insert(_ buffer: SharedBuffer) -> UInt32 {
        let slot: Int
        if let reused = free.popLast() {
            slot = Int(reused)
            entries[slot] = Entry(buffer: buffer, pins: 0, open: true)
        } else {
            if used == capacity { grow() }
            slot = used
            (entries + slot).initialize(to: Entry(buffer: buffer, pins: 0, open: true))
            used += 1
        }
        mapped += 1
        return UInt32(slot)
    }

    /// The buffer in `slot` (open or pinned), for status and tests.
    func buffer(_ slot: UInt32) -> SharedBuffer? { entries[Int(slot)].buffer }

    /// Pins on `slot` now (tests and assertions).
    func pins(_ slot: UInt32) -> Int { entries[Int(slot)].pins }

    /// The buffer's handle is closed: it is unmapped now if no op names it, else when the last pin goes.
    func close(_ slot: UInt32) {
        let entry = entries + Int(slot)
        precondition(entry.pointee.open, "buffer slot \(slot) closed twice")
        entry.pointee.open = false
        if entry.pointee.pins == 0 { release(slot) }
    }

    @inline(__always)
    func pin(_ slot: UInt32) {
        let entry = entries + Int(slot)
        // Admission pins open buffers; a piece of a split op pins what its op already pins (its buffer may
        // have been closed since).
        assert(entry.pointee.buffer != nil && (entry.pointee.open || entry.pointee.pins > 0),
               "pin of buffer slot \(slot), which is neither open nor pinned")
        entry.pointee.pins += 1
        totalPins += 1
    }

    @inline(__always)
    func unpin(_ slot: UInt32) {
        let entry = entries + Int(slot)
        assert(entry.pointee.pins > 0, "unpin of buffer slot \(slot), which has no pins")
        entry.pointee.pins -= 1
        totalPins -= 1
        if entry.pointee.pins == 0 && !entry.pointee.open { release(slot) }
    }

    /// Pins every range the op at `op` names (it is being admitted, or the engine takes a copy of it).
    /// The op is read through a pointer: passed by value, the compiler copied all of it per call.
    func pin(_ op: UnsafePointer<PendingOp>) { op.forEachSlot { pin($0) } }

    /// Unpins every range the op at `op` names (it finished, was dropped, or the engine's copy of it came
    /// back).
    @inline(__always)
    func unpin(_ op: UnsafePointer<PendingOp>) { op.forEachSlot { unpin($0) } }

    func pin(_ op: PendingOp) { withUnsafePointer(to: op) { pin($0) } }
    func unpin(_ op: PendingOp) { withUnsafePointer(to: op) { unpin($0) } }

    /// The one place a buffer leaves the server: the table lets go of it, and its deinit unmaps it.
    private func release(_ slot: UInt32) {
        entries[Int(slot)].buffer = nil
        free.append(slot)
        mapped -= 1
    }

    private func grow() {
        let bigger = UnsafeMutablePointer<Entry>.allocate(capacity: capacity * 2)
        bigger.moveInitialize(from: entries, count: used)
        entries.deallocate()
        entries = bigger
        capacity *= 2
    }
}
