/// Little-endian reading from borrowed bytes. `read…` moves the cursor, `get…(at:)` does not;
/// short input returns `nil` (the caller turns that into the right wire error).
public struct WireReader {
    /// The bytes being read. Valid only while the caller keeps them alive.
    public let bytes: UnsafeRawBufferPointer
    /// Offset of the next byte `read…` consumes.
    public private(set) var cursor: Int

    /// Starts reading `bytes` at `cursor`.
    public init(_ bytes: UnsafeRawBufferPointer, cursor: Int = 0) {
        self.bytes = bytes
        self.cursor = cursor
    }

    /// Bytes left after the cursor.
    public var remaining: Int { bytes.count - cursor }

    /// Reads a little-endian integer at the cursor and advances past it.
    public mutating func read<T: FixedWidthInteger>(_: T.Type = T.self) -> T? {
        guard let value: T = get(at: cursor) else { return nil }
        cursor += MemoryLayout<T>.size
        return value
    }

    /// Reads the little-endian integer at `offset` without moving the cursor.
    public func get<T: FixedWidthInteger>(at offset: Int, as _: T.Type = T.self) -> T? {
        guard offset >= 0, offset <= bytes.count - MemoryLayout<T>.size else { return nil }
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// Reads `count` bytes at the cursor as a borrowed slice and advances past them.
    public mutating func readBytes(_ count: Int) -> UnsafeRawBufferPointer? {
        guard count >= 0, count <= remaining else { return nil }
        let slice = UnsafeRawBufferPointer(rebasing: bytes[cursor..<cursor + count])
        cursor += count
        return slice
    }
}

/// Little-endian appending to a growable byte array. With enough reserved capacity it never allocates.
public struct WireWriter {
    /// The encoded bytes.
    public var bytes: [UInt8]

    /// Starts an empty writer with room for `capacity` bytes.
    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// Appends a little-endian integer.
    public mutating func write<T: FixedWidthInteger>(_ value: T) {
        withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }

    /// Appends raw bytes.
    public mutating func write(bytes other: some Sequence<UInt8>) {
        bytes.append(contentsOf: other)
    }

    /// Appends `count` zero bytes.
    public mutating func writeZeros(_ count: Int) {
        for _ in 0..<count { bytes.append(0) }
    }

    /// Overwrites the little-endian integer at `offset`, which must already be written.
    public mutating func set<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= bytes.count, "set(at:) past the end")
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self) }
    }
}
