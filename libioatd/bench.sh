#!/bin/bash
# make bench-c: libioatd against the raw figures of `ioatctl bench`, in one run on one release server.
# The C bench runs three times and ioatctl bench twice between them, so drift on a noisy machine shows
# as spread; each ratio is a C run against the best raw run (the best the transport allows): C library / raw for ops/s, raw /
# C library for round-trip times (1.00 is as fast as raw). Nothing is asserted: this measures.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.build/libioatd-bench
mkdir -p "$out"
gcc -O2 -std=c11 -Wall -Wextra -Werror -Ilibioatd/include -Iprotocol libioatd/bench.c .build/libioatd/libioatd.a -lpthread -o "$out/ioatd-cbench"
sock=/tmp/ioatd-cbench-$$.sock
.build/release/ioatd --socket "$sock" --engine cpu --log-level warning > "$out/ioatd.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$sock"' EXIT
for _ in $(seq 1 300); do
    .build/release/ioatctl --socket "$sock" status > /dev/null 2>&1 && break
    sleep 0.1
done
QD1=${QD1:-3000}
SECONDS_PER=${SECONDS_PER:-1.0}
# A warm-up pass (discarded), then C, raw, C, raw, C: each side is measured on both sides of the other.
for t in ring socket; do "$out/ioatd-cbench" "$sock" $t 500 0.2 > /dev/null; done
: > "$out/c.jsonl"
echo '[' > "$out/raw.json"
for round in 1 2 3; do
    for t in ring socket; do "$out/ioatd-cbench" "$sock" $t "$QD1" "$SECONDS_PER" >> "$out/c.jsonl"; done
    [ $round = 3 ] && break
    [ $round = 2 ] && echo ',' >> "$out/raw.json"
    .build/release/ioatctl --socket "$sock" bench --transport both --sizes 4K --ops copy --rounds 1 --seconds "$SECONDS_PER" \
        --qd1 "$QD1" --no-peer-figure --json | sed '1s/^\[//; $s/\]$//' >> "$out/raw.json"
done
echo ']' >> "$out/raw.json"
/usr/bin/python3 - "$out/raw.json" "$out/c.jsonl" <<'PY'
import json, statistics, sys
raw, c = {}, {}
for r in json.load(open(sys.argv[1])):
    raw.setdefault(r["transport"], []).append(r)
for line in open(sys.argv[2]):
    r = json.loads(line)
    c.setdefault(r["transport"], []).append(r)
print(f"{'transport':9} {'figure':24} {'raw (ioatctl bench)':>24} {'libioatd':>30} {'ratio: median (min-max)':>26}")
for t in ("ring", "socket"):
    figures = [
        ("QD1 NULL p50 (µs)", lambda x: x["qd1"]["null_us"]["p50"], True),
        ("QD1 64 B copy p50 (µs)", lambda x: x["qd1"]["copy64_us"]["p50"], True),
        ("64 B batched (ops/s)", lambda x: x["small"]["ops_per_s"], False),
    ]
    for name, get, lower in figures:
        rv = [get(x) for x in raw[t]]
        cv = [get(x) for x in c[t]]
        base = min(rv) if lower else max(rv)  # the best the transport did in this run
        ratios = sorted((base / v if lower else v / base) for v in cv)
        fmt = (lambda v: f"{v:.2f}") if lower else (lambda v: f"{v / 1e6:.2f}M")
        print(f"{t:9} {name:24} {', '.join(map(fmt, rv)):>24} {', '.join(map(fmt, cv)):>30} "
              f"{statistics.median(ratios):>10.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})")
print("ratio: libioatd / raw for ops/s, raw / libioatd for round-trip times (1.00 = as fast as raw)")
PY
