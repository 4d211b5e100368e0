#!/usr/bin/env python3
"""A complete ioatd client in plain Python, written from SPEC.md alone (no ioatd code).

Usage: crc32c_client.py [SOCKET] FILE
Connects (default socket rule of SPEC.md §1), allocates a server buffer (memfd over SCM_RIGHTS, §5.1),
copies FILE into it in pieces, asks the server for CRC32C with chained seeds (§6.2) and prints
"<crc>  FILE". Exits 1 with the server's error code and message if a request is refused.
"""
import mmap
import os
import socket
import struct
import sys

MAGIC, VERSION = 0x54414F49, 1
HELLO, ALLOC, OPEN, SUBMIT = 0x0001, 0x0002, 0x0005, 0x0007
HELLO_OK, ALLOC_OK, OPEN_OK, COMPLETION, ERROR = 0x8001, 0x8002, 0x8005, 0xC001, 0xFFFF
OP_CRC32C, F_INT_EN, F_CRC_SEED = 3, 1, 8
ERROR_NAMES = {13: "BAD_HANDLE", 14: "OUT_OF_RANGE", 16: "BAD_LENGTH", 19: "BAD_QUEUE", 27: "NO_MEMORY"}


def default_socket():
    if os.environ.get("IOATD_SOCKET"):
        return os.environ["IOATD_SOCKET"]
    if os.getuid() == 0:
        return "/run/ioatd/ioatd.sock"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.environ["XDG_RUNTIME_DIR"] + "/ioatd.sock"
    return f"/tmp/ioatd-{os.getuid()}.sock"


class Client:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(path)
        self.next_id = 1

    def request(self, msg_type, body, expect):
        rid = self.next_id
        self.next_id += 1
        self.sock.send(struct.pack("<IHHIIQ", MAGIC, VERSION, msg_type, 24 + len(body), 0, rid) + body)
        return self.receive(expect)

    def receive(self, expect):
        data, fds, _, _ = socket.recv_fds(self.sock, 65536, 1)
        if not data:
            sys.exit("ioatd closed the connection")
        magic, version, msg_type, length, reserved, rid = struct.unpack_from("<IHHIIQ", data)
        if magic != MAGIC or length != len(data):
            sys.exit("malformed packet from ioatd")
        body = data[24:]
        if msg_type == ERROR:
            code, index, text_length, _ = struct.unpack_from("<IIII", body)
            text = body[16:16 + text_length].decode()
            sys.exit(f"ioatd refused: {ERROR_NAMES.get(code, code)}: {text}")
        if msg_type != expect:
            sys.exit(f"expected type {expect:#x}, got {msg_type:#x}")
        return body, fds


def main():
    args = sys.argv[1:]
    path, filename = (args[0], args[1]) if len(args) == 2 else (default_socket(), args[0])
    c = Client(path)
    c.request(HELLO, struct.pack("<HHIQ", 1, 1, 0, 0), HELLO_OK)
    size = 1 << 20
    body, fds = c.request(ALLOC, struct.pack("<QII", size, 0, 0), ALLOC_OK)
    handle, flags, size, page_size = struct.unpack_from("<IIQQ", body)
    buffer = mmap.mmap(fds[0], size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    os.close(fds[0])
    body, _ = c.request(OPEN, struct.pack("<II", 0xFFFFFFFF, 4), OPEN_OK)
    queue = struct.unpack_from("<I", body)[0]
    crc = 0
    with open(filename, "rb") as f:
        while True:
            piece = f.read(size)
            if not piece:
                break
            buffer[0:len(piece)] = piece
            desc = struct.pack("<BBHIQQQIIQQQ", OP_CRC32C, 0, F_INT_EN | F_CRC_SEED, handle, 1, len(piece), 0, 0, 0, 0, 0, crc)
            body, _ = c.request(SUBMIT, struct.pack("<II", queue, 1) + desc, COMPLETION)
            _, count = struct.unpack_from("<II", body)
            cookie, status, opcode, _, result, done, _ = struct.unpack_from("<QHBBIQQ", body, 8)
            if status != 0 or done != len(piece):
                sys.exit(f"CRC32C op failed with status {status}")
            crc = result
    print(f"{crc:08x}  {filename}")


if __name__ == "__main__":
    main()
