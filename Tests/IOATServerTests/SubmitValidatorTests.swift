import IOATConformance
import IOATProtocol
@testable import IOATServer
import IOATSystem
import Testing

/// Buffers by handle, for the validator.
struct ModelBuffers: BufferLookup {
    var byHandle: [UInt32: SharedBuffer] = [:]
    /// The validator sees what a connection sees; the slot is the handle (no table here).
    func buffer(_ handle: UInt32) -> OpenBuffer? { byHandle[handle].map { OpenBuffer($0, slot: $0.handle) } }

    /// A buffer of `size` bytes under `handle` (a real mapping of a memfd: the validator reads lists from it).
    mutating func add(_ handle: UInt32, size: Int, readOnly: Bool = false) throws {
        let fd = try Memfd.create(name: "validator-\(handle)", size: UInt64(size), hugepages: false)
        byHandle[handle] = SharedBuffer(handle: handle, mapping: try Mapping(fd: fd, length: size, writable: true, populate: false),
                                        flags: readOnly ? [.readOnly] : [], pageSize: 4096, registration: nil)
    }
}

/// Every opcode.
let everything = ChannelInfo(index: 0, engine: .cpu, hardwareVersion: 0, opcodes: ~0, maxTransfer: 1 << 30, maxDepth: 1024,
                             maxCoalesceMicroseconds: 0, name: "model")

/// A SUBMIT body of `descriptors`, validated against `buffers`; the refusal, or nil.
func validate(_ descriptors: [Descriptor], _ buffers: ModelBuffers, channel: ChannelInfo = everything) -> ProtocolError? {
    var w = WireWriter()
    for d in descriptors { d.encode(into: &w) }
    var ops: [PendingOp] = []
    return w.bytes.withUnsafeBytes { body -> ProtocolError? in
        let view = SubmitView(queue: 1, count: descriptors.count, body: body)
        do throws(ProtocolError) {
            _ = try SubmitValidator(channel: channel).validate(view, buffers: buffers, into: &ops)
            return nil
        } catch {
            return error
        }
    }
}

@Suite("submit validator: one descriptor at a time, without sockets (SPEC.md §6.3)")
struct SubmitValidatorTests {
    @Test("the ERROR index is the first bad descriptor, whichever check it fails")
    func firstBadDescriptor() throws {
        var buffers = ModelBuffers()
        try buffers.add(10, size: 8192)
        let fill = Descriptor.fill(BufferAddress(handle: 10, offset: 0), length: 64, pattern: 1)
        let foreign = Descriptor.copy(from: BufferAddress(handle: 10, offset: 0), to: BufferAddress(handle: 77, offset: 0), length: 8)
        let dualcastHandlesZero = Descriptor(opcode: .dualcast, length: 8)
        let error = try #require(validate([fill, foreign, dualcastHandlesZero], buffers))
        #expect(error.code == .badHandle && error.index == 1, "\(error)")
        #expect(error.message.contains("77"))
        // The other way round: the shape error comes first.
        let shape = try #require(validate([fill, dualcastHandlesZero, foreign], buffers))
        #expect(shape.code == .badHandle && shape.index == 1 && shape.message.contains("0 is never valid"), "\(shape)")
        // An undefined opcode after a range error: the range error, at its index.
        var unknown = [UInt8](repeating: 0, count: 64)
        unknown[0] = 0xEE
        let bad = Descriptor.copy(from: BufferAddress(handle: 10, offset: 8000), to: BufferAddress(handle: 10, offset: 0), length: 400)
        let outOfRange = try #require(validate([fill, bad], buffers))
        #expect(outOfRange.code == .outOfRange && outOfRange.index == 1)
    }

    @Test("UNSUPPORTED_OPCODE is checked with the descriptor it concerns")
    func unsupported() throws {
        var buffers = ModelBuffers()
        try buffers.add(10, size: 8192)
        let copyOnly = ChannelInfo(index: 3, engine: .cpu, hardwareVersion: 0, opcodes: Opcode.copy.capabilityBit | Opcode.null.capabilityBit,
                                   maxTransfer: 1 << 20, maxDepth: 64, maxCoalesceMicroseconds: 0, name: "copy-only")
        let ops: [Descriptor] = [.null(), .fill(BufferAddress(handle: 10, offset: 0), length: 8, pattern: 0), .copy(
            from: BufferAddress(handle: 99, offset: 0), to: BufferAddress(handle: 10, offset: 0), length: 8)]
        let error = try #require(validate(ops, buffers, channel: copyOnly))
        #expect(error.code == .unsupportedOpcode && error.index == 1, "\(error)")
    }

    @Test("XOR and COPY_SG lists are read once from the buffer, with their entry checks and a 64-bit overflow check")
    func lists() throws {
        var buffers = ModelBuffers()
        try buffers.add(10, size: 1 << 16)
        try buffers.add(11, size: 4096, readOnly: true)
        let list = buffers.byHandle[10]!.mapping.unsafeBytes
        func write(_ entries: [UInt8], at offset: Int) { for (i, b) in entries.enumerated() { list[offset + i] = b } }
        // XOR: two sources, the second with a non-zero reserved field.
        var w = WireWriter()
        XorSource(BufferAddress(handle: 10, offset: 0)).encode(into: &w)
        w.write(UInt32(10))
        w.write(UInt32(1))
        w.write(UInt64(64))
        write(w.bytes, at: 32768)
        let xor = Descriptor(opcode: .xor, length: 64, destination: BufferAddress(handle: 10, offset: 4096),
                             auxiliary: BufferAddress(handle: 10, offset: 32768), arg: 2)
        let reserved = try #require(validate([.null(), xor], buffers))
        #expect(reserved.code == .reservedNotZero && reserved.index == 1 && reserved.message.contains("XOR source 1"))
        // COPY_SG: an entry whose offset + length wraps 2^64 is OVERFLOW; a read-only destination is READ_ONLY.
        w = WireWriter()
        ScatterGatherEntry(source: BufferAddress(handle: 10, offset: 8), destination: BufferAddress(handle: 10, offset: 0),
                           length: UInt64.max).encode(into: &w)
        ScatterGatherEntry(source: BufferAddress(handle: 10, offset: 0), destination: BufferAddress(handle: 10, offset: 0),
                           length: 2).encode(into: &w)
        write(w.bytes, at: 40960)
        let wrapping = Descriptor(opcode: .copySG, length: 1, auxiliary: BufferAddress(handle: 10, offset: 40960), arg: 2)
        let first = try #require(validate([wrapping], buffers))
        #expect(first.code == .overflow && first.message.contains("entry 0 source"), "\(first)")
        w = WireWriter()
        ScatterGatherEntry(source: BufferAddress(handle: 10, offset: 0), destination: BufferAddress(handle: 11, offset: 0),
                           length: 8).encode(into: &w)
        write(w.bytes, at: 40960)
        let toReadOnly = Descriptor(opcode: .copySG, length: 8, auxiliary: BufferAddress(handle: 10, offset: 40960), arg: 1)
        #expect(validate([toReadOnly], buffers)?.code == .readOnly)
        // A good list passes, and the op keeps its own copy of the entries.
        w = WireWriter()
        ScatterGatherEntry(source: BufferAddress(handle: 10, offset: 0), destination: BufferAddress(handle: 10, offset: 8192),
                           length: 8).encode(into: &w)
        write(w.bytes, at: 40960)
        let good = Descriptor(opcode: .copySG, length: 8, auxiliary: BufferAddress(handle: 10, offset: 40960), arg: 1)
        #expect(validate([good], buffers) == nil)
    }
}

@Suite("submit validator: the common-descriptor path accepts only what the full path accepts")
struct CommonPathTests {
    /// Descriptors near the common ones: a valid COPY, FILL or NULL with one to three fields changed to
    /// values that matter (0, a bound, a bit, a stranger's handle, anything).
    static func sweep(count: Int) -> [[UInt8]] {
        var rng = SplitMix64(seed: 0x10A7_D000)  // fixed: a failing descriptor is the same on every run
        var out: [[UInt8]] = []
        let widths = [(0, 1), (1, 1), (2, 2), (4, 4), (8, 8), (16, 8), (24, 8), (32, 4), (36, 4), (40, 8), (48, 8), (56, 8)]
        for _ in 0..<count {
            var d = [UInt8](repeating: 0, count: Descriptor.size)
            func put(_ value: UInt64, _ at: Int, _ width: Int) {
                for b in 0..<width { d[at + b] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(b))) }
            }
            let opcode = [0, 1, 1, 1, 2, 2, 3, 5, 9, 200][Int.random(in: 0..<10, using: &rng)]
            put(UInt64(opcode), 0, 1)
            put(UInt64.random(in: 0...UInt64.max, using: &rng), 8, 8)  // cookie
            if opcode == 1 || opcode == 2 {
                put(UInt64.random(in: 1...5000, using: &rng), 16, 8)
                put(10, 32, 4)
                put(UInt64.random(in: 0...4096, using: &rng), 40, 8)
                if opcode == 1 {
                    put([10, 11, 12][Int.random(in: 0..<3, using: &rng)], 4, 4)
                    put(UInt64.random(in: 0...4096, using: &rng), 24, 8)
                } else {
                    put(UInt64.random(in: 0...UInt64.max, using: &rng), 56, 8)
                }
            }
            put(UInt64([0, 1, 2, 4, 3, 7][Int.random(in: 0..<6, using: &rng)]), 2, 2)
            for _ in 0..<Int.random(in: 0...3, using: &rng) {
                let (at, width) = widths[Int.random(in: 0..<widths.count, using: &rng)]
                let value: UInt64 = [0, 1, 8, 10, 11, 12, 99, 4096, 8192, UInt64.max, UInt64.max - 7, 1 << 31,
                                     UInt64.random(in: 0...UInt64.max, using: &rng)][Int.random(in: 0..<13, using: &rng)]
                put(value, at, width)
            }
            out.append(d)
        }
        return out
    }

    @Test("on 200,000 descriptors around COPY, FILL and NULL: nil, or the op `resolve` makes, field for field")
    func agrees() throws {
        var buffers = ModelBuffers()
        try buffers.add(10, size: 8192)
        try buffers.add(11, size: 4096, readOnly: true)
        try buffers.add(12, size: 64)
        let copyAndNull = ChannelInfo(index: 1, engine: .cpu, hardwareVersion: 0, opcodes: Opcode.copy.capabilityBit | Opcode.null.capabilityBit,
                                      maxTransfer: 1 << 20, maxDepth: 64, maxCoalesceMicroseconds: 0, name: "copy-and-null")
        var taken = [0, 0, 0], refused = 0
        for (n, bytes) in Self.sweep(count: 200_000).enumerated() {
            let channel = n % 5 == 0 ? copyAndNull : everything
            let validator = SubmitValidator(channel: channel)
            try bytes.withUnsafeBytes { raw in
                let full: PendingOp?
                do throws(ProtocolError) {
                    full = try validator.resolve(raw, at: 0, index: 0, version: Wire.version, buffers: buffers)
                } catch {
                    full = nil
                }
                guard let common = validator.resolveCommon(raw, at: 0, buffers: buffers) else {
                    if full == nil { refused += 1 }
                    return
                }
                let op = try #require(full, "the common path took a descriptor the full path refuses: \(bytes)")
                #expect(common.cookie == op.cookie && common.opcode == op.opcode && common.flags == op.flags
                        && common.length == op.length && common.arg == op.arg, "\(bytes)")
                #expect(common.source?.pointer == op.source?.pointer && common.source?.slot == op.source?.slot, "\(bytes)")
                #expect(common.destination?.pointer == op.destination?.pointer && common.destination?.slot == op.destination?.slot, "\(bytes)")
                #expect(op.auxiliary == nil && op.sources == nil && op.segments == nil, "\(bytes)")
                taken[Int(op.opcode.rawValue)] += 1
            }
        }
        // The sweep reaches every branch: each common opcode taken, and refusals.
        #expect(taken.allSatisfy { $0 > 1000 } && refused > 10_000, "taken (NULL, COPY, FILL) \(taken), refused by both \(refused)")
    }
}
