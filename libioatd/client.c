/*
 * libioatd: connection, buffers, queues, descriptors and records (see <ioatd/client.h>).
 *
 * The connection is a SOCK_SEQPACKET socket: one message per packet (SPEC.md §1). Control calls are
 * synchronous (send, then read until the reply with that request_id), and every message read on the
 * way is dispatched: COMPLETION records go to their queue, an ERROR for a SUBMIT turns that SUBMIT's
 * descriptors into refused records in their turn, GOODBYE is noted. Ring queues use the static
 * inline fast path of <ioatd/ioatd_ring.h>, the one implementation of it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
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

struct buffer {
    uint8_t *base;
    uint64_t size, page_size;
    uint32_t handle, flags;
};

/* A SUBMIT sent and not yet fully answered (socket queues): its records, or its refusal. */
struct batch {
    uint64_t request_id;
    uint32_t count;   /* records still due */
    uint32_t refused; /* error code when the server refused the SUBMIT, else 0 */
};

struct ioatd_queue {
    struct ioatd_client *c;
    uint32_t id, channel, depth;
    uint32_t in_flight; /* submitted, record not seen */
    int is_ring;
    uint32_t empty_looks; /* ring queues: looks that found no record */
    uint64_t spin_ns;     /* how long ioatd_wait_completion looks before it sleeps */
    /* Ring queues. */
    struct ioatd_ring ring;
    void *ring_map;
    size_t ring_size;
    /* Socket queues: slots taken, records received, SUBMITs answered in order. */
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

struct ioatd_client {
    int fd;
    unsigned flags;
    uint64_t next_request;
    uint16_t version;
    struct ioatd_hello_ok hello;
    struct ioatd_channel *channels;
    uint8_t *rx, *tx;
    size_t max_message;
    struct buffer *buffers;
    size_t nbuffers, cbuffers, last_buffer;
    struct ioatd_queue **queues;
    size_t nqueues, cqueues;
    /* The reply a control call waits for. */
    uint64_t awaited;
    int have_reply;
    uint16_t reply_type;
    uint8_t *reply;
    size_t reply_length;
    int reply_fds[2];
    int nreply_fds;
    /* The end of the connection: 0, or the error calls now return. */
    int lost;
    int goodbye;
    uint32_t drain_ms;
    /* The latest refusal, for ioatd_strerror. */
    uint32_t last_code;
    char last_message[480];
    char text[640];
};

/* ---- small things ---- */

API uint32_t ioatd_lib_version(void) { return IOATD_LIB_VERSION; }

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
    [IOATD_E_RING_BROKEN] = "RING_BROKEN",
};

API const char *ioatd_error_name(uint32_t code) {
    if (code < sizeof error_names / sizeof error_names[0] && error_names[code]) return error_names[code];
    return "UNKNOWN";
}

static const char *const status_names[] = {
    "SUCCESS", "MISMATCH", "NOT_ATTEMPTED", "NO_SPACE", "INVALID_SRC_ADDR", "INVALID_DST_ADDR", "INVALID_LENGTH",
    "INVALID_OPCODE", "BUS_READ_ERROR", "BUS_WRITE_ERROR", "DATA_POISON", "PAGE_FAULT", "USER_ABORT",
    "CHANNEL_HALTED", "ENGINE_ERROR", "CANCELLED",
};

API const char *ioatd_status_name(uint16_t status) {
    static __thread char refused[48];
    if (status < sizeof status_names / sizeof status_names[0]) return status_names[status];
    if (status > IOATD_STATUS_REFUSED && status < IOATD_STATUS_REFUSED + 0x100) {
        snprintf(refused, sizeof refused, "REFUSED_%s", ioatd_error_name(status - IOATD_STATUS_REFUSED));
        return refused;
    }
    return "UNKNOWN";
}

API const char *ioatd_strerror(struct ioatd_client *c, int err) {
    static __thread char local[128];
    uint32_t code = ioatd_err_code(err);
    char *out = c ? c->text : local;
    size_t room = c ? sizeof c->text : sizeof local;
    if (code == 0) {
        snprintf(out, room, "%s", strerror(-err));
    } else if (c && c->last_code == code && c->last_message[0]) {
        snprintf(out, room, "%s: %s", ioatd_error_name(code), c->last_message);
    } else {
        snprintf(out, room, "%s (error %u from the server)", ioatd_error_name(code), code);
    }
    return out;
}

static void note_refusal(struct ioatd_client *c, uint32_t code, const char *text, size_t length) {
    c->last_code = code;
    if (length >= sizeof c->last_message) length = sizeof c->last_message - 1;
    memcpy(c->last_message, text, length);
    c->last_message[length] = 0;
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- the socket ---- */

static void close_fds(int *fds, int n) {
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0) close(fds[i]);
}

/* Sends one message: header + body (+ one descriptor). */
static int send_message(struct ioatd_client *c, uint16_t type, uint64_t request_id, const void *body, size_t length,
                        int fd) {
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
        ssize_t n = sendmsg(c->fd, &m, MSG_NOSIGNAL);
        if (n == (ssize_t)total) return 0;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = {c->fd, POLLOUT, 0};
            poll(&p, 1, -1);
            continue;
        }
        /* EPIPE and the like: the server is gone; what it sent before going is still read. */
        return n < 0 ? -errno : -EIO;
    }
}

/* Reads one message into c->rx. Returns its length, 0 when none waits (non-blocking), or a negative
 * error: the connection's end. Descriptors that came with it go to fds[] (at most 2; more are closed). */
static ssize_t recv_message(struct ioatd_client *c, int wait, int *fds, int *nfds) {
    union { struct cmsghdr align; char space[CMSG_SPACE(4 * sizeof(int))]; } control;
    struct iovec iov = {c->rx, c->max_message};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space, .msg_controllen = sizeof control.space};
    *nfds = 0;
    ssize_t n;
    do n = recvmsg(c->fd, &m, MSG_CMSG_CLOEXEC | (wait ? 0 : MSG_DONTWAIT));
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

static void lose(struct ioatd_client *c, int why) {
    if (c->lost) return;
    c->lost = c->goodbye ? IOATD_ERR(IOATD_E_SHUTTING_DOWN) : (why ? why : -ECONNRESET);
}

/* Socket queues: records of refused SUBMITs at the front of the answer order go in now. */
static void flush_refused(struct ioatd_queue *q) {
    while (q->batch_count > 0 && q->batches[q->batch_head].refused) {
        struct batch *b = &q->batches[q->batch_head];
        for (uint32_t i = 0; i < b->count; i++) {
            uint32_t seq = (uint32_t)(q->seq_recorded++ % q->depth);
            struct ioatd_completion_record *r = &q->records[(q->rec_head + q->rec_count++) % q->depth];
            memset(r, 0, sizeof *r);
            r->cookie = q->cookies[seq];
            r->opcode = q->opcodes[seq];
            r->status = (uint16_t)(IOATD_STATUS_REFUSED + b->refused);
        }
        q->batch_head = (q->batch_head + 1) % q->depth;
        q->batch_count--;
    }
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
        flush_refused(q);
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
    flush_refused(q);
}

/* An ERROR whose request_id names a SUBMIT of a socket queue: that SUBMIT is refused. */
static int refuse_submit(struct ioatd_client *c, uint64_t request_id, uint32_t code) {
    for (size_t i = 0; i < c->nqueues; i++) {
        struct ioatd_queue *q = c->queues[i];
        if (q->is_ring) continue;
        for (uint32_t k = 0; k < q->batch_count; k++) {
            struct batch *b = &q->batches[(q->batch_head + k) % q->depth];
            if (b->request_id == request_id && !b->refused) {
                b->refused = code ? code : IOATD_E_INTERNAL;
                flush_refused(q);
                return 1;
            }
        }
    }
    return 0;
}

/* Dispatches one message read into c->rx. */
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
    case IOATD_MSG_ERROR:
        if (blen >= sizeof(struct ioatd_error_msg)) {
            struct ioatd_error_msg e;
            memcpy(&e, body, sizeof e);
            size_t text = blen - sizeof e < e.text_length ? blen - sizeof e : e.text_length;
            if (h.request_id == 0 || h.request_id != c->awaited) {
                /* Unsolicited (a ring refusal, RING_BROKEN) or about a SUBMIT. */
                note_refusal(c, e.code, (const char *)body + sizeof e, text);
                if (h.request_id != 0) refuse_submit(c, h.request_id, e.code);
                goto drop;
            }
        }
        break;
    default:
        break;
    }
    if (h.request_id != 0 && h.request_id == c->awaited && !c->have_reply) {
        c->have_reply = 1;
        c->reply_type = h.type;
        c->reply_length = blen;
        c->reply = malloc(blen ? blen : 1);
        if (c->reply) memcpy(c->reply, body, blen);
        memcpy(c->reply_fds, fds, sizeof(int) * (size_t)nfds);
        c->nreply_fds = nfds;
        return;
    }
drop:
    close_fds(fds, nfds);
}

/* Reads and dispatches messages. wait: block until one came (timeout_ms, -1 forever). Stops after `max`
 * messages (0: when none is left): a waiter that spins takes one at a time, since reading on until the
 * socket is empty costs a system call that finds nothing between the record arriving and the caller
 * seeing it. Returns how many were read, or the connection's end. */
static int pump_some(struct ioatd_client *c, int wait, int timeout_ms, int max) {
    if (c->lost) return c->lost;
    int count = 0;
    for (;;) {
        if (max > 0 && count >= max) return count;
        int fds[2], nfds;
        ssize_t n = recv_message(c, 0, fds, &nfds);
        if (n < 0) {
            lose(c, (int)n);
            return c->lost;
        }
        if (n == 0) {
            if (count > 0 || !wait) return count;
            struct pollfd p = {c->fd, POLLIN, 0};
            int r = poll(&p, 1, timeout_ms);
            if (r == 0) return 0;
            if (r < 0 && errno != EINTR) return -errno;
            wait = 0; /* one wait; then read all that is there */
            count = 0;
            continue;
        }
        dispatch(c, (size_t)n, fds, nfds);
        count++;
    }
}

static int pump(struct ioatd_client *c, int wait, int timeout_ms) { return pump_some(c, wait, timeout_ms, 0); }

/* A control call: sends the request and reads until its reply. Returns 0 with the reply in
 * c->reply (freed by the caller through done()), or an error; an ERROR reply is IOATD_ERR(code). */
static int call(struct ioatd_client *c, uint16_t type, const void *body, size_t length, int fd, uint16_t expect) {
    uint64_t id = ++c->next_request;
    c->awaited = id;
    c->have_reply = 0;
    c->nreply_fds = 0;
    int rc = send_message(c, type, id, body, length, fd);
    if (rc < 0 && rc != -EPIPE && rc != -ECONNRESET) {
        c->awaited = 0; /* not sent (too large, out of memory): no reply will come */
        return rc;
    }
    /* A send that found the server gone shows as the connection's end below, after what it had sent
     * (an ERROR saying why it closed the connection is read first). */
    while (!c->have_reply) {
        int r = pump(c, 1, -1);
        if (r < 0) {
            c->awaited = 0;
            return r;
        }
    }
    c->awaited = 0;
    if (c->reply_type == IOATD_MSG_ERROR) {
        struct ioatd_error_msg e = {0};
        if (c->reply_length >= sizeof e) memcpy(&e, c->reply, sizeof e);
        size_t text = c->reply_length - sizeof e < e.text_length ? c->reply_length - sizeof e : e.text_length;
        note_refusal(c, e.code, (const char *)c->reply + sizeof e, text);
        free(c->reply);
        c->reply = NULL;
        close_fds(c->reply_fds, c->nreply_fds);
        c->nreply_fds = 0;
        return IOATD_ERR(e.code ? e.code : IOATD_E_INTERNAL);
    }
    if (c->reply_type != expect || c->reply == NULL) {
        free(c->reply);
        c->reply = NULL;
        close_fds(c->reply_fds, c->nreply_fds);
        c->nreply_fds = 0;
        return c->reply == NULL && c->reply_type == expect ? -ENOMEM : -EPROTO;
    }
    return 0;
}

static void done(struct ioatd_client *c) {
    free(c->reply);
    c->reply = NULL;
    close_fds(c->reply_fds, c->nreply_fds);
    c->nreply_fds = 0;
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

/* SPEC.md §1: root, the ioatd user, or the caller's own uid on a socket only the caller could have made. */
static int trust(struct ioatd_client *c, const char *path, uid_t server) {
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
    snprintf(c->last_message, sizeof c->last_message, "refusing the server at %s (uid %u): %s", path, (unsigned)server, why);
    c->last_code = IOATD_E_PERMISSION_DENIED;
    return IOATD_ERR(IOATD_E_PERMISSION_DENIED);
}

static int hello(struct ioatd_client *c) {
    struct ioatd_hello h = {.min_version = 2, .max_version = 3, .features = IOATD_FEATURE_RINGS};
    int rc = call(c, IOATD_MSG_HELLO, &h, sizeof h, -1, IOATD_MSG_HELLO_OK);
    /* A server that refuses the connection (policy, limits) sends one ERROR with request_id 0 and
     * closes: that refusal, not the end of the stream, is the answer (SPEC.md §1). */
    if (rc < 0 && ioatd_err_code(rc) == 0 && c->last_code != 0) return IOATD_ERR(c->last_code);
    if (rc < 0) return rc;
    if (c->reply_length < sizeof c->hello) return done(c), -EPROTO;
    memcpy(&c->hello, c->reply, sizeof c->hello);
    size_t channels = c->hello.channel_count;
    if (c->reply_length != sizeof c->hello + channels * sizeof(struct ioatd_channel) || c->hello.version < 2 ||
        c->hello.version > 3 || c->hello.max_message < HELLO_LIMIT || c->hello.max_descriptors == 0)
        return done(c), -EPROTO;
    c->channels = calloc(channels ? channels : 1, sizeof(struct ioatd_channel));
    if (!c->channels) return done(c), -ENOMEM;
    memcpy(c->channels, c->reply + sizeof c->hello, channels * sizeof(struct ioatd_channel));
    done(c);
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

API int ioatd_connect(const char *path, unsigned flags, struct ioatd_client **out) {
    if (!out || (flags & ~IOATD_CONNECT_NO_RINGS)) return -EINVAL;
    *out = NULL;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char resolved[sizeof addr.sun_path];
    if (!path) {
        int rc = default_path(resolved, sizeof resolved);
        if (rc < 0) return rc;
        path = resolved;
    }
    if (strlen(path) >= sizeof addr.sun_path) return -ENAMETOOLONG;
    strcpy(addr.sun_path, path);
    struct ioatd_client *c = calloc(1, sizeof *c);
    if (!c) return -ENOMEM;
    c->flags = flags;
    c->version = 1;
    c->max_message = HELLO_LIMIT;
    c->rx = malloc(HELLO_LIMIT);
    c->tx = malloc(HELLO_LIMIT);
    c->fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    int rc = (!c->rx || !c->tx) ? -ENOMEM : c->fd < 0 ? -errno : 0;
    if (rc == 0 && connect(c->fd, (struct sockaddr *)&addr, sizeof addr) != 0) rc = -errno;
    if (rc == 0) {
        struct ucred cred;
        socklen_t len = sizeof cred;
        if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) rc = -errno;
        else rc = trust(c, path, cred.uid);
    }
    if (rc == 0) rc = hello(c);
    if (rc < 0) {
        ioatd_close(c);
        return rc;
    }
    *out = c;
    return 0;
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
    free(c->reply);
    free(c);
}

API int ioatd_protocol_version(const struct ioatd_client *c) { return c->version; }
API int ioatd_rings_granted(const struct ioatd_client *c) { return (c->hello.features & IOATD_FEATURE_RINGS) != 0; }
API void ioatd_server_limits(const struct ioatd_client *c, struct ioatd_hello_ok *out) { *out = c->hello; }
API int ioatd_channel_count(const struct ioatd_client *c) { return c->hello.channel_count; }
API int ioatd_client_fd(const struct ioatd_client *c) { return c->fd; }

API int ioatd_channel_info(const struct ioatd_client *c, unsigned index, struct ioatd_channel *out) {
    if (index >= c->hello.channel_count || !out) return -EINVAL;
    *out = c->channels[index];
    return 0;
}

API int ioatd_server_stopping(const struct ioatd_client *c, uint32_t *drain_ms) {
    if (c->goodbye && drain_ms) *drain_ms = c->drain_ms;
    return c->goodbye;
}

API int ioatd_status(struct ioatd_client *c, char **json) {
    if (!json) return -EINVAL;
    int rc = call(c, IOATD_MSG_STATUS, NULL, 0, -1, IOATD_MSG_STATUS_OK);
    if (rc < 0) return rc;
    char *text = malloc(c->reply_length + 1);
    if (!text) return done(c), -ENOMEM;
    memcpy(text, c->reply, c->reply_length);
    text[c->reply_length] = 0;
    done(c);
    *json = text;
    return 0;
}

/* ---- buffers ---- */

static int add_buffer(struct ioatd_client *c, const struct ioatd_buffer_ok *ok, int fd, void **addr) {
    if (c->nbuffers == c->cbuffers) {
        size_t n = c->cbuffers ? c->cbuffers * 2 : 8;
        struct buffer *b = realloc(c->buffers, n * sizeof *b);
        if (!b) return -ENOMEM;
        c->buffers = b;
        c->cbuffers = n;
    }
    if (ok->size == 0 || ok->size > SIZE_MAX) return -EPROTO;
    int prot = PROT_READ | ((ok->flags & IOATD_BUF_READ_ONLY) ? 0 : PROT_WRITE);
    void *base = mmap(NULL, (size_t)ok->size, prot, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) return -errno;
    c->buffers[c->nbuffers++] = (struct buffer){base, ok->size, ok->page_size, ok->handle, ok->flags};
    *addr = base;
    return 0;
}

/* FREE without looking at the answer: the server's side of a buffer this side could not map. */
static void free_handle(struct ioatd_client *c, uint32_t handle) {
    struct ioatd_free f = {.handle = handle};
    if (call(c, IOATD_MSG_FREE, &f, sizeof f, -1, IOATD_MSG_FREE_OK) == 0) done(c);
}

API int ioatd_buffer_alloc(struct ioatd_client *c, uint64_t size, uint32_t flags, void **addr) {
    if (!addr) return -EINVAL;
    struct ioatd_alloc a = {.size = size, .flags = flags};
    int rc = call(c, IOATD_MSG_ALLOC, &a, sizeof a, -1, IOATD_MSG_ALLOC_OK);
    if (rc < 0) return rc;
    struct ioatd_buffer_ok ok;
    if (c->reply_length != sizeof ok || c->nreply_fds != 1) return done(c), -EPROTO;
    memcpy(&ok, c->reply, sizeof ok);
    rc = add_buffer(c, &ok, c->reply_fds[0], addr);
    done(c); /* the mapping keeps the memory; the descriptor is not needed */
    if (rc < 0) free_handle(c, ok.handle);
    return rc;
}

API int ioatd_buffer_register(struct ioatd_client *c, int memfd, void **addr) {
    if (!addr || memfd < 0) return -EINVAL;
    struct ioatd_register r = {0};
    int rc = call(c, IOATD_MSG_REGISTER, &r, sizeof r, memfd, IOATD_MSG_REGISTER_OK);
    if (rc < 0) return rc;
    struct ioatd_buffer_ok ok;
    if (c->reply_length != sizeof ok) return done(c), -EPROTO;
    memcpy(&ok, c->reply, sizeof ok);
    done(c);
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

static struct buffer *find_buffer(const struct ioatd_client *c, const void *p, uint64_t length) {
    uintptr_t a = (uintptr_t)p;
    if (c->last_buffer < c->nbuffers && holds(&c->buffers[c->last_buffer], a, length)) return &c->buffers[c->last_buffer];
    for (size_t i = 0; i < c->nbuffers; i++)
        if (holds(&c->buffers[i], a, length)) {
            ((struct ioatd_client *)c)->last_buffer = i;
            return &c->buffers[i];
        }
    return NULL;
}

API int ioatd_buffer_free(struct ioatd_client *c, void *addr) {
    for (size_t i = 0; i < c->nbuffers; i++) {
        struct buffer *b = &c->buffers[i];
        if (b->base != addr) continue;
        struct ioatd_free f = {.handle = b->handle};
        int rc = call(c, IOATD_MSG_FREE, &f, sizeof f, -1, IOATD_MSG_FREE_OK);
        if (rc < 0) return rc;
        done(c);
        munmap(b->base, b->size);
        c->buffers[i] = c->buffers[--c->nbuffers];
        c->last_buffer = 0;
        return 0;
    }
    return -EINVAL;
}

API int ioatd_buffer_info(const struct ioatd_client *c, const void *p, struct ioatd_buffer_info *out) {
    struct buffer *b = find_buffer(c, p, 0);
    if (!b || !out) return -EINVAL;
    *out = (struct ioatd_buffer_info){b->base, b->size, b->page_size, b->handle, b->flags};
    return 0;
}

API int ioatd_ref(const struct ioatd_client *c, const void *p, uint64_t length, uint32_t *handle, uint64_t *offset) {
    struct buffer *b = find_buffer(c, p, length);
    if (!b) return -EINVAL;
    *handle = b->handle;
    *offset = (uint64_t)((const uint8_t *)p - b->base);
    return 0;
}

/* ---- queues ---- */

static void queue_free(struct ioatd_queue *q) {
    if (q->ring_map) munmap(q->ring_map, q->ring_size);
    if (q->is_ring && q->ring.doorbell >= 0) close(q->ring.doorbell);
    free(q->slots);
    free(q->records);
    free(q->cookies);
    free(q->opcodes);
    free(q->batches);
    free(q);
}

static int close_queue_on_server(struct ioatd_client *c, uint32_t id) {
    struct ioatd_close m = {.queue = id};
    int rc = call(c, IOATD_MSG_CLOSE, &m, sizeof m, -1, IOATD_MSG_CLOSE_OK);
    if (rc == 0) done(c);
    return rc;
}

static int make_ring(struct ioatd_queue *q) {
    struct ioatd_client *c = q->c;
    struct ioatd_ring_request r = {.queue = q->id};
    int rc = call(c, IOATD_MSG_RING, &r, sizeof r, -1, IOATD_MSG_RING_OK);
    if (rc < 0) return rc;
    struct ioatd_ring_ok ok;
    if (c->reply_length != sizeof ok || c->nreply_fds != 2) return done(c), -EPROTO;
    memcpy(&ok, c->reply, sizeof ok);
    if (ok.size < sizeof(struct ioatd_ring_header) || ok.size > (1u << 30)) return done(c), -EPROTO;
    void *map = mmap(NULL, (size_t)ok.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, c->reply_fds[0], 0);
    if (map == MAP_FAILED) return rc = -errno, done(c), rc;
    int doorbell = c->reply_fds[1];
    close(c->reply_fds[0]);
    c->nreply_fds = 0;
    free(c->reply);
    c->reply = NULL;
    if (ioatd_ring_attach(&q->ring, map, (size_t)ok.size, doorbell) != 0 || q->ring.queue != q->id) {
        munmap(map, (size_t)ok.size);
        close(doorbell);
        return -EPROTO;
    }
    q->ring_map = map;
    q->ring_size = (size_t)ok.size;
    q->is_ring = 1;
    return 0;
}

API int ioatd_queue_open(struct ioatd_client *c, uint32_t channel, uint32_t depth, struct ioatd_queue **out) {
    if (!out) return -EINVAL;
    *out = NULL;
    if (c->nqueues == c->cqueues) {
        size_t n = c->cqueues ? c->cqueues * 2 : 4;
        struct ioatd_queue **qs = realloc(c->queues, n * sizeof *qs);
        if (!qs) return -ENOMEM;
        c->queues = qs;
        c->cqueues = n;
    }
    struct ioatd_open o = {.channel = channel, .depth = depth};
    int rc = call(c, IOATD_MSG_OPEN, &o, sizeof o, -1, IOATD_MSG_OPEN_OK);
    if (rc < 0) return rc;
    struct ioatd_open_ok ok;
    if (c->reply_length != sizeof ok) return done(c), -EPROTO;
    memcpy(&ok, c->reply, sizeof ok);
    done(c);
    struct ioatd_queue *q = calloc(1, sizeof *q);
    if (!q) return close_queue_on_server(c, ok.queue), -ENOMEM;
    q->c = c;
    q->id = ok.queue;
    q->channel = ok.channel;
    q->depth = ok.depth;
    q->ring.doorbell = -1;
    q->spin_ns = SPIN_NS;
    if (ioatd_rings_granted(c) && !(c->flags & IOATD_CONNECT_NO_RINGS)) {
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
    c->queues[c->nqueues++] = q;
    *out = q;
    return 0;
}

API int ioatd_queue_close(struct ioatd_queue *q) {
    struct ioatd_client *c = q->c;
    if (q->in_flight > 0) {
        snprintf(c->last_message, sizeof c->last_message, "queue %u has %u ops whose records were not seen", q->id, q->in_flight);
        c->last_code = IOATD_E_BUSY;
        return IOATD_ERR(IOATD_E_BUSY);
    }
    int rc = close_queue_on_server(c, q->id);
    if (rc < 0 && !c->lost) return rc;
    for (size_t i = 0; i < c->nqueues; i++)
        if (c->queues[i] == q) {
            c->queues[i] = c->queues[--c->nqueues];
            break;
        }
    queue_free(q);
    return 0;
}

API uint32_t ioatd_queue_id(const struct ioatd_queue *q) { return q->id; }
API uint32_t ioatd_queue_channel(const struct ioatd_queue *q) { return q->channel; }
API uint32_t ioatd_queue_depth(const struct ioatd_queue *q) { return q->depth; }
API int ioatd_queue_is_ring(const struct ioatd_queue *q) { return q->is_ring; }
API struct ioatd_client *ioatd_queue_client(const struct ioatd_queue *q) { return q->c; }

static uint32_t taken(const struct ioatd_queue *q) {
    return q->is_ring ? q->ring.sq_tail_local - q->ring.sq_tail_published : q->taken;
}

API uint32_t ioatd_queue_in_use(const struct ioatd_queue *q) { return q->in_flight + taken(q); }

API void ioatd_queue_set_spin(struct ioatd_queue *q, uint32_t microseconds) { q->spin_ns = (uint64_t)microseconds * 1000u; }

API int ioatd_queue_set_coalesce(struct ioatd_queue *q, uint32_t period_us) {
    struct ioatd_set_coalesce m = {.queue = q->id, .period_us = period_us};
    int rc = call(q->c, IOATD_MSG_SET_COALESCE, &m, sizeof m, -1, IOATD_MSG_COALESCE_OK);
    if (rc == 0) done(q->c);
    return rc;
}

/* ---- submitting ---- */

API struct ioatd_desc *ioatd_get_desc(struct ioatd_queue *q) {
    if (q->in_flight + taken(q) >= q->depth) return NULL;
    struct ioatd_desc *d = q->is_ring ? ioatd_ring_get_desc(&q->ring) : &q->slots[q->taken++];
    if (d) memset(d, 0, sizeof *d);
    return d;
}

API int ioatd_unget_desc(struct ioatd_queue *q, struct ioatd_desc *d) {
    if (taken(q) == 0) return -EINVAL;
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
    while (sent < total) {
        uint32_t n = total - sent < per ? total - sent : per;
        struct ioatd_submit s = {.queue = q->id, .count = n};
        memcpy(c->tx, &s, sizeof s);
        memcpy(c->tx + sizeof s, &q->slots[sent], (size_t)n * sizeof(struct ioatd_desc));
        uint64_t id = ++c->next_request;
        int rc = send_message(c, IOATD_MSG_SUBMIT, id, c->tx, sizeof s + (size_t)n * sizeof(struct ioatd_desc), -1);
        if (rc < 0) {
            /* Nothing of this SUBMIT reached the server; slots not sent stay taken for a retry. */
            memmove(q->slots, &q->slots[sent], (size_t)(total - sent) * sizeof *q->slots);
            q->taken = total - sent;
            if (rc == -EPIPE || rc == -ECONNRESET) {
                pump(c, 0, 0);
                lose(c, rc);
                return c->lost;
            }
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
        sent += n;
    }
    q->taken = 0;
    return (int)sent;
}

API int ioatd_submit(struct ioatd_queue *q) {
    struct ioatd_client *c = q->c;
    if (c->lost) return c->lost;
    if (!q->is_ring) return q->taken ? submit_socket(q) : 0;
    uint32_t error = ioatd_ring_error(&q->ring);
    if (error) return IOATD_ERR(error);
    uint32_t n = taken(q);
    int rc = ioatd_ring_submit(&q->ring);
    q->in_flight += n; /* published either way: the descriptors are in the ring */
    if (rc < 0) {
        pump(c, 0, 0);
        lose(c, rc);
        return c->lost;
    }
    return (int)n;
}

/* ---- prep helpers ---- */

static int ref(struct ioatd_queue *q, const void *p, uint64_t length, uint32_t *handle, uint64_t *offset) {
    int rc = ioatd_ref(q->c, p, length, handle, offset);
    if (rc < 0) {
        snprintf(q->c->last_message, sizeof q->c->last_message,
                 "%p + %llu bytes is not inside one buffer of this client", p, (unsigned long long)length);
        q->c->last_code = 0;
    }
    return rc;
}

static void start(struct ioatd_desc *d, uint8_t opcode, uint32_t flags, uint64_t length) {
    memset(d, 0, sizeof *d);
    d->opcode = opcode;
    d->flags = (uint16_t)flags;
    d->length = length;
}

API int ioatd_prep_null(struct ioatd_queue *q, struct ioatd_desc *d, uint32_t flags) {
    (void)q;
    start(d, IOATD_OP_NULL, flags, 0);
    return 0;
}

API int ioatd_prep_drain(struct ioatd_queue *q, struct ioatd_desc *d, uint32_t flags) {
    (void)q;
    start(d, IOATD_OP_DRAIN, flags, 0);
    return 0;
}

API int ioatd_prep_copy(struct ioatd_queue *q, struct ioatd_desc *d, void *dst, const void *src, uint64_t length, uint32_t flags) {
    uint32_t sh, dh;
    uint64_t so, dof;
    if (ref(q, src, length, &sh, &so) < 0 || ref(q, dst, length, &dh, &dof) < 0) return -EINVAL;
    start(d, IOATD_OP_COPY, flags, length);
    d->src_handle = sh, d->src_offset = so, d->dst_handle = dh, d->dst_offset = dof;
    return 0;
}

API int ioatd_prep_fill(struct ioatd_queue *q, struct ioatd_desc *d, void *dst, uint64_t pattern, uint64_t length, uint32_t flags) {
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
    struct ioatd_desc t;
    if (ioatd_prep_copy(q, &t, dst, src, length, flags) < 0) return -EINVAL;
    t.opcode = IOATD_OP_COPY_CRC32C;
    if (crc_fields(q, &t, seed, crc, flags) < 0) return -EINVAL;
    *d = t;
    return 0;
}

API int ioatd_prep_compare(struct ioatd_queue *q, struct ioatd_desc *d, const void *a, const void *b, uint64_t length, uint32_t flags) {
    uint32_t sh, dh;
    uint64_t so, dof;
    if (ref(q, a, length, &sh, &so) < 0 || ref(q, b, length, &dh, &dof) < 0) return -EINVAL;
    start(d, IOATD_OP_COMPARE, flags, length);
    d->src_handle = sh, d->src_offset = so, d->dst_handle = dh, d->dst_offset = dof;
    return 0;
}

API int ioatd_prep_compare_pattern(struct ioatd_queue *q, struct ioatd_desc *d, const void *src, uint64_t pattern,
                                   uint64_t length, uint32_t flags) {
    uint32_t sh;
    uint64_t so;
    if (ref(q, src, length, &sh, &so) < 0) return -EINVAL;
    start(d, IOATD_OP_COMPARE_PATTERN, flags, length);
    d->src_handle = sh, d->src_offset = so, d->arg = pattern;
    return 0;
}

API int ioatd_prep_dualcast(struct ioatd_queue *q, struct ioatd_desc *d, void *dst1, void *dst2, const void *src,
                            uint64_t length, uint32_t flags) {
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

static uint32_t ready(struct ioatd_queue *q) {
    if (q->is_ring) {
        uint32_t n = ioatd_ring_ready(&q->ring);
        return n < q->ring.cq_entries ? n : q->ring.cq_entries;
    }
    return q->rec_count;
}

static struct ioatd_completion_record *record(struct ioatd_queue *q, uint32_t i) {
    if (q->is_ring) return (struct ioatd_completion_record *)ioatd_ring_record(&q->ring, i);
    return &q->records[(q->rec_head + i) % q->depth];
}

/* The state of a queue that has nothing ready: 0 while records may still come, else why not. */
static int stuck(struct ioatd_queue *q) {
    struct ioatd_client *c = q->c;
    if (q->is_ring) {
        uint32_t error = ioatd_ring_error(&q->ring);
        if (error) return IOATD_ERR(error);
        /* Unsolicited ERRORs (refusal texts), GOODBYE, the connection's end: a look at the socket is a
         * system call, so a caller that polls an empty ring pays it on one empty look in 64. */
        if ((q->empty_looks++ & 63) != 0) return 0;
        int rc = pump(c, 0, 0);
        return rc < 0 ? rc : 0;
    }
    int rc = pump(c, 0, 0);
    return rc < 0 ? rc : 0;
}

API int ioatd_peek_batch(struct ioatd_queue *q, struct ioatd_completion_record **recs, unsigned max) {
    uint32_t n = ready(q);
    if (n == 0) {
        int rc = stuck(q);
        if (rc < 0) return rc;
        n = ready(q);
    }
    if (n > max) n = max;
    for (uint32_t i = 0; i < n; i++) recs[i] = record(q, i);
    return (int)n;
}

API int ioatd_peek_completion(struct ioatd_queue *q, struct ioatd_completion_record **rec) {
    int n = ioatd_peek_batch(q, rec, 1);
    return n < 0 ? n : n == 0 ? -EAGAIN : 0;
}

API void ioatd_cq_advance(struct ioatd_queue *q, unsigned n) {
    uint32_t have = ready(q);
    if (n > have) n = have;
    if (n == 0) return;
    if (q->is_ring) {
        ioatd_ring_consume(&q->ring, n);
    } else {
        q->rec_head = (q->rec_head + n) % q->depth;
        q->rec_count -= n;
    }
    q->in_flight -= n;
}

API int ioatd_queue_event_fd(const struct ioatd_queue *q) { return q->is_ring ? q->ring.doorbell : q->c->fd; }

API int ioatd_queue_arm(struct ioatd_queue *q, unsigned n) {
    if (n == 0) n = 1;
    if (q->is_ring) return ioatd_ring_arm(&q->ring, n);
    return ready(q) < n;
}

API void ioatd_queue_disarm(struct ioatd_queue *q) {
    if (q->is_ring) ioatd_ring_disarm(&q->ring);
}


API int ioatd_wait_completion(struct ioatd_queue *q, struct ioatd_completion_record **rec, int timeout_ms) {
    struct ioatd_client *c = q->c;
    int64_t deadline = timeout_ms >= 0 ? now_ms() + timeout_ms : -1;
    if (q->is_ring) {
        if (ready(q) == 0) {
            uint64_t until = now_ns() + q->spin_ns;
            for (unsigned looks = 1; ready(q) == 0 && now_ns() < until; looks++)
                if ((looks & 63) == 0) sched_yield();
        }
        while (ready(q) == 0) {
            q->empty_looks = 0; /* before sleeping, always look at the socket */
            int rc = stuck(q);
            if (rc < 0) return rc;
            int slice = 100; /* look at the connection at least this often */
            if (deadline >= 0) {
                int64_t left = deadline - now_ms();
                if (left <= 0) return -ETIME;
                if (left < slice) slice = (int)left;
            }
            if (ioatd_ring_arm(&q->ring, 1)) {
                struct pollfd p[2] = {{q->ring.doorbell, POLLIN, 0}, {c->fd, POLLIN, 0}};
                poll(p, 2, slice);
            }
            ioatd_ring_disarm(&q->ring);
        }
    } else {
        /* The same spin, reading the socket without blocking: a poll() sleep and wake-up costs more
         * than the round trip it waits for. */
        if (ready(q) == 0 && q->in_flight > 0) {
            uint64_t until = now_ns() + q->spin_ns;
            while (ready(q) == 0 && now_ns() < until) {
                int rc = pump_some(c, 0, 0, 1);
                if (rc < 0) return rc;
            }
        }
        while (ready(q) == 0) {
            if (q->in_flight == 0 && q->taken == 0) return -EAGAIN; /* nothing could ever come */
            int left = -1;
            if (deadline >= 0) {
                int64_t l = deadline - now_ms();
                if (l <= 0) return -ETIME;
                left = (int)l;
            }
            int rc = pump(c, 1, left);
            if (rc < 0) return rc;
        }
    }
    *rec = record(q, 0);
    return 0;
}
