import IOATProtocol

/// Where a validator finds a connection's buffers.
protocol BufferLookup {
    /// The buffer open under `handle`, or nil.
    func buffer(_ handle: UInt32) -> OpenBuffer?
}

/// Checks a SUBMIT's descriptors and resolves them into ops (SPEC.md §6.3), with no syscall and no
/// socket: descriptor by descriptor, every check of one descriptor — its shape, whether the channel runs
/// it, every range it names — before the next, so the ERROR's `index` is the first bad descriptor
/// whatever made it bad. XOR source lists and COPY_SG entry lists are read out of the client's buffer
/// once, here, into the op; nothing is decoded twice.
struct SubmitValidator {
    /// The channel the queue runs on.
    let channel: ChannelInfo

    /// Resolves every descriptor of `submit` into `ops` (emptied first; its capacity is reused). Returns
    /// whether any descriptor has NO_WAIT. Throws the first refusal, naming the descriptor.
    func validate(_ submit: SubmitView, buffers: some BufferLookup, into ops: inout [PendingOp]) throws(ProtocolError) -> Bool {
        ops.removeAll(keepingCapacity: true)
        var noWait = false
        for i in 0..<submit.count {
            if let op = resolveCommon(submit.body, at: i * Descriptor.size, buffers: buffers) {
                ops.append(op.pending)
            } else {
                ops.append(try resolve(submit.body, at: i * Descriptor.size, index: i, version: submit.version, buffers: buffers))
            }
            if ops[i].flags.contains(.noWait) { noWait = true }
        }
        return noWait
    }

    /// Checks and resolves the descriptor at `offset` in `bytes`, the `index`th of its SUBMIT or of its
    /// look at a ring: every check of SPEC.md §6.3, in order. Both ingresses come here with every
    /// descriptor `resolveCommon` does not take, so every refusal is made and worded here.
    func resolve(_ bytes: UnsafeRawBufferPointer, at offset: Int, index: Int, version: UInt16,
                 buffers: some BufferLookup) throws(ProtocolError) -> PendingOp {
        let d = try Descriptor.decode(bytes, at: offset, index: UInt32(index), version: version)
        guard channel.supports(d.opcode) else {
            throw ProtocolError(.unsupportedOpcode, "channel \(channel.index) (\(channel.name)) does not run \(d.opcode.name)",
                                index: UInt32(index))
        }
        return try resolve(d, index: index, buffers: buffers)
    }

    /// The common descriptors — COPY, FILL and NULL with no flag but INTERRUPT, FENCE and NO_WAIT —
    /// checked and resolved straight from their bytes, without a `Descriptor` in between. Nil when the
    /// descriptor is anything else or breaks any rule: then `resolve` makes every check in order and
    /// names the first that fails. So this only ever accepts what `resolve` accepts, as the same op
    /// (`SubmitValidatorTests` compares the two on every descriptor of the vectors and of a sweep).
    @inline(__always)
    func resolveCommon(_ bytes: UnsafeRawBufferPointer, at offset: Int, buffers: some BufferLookup) -> CommonOp? {
        guard offset >= 0, offset <= bytes.count - Descriptor.size, let base = bytes.baseAddress else { return nil }
        let p = base + offset
        func field<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T { T(littleEndian: p.loadUnaligned(fromByteOffset: at, as: T.self)) }
        let head = field(0, UInt32.self)  // opcode, reserved byte, flags
        let rawFlags = UInt16(truncatingIfNeeded: head >> 16)
        let simpleFlags = Descriptor.Flags.interrupt.union(.fence).union(.noWait).rawValue
        guard head & 0xFF00 == 0, rawFlags & ~simpleFlags == 0, field(36, UInt32.self) == 0, field(48, UInt64.self) == 0 else {
            return nil
        }
        let length = field(16, UInt64.self), arg = field(56, UInt64.self)
        let srcHandle = field(4, UInt32.self), srcOffset = field(24, UInt64.self)
        let dstHandle = field(32, UInt32.self), dstOffset = field(40, UInt64.self)
        var source: Placement? = nil, destination: Placement? = nil
        let opcode: Opcode
        switch UInt8(truncatingIfNeeded: head) {
        case Opcode.copy.rawValue:
            guard length > 0, arg == 0, channel.supports(.copy),
                let from = placeCommon(srcHandle, srcOffset, length, writing: false, buffers: buffers),
                let to = placeCommon(dstHandle, dstOffset, length, writing: true, buffers: buffers)
            else { return nil }
            (opcode, source, destination) = (.copy, from, to)
        case Opcode.fill.rawValue:
            guard length > 0, srcHandle == 0, srcOffset == 0, channel.supports(.fill),
                let to = placeCommon(dstHandle, dstOffset, length, writing: true, buffers: buffers)
            else { return nil }
            (opcode, destination) = (.fill, to)
        case Opcode.null.rawValue:
            guard length == 0, arg == 0, srcHandle == 0, srcOffset == 0, dstHandle == 0, dstOffset == 0, channel.supports(.null) else {
                return nil
            }
            opcode = .null
        default:
            return nil
        }
        return CommonOp(cookie: field(8, UInt64.self), opcode: opcode, flags: Descriptor.Flags(rawValue: rawFlags), source: source,
                        destination: destination, length: Int(clamping: length), arg: arg)
    }

    /// `place` for `resolveCommon`: nil instead of the error.
    @inline(__always)
    private func placeCommon(_ handle: UInt32, _ offset: UInt64, _ length: UInt64, writing: Bool, buffers: some BufferLookup) -> Placement? {
        guard handle != 0, let buffer = buffers.buffer(handle) else { return nil }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= buffer.size, !(writing && buffer.flags.contains(.readOnly)) else { return nil }
        return Placement(buffer, offset: Int(offset))
    }

    /// Resolves a descriptor's range in one of the connection's buffers (SPEC.md §6.3 step 4).
    private func place(_ address: BufferAddress, length: UInt64, role: String, index: Int, writing: Bool,
                       buffers: some BufferLookup) throws(ProtocolError) -> Placement {
        guard let buffer = buffers.buffer(address.handle) else {
            throw ProtocolError(.badHandle, "\(role) handle \(address.handle) is not open on this connection",
                                index: UInt32(index))
        }
        let (end, overflow) = address.offset.addingReportingOverflow(length)
        guard !overflow else {
            throw ProtocolError(.overflow, "\(role) offset \(address.offset) + length \(length) overflows 64 bits",
                                index: UInt32(index))
        }
        guard end <= buffer.size else {
            throw ProtocolError(.outOfRange,
                                "\(role) offset \(address.offset) + length \(length) exceeds buffer \(address.handle) (size \(buffer.size))",
                                index: UInt32(index))
        }
        if writing && buffer.flags.contains(.readOnly) {
            throw ProtocolError(.readOnly, "\(role) buffer \(address.handle) is registered read-only",
                                index: UInt32(index))
        }
        return Placement(buffer, offset: Int(address.offset))
    }

    /// Resolves every range a descriptor names.
    private func resolve(_ d: Descriptor, index i: Int, buffers: some BufferLookup) throws(ProtocolError) -> PendingOp {
        // The ranges are resolved into locals and the op is made once at the end: filling in a var op
        // field by field made the compiler copy it (and retain its buffers) on the way out.
        var source: Placement? = nil, destination: Placement? = nil, auxiliary: Placement? = nil
        var sources: [Placement]? = nil
        var segments: [(source: Placement, destination: Placement, length: Int)]? = nil
        if d.opcode.readsSource {
            source = try place(d.source, length: d.length, role: "source", index: i, writing: false, buffers: buffers)
        }
        if d.opcode.usesDestination {
            destination = try place(d.destination, length: d.length, role: "destination", index: i,
                                       writing: d.opcode.writesDestination, buffers: buffers)
        }
        switch d.opcode {
        case .dualcast:
            auxiliary = try place(d.auxiliary, length: d.length, role: "second destination", index: i, writing: true, buffers: buffers)
        case .crc32c, .copyCRC32C:
            // (A `where` here would bind to .copyCRC32C alone.)
            guard !d.flags.isDisjoint(with: .crcStoreOrTest) else { break }
            let store = d.flags.contains(.crcStore)
            if !d.flags.contains(.crcInline) {
                auxiliary = try place(d.auxiliary, length: 4, role: store ? "CRC store" : "CRC test", index: i, writing: store,
                                         buffers: buffers)
            } else {
                // Inline: STORE after the destination data (after the source for CRC32C), TEST against the
                // 4 bytes after the source (ioat(4) DMA_CRC_INLINE).
                let base = store && d.opcode == .copyCRC32C ? d.destination : d.source
                let (at, overflow) = base.offset.addingReportingOverflow(d.length)
                guard !overflow else {
                    throw ProtocolError(.overflow, "inline CRC at offset \(base.offset) + length \(d.length) overflows 64 bits",
                                        index: UInt32(i))
                }
                auxiliary = try place(BufferAddress(handle: base.handle, offset: at), length: 4,
                                         role: store ? "inline CRC store" : "inline CRC test", index: i, writing: store, buffers: buffers)
            }
        case .xor:
            let count = Int(d.arg)
            let at = try place(d.auxiliary, length: UInt64(count * XorSource.size), role: "XOR source list", index: i,
                               writing: false, buffers: buffers)
            let bytes = UnsafeRawBufferPointer(start: at.pointer, count: count * XorSource.size)
            var list: [Placement] = []
            list.reserveCapacity(count)
            for s in 0..<count {
                let entry = try XorSource.decode(bytes, entry: s, index: UInt32(i))
                list.append(try place(entry.address, length: d.length, role: "XOR source \(s)", index: i, writing: false,
                                      buffers: buffers))
            }
            sources = list
        case .copySG:
            let count = Int(d.arg)
            let list = try place(d.auxiliary, length: UInt64(count * ScatterGatherEntry.size), role: "COPY_SG entry list",
                                 index: i, writing: false, buffers: buffers)
            let bytes = UnsafeRawBufferPointer(start: list.pointer, count: count * ScatterGatherEntry.size)
            var entries: [(source: Placement, destination: Placement, length: Int)] = []
            entries.reserveCapacity(count)
            var total: UInt64 = 0
            // Entries are read once each, in list order, and run in that order (SPEC.md §6.2).
            for e in 0..<count {
                let entry = try ScatterGatherEntry.decode(bytes, entry: e, index: UInt32(i))
                let from = try place(entry.source, length: entry.length, role: "COPY_SG entry \(e) source", index: i,
                                       writing: false, buffers: buffers)
                let to = try place(entry.destination, length: entry.length, role: "COPY_SG entry \(e) destination",
                                            index: i, writing: true, buffers: buffers)
                // Each entry lies inside a buffer, so 64 of them cannot add up past 2^64; checked all the same.
                let (sum, overflow) = total.addingReportingOverflow(entry.length)
                guard !overflow else {
                    throw ProtocolError(.overflow, "COPY_SG entry lengths add up to more than 2^64 at entry \(e)",
                                        index: UInt32(i))
                }
                total = sum
                entries.append((from, to, Int(entry.length)))
            }
            guard total == d.length else {
                throw ProtocolError(.badLength, "COPY_SG length \(d.length) is not the sum of its entries (\(total))",
                                    index: UInt32(i))
            }
            segments = entries
        default:
            break
        }
        return PendingOp(cookie: d.cookie, opcode: d.opcode, flags: d.flags, source: source, destination: destination,
                         auxiliary: auxiliary, sources: sources, segments: segments, length: Int(clamping: d.length), arg: d.arg)
    }
}
