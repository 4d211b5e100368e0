/*
 * libioatd: connection, buffers, queues, descriptors and records (see <ioatd/client.h>).
 *
 * The connection is a SOCK_SEQPACKET socket: one message per packet (SPEC.md §1). Every message read
 * is dispatched, by whichever thread reads it: a reply goes to the call waiting for its request_id,
 * COMPLETION records to their queue, an ERROR for a SUBMIT turns that SUBMIT's descriptors into
 * refused records in their turn, GOODBYE is noted. One thread at a time sleeps in poll() on the
 * socket for everyone (the reader); the others sleep on a condition variable that each dispatch
 * wakes. Ring queues use the static inline fast path of <ioatd/ioatd_ring.h>, touched only by the
 * queue's own thread, so queues of one client run on different threads without a shared lock.
 *
 * Locks: `mu` guards the socket, the waiting calls, the queue list and every socket queue's records;
 * `buffers_lock` (read-mostly) guards the buffer table, which every prep reads. `lost` is read
 * without a lock (atomically) by the ring fast path.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <poll.h>
#include <pthread.h>
#include <pwd.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ioatd/client.h"

#define API __attribute__((visibility("default")))
#define HELLO_LIMIT 65536u
/* How long a waiter looks before it sleeps, by default: a round trip is a few µs, a sleep and
 * wake-up tens of µs (ioatd_queue_set_spin changes it per queue). */
#define SPIN_NS 50000u
/* The default bounds on waiting for the server (client.h says why these numbers). */
#define CONNECT_TIMEOUT_MS 5000
#define CALL_TIMEOUT_MS 30000
#define JOURNAL_HINT "the server's log says why: journalctl -u ioatd"

struct buffer {
    uint8_t *base;
    uint64_t size, page_size;
    uint32_t handle, flags;
};

/* A SUBMIT sent and not yet fully answered (socket queues): its records, or the status every record
 * still due gets (a refusal of the whole SUBMIT, or the connection's end). */
struct batch {
    uint64_t request_id;
    uint32_t count;  /* records still due */
    uint16_t status; /* 0 while records come from the server */
};

struct ioatd_queue {
    struct ioatd_client *c;
    uint32_t id, channel, depth;
    uint32_t in_flight; /* submitted, record not seen (the queue's thread only) */
    int is_ring;
    uint32_t empty_looks; /* ring queues: looks that found no record */
    uint64_t spin_ns;     /* how long ioatd_wait_completion looks before it sleeps */
    uint64_t submitted, completed, failed, refused, lost; /* ioatd_queue_stats (the queue's thread) */
    size_t last_buffer;   /* the buffer the last prep found first (a hint, checked) */
    /* Ring queues. */
    struct ioatd_ring ring;
    void *ring_map;
    size_t ring_size;
    /* Ring queues after the connection ended: the records of every op still in flight, made here
     * (IOATD_ST_CONNECTION_LOST) since no server will write them. The queue's thread only. */
    struct ioatd_completion_record *lost_records;
    uint32_t lost_head, lost_count;
    int lost_done;
    /* Socket queues (under c->mu but `slots` and `taken`, which are the queue's thread's): slots
     * taken, records received, SUBMITs answered in order. */
    struct ioatd_desc *slots;
    uint32_t taken;
    struct ioatd_completion_record *records; /* `depth` entries */
    uint32_t rec_head, rec_count;
    /* (cookie, opcode) of each op submitted, by submission sequence mod depth, for refusals. */
    uint64_t *cookies;
    uint8_t *opcodes;
    uint64_t seq_submitted, seq_recorded;
    struct batch *batches; /* `depth` entries: at most one per outstanding op */
    uint32_t batch_head, batch_count;
};

/* A control call waiting for its reply. */
struct waiter {
    uint64_t id;
    int done;
    uint16_t type;
    uint8_t *body;
    size_t length;
    int fds[2];
    int nfds;
    /* Sent before the RESYNC that follows a crash of the server (SPEC.md §5.11): still waiting at
     * RESYNC_OK means the crashed instance took it and never answered. */
    int before_resync;
    struct waiter *next;
};

struct ioatd_client {
    int fd;
    unsigned flags;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    uint16_t version;
    struct ioatd_hello_ok hello;
    struct ioatd_channel *channels;
    int call_timeout_ms;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a reply or records came, the reader left, the connection ended */
    int reading;       /* a thread sleeps in poll() on fd for everyone */
    uint64_t next_request;
    uint8_t *rx, *tx;
    size_t max_message;
    struct waiter *waiters;
    struct ioatd_queue **queues;
    size_t nqueues, cqueues;
    pthread_rwlock_t buffers_lock;
    struct buffer *buffers;
    size_t nbuffers, cbuffers;
    /* The end of the connection: 0, or the error calls now return (atomic). */
    int lost;
    int goodbye;
    uint32_t drain_ms;
    /* Restarts of the server this connection lived through, those that were crashes, and the RESYNC
     * whose answer is awaited (0: none). */
    uint32_t restarts, crashes;
    uint64_t resync_id;
    /* The latest error's detail, for ioatd_strerror: a protocol code or a -errno, and its text. */
    uint32_t last_code;
    int last_errno;
    char last_message[480];
};

/* ---- small things ---- */

API uint32_t ioatd_lib_version(void) { return IOATD_LIB_VERSION; }

API uint32_t ioatd_err_code(int err) {
    return (err <= -IOATD_ERR_BASE - 1 && err > -IOATD_ERR_BASE - 0x10000) ? (uint32_t)(-err - IOATD_ERR_BASE) : 0;
}
API int ioatd_err(uint32_t code) { return IOATD_ERR(code); }
API void ioatd_desc_set_cookie(struct ioatd_desc *d, uint64_t cookie) {
    if (d) d->cookie = cookie;
}
API void ioatd_desc_set_data(struct ioatd_desc *d, void *data) {
    if (d) d->cookie = (uint64_t)(uintptr_t)data;
}
API void *ioatd_record_data(const struct ioatd_completion_record *rec) {
    return rec ? (void *)(uintptr_t)rec->cookie : NULL;
}

static const char *const error_names[] = {
    [IOATD_E_MALFORMED] = "MALFORMED", [IOATD_E_BAD_MAGIC] = "BAD_MAGIC",
    [IOATD_E_UNSUPPORTED_VERSION] = "UNSUPPORTED_VERSION", [IOATD_E_UNKNOWN_TYPE] = "UNKNOWN_TYPE",
    [IOATD_E_RESERVED_NOT_ZERO] = "RESERVED_NOT_ZERO", [IOATD_E_UNKNOWN_FLAGS] = "UNKNOWN_FLAGS",
    [IOATD_E_BAD_FLAGS] = "BAD_FLAGS", [IOATD_E_NOT_NEGOTIATED] = "NOT_NEGOTIATED",
    [IOATD_E_ALREADY_NEGOTIATED] = "ALREADY_NEGOTIATED", [IOATD_E_TOO_LARGE] = "TOO_LARGE",
    [IOATD_E_UNEXPECTED_FD] = "UNEXPECTED_FD", [IOATD_E_MISSING_FD] = "MISSING_FD",
    [IOATD_E_BAD_HANDLE] = "BAD_HANDLE", [IOATD_E_OUT_OF_RANGE] = "OUT_OF_RANGE",
    [IOATD_E_OVERFLOW] = "OVERFLOW", [IOATD_E_BAD_LENGTH] = "BAD_LENGTH",
    [IOATD_E_UNKNOWN_OPCODE] = "UNKNOWN_OPCODE", [IOATD_E_UNSUPPORTED_OPCODE] = "UNSUPPORTED_OPCODE",
    [IOATD_E_BAD_QUEUE] = "BAD_QUEUE", [IOATD_E_BAD_CHANNEL] = "BAD_CHANNEL", [IOATD_E_BAD_DEPTH] = "BAD_DEPTH",
    [IOATD_E_BAD_COUNT] = "BAD_COUNT", [IOATD_E_NO_SPACE] = "NO_SPACE", [IOATD_E_NOT_MEMFD] = "NOT_MEMFD",
    [IOATD_E_NOT_SEALED] = "NOT_SEALED", [IOATD_E_READ_ONLY] = "READ_ONLY", [IOATD_E_NO_MEMORY] = "NO_MEMORY",
    [IOATD_E_NO_HUGEPAGES] = "NO_HUGEPAGES", [IOATD_E_QUOTA_EXCEEDED] = "QUOTA_EXCEEDED", [IOATD_E_BUSY] = "BUSY",
    [IOATD_E_PERMISSION_DENIED] = "PERMISSION_DENIED", [IOATD_E_SHUTTING_DOWN] = "SHUTTING_DOWN",
    [IOATD_E_UNEXPECTED_TYPE] = "UNEXPECTED_TYPE", [IOATD_E_INTERNAL] = "INTERNAL", [IOATD_E_BAD_PERIOD] = "BAD_PERIOD",
    [IOATD_E_RING_BROKEN] = "RING_BROKEN", [IOATD_E_UNAVAILABLE] = "UNAVAILABLE",
};

API const char *ioatd_error_name(uint32_t code) {
    if (code < sizeof error_names / sizeof error_names[0] && error_names[code]) return error_names[code];
    return "UNKNOWN";
}

static const char *const status_names[] = {
    "SUCCESS", "MISMATCH", "NOT_ATTEMPTED", "NO_SPACE", "INVALID_SRC_ADDR", "INVALID_DST_ADDR", "INVALID_LENGTH",
    "INVALID_OPCODE", "BUS_READ_ERROR", "BUS_WRITE_ERROR", "DATA_POISON", "PAGE_FAULT", "USER_ABORT",
    "CHANNEL_HALTED", "ENGINE_ERROR", "CANCELLED", "RESTARTED",
};

API const char *ioatd_status_name(uint16_t status) {
    static __thread char refused[48];
    if (status < sizeof status_names / sizeof status_names[0]) return status_names[status];
    if (status == IOATD_ST_CONNECTION_LOST) return "CONNECTION_LOST";
    if (status > IOATD_STATUS_REFUSED && status < IOATD_STATUS_REFUSED + 0x100) {
        snprintf(refused, sizeof refused, "REFUSED_%s", ioatd_error_name(status - IOATD_STATUS_REFUSED));
        return refused;
    }
    return "UNKNOWN";
}

/* The latest failure of this thread that left no client to ask (ioatd_connect). */
static __thread struct {
    int err;
    char message[480];
} failure;

API const char *ioatd_strerror(struct ioatd_client *c, int err) {
    static __thread char text[640];
    char message[480] = "";
    if (err > 0) err = -err; /* ioat(4)'s calls return positive errno values */
    uint32_t code = ioatd_err_code(err);
    if (c) {
        pthread_mutex_lock(&c->mu);
        if ((code && c->last_code == code) || (!code && c->last_errno == err)) snprintf(message, sizeof message, "%s", c->last_message);
        pthread_mutex_unlock(&c->mu);
    } else if (err != 0 && failure.err == err) {
        snprintf(message, sizeof message, "%s", failure.message);
    }
    if (code == 0) {
        snprintf(text, sizeof text, "%s%s%s", strerror(-err), message[0] ? ": " : "", message);
    } else if (message[0]) {
        snprintf(text, sizeof text, "%s: %s", ioatd_error_name(code), message);
    } else {
        snprintf(text, sizeof text, "%s (error %u from the server)", ioatd_error_name(code), code);
    }
    return text;
}

/* With c->mu held: a refusal by the server and its text. */
static void note_refusal(struct ioatd_client *c, uint32_t code, const char *text, size_t length) {
    c->last_code = code;
    c->last_errno = 0;
    if (length >= sizeof c->last_message) length = sizeof c->last_message - 1;
    memcpy(c->last_message, text, length);
    c->last_message[length] = 0;
}

/* With c->mu held: a local failure (-errno) and what it was about. Returns err. */
__attribute__((format(printf, 3, 4))) static int note_local(struct ioatd_client *c, int err, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(c->last_message, sizeof c->last_message, format, args);
    va_end(args);
    c->last_code = 0;
    c->last_errno = err;
    return err;
}

/* A failure of ioatd_connect, for ioatd_strerror(NULL, err). Returns err. */
__attribute__((format(printf, 2, 3))) static int note_failure(int err, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(failure.message, sizeof failure.message, format, args);
    va_end(args);
    failure.err = err;
    return err;
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A deadline in now_ns() time for a bound in ms, or -1 for none (timeout_ms < 0). */
static int64_t deadline_after(int timeout_ms) { return timeout_ms < 0 ? -1 : now_ns() + (int64_t)timeout_ms * 1000000; }

/* Milliseconds left until `deadline` for poll(2), rounded up: -1 for none, 0 when it passed. */
static int ms_left(int64_t deadline) {
    if (deadline < 0) return -1;
    int64_t left = deadline - now_ns();
    if (left <= 0) return 0;
    return left / 1000000 >= 0x7FFFFFFF ? 0x7FFFFFFF : (int)((left + 999999) / 1000000);
}

/* A bound from the environment (ms; -1 for none), or `fallback` when unset or not a number. */
static int env_timeout(const char *name, int fallback) {
    const char *v = getenv(name);
    if (!v || !*v) return fallback;
    char *end;
    long ms = strtol(v, &end, 10);
    return (*end || ms < -1 || ms > 0x7FFFFFFF) ? fallback : (int)ms;
}

static int is_lost(const struct ioatd_client *c) { return __atomic_load_n(&c->lost, __ATOMIC_ACQUIRE); }

static const char *message_name(uint16_t type) {
    switch (type) {
    case IOATD_MSG_HELLO: return "HELLO";
    case IOATD_MSG_ALLOC: return "ALLOC";
    case IOATD_MSG_REGISTER: return "REGISTER";
    case IOATD_MSG_FREE: return "FREE";
    case IOATD_MSG_OPEN: return "OPEN";
    case IOATD_MSG_CLOSE: return "CLOSE";
    case IOATD_MSG_STATUS: return "STATUS";
    case IOATD_MSG_SET_COALESCE: return "SET_COALESCE";
    case IOATD_MSG_RING: return "RING";
    default: return "a request";
    }
}

/* ---- the socket ---- */

static void close_fds(int *fds, int n) {
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0) close(fds[i]);
}

static ssize_t recv_message(struct ioatd_client *c, int *fds, int *nfds);
static void dispatch(struct ioatd_client *c, size_t length, int *fds, int nfds);
static void lose(struct ioatd_client *c, int why);

/* With c->mu held: sends one message (header + body + at most one descriptor). The socket does not
 * block: while it is full, what the server sends meanwhile is read (it may be waiting for that), up
 * to `deadline` (-1: none), then -ETIMEDOUT. A negative `deadline` of -2 tries once (-EAGAIN). */
static int send_message(struct ioatd_client *c, uint16_t type, uint64_t request_id, const void *body, size_t length,
                        int fd, int64_t deadline) {
    if (c->lost) return c->lost;
    size_t total = sizeof(struct ioatd_header) + length;
    if (total > c->max_message) return -EMSGSIZE;
    struct ioatd_header h = {
        .magic = IOATD_MAGIC, .version = type == IOATD_MSG_HELLO ? 1 : c->version, .type = type,
        .length = (uint32_t)total, .request_id = request_id,
    };
    struct iovec iov[2] = {{&h, sizeof h}, {(void *)body, length}};
    union { struct cmsghdr align; char space[CMSG_SPACE(sizeof(int))]; } control;
    struct msghdr m = {.msg_iov = iov, .msg_iovlen = length ? 2 : 1};
    if (fd >= 0) {
        memset(&control, 0, sizeof control);
        m.msg_control = control.space;
        m.msg_controllen = sizeof control.space;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    }
    for (;;) {
        ssize_t n = sendmsg(c->fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n == (ssize_t)total) return 0;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (deadline == -2) return -EAGAIN;
            int left = ms_left(deadline);
            if (left == 0) return -ETIMEDOUT;
            struct pollfd p = {c->fd, POLLOUT | POLLIN, 0};
            if (poll(&p, 1, left) > 0 && (p.revents & POLLIN)) {
                int fds[2], nfds;
                ssize_t got = recv_message(c, fds, &nfds);
                if (got < 0) {
                    lose(c, (int)got);
                    return c->lost;
                }
                if (got > 0) dispatch(c, (size_t)got, fds, nfds);
            }
            continue;
        }
        /* EPIPE and the like: the server is gone; what it sent before going is still read. */
        return n < 0 ? -errno : -EIO;
    }
}

/* Reads one message into c->rx (c->mu held). Returns its length, 0 when none waits, or a negative
 * error: the connection's end. Descriptors that came with it go to fds[] (at most 2; more are closed). */
static ssize_t recv_message(struct ioatd_client *c, int *fds, int *nfds) {
    union { struct cmsghdr align; char space[CMSG_SPACE(4 * sizeof(int))]; } control;
    struct iovec iov = {c->rx, c->max_message};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space, .msg_controllen = sizeof control.space};
    *nfds = 0;
    ssize_t n;
    do n = recvmsg(c->fd, &m, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
            if (*nfds < 2) fds[(*nfds)++] = fd;
            else close(fd);
        }
    }
    if (n == 0) return -ECONNRESET; /* end of stream */
    if (m.msg_flags & MSG_TRUNC) {
        close_fds(fds, *nfds);
        *nfds = 0;
        return -EMSGSIZE;
    }
    return n;
}

static struct ioatd_queue *queue_by_id(struct ioatd_client *c, uint32_t id) {
    for (size_t i = 0; i < c->nqueues; i++)
        if (c->queues[i]->id == id) return c->queues[i];
    return NULL;
}

/* Socket queues: records of SUBMITs given a status of their own (refused, or the connection's end)
 * at the front of the answer order go in now. */
static void flush_settled(struct ioatd_queue *q) {
    while (q->batch_count > 0 && q->batches[q->batch_head].status) {
        struct batch *b = &q->batches[q->batch_head];
        for (uint32_t i = 0; i < b->count; i++) {
            uint32_t seq = (uint32_t)(q->seq_recorded++ % q->depth);
            struct ioatd_completion_record *r = &q->records[(q->rec_head + q->rec_count++) % q->depth];
            memset(r, 0, sizeof *r);
            r->cookie = q->cookies[seq];
            r->opcode = q->opcodes[seq];
            r->status = b->status;
        }
        q->batch_head = (q->batch_head + 1) % q->depth;
        q->batch_count--;
    }
}

/* With c->mu held: the connection ended. Every call returns `why` (SHUTTING_DOWN after a GOODBYE)
 * from now on, and every op of a socket queue still in flight gets a CONNECTION_LOST record in its
 * turn (ring queues make theirs on their own thread, when they find the ring empty). */
static void lose(struct ioatd_client *c, int why) {
    if (c->lost) return;
    __atomic_store_n(&c->lost, c->goodbye ? IOATD_ERR(IOATD_E_SHUTTING_DOWN) : (why ? why : -ECONNRESET), __ATOMIC_RELEASE);
    for (size_t i = 0; i < c->nqueues; i++) {
        struct ioatd_queue *q = c->queues[i];
        if (q->is_ring) continue;
        for (uint32_t k = 0; k < q->batch_count; k++) {
            struct batch *b = &q->batches[(q->batch_head + k) % q->depth];
            if (!b->status) b->status = IOATD_ST_CONNECTION_LOST;
        }
        flush_settled(q);
    }
    pthread_cond_broadcast(&c->cv);
}

static void take_records(struct ioatd_client *c, const uint8_t *body, size_t length) {
    struct ioatd_completion head;
    if (length < sizeof head) return;
    memcpy(&head, body, sizeof head);
    if (length != sizeof head + (size_t)head.count * sizeof(struct ioatd_completion_record)) return;
    struct ioatd_queue *q = queue_by_id(c, head.queue);
    if (!q || q->is_ring) return;
    const uint8_t *p = body + sizeof head;
    for (uint32_t i = 0; i < head.count; i++, p += sizeof(struct ioatd_completion_record)) {
        flush_settled(q);
        /* More records than ops outstanding would be a server bug; they are dropped, never overflow. */
        if (q->batch_count == 0 || q->rec_count == q->depth) return;
        memcpy(&q->records[(q->rec_head + q->rec_count++) % q->depth], p, sizeof(struct ioatd_completion_record));
        q->seq_recorded++;
        struct batch *b = &q->batches[q->batch_head];
        if (--b->count == 0) {
            q->batch_head = (q->batch_head + 1) % q->depth;
            q->batch_count--;
        }
    }
    flush_settled(q);
}

/* RESTARTED (SPEC.md §5.11), with c->mu held. After a handover nothing was lost. After a crash (LOST),
 * every op of a socket queue without a record gets a RESTARTED record in its turn (the server discards
 * SUBMITs until RESYNC), the calls waiting now are marked, and RESYNC goes out: those still waiting at
 * its answer were taken by the crashed instance. Ring queues get their RESTARTED records in the ring. */
static void restarted(struct ioatd_client *c, const uint8_t *body, size_t length) {
    struct ioatd_restarted r;
    if (length != sizeof r) return;
    memcpy(&r, body, sizeof r);
    c->restarts = r.restarts;
    if (!(r.flags & IOATD_RESTARTED_LOST)) return;
    c->crashes++;
    for (size_t i = 0; i < c->nqueues; i++) {
        struct ioatd_queue *q = c->queues[i];
        if (q->is_ring) continue;
        for (uint32_t k = 0; k < q->batch_count; k++) {
            struct batch *b = &q->batches[(q->batch_head + k) % q->depth];
            if (!b->status) b->status = IOATD_ST_RESTARTED;
        }
        flush_settled(q);
    }
    for (struct waiter *w = c->waiters; w; w = w->next)
        if (!w->done) w->before_resync = 1;
    static const uint8_t zeros[8];
    c->resync_id = ++c->next_request;
    send_message(c, IOATD_MSG_RESYNC, c->resync_id, zeros, sizeof zeros, -1, -2);
}

/* RESYNC_OK: the calls sent before RESYNC and still waiting end (type 0: restarted). */
static void resynced(struct ioatd_client *c) {
    for (struct waiter *w = c->waiters; w; w = w->next) {
        if (w->done || !w->before_resync) continue;
        w->done = 1;
        w->type = 0;
    }
    c->resync_id = 0;
}

/* An ERROR whose request_id names a SUBMIT of a socket queue: that SUBMIT is refused. */
static int refuse_submit(struct ioatd_client *c, uint64_t request_id, uint32_t code) {
    for (size_t i = 0; i < c->nqueues; i++) {
        struct ioatd_queue *q = c->queues[i];
        if (q->is_ring) continue;
        for (uint32_t k = 0; k < q->batch_count; k++) {
            struct batch *b = &q->batches[(q->batch_head + k) % q->depth];
            if (b->request_id == request_id && !b->status) {
                b->status = (uint16_t)(IOATD_STATUS_REFUSED + (code ? code : IOATD_E_INTERNAL));
                flush_settled(q);
                return 1;
            }
        }
    }
    return 0;
}

static struct waiter *waiter_by_id(struct ioatd_client *c, uint64_t id) {
    for (struct waiter *w = c->waiters; w; w = w->next)
        if (w->id == id) return w;
    return NULL;
}

/* A reply whose call gave up waiting (its bound ran out): what it made on the server is given back,
 * without waiting for the answer, so a late ALLOC or OPEN leaks nothing for the connection's life. */
static void abandoned_reply(struct ioatd_client *c, uint16_t type, const uint8_t *body, size_t length) {
    if ((type == IOATD_MSG_ALLOC_OK || type == IOATD_MSG_REGISTER_OK) && length == sizeof(struct ioatd_buffer_ok)) {
        struct ioatd_buffer_ok ok;
        memcpy(&ok, body, sizeof ok);
        struct ioatd_free f = {.handle = ok.handle};
        send_message(c, IOATD_MSG_FREE, ++c->next_request, &f, sizeof f, -1, -2);
    } else if (type == IOATD_MSG_OPEN_OK && length == sizeof(struct ioatd_open_ok)) {
        struct ioatd_open_ok ok;
        memcpy(&ok, body, sizeof ok);
        struct ioatd_close m = {.queue = ok.queue};
        send_message(c, IOATD_MSG_CLOSE, ++c->next_request, &m, sizeof m, -1, -2);
    }
}

/* Dispatches one message read into c->rx (c->mu held). */
static void dispatch(struct ioatd_client *c, size_t length, int *fds, int nfds) {
    struct ioatd_header h;
    if (length < sizeof h) goto drop;
    memcpy(&h, c->rx, sizeof h);
    if (h.magic != IOATD_MAGIC || h.length != length) goto drop;
    const uint8_t *body = c->rx + sizeof h;
    size_t blen = length - sizeof h;
    switch (h.type) {
    case IOATD_MSG_COMPLETION:
        take_records(c, body, blen);
        goto drop;
    case IOATD_MSG_GOODBYE:
        if (blen >= sizeof(struct ioatd_goodbye)) {
            struct ioatd_goodbye g;
            memcpy(&g, body, sizeof g);
            c->drain_ms = g.drain_ms;
        }
        c->goodbye = 1;
        goto drop;
    case IOATD_MSG_RESTARTED:
        restarted(c, body, blen);
        goto drop;
    case IOATD_MSG_RESYNC_OK:
        if (h.request_id != 0 && h.request_id == c->resync_id) {
            resynced(c);
            goto drop;
        }
        break;
    case IOATD_MSG_ERROR:
        if (blen >= sizeof(struct ioatd_error_msg)) {
            struct ioatd_error_msg e;
            memcpy(&e, body, sizeof e);
            size_t text = blen - sizeof e < e.text_length ? blen - sizeof e : e.text_length;
            if (h.request_id == 0 || !waiter_by_id(c, h.request_id)) {
                /* Unsolicited (a refusal at connect, a ring refusal, RING_BROKEN) or about a SUBMIT. */
                note_refusal(c, e.code, (const char *)body + sizeof e, text);
                if (h.request_id != 0) refuse_submit(c, h.request_id, e.code);
                goto drop;
            }
        }
        break;
    default:
        break;
    }
    struct waiter *w = h.request_id ? waiter_by_id(c, h.request_id) : NULL;
    if (w && !w->done) {
        w->body = malloc(blen ? blen : 1);
        if (w->body) memcpy(w->body, body, blen);
        w->length = blen;
        w->type = h.type;
        memcpy(w->fds, fds, sizeof(int) * (size_t)nfds);
        w->nfds = nfds;
        w->done = 1;
        return;
    }
    if (!w && h.request_id) abandoned_reply(c, h.type, body, blen);
drop:
    close_fds(fds, nfds);
}

/* With c->mu held: reads and dispatches what waits, at most `max` messages (0: all). A waiter that
 * spins takes one at a time: reading on until the socket is empty puts a system call that finds
 * nothing between the record arriving and the caller seeing it. Returns how many were read. */
static int drain(struct ioatd_client *c, int max) {
    int count = 0;
    while (!c->lost && (max == 0 || count < max)) {
        int fds[2], nfds;
        ssize_t n = recv_message(c, fds, &nfds);
        if (n == 0) break;
        if (n < 0) {
            lose(c, (int)n);
            break;
        }
        dispatch(c, (size_t)n, fds, nfds);
        count++;
    }
    if (count) pthread_cond_broadcast(&c->cv);
    return count;
}

/* With c->mu held (released while asleep): waits until ready(c, arg), the connection's end or
 * `deadline` (-1: none): 0, c->lost or -ETIME. One waiter at a time sleeps in poll() on the socket
 * and reads for everyone; the others sleep on c->cv, which every dispatch and the reader's leaving
 * wake. */
static int wait_until(struct ioatd_client *c, int (*ready)(struct ioatd_client *, void *), void *arg, int64_t deadline) {
    for (;;) {
        drain(c, 0);
        if (ready(c, arg)) return 0;
        if (c->lost) return c->lost;
        int left = ms_left(deadline);
        if (left == 0) return -ETIME;
        if (!c->reading) {
            c->reading = 1;
            pthread_mutex_unlock(&c->mu);
            struct pollfd p = {c->fd, POLLIN, 0};
            poll(&p, 1, left);
            pthread_mutex_lock(&c->mu);
            c->reading = 0;
            pthread_cond_broadcast(&c->cv);
        } else if (deadline < 0) {
            pthread_cond_wait(&c->cv, &c->mu);
        } else {
            struct timespec ts = {.tv_sec = deadline / 1000000000, .tv_nsec = deadline % 1000000000};
            pthread_cond_timedwait(&c->cv, &c->mu, &ts);
        }
    }
}

static int waiter_done(struct ioatd_client *c, void *arg) {
    (void)c;
    return ((struct waiter *)arg)->done;
}

static void unlink_waiter(struct ioatd_client *c, struct waiter *w) {
    for (struct waiter **p = &c->waiters; *p; p = &(*p)->next)
        if (*p == w) {
            *p = w->next;
            return;
        }
}

/* The reply of a call, once used. */
static void release(struct waiter *w) {
    free(w->body);
    w->body = NULL;
    close_fds(w->fds, w->nfds);
    w->nfds = 0;
}

/* A control call: sends the request and waits for its reply, at most `timeout_ms` (-1: forever).
 * Returns 0 with the reply in *w (the caller calls release(w)), or an error: IOATD_ERR(code) for an
 * ERROR reply, -ETIMEDOUT when the bound ran out, the connection's end. */
static int call_within(struct ioatd_client *c, uint16_t type, const void *body, size_t length, int fd, uint16_t expect,
                       struct waiter *w, int timeout_ms) {
    memset(w, 0, sizeof *w);
    pthread_mutex_lock(&c->mu);
    if (c->lost) {
        int lost = c->lost;
        pthread_mutex_unlock(&c->mu);
        return lost;
    }
    int64_t deadline = deadline_after(timeout_ms);
    w->id = ++c->next_request;
    w->next = c->waiters;
    c->waiters = w;
    int rc = send_message(c, type, w->id, body, length, fd, deadline);
    if (rc < 0 && rc != -EPIPE && rc != -ECONNRESET) {
        /* Not sent (too large, the socket full past the bound): no reply will come. */
        unlink_waiter(c, w);
        if (rc == -ETIMEDOUT)
            note_local(c, rc, "%s could not be sent to the server at %s within %d ms (its socket stayed full); " JOURNAL_HINT,
                       message_name(type), c->path, timeout_ms);
        pthread_mutex_unlock(&c->mu);
        return rc;
    }
    /* A send that found the server gone shows as the connection's end, after what it had sent (an
     * ERROR saying why it closed the connection is read first). */
    rc = wait_until(c, waiter_done, w, deadline);
    unlink_waiter(c, w);
    if (rc == -ETIME) {
        note_local(c, -ETIMEDOUT, "%s got no answer from the server at %s within %d ms (stopped, wedged or overloaded); " JOURNAL_HINT,
                   message_name(type), c->path, timeout_ms);
        pthread_mutex_unlock(&c->mu);
        return -ETIMEDOUT;
    }
    if (rc < 0) {
        pthread_mutex_unlock(&c->mu);
        release(w);
        return rc;
    }
    if (w->type == 0) {
        note_local(c, -ECONNABORTED, "%s: the server at %s restarted after a crash before it answered; the request may or may "
                   "not have been carried out (the connection carries on)", message_name(type), c->path);
        pthread_mutex_unlock(&c->mu);
        release(w);
        return -ECONNABORTED;
    }
    if (w->type == IOATD_MSG_ERROR) {
        struct ioatd_error_msg e = {0};
        if (w->length >= sizeof e) memcpy(&e, w->body, sizeof e);
        size_t text = w->length >= sizeof e ? w->length - sizeof e : 0;
        if (text > e.text_length) text = e.text_length;
        note_refusal(c, e.code, (const char *)w->body + sizeof e, text);
        pthread_mutex_unlock(&c->mu);
        release(w);
        return IOATD_ERR(e.code ? e.code : IOATD_E_INTERNAL);
    }
    pthread_mutex_unlock(&c->mu);
    if (w->type != expect || w->body == NULL) {
        int bad = w->body == NULL ? -ENOMEM : -EPROTO;
        release(w);
        return bad;
    }
    return 0;
}

static int call(struct ioatd_client *c, uint16_t type, const void *body, size_t length, int fd, uint16_t expect, struct waiter *w) {
    return call_within(c, type, body, length, fd, expect, w, c->call_timeout_ms);
}

/* For <ioatd/ioat.h>'s own waits (not exported): the client's bound on waiting for the server. */
int ioatd_internal_call_timeout(const struct ioatd_client *c) { return c ? c->call_timeout_ms : -1; }

API int ioatd_set_call_timeout(struct ioatd_client *c, int timeout_ms) {
    if (!c || timeout_ms < -1) return -EINVAL;
    c->call_timeout_ms = timeout_ms;
    return 0;
}

/* Looks at the socket (without waiting) before it answers, so an end nobody has read yet shows. */
API int ioatd_client_error(struct ioatd_client *c) {
    if (!c) return -EINVAL;
    if (is_lost(c)) return is_lost(c);
    pthread_mutex_lock(&c->mu);
    drain(c, 0);
    int lost = c->lost;
    pthread_mutex_unlock(&c->mu);
    return lost;
}

/* ---- connecting ---- */

static int default_path(char *out, size_t room) {
    const char *env = getenv(IOATD_SOCKET_ENV);
    if (env && *env) return snprintf(out, room, "%s", env) < (int)room ? 0 : -ENAMETOOLONG;
    if (access(IOATD_DEFAULT_SOCKET, F_OK) == 0 || getuid() == 0)
        return snprintf(out, room, "%s", IOATD_DEFAULT_SOCKET) < (int)room ? 0 : -ENAMETOOLONG;
    const char *runtime = getenv("XDG_RUNTIME_DIR");
    if (runtime && *runtime) return snprintf(out, room, "%s/ioatd.sock", runtime) < (int)room ? 0 : -ENAMETOOLONG;
    return snprintf(out, room, "/tmp/ioatd-%u.sock", (unsigned)getuid()) < (int)room ? 0 : -ENAMETOOLONG;
}

/* SPEC.md §1: root, the ioatd user, or the caller's own uid on a socket only the caller could have
 * made. The refusal is the client's own: -EPERM, with the server's uid and why in the text. */
static int trust(const char *path, uid_t server) {
    uid_t me = getuid();
    if (server == 0) return 0;
    char pwbuf[1024];
    struct passwd pw, *found = NULL;
    if (getpwnam_r("ioatd", &pw, pwbuf, sizeof pwbuf, &found) == 0 && found && found->pw_uid == server) return 0;
    const char *why = NULL;
    struct stat file, dir;
    char directory[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
    if (server != me) {
        why = "the server runs as another user; a client trusts only root, the ioatd user or itself";
    } else if (lstat(path, &file) != 0 || file.st_uid != me) {
        why = "the socket file is not the caller's own";
    } else {
        snprintf(directory, sizeof directory, "%s", path);
        char *slash = strrchr(directory, '/');
        if (!slash) snprintf(directory, sizeof directory, ".");
        else if (slash == directory) slash[1] = 0;
        else *slash = 0;
        if (stat(directory, &dir) != 0 || (dir.st_uid != me && dir.st_uid != 0) ||
            ((dir.st_mode & (S_IWGRP | S_IWOTH)) && !(dir.st_mode & S_ISVTX)))
            why = "the socket's directory can be written by others";
    }
    if (!why) return 0;
    return note_failure(-EPERM, "refusing the server at %s (uid %u): %s", path, (unsigned)server, why);
}

/* connect(2) on the non-blocking socket, retried while the listener's backlog is full, up to
 * `deadline`; each failure with a text that names the path and what to check. */
static int connect_socket(int fd, const struct sockaddr_un *addr, const char *path, int64_t deadline, int timeout_ms) {
    for (;;) {
        if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0) return 0;
        int err = errno;
        if (err == EINTR) continue;
        if (err == EAGAIN) {
            /* The backlog is full: nothing to poll for on a Unix socket; look again shortly. */
            if (ms_left(deadline) == 0)
                return note_failure(-ETIMEDOUT, "the server at %s did not take the connection within %d ms (its listen backlog stayed full); " JOURNAL_HINT,
                                    path, timeout_ms);
            poll(NULL, 0, 5);
            continue;
        }
        switch (err) {
        case ENOENT:
            return note_failure(-ENOENT, "no socket at %s (ioatd is not running, or listens elsewhere: $%s names another path; "
                                "systemctl status ioatd.socket)", path, IOATD_SOCKET_ENV);
        case ECONNREFUSED:
            return note_failure(-ECONNREFUSED, "nothing listens at %s (a socket file left behind: ioatd is not running; "
                                "systemctl status ioatd.socket ioatd)", path);
        case EACCES:
            return note_failure(-EACCES, "no permission to connect to %s (the caller is not in the socket's group, ioatd, "
                                "or cannot search its directory)", path);
        default:
            return note_failure(-err, "connect to %s failed", path);
        }
    }
}

static int hello(struct ioatd_client *c, int timeout_ms) {
    struct ioatd_hello h = {.min_version = 2, .max_version = 3, .features = IOATD_FEATURE_RINGS | IOATD_FEATURE_RESTART};
    struct waiter w;
    int rc = call_within(c, IOATD_MSG_HELLO, &h, sizeof h, -1, IOATD_MSG_HELLO_OK, &w, timeout_ms);
    if (rc == -ETIMEDOUT)
        return note_failure(rc, "no answer to HELLO from the server at %s within %d ms: the socket took the connection, but no "
                            "server answered (one that cannot start, or is stopped or wedged); " JOURNAL_HINT,
                            c->path, timeout_ms);
    /* A server that refuses the connection (policy, limits, a service that cannot start) sends one
     * ERROR with request_id 0 and closes: that refusal, not the end of the stream, is the answer. */
    if (rc < 0 && ioatd_err_code(rc) == 0 && c->last_code != 0) rc = IOATD_ERR(c->last_code);
    if (rc < 0) {
        if (ioatd_err_code(rc)) return note_failure(rc, "the server at %s refused the connection: %s", c->path, c->last_message);
        return note_failure(rc, "the server at %s closed the connection during the handshake", c->path);
    }
    if (w.length < sizeof c->hello) return release(&w), note_failure(-EPROTO, "HELLO_OK from %s is too short", c->path);
    memcpy(&c->hello, w.body, sizeof c->hello);
    size_t channels = c->hello.channel_count;
    if (w.length != sizeof c->hello + channels * sizeof(struct ioatd_channel) || c->hello.version < 2 ||
        c->hello.version > 3 || c->hello.max_message < HELLO_LIMIT || c->hello.max_descriptors == 0) {
        release(&w);
        return note_failure(-EPROTO, "HELLO_OK from %s breaks SPEC.md §4.2 (version %u, %zu channels)", c->path,
                            (unsigned)c->hello.version, channels);
    }
    c->channels = calloc(channels ? channels : 1, sizeof(struct ioatd_channel));
    if (!c->channels) return release(&w), -ENOMEM;
    memcpy(c->channels, w.body + sizeof c->hello, channels * sizeof(struct ioatd_channel));
    release(&w);
    c->version = c->hello.version;
    /* Room for the largest message either side may send. */
    uint8_t *rx = realloc(c->rx, c->hello.max_message), *tx;
    if (!rx) return -ENOMEM;
    c->rx = rx;
    tx = realloc(c->tx, c->hello.max_message);
    if (!tx) return -ENOMEM;
    c->tx = tx;
    c->max_message = c->hello.max_message;
    return 0;
}

API int ioatd_connect_timeout(const char *path, unsigned flags, int timeout_ms, struct ioatd_client **out) {
    if (!out || (flags & ~IOATD_CONNECT_NO_RINGS) || timeout_ms < IOATD_TIMEOUT_DEFAULT) return -EINVAL;
    *out = NULL;
    if (timeout_ms == IOATD_TIMEOUT_DEFAULT) timeout_ms = env_timeout("IOATD_CONNECT_TIMEOUT_MS", CONNECT_TIMEOUT_MS);
    int64_t deadline = deadline_after(timeout_ms);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char resolved[sizeof addr.sun_path];
    if (!path) {
        int rc = default_path(resolved, sizeof resolved);
        if (rc < 0) return note_failure(rc, "the default socket path is too long ($%s or $XDG_RUNTIME_DIR)", IOATD_SOCKET_ENV);
        path = resolved;
    }
    if (strlen(path) >= sizeof addr.sun_path) return note_failure(-ENAMETOOLONG, "socket path %s is longer than %zu bytes", path, sizeof addr.sun_path - 1);
    strcpy(addr.sun_path, path);
    struct ioatd_client *c = calloc(1, sizeof *c);
    if (!c) return -ENOMEM;
    snprintf(c->path, sizeof c->path, "%s", path);
    c->flags = flags;
    c->version = 1;
    c->max_message = HELLO_LIMIT;
    c->fd = -1;
    pthread_mutex_init(&c->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&c->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_rwlock_init(&c->buffers_lock, NULL);
    c->rx = malloc(HELLO_LIMIT);
    c->tx = malloc(HELLO_LIMIT);
    c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int rc = (!c->rx || !c->tx) ? -ENOMEM : c->fd < 0 ? note_failure(-errno, "socket(AF_UNIX, SOCK_SEQPACKET) failed") : 0;
    if (rc == 0) rc = connect_socket(c->fd, &addr, path, deadline, timeout_ms);
    if (rc == 0) {
        struct ucred cred;
        socklen_t len = sizeof cred;
        if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) rc = note_failure(-errno, "SO_PEERCRED on %s", path);
        else rc = trust(path, cred.uid);
    }
    if (rc == 0) {
        int left = timeout_ms < 0 ? -1 : ms_left(deadline);
        rc = hello(c, left == 0 ? 1 : left);
    }
    if (rc < 0) {
        ioatd_close(c);
        return rc;
    }
    c->call_timeout_ms = env_timeout("IOATD_CALL_TIMEOUT_MS", CALL_TIMEOUT_MS);
    *out = c;
    return 0;
}

API int ioatd_connect(const char *path, unsigned flags, struct ioatd_client **out) {
    return ioatd_connect_timeout(path, flags, IOATD_TIMEOUT_DEFAULT, out);
}

static void queue_free(struct ioatd_queue *q);

API void ioatd_close(struct ioatd_client *c) {
    if (!c) return;
    if (c->fd >= 0) close(c->fd);
    for (size_t i = 0; i < c->nqueues; i++) queue_free(c->queues[i]);
    for (size_t i = 0; i < c->nbuffers; i++) munmap(c->buffers[i].base, c->buffers[i].size);
    free(c->queues);
    free(c->buffers);
    free(c->channels);
    free(c->rx);
    free(c->tx);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    pthread_rwlock_destroy(&c->buffers_lock);
    free(c);
}

API int ioatd_protocol_version(const struct ioatd_client *c) { return c ? c->version : -EINVAL; }
/* Whether this client's queues run over rings: granted by the server and not refused at connect. */
API int ioatd_rings_granted(const struct ioatd_client *c) {
    return c && (c->hello.features & IOATD_FEATURE_RINGS) && !(c->flags & IOATD_CONNECT_NO_RINGS);
}
API void ioatd_server_limits(const struct ioatd_client *c, struct ioatd_hello_ok *out) {
    if (c && out) *out = c->hello;
}
API int ioatd_channel_count(const struct ioatd_client *c) { return c ? c->hello.channel_count : -EINVAL; }
API int ioatd_client_fd(const struct ioatd_client *c) { return c ? c->fd : -EINVAL; }

API int ioatd_channel_info(const struct ioatd_client *c, unsigned index, struct ioatd_channel *out) {
    if (!c || !out || index >= c->hello.channel_count) return -EINVAL;
    *out = c->channels[index];
    return 0;
}

API uint32_t ioatd_server_restarts(const struct ioatd_client *c, uint32_t *crashes) {
    if (!c) return 0;
    pthread_mutex_lock((pthread_mutex_t *)&c->mu);
    uint32_t restarts = c->restarts;
    if (crashes) *crashes = c->crashes;
    pthread_mutex_unlock((pthread_mutex_t *)&c->mu);
    return restarts;
}

API int ioatd_server_stopping(const struct ioatd_client *c, uint32_t *drain_ms) {
    if (!c) return -EINVAL;
    pthread_mutex_lock((pthread_mutex_t *)&c->mu);
    int goodbye = c->goodbye;
    if (goodbye && drain_ms) *drain_ms = c->drain_ms;
    pthread_mutex_unlock((pthread_mutex_t *)&c->mu);
    return goodbye;
}

API int ioatd_status(struct ioatd_client *c, char **json) {
    if (!c || !json) return -EINVAL;
    struct waiter w;
    int rc = call(c, IOATD_MSG_STATUS, NULL, 0, -1, IOATD_MSG_STATUS_OK, &w);
    if (rc < 0) return rc;
    char *text = malloc(w.length + 1);
    if (!text) return release(&w), -ENOMEM;
    memcpy(text, w.body, w.length);
    text[w.length] = 0;
    release(&w);
    *json = text;
    return 0;
}

/* ---- buffers ---- */

static int add_buffer(struct ioatd_client *c, const struct ioatd_buffer_ok *ok, int fd, void **addr) {
    if (ok->size == 0 || ok->size > SIZE_MAX) return -EPROTO;
    int prot = PROT_READ | ((ok->flags & IOATD_BUF_READ_ONLY) ? 0 : PROT_WRITE);
    void *base = mmap(NULL, (size_t)ok->size, prot, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) return -errno;
    pthread_rwlock_wrlock(&c->buffers_lock);
    if (c->nbuffers == c->cbuffers) {
        size_t n = c->cbuffers ? c->cbuffers * 2 : 8;
        struct buffer *b = realloc(c->buffers, n * sizeof *b);
        if (!b) {
            pthread_rwlock_unlock(&c->buffers_lock);
            munmap(base, (size_t)ok->size);
            return -ENOMEM;
        }
        c->buffers = b;
        c->cbuffers = n;
    }
    c->buffers[c->nbuffers++] = (struct buffer){base, ok->size, ok->page_size, ok->handle, ok->flags};
    pthread_rwlock_unlock(&c->buffers_lock);
    *addr = base;
    return 0;
}

/* FREE without looking at the answer: the server's side of a buffer this side could not map. */
static void free_handle(struct ioatd_client *c, uint32_t handle) {
    struct ioatd_free f = {.handle = handle};
    struct waiter w;
    if (call(c, IOATD_MSG_FREE, &f, sizeof f, -1, IOATD_MSG_FREE_OK, &w) == 0) release(&w);
}

API int ioatd_buffer_alloc(struct ioatd_client *c, uint64_t size, uint32_t flags, void **addr) {
    if (!c || !addr) return -EINVAL;
    struct ioatd_alloc a = {.size = size, .flags = flags};
    struct waiter w;
    int rc = call(c, IOATD_MSG_ALLOC, &a, sizeof a, -1, IOATD_MSG_ALLOC_OK, &w);
    if (rc < 0) return rc;
    struct ioatd_buffer_ok ok;
    if (w.length != sizeof ok || w.nfds != 1) return release(&w), -EPROTO;
    memcpy(&ok, w.body, sizeof ok);
    rc = add_buffer(c, &ok, w.fds[0], addr);
    release(&w); /* the mapping keeps the memory; the descriptor is not needed */
    if (rc < 0) free_handle(c, ok.handle);
    return rc;
}

API int ioatd_buffer_register(struct ioatd_client *c, int memfd, void **addr) {
    if (!c || !addr || memfd < 0) return -EINVAL;
    struct ioatd_register r = {0};
    struct waiter w;
    int rc = call(c, IOATD_MSG_REGISTER, &r, sizeof r, memfd, IOATD_MSG_REGISTER_OK, &w);
    if (rc < 0) return rc;
    struct ioatd_buffer_ok ok;
    if (w.length != sizeof ok) return release(&w), -EPROTO;
    memcpy(&ok, w.body, sizeof ok);
    release(&w);
    rc = add_buffer(c, &ok, memfd, addr);
    if (rc < 0) free_handle(c, ok.handle);
    return rc;
}

/* Whether [a, a + length) lies in b; the start must be inside even for length 0, so an address just
 * past one buffer's end (where the next mapping may begin) never names it. */
static int holds(const struct buffer *b, uintptr_t a, uint64_t length) {
    uintptr_t base = (uintptr_t)b->base;
    return a >= base && a - base < b->size && length <= b->size - (a - base);
}

/* The buffer holding [p, p + length) into *out (buffers_lock taken here); *hint is the index to look
 * at first, updated. */
static int find_buffer(const struct ioatd_client *c, const void *p, uint64_t length, size_t *hint, struct buffer *out) {
    uintptr_t a = (uintptr_t)p;
    int found = 0;
    pthread_rwlock_rdlock((pthread_rwlock_t *)&c->buffers_lock);
    if (*hint < c->nbuffers && holds(&c->buffers[*hint], a, length)) {
        *out = c->buffers[*hint];
        found = 1;
    } else {
        for (size_t i = 0; i < c->nbuffers; i++)
            if (holds(&c->buffers[i], a, length)) {
                *hint = i;
                *out = c->buffers[i];
                found = 1;
                break;
            }
    }
    pthread_rwlock_unlock((pthread_rwlock_t *)&c->buffers_lock);
    return found;
}

API int ioatd_buffer_free(struct ioatd_client *c, void *addr) {
    if (!c || !addr) return -EINVAL;
    pthread_rwlock_rdlock(&c->buffers_lock);
    struct buffer b = {0};
    for (size_t i = 0; i < c->nbuffers; i++)
        if (c->buffers[i].base == addr) b = c->buffers[i];
    pthread_rwlock_unlock(&c->buffers_lock);
    if (!b.base) return -EINVAL;
    /* After the connection's end the server has freed it already: only the mapping is left. */
    if (!is_lost(c)) {
        struct ioatd_free f = {.handle = b.handle};
        struct waiter w;
        int rc = call(c, IOATD_MSG_FREE, &f, sizeof f, -1, IOATD_MSG_FREE_OK, &w);
        if (rc == 0) release(&w);
        else if (!is_lost(c)) return rc;
    }
    pthread_rwlock_wrlock(&c->buffers_lock);
    for (size_t i = 0; i < c->nbuffers; i++)
        if (c->buffers[i].base == addr) {
            c->buffers[i] = c->buffers[--c->nbuffers];
            break;
        }
    pthread_rwlock_unlock(&c->buffers_lock);
    munmap(b.base, b.size);
    return 0;
}

API int ioatd_buffer_info(const struct ioatd_client *c, const void *p, struct ioatd_buffer_info *out) {
    struct buffer b;
    size_t hint = 0;
    if (!c || !out || !find_buffer(c, p, 0, &hint, &b)) return -EINVAL;
    *out = (struct ioatd_buffer_info){b.base, b.size, b.page_size, b.handle, b.flags};
    return 0;
}

API int ioatd_ref(const struct ioatd_client *c, const void *p, uint64_t length, uint32_t *handle, uint64_t *offset) {
    struct buffer b;
    size_t hint = 0;
    if (!c || !handle || !offset || !find_buffer(c, p, length, &hint, &b)) return -EINVAL;
    *handle = b.handle;
    *offset = (uint64_t)((const uint8_t *)p - b.base);
    return 0;
}

/* ---- queues ---- */

static void queue_free(struct ioatd_queue *q) {
    if (q->ring_map) munmap(q->ring_map, q->ring_size);
    if (q->is_ring && q->ring.doorbell >= 0) close(q->ring.doorbell);
    free(q->lost_records);
    free(q->slots);
    free(q->records);
    free(q->cookies);
    free(q->opcodes);
    free(q->batches);
    free(q);
}

static int close_queue_on_server(struct ioatd_client *c, uint32_t id) {
    struct ioatd_close m = {.queue = id};
    struct waiter w;
    int rc = call(c, IOATD_MSG_CLOSE, &m, sizeof m, -1, IOATD_MSG_CLOSE_OK, &w);
    if (rc == 0) release(&w);
    return rc;
}

static int make_ring(struct ioatd_queue *q) {
    struct ioatd_client *c = q->c;
    struct ioatd_ring_request r = {.queue = q->id};
    struct waiter w;
    int rc = call(c, IOATD_MSG_RING, &r, sizeof r, -1, IOATD_MSG_RING_OK, &w);
    if (rc < 0) return rc;
    struct ioatd_ring_ok ok;
    if (w.length != sizeof ok || w.nfds != 2) return release(&w), -EPROTO;
    memcpy(&ok, w.body, sizeof ok);
    if (ok.size < sizeof(struct ioatd_ring_header) || ok.size > (1u << 30)) return release(&w), -EPROTO;
    void *map = mmap(NULL, (size_t)ok.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, w.fds[0], 0);
    if (map == MAP_FAILED) return rc = -errno, release(&w), rc;
    int doorbell = w.fds[1];
    close(w.fds[0]);
    w.nfds = 0;
    release(&w);
    if (ioatd_ring_attach(&q->ring, map, (size_t)ok.size, doorbell) != 0 || q->ring.queue != q->id ||
        q->ring.sq_entries < q->depth) {
        munmap(map, (size_t)ok.size);
        close(doorbell);
        return -EPROTO;
    }
    q->lost_records = calloc(q->depth, sizeof *q->lost_records);
    if (!q->lost_records) {
        munmap(map, (size_t)ok.size);
        close(doorbell);
        return -ENOMEM;
    }
    q->ring_map = map;
    q->ring_size = (size_t)ok.size;
    q->is_ring = 1;
    return 0;
}

API int ioatd_queue_open(struct ioatd_client *c, uint32_t channel, uint32_t depth, struct ioatd_queue **out) {
    if (!c || !out) return -EINVAL;
    *out = NULL;
    struct ioatd_open o = {.channel = channel, .depth = depth};
    struct waiter w;
    int rc = call(c, IOATD_MSG_OPEN, &o, sizeof o, -1, IOATD_MSG_OPEN_OK, &w);
    if (rc < 0) return rc;
    struct ioatd_open_ok ok;
    if (w.length != sizeof ok) return release(&w), -EPROTO;
    memcpy(&ok, w.body, sizeof ok);
    release(&w);
    struct ioatd_queue *q = calloc(1, sizeof *q);
    if (!q) return close_queue_on_server(c, ok.queue), -ENOMEM;
    q->c = c;
    q->id = ok.queue;
    q->channel = ok.channel;
    q->depth = ok.depth;
    q->ring.doorbell = -1;
    q->spin_ns = SPIN_NS;
    if (ioatd_rings_granted(c)) {
        rc = make_ring(q);
    } else {
        q->slots = calloc(q->depth, sizeof *q->slots);
        q->records = calloc(q->depth, sizeof *q->records);
        q->cookies = calloc(q->depth, sizeof *q->cookies);
        q->opcodes = calloc(q->depth, 1);
        q->batches = calloc(q->depth, sizeof *q->batches);
        rc = (q->slots && q->records && q->cookies && q->opcodes && q->batches) ? 0 : -ENOMEM;
    }
    if (rc < 0) {
        queue_free(q);
        close_queue_on_server(c, ok.queue);
        return rc;
    }
    pthread_mutex_lock(&c->mu);
    if (c->nqueues == c->cqueues) {
        size_t n = c->cqueues ? c->cqueues * 2 : 4;
        struct ioatd_queue **qs = realloc(c->queues, n * sizeof *qs);
        if (!qs) {
            pthread_mutex_unlock(&c->mu);
            queue_free(q);
            close_queue_on_server(c, ok.queue);
            return -ENOMEM;
        }
        c->queues = qs;
        c->cqueues = n;
    }
    c->queues[c->nqueues++] = q;
    pthread_mutex_unlock(&c->mu);
    *out = q;
    return 0;
}

API int ioatd_queue_close(struct ioatd_queue *q) {
    if (!q) return -EINVAL;
    struct ioatd_client *c = q->c;
    /* After the connection's end nothing is outstanding on the server: the queue just goes. */
    if (q->in_flight > 0 && !is_lost(c)) {
        pthread_mutex_lock(&c->mu);
        note_refusal(c, IOATD_E_BUSY, "", 0);
        snprintf(c->last_message, sizeof c->last_message, "queue %u has %u ops whose records were not seen", q->id, q->in_flight);
        pthread_mutex_unlock(&c->mu);
        return IOATD_ERR(IOATD_E_BUSY);
    }
    if (!is_lost(c)) {
        int rc = close_queue_on_server(c, q->id);
        if (rc < 0 && !is_lost(c)) return rc;
    }
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->nqueues; i++)
        if (c->queues[i] == q) {
            c->queues[i] = c->queues[--c->nqueues];
            break;
        }
    pthread_mutex_unlock(&c->mu);
    queue_free(q);
    return 0;
}

API uint32_t ioatd_queue_id(const struct ioatd_queue *q) { return q ? q->id : 0; }
API uint32_t ioatd_queue_channel(const struct ioatd_queue *q) { return q ? q->channel : 0; }
API uint32_t ioatd_queue_depth(const struct ioatd_queue *q) { return q ? q->depth : 0; }
API int ioatd_queue_is_ring(const struct ioatd_queue *q) { return q ? q->is_ring : -EINVAL; }
API struct ioatd_client *ioatd_queue_client(const struct ioatd_queue *q) { return q ? q->c : NULL; }

static uint32_t taken(const struct ioatd_queue *q) {
    return q->is_ring ? q->ring.sq_tail_local - q->ring.sq_tail_published : q->taken;
}

API uint32_t ioatd_queue_in_use(const struct ioatd_queue *q) { return q ? q->in_flight + taken(q) : 0; }

API void ioatd_queue_set_spin(struct ioatd_queue *q, uint32_t microseconds) {
    if (q) q->spin_ns = (uint64_t)microseconds * 1000u;
}

API int ioatd_queue_set_coalesce(struct ioatd_queue *q, uint32_t period_us) {
    if (!q) return -EINVAL;
    struct ioatd_set_coalesce m = {.queue = q->id, .period_us = period_us};
    struct waiter w;
    int rc = call(q->c, IOATD_MSG_SET_COALESCE, &m, sizeof m, -1, IOATD_MSG_COALESCE_OK, &w);
    if (rc == 0) release(&w);
    return rc;
}

/* ---- submitting ---- */

API struct ioatd_desc *ioatd_get_desc(struct ioatd_queue *q) {
    if (!q || q->in_flight + taken(q) >= q->depth || is_lost(q->c)) return NULL;
    struct ioatd_desc *d = q->is_ring ? ioatd_ring_get_desc(&q->ring) : &q->slots[q->taken++];
    if (d) memset(d, 0, sizeof *d);
    return d;
}

API int ioatd_unget_desc(struct ioatd_queue *q, struct ioatd_desc *d) {
    if (!q || !d || taken(q) == 0) return -EINVAL;
    if (q->is_ring) {
        if (d != &q->ring.sqes[(q->ring.sq_tail_local - 1) & (q->ring.sq_entries - 1)]) return -EINVAL;
        q->ring.sq_tail_local--;
    } else {
        if (d != &q->slots[q->taken - 1]) return -EINVAL;
        q->taken--;
    }
    return 0;
}

static int submit_socket(struct ioatd_queue *q) {
    struct ioatd_client *c = q->c;
    uint32_t total = q->taken, sent = 0;
    uint32_t per = c->hello.max_descriptors < q->depth ? c->hello.max_descriptors : q->depth;
    size_t room = (c->max_message - sizeof(struct ioatd_header) - sizeof(struct ioatd_submit)) / sizeof(struct ioatd_desc);
    if (per > room) per = (uint32_t)room;
    pthread_mutex_lock(&c->mu);
    int64_t deadline = deadline_after(c->call_timeout_ms);
    while (sent < total) {
        uint32_t n = total - sent < per ? total - sent : per;
        struct ioatd_submit s = {.queue = q->id, .count = n};
        memcpy(c->tx, &s, sizeof s);
        memcpy(c->tx + sizeof s, &q->slots[sent], (size_t)n * sizeof(struct ioatd_desc));
        uint64_t id = ++c->next_request;
        int rc = send_message(c, IOATD_MSG_SUBMIT, id, c->tx, sizeof s + (size_t)n * sizeof(struct ioatd_desc), -1, deadline);
        if (rc < 0) {
            /* Nothing of this SUBMIT reached the server; slots not sent stay taken for a retry. */
            memmove(q->slots, &q->slots[sent], (size_t)(total - sent) * sizeof *q->slots);
            q->taken = total - sent;
            if (rc == -ETIMEDOUT)
                note_local(c, rc, "SUBMIT could not be sent to the server at %s within %d ms (it stopped reading); " JOURNAL_HINT,
                           c->path, c->call_timeout_ms);
            if (rc == -EPIPE || rc == -ECONNRESET) {
                drain(c, 0);
                lose(c, rc);
                rc = c->lost;
            }
            pthread_mutex_unlock(&c->mu);
            return sent ? (int)sent : rc;
        }
        for (uint32_t i = 0; i < n; i++) {
            uint32_t seq = (uint32_t)((q->seq_submitted + i) % q->depth);
            q->cookies[seq] = q->slots[sent + i].cookie;
            q->opcodes[seq] = q->slots[sent + i].opcode;
        }
        q->seq_submitted += n;
        q->batches[(q->batch_head + q->batch_count++) % q->depth] = (struct batch){id, n, 0};
        q->in_flight += n;
        q->submitted += n;
        sent += n;
    }
    pthread_mutex_unlock(&c->mu);
    q->taken = 0;
    return (int)sent;
}

API int ioatd_submit(struct ioatd_queue *q) {
    if (!q) return -EINVAL;
    struct ioatd_client *c = q->c;
    int lost = is_lost(c);
    if (lost) return lost;
    if (!q->is_ring) return q->taken ? submit_socket(q) : 0;
    uint32_t error = ioatd_ring_error(&q->ring);
    if (error) return IOATD_ERR(error);
    uint32_t n = taken(q);
    int rc = ioatd_ring_submit(&q->ring);
    q->in_flight += n; /* published either way: the descriptors are in the ring */
    q->submitted += n;
    if (rc < 0) {
        pthread_mutex_lock(&c->mu);
        drain(c, 0);
        lose(c, rc);
        rc = c->lost;
        pthread_mutex_unlock(&c->mu);
        return rc;
    }
    return (int)n;
}

/* ---- prep helpers ---- */

static int ref(struct ioatd_queue *q, const void *p, uint64_t length, uint32_t *handle, uint64_t *offset) {
    struct buffer b;
    if (!find_buffer(q->c, p, length, &q->last_buffer, &b)) {
        pthread_mutex_lock(&q->c->mu);
        note_local(q->c, -EINVAL, "%p + %llu bytes is not inside one buffer of this client", p, (unsigned long long)length);
        pthread_mutex_unlock(&q->c->mu);
        return -EINVAL;
    }
    *handle = b.handle;
    *offset = (uint64_t)((const uint8_t *)p - b.base);
    return 0;
}

static void start(struct ioatd_desc *d, uint8_t opcode, uint32_t flags, uint64_t length) {
    memset(d, 0, sizeof *d);
    d->opcode = opcode;
    d->flags = (uint16_t)flags;
    d->length = length;
}

API int ioatd_prep_null(struct ioatd_queue *q, struct ioatd_desc *d, uint32_t flags) {
    if (!q || !d) return -EINVAL;
    start(d, IOATD_OP_NULL, flags, 0);
    return 0;
}

API int ioatd_prep_drain(struct ioatd_queue *q, struct ioatd_desc *d, uint32_t flags) {
    if (!q || !d) return -EINVAL;
    start(d, IOATD_OP_DRAIN, flags, 0);
    return 0;
}

API int ioatd_prep_copy(struct ioatd_queue *q, struct ioatd_desc *d, void *dst, const void *src, uint64_t length, uint32_t flags) {
    if (!q || !d) return -EINVAL;
    uint32_t sh, dh;
    uint64_t so, dof;
    if (ref(q, src, length, &sh, &so) < 0 || ref(q, dst, length, &dh, &dof) < 0) return -EINVAL;
    start(d, IOATD_OP_COPY, flags, length);
    d->src_handle = sh, d->src_offset = so, d->dst_handle = dh, d->dst_offset = dof;
    return 0;
}

API int ioatd_prep_fill(struct ioatd_queue *q, struct ioatd_desc *d, void *dst, uint64_t pattern, uint64_t length, uint32_t flags) {
    if (!q || !d) return -EINVAL;
    uint32_t dh;
    uint64_t dof;
    if (ref(q, dst, length, &dh, &dof) < 0) return -EINVAL;
    start(d, IOATD_OP_FILL, flags, length);
    d->dst_handle = dh, d->dst_offset = dof, d->arg = pattern;
    return 0;
}

/* The CRC modes' shared fields: seed, and the STORE / TEST location when not inline. */
static int crc_fields(struct ioatd_queue *q, struct ioatd_desc *d, uint32_t seed, void *crc, uint32_t flags) {
    if (flags & IOATD_F_CRC_SEED) d->arg = seed;
    if ((flags & (IOATD_F_CRC_STORE | IOATD_F_CRC_TEST)) && !(flags & IOATD_F_CRC_INLINE)) {
        uint32_t h;
        uint64_t o;
        if (ref(q, crc, 4, &h, &o) < 0) return -EINVAL;
        d->aux_handle = h, d->aux_offset = o;
    }
    return 0;
}

API int ioatd_prep_crc32c(struct ioatd_queue *q, struct ioatd_desc *d, const void *src, uint64_t length, uint32_t seed,
                          void *crc, uint32_t flags) {
    if (!q || !d) return -EINVAL;
    uint32_t sh;
    uint64_t so;
    struct ioatd_desc t;
    if (ref(q, src, length, &sh, &so) < 0) return -EINVAL;
    start(&t, IOATD_OP_CRC32C, flags, length);
    t.src_handle = sh, t.src_offset = so;
    if (crc_fields(q, &t, seed, crc, flags) < 0) return -EINVAL;
    *d = t;
    return 0;
}

API int ioatd_prep_copy_crc32c(struct ioatd_queue *q, struct ioatd_desc *d, void *dst, const void *src, uint64_t length,
                               uint32_t seed, void *crc, uint32_t flags) {
    if (!q || !d) return -EINVAL;
    struct ioatd_desc t;
    if (ioatd_prep_copy(q, &t, dst, src, length, flags) < 0) return -EINVAL;
    t.opcode = IOATD_OP_COPY_CRC32C;
    if (crc_fields(q, &t, seed, crc, flags) < 0) return -EINVAL;
    *d = t;
    return 0;
}

API int ioatd_prep_compare(struct ioatd_queue *q, struct ioatd_desc *d, const void *a, const void *b, uint64_t length, uint32_t flags) {
    if (!q || !d) return -EINVAL;
    uint32_t sh, dh;
    uint64_t so, dof;
    if (ref(q, a, length, &sh, &so) < 0 || ref(q, b, length, &dh, &dof) < 0) return -EINVAL;
    start(d, IOATD_OP_COMPARE, flags, length);
    d->src_handle = sh, d->src_offset = so, d->dst_handle = dh, d->dst_offset = dof;
    return 0;
}

API int ioatd_prep_compare_pattern(struct ioatd_queue *q, struct ioatd_desc *d, const void *src, uint64_t pattern,
                                   uint64_t length, uint32_t flags) {
    if (!q || !d) return -EINVAL;
    uint32_t sh;
    uint64_t so;
    if (ref(q, src, length, &sh, &so) < 0) return -EINVAL;
    start(d, IOATD_OP_COMPARE_PATTERN, flags, length);
    d->src_handle = sh, d->src_offset = so, d->arg = pattern;
    return 0;
}

API int ioatd_prep_dualcast(struct ioatd_queue *q, struct ioatd_desc *d, void *dst1, void *dst2, const void *src,
                            uint64_t length, uint32_t flags) {
    if (!q || !d) return -EINVAL;
    uint32_t sh, dh, ah;
    uint64_t so, dof, ao;
    if (ref(q, src, length, &sh, &so) < 0 || ref(q, dst1, length, &dh, &dof) < 0 || ref(q, dst2, length, &ah, &ao) < 0)
        return -EINVAL;
    start(d, IOATD_OP_DUALCAST, flags, length);
    d->src_handle = sh, d->src_offset = so, d->dst_handle = dh, d->dst_offset = dof, d->aux_handle = ah, d->aux_offset = ao;
    return 0;
}

API int ioatd_prep_xor(struct ioatd_queue *q, struct ioatd_desc *d, void *dst, const void *const *srcs, uint32_t count,
                       uint64_t length, struct ioatd_xor_source *list, uint32_t flags) {
    if (!q || !d) return -EINVAL;
    uint32_t dh, lh;
    uint64_t dof, lo;
    if (count == 0 || count > 64 || !srcs) return -EINVAL;
    if (ref(q, dst, length, &dh, &dof) < 0 || ref(q, list, (uint64_t)count * sizeof *list, &lh, &lo) < 0) return -EINVAL;
    struct ioatd_xor_source entries[64];
    for (uint32_t i = 0; i < count; i++) {
        entries[i].reserved = 0;
        if (ref(q, srcs[i], length, &entries[i].handle, &entries[i].offset) < 0) return -EINVAL;
    }
    memcpy(list, entries, (size_t)count * sizeof *list);
    start(d, IOATD_OP_XOR, flags, length);
    d->dst_handle = dh, d->dst_offset = dof, d->aux_handle = lh, d->aux_offset = lo, d->arg = count;
    return 0;
}

API int ioatd_prep_copy_sg(struct ioatd_queue *q, struct ioatd_desc *d, void *const *dsts, const void *const *srcs,
                           const uint64_t *lengths, uint32_t count, struct ioatd_sg_entry *list, uint32_t flags) {
    if (!q || !d) return -EINVAL;
    uint32_t lh;
    uint64_t lo, total = 0;
    if (count == 0 || count > 64 || !dsts || !srcs || !lengths) return -EINVAL;
    if (ref(q, list, (uint64_t)count * sizeof *list, &lh, &lo) < 0) return -EINVAL;
    struct ioatd_sg_entry entries[64];
    for (uint32_t i = 0; i < count; i++) {
        struct ioatd_sg_entry *e = &entries[i];
        e->length = lengths[i];
        if (ref(q, srcs[i], lengths[i], &e->src_handle, &e->src_offset) < 0 ||
            ref(q, dsts[i], lengths[i], &e->dst_handle, &e->dst_offset) < 0 || total + lengths[i] < total)
            return -EINVAL;
        total += lengths[i];
    }
    memcpy(list, entries, (size_t)count * sizeof *list);
    start(d, IOATD_OP_COPY_SG, flags, total);
    d->aux_handle = lh, d->aux_offset = lo, d->arg = count;
    return 0;
}

/* ---- completing ---- */

/* Records ready (a socket queue's with c->mu held). */
static uint32_t ready(struct ioatd_queue *q) {
    if (q->is_ring) {
        if (q->lost_done) return q->lost_count - q->lost_head;
        uint32_t n = ioatd_ring_ready(&q->ring);
        return n < q->ring.cq_entries ? n : q->ring.cq_entries;
    }
    return q->rec_count;
}

static struct ioatd_completion_record *record(struct ioatd_queue *q, uint32_t i) {
    if (q->is_ring) {
        if (q->lost_done) return &q->lost_records[q->lost_head + i];
        return (struct ioatd_completion_record *)ioatd_ring_record(&q->ring, i);
    }
    return &q->records[(q->rec_head + i) % q->depth];
}

static int is_refusal(uint16_t status) { return status > IOATD_STATUS_REFUSED && status < IOATD_STATUS_REFUSED + 0x100; }

/* Ring queues, on the queue's thread: once the connection has ended and the ring holds no record
 * left, every op still in flight gets a CONNECTION_LOST record, in submission order, with the cookie
 * and opcode of its submission slot (no later op reused it: at most `depth` ops were taken since,
 * and the ring has at least `depth` slots). */
static void ring_lost(struct ioatd_queue *q) {
    if (q->lost_done || ioatd_ring_ready(&q->ring) != 0) return;
    uint32_t n = q->in_flight;
    for (uint32_t i = 0; i < n; i++) {
        const struct ioatd_desc *d = &q->ring.sqes[(q->ring.sq_tail_published - n + i) & (q->ring.sq_entries - 1)];
        struct ioatd_completion_record *r = &q->lost_records[i];
        memset(r, 0, sizeof *r);
        r->cookie = d->cookie;
        r->opcode = d->opcode;
        r->status = IOATD_ST_CONNECTION_LOST;
    }
    q->lost_head = 0;
    q->lost_count = n;
    q->lost_done = 1;
}

/* A ring queue with nothing ready: 0 while records may still come, else why not. Unsolicited ERRORs
 * (refusal texts), GOODBYE and the connection's end come on the socket, and a look at it is a system
 * call, so a caller that polls an empty ring pays it on one empty look in 64 (every look: `always`). */
static int ring_stuck(struct ioatd_queue *q, int always) {
    uint32_t error = ioatd_ring_error(&q->ring);
    if (error) return IOATD_ERR(error);
    if (!always && (q->empty_looks++ & 63) != 0) return 0;
    struct ioatd_client *c = q->c;
    pthread_mutex_lock(&c->mu);
    drain(c, 0);
    int lost = c->lost;
    pthread_mutex_unlock(&c->mu);
    if (lost) {
        ring_lost(q);
        if (ready(q) == 0) return lost;
    }
    return 0;
}

API int ioatd_peek_batch(struct ioatd_queue *q, struct ioatd_completion_record **recs, unsigned max) {
    if (!q || (!recs && max)) return -EINVAL;
    struct ioatd_client *c = q->c;
    if (q->is_ring) {
        uint32_t n = ready(q);
        if (n == 0) {
            int rc = ring_stuck(q, 0);
            if (rc < 0) return rc;
            n = ready(q);
        }
        if (n > max) n = max;
        int refused = 0;
        for (uint32_t i = 0; i < n; i++) {
            recs[i] = record(q, i);
            refused |= is_refusal(recs[i]->status);
        }
        if (refused) {
            /* The ERROR that names a refused entry is sent before its record is visible: read it now,
             * so ioatd_strerror gives the server's text. */
            pthread_mutex_lock(&c->mu);
            drain(c, 0);
            pthread_mutex_unlock(&c->mu);
        }
        return (int)n;
    }
    pthread_mutex_lock(&c->mu);
    if (q->rec_count == 0) drain(c, 0);
    uint32_t n = q->rec_count;
    int lost = c->lost;
    if (n > max) n = max;
    for (uint32_t i = 0; i < n; i++) recs[i] = record(q, i);
    pthread_mutex_unlock(&c->mu);
    return n == 0 && lost ? lost : (int)n;
}

API int ioatd_peek_completion(struct ioatd_queue *q, struct ioatd_completion_record **rec) {
    if (!q || !rec) return -EINVAL;
    int n = ioatd_peek_batch(q, rec, 1);
    return n < 0 ? n : n == 0 ? -EAGAIN : 0;
}

/* Counts the statuses of the oldest `n` ready records (a socket queue's with c->mu held). */
static void count(struct ioatd_queue *q, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        uint16_t status = record(q, i)->status;
        q->completed++;
        if (status == IOATD_ST_SUCCESS) continue;
        q->failed++;
        if (is_refusal(status)) q->refused++;
        if (status == IOATD_ST_CONNECTION_LOST) q->lost++;
    }
}

API int ioatd_queue_stats(const struct ioatd_queue *q, struct ioatd_queue_stats *out) {
    if (!q || !out) return -EINVAL;
    *out = (struct ioatd_queue_stats){q->submitted, q->completed, q->failed, q->refused, q->lost, q->in_flight, q->depth};
    return 0;
}

API void ioatd_cq_advance(struct ioatd_queue *q, unsigned n) {
    if (!q) return;
    if (q->is_ring) {
        uint32_t have = ready(q);
        if (n > have) n = have;
        if (n == 0) return;
        count(q, n);
        if (q->lost_done) q->lost_head += n;
        else ioatd_ring_consume(&q->ring, n);
    } else {
        pthread_mutex_lock(&q->c->mu);
        if (n > q->rec_count) n = q->rec_count;
        count(q, n);
        q->rec_head = (q->rec_head + n) % q->depth;
        q->rec_count -= n;
        pthread_mutex_unlock(&q->c->mu);
    }
    q->in_flight -= n;
}

API void ioatd_completion_seen(struct ioatd_queue *q, struct ioatd_completion_record *rec) {
    (void)rec;
    ioatd_cq_advance(q, 1);
}

API int ioatd_queue_event_fd(const struct ioatd_queue *q) { return !q ? -EINVAL : q->is_ring ? q->ring.doorbell : q->c->fd; }

API int ioatd_queue_arm(struct ioatd_queue *q, unsigned n) {
    if (!q) return -EINVAL;
    if (n == 0) n = 1;
    if (is_lost(q->c)) return 0; /* the end is there to be read */
    if (q->is_ring) return q->lost_done ? 0 : ioatd_ring_arm(&q->ring, n);
    pthread_mutex_lock(&q->c->mu);
    int sleep = q->rec_count < n;
    pthread_mutex_unlock(&q->c->mu);
    return sleep;
}

API void ioatd_queue_disarm(struct ioatd_queue *q) {
    if (q && q->is_ring) ioatd_ring_disarm(&q->ring);
}

struct want {
    struct ioatd_queue *q;
    uint32_t n;
};

static int socket_ready(struct ioatd_client *c, void *arg) {
    (void)c;
    struct want *w = arg;
    return w->q->rec_count >= w->n;
}

/* Waits until `want` records are ready: 0; -EAGAIN at once when fewer ops are in flight (nothing
 * could make them ready; the connection's end once it has ended); -ETIME after `timeout_ms` (-1:
 * none); the connection's end or the ring's breaking once every record has been handed out. */
static int wait_ready(struct ioatd_queue *q, uint32_t want, int timeout_ms) {
    struct ioatd_client *c = q->c;
    int64_t deadline = deadline_after(timeout_ms);
    if (q->is_ring) {
        if (ready(q) >= want) return 0;
        if (q->in_flight < want) {
            int lost = is_lost(c);
            return lost ? lost : -EAGAIN;
        }
        uint64_t until = (uint64_t)now_ns() + q->spin_ns;
        for (unsigned looks = 1; ready(q) < want && (uint64_t)now_ns() < until; looks++)
            if ((looks & 63) == 0) sched_yield();
        while (ready(q) < want) {
            int rc = ring_stuck(q, 1);
            if (rc < 0) return rc;
            if (ready(q) >= want) break;
            int left = ms_left(deadline), slice = 100; /* look at the connection at least this often */
            if (left == 0) return -ETIME;
            if (left > 0 && left < slice) slice = left;
            if (ioatd_ring_arm(&q->ring, want)) {
                struct pollfd p[2] = {{q->ring.doorbell, POLLIN, 0}, {c->fd, POLLIN, 0}};
                poll(p, 2, slice);
            }
            ioatd_ring_disarm(&q->ring);
        }
        return 0;
    }
    pthread_mutex_lock(&c->mu);
    if (q->rec_count < want && q->in_flight >= want && q->spin_ns) {
        /* The same spin, reading the socket without blocking (a poll() sleep and wake-up costs more
         * than the round trip it waits for), and yielding after each empty look: on a small machine
         * the server may be waiting for this very CPU. */
        uint64_t until = (uint64_t)now_ns() + q->spin_ns;
        while (q->rec_count < want && !c->lost && (uint64_t)now_ns() < until) {
            if (drain(c, 1) == 0) {
                pthread_mutex_unlock(&c->mu);
                sched_yield();
                pthread_mutex_lock(&c->mu);
            }
        }
    }
    int rc;
    struct want w = {q, want};
    if (q->rec_count >= want) rc = 0;
    else if (q->in_flight < want) rc = c->lost ? c->lost : -EAGAIN;
    else rc = wait_until(c, socket_ready, &w, deadline);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

API int ioatd_wait_completion(struct ioatd_queue *q, struct ioatd_completion_record **rec, int timeout_ms) {
    if (!q || !rec) return -EINVAL;
    int rc = wait_ready(q, 1, timeout_ms);
    if (rc < 0) return rc;
    return ioatd_peek_completion(q, rec);
}

API int ioatd_wait_completions(struct ioatd_queue *q, struct ioatd_completion_record **recs, unsigned min, unsigned max,
                               int timeout_ms) {
    if (!q || !recs || min == 0 || min > max) return -EINVAL;
    int rc = wait_ready(q, min, timeout_ms);
    if (rc < 0) return rc;
    return ioatd_peek_batch(q, recs, max);
}

API int ioatd_submit_and_wait(struct ioatd_queue *q, unsigned wait_nr, int timeout_ms) {
    int n = ioatd_submit(q);
    if (n < 0 || wait_nr == 0) return n;
    int rc = wait_ready(q, wait_nr, timeout_ms);
    return rc < 0 ? rc : n;
}
