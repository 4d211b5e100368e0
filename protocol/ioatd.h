/*
 * ioatd.h - wire structures of the ioatd protocol, versions 1, 2 and 3.
 *
 * Normative text: SPEC.md beside this file. Installed by `make install` as <ioatd/ioatd.h>, with a
 * pkg-config file `ioatd.pc`. All integers are little-endian; every struct is laid out with natural
 * alignment and no implicit padding, which the IOATD_STATIC_ASSERTs below check
 * (static_assert in C++, _Static_assert in C11: g++ has no _Static_assert).
 */
#ifndef IOATD_H
#define IOATD_H

#include <stddef.h>
#include <stdint.h>

#define IOATD_MAGIC 0x54414F49u /* "IOAT" */
#define IOATD_VERSION 3 /* newest; servers also speak 1 and 2 */
#define IOATD_MIN_VERSION 1
#define IOATD_DEFAULT_SOCKET "/run/ioatd/ioatd.sock"
#define IOATD_SOCKET_ENV "IOATD_SOCKET"
#define IOATD_ANY_CHANNEL 0xFFFFFFFFu
#define IOATD_NO_INDEX 0xFFFFFFFFu

/* Message types (SPEC.md §3). */
enum ioatd_msg_type {
    IOATD_MSG_HELLO = 0x0001,
    IOATD_MSG_ALLOC = 0x0002,
    IOATD_MSG_REGISTER = 0x0003,
    IOATD_MSG_FREE = 0x0004,
    IOATD_MSG_OPEN = 0x0005,
    IOATD_MSG_CLOSE = 0x0006,
    IOATD_MSG_SUBMIT = 0x0007,
    IOATD_MSG_STATUS = 0x0008,
    IOATD_MSG_RESERVE = 0x0009, /* version 2 */
    IOATD_MSG_SET_COALESCE = 0x000A, /* version 2 */
    IOATD_MSG_RING = 0x000B, /* version 3 */
    IOATD_MSG_RESYNC = 0x000C, /* version 3, feature bit 1 */
    IOATD_MSG_HELLO_OK = 0x8001,
    IOATD_MSG_ALLOC_OK = 0x8002,
    IOATD_MSG_REGISTER_OK = 0x8003,
    IOATD_MSG_FREE_OK = 0x8004,
    IOATD_MSG_OPEN_OK = 0x8005,
    IOATD_MSG_CLOSE_OK = 0x8006,
    IOATD_MSG_STATUS_OK = 0x8008,
    IOATD_MSG_RESERVE_OK = 0x8009, /* version 2 */
    IOATD_MSG_COALESCE_OK = 0x800A, /* version 2 */
    IOATD_MSG_RING_OK = 0x800B, /* version 3 */
    IOATD_MSG_RESYNC_OK = 0x800C, /* version 3, feature bit 1 */
    IOATD_MSG_COMPLETION = 0xC001,
    IOATD_MSG_GOODBYE = 0xC002,
    IOATD_MSG_RESTARTED = 0xC003, /* version 3, feature bit 1 */
    IOATD_MSG_ERROR = 0xFFFF,
};

/* Opcodes (SPEC.md §6.2). */
enum ioatd_opcode {
    IOATD_OP_NULL = 0,
    IOATD_OP_COPY = 1,
    IOATD_OP_FILL = 2,
    IOATD_OP_CRC32C = 3,
    IOATD_OP_COPY_CRC32C = 4,
    IOATD_OP_COMPARE = 5,         /* version 2 */
    IOATD_OP_COMPARE_PATTERN = 6, /* version 2 */
    IOATD_OP_DUALCAST = 7,        /* version 2 */
    IOATD_OP_XOR = 8,             /* version 2 */
    IOATD_OP_DRAIN = 9,           /* version 2 */
    IOATD_OP_COPY_SG = 10,        /* version 2 */
};

/* Descriptor flags (SPEC.md §6.2). */
#define IOATD_F_INT_EN (1u << 0)
#define IOATD_F_FENCE (1u << 1)
#define IOATD_F_NO_WAIT (1u << 2)
#define IOATD_F_CRC_SEED (1u << 3)
#define IOATD_F_CRC_STORE (1u << 4)  /* version 2 */
#define IOATD_F_CRC_TEST (1u << 5)   /* version 2 */
#define IOATD_F_CRC_INLINE (1u << 6) /* version 2 */
#define IOATD_F_CRC_CHAIN (1u << 7)  /* version 2 */

/* One entry of an XOR source list (SPEC.md §6.2), addressed by the descriptor's aux fields. */
struct ioatd_xor_source {
    uint32_t handle;
    uint32_t reserved;
    uint64_t offset;
};

/* ALLOC flags and buffer reply flags (SPEC.md §5.1). */
#define IOATD_ALLOC_HUGEPAGE_REQUIRED (1u << 0)
#define IOATD_ALLOC_NO_HUGEPAGE (1u << 1)
#define IOATD_BUF_HUGEPAGES (1u << 0)
#define IOATD_BUF_LOCKED (1u << 1)
#define IOATD_BUF_READ_ONLY (1u << 2)

/* Engine kinds in a channel entry (SPEC.md §4.2). */
#define IOATD_ENGINE_CPU 1
#define IOATD_ENGINE_DPDK 2

/* Completion status (SPEC.md §6.5). */
enum ioatd_status {
    IOATD_ST_SUCCESS = 0,
    IOATD_ST_MISMATCH = 1,
    IOATD_ST_NOT_ATTEMPTED = 2,
    IOATD_ST_NO_SPACE = 3,
    IOATD_ST_INVALID_SRC_ADDR = 4,
    IOATD_ST_INVALID_DST_ADDR = 5,
    IOATD_ST_INVALID_LENGTH = 6,
    IOATD_ST_INVALID_OPCODE = 7,
    IOATD_ST_BUS_READ_ERROR = 8,
    IOATD_ST_BUS_WRITE_ERROR = 9,
    IOATD_ST_DATA_POISON = 10,
    IOATD_ST_PAGE_FAULT = 11,
    IOATD_ST_USER_ABORT = 12,
    IOATD_ST_CHANNEL_HALTED = 13,
    IOATD_ST_ENGINE_ERROR = 14,
    IOATD_ST_CANCELLED = 15,
    IOATD_ST_RESTARTED = 16, /* version 3, feature bit 1: in flight at a server crash (SPEC.md §5.11) */
};

/* Error codes (SPEC.md §7). */
enum ioatd_error {
    IOATD_E_MALFORMED = 1,
    IOATD_E_BAD_MAGIC = 2,
    IOATD_E_UNSUPPORTED_VERSION = 3,
    IOATD_E_UNKNOWN_TYPE = 4,
    IOATD_E_RESERVED_NOT_ZERO = 5,
    IOATD_E_UNKNOWN_FLAGS = 6,
    IOATD_E_BAD_FLAGS = 7,
    IOATD_E_NOT_NEGOTIATED = 8,
    IOATD_E_ALREADY_NEGOTIATED = 9,
    IOATD_E_TOO_LARGE = 10,
    IOATD_E_UNEXPECTED_FD = 11,
    IOATD_E_MISSING_FD = 12,
    IOATD_E_BAD_HANDLE = 13,
    IOATD_E_OUT_OF_RANGE = 14,
    IOATD_E_OVERFLOW = 15,
    IOATD_E_BAD_LENGTH = 16,
    IOATD_E_UNKNOWN_OPCODE = 17,
    IOATD_E_UNSUPPORTED_OPCODE = 18,
    IOATD_E_BAD_QUEUE = 19,
    IOATD_E_BAD_CHANNEL = 20,
    IOATD_E_BAD_DEPTH = 21,
    IOATD_E_BAD_COUNT = 22,
    IOATD_E_NO_SPACE = 23,
    IOATD_E_NOT_MEMFD = 24,
    IOATD_E_NOT_SEALED = 25,
    IOATD_E_READ_ONLY = 26,
    IOATD_E_NO_MEMORY = 27,
    IOATD_E_NO_HUGEPAGES = 28,
    IOATD_E_QUOTA_EXCEEDED = 29,
    IOATD_E_BUSY = 30,
    IOATD_E_PERMISSION_DENIED = 31,
    IOATD_E_SHUTTING_DOWN = 32,
    IOATD_E_UNEXPECTED_TYPE = 33,
    IOATD_E_INTERNAL = 34,
    IOATD_E_BAD_PERIOD = 35, /* version 2 */
    IOATD_E_RING_BROKEN = 36, /* version 3 */
    IOATD_E_UNAVAILABLE = 37, /* the service cannot start: sent to waiting connections, request_id 0 */
};

/* §2.2 */
struct ioatd_header {
    uint32_t magic;
    uint16_t version;
    uint16_t type;
    uint32_t length;
    uint32_t reserved;
    uint64_t request_id;
};

/* §4.1 */
struct ioatd_hello {
    uint16_t min_version;
    uint16_t max_version;
    uint32_t reserved;
    uint64_t features;
};

/* §4.2, followed by channel_count struct ioatd_channel */
struct ioatd_hello_ok {
    uint16_t version;
    uint16_t channel_count;
    uint32_t max_message;
    uint64_t features;
    uint32_t max_descriptors;
    uint32_t max_queue_depth;
    uint32_t max_queues;
    uint32_t max_buffers;
    uint64_t max_buffer_bytes;
    uint64_t hugepage_size;
};

struct ioatd_channel {
    uint32_t index;
    uint16_t engine;
    uint16_t hw_version;
    uint64_t opcodes;
    uint64_t max_transfer;
    uint32_t max_depth;
    uint32_t max_coalesce_us;
    char name[16];
};

/* §5.1 */
struct ioatd_alloc {
    uint64_t size;
    uint32_t flags;
    uint32_t reserved;
};

/* §5.1, §5.2: ALLOC_OK and REGISTER_OK */
struct ioatd_buffer_ok {
    uint32_t handle;
    uint32_t flags;
    uint64_t size;
    uint64_t page_size;
};

/* §5.2 */
struct ioatd_register {
    uint32_t flags;
    uint32_t reserved;
};

/* §5.3 */
struct ioatd_free {
    uint32_t handle;
    uint32_t reserved;
};

/* §5.4 */
struct ioatd_open {
    uint32_t channel;
    uint32_t depth;
};

struct ioatd_open_ok {
    uint32_t queue;
    uint32_t channel;
    uint32_t depth;
    uint32_t reserved;
};

/* §5.5 */
struct ioatd_close {
    uint32_t queue;
    uint32_t reserved;
};

/* §6.1, followed by count struct ioatd_desc */
struct ioatd_submit {
    uint32_t queue;
    uint32_t count;
};

struct ioatd_desc {
    uint8_t opcode;
    uint8_t reserved;
    uint16_t flags;
    uint32_t src_handle;
    uint64_t cookie;
    uint64_t length;
    uint64_t src_offset;
    uint32_t dst_handle;
    uint32_t aux_handle;
    uint64_t dst_offset;
    uint64_t aux_offset;
    uint64_t arg;
};

/* §6.4, followed by count struct ioatd_completion_record */
struct ioatd_completion {
    uint32_t queue;
    uint32_t count;
};

struct ioatd_completion_record {
    uint64_t cookie;
    uint16_t status;
    uint8_t opcode;
    uint8_t reserved;
    uint32_t result;
    uint64_t bytes_done;
    uint64_t reserved2;
};

/* §5.8 (version 2) */
#define IOATD_RESERVE_NO_WAIT (1u << 0)
struct ioatd_reserve {
    uint32_t queue;
    uint32_t credits;
    uint32_t flags;
    uint32_t reserved;
};

struct ioatd_reserve_ok {
    uint32_t free_credits;
    uint32_t reserved;
};

/* §5.9 (version 2) */
struct ioatd_set_coalesce {
    uint32_t queue;
    uint32_t period_us;
};

struct ioatd_coalesce_ok {
    uint32_t period_us;
    uint32_t reserved;
};

/* One entry of a COPY_SG list (SPEC.md §6.2), addressed by the descriptor's aux fields. */
struct ioatd_sg_entry {
    uint32_t src_handle;
    uint32_t dst_handle;
    uint64_t src_offset;
    uint64_t dst_offset;
    uint64_t length;
};

/* §5.6: STATUS's optional paging body (an empty body asks for the first page). */
struct ioatd_status_page {
    uint64_t client_from;
    uint32_t tenant_from;
    uint32_t reserved;
};

/* §5.7 */
struct ioatd_goodbye {
    uint32_t drain_ms;
    uint32_t reserved;
};

/* §5.11 (version 3, feature bit 1): RESTARTED; RESYNC and RESYNC_OK carry 8 bytes of zeros */
struct ioatd_restarted {
    uint32_t flags; /* IOATD_RESTARTED_LOST */
    uint32_t restarts;
};

/* §7, followed by text_length bytes of UTF-8 */
struct ioatd_error_msg {
    uint32_t code;
    uint32_t index;
    uint32_t text_length;
    uint32_t reserved;
};


/* §5.10 (version 3): RING turns an open queue into a shared-memory ring queue. */
#define IOATD_FEATURE_RINGS (1ull << 0)
/* HELLO feature bit 1 (version 3): the connection lives through a server restart (SPEC.md §5.11). */
#define IOATD_FEATURE_RESTART (1ull << 1)
/* RESTARTED flag bit 0: the previous instance crashed; what it took and did not answer is lost. */
#define IOATD_RESTARTED_LOST (1u << 0)
struct ioatd_ring_request {
    uint32_t queue;
    uint32_t reserved;
};

/* RING_OK carries two descriptors, in this order: the ring memfd, then the doorbell socket. */
struct ioatd_ring_ok {
    uint32_t queue;
    uint32_t sq_entries;
    uint32_t cq_entries;
    uint32_t reserved;
    uint64_t size;
};

/* §5.10.1: the ring memory starts with this header; every field's place is in `offsets`. */
#define IOATD_RING_MAGIC 0x474E4952u /* "RING" */
#define IOATD_RING_LAYOUT 1
#define IOATD_RING_SQ_NEED_WAKEUP (1u << 0) /* in sq_flags, written by the server */
#define IOATD_RING_CQ_NEED_WAKEUP (1u << 0) /* in cq_flags, written by the client */
/* A ring record's status for a descriptor the server refused: this base plus the error code (§7). */
#define IOATD_STATUS_REFUSED 0x0100u

struct ioatd_ring_offsets {
    uint32_t sq_head;  /* u32, server writes */
    uint32_t sq_tail;  /* u32, client writes */
    uint32_t sq_flags; /* u32, server writes */
    uint32_t sqes;     /* sq_entries struct ioatd_desc */
    uint32_t cq_head;  /* u32, client writes */
    uint32_t cq_tail;  /* u32, server writes */
    uint32_t cq_event; /* u32, client writes */
    uint32_t cq_flags; /* u32, client writes */
    uint32_t cqes;     /* cq_entries struct ioatd_completion_record */
    uint32_t error;    /* u32, server writes: 0, or the code that broke the queue */
    uint32_t reserved[6];
};

struct ioatd_ring_header {
    uint32_t magic;
    uint16_t layout;
    uint16_t header_size;
    uint32_t queue;
    uint32_t depth;
    uint32_t sq_entries;
    uint32_t cq_entries;
    uint64_t size;
    struct ioatd_ring_offsets offsets;
    uint8_t reserved[32];
};

#ifdef __cplusplus
#define IOATD_STATIC_ASSERT(condition, what) static_assert(condition, what)
#else
#define IOATD_STATIC_ASSERT(condition, what) _Static_assert(condition, what)
#endif

IOATD_STATIC_ASSERT(sizeof(struct ioatd_header) == 24, "ioatd_header");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_header, type) == 6, "ioatd_header.type");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_header, length) == 8, "ioatd_header.length");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_header, request_id) == 16, "ioatd_header.request_id");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_hello) == 16, "ioatd_hello");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_hello, features) == 8, "ioatd_hello.features");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_hello_ok) == 48, "ioatd_hello_ok");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_hello_ok, max_descriptors) == 16, "ioatd_hello_ok.max_descriptors");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_hello_ok, max_buffer_bytes) == 32, "ioatd_hello_ok.max_buffer_bytes");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_hello_ok, hugepage_size) == 40, "ioatd_hello_ok.hugepage_size");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_channel) == 48, "ioatd_channel");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_channel, opcodes) == 8, "ioatd_channel.opcodes");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_channel, max_depth) == 24, "ioatd_channel.max_depth");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_channel, name) == 32, "ioatd_channel.name");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_alloc) == 16, "ioatd_alloc");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_buffer_ok) == 24, "ioatd_buffer_ok");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_buffer_ok, page_size) == 16, "ioatd_buffer_ok.page_size");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_register) == 8, "ioatd_register");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_free) == 8, "ioatd_free");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_open) == 8, "ioatd_open");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_open_ok) == 16, "ioatd_open_ok");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_close) == 8, "ioatd_close");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_submit) == 8, "ioatd_submit");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_desc) == 64, "ioatd_desc");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_desc, flags) == 2, "ioatd_desc.flags");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_desc, src_handle) == 4, "ioatd_desc.src_handle");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_desc, cookie) == 8, "ioatd_desc.cookie");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_desc, length) == 16, "ioatd_desc.length");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_desc, src_offset) == 24, "ioatd_desc.src_offset");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_desc, dst_handle) == 32, "ioatd_desc.dst_handle");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_desc, aux_handle) == 36, "ioatd_desc.aux_handle");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_desc, dst_offset) == 40, "ioatd_desc.dst_offset");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_desc, aux_offset) == 48, "ioatd_desc.aux_offset");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_desc, arg) == 56, "ioatd_desc.arg");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_completion) == 8, "ioatd_completion");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_completion_record) == 32, "ioatd_completion_record");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_completion_record, status) == 8, "ioatd_completion_record.status");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_completion_record, result) == 12, "ioatd_completion_record.result");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_completion_record, bytes_done) == 16, "ioatd_completion_record.bytes_done");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_goodbye) == 8, "ioatd_goodbye");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_restarted) == 8, "ioatd_restarted");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_xor_source) == 16, "ioatd_xor_source");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_reserve) == 16, "ioatd_reserve");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_reserve_ok) == 8, "ioatd_reserve_ok");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_sg_entry) == 32, "ioatd_sg_entry");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_set_coalesce) == 8, "ioatd_set_coalesce");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_coalesce_ok) == 8, "ioatd_coalesce_ok");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_sg_entry, length) == 24, "ioatd_sg_entry.length");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_error_msg) == 16, "ioatd_error_msg");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_status_page) == 16, "ioatd_status_page");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_status_page, tenant_from) == 8, "ioatd_status_page.tenant_from");

IOATD_STATIC_ASSERT(sizeof(struct ioatd_ring_request) == 8, "ioatd_ring_request");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_ring_ok) == 24, "ioatd_ring_ok");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_ring_ok, size) == 16, "ioatd_ring_ok.size");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_ring_offsets) == 64, "ioatd_ring_offsets");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_ring_offsets, error) == 36, "ioatd_ring_offsets.error");
IOATD_STATIC_ASSERT(sizeof(struct ioatd_ring_header) == 128, "ioatd_ring_header");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_ring_header, size) == 24, "ioatd_ring_header.size");
IOATD_STATIC_ASSERT(offsetof(struct ioatd_ring_header, offsets) == 32, "ioatd_ring_header.offsets");

#endif /* IOATD_H */
