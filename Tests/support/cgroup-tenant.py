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
import socket
import struct
import sys

MAGIC = 0x54414F49
HELLO, ALLOC, STATUS = 0x0001, 0x0002, 0x0008
HELLO_OK, ALLOC_OK, STATUS_OK, ERROR = 0x8001, 0x8002, 0x8008, 0xFFFF


def main():
    path, cgroup, sizes = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3:]]
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(path)
    request_id = 0

    def request(msg_type, body, version=1):
        nonlocal request_id
        request_id += 1
        sock.send(struct.pack("<IHHIIQ", MAGIC, version, msg_type, 24 + len(body), 0, request_id) + body)
        data, ancillary, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(16))
        for level, kind, fds in ancillary:  # an ALLOC_OK's memfd: not needed here
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for i in range(0, len(fds) - len(fds) % 4, 4):
                    os.close(struct.unpack_from("<i", fds, i)[0])
        _, _, reply_type, length, _, _ = struct.unpack_from("<IHHIIQ", data)
        return reply_type, data[24:length]

    reply, body = request(HELLO, struct.pack("<HHIQ", 1, 1, 0, 0))
    if reply != HELLO_OK:
        sys.exit(f"no HELLO_OK: {reply:#x}")
    for size in sizes:
        reply, body = request(ALLOC, struct.pack("<QII", size, 2, 0))
        if reply == ALLOC_OK:
            print(f"ALLOC OK {struct.unpack_from('<I', body)[0]}")
        elif reply == ERROR:
            code, _, text_length, _ = struct.unpack_from("<IIII", body)
            print(f"ALLOC ERROR {code} {body[16:16 + text_length].decode()}")
        else:
            print(f"ALLOC reply {reply:#x}")
    reply, body = request(STATUS, b"")
    print("STATUS " + json.dumps(json.loads(body.rstrip(b"\0").decode())))
    print("READY", flush=True)
    sys.stdin.read()


main()
