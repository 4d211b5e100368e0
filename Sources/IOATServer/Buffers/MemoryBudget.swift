import IOATProtocol

/// The server-wide budget of buffer memory (`max_total_buffer_bytes`, SPEC.md §5.1): what every buffer
/// costs — server buffers whole, client memfds for what the server pins — is reserved before any memory
/// is touched, committed when the buffer exists, and returned when it is unmapped. Event loop only.
struct MemoryBudget: Sendable {
    /// The most bytes buffers may hold at once.
    let limit: UInt64
    /// Bytes of buffers being made.
    private(set) var reserved: UInt64 = 0
    /// Bytes of existing buffers, locked (mlock'ed, hugepages, or pinned for DMA) and not.
    private(set) var locked: UInt64 = 0
    private(set) var unlocked: UInt64 = 0
    /// Of those, bytes of hugepages.
    private(set) var hugepages: UInt64 = 0

    init(limit: UInt64) { self.limit = limit }

    /// Bytes held or being made.
    var used: UInt64 { locked + unlocked }

    /// Whether `bytes` more fit.
    func fits(_ bytes: UInt64) -> Bool {
        let (total, overflow) = used.addingReportingOverflow(reserved &+ bytes)
        return !overflow && total <= limit
    }

    /// Holds `bytes` for a buffer being made, or refuses with QUOTA_EXCEEDED naming the budget.
    mutating func reserve(_ bytes: UInt64) throws(ProtocolError) {
        guard fits(bytes) else {
            throw ProtocolError(.quotaExceeded,
                                "\(bytes) more bytes would bring the server's buffers to \(used + reserved + bytes) bytes; its budget (max_total_buffer_bytes) is \(limit), \(used) in use and \(reserved) being made")
        }
        reserved += bytes
    }

    /// Lets go of a reservation (the buffer was made, or failed).
    mutating func cancel(_ bytes: UInt64) {
        precondition(bytes <= reserved, "budget: \(bytes) cancelled with \(reserved) reserved")
        reserved -= bytes
    }

    /// Counts a buffer that now exists.
    mutating func commit(_ charge: BudgetCharge) {
        if charge.locked { locked += charge.bytes } else { unlocked += charge.bytes }
        if charge.hugepages { hugepages += charge.bytes }
    }

    /// Returns what an unmapped buffer cost.
    mutating func release(_ charge: BudgetCharge) {
        if charge.locked { locked -= charge.bytes } else { unlocked -= charge.bytes }
        if charge.hugepages { hugepages -= charge.bytes }
    }
}
