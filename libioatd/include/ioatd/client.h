/*
 * <ioatd/client.h> - libioatd, the C client of the ioatd memory-copy offload service.
 *
 * One `struct ioatd_client` is one connection to a server (SPEC.md). It owns the caller's buffers
 * (shared memfds the server also maps) and queues. A queue moves descriptors to the server and
 * completion records back, over shared-memory rings when the server grants them (protocol version 3)
 * and over SUBMIT/COMPLETION messages otherwise; the calls below are the same either way.
 *
 *     struct ioatd_client *c;
 *     int rc = ioatd_connect(NULL, 0, &c);                  // NULL: the default socket (SPEC.md §1)
 *     void *src, *dst;
 *     ioatd_buffer_alloc(c, 1 << 20, 0, &src);              // mapped here and in the server
 *     ioatd_buffer_alloc(c, 1 << 20, 0, &dst);
 *     struct ioatd_queue *q;
 *     ioatd_queue_open(c, IOATD_ANY_CHANNEL, 64, &q);
 *     struct ioatd_desc *d = ioatd_get_desc(q);             // NULL: the queue's depth is in use
 *     ioatd_prep_copy(q, d, dst, src, 4096, 0);             // plain pointers into ioatd buffers
 *     ioatd_desc_set_cookie(d, 42);
 *     ioatd_submit(q);
 *     struct ioatd_completion_record *r;
 *     ioatd_wait_completion(q, &r, 1000);                   // r->cookie == 42, r->status == IOATD_ST_SUCCESS
 *     ioatd_completion_seen(q, r);                          // hands the record's credit back
 *
 * Errors are negative numbers: -errno for a local failure (-EINVAL for a pointer outside every
 * buffer, checked before anything is sent), and IOATD_ERR(code) for a refusal by the server, whose
 * protocol code and message ioatd_strerror() names. Every failure has a text there, including a failed
 * ioatd_connect (ioatd_strerror(NULL, rc), in the thread that called it).
 *
 * NULL: a NULL client, queue or required pointer argument is -EINVAL from calls that return an int,
 * NULL from calls that return a pointer, 0 from calls that return a count, id or size, and nothing
 * from calls that return void. No call dereferences one.
 *
 * Threads (liburing's and DPDK's model): one queue per thread. A queue is used by one thread at a
 * time (getting, prepping and submitting descriptors, peeking, waiting, advancing); different queues
 * of one client may be used by different threads at once, and the control calls (buffers, queues,
 * status, coalescing) may be called from any thread at any time; the library serialises what they
 * share. ioatd_close only when no other thread uses the client. Nothing runs behind the caller's
 * back: the library starts no thread and installs no signal handler; completions are read only
 * inside ioatd_peek_*, ioatd_wait_* and ioatd_submit_and_wait.
 *
 * Nothing waits forever unless asked to. ioatd_connect waits at most 5 s for the server to take the
 * connection and answer HELLO ($IOATD_CONNECT_TIMEOUT_MS, or ioatd_connect_timeout): a healthy
 * server answers in well under a millisecond, and 5 s covers a socket-activated cold start (DPDK's
 * start-up takes a second or two) while a person still gets an answer before giving up. Every other
 * control call waits at most 30 s for its reply ($IOATD_CALL_TIMEOUT_MS, or ioatd_set_call_timeout):
 * an ALLOC of a large buffer zeroes and locks its memory, which takes a fraction of a second per GiB,
 * so 30 s is far past any honest answer. A bound that runs out is -ETIMEDOUT, whose text names the
 * request, the socket and the bound, and points at `journalctl -u ioatd`. Completion waits take their
 * own timeout_ms.
 *
 * Connection loss: when the server goes away (kill -9, a crash, a stop), every call that needs it
 * returns the connection's end (-ECONNRESET; IOATD_ERR(IOATD_E_SHUTTING_DOWN) after a GOODBYE),
 * ioatd_client_error() says so, and the connection's socket (ioatd_client_fd) polls readable. Every op
 * still in flight gets a record with status IOATD_ST_CONNECTION_LOST, in its queue's order, so each
 * submission is answered exactly once; then the waits return the connection's end. ioatd_queue_close
 * and ioatd_buffer_free then only free this side (0); connect again for new work.
 */
#ifndef IOATD_CLIENT_H
#define IOATD_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "ioatd.h"
#include "ioatd_ring.h"

#ifdef __cplusplus
extern "C" {
#endif

#define IOATD_LIB_VERSION_MAJOR 1
#define IOATD_LIB_VERSION_MINOR 3
/* (major << 16) | minor, as ioatd_lib_version() returns it. */
#define IOATD_LIB_VERSION ((IOATD_LIB_VERSION_MAJOR << 16) | IOATD_LIB_VERSION_MINOR)

/* The version of the library loaded at run time: (major << 16) | minor. */
uint32_t ioatd_lib_version(void);

/* A server's refusal as a return value: IOATD_ERR(IOATD_E_BAD_HANDLE) and so on. */
#define IOATD_ERR_BASE 1000
#define IOATD_ERR(code) (-(IOATD_ERR_BASE + (int)(code)))
/* The protocol error code of a return value, or 0 when it is a -errno. */
uint32_t ioatd_err_code(int err);
/* IOATD_ERR(code) as a function, for languages that cannot use the macro. */
int ioatd_err(uint32_t code);

/* A completion status no server sends: the library's record for an op that was in flight when the
 * connection ended (ioatd_status_name says "CONNECTION_LOST"). Whether it ran is unknown. */
#define IOATD_ST_CONNECTION_LOST 0xFFFFu

struct ioatd_client;
struct ioatd_queue;

/* ioatd_connect flags. */
#define IOATD_CONNECT_NO_RINGS (1u << 0) /* queues use SUBMIT/COMPLETION even where rings are granted */

/* Connects to the server at `path` (NULL: $IOATD_SOCKET, else /run/ioatd/ioatd.sock when it exists,
 * else the per-user socket; SPEC.md §1), checks that the server may be trusted (SO_PEERCRED: root,
 * the ioatd user, or the caller's own uid on a socket only the caller could have made) and says HELLO
 * (versions 2 and 3). Returns 0 and the client in *out, or a negative error. */
int ioatd_connect(const char *path, unsigned flags, struct ioatd_client **out);
/* ioatd_connect with its own bound on connecting and HELLO: timeout_ms >= 0, -1 for none, or
 * IOATD_TIMEOUT_DEFAULT ($IOATD_CONNECT_TIMEOUT_MS, else 5000). -ETIMEDOUT when it runs out. */
#define IOATD_TIMEOUT_DEFAULT (-2)
int ioatd_connect_timeout(const char *path, unsigned flags, int timeout_ms, struct ioatd_client **out);
/* The bound on each later control call's reply: ms, or -1 for none (default: $IOATD_CALL_TIMEOUT_MS,
 * else 30000). */
int ioatd_set_call_timeout(struct ioatd_client *c, int timeout_ms);
/* 0 while the connection is up; else the error calls now return (it ended). Reads what waits on the
 * socket first (never blocking), so an end no call has seen yet shows. */
int ioatd_client_error(struct ioatd_client *c);
/* Closes the connection: every queue and buffer of it is gone, its mappings unmapped. */
void ioatd_close(struct ioatd_client *c);

/* What an error means: "BAD_HANDLE: <the server's message>" for a refusal, strerror and what it was
 * about for a -errno (positive errno values, as ioat(4)'s calls return, are taken too). With c, the
 * client's most recent error of that code; with NULL, this thread's failed ioatd_connect. The text
 * is this thread's and lives until its next ioatd_strerror. */
const char *ioatd_strerror(struct ioatd_client *c, int err);
/* The name of a protocol error code ("BAD_HANDLE"), or "UNKNOWN". */
const char *ioatd_error_name(uint32_t code);
/* The name of a completion status ("SUCCESS", "REFUSED_BAD_HANDLE", ...). */
const char *ioatd_status_name(uint16_t status);

/* The protocol version in force, the server's limits and its channels (HELLO_OK, SPEC.md §4.2). */
int ioatd_protocol_version(const struct ioatd_client *c);
void ioatd_server_limits(const struct ioatd_client *c, struct ioatd_hello_ok *out);
int ioatd_channel_count(const struct ioatd_client *c);
/* Channel `index` (0 ... count - 1, not the channel's own index field) into *out; -EINVAL past the end. */
int ioatd_channel_info(const struct ioatd_client *c, unsigned index, struct ioatd_channel *out);
/* Whether this client's queues run over rings: the server granted them and the client did not refuse
 * them (IOATD_CONNECT_NO_RINGS). */
int ioatd_rings_granted(const struct ioatd_client *c);
/* STATUS (SPEC.md §5.6), first page: *json is a NUL-terminated JSON text the caller free()s. */
int ioatd_status(struct ioatd_client *c, char **json);
/* (1.3) Restarts of the server this connection lived through (SPEC.md §5.11), and through *crashes
 * how many were crashes. A restart that handed over changes nothing for the client. After a crash,
 * ops in flight complete with status IOATD_ST_RESTARTED, in their queue's order (they may or may not
 * have run), a control call caught in it returns -ECONNABORTED (it may or may not have been carried
 * out), and the connection, its buffers and its queues carry on. */
uint32_t ioatd_server_restarts(const struct ioatd_client *c, uint32_t *crashes);
/* Whether the server said GOODBYE (it is stopping), and its drain time in ms through *drain_ms. */
int ioatd_server_stopping(const struct ioatd_client *c, uint32_t *drain_ms);
/* The connection's socket, for poll/epoll: readable when a message waits (socket-transport
 * completions, replies, GOODBYE). */
int ioatd_client_fd(const struct ioatd_client *c);

/* ---- buffers (SPEC.md §5.1-5.3) ---- */

/* ALLOC: a buffer of at least `size` bytes (IOATD_ALLOC_* flags), mapped shared; its address in *addr. */
int ioatd_buffer_alloc(struct ioatd_client *c, uint64_t size, uint32_t flags, void **addr);
/* REGISTER: the caller's memfd (sealed with at least F_SEAL_SHRINK), mapped whole; the descriptor
 * stays the caller's. A memfd the server maps read-only is mapped read-only here too. */
int ioatd_buffer_register(struct ioatd_client *c, int memfd, void **addr);
/* FREE: `addr` is the address alloc or register returned; it is unmapped (after the connection's
 * end, only unmapped: the server freed it then). */
int ioatd_buffer_free(struct ioatd_client *c, void *addr);

struct ioatd_buffer_info {
    void *addr;         /* start of the mapping */
    uint64_t size;      /* usable bytes */
    uint64_t page_size; /* backing page size */
    uint32_t handle;    /* the server's handle */
    uint32_t flags;     /* IOATD_BUF_* */
};
/* The buffer that holds `p`, or -EINVAL when no buffer of this client does. */
int ioatd_buffer_info(const struct ioatd_client *c, const void *p, struct ioatd_buffer_info *out);
/* The handle and offset of [p, p + length) when one buffer holds it all, else -EINVAL. */
int ioatd_ref(const struct ioatd_client *c, const void *p, uint64_t length, uint32_t *handle, uint64_t *offset);

/* ---- queues (SPEC.md §5.4, §5.5, §5.9, §5.10) ---- */

/* OPEN on `channel` (IOATD_ANY_CHANNEL: the one with the fewest queues) with room for `depth`
 * outstanding ops; then RING when rings are granted and not refused by IOATD_CONNECT_NO_RINGS. */
int ioatd_queue_open(struct ioatd_client *c, uint32_t channel, uint32_t depth, struct ioatd_queue **out);
/* CLOSE; IOATD_ERR(IOATD_E_BUSY) while ops are outstanding (records not yet seen count). After the
 * connection's end it frees this side and returns 0, whatever is outstanding. */
int ioatd_queue_close(struct ioatd_queue *q);
uint32_t ioatd_queue_id(const struct ioatd_queue *q);
uint32_t ioatd_queue_channel(const struct ioatd_queue *q);
uint32_t ioatd_queue_depth(const struct ioatd_queue *q);
int ioatd_queue_is_ring(const struct ioatd_queue *q);
/* Ops submitted whose records were not marked seen, plus slots taken and not yet submitted. */
uint32_t ioatd_queue_in_use(const struct ioatd_queue *q);
struct ioatd_client *ioatd_queue_client(const struct ioatd_queue *q);
/* What a queue has done, counted by this library (the server's own counters are in STATUS). */
struct ioatd_queue_stats {
    uint64_t submitted; /* ops handed to the server */
    uint64_t completed; /* records marked seen */
    uint64_t failed;    /* of those, records whose status was not SUCCESS (MISMATCH included) */
    uint64_t refused;   /* of those, refusals (IOATD_STATUS_REFUSED + code) */
    uint64_t lost;      /* of those, IOATD_ST_CONNECTION_LOST */
    uint32_t in_flight; /* submitted, record not seen */
    uint32_t depth;
};
int ioatd_queue_stats(const struct ioatd_queue *q, struct ioatd_queue_stats *out);
/* The server's limits and channels as C structs are ioatd_server_limits (struct ioatd_hello_ok) and
 * ioatd_channel_info (struct ioatd_channel), above. */

/* SET_COALESCE (ioat(4) ioat_set_interrupt_coalesce): hold wake-ups / records up to `period_us`. */
int ioatd_queue_set_coalesce(struct ioatd_queue *q, uint32_t period_us);

/* How long ioatd_wait_completion looks for a record (spinning) before it sleeps: 50 µs unless set.
 * A round trip takes a few µs and a sleep and wake-up tens of µs, so a caller that wants the
 * transport's full speed and has a core to spare sets more (ioatctl bench's raw figures spin 1000 µs);
 * 0 sleeps at once. */
void ioatd_queue_set_spin(struct ioatd_queue *q, uint32_t microseconds);

/* ---- submitting (liburing's shape) ---- */

/* A free descriptor slot, zeroed, or NULL when `depth` ops are in use (submitted and not yet seen, or
 * taken and not yet submitted). The slot is the caller's until ioatd_submit. */
struct ioatd_desc *ioatd_get_desc(struct ioatd_queue *q);
/* Gives back the slot ioatd_get_desc returned last, while it is not submitted (after a prep that
 * failed). -EINVAL for any other slot. */
int ioatd_unget_desc(struct ioatd_queue *q, struct ioatd_desc *d);
/* Sends every slot taken since the last call. Returns how many, or a negative error. */
int ioatd_submit(struct ioatd_queue *q);

/* The record of the op carries the descriptor's cookie back: a number, or a pointer of the caller's. */
void ioatd_desc_set_cookie(struct ioatd_desc *d, uint64_t cookie);
void ioatd_desc_set_data(struct ioatd_desc *d, void *data);
void *ioatd_record_data(const struct ioatd_completion_record *rec);

/* Prep helpers: one per opcode of protocol version 2 (SPEC.md §6.2). `flags` takes IOATD_F_INT_EN,
 * IOATD_F_FENCE, IOATD_F_NO_WAIT and, for the CRC ops, the IOATD_F_CRC_* modes. Pointers are plain
 * addresses inside this client's buffers; one outside every buffer is -EINVAL, nothing is written to
 * the slot, and the caller gives it back with ioatd_unget_desc. Each prep sets the cookie to 0. */
int ioatd_prep_null(struct ioatd_queue *q, struct ioatd_desc *d, uint32_t flags);
int ioatd_prep_drain(struct ioatd_queue *q, struct ioatd_desc *d, uint32_t flags);
int ioatd_prep_copy(struct ioatd_queue *q, struct ioatd_desc *d, void *dst, const void *src, uint64_t length, uint32_t flags);
/* Byte i of [dst, dst + length) becomes byte (i mod 8) of `pattern`, little-endian. */
int ioatd_prep_fill(struct ioatd_queue *q, struct ioatd_desc *d, void *dst, uint64_t pattern, uint64_t length, uint32_t flags);
/* CRC32C of [src, src + length): the record's `result`. `seed` is used with IOATD_F_CRC_SEED;
 * `crc` is the 4-byte STORE / TEST location with IOATD_F_CRC_STORE or IOATD_F_CRC_TEST without
 * IOATD_F_CRC_INLINE, else NULL. */
int ioatd_prep_crc32c(struct ioatd_queue *q, struct ioatd_desc *d, const void *src, uint64_t length, uint32_t seed,
                      void *crc, uint32_t flags);
int ioatd_prep_copy_crc32c(struct ioatd_queue *q, struct ioatd_desc *d, void *dst, const void *src, uint64_t length,
                           uint32_t seed, void *crc, uint32_t flags);
/* SUCCESS when equal; MISMATCH with bytes_done = offset of the first difference. */
int ioatd_prep_compare(struct ioatd_queue *q, struct ioatd_desc *d, const void *a, const void *b, uint64_t length, uint32_t flags);
int ioatd_prep_compare_pattern(struct ioatd_queue *q, struct ioatd_desc *d, const void *src, uint64_t pattern,
                               uint64_t length, uint32_t flags);
int ioatd_prep_dualcast(struct ioatd_queue *q, struct ioatd_desc *d, void *dst1, void *dst2, const void *src,
                        uint64_t length, uint32_t flags);
/* dst = XOR of the `count` sources (2...16), each `length` bytes. `list` is room for `count` struct
 * ioatd_xor_source inside a buffer; the prep writes it. */
int ioatd_prep_xor(struct ioatd_queue *q, struct ioatd_desc *d, void *dst, const void *const *srcs, uint32_t count,
                   uint64_t length, struct ioatd_xor_source *list, uint32_t flags);
/* Copies `count` ranges (1...64), src[i] to dst[i], lengths[i] bytes each. `list` is room for `count`
 * struct ioatd_sg_entry inside a buffer; the prep writes it. */
int ioatd_prep_copy_sg(struct ioatd_queue *q, struct ioatd_desc *d, void *const *dsts, const void *const *srcs,
                       const uint64_t *lengths, uint32_t count, struct ioatd_sg_entry *list, uint32_t flags);

/* ---- completing ---- */

/* Records come in submission order, one per descriptor. A descriptor the server refused has status
 * IOATD_STATUS_REFUSED + its error code (ioatd_strerror(c, IOATD_ERR(status - IOATD_STATUS_REFUSED))
 * gives the server's text, on either transport); over the socket every descriptor of a refused SUBMIT
 * gets that status. An op in flight when the connection ended gets IOATD_ST_CONNECTION_LOST.
 *
 * A record pointer stays valid, and its bytes unchanged, until ioatd_cq_advance (or
 * ioatd_completion_seen) passes it; copy what you need before that. */

/* The oldest record not yet seen into *rec: 0, or -EAGAIN when none is ready (never blocks). */
int ioatd_peek_completion(struct ioatd_queue *q, struct ioatd_completion_record **rec);
/* Up to `max` ready records into recs[]; returns how many (0 ... max), or a negative error. */
int ioatd_peek_batch(struct ioatd_queue *q, struct ioatd_completion_record **recs, unsigned max);
/* Waits until a record is ready, up to `timeout_ms` (-1: forever): 0; -ETIME when the time ran out;
 * -EAGAIN at once when no op is in flight (submitted and its record not seen: nothing could come);
 * the connection's end once every record has been handed out (-ECONNRESET;
 * IOATD_ERR(IOATD_E_SHUTTING_DOWN) after GOODBYE); IOATD_ERR(IOATD_E_RING_BROKEN). */
int ioatd_wait_completion(struct ioatd_queue *q, struct ioatd_completion_record **rec, int timeout_ms);
/* Waits until at least `min` records are ready (as ioatd_wait_completion; -EAGAIN at once when fewer
 * than `min` ops are in flight), then hands out up to `max` of them as ioatd_peek_batch does. */
int ioatd_wait_completions(struct ioatd_queue *q, struct ioatd_completion_record **recs, unsigned min, unsigned max,
                           int timeout_ms);
/* ioatd_submit, then waits until `wait_nr` records are ready (0: no wait). Returns how many were
 * submitted, or the error of either step. */
int ioatd_submit_and_wait(struct ioatd_queue *q, unsigned wait_nr, int timeout_ms);
/* Marks the oldest `n` records seen: their slots and credits go back. */
void ioatd_cq_advance(struct ioatd_queue *q, unsigned n);
void ioatd_completion_seen(struct ioatd_queue *q, struct ioatd_completion_record *rec);

/* For the caller's own event loop: ioatd_queue_arm(q, n) asks to be woken once n records are ready;
 * 1 means sleep on ioatd_queue_event_fd(q) (poll for POLLIN), 0 that they are there already. Awake,
 * call ioatd_queue_disarm(q), then peek. A ring queue's fd is its doorbell; a socket queue's is the
 * connection's, which another thread's call on the same client may read: with several threads on one
 * client, wait on socket queues with ioatd_wait_completion(s) instead. */
int ioatd_queue_event_fd(const struct ioatd_queue *q);
int ioatd_queue_arm(struct ioatd_queue *q, unsigned n);
void ioatd_queue_disarm(struct ioatd_queue *q);

#ifdef __cplusplus
}
#endif

#endif /* IOATD_CLIENT_H */
