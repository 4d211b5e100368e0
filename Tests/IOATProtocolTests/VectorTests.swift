import Foundation
import IOATProtocol
import Testing

/// Loads protocol/vectors/*.json: the packets a Python encoder wrote from SPEC.md alone.
enum Vectors {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("protocol/vectors")

    struct Vector: CustomTestStringConvertible, Sendable {
        let name: String
        let bytes: [UInt8]
        let type: String?
        let requestID: UInt64?
        let fieldsJSON: String?
        let error: String?
        let version: UInt16
        var testDescription: String { name }
    }

    static func load(_ file: String) -> [Vector] {
        guard let data = try? Data(contentsOf: directory.appendingPathComponent(file)),
            let doc = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let list = doc["vectors"] as? [[String: Any]]
        else { return [] }
        return list.map { v in
            let fields = v["fields"].flatMap { try? JSONSerialization.data(withJSONObject: $0, options: [.sortedKeys]) }
            return Vector(name: v["name"] as! String, bytes: hexBytes(v["hex"] as! String), type: v["type"] as? String,
                          requestID: (v["request_id"] as? NSNumber)?.uint64Value,
                          fieldsJSON: fields.map { String(decoding: $0, as: UTF8.self) }, error: v["error"] as? String,
                          version: (v["version"] as? NSNumber)?.uint16Value ?? 1)
        }
    }

    static func hexBytes(_ hex: String) -> [UInt8] {
        var out: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            out.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        return out
    }

    static let valid = load("valid.json")
    static let invalid = load("invalid.json")
}

/// Turns a decoded message into the vectors' field shape, with every integer as a decimal string
/// (so values above 2^53 compare exactly).
func fields(of message: Message) throws -> Any {
    func n<T: BinaryInteger>(_ v: T) -> String { "\(v)" }
    switch message {
    case .hello(let h): return ["min_version": n(h.minVersion), "max_version": n(h.maxVersion), "features": n(h.features)]
    case .alloc(let a):
        let pages = switch a.pages {
        case .preferHuge: "prefer"
        case .requireHuge: "require"
        case .normal: "none"
        }
        return ["size": n(a.size), "pages": pages]
    case .register, .freeReply, .closeReply: return [String: Any]()
    case .status(let page):
        guard let page else { return [String: Any]() }
        return ["client_from": n(page.clientFrom), "tenant_from": n(page.tenantFrom)]
    case .free(let handle): return ["handle": n(handle)]
    case .open(let channel, let depth): return ["channel": n(channel), "depth": n(depth)]
    case .close(let queue): return ["queue": n(queue)]
    case .submit(let s):
        var list: [[String: String]] = []
        for i in 0..<s.count {
            let d = try s.descriptor(at: i)
            var f = ["opcode": d.opcode.name, "flags": n(d.flags.rawValue), "cookie": n(d.cookie), "length": n(d.length),
                     "src_handle": n(d.source.handle), "src_offset": n(d.source.offset),
                     "dst_handle": n(d.destination.handle), "dst_offset": n(d.destination.offset), "arg": n(d.arg)]
            if s.version >= 2 {
                f["aux_handle"] = n(d.auxiliary.handle)
                f["aux_offset"] = n(d.auxiliary.offset)
            }
            list.append(f)
        }
        return ["queue": n(s.queue), "descriptors": list]
    case .helloReply(let r):
        return ["version": n(r.version), "max_message": n(r.maxMessage), "max_descriptors": n(r.maxDescriptors),
                "max_queue_depth": n(r.maxQueueDepth), "max_queues": n(r.maxQueues), "max_buffers": n(r.maxBuffers),
                "max_buffer_bytes": n(r.maxBufferBytes), "hugepage_size": n(r.hugepageSize),
                "channels": r.channels.map { c in
                    ["index": n(c.index), "engine": n(c.engine.rawValue), "hw_version": n(c.hardwareVersion), "opcodes": n(c.opcodes),
                     "max_transfer": n(c.maxTransfer), "max_depth": n(c.maxDepth), "max_coalesce_us": n(c.maxCoalesceMicroseconds),
                     "name": c.name]
                }]
    case .allocReply(let b), .registerReply(let b):
        return ["handle": n(b.handle), "flags": n(b.flags.rawValue), "size": n(b.size), "page_size": n(b.pageSize)]
    case .openReply(let o): return ["queue": n(o.queue), "channel": n(o.channel), "depth": n(o.depth)]
    case .statusReply(let json): return ["json": json]
    case .completion(let c):
        var list: [[String: String]] = []
        for i in 0..<c.count {
            let r = try c.record(at: i)
            list.append(["cookie": n(r.cookie), "status": n(r.status.rawValue), "opcode": n(r.opcode), "result": n(r.result),
                         "bytes_done": n(r.bytesDone)])
        }
        return ["queue": n(c.queue), "records": list]
    case .goodbye(let drain): return ["drain_ms": n(drain)]
    case .restarted(let notice): return ["lost": "\(notice.lost)", "restarts": n(notice.restarts)]
    case .resync, .resyncReply: return [String: Any]()
    case .reserve(let queue, let credits, let noWait): return ["queue": n(queue), "credits": n(credits), "no_wait": "\(noWait)"]
    case .reserveReply(let free): return ["free_credits": n(free)]
    case .setCoalesce(let queue, let microseconds): return ["queue": n(queue), "microseconds": n(microseconds)]
    case .coalesceReply(let microseconds): return ["microseconds": n(microseconds)]
    case .ring(let queue): return ["queue": n(queue)]
    case .ringReply(let r):
        return ["queue": n(r.queue), "sq_entries": n(r.submissionEntries), "cq_entries": n(r.completionEntries), "size": n(r.size)]
    case .error(let e): return ["code": e.code.name, "index": n(e.index), "message": e.message, "queue": n(e.queue)]
    }
}

/// Every JSON number as a decimal string, so expected and decoded fields compare as text.
func stringifyNumbers(_ value: Any) -> Any {
    switch value {
    case let d as [String: Any]: return d.mapValues(stringifyNumbers)
    case let a as [Any]: return a.map(stringifyNumbers)
    case let number as NSNumber: return number.stringValue
    default: return value
    }
}

func canonicalJSON(_ value: Any) throws -> String {
    String(decoding: try JSONSerialization.data(withJSONObject: stringifyNumbers(value), options: [.sortedKeys]), as: UTF8.self)
}

@Suite("protocol vectors")
struct VectorTests {
    @Test("the vector files load")
    func filesLoad() {
        #expect(Vectors.valid.count >= 20)
        #expect(Vectors.invalid.count >= 50)
    }

    @Test("valid vectors decode to their fields and re-encode to the same bytes", arguments: Vectors.valid)
    func valid(_ vector: Vectors.Vector) throws {
        try vector.bytes.withUnsafeBytes { raw in
            let framing: UInt16 = vector.type == "HELLO" || vector.type == "HELLO_OK" ? 1 : vector.version
            let (header, message) = try Message.decode(raw, version: framing, maxDescriptors: 512)
            #expect(MessageType(rawValue: header.type)?.name == vector.type)
            #expect(header.requestID == vector.requestID)
            let expected = try JSONSerialization.jsonObject(with: Data(vector.fieldsJSON!.utf8))
            #expect(try canonicalJSON(fields(of: message)) == canonicalJSON(expected))
            #expect(message.encode(requestID: header.requestID, version: vector.version) == vector.bytes)
        }
    }

    @Test("invalid vectors fail with their error code", arguments: Vectors.invalid)
    func invalid(_ vector: Vectors.Vector) {
        vector.bytes.withUnsafeBytes { raw in
            do throws(ProtocolError) {
                _ = try Message.decode(raw, version: vector.version, maxDescriptors: 512)
                Issue.record("decoded without error; expected \(vector.error!)")
            } catch {
                #expect(error.code.name == vector.error, "\(error)")
                #expect(!error.message.isEmpty)
            }
        }
    }

    @Test("SPEC.md §7's error table and the codec agree: every row's value and name, distinct, and no code beyond it")
    func errorCodes() throws {
        // The rows of the table in §7: "| 13 | `BAD_HANDLE` | condition |".
        let specPath = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("protocol/SPEC.md").path
        let spec = try String(contentsOfFile: specPath, encoding: .utf8)
        let section = try #require(spec.components(separatedBy: "## 7. Errors").dropFirst().first?.components(separatedBy: "\n## ").first)
        var rows: [(UInt32, String)] = []
        for line in section.split(separator: "\n") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count >= 3, let value = UInt32(cells[0]), cells[1].hasPrefix("`") else { continue }
            // The name is the text between the first two backticks ("`BAD_PERIOD` *(v2)*").
            rows.append((value, String(cells[1].split(separator: "`").first ?? "")))
        }
        #expect(rows.count >= 35, "the table has \(rows.count) rows")
        #expect(Set(rows.map(\.0)).count == rows.count, "a value appears twice in the table")
        #expect(Set(rows.map(\.1)).count == rows.count, "a name appears twice in the table")
        for (value, name) in rows {
            #expect(ErrorCode(rawValue: value).name == name, "code \(value): the codec says \(ErrorCode(rawValue: value).name), SPEC.md \(name)")
            #expect(ErrorCode(name: name) == ErrorCode(rawValue: value))
        }
        #expect(ErrorCode.all.map(\.rawValue) == rows.map(\.0), "the codec knows codes the table does not, or the reverse")
        #expect(ErrorCode.all.filter(\.closesConnection) == [.badMagic, .unsupportedVersion])
    }
}
