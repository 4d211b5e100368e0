import CIOATShim
import Glibc

/// Monotonic time and the pieces of busy-polling.
public enum Clock {
    /// Nanoseconds on the monotonic clock.
    @inline(__always)
    public static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// Seconds on the monotonic clock (for uptime and intervals that need no nanosecond precision).
    public static func seconds() -> Double { Double(nanoseconds()) / 1e9 }

    /// Nanoseconds since `start`, a reading of `nanoseconds()`; 0 when `start` is not in the past. Another
    /// thread may publish a newer reading than the caller's own clock read, so a plain subtraction can
    /// underflow: elapsed time is never negative.
    @inline(__always)
    public static func nanoseconds(since start: UInt64) -> UInt64 {
        let now = nanoseconds()
        return now > start ? now - start : 0
    }

    /// Gives the CPU to another runnable thread, if any (sched_yield(2)); used between busy-poll checks
    /// so a spinning thread does not starve an engine worker sharing its core.
    @inline(__always)
    public static func yield() { _ = sched_yield() }

    /// One step of a spin-wait (PAUSE): cheaper than a clock read or a system call, and it leaves a
    /// sibling hardware thread the core while this one polls.
    @inline(__always)
    public static func relax() { cioat_cpu_relax() }
}

extension Duration {
    /// Whole nanoseconds (negative durations are 0).
    public var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds < 0 ? 0 : seconds &* 1_000_000_000 &+ attoseconds / 1_000_000_000
    }

    /// Whole milliseconds.
    public var milliseconds: Int64 { nanoseconds / 1_000_000 }
}
