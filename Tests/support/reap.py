#!/usr/bin/env python3
"""Kills what a test run left behind: every process whose environment carries IOATD_TEST_RUN=<marker>.

`make test` sets the marker for `swift test`; servers, socket holders and clients the tests start inherit
it. A test process that crashes never stops its children, and an orphaned ioatd or ioatctl stress
client would spin on for ever and skew later measurements. Prints what it killed, if anything."""
import os
import signal
import sys

marker = f"IOATD_TEST_RUN={sys.argv[1]}".encode()
me = os.getpid()
killed = []
for entry in os.listdir("/proc"):
    if not entry.isdigit() or int(entry) == me:
        continue
    try:
        with open(f"/proc/{entry}/environ", "rb") as f:
            if marker not in f.read().split(b"\0"):
                continue
        with open(f"/proc/{entry}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        os.kill(int(entry), signal.SIGKILL)
        killed.append(f"{entry} {command[:120]}")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        continue
if killed:
    print(f"reaped {len(killed)} processes the test run left behind:")
    for line in killed:
        print("  " + line)
