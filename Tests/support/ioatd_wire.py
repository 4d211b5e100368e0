"""The few pieces of the ioatd wire format (protocol/SPEC.md) the Python test helpers speak: a
connection that sends one request and reads its answer."""
import os
import socket
import struct

MAGIC = 0x54414F49
HELLO, ALLOC, OPEN, SUBMIT, STATUS = 0x0001, 0x0002, 0x0005, 0x0007, 0x0008
HELLO_OK, ALLOC_OK, OPEN_OK, STATUS_OK, COMPLETION, ERROR = 0x8001, 0x8002, 0x8005, 0x8008, 0xC001, 0xFFFF


class Connection:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Every wait is bounded: a mute server ends the helper with an error, never a hang.
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.request_id = 0

    def request(self, msg_type, body, version=1):
        """Sends one request; returns the answer's type and body. Descriptors that come with it (an
        ALLOC_OK's memfd) are closed."""
        self.request_id += 1
        try:
            self.sock.send(struct.pack("<IHHIIQ", MAGIC, version, msg_type, 24 + len(body), 0, self.request_id) + body)
        except BrokenPipeError:
            pass  # refused before the request went out (SPEC.md §1): the ERROR is waiting to be read
        data, ancillary, _, _ = self.sock.recvmsg(65536, socket.CMSG_SPACE(16))
        for level, kind, fds in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                for i in range(0, len(fds) - len(fds) % 4, 4):
                    os.close(struct.unpack_from("<i", fds, i)[0])
        _, _, reply_type, length, _, _ = struct.unpack_from("<IHHIIQ", data)
        return reply_type, data[24:length]

    def hello(self):
        reply, _ = self.request(HELLO, struct.pack("<HHIQ", 1, 1, 0, 0))
        return reply == HELLO_OK


def error_text(body):
    """An ERROR body's code and text."""
    code, _, text_length, _ = struct.unpack_from("<IIII", body)
    return code, body[16:16 + text_length].decode()
