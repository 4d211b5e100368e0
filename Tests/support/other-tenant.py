"""A second tenant, for the isolation test: run as another uid (setpriv), it asks for STATUS and then
tries to fill 16 bytes of a buffer handle it was told about but never opened.

Usage: other-tenant.py SOCKET HANDLE
Prints two lines: "STATUS <json>" and "FILL <ERROR code message | COMPLETION status>".
"""
import json
import struct
import sys

from ioatd_wire import COMPLETION, ERROR, OPEN, OPEN_OK, STATUS, SUBMIT, Connection, error_text

OP_FILL, F_INT_EN = 2, 1


def main():
    path, handle = sys.argv[1], int(sys.argv[2])
    conn = Connection(path)
    if not conn.hello():
        sys.exit("no HELLO_OK")
    reply, body = conn.request(STATUS, b"")
    print("STATUS " + json.dumps(json.loads(body.rstrip(b"\0").decode())))
    reply, body = conn.request(OPEN, struct.pack("<II", 0xFFFFFFFF, 4))
    if reply != OPEN_OK:
        sys.exit(f"no OPEN_OK: {reply:#x}")
    queue = struct.unpack_from("<I", body)[0]
    descriptor = struct.pack("<BBHIQQQIIQQQ", OP_FILL, 0, F_INT_EN, 0, 1, 16, 0, handle, 0, 0, 0, 0x4141414141414141)
    reply, body = conn.request(SUBMIT, struct.pack("<II", queue, 1) + descriptor)
    if reply == ERROR:
        code, text = error_text(body)
        print(f"FILL ERROR {code} {text}")
    elif reply == COMPLETION:
        print(f"FILL COMPLETION {body!r}")
    else:
        print(f"FILL reply {reply:#x}")


main()
