#!/usr/bin/env bash
# make test-systemd: the installed service under a real systemd as PID 1.
#
# Builds (once, then cached in $CACHE) a Debian 12 root with mmdebstrap, copies it, installs ioatd into
# the copy with `make install`, boots it with systemd-nspawn, and checks from inside (nsenter) what only
# a real service manager shows: socket activation, clients that are not root, reload, stop, crash and
# watchdog restarts, the journal's priorities, and the unit's security score. Ends with a line
# "systemd: N passed, M failed". It cleans up its container, mounts and copy on every exit. When a
# container cannot be booted here it says why and exits non-zero: it never passes without running.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${IOATD_SYSTEMD_CACHE:-/var/cache/ioatd-systemd}
WORK=$(mktemp -d /var/tmp/ioatd-systemd.XXXXXX)
ROOT=$WORK/root
LOG=$WORK/console.log
passed=0
failed=0
nspawn_pid=""
leader=""

say() { printf '%s\n' "systemd: $*"; }
fail_setup() { say "cannot run: $*"; say "0 passed, 1 failed"; exit 1; }
check() {  # check NAME COMMAND...: runs COMMAND, counts it
    local name=$1; shift
    if "$@"; then passed=$((passed + 1)); say "ok    $name"; else failed=$((failed + 1)); say "FAIL  $name"; fi
}
inside() { nsenter -t "$leader" -a "$@"; }
as_user() { local user=$1; shift; inside setpriv --reuid="$user" --regid="$user" --init-groups env -u IOATD_SOCKET HOME=/tmp "$@"; }

cleanup() {
    if [ -n "$leader" ] && kill -0 "$leader" 2>/dev/null; then
        inside systemctl poweroff --no-block >/dev/null 2>&1
        for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.1; done
    fi
    [ -n "$nspawn_pid" ] && kill -KILL "$nspawn_pid" 2>/dev/null
    wait 2>/dev/null
    grep -q " $ROOT" /proc/mounts && umount -R "$ROOT" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || fail_setup "needs root (systemd-nspawn)"
command -v systemd-nspawn >/dev/null || fail_setup "systemd-nspawn is missing (make deps-systemd installs systemd-container)"
command -v mmdebstrap >/dev/null || fail_setup "mmdebstrap is missing (make deps-systemd installs it)"

# 1. The root file system, cached between runs on this machine.
started=$(date +%s)
if [ ! -x "$CACHE/root/lib/systemd/systemd" ]; then
    say "building a Debian 12 root in $CACHE (once)"
    mkdir -p "$CACHE"
    rm -rf "$CACHE/root.tmp"
    mmdebstrap --variant=minbase --include=systemd,systemd-sysv,dbus,libisal2,util-linux,procps bookworm "$CACHE/root.tmp" \
        > "$WORK/mmdebstrap.log" 2>&1 || { tail -20 "$WORK/mmdebstrap.log"; fail_setup "mmdebstrap failed"; }
    mv "$CACHE/root.tmp" "$CACHE/root"
fi
cp -a "$CACHE/root" "$ROOT" || fail_setup "cannot copy the root to $ROOT"

# 2. ioatd installed the way an administrator would: make install, then users and units.
make -C "$REPO" --no-print-directory install DESTDIR="$ROOT" PREFIX=/usr > "$WORK/install.log" 2>&1 \
    || { tail -30 "$WORK/install.log"; fail_setup "make install failed"; }
say "root ready and ioatd installed in $(( $(date +%s) - started )) s"
# The upgrade check's ioatd: this tree with another version string, built beside it (incrementally, in
# the cache, from the second run on).
upgraded=$(date +%s)
mkdir -p "$WORK/upgrade-src"
git -C "$REPO" archive HEAD | tar -x -C "$WORK/upgrade-src" || fail_setup "git archive for the upgrade build"
sed -i 's/^public let ioatdVersion = "\(.*\)"$/public let ioatdVersion = "\1+upgrade"/' "$WORK/upgrade-src/Sources/IOATServer/Server/Version.swift"
grep -q '+upgrade"' "$WORK/upgrade-src/Sources/IOATServer/Server/Version.swift" || fail_setup "the upgrade build's version string was not changed"
(cd "$WORK/upgrade-src" && swift build -c release --static-swift-stdlib --product ioatd --scratch-path "$CACHE/upgrade-build") \
    > "$WORK/upgrade-build.log" 2>&1 || { tail -20 "$WORK/upgrade-build.log"; fail_setup "the upgrade build failed"; }
say "upgrade build (version +upgrade) in $(( $(date +%s) - upgraded )) s"
systemd-sysusers --root="$ROOT" >/dev/null 2>&1 || fail_setup "systemd-sysusers --root failed"
chroot "$ROOT" useradd -m -G ioatd alice || fail_setup "useradd alice"
chroot "$ROOT" useradd -m mallory || fail_setup "useradd mallory"
systemctl --root="$ROOT" enable ioatd.socket >/dev/null 2>&1 || fail_setup "systemctl --root enable ioatd.socket"
# A short watchdog so the hung-loop check takes seconds, not minutes.
mkdir -p "$ROOT/etc/systemd/system/ioatd.service.d"
printf '[Service]\nWatchdogSec=3\n' > "$ROOT/etc/systemd/system/ioatd.service.d/test.conf"

# 3. Boot. No D-Bus on the host: --register=no --keep-unit; CAP_IPC_LOCK is not in nspawn's default set.
booted=$(date +%s)
systemd-nspawn --boot --register=no --keep-unit --private-network --capability=CAP_IPC_LOCK -D "$ROOT" \
    --machine="ioatd-test-$$" > "$LOG" 2>&1 < /dev/null &
nspawn_pid=$!
for _ in $(seq 300); do
    leader=$(pgrep -P "$nspawn_pid" -x systemd | head -1)
    [ -n "$leader" ] && break
    kill -0 "$nspawn_pid" 2>/dev/null || { tail -20 "$LOG"; fail_setup "systemd-nspawn exited"; }
    sleep 0.2
done
[ -n "$leader" ] || { tail -20 "$LOG"; fail_setup "no systemd in the container"; }
state=$(timeout 120 nsenter -t "$leader" -a systemctl is-system-running --wait 2>/dev/null)
case "$state" in running|degraded) ;; *) tail -20 "$LOG"; fail_setup "the container did not boot ($state)";; esac
say "booted in $(( $(date +%s) - booted )) s ($state)"

# 4. Checks.
active() { [ "$(inside systemctl is-active "$1")" = "$2" ]; }
main_pid() { inside systemctl show -p MainPID --value ioatd.service; }

check "ioatd is not running before the first client" active ioatd.service inactive
check "an unprivileged member of group ioatd: ioatctl status, with no IOATD_SOCKET" \
    bash -c "$(declare -f inside as_user); leader=$leader; as_user alice ioatctl status | grep -q 'serving'"
check "socket activation started ioatd" active ioatd.service active
capeff=$(inside sh -c 'grep CapEff /proc/$(systemctl show -p MainPID --value ioatd.service)/status' | awk '{ print $2 }')
check "ioatd has CAP_IPC_LOCK under systemd (CapEff $capeff)" bash -c "[ -n '$capeff' ] && (( 0x$capeff & 16384 ))"
check "ioatctl test passes for alice" bash -c "$(declare -f inside as_user); leader=$leader; as_user alice ioatctl test --iterations 50 | grep -q ' 0 failed'"
check "a user outside group ioatd is refused, and told why" \
    bash -c "$(declare -f inside as_user); leader=$leader; ! as_user mallory ioatctl status 2>&1 | grep -q serving && as_user mallory ioatctl status 2>&1 | grep -qi 'permission denied'"
check "the installed binaries are stripped and need no Swift runtime" \
    bash -c "! readelf -S $ROOT/usr/bin/ioatd | grep -q '\.symtab' && ! chroot $ROOT ldd /usr/bin/ioatd | grep -q libswiftCore"

# Reload: a good policy applies; a bad one fails the reload itself, and the old policy stays.
printf '\n[policy.users.alice]\nweight = 3\n' >> "$ROOT/etc/ioatd/ioatd.toml"
check "systemctl reload with a good policy succeeds" inside systemctl reload ioatd.service
check "the new policy is in force" bash -c "$(declare -f inside as_user); leader=$leader; as_user alice ioatctl status | grep -q 'weight 3'"
cp "$ROOT/etc/ioatd/ioatd.toml" "$WORK/good.toml"
printf '\n[policy.users.nobody-here]\nweight = 2\n' >> "$ROOT/etc/ioatd/ioatd.toml"
check "systemctl reload with a bad policy fails visibly" bash -c "! nsenter -t $leader -a systemctl reload ioatd.service"
check "the bad policy's reason is in the journal at priority err or above" \
    bash -c "nsenter -t $leader -a journalctl -u ioatd.service -p err --no-pager | grep -q 'nobody-here'"
cp "$WORK/good.toml" "$ROOT/etc/ioatd/ioatd.toml"
check "ioatd kept serving through the refused reload" active ioatd.service active

# Units as tenants (issue 21): two transient units running as root are two tenants named by unit, a
# [policy.units] weight is in force, root inside a unit sees only its own tenant, and a reload changes a
# unit's limits without dropping it.
printf '\n[policy.units."tenant-a.service"]\nweight = 5\n[policy.units."tenant-*.service"]\nmax_queues = 16\n' >> "$ROOT/etc/ioatd/ioatd.toml"
check "systemctl reload with unit entries succeeds" inside systemctl reload ioatd.service
for unit in tenant-a tenant-b; do
    inside systemd-run --quiet --collect --unit="$unit" --uid=0 ioatctl stress --ops 100000000 >/dev/null 2>&1
done
units_listed=no
for _ in $(seq 100); do
    inside ioatctl status > "$WORK/units.txt" 2>&1
    if grep -q 'tenant-a.service, uid 0' "$WORK/units.txt" && grep -q 'tenant-b.service, uid 0' "$WORK/units.txt"; then units_listed=yes; break; fi
    sleep 0.1
done
check "two transient units of uid 0 are two tenants, named by unit" [ "$units_listed" = yes ] \
    || { grep -A1 '^tenants' "$WORK/units.txt" | sed 's/^/  status: /'; false; }
check "the [policy.units] weight is in force" grep -q 'tenant-a.service, uid 0 (unit tenant-a.service, weight 5)' "$WORK/units.txt"
check "the pattern's entry applies to the other unit" grep -q 'tenant-b.service, uid 0 (units tenant-\*.service, weight 1)' "$WORK/units.txt"
inside systemd-run --quiet --collect --unit=tenant-c --uid=0 --wait --pipe ioatctl status > "$WORK/unit-view.txt" 2>&1
check "root inside a unit sees only its own tenant" \
    bash -c "grep -q 'tenant-c.service, uid 0' '$WORK/unit-view.txt' && ! grep -q 'tenant-a.service' '$WORK/unit-view.txt'" \
    || { sed 's/^/  view: /' "$WORK/unit-view.txt" | tail -8; false; }
sed -i 's/^weight = 5$/weight = 7/' "$ROOT/etc/ioatd/ioatd.toml"
check "a reload changes a unit's weight" bash -c "nsenter -t $leader -a systemctl reload ioatd.service && nsenter -t $leader -a ioatctl status | grep -q 'tenant-a.service, uid 0 (unit tenant-a.service, weight 7)'"
check "without dropping it: the unit's stress client still runs" active tenant-a.service active
inside systemctl stop tenant-a.service tenant-b.service >/dev/null 2>&1
cp "$WORK/good.toml" "$ROOT/etc/ioatd/ioatd.toml"
inside systemctl reload ioatd.service

# Stop under load: GOODBYE, drain, exit 0; the socket stays and the next client starts ioatd again.
inside setpriv --reuid=alice --regid=alice --init-groups ioatctl stress --ops 100000000 > "$WORK/stress1.log" 2>&1 &
for _ in $(seq 100); do grep -q 'stress: running' "$WORK/stress1.log" && break; sleep 0.1; done
check "systemctl stop under load" inside systemctl stop ioatd.service
check "ioatd exited 0" bash -c "[ \"\$(nsenter -t $leader -a systemctl show -p ExecMainStatus --value ioatd.service)\" = 0 ]"
wait %% 2>/dev/null
cp "$WORK/stress1.log" "$WORK/stress1.kept"
check "the stress client was told the server is stopping" grep -Eq 'server stopped|SHUTTING_DOWN' "$WORK/stress1.log" \
    || { sed 's/^/  stress: /' "$WORK/stress1.kept" | tail -5; false; }
check "ioatd.socket is still listening" active ioatd.socket active
check "the next client starts ioatd again" bash -c "$(declare -f inside as_user); leader=$leader; as_user alice ioatctl status | grep -q serving"

# Restart without dropping clients (issue 22, SPEC.md §5.11). Two stress clients, byte-checking every op:
# alice over rings with three queues, root over the socket with two (a second uid beside her).
store_count() { inside systemctl show -p NFileDescriptorStore --value ioatd.service; }
ioatd_fds() { inside bash -c "ls /proc/\$(systemctl show -p MainPID --value ioatd.service)/fd | wc -l"; }
vmlck() { inside bash -c "awk '/VmLck/ {print \$2}' /proc/\$(systemctl show -p MainPID --value ioatd.service)/status"; }
start_stress() {  # start_stress TAG SECONDS
    inside setpriv --reuid=alice --regid=alice --init-groups ioatctl stress --transport ring --queues 3 --ops 1000000000 \
        --seconds "$2" > "$WORK/$1-alice.log" 2>&1 &
    stress_pids="$!"
    inside ioatctl stress --transport socket --queues 2 --ops 1000000000 --seconds "$2" > "$WORK/$1-root.log" 2>&1 &
    stress_pids="$stress_pids $!"
    for _ in $(seq 200); do grep -q 'stress: running' "$WORK/$1-alice.log" && grep -q 'stress: running' "$WORK/$1-root.log" && break; sleep 0.1; done
}
inside ioatctl status > /dev/null
base_fds=$(ioatd_fds); base_vmlck=$(vmlck)
say "baseline with no client: $base_fds descriptors, VmLck $base_vmlck kB, $(store_count) stored"
check "ioatd keeps a handover store (FileDescriptorStoreMax=16384)" \
    bash -c "nsenter -t $leader -a journalctl -u ioatd.service --no-pager | grep -q 'restart store.*enabled=true'"

start_stress restart 40
pauses=""
for i in 1 2 3; do
    t0=$(date +%s%3N)
    inside systemctl restart ioatd.service
    pauses="$pauses $(( $(date +%s%3N) - t0 ))ms"
done
say "systemctl restart took:$pauses (each includes the drain and the next instance's start)"
wait $stress_pids
for who in alice root; do
    check "systemctl restart ×3: $who's stress lost no connection and no op, every byte right" \
        grep -q 'ops verified, 0 completed RESTARTED.*server restarts 3 (0 crashes)' "$WORK/restart-$who.log"
    grep -q 'ops verified, 0 completed RESTARTED.*server restarts 3 (0 crashes)' "$WORK/restart-$who.log" || tail -3 "$WORK/restart-$who.log" | sed 's/^/  /'
done
grep -ho 'longest wait [0-9]* ms' "$WORK"/restart-*.log | sed 's/^/  pause seen by a client: /'

start_stress crash 60
for i in 1 2 3; do
    before=$(main_pid)
    inside systemctl kill -s KILL ioatd.service
    for _ in $(seq 200); do p=$(main_pid); [ "$p" != 0 ] && [ "$p" != "$before" ] && active ioatd.service active && break; sleep 0.1; done
    # The stress clients must get some ops through the new instance before the next crash.
    sleep 1
done
wait $stress_pids
for who in alice root; do
    check "kill -9 ×3: $who's stress kept its connection; only ops in flight completed RESTARTED; every other byte right" \
        grep -Eq 'ops verified, [0-9]+ completed RESTARTED.*server restarts 3 \(3 crashes\)' "$WORK/crash-$who.log"
    grep -Eq 'ops verified, [0-9]+ completed RESTARTED.*server restarts 3 \(3 crashes\)' "$WORK/crash-$who.log" \
        || { tail -3 "$WORK/crash-$who.log" | sed 's/^/  /'; inside journalctl -u ioatd.service --no-pager -n 25 | sed 's/^/  journal: /'; }
done
grep -ho '[0-9]* completed RESTARTED.*' "$WORK"/crash-*.log | sed 's/^/  after three crashes: /'

# An upgrade: an ioatd built with another version string takes over from the running one under load.
install -m755 "$CACHE/upgrade-build/release/ioatd" "$ROOT/usr/bin/ioatd.new" && mv "$ROOT/usr/bin/ioatd.new" "$ROOT/usr/bin/ioatd"
check "the new binary is the upgrade build" bash -c "nsenter -t $leader -a /usr/bin/ioatd --version | grep -q '+upgrade'"
start_stress upgrade 20
inside systemctl restart ioatd.service
wait $stress_pids
for who in alice root; do
    check "upgrade under load: $who's stress lost no connection and no op" \
        grep -q 'ops verified, 0 completed RESTARTED.*server restarts 1 (0 crashes)' "$WORK/upgrade-$who.log"
    grep -q 'ops verified, 0 completed RESTARTED.*server restarts 1 (0 crashes)' "$WORK/upgrade-$who.log" || tail -3 "$WORK/upgrade-$who.log" | sed 's/^/  /'
done
check "the upgraded ioatd took over the state the old one wrote, and serves as the new version" \
    bash -c "nsenter -t $leader -a journalctl -u ioatd.service --no-pager -n 40 | grep 'took over' | tail -1 | grep -q 'state_writer=1.3.0 ' \
             && nsenter -t $leader -a journalctl -u ioatd.service --no-pager -n 40 | grep 'serving' | tail -1 | grep -q 'version=1.3.0+upgrade'"

# A state the next instance cannot read (another format): its clients are told GOODBYE, the service
# serves new clients.
mkdir -p "$ROOT/etc/systemd/system/ioatd.service.d"
printf '[Service]\nExecStart=\nExecStart=/usr/bin/ioatd --config /etc/ioatd/ioatd.toml --state-format 99\n' \
    > "$ROOT/etc/systemd/system/ioatd.service.d/format.conf"
inside systemctl daemon-reload
inside systemctl restart ioatd.service
inside setpriv --reuid=alice --regid=alice --init-groups ioatctl stress --ops 1000000000 --seconds 30 > "$WORK/format.log" 2>&1 &
format_pid=$!
for _ in $(seq 100); do grep -q 'stress: running' "$WORK/format.log" && break; sleep 0.1; done
rm "$ROOT/etc/systemd/system/ioatd.service.d/format.conf"
inside systemctl daemon-reload
inside systemctl restart ioatd.service
wait $format_pid
check "a state of another format is refused: the client was told the server stopped" grep -Eq 'server stopped' "$WORK/format.log"
check "the refusal is in the journal, naming the format" \
    bash -c "nsenter -t $leader -a journalctl -u ioatd.service --no-pager | grep -q 'the state is format 99'"
check "ioatd serves new clients after refusing a state" bash -c "$(declare -f inside as_user); leader=$leader; as_user alice ioatctl test --iterations 20 | grep -q ' 0 failed'"

# Back to baseline once the clients have left.
for _ in $(seq 100); do [ "$(store_count)" = 1 ] && break; sleep 0.1; done
check "after all of it the store holds only the state ($(store_count) stored)" [ "$(store_count)" = 1 ]
check "ioatd's descriptors are back to baseline ($(ioatd_fds), was $base_fds)" [ "$(ioatd_fds)" = "$base_fds" ]
[ "$(ioatd_fds)" = "$base_fds" ] || inside bash -c "ls -l /proc/\$(systemctl show -p MainPID --value ioatd.service)/fd" | sed 's/^/  fd: /'
check "VmLck is back to baseline ($(vmlck) kB, was $base_vmlck)" [ "$(vmlck)" = "$base_vmlck" ]
budget=$(inside ioatctl status | grep -o 'buffer budget [0-9]*/' | grep -o '[0-9]*')
check "the buffer budget is back to baseline (${budget:-unknown} bytes in use)" [ "$budget" = 0 ]

# A hung event loop (SIGSTOP) stops sending WATCHDOG=1 and is restarted.
before=$(main_pid)
inside kill -STOP "$before"
restarted=no
# WatchdogSec=3 (the drop-in), then SIGABRT, which a stopped process keeps pending until the SIGKILL
# TimeoutAbortSec (= TimeoutStopSec, 15 s) later.
for _ in $(seq 400); do p=$(main_pid); if [ "$p" != 0 ] && [ "$p" != "$before" ]; then restarted=yes; break; fi; sleep 0.1; done
check "the watchdog restarted a hung ioatd" [ "$restarted" = yes ]
check "ioatd serves after the watchdog restart" bash -c "$(declare -f inside as_user); leader=$leader; as_user alice ioatctl status | grep -q serving"

# A bad configuration: the start fails with its reason at priority err, ioatd.socket stays up, no restart
# loop, and fixing the file is enough (no reset-failed).
printf '[server]\nbogus = 1\n' > "$ROOT/etc/ioatd/ioatd.toml"
inside systemctl stop ioatd.service
# A client that connects meanwhile is answered at once by the failing start (UNAVAILABLE), instead of
# waiting in the socket's backlog through every restart; the answer names no line of the file.
started_ms=$(date +%s%3N)
inside timeout 30 setpriv --reuid=alice --regid=alice --init-groups env -u IOATD_SOCKET -u IOATD_CONNECT_TIMEOUT_MS \
    ioatctl status > "$WORK/unavailable.txt" 2>&1
client_status=$?
took_ms=$(( $(date +%s%3N) - started_ms ))
check "a client connecting while the configuration is bad exits non-zero within 10 s ($took_ms ms, status $client_status) with UNAVAILABLE" \
    bash -c "[ $client_status -ne 0 ] && [ $client_status -ne 124 ] && [ $took_ms -lt 10000 ] && grep -q 'UNAVAILABLE: ioatd cannot start' '$WORK/unavailable.txt'"
check "the client's error quotes nothing of the configuration" bash -c "! grep -q bogus '$WORK/unavailable.txt'"
for _ in $(seq 100); do [ "$(inside systemctl show -p ExecMainStatus --value ioatd.service)" = 2 ] && break; sleep 0.1; done
check "a bad configuration fails the start with status 2" \
    bash -c "[ \"\$(nsenter -t $leader -a systemctl show -p ExecMainStatus --value ioatd.service)\" = 2 ]"
check "its reason is in the journal at priority err" \
    bash -c "nsenter -t $leader -a journalctl -u ioatd.service -p err --no-pager | grep -q 'server.bogus: unknown key'"
check "ioatd.socket stays up after the failed start" active ioatd.socket active
check "ioatd is tried again, not given up on" bash -c "[ \"\$(nsenter -t $leader -a systemctl show -p Result --value ioatd.service)\" = exit-code ] && ! nsenter -t $leader -a systemctl is-failed --quiet ioatd.socket"
cp "$WORK/good.toml" "$ROOT/etc/ioatd/ioatd.toml"
check "with the file fixed, the next client starts ioatd (no reset-failed)" \
    bash -c "$(declare -f inside as_user); leader=$leader; as_user alice timeout 20 ioatctl status | grep -q serving"

# The unit's exposure score, as systemd itself computes it.
score=$(inside systemd-analyze security ioatd.service --no-pager 2>/dev/null | sed -n 's/.*Overall exposure level for ioatd.service: \([0-9.]*\).*/\1/p')
check "systemd-analyze security: $score (at most 1.0)" awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 1.0) }'

say "$passed passed, $failed failed (in $(( $(date +%s) - started )) s)"
[ "$failed" = 0 ]
