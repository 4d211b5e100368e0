// libFuzzer target over the wire decoder and validator (IOATProtocol), built by `make fuzz` with
// `swiftc -sanitize=fuzzer,address` outside SwiftPM. Any input must either decode or be refused with a
// ProtocolError: never trap, never read out of bounds. Whatever decodes (but HELLO_OK, whose NUL-padded
// channel names may carry bytes after the NUL) must re-encode to the very same bytes.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDecode(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    for version in [UInt16(1), 2] {
        do throws(ProtocolError) {
            let (header, message) = try Message.decode(bytes, version: version, maxDescriptors: 512)
            if case .submit(let view) = message {
                for i in 0..<view.count { _ = try view.descriptor(at: i) }
            }
            if case .completion(let view) = message {
                for i in 0..<view.count { _ = try view.record(at: i) }
            }
            if message.type != .helloReply {
                let again = message.encode(requestID: header.requestID, version: header.version)
                if again != Array(bytes) { fatalError("\(message.type.name) decoded but re-encodes differently") }
            }
        } catch {
            if error.message.isEmpty { fatalError("refusal without a message: \(error.code.name)") }
        }
    }
    return 0
}
