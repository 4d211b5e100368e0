// libFuzzer target over the server's side of a ring queue (IOATProtocol's RingConsumer), built by
// `make fuzz` with `swiftc -sanitize=fuzzer,address` outside SwiftPM. The input is a script that plays
// a hostile client: it writes any bytes anywhere in the ring memory (indices, flags, descriptors, the
// header itself) between the consumer's steps, so descriptors and indices change under it. The consumer
// must never trap or touch memory outside the ring, must refuse impossible indices with RING_BROKEN
// (and only then), and must keep its own accounting whole: it never takes more than the ring holds,
// never writes a record over one the client has not consumed, and every descriptor it copies out is
// one the decoder either accepts or refuses with a ProtocolError.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRing(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var script = UnsafeRawBufferPointer(start: data, count: size)[...]
    func next() -> UInt8? { script.popFirst() }
    let depth = UInt32(next() ?? 8) % 64 + 1
    let layout = RingLayout(queue: 7, depth: depth)
    let memory = UnsafeMutableRawPointer.allocate(byteCount: layout.size, alignment: 4096)
    defer { memory.deallocate() }
    memory.initializeMemory(as: UInt8.self, repeating: 0, count: layout.size)
    layout.writeHeader(to: memory)
    var consumer = RingConsumer(layout: layout, base: memory)
    let scratch = UnsafeMutableRawPointer.allocate(byteCount: Int(layout.submissionCount) * 64, alignment: 64)
    defer { scratch.deallocate() }
    var outstanding = 0  // ops taken whose records were not consumed (the server's credits in use)
    var broken = false

    while let command = next(), !broken {
        switch command % 4 {
        case 0, 1:
            // The client writes up to 16 bytes at any offset of the ring.
            guard let hi = next(), let lo = next(), let count = next() else { break }
            let offset = (Int(hi) << 8 | Int(lo)) % layout.size
            let n = min(Int(count % 17), layout.size - offset)
            for i in 0..<n { memory.storeBytes(of: next() ?? 0, toByteOffset: offset + i, as: UInt8.self) }
        case 2:
            // The server looks: reclaims, takes what its credits allow, decodes each copy.
            do throws(ProtocolError) {
                let before = consumer.unconsumed
                let consumed = try consumer.reclaim()
                precondition(consumed <= before, "reclaimed \(consumed) records of \(before) written")
                outstanding -= consumed
                let waiting = try consumer.available()
                precondition(waiting <= Int(layout.submissionCount), "available \(waiting) beyond the ring")
                let take = min(waiting, Int(depth) - outstanding)
                consumer.take(take, into: scratch)
                for i in 0..<take {
                    let bytes = UnsafeRawBufferPointer(start: scratch + i * 64, count: 64)
                    do throws(ProtocolError) {
                        _ = try SubmitView(queue: 7, count: 1, body: bytes, version: 3).descriptor(at: 0)
                    } catch {
                        precondition(!error.message.isEmpty, "refusal without a message")
                    }
                }
                outstanding += take
            } catch {
                precondition(error.code == .ringBroken, "a ring step failed with \(error.code.name)")
                broken = true
            }
        default:
            // Some taken ops complete: their records go in, never over an unconsumed one.
            let complete = min(Int(next() ?? 1) % 8, outstanding - consumer.unconsumed)
            for i in 0..<max(0, complete) {
                let pushed = consumer.push(CompletionRecord(cookie: UInt64(i), status: .success, opcode: 1, result: 0, bytesDone: 0))
                precondition(pushed, "no completion slot for an outstanding op: credits and slots disagree")
            }
            precondition(consumer.unconsumed <= Int(layout.completionCount))
            _ = consumer.publish()
            consumer.setNeedWakeup(command & 0x80 != 0)
        }
    }
    return 0
}
