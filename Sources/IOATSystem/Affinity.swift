import CIOATShim
import Glibc

/// Which CPUs a thread runs on (sched_setaffinity(2)).
public enum Affinity {
    /// The CPUs the calling thread may run on now.
    public static func current() -> [Int] {
        var cpus = [Int32](repeating: 0, count: 1024)
        let n = cioat_get_thread_affinity(&cpus, Int32(cpus.count))
        return n > 0 ? cpus[0..<Int(n)].map(Int.init) : []
    }

    /// Restricts the calling thread to `cpus`.
    public static func pinCurrentThread(to cpus: [Int]) throws(SystemError) {
        let raw = cpus.map(Int32.init)
        guard cioat_set_thread_affinity(raw, Int32(raw.count)) == 0 else { throw SystemError.current("sched_setaffinity") }
    }

    /// How CPU-engine workers and everything else share the CPUs: with more CPUs than workers, each
    /// worker gets a CPU of its own (from the end of the list) and the event loop keeps the rest — the
    /// way a DMA channel is hardware of its own. Otherwise nothing is pinned.
    public struct Plan: Sendable, Equatable {
        /// CPU for worker i, or nil when not pinned.
        public var workers: [Int?]
        /// CPUs for the event loop (and any other server thread), or empty when not pinned.
        public var others: [Int]

        /// Plans `workerCount` workers over `cpus`.
        public init(workerCount: Int, cpus: [Int], enabled: Bool) {
            guard enabled, cpus.count > workerCount else {
                workers = Array(repeating: nil, count: workerCount)
                others = []
                return
            }
            workers = (0..<workerCount).map { cpus[cpus.count - 1 - $0] }
            others = Array(cpus[0..<(cpus.count - workerCount)])
        }
    }
}
