"""A second tenant, for the isolation test: run as another uid (setpriv), it asks for STATUS and then
tries to fill 16 bytes of a buffer handle it was told about but never opened.

Usage: other-tenant.py SOCKET HANDLE
Prints two lines: "STATUS <json>" and "FILL <ERROR code message | COMPLETION status>".
"""
import json
import socket
import struct
import sys

MAGIC = 0x54414F49
HELLO, OPEN, SUBMIT, STATUS = 0x0001, 0x0005, 0x0007, 0x0008
HELLO_OK, OPEN_OK, STATUS_OK, COMPLETION, ERROR = 0x8001, 0x8005, 0x8008, 0xC001, 0xFFFF
OP_FILL, F_INT_EN = 2, 1


def main():
    path, handle = sys.argv[1], int(sys.argv[2])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.connect(path)
    request_id = 0

    def request(msg_type, body, version=1):
        nonlocal request_id
        request_id += 1
        try:
            sock.send(struct.pack("<IHHIIQ", MAGIC, version, msg_type, 24 + len(body), 0, request_id) + body)
        except BrokenPipeError:
            pass  # refused before the request went out (SPEC.md §1): the ERROR is waiting to be read
        data = sock.recv(65536)
        _, _, reply_type, length, _, _ = struct.unpack_from("<IHHIIQ", data)
        return reply_type, data[24:length]

    reply, body = request(HELLO, struct.pack("<HHIQ", 1, 1, 0, 0))
    if reply != HELLO_OK:
        sys.exit(f"no HELLO_OK: {reply:#x}")
    reply, body = request(STATUS, b"")
    print("STATUS " + json.dumps(json.loads(body.rstrip(b"\0").decode())))
    reply, body = request(OPEN, struct.pack("<II", 0xFFFFFFFF, 4))
    if reply != OPEN_OK:
        sys.exit(f"no OPEN_OK: {reply:#x}")
    queue = struct.unpack_from("<I", body)[0]
    descriptor = struct.pack("<BBHIQQQIIQQQ", OP_FILL, 0, F_INT_EN, 0, 1, 16, 0, handle, 0, 0, 0, 0x4141414141414141)
    reply, body = request(SUBMIT, struct.pack("<II", queue, 1) + descriptor)
    if reply == ERROR:
        code, _, text_length, _ = struct.unpack_from("<IIII", body)
        print(f"FILL ERROR {code} {body[16:16 + text_length].decode()}")
    elif reply == COMPLETION:
        print(f"FILL COMPLETION {body!r}")
    else:
        print(f"FILL reply {reply:#x}")


main()
