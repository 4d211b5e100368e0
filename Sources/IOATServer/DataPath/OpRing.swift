/// A queue's pending ops, in order, in memory of its own: a ring that grows when full (rarely: a queue
/// never holds more than its depth, except while a halted channel hands ops back).
///
/// Ops are reached through `head`, a pointer, so reading one field of the first op copies neither the
/// op nor the buffer references in it, and `removeFirst` moves the op out: each copy of an op would
/// retain and release every buffer it names, and on the per-op path those counts were the server's
/// largest cost. `head` is valid until the ring next changes.
struct OpRing: ~Copyable {
    private var base: UnsafeMutablePointer<PendingOp>
    private var capacity: Int
    private var start = 0
    private(set) var count = 0

    init(minimumCapacity: Int) {
        capacity = max(8, 1 << (Int.bitWidth - (max(1, minimumCapacity) - 1).leadingZeroBitCount))
        base = .allocate(capacity: capacity)
    }

    deinit {
        for i in 0..<count { (base + ((start + i) & (capacity - 1))).deinitialize(count: 1) }
        base.deallocate()
    }

    var isEmpty: Bool { count == 0 }

    /// Pins the ops in the ring hold (debug accounting).
    var pinsNamed: Int {
        var n = 0
        for i in 0..<count { n += slot(i).pointee.pinCount }
        return n
    }

    /// The first op (the ring must not be empty).
    var head: UnsafeMutablePointer<PendingOp> {
        precondition(count > 0, "head of an empty op ring")
        return base + start
    }

    /// The last op (the ring must not be empty).
    var last: UnsafeMutablePointer<PendingOp> {
        precondition(count > 0, "last of an empty op ring")
        return slot(count - 1)
    }

    private func slot(_ i: Int) -> UnsafeMutablePointer<PendingOp> { base + ((start + i) & (capacity - 1)) }

    mutating func append(_ op: consuming PendingOp) {
        if count == capacity { grow() }
        slot(count).initialize(to: consume op)
        count += 1
    }

    /// Puts `op` before the first (an op a halt handed back).
    mutating func prepend(_ op: consuming PendingOp) {
        if count == capacity { grow() }
        start = (start - 1) & (capacity - 1)
        (base + start).initialize(to: consume op)
        count += 1
    }

    /// Moves the first op out.
    mutating func removeFirst() -> PendingOp {
        precondition(count > 0, "removeFirst of an empty op ring")
        let op = (base + start).move()
        start = (start + 1) & (capacity - 1)
        count -= 1
        return op
    }

    /// Ends the first op where it lies (it is not moved out). An op without XOR sources or COPY_SG
    /// entries holds nothing to give back, and is only stepped over (deinitializing it called the
    /// runtime twice, for two nil lists).
    mutating func dropFirst() {
        precondition(count > 0, "dropFirst of an empty op ring")
        let first = base + start
        if first.pointee.sources != nil || first.pointee.segments != nil { first.deinitialize(count: 1) }
        start = (start + 1) & (capacity - 1)
        count -= 1
    }

    mutating func removeAll() {
        while count > 0 { _ = removeFirst() }
        start = 0
    }

    private mutating func grow() {
        let bigger = UnsafeMutablePointer<PendingOp>.allocate(capacity: capacity * 2)
        for i in 0..<count { (bigger + i).moveInitialize(from: slot(i), count: 1) }
        base.deallocate()
        base = bigger
        capacity *= 2
        start = 0
    }
}
