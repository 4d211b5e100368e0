/// This ioatd's release, in its log, its restart state and `ioatd --version`. The upgrade test of
/// `make test-systemd` builds a copy with another string here and hands over from one to the other.
public let ioatdVersion = "1.3.0"
