"""A client that runs in a cgroup, for the tests of units and cgroups as tenants (issue 21): it moves
itself into CGROUP_DIR (writing its pid to cgroup.procs), connects, allocates the buffers it is told
(bytes each, no hugepages) and asks for STATUS; then it holds its connection until its standard input
ends, so that another client can be measured beside it.

Usage: cgroup-tenant.py SOCKET CGROUP_DIR SIZE [SIZE...]
Prints one line per ALLOC ("ALLOC OK <handle>" or "ALLOC ERROR <code> <text>"), then "STATUS <json>",
then "READY"; exits when stdin closes.
"""
import json
import os
import struct
import sys

from ioatd_wire import ALLOC, ALLOC_OK, ERROR, STATUS, Connection, error_text


def main():
    path, cgroup, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]]
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))
    conn = Connection(path)
    if not conn.hello():
        sys.exit("no HELLO_OK")
    for size in sizes:
        reply, body = conn.request(ALLOC, struct.pack("<QII", size, 2, 0))
        if reply == ALLOC_OK:
            print(f"ALLOC OK {struct.unpack_from('<I', body)[0]}")
        elif reply == ERROR:
            code, text = error_text(body)
            print(f"ALLOC ERROR {code} {text}")
        else:
            print(f"ALLOC reply {reply:#x}")
    reply, body = conn.request(STATUS, b"")
    print("STATUS " + json.dumps(json.loads(body.rstrip(b"\0").decode())))
    print("READY", flush=True)
    sys.stdin.read()


main()
