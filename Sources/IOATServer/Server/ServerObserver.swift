/// What the server tells whoever runs it (the `ioatd` daemon tells systemd), called on the event loop's
/// thread: a hook that stops being called is a loop that stopped turning, which is what a watchdog
/// wants to know. The server library knows nothing of sd_notify, signals or files.
public protocol ServerObserver: Sendable {
    /// Seconds between `tick` calls; nil for none.
    var tickInterval: Double? { get }
    /// The server serves (its listening socket is watched).
    func serving(_ summary: ServerSummary)
    /// Every `tickInterval` seconds, from the loop.
    func tick(_ summary: ServerSummary)
    /// The server stops taking work and drains.
    func stopping(_ summary: ServerSummary)
}

/// A few numbers about the server, for a service manager's one-line status.
public struct ServerSummary: Sendable {
    public var state: IOATServer.State
    public var engine: String
    public var channels: Int
    public var clients: Int
    /// Ops completed since the server started (a rate comes from two ticks).
    public var opsCompleted: UInt64
    /// Ops queued or in an engine.
    public var inFlight: Int
    /// Monotonic seconds when the summary was made.
    public var at: Double
}
