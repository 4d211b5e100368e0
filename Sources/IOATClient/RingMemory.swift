import CIOATRing
import Glibc
import IOATProtocol
import IOATSystem

/// The client's side of one ring queue (SPEC.md §5.10): the mapping RING_OK sent, the doorbell, and the
/// C view `protocol/ioatd_ring.h` works on. Every ring step below is that header's; this only turns
/// Swift values into slots and records into Swift values.
final class RingMemory: @unchecked Sendable {
    let mapping: Mapping
    let doorbell: FileDescriptor
    /// The C view; the submitting side owns the submission fields and the reaping side the completion ones.
    let ring: UnsafeMutablePointer<ioatd_ring>

    init(reply: RingReply, memfd: FileDescriptor, doorbell: FileDescriptor) throws(IOATError) {
        guard reply.size >= UInt64(RingLayout.headerSize), reply.size <= 1 << 30 else {
            throw .invalidReply("RING_OK: ring size \(reply.size) is not plausible")
        }
        do throws(SystemError) {
            mapping = try Mapping(fd: memfd, length: Int(reply.size), writable: true, populate: true)
        } catch {
            throw .system(error)
        }
        self.doorbell = doorbell
        ring = .allocate(capacity: 1)
        ring.initialize(to: ioatd_ring())
        guard ioatd_ring_attach(ring, mapping.unsafeBase, Int(reply.size), doorbell.rawValue) == 0 else {
            throw .invalidReply("RING_OK: the memory is not a ring of layout \(RingLayout.layoutVersion)")
        }
    }

    deinit {
        ring.deinitialize(count: 1)
        ring.deallocate()
    }

    var depth: Int { Int(ring.pointee.depth) }
    var submissionEntries: Int { Int(ring.pointee.sq_entries) }

    /// Free submission slots.
    var space: Int { Int(ioatd_ring_sq_space(ring)) }

    /// Writes `d` into the next free slot; false when the ring is full.
    func push(_ d: Descriptor) -> Bool {
        guard let slot = ioatd_ring_get_desc(ring) else { return false }
        slot.pointee = ioatd_desc(
            opcode: d.opcode.rawValue, reserved: 0, flags: d.flags.rawValue, src_handle: d.source.handle, cookie: d.cookie,
            length: d.length, src_offset: d.source.offset, dst_handle: d.destination.handle, aux_handle: d.auxiliary.handle,
            dst_offset: d.destination.offset, aux_offset: d.auxiliary.offset, arg: d.arg)
        return true
    }

    /// Writes 64 raw bytes into the next free slot (for tests of the server's checks); false when full.
    func push(raw bytes: UnsafeRawBufferPointer) -> Bool {
        guard bytes.count == Descriptor.size, let slot = ioatd_ring_get_desc(ring) else { return false }
        UnsafeMutableRawPointer(slot).copyMemory(from: bytes.baseAddress!, byteCount: Descriptor.size)
        return true
    }

    /// Publishes what was pushed and rings if the server sleeps.
    func submit() throws(IOATError) {
        let rc = ioatd_ring_submit(ring)
        if rc < 0 { throw .system(SystemError("ring doorbell", errno: -rc)) }
    }

    /// Records ready to read; never more than the ring holds (a process that scribbles on its own ring
    /// may write any cq_tail, and this must not read past the ring for it).
    var ready: Int { min(Int(ioatd_ring_ready(ring)), Int(ring.pointee.cq_entries)) }

    /// The i-th ready record.
    func record(_ i: Int) -> CompletionRecord {
        let r = ioatd_ring_record(ring, UInt32(i))!.pointee
        return CompletionRecord(cookie: r.cookie, status: CompletionStatus(rawValue: r.status), opcode: r.opcode,
                                result: r.result, bytesDone: r.bytes_done)
    }

    /// Hands `n` read records back.
    func consume(_ n: Int) {
        _ = ioatd_ring_consume(ring, UInt32(n))
    }

    /// The code the server broke the ring with, if it did.
    var brokenCode: ErrorCode? {
        let code = ioatd_ring_error(ring)
        return code == 0 ? nil : ErrorCode(rawValue: code)
    }

    /// Asks to be woken when `want` records are ready; true when the caller may sleep.
    func arm(_ want: Int) -> Bool { ioatd_ring_arm(ring, UInt32(max(1, want))) != 0 }

    /// Awake again: no more rings wanted; empties the doorbell.
    func disarm() { ioatd_ring_disarm(ring) }
}
