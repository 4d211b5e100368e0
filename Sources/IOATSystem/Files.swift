import Glibc

/// Reads a small text file (such as one under /proc) whole; `nil` if it cannot be read.
public func readSmallFile(_ path: String, limit: Int = 1 << 20) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    let owner = FileDescriptor(owning: fd)
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while bytes.count < limit {
        let n = chunk.withUnsafeMutableBytes { read(owner.rawValue, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// Writes `text` to an existing file (such as one under /proc/sys); returns whether it all went.
@discardableResult
public func writeSmallFile(_ path: String, _ text: String) -> Bool {
    let fd = open(path, O_WRONLY | O_CLOEXEC | O_TRUNC)
    guard fd >= 0 else { return false }
    let owner = FileDescriptor(owning: fd)
    let bytes = Array(text.utf8)
    return bytes.withUnsafeBytes { write(owner.rawValue, $0.baseAddress, $0.count) } == bytes.count
}
