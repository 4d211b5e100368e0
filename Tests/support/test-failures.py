#!/usr/bin/env python3
"""Summarises a failed `swift test` log for the end of `make test`: the issues Swift Testing recorded,
and the tests that started but never finished (a crashed test process names none of them itself)."""
import re
import sys

lines = open(sys.argv[1], encoding="utf-8", errors="replace").read().splitlines()
started, finished = [], set()
for line in lines:
    m = re.match(r'◇ Test (".*?") started', line)
    if m:
        started.append(m.group(1))
    m = re.match(r'[✔✘] Test (".*?") (passed|failed|with)', line)
    if m:
        finished.add(m.group(1))
issues = [i for i, line in enumerate(lines) if re.match(r"✘ Test .* recorded an issue", line)]
for i in issues[:40]:
    print("\n".join(lines[i:i + 4]))
unfinished = [name for name in started if name not in finished]
if unfinished:
    print("tests that started and never finished (a crash or hang is in one of them):")
    for name in unfinished:
        print("  " + name)
for line in lines:
    if "Fatal error" in line or "Precondition failed" in line or "unexpected signal" in line:
        print(line)
