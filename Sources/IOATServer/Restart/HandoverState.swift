import Foundation
import IOATSystem

/// What the next instance needs, beside the stored descriptors, to carry on every connection: written
/// into a sealed memfd (JSON) and stored as `state.<serial>` whenever something a client was told about
/// changes (a connection, a handshake, a buffer, a queue, a ring, a coalescing period), never per op.
/// The newest state that reads wins; a format this server does not read is refused as a whole.
struct HandoverState: Codable, Equatable {
    /// The format this code writes and reads. A change that an older ioatd could misread takes a new number.
    static var currentFormat: Int { IOATServer.stateFormat }

    var format: Int
    /// The ioatd version that wrote it (for the log).
    var writer: String
    /// Increases with every write.
    var serial: UInt64
    /// The last buffer or queue handle given out, and the last connection and ring ids.
    var handleCounter: UInt32
    var lastConnection: UInt64
    var lastRingToken: UInt64
    var connections: [ConnectionState]

    struct ConnectionState: Codable, Equatable {
        var id: UInt64
        /// The negotiated version; nil before HELLO_OK.
        var version: UInt16?
        var features: UInt64
        /// Restarts the connection lived through.
        var restarts: UInt32
        /// Whether the writer handed it over with nothing taken and unanswered (no op in flight, no reply
        /// owed); false in every state written while serving, which a crash leaves behind.
        var settled: Bool
        var buffers: [BufferState]
        var queues: [QueueState]
    }

    struct BufferState: Codable, Equatable {
        var handle: UInt32
        /// The stored memfd's name.
        var file: String
        /// ALLOC (the server made it) or REGISTER (the client's memfd).
        var allocated: Bool
        var size: UInt64
        var pageSize: UInt64
        var flags: UInt32
    }

    struct QueueState: Codable, Equatable {
        var id: UInt32
        var channel: Int
        var depth: Int
        var coalesceNanoseconds: UInt64
        /// The ring's token (its memory and doorbell are stored under names made from it), for a ring queue.
        var ring: UInt64?
    }

    /// The state as a sealed memfd.
    func memfd() throws -> FileDescriptor {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let bytes = try encoder.encode(self)
        let fd = try Memfd.create(name: "ioatd-state", size: UInt64(bytes.count), hugepages: false)
        let written = bytes.withUnsafeBytes { pwrite(fd.rawValue, $0.baseAddress, $0.count, 0) }
        guard written == bytes.count else { throw SystemError("writing the state memfd", errno: errno) }
        try Memfd.addSeals([.shrink, .grow, .write, .seal], to: fd)
        return fd
    }

    /// Why a stored state cannot be used.
    enum ReadError: Error, CustomStringConvertible {
        case unreadable(String)
        case format(Int, writer: String)

        var description: String {
            switch self {
            case .unreadable(let why): "the state cannot be read: \(why)"
            case .format(let format, let writer):
                "the state is format \(format), written by ioatd \(writer); this ioatd reads format \(HandoverState.currentFormat)"
            }
        }
    }

    /// Reads a state memfd; refuses one that does not decode or whose format is not this code's.
    static func read(_ fd: FileDescriptor) throws(ReadError) -> HandoverState {
        let size: UInt64
        do throws(SystemError) {
            size = try fd.size()
        } catch {
            throw .unreadable("\(error)")
        }
        guard size > 0, size < 1 << 30 else { throw .unreadable("its size is \(size) bytes") }
        var bytes = [UInt8](repeating: 0, count: Int(size))
        let got = bytes.withUnsafeMutableBytes { pread(fd.rawValue, $0.baseAddress, $0.count, 0) }
        guard got == Int(size) else { throw .unreadable("read \(got) of \(size) bytes") }
        // The format first, on its own, so that a newer layout is named as such, not as garbage.
        struct Versioned: Decodable {
            var format: Int
            var writer: String?
        }
        let decoder = JSONDecoder()
        guard let versioned = try? decoder.decode(Versioned.self, from: Data(bytes)) else {
            throw .unreadable("it is not a JSON object with a format number")
        }
        guard versioned.format == currentFormat else { throw .format(versioned.format, writer: versioned.writer ?? "unknown") }
        do {
            return try decoder.decode(HandoverState.self, from: Data(bytes))
        } catch {
            throw .unreadable("\(error)")
        }
    }
}
