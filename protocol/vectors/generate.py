#!/usr/bin/env python3
"""Writes valid.json and invalid.json from SPEC.md alone, independently of the Swift code.

Each vector is the hex of one whole packet. Valid vectors carry the decoded fields; invalid ones the
error code (SPEC.md §7) a receiver must report. Run: python3 protocol/vectors/generate.py
"""
import json
import os
import struct

MAGIC = 0x54414F49
TYPES = {
    "HELLO": 0x0001, "ALLOC": 0x0002, "REGISTER": 0x0003, "FREE": 0x0004, "OPEN": 0x0005,
    "CLOSE": 0x0006, "SUBMIT": 0x0007, "STATUS": 0x0008, "RESERVE": 0x0009, "SET_COALESCE": 0x000A, "HELLO_OK": 0x8001, "ALLOC_OK": 0x8002,
    "REGISTER_OK": 0x8003, "FREE_OK": 0x8004, "OPEN_OK": 0x8005, "CLOSE_OK": 0x8006,
    "STATUS_OK": 0x8008, "RESERVE_OK": 0x8009, "COALESCE_OK": 0x800A, "RING": 0x000B, "RING_OK": 0x800B, "COMPLETION": 0xC001, "GOODBYE": 0xC002, "RESTARTED": 0xC003, "RESYNC": 0x000C, "RESYNC_OK": 0x800C, "ERROR": 0xFFFF,
}
OPCODES = {"NULL": 0, "COPY": 1, "FILL": 2, "CRC32C": 3, "COPY_CRC32C": 4,
           "COMPARE": 5, "COMPARE_PATTERN": 6, "DUALCAST": 7, "XOR": 8, "DRAIN": 9, "COPY_SG": 10}
INT_EN, FENCE, NO_WAIT, CRC_SEED = 1, 2, 4, 8
CRC_STORE, CRC_TEST, CRC_INLINE, CRC_CHAIN = 16, 32, 64, 128


def packet(type_name, body, request_id=1, version=1, magic=MAGIC, reserved=0, length=None, type_value=None):
    t = TYPES[type_name] if type_value is None else type_value
    total = 24 + len(body) if length is None else length
    return struct.pack("<IHHIIQ", magic, version, t, total, reserved, request_id) + body


def desc(opcode, flags=0, src=(0, 0), cookie=0, length=0, dst=(0, 0), aux=(0, 0), arg=0, reserved=0):
    op = OPCODES[opcode] if isinstance(opcode, str) else opcode
    return struct.pack("<BBHIQQQIIQQQ", op, reserved, flags, src[0], cookie, length, src[1],
                       dst[0], aux[0], dst[1], aux[1], arg)


def submit(queue, descriptors, count=None):
    n = len(descriptors) if count is None else count
    return struct.pack("<II", queue, n) + b"".join(descriptors)


def record(cookie, status, opcode, result, done, reserved=0, reserved2=0):
    return struct.pack("<QHBBIQQ", cookie, status, opcode, reserved, result, done, reserved2)


def channel(index, engine, hw, opcodes, max_transfer, max_depth, coalesce, name):
    raw = name.encode()
    return struct.pack("<IHHQQII", index, engine, hw, opcodes, max_transfer, max_depth, coalesce) + raw + b"\0" * (16 - len(raw))


def error(code, index, text, reserved=0, text_length=None):
    raw = text if isinstance(text, bytes) else text.encode()
    n = len(raw) if text_length is None else text_length
    return struct.pack("<IIII", code, index, n, reserved) + raw


valid = []
invalid = []


def ok(name, type_name, data, fields, request_id=1, version=1):
    valid.append({"name": name, "type": type_name, "request_id": request_id, "version": version, "hex": data.hex(), "fields": fields})


def bad(name, data, code, version=1):
    invalid.append({"name": name, "version": version, "hex": data.hex(), "error": code})


def v2(type_name, body, request_id=1):
    return packet(type_name, body, request_id=request_id, version=2)


def d2(opcode, flags=0, src=(0, 0), cookie=0, length=0, dst=(0, 0), aux=(0, 0), arg=0):
    """A v2 descriptor with its expected decoded fields."""
    raw = desc(opcode, flags, src, cookie, length, dst, aux, arg)
    return raw, {"opcode": opcode, "flags": flags, "cookie": cookie, "length": length, "src_handle": src[0], "src_offset": src[1],
                 "dst_handle": dst[0], "dst_offset": dst[1], "aux_handle": aux[0], "aux_offset": aux[1], "arg": arg}


# ---- valid -------------------------------------------------------------------------------------
ok("hello v1", "HELLO", packet("HELLO", struct.pack("<HHIQ", 1, 1, 0, 0), request_id=0),
   {"min_version": 1, "max_version": 1, "features": 0}, request_id=0)
ok("hello offering 1..3 with a feature", "HELLO", packet("HELLO", struct.pack("<HHIQ", 1, 3, 0, 1), request_id=7),
   {"min_version": 1, "max_version": 3, "features": 1}, request_id=7)
ok("alloc 1 MiB, hugepages preferred", "ALLOC", packet("ALLOC", struct.pack("<QII", 1 << 20, 0, 0), request_id=2),
   {"size": 1 << 20, "pages": "prefer"}, request_id=2)
ok("alloc required hugepages", "ALLOC", packet("ALLOC", struct.pack("<QII", 4096, 1, 0)), {"size": 4096, "pages": "require"})
ok("alloc without hugepages", "ALLOC", packet("ALLOC", struct.pack("<QII", 1, 2, 0)), {"size": 1, "pages": "none"})
ok("register", "REGISTER", packet("REGISTER", struct.pack("<II", 0, 0)), {})
ok("free handle 3", "FREE", packet("FREE", struct.pack("<II", 3, 0)), {"handle": 3})
ok("open any channel depth 64", "OPEN", packet("OPEN", struct.pack("<II", 0xFFFFFFFF, 64)), {"channel": 0xFFFFFFFF, "depth": 64})
ok("close queue 1", "CLOSE", packet("CLOSE", struct.pack("<II", 1, 0)), {"queue": 1})
ok("status", "STATUS", packet("STATUS", b""), {})
ok("submit one copy", "SUBMIT",
   packet("SUBMIT", submit(1, [desc("COPY", INT_EN, src=(1, 0), cookie=42, length=4096, dst=(2, 8192))]), request_id=9),
   {"queue": 1, "descriptors": [{"opcode": "COPY", "flags": INT_EN, "cookie": 42, "length": 4096, "src_handle": 1,
                                 "src_offset": 0, "dst_handle": 2, "dst_offset": 8192, "arg": 0}]}, request_id=9)
ok("submit every opcode", "SUBMIT",
   packet("SUBMIT", submit(5, [
       desc("NULL", INT_EN | FENCE, cookie=1),
       desc("COPY", 0, src=(1, 64), cookie=2, length=1, dst=(1, 128)),
       desc("FILL", NO_WAIT, cookie=3, length=89, dst=(2, 7), arg=0x0123456789ABCDEF),
       desc("CRC32C", CRC_SEED, src=(2, 0), cookie=4, length=9, arg=0xE3069283),
       desc("COPY_CRC32C", 0, src=(2, 0), cookie=0xFFFFFFFFFFFFFFFF, length=1 << 40, dst=(3, 1 << 33)),
   ])),
   {"queue": 5, "descriptors": [
       {"opcode": "NULL", "flags": 3, "cookie": 1, "length": 0, "src_handle": 0, "src_offset": 0, "dst_handle": 0, "dst_offset": 0, "arg": 0},
       {"opcode": "COPY", "flags": 0, "cookie": 2, "length": 1, "src_handle": 1, "src_offset": 64, "dst_handle": 1, "dst_offset": 128, "arg": 0},
       {"opcode": "FILL", "flags": 4, "cookie": 3, "length": 89, "src_handle": 0, "src_offset": 0, "dst_handle": 2, "dst_offset": 7,
        "arg": 0x0123456789ABCDEF},
       {"opcode": "CRC32C", "flags": 8, "cookie": 4, "length": 9, "src_handle": 2, "src_offset": 0, "dst_handle": 0, "dst_offset": 0,
        "arg": 0xE3069283},
       {"opcode": "COPY_CRC32C", "flags": 0, "cookie": 0xFFFFFFFFFFFFFFFF, "length": 1 << 40, "src_handle": 2, "src_offset": 0,
        "dst_handle": 3, "dst_offset": 1 << 33, "arg": 0},
   ]})
ok("hello_ok with two channels", "HELLO_OK",
   packet("HELLO_OK", struct.pack("<HHIQIIIIQQ", 1, 2, 65536, 0, 512, 1024, 64, 1024, 4 << 30, 2 << 20)
          + channel(0, 1, 0, 0x1F, 1 << 62, 4096, 16383, "cpu0") + channel(1, 2, 3, 0x7, 1 << 20, 512, 16383, "dma_skeleton0x"),
          request_id=0),
   {"version": 1, "max_message": 65536, "max_descriptors": 512, "max_queue_depth": 1024, "max_queues": 64,
    "max_buffers": 1024, "max_buffer_bytes": 4 << 30, "hugepage_size": 2 << 20,
    "channels": [{"index": 0, "engine": 1, "hw_version": 0, "opcodes": 0x1F, "max_transfer": 1 << 62, "max_depth": 4096,
                  "max_coalesce_us": 16383, "name": "cpu0"},
                 {"index": 1, "engine": 2, "hw_version": 3, "opcodes": 0x7, "max_transfer": 1 << 20, "max_depth": 512,
                  "max_coalesce_us": 16383, "name": "dma_skeleton0x"}]},
   request_id=0)
ok("alloc_ok on hugepages", "ALLOC_OK", packet("ALLOC_OK", struct.pack("<IIQQ", 1, 3, 2 << 20, 2 << 20), request_id=2),
   {"handle": 1, "flags": 3, "size": 2 << 20, "page_size": 2 << 20}, request_id=2)
ok("register_ok read-only", "REGISTER_OK", packet("REGISTER_OK", struct.pack("<IIQQ", 2, 4, 8192, 4096)),
   {"handle": 2, "flags": 4, "size": 8192, "page_size": 4096})
ok("free_ok", "FREE_OK", packet("FREE_OK", b""), {})
ok("open_ok", "OPEN_OK", packet("OPEN_OK", struct.pack("<IIII", 1, 0, 64, 0)), {"queue": 1, "channel": 0, "depth": 64})
ok("close_ok", "CLOSE_OK", packet("CLOSE_OK", b""), {})
ok("status next page", "STATUS", packet("STATUS", struct.pack("<QII", 17, 1000, 0)), {"client_from": 17, "tenant_from": 1000})
# Found by the fuzzer: a paging body of zeros names the first page but is not the empty body; it re-encodes as sent.
ok("status paging body of zeros", "STATUS", packet("STATUS", struct.pack("<QII", 0, 0, 0)), {"client_from": 0, "tenant_from": 0})
ok("status_ok", "STATUS_OK", packet("STATUS_OK", b'{"server":{"pid":1}}'), {"json": '{"server":{"pid":1}}'})
ok("completion of two ops", "COMPLETION",
   packet("COMPLETION", struct.pack("<II", 1, 2) + record(42, 0, 1, 0, 4096) + record(43, 0, 3, 0xE3069283, 9), request_id=0),
   {"queue": 1, "records": [{"cookie": 42, "status": 0, "opcode": 1, "result": 0, "bytes_done": 4096},
                            {"cookie": 43, "status": 0, "opcode": 3, "result": 0xE3069283, "bytes_done": 9}]}, request_id=0)
ok("goodbye with 5 s to drain", "GOODBYE", packet("GOODBYE", struct.pack("<II", 5000, 0), request_id=0),
   {"drain_ms": 5000}, request_id=0)
ok("error naming a descriptor", "ERROR",
   packet("ERROR", error(14, 3, "descriptor 3: source offset 4096 + length 8192 exceeds buffer 7 (size 8192)"), request_id=9),
   {"code": "OUT_OF_RANGE", "index": 3, "message": "descriptor 3: source offset 4096 + length 8192 exceeds buffer 7 (size 8192)", "queue": 0},
   request_id=9)
ok("UNAVAILABLE to a client waiting on a server that cannot start", "ERROR",
   packet("ERROR", error(37, 0xFFFFFFFF, "ioatd cannot start: its configuration or options were refused"), request_id=0),
   {"code": "UNAVAILABLE", "index": 0xFFFFFFFF, "message": "ioatd cannot start: its configuration or options were refused", "queue": 0},
   request_id=0)
# After HELLO_OK every message is framed with the negotiated version, the ERROR that refuses a frame
# of another version (and closes the connection) included (SPEC.md §2.2).
ok("UNSUPPORTED_VERSION for a version 1 frame on a version 3 connection, framed with 3", "ERROR",
   packet("ERROR", error(3, 0xFFFFFFFF, "message framed with version 1; this connection negotiated version 3"), request_id=8, version=3),
   {"code": "UNSUPPORTED_VERSION", "index": 0xFFFFFFFF, "message": "message framed with version 1; this connection negotiated version 3", "queue": 0},
   request_id=8, version=3)

# ---- invalid: framing --------------------------------------------------------------------------
hello = struct.pack("<HHIQ", 1, 1, 0, 0)
bad("packet shorter than the header", packet("STATUS", b"")[:23], "MALFORMED")
bad("empty packet", b"", "MALFORMED")
bad("wrong magic", packet("STATUS", b"", magic=0x4C4C4548), "BAD_MAGIC")
bad("version 2 on a version 1 connection", packet("STATUS", b"", version=2), "UNSUPPORTED_VERSION")
bad("version 0", packet("HELLO", hello, version=0), "UNSUPPORTED_VERSION")
bad("length field larger than the packet", packet("STATUS", b"", length=25), "MALFORMED")
bad("length field smaller than the packet", packet("FREE", struct.pack("<II", 1, 0), length=24), "MALFORMED")
bad("header reserved not zero", packet("STATUS", b"", reserved=1), "RESERVED_NOT_ZERO")
bad("undefined type 0x0009", packet("STATUS", b"", type_value=0x0009), "UNKNOWN_TYPE")
bad("undefined type 0x7777", packet("STATUS", b"", type_value=0x7777), "UNKNOWN_TYPE")
bad("undefined type 0x8007 (no SUBMIT_OK)", packet("STATUS", b"", type_value=0x8007), "UNKNOWN_TYPE")
# ---- invalid: request bodies -------------------------------------------------------------------
bad("hello body too short", packet("HELLO", hello[:8]), "MALFORMED")
bad("hello body too long", packet("HELLO", hello + b"\0" * 8), "MALFORMED")
bad("hello reserved not zero", packet("HELLO", struct.pack("<HHIQ", 1, 1, 5, 0)), "RESERVED_NOT_ZERO")
bad("hello min_version above max_version", packet("HELLO", struct.pack("<HHIQ", 2, 1, 0, 0)), "MALFORMED")
bad("alloc size zero", packet("ALLOC", struct.pack("<QII", 0, 0, 0)), "BAD_LENGTH")
bad("alloc undefined flag", packet("ALLOC", struct.pack("<QII", 4096, 4, 0)), "UNKNOWN_FLAGS")
bad("alloc required and no hugepages", packet("ALLOC", struct.pack("<QII", 4096, 3, 0)), "BAD_FLAGS")
bad("alloc reserved not zero", packet("ALLOC", struct.pack("<QII", 4096, 0, 1)), "RESERVED_NOT_ZERO")
bad("alloc body too short", packet("ALLOC", struct.pack("<Q", 4096)), "MALFORMED")
bad("register flags not zero", packet("REGISTER", struct.pack("<II", 1, 0)), "UNKNOWN_FLAGS")
bad("register reserved not zero", packet("REGISTER", struct.pack("<II", 0, 1)), "RESERVED_NOT_ZERO")
bad("free reserved not zero", packet("FREE", struct.pack("<II", 1, 1)), "RESERVED_NOT_ZERO")
bad("free body too short", packet("FREE", struct.pack("<I", 1)), "MALFORMED")
bad("open body too long", packet("OPEN", struct.pack("<III", 0, 4, 0)), "MALFORMED")
bad("close reserved not zero", packet("CLOSE", struct.pack("<II", 1, 2)), "RESERVED_NOT_ZERO")
bad("status with a body", packet("STATUS", b"\0" * 8), "MALFORMED")
# ---- invalid: SUBMIT -----------------------------------------------------------------------------
copy = desc("COPY", src=(1, 0), length=8, dst=(2, 0))
bad("submit body shorter than 8", packet("SUBMIT", struct.pack("<I", 1)), "MALFORMED")
bad("submit with no descriptors", packet("SUBMIT", submit(1, [])), "BAD_COUNT")
bad("submit count says 2, carries 1", packet("SUBMIT", submit(1, [copy], count=2)), "MALFORMED")
bad("submit count 0xFFFFFFFF with no descriptors: the body size is checked first", packet("SUBMIT", struct.pack("<II", 1, 0xFFFFFFFF)), "MALFORMED")
bad("empty packet", b"", "MALFORMED")
bad("status body of 8 bytes", packet("STATUS", b"\0" * 8), "MALFORMED")
bad("status paging reserved not zero", packet("STATUS", struct.pack("<QII", 0, 0, 1)), "RESERVED_NOT_ZERO")
bad("submit carries half a descriptor", packet("SUBMIT", submit(1, [copy[:32]], count=1)), "MALFORMED")
bad("undefined opcode 200", packet("SUBMIT", submit(1, [desc(200, src=(1, 0), length=8, dst=(2, 0))])), "UNKNOWN_OPCODE")
bad("descriptor reserved byte", packet("SUBMIT", submit(1, [desc("COPY", src=(1, 0), length=8, dst=(2, 0), reserved=1)])), "RESERVED_NOT_ZERO")
bad("undefined descriptor flag bit 4", packet("SUBMIT", submit(1, [desc("COPY", 16, src=(1, 0), length=8, dst=(2, 0))])), "UNKNOWN_FLAGS")
bad("undefined descriptor flag bit 15", packet("SUBMIT", submit(1, [desc("COPY", 0x8000, src=(1, 0), length=8, dst=(2, 0))])), "UNKNOWN_FLAGS")
bad("copy of length zero", packet("SUBMIT", submit(1, [desc("COPY", src=(1, 0), length=0, dst=(2, 0))])), "BAD_LENGTH")
bad("null with a length", packet("SUBMIT", submit(1, [desc("NULL", length=8)])), "BAD_LENGTH")
bad("null with a source", packet("SUBMIT", submit(1, [desc("NULL", src=(1, 0))])), "RESERVED_NOT_ZERO")
bad("copy with an auxiliary address", packet("SUBMIT", submit(1, [desc("COPY", src=(1, 0), length=8, dst=(2, 0), aux=(3, 0))])), "RESERVED_NOT_ZERO")
bad("copy from handle 0", packet("SUBMIT", submit(1, [desc("COPY", src=(0, 0), length=8, dst=(2, 0))])), "BAD_HANDLE")
bad("copy to handle 0", packet("SUBMIT", submit(1, [desc("COPY", src=(1, 0), length=8, dst=(0, 0))])), "BAD_HANDLE")
bad("copy with arg", packet("SUBMIT", submit(1, [desc("COPY", src=(1, 0), length=8, dst=(2, 0), arg=1)])), "RESERVED_NOT_ZERO")
bad("fill with a source", packet("SUBMIT", submit(1, [desc("FILL", src=(1, 0), length=8, dst=(2, 0))])), "RESERVED_NOT_ZERO")
bad("crc32c with a destination", packet("SUBMIT", submit(1, [desc("CRC32C", src=(1, 0), length=8, dst=(2, 0))])), "RESERVED_NOT_ZERO")
bad("crc32c arg without CRC_SEED", packet("SUBMIT", submit(1, [desc("CRC32C", src=(1, 0), length=8, arg=5)])), "RESERVED_NOT_ZERO")
bad("crc32c seed above 32 bits", packet("SUBMIT", submit(1, [desc("CRC32C", CRC_SEED, src=(1, 0), length=8, arg=1 << 32)])), "RESERVED_NOT_ZERO")
bad("CRC_SEED on a copy", packet("SUBMIT", submit(1, [desc("COPY", CRC_SEED, src=(1, 0), length=8, dst=(2, 0))])), "BAD_FLAGS")
bad("second descriptor bad, first fine", packet("SUBMIT", submit(1, [copy, desc(99)])), "UNKNOWN_OPCODE")
# ---- invalid: server messages (what a client must refuse) ----------------------------------------
bad("hello_ok channel count says 1, carries none", packet("HELLO_OK", struct.pack("<HHIQIIIIQQ", 1, 1, 65536, 0, 512, 1024, 64, 1024, 1, 0)), "MALFORMED")
bad("hello_ok undefined engine kind", packet("HELLO_OK", struct.pack("<HHIQIIIIQQ", 1, 1, 65536, 0, 512, 1024, 64, 1024, 1, 0)
                                             + channel(0, 9, 0, 1, 1, 1, 1, "x")), "MALFORMED")
bad("alloc_ok undefined flag", packet("ALLOC_OK", struct.pack("<IIQQ", 1, 8, 4096, 4096)), "UNKNOWN_FLAGS")
bad("open_ok reserved not zero", packet("OPEN_OK", struct.pack("<IIII", 1, 0, 64, 1)), "RESERVED_NOT_ZERO")
bad("status_ok not UTF-8", packet("STATUS_OK", b"\xff\xfe"), "MALFORMED")
bad("completion count says 2, carries 1", packet("COMPLETION", struct.pack("<II", 1, 2) + record(1, 0, 1, 0, 8)), "MALFORMED")
bad("completion record reserved byte", packet("COMPLETION", struct.pack("<II", 1, 1) + record(1, 0, 1, 0, 8, reserved=1)), "RESERVED_NOT_ZERO")
bad("completion record reserved tail", packet("COMPLETION", struct.pack("<II", 1, 1) + record(1, 0, 1, 0, 8, reserved2=1)), "RESERVED_NOT_ZERO")
bad("error text length mismatch", packet("ERROR", error(1, 0xFFFFFFFF, "abc", text_length=4)), "MALFORMED")
bad("error text not UTF-8", packet("ERROR", error(1, 0xFFFFFFFF, b"\xc3\x28")), "MALFORMED")
bad("error reserved not zero", packet("ERROR", error(1, 0xFFFFFFFF, "x", reserved=1)), "RESERVED_NOT_ZERO")
bad("free_ok with a body", packet("FREE_OK", b"\0" * 8), "MALFORMED")
bad("goodbye reserved not zero", packet("GOODBYE", struct.pack("<II", 5000, 1)), "RESERVED_NOT_ZERO")
bad("goodbye body too short", packet("GOODBYE", struct.pack("<I", 5000)), "MALFORMED")

def big_as_string(value):
    """JSON numbers above 2^53 lose precision in many parsers: write those as decimal strings."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value > 1 << 53:
        return str(value)
    if isinstance(value, list):
        return [big_as_string(v) for v in value]
    if isinstance(value, dict):
        return {k: big_as_string(v) for k, v in value.items()}
    return value


valid = [big_as_string(v) for v in valid]
# ---- version 2 -----------------------------------------------------------------------------------
ok("hello offering 1..2", "HELLO", packet("HELLO", struct.pack("<HHIQ", 1, 2, 0, 0), request_id=0),
   {"min_version": 1, "max_version": 2, "features": 0}, request_id=0)
v2_descs = [
    d2("COMPARE", 0, src=(1, 0), cookie=1, length=4096, dst=(2, 0)),
    d2("COMPARE_PATTERN", 0, src=(1, 8), cookie=2, length=100, arg=0xA5A5A5A5A5A5A5A5),
    d2("DUALCAST", INT_EN, src=(1, 0), cookie=3, length=64, dst=(2, 0), aux=(3, 64)),
    d2("XOR", 0, cookie=4, length=4096, dst=(4, 0), aux=(5, 0), arg=3),
    d2("DRAIN", INT_EN, cookie=5),
    d2("CRC32C", CRC_STORE, src=(1, 0), cookie=6, length=9, aux=(2, 100)),
    d2("CRC32C", CRC_TEST | CRC_INLINE | CRC_CHAIN, src=(1, 0), cookie=7, length=9),
    d2("COPY_CRC32C", CRC_STORE | CRC_INLINE | CRC_SEED, src=(1, 0), cookie=8, length=9, dst=(2, 0), arg=0xE3069283),
    d2("COPY_SG", INT_EN, cookie=9, length=8192, aux=(6, 4096), arg=2),
]
ok("v2 submit of every new opcode and CRC mode", "SUBMIT", v2("SUBMIT", submit(9, [r for r, _ in v2_descs])),
   {"queue": 9, "descriptors": [f for _, f in v2_descs]}, version=2)
ok("reserve 8 credits, waiting", "RESERVE", v2("RESERVE", struct.pack("<IIII", 1, 8, 0, 0)),
   {"queue": 1, "credits": 8, "no_wait": "false"}, version=2)
ok("reserve 1 credit with NO_WAIT", "RESERVE", v2("RESERVE", struct.pack("<IIII", 3, 1, 1, 0)),
   {"queue": 3, "credits": 1, "no_wait": "true"}, version=2)
ok("reserve_ok", "RESERVE_OK", v2("RESERVE_OK", struct.pack("<II", 60, 0)), {"free_credits": 60}, version=2)
ok("set coalescing to 500 us", "SET_COALESCE", v2("SET_COALESCE", struct.pack("<II", 2, 500)), {"queue": 2, "microseconds": 500}, version=2)
ok("coalesce_ok", "COALESCE_OK", v2("COALESCE_OK", struct.pack("<II", 500, 0)), {"microseconds": 500}, version=2)
bad("v1 connection: SET_COALESCE is not defined", packet("SET_COALESCE", struct.pack("<II", 2, 500)), "UNKNOWN_TYPE")
bad("set_coalesce body too long", v2("SET_COALESCE", struct.pack("<III", 2, 500, 0)), "MALFORMED", 2)
bad("coalesce_ok reserved not zero", v2("COALESCE_OK", struct.pack("<II", 500, 1)), "RESERVED_NOT_ZERO", 2)
bad("v1 connection: RESERVE is not defined", packet("RESERVE", struct.pack("<IIII", 1, 8, 0, 0)), "UNKNOWN_TYPE")
bad("reserve of 0 credits", v2("RESERVE", struct.pack("<IIII", 1, 0, 0, 0)), "BAD_COUNT", 2)
bad("reserve undefined flag", v2("RESERVE", struct.pack("<IIII", 1, 1, 2, 0)), "UNKNOWN_FLAGS", 2)
bad("reserve reserved not zero", v2("RESERVE", struct.pack("<IIII", 1, 1, 0, 9)), "RESERVED_NOT_ZERO", 2)
bad("reserve body too short", v2("RESERVE", struct.pack("<II", 1, 1)), "MALFORMED", 2)
bad("reserve_ok reserved not zero", v2("RESERVE_OK", struct.pack("<II", 1, 1)), "RESERVED_NOT_ZERO", 2)
bad("COPY_SG of no entries", v2("SUBMIT", submit(1, [desc("COPY_SG", length=8, aux=(3, 0), arg=0)])), "BAD_COUNT", 2)
bad("COPY_SG of 65 entries", v2("SUBMIT", submit(1, [desc("COPY_SG", length=8, aux=(3, 0), arg=65)])), "BAD_COUNT", 2)
bad("COPY_SG without an entry list", v2("SUBMIT", submit(1, [desc("COPY_SG", length=8, arg=1)])), "BAD_HANDLE", 2)
bad("COPY_SG with a source field", v2("SUBMIT", submit(1, [desc("COPY_SG", src=(1, 0), length=8, aux=(3, 0), arg=1)])), "RESERVED_NOT_ZERO", 2)
bad("v1 connection: COMPARE is not defined", packet("SUBMIT", submit(1, [desc("COMPARE", src=(1, 0), length=8, dst=(2, 0))])), "UNKNOWN_OPCODE")
bad("v1 connection: CRC_STORE is not defined", packet("SUBMIT", submit(1, [desc("CRC32C", CRC_STORE, src=(1, 0), length=8, aux=(2, 0))])), "UNKNOWN_FLAGS")
bad("CRC_STORE with CRC_TEST", v2("SUBMIT", submit(1, [desc("CRC32C", CRC_STORE | CRC_TEST, src=(1, 0), length=8, aux=(2, 0))])), "BAD_FLAGS", 2)
bad("CRC_INLINE alone", v2("SUBMIT", submit(1, [desc("CRC32C", CRC_INLINE, src=(1, 0), length=8)])), "BAD_FLAGS", 2)
bad("CRC_SEED with CRC_CHAIN", v2("SUBMIT", submit(1, [desc("CRC32C", CRC_SEED | CRC_CHAIN, src=(1, 0), length=8, arg=1)])), "BAD_FLAGS", 2)
bad("CRC_CHAIN on a copy", v2("SUBMIT", submit(1, [desc("COPY", CRC_CHAIN, src=(1, 0), length=8, dst=(2, 0))])), "BAD_FLAGS", 2)
bad("CRC_STORE without a place to store", v2("SUBMIT", submit(1, [desc("CRC32C", CRC_STORE, src=(1, 0), length=8)])), "BAD_HANDLE", 2)
bad("inline CRC_TEST with an auxiliary address", v2("SUBMIT", submit(1, [desc("CRC32C", CRC_TEST | CRC_INLINE, src=(1, 0), length=8, aux=(2, 0))])),
    "RESERVED_NOT_ZERO", 2)
bad("XOR of one source", v2("SUBMIT", submit(1, [desc("XOR", length=8, dst=(2, 0), aux=(3, 0), arg=1)])), "BAD_COUNT", 2)
bad("XOR of seventeen sources", v2("SUBMIT", submit(1, [desc("XOR", length=8, dst=(2, 0), aux=(3, 0), arg=17)])), "BAD_COUNT", 2)
bad("XOR without a source list", v2("SUBMIT", submit(1, [desc("XOR", length=8, dst=(2, 0), arg=2)])), "BAD_HANDLE", 2)
bad("XOR with a source field", v2("SUBMIT", submit(1, [desc("XOR", src=(1, 0), length=8, dst=(2, 0), aux=(3, 0), arg=2)])), "RESERVED_NOT_ZERO", 2)
bad("DUALCAST without a second destination", v2("SUBMIT", submit(1, [desc("DUALCAST", src=(1, 0), length=8, dst=(2, 0))])), "BAD_HANDLE", 2)
bad("DRAIN with a length", v2("SUBMIT", submit(1, [desc("DRAIN", length=8)])), "BAD_LENGTH", 2)
bad("COMPARE with arg", v2("SUBMIT", submit(1, [desc("COMPARE", src=(1, 0), length=8, dst=(2, 0), arg=1)])), "RESERVED_NOT_ZERO", 2)
bad("COMPARE_PATTERN with a destination", v2("SUBMIT", submit(1, [desc("COMPARE_PATTERN", src=(1, 0), length=8, dst=(2, 0))])),
    "RESERVED_NOT_ZERO", 2)
bad("undefined opcode 11 on v2", v2("SUBMIT", submit(1, [desc(11, length=8)])), "UNKNOWN_OPCODE", 2)
bad("undefined flag bit 8 on v2", v2("SUBMIT", submit(1, [desc("NULL", 256)])), "UNKNOWN_FLAGS", 2)

# Version 3: ring queues (SPEC.md §5.10).
def v3(type_name, body, request_id=1):
    return packet(type_name, body, request_id=request_id, version=3)


ok("ring: make queue 5 a ring queue", "RING", v3("RING", struct.pack("<II", 5, 0), request_id=4), {"queue": 5}, request_id=4, version=3)
ok("ring_ok: 64 + 64 entries in 12 KiB", "RING_OK", v3("RING_OK", struct.pack("<IIIIQ", 5, 64, 64, 0, 12288), request_id=4),
   {"queue": 5, "sq_entries": 64, "cq_entries": 64, "size": 12288}, request_id=4, version=3)
ok("v3 error about ring entry 17 of queue 5", "ERROR",
   v3("ERROR", error(13, 17, "queue 5, ring entry 17: destination handle 9 is not open on this connection", reserved=5), request_id=0),
   {"code": "BAD_HANDLE", "index": 17, "message": "queue 5, ring entry 17: destination handle 9 is not open on this connection", "queue": 5},
   request_id=0, version=3)
bad("ring reserved not zero", v3("RING", struct.pack("<II", 5, 1)), "RESERVED_NOT_ZERO", 3)
bad("ring body too short", v3("RING", struct.pack("<I", 5)), "MALFORMED", 3)
bad("ring_ok reserved not zero", v3("RING_OK", struct.pack("<IIIIQ", 5, 64, 64, 1, 12288)), "RESERVED_NOT_ZERO", 3)
bad("ring_ok body too short", v3("RING_OK", struct.pack("<IIII", 5, 64, 64, 0)), "MALFORMED", 3)
bad("v2 connection: RING is not defined", v2("RING", struct.pack("<II", 5, 0)), "UNKNOWN_TYPE", 2)
bad("v2 error with the v3 queue word", v2("ERROR", error(1, 0xFFFFFFFF, "x", reserved=5)), "RESERVED_NOT_ZERO", 2)

# Version 3, feature bit 1: restart without dropping clients (SPEC.md §5.11).
ok("restarted after a handover: nothing lost, the first restart", "RESTARTED", v3("RESTARTED", struct.pack("<II", 0, 1), request_id=0),
   {"lost": "false", "restarts": 1}, request_id=0, version=3)
ok("restarted after a crash: work in flight lost, the third restart", "RESTARTED", v3("RESTARTED", struct.pack("<II", 1, 3), request_id=0),
   {"lost": "true", "restarts": 3}, request_id=0, version=3)
ok("resync", "RESYNC", v3("RESYNC", struct.pack("<II", 0, 0), request_id=9), {}, request_id=9, version=3)
ok("resync_ok", "RESYNC_OK", v3("RESYNC_OK", struct.pack("<II", 0, 0), request_id=9), {}, request_id=9, version=3)
ok("completion: an op in flight at a crash, RESTARTED", "COMPLETION",
   v3("COMPLETION", struct.pack("<II", 5, 1) + record(0x77, 16, 1, 0, 0), request_id=0),
   {"queue": 5, "records": [{"cookie": 0x77, "status": 16, "opcode": 1, "result": 0, "bytes_done": 0}]}, request_id=0, version=3)
bad("restarted with undefined flag bit 1", v3("RESTARTED", struct.pack("<II", 2, 1)), "UNKNOWN_FLAGS", 3)
bad("restarted body too short", v3("RESTARTED", struct.pack("<I", 0)), "MALFORMED", 3)
bad("resync reserved not zero", v3("RESYNC", struct.pack("<II", 0, 1)), "RESERVED_NOT_ZERO", 3)
bad("resync body too long", v3("RESYNC", struct.pack("<III", 0, 0, 0)), "MALFORMED", 3)
bad("v2 connection: RESYNC is not defined", v2("RESYNC", struct.pack("<II", 0, 0)), "UNKNOWN_TYPE", 2)

here = os.path.dirname(os.path.abspath(__file__))
header = "Generated by generate.py from SPEC.md. Each hex is one whole packet (SPEC.md §2)."
with open(os.path.join(here, "valid.json"), "w") as f:
    json.dump({"description": header + " Decoding must give type, request_id and fields; encoding the fields must give the bytes."
               " Integers above 2^53 are written as decimal strings.",
               "vectors": valid}, f, indent=1)
    f.write("\n")
with open(os.path.join(here, "invalid.json"), "w") as f:
    json.dump({"description": header + " Decoding must fail with the error code named (SPEC.md §7), "
               "on a connection that speaks the vector's version with max_descriptors 512.",
               "vectors": invalid}, f, indent=1)
    f.write("\n")
print(f"{len(valid)} valid, {len(invalid)} invalid vectors")
