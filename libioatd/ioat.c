/*
 * libioatd: FreeBSD's ioat(4) API on an ioatd connection (see <ioatd/ioat.h>).
 *
 * One engine per channel and connection, counted; its queue's cookies are submission sequence
 * numbers, and the engine keeps each operation's callback at (sequence mod depth), which no later
 * operation can reuse before that record is seen (the queue's depth bounds both).
 *
 * `lock` guards the connection pointers, the engine list and every engine's queue (the client
 * library wants one thread at a time on a queue). Callbacks are claimed under it and run without
 * it, by one thread at a time per engine (the deliverer), so they run in submission order however
 * many threads poll.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "ioatd/ioat.h"

#define API __attribute__((visibility("default")))
#define ENGINE_DEPTH 256u
#define CLAIM 32

struct engine {
    struct ioatd_client *c; /* the connection the queue is on */
    uint32_t channel;       /* position in the server's channel list */
    int refs;
    struct ioatd_queue *q;
    pthread_mutex_t enqueue; /* ioat_acquire ... ioat_release */
    int held;                /* under `lock`: whether `holder` holds `enqueue` */
    pthread_t holder;
    int delivering; /* under `lock`: `deliverer` claims and runs callbacks */
    pthread_t deliverer;
    struct bus_dmadesc *callbacks;
    uint64_t next_seq;
    /* Room for ioat_copy_8k_aligned's entry lists: two entries per slot. */
    struct ioatd_sg_entry *lists;
    /* ioat_get_fd: an epoll set of the queue's event fd, the connection and `ready`, which is written
     * when records are already there at arming (nothing else would make the set readable). */
    int epfd, ready;
    int fd_wanted;
    int dead; /* under `lock`: the connection ended and every callback has heard so */
    struct engine *next;
};

/* A connection that ended: kept, with the buffers the program made on it, until ioat_shutdown. */
struct retired {
    struct ioatd_client *c;
    struct retired *next;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t delivered = PTHREAD_COND_INITIALIZER; /* a deliverer finished */
static struct ioatd_client *client;
static struct retired *retired;
static struct engine *engines;
static char *socket_path;
static unsigned connect_flags;
/* Callbacks this thread is running (enqueueing from one is invalid, as in the kernel). */
static __thread int in_callback;

/* With `lock` held: the live connection, connecting (again) when there is none or it ended. */
static struct ioatd_client *current(void) {
    if (client && ioatd_client_error(client)) {
        /* Engines on it stay valid (their callbacks hear ENXIO); its buffers stay mapped. */
        struct retired *r = malloc(sizeof *r);
        if (!r) return NULL;
        *r = (struct retired){client, retired};
        retired = r;
        client = NULL;
    }
    if (!client) {
        struct ioatd_client *c;
        if (ioatd_connect(socket_path, connect_flags, &c) == 0) client = c;
    }
    return client;
}

API struct ioatd_client *ioat_client(void) {
    pthread_mutex_lock(&lock);
    struct ioatd_client *c = current();
    pthread_mutex_unlock(&lock);
    return c;
}

API int ioat_set_socket(const char *path, unsigned flags) {
    pthread_mutex_lock(&lock);
    int rc = 0;
    if (client || engines) {
        rc = -EBUSY;
    } else {
        char *copy = path ? strdup(path) : NULL;
        if (path && !copy) {
            rc = -ENOMEM;
        } else {
            free(socket_path);
            socket_path = copy;
            connect_flags = flags;
        }
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

static void engine_free(struct engine *e) {
    if (e->epfd >= 0) close(e->epfd);
    if (e->ready >= 0) close(e->ready);
    pthread_mutex_destroy(&e->enqueue);
    free(e->callbacks);
    free(e);
}

API bus_dmaengine_t ioat_get_dmaengine(uint32_t channel_index) {
    pthread_mutex_lock(&lock);
    struct ioatd_client *c = current();
    struct engine *e = NULL;
    if (!c) goto fail;
    for (e = engines; e; e = e->next)
        if (e->c == c && e->channel == channel_index) {
            e->refs++;
            pthread_mutex_unlock(&lock);
            return e;
        }
    struct ioatd_channel ch;
    e = calloc(1, sizeof *e);
    if (!e) goto fail;
    e->epfd = e->ready = -1;
    pthread_mutex_init(&e->enqueue, NULL);
    if (ioatd_channel_info(c, channel_index, &ch) != 0) goto fail;
    uint32_t depth = ch.max_depth < ENGINE_DEPTH ? ch.max_depth : ENGINE_DEPTH;
    if (ioatd_queue_open(c, ch.index, depth, &e->q) != 0) goto fail;
    depth = ioatd_queue_depth(e->q);
    e->callbacks = calloc(depth, sizeof *e->callbacks);
    if (!e->callbacks || ioatd_buffer_alloc(c, (uint64_t)depth * 2 * sizeof(struct ioatd_sg_entry), 0, (void **)&e->lists) != 0) {
        ioatd_queue_close(e->q);
        goto fail;
    }
    e->c = c;
    e->channel = channel_index;
    e->refs = 1;
    e->next = engines;
    engines = e;
    pthread_mutex_unlock(&lock);
    return e;
fail:
    if (e) engine_free(e);
    pthread_mutex_unlock(&lock);
    return NULL;
}

static int callback_error(uint16_t status) {
    switch (status) {
    case IOATD_ST_SUCCESS: return 0;
    case IOATD_ST_MISMATCH: return EILSEQ;
    case IOATD_ST_NOT_ATTEMPTED:
    case IOATD_ST_CANCELLED: return ECANCELED;
    case IOATD_ST_CONNECTION_LOST: return ENXIO;
    default: return status > IOATD_STATUS_REFUSED && status < IOATD_STATUS_REFUSED + 0x100 ? EINVAL : EIO;
    }
}

static int64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int ioatd_internal_call_timeout(const struct ioatd_client *c);

/* When a wait of the library's own (room in a full engine, M_WAITOK, the end of a put) gives up: the
 * client's bound on waiting for the server (30 s unless set), -1 for none. */
static int64_t own_deadline(const struct engine *e) {
    int bound = ioatd_internal_call_timeout(e->c);
    return bound < 0 ? -1 : now_ms() + bound;
}

/* Milliseconds left until `deadline` (-1: none; 0: passed). */
static int left_ms(int64_t deadline) {
    if (deadline < 0) return -1;
    int64_t left = deadline - now_ms();
    return left <= 0 ? 0 : left > 0x7FFFFFFF ? 0x7FFFFFFF : (int)left;
}

/* With `lock` held: makes ioat_get_fd's set readable once a record is ready (the caller asked for it). */
static void arm_fd(struct engine *e) {
    if (!e->fd_wanted || ioatd_queue_in_use(e->q) == 0) return;
    if (!ioatd_queue_arm(e->q, 1)) {
        uint64_t one = 1;
        if (write(e->ready, &one, sizeof one) < 0) { /* already readable */ }
    }
}

static void disarm_fd(struct engine *e) {
    ioatd_queue_disarm(e->q);
    if (e->ready >= 0) {
        uint64_t count;
        if (read(e->ready, &count, sizeof count) < 0) { /* was not readable */ }
    }
}

/* With `lock` held: the callback of every operation still outstanding hears `error`, once, and none
 * runs again (the engine stops waiting for their records). Callbacks run with `lock` released, so the
 * operations' places are taken before the first runs. */
static void give_up(struct engine *e, int error) {
    uint32_t depth = ioatd_queue_depth(e->q), due = ioatd_queue_in_use(e->q);
    uint64_t first = e->next_seq - due;
    for (uint32_t i = 0; i < due && i < depth; i++) {
        struct bus_dmadesc *d = &e->callbacks[(first + i) % depth];
        bus_dmaengine_callback_t fn = d->callback_fn;
        d->callback_fn = NULL;
        if (fn) {
            pthread_mutex_unlock(&lock);
            in_callback++;
            fn(d->callback_arg, error);
            in_callback--;
            pthread_mutex_lock(&lock);
        }
    }
}

/* Runs the callbacks of the ready records, waiting up to timeout_ms (-1: forever) for at least one
 * while any operation is outstanding. With `lock` held; callbacks run with it released, by this
 * thread alone (other pollers wait their turn, so the order holds). Returns how many ran, or
 * -ENXIO once the connection is gone and every callback has heard so. */
static int reap(struct engine *e, int timeout_ms) {
    if (e->delivering && pthread_equal(e->deliverer, pthread_self())) return 0; /* ioat_poll from a callback */
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    while (e->delivering) {
        if (deadline < 0) {
            pthread_cond_wait(&delivered, &lock);
        } else {
            /* `delivered` waits on CLOCK_REALTIME: the monotonic time left, added to it. */
            int64_t left = deadline - now_ms();
            if (left <= 0) return 0;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += left / 1000;
            ts.tv_nsec += (left % 1000) * 1000000;
            if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
            pthread_cond_timedwait(&delivered, &lock, &ts);
        }
    }
    e->delivering = 1;
    e->deliverer = pthread_self();
    uint32_t depth = ioatd_queue_depth(e->q);
    struct ioatd_completion_record *recs[CLAIM];
    int n = ioatd_peek_batch(e->q, recs, CLAIM);
    if (n == 0 && ioatd_queue_in_use(e->q) == 0 && ioatd_client_error(e->c)) n = -ENXIO; /* nothing due, and the end */
    /* Waiting sleeps without `lock`, so other threads enqueue meanwhile. */
    while (n == 0 && timeout_ms != 0 && ioatd_queue_in_use(e->q) > 0) {
        int left = -1;
        if (deadline >= 0) {
            left = (int)(deadline - now_ms());
            if (left <= 0) break;
        }
        if (ioatd_queue_arm(e->q, 1)) {
            struct pollfd p[2] = {{ioatd_queue_event_fd(e->q), POLLIN, 0}, {ioatd_client_fd(e->c), POLLIN, 0}};
            pthread_mutex_unlock(&lock);
            poll(p, 2, left < 0 || left > 100 ? 100 : left);
            pthread_mutex_lock(&lock);
        }
        ioatd_queue_disarm(e->q);
        n = ioatd_peek_batch(e->q, recs, CLAIM);
    }
    /* Claim: what runs is taken off the queue before `lock` is released. */
    struct bus_dmadesc run[CLAIM];
    int errors[CLAIM], count = 0;
    if (n < 0) {
        /* The queue can give no more records (the ring broke, or the connection ended and every
         * record has been handed out): every callback still due hears ENXIO, once, run by this
         * thread while it holds the delivery turn. */
        give_up(e, ENXIO);
    } else {
        for (int i = 0; i < n; i++) {
            struct bus_dmadesc *d = &e->callbacks[recs[i]->cookie % depth];
            if (d->callback_fn) {
                run[count] = *d;
                errors[count++] = callback_error(recs[i]->status);
            }
            d->callback_fn = NULL;
        }
        ioatd_cq_advance(e->q, (unsigned)n);
    }
    pthread_mutex_unlock(&lock);
    in_callback++;
    for (int i = 0; i < count; i++) run[i].callback_fn(run[i].callback_arg, errors[i]);
    in_callback--;
    pthread_mutex_lock(&lock);
    e->delivering = 0;
    if (n < 0) e->dead = 1;
    pthread_cond_broadcast(&delivered);
    return n < 0 ? -ENXIO : count;
}

API int ioat_poll(bus_dmaengine_t dmaengine, int timeout_ms) {
    struct engine *e = dmaengine;
    if (!e) return -EINVAL;
    pthread_mutex_lock(&lock);
    disarm_fd(e);
    int ran = reap(e, timeout_ms);
    if (ran >= 0) arm_fd(e);
    pthread_mutex_unlock(&lock);
    return ran;
}

API int ioat_get_fd(bus_dmaengine_t dmaengine) {
    struct engine *e = dmaengine;
    if (!e) return -EINVAL;
    pthread_mutex_lock(&lock);
    if (e->epfd < 0) {
        int ep = epoll_create1(EPOLL_CLOEXEC), ready = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        int fds[3] = {ready, ioatd_queue_event_fd(e->q), ioatd_client_fd(e->c)};
        int ok = ep >= 0 && ready >= 0;
        for (int i = 0; ok && i < 3; i++) {
            if (i == 2 && fds[2] == fds[1]) break; /* a socket queue's event fd is the connection */
            struct epoll_event ev = {.events = EPOLLIN, .data = {.fd = fds[i]}};
            ok = epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) == 0;
        }
        if (!ok) {
            if (ep >= 0) close(ep);
            if (ready >= 0) close(ready);
            pthread_mutex_unlock(&lock);
            return -errno;
        }
        e->epfd = ep;
        e->ready = ready;
    }
    e->fd_wanted = 1;
    arm_fd(e);
    int fd = e->epfd;
    pthread_mutex_unlock(&lock);
    return fd;
}

API void ioat_put_dmaengine(bus_dmaengine_t dmaengine) {
    struct engine *e = dmaengine;
    if (!e) return;
    pthread_mutex_lock(&lock);
    if (--e->refs > 0) {
        pthread_mutex_unlock(&lock);
        return;
    }
    /* The last reference: outstanding operations finish and their callbacks run first, within the
     * client's bound; the callbacks of any still outstanding after it hear ETIMEDOUT (their queue stays
     * on the server until the connection ends). */
    ioatd_submit(e->q);
    int64_t deadline = own_deadline(e);
    while (ioatd_queue_in_use(e->q) > 0) {
        int left = left_ms(deadline);
        if (left == 0) {
            give_up(e, ETIMEDOUT);
            break;
        }
        if (reap(e, left) < 0) break;
    }
    for (struct engine **p = &engines; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            break;
        }
    ioatd_buffer_free(e->c, e->lists);
    ioatd_queue_close(e->q);
    pthread_mutex_unlock(&lock);
    engine_free(e);
}

API uint32_t ioat_get_depth(bus_dmaengine_t dmaengine) {
    struct engine *e = dmaengine;
    return e ? ioatd_queue_depth(e->q) : 0;
}

static int channel(struct engine *e, struct ioatd_channel *out) {
    return e ? ioatd_channel_info(e->c, e->channel, out) : -EINVAL;
}

API int ioat_get_hwversion(bus_dmaengine_t dmaengine) {
    struct ioatd_channel ch;
    return channel(dmaengine, &ch) == 0 ? ch.hw_version : 0;
}

API size_t ioat_get_max_io_size(bus_dmaengine_t dmaengine) {
    struct ioatd_channel ch;
    return channel(dmaengine, &ch) == 0 ? (size_t)ch.max_transfer : 0;
}

API uint16_t ioat_get_max_coalesce_period(bus_dmaengine_t dmaengine) {
    struct ioatd_channel ch;
    if (channel(dmaengine, &ch) != 0) return 0;
    return ch.max_coalesce_us > 0xFFFF ? 0xFFFF : (uint16_t)ch.max_coalesce_us;
}

API int ioat_set_interrupt_coalesce(bus_dmaengine_t dmaengine, uint16_t delay) {
    struct engine *e = dmaengine;
    if (!e) return EINVAL;
    if (delay > ioat_get_max_coalesce_period(dmaengine)) return ERANGE;
    pthread_mutex_lock(&lock);
    int rc = ioatd_queue_set_coalesce(e->q, delay);
    pthread_mutex_unlock(&lock);
    return rc == 0 ? 0 : ioatd_err_code(rc) == IOATD_E_BAD_PERIOD ? ERANGE : ENXIO;
}

static void hold(struct engine *e) {
    pthread_mutex_lock(&lock);
    e->held = 1;
    e->holder = pthread_self();
    pthread_mutex_unlock(&lock);
}

API void ioat_acquire(bus_dmaengine_t dmaengine) {
    struct engine *e = dmaengine;
    if (!e) return;
    pthread_mutex_lock(&e->enqueue);
    hold(e);
}

API int ioat_acquire_reserve(bus_dmaengine_t dmaengine, uint32_t n, int mflags) {
    struct engine *e = dmaengine;
    if (!e || n > ioatd_queue_depth(e->q)) return EINVAL;
    pthread_mutex_lock(&e->enqueue);
    pthread_mutex_lock(&lock);
    int rc = 0;
    int64_t deadline = own_deadline(e);
    while (ioatd_queue_depth(e->q) - ioatd_queue_in_use(e->q) < n) {
        if (mflags & M_NOWAIT) {
            rc = EAGAIN;
            break;
        }
        ioatd_submit(e->q); /* what this holder enqueued must run for room to come */
        int left = left_ms(deadline);
        if (left == 0) {
            rc = ETIMEDOUT; /* M_WAITOK, but not for ever: the server answered nothing within the bound */
            break;
        }
        if (reap(e, left) < 0) {
            rc = ENXIO;
            break;
        }
    }
    if (rc == 0) {
        e->held = 1;
        e->holder = pthread_self();
    }
    pthread_mutex_unlock(&lock);
    if (rc) pthread_mutex_unlock(&e->enqueue);
    return rc;
}

API void ioat_release(bus_dmaengine_t dmaengine) {
    struct engine *e = dmaengine;
    if (!e) return;
    pthread_mutex_lock(&lock);
    if (!e->held || !pthread_equal(e->holder, pthread_self())) {
        pthread_mutex_unlock(&lock); /* not this thread's to release */
        return;
    }
    ioatd_submit(e->q);
    arm_fd(e);
    e->held = 0;
    pthread_mutex_unlock(&lock);
    pthread_mutex_unlock(&e->enqueue);
}

/* A slot for one operation (with `lock` held): waits for room unless DMA_NO_WAIT. */
static struct ioatd_desc *slot(struct engine *e, uint32_t flags) {
    int64_t deadline = own_deadline(e);
    for (;;) {
        struct ioatd_desc *d = ioatd_get_desc(e->q);
        if (d || (flags & DMA_NO_WAIT) || e->dead) return d;
        ioatd_submit(e->q);
        int left = left_ms(deadline);
        if (left == 0 || reap(e, left) < 0) return NULL;
    }
}

static uint32_t wire_flags(uint32_t flags) {
    uint32_t w = 0;
    if (flags & DMA_INT_EN) w |= IOATD_F_INT_EN;
    if (flags & DMA_FENCE) w |= IOATD_F_FENCE;
    if (flags & DMA_CRC_STORE) w |= IOATD_F_CRC_STORE;
    if (flags & DMA_CRC_TEST) w |= IOATD_F_CRC_TEST;
    if (flags & DMA_CRC_INLINE) w |= IOATD_F_CRC_INLINE;
    return w; /* DMA_NO_WAIT is this side's: a slot is never waited for */
}

/* Records the callback of the descriptor just prepared (rc 0) and returns its bus_dmadesc, or gives
 * the slot back. */
static struct bus_dmadesc *finish(struct engine *e, struct ioatd_desc *d, int rc, bus_dmaengine_callback_t fn, void *arg) {
    if (rc != 0) {
        ioatd_unget_desc(e->q, d);
        pthread_mutex_unlock(&lock);
        return NULL;
    }
    uint64_t seq = e->next_seq++;
    ioatd_desc_set_cookie(d, seq);
    struct bus_dmadesc *b = &e->callbacks[seq % ioatd_queue_depth(e->q)];
    b->callback_fn = fn;
    b->callback_arg = arg;
    pthread_mutex_unlock(&lock);
    return b;
}

/* Every operation: a known engine, held by this thread (ioat_acquire), not from a callback, known
 * flags, a live connection, and a slot. */
#define BEGIN(flags)                                                                                      \
    struct engine *e = dmaengine;                                                                         \
    if (!e || ((flags) & ~(uint32_t)DMA_ALL_FLAGS) || in_callback) return NULL;                           \
    pthread_mutex_lock(&lock);                                                                            \
    struct ioatd_desc *d = NULL;                                                                          \
    if (e->held && pthread_equal(e->holder, pthread_self()) && !e->dead) d = slot(e, flags);                \
    if (!d) {                                                                                             \
        pthread_mutex_unlock(&lock);                                                                      \
        return NULL;                                                                                      \
    }

#define P(addr) ((void *)(uintptr_t)(addr))

API struct bus_dmadesc *ioat_copy(bus_dmaengine_t dmaengine, bus_addr_t dst, bus_addr_t src, bus_size_t len,
                                  bus_dmaengine_callback_t callback_fn, void *callback_arg, uint32_t flags) {
    BEGIN(flags);
    int rc = ioatd_prep_copy(e->q, d, P(dst), P(src), len, wire_flags(flags) & (IOATD_F_INT_EN | IOATD_F_FENCE));
    return finish(e, d, (flags & (DMA_CRC_STORE | DMA_CRC_TEST | DMA_CRC_INLINE)) ? -EINVAL : rc, callback_fn, callback_arg);
}

API struct bus_dmadesc *ioat_copy_8k_aligned(bus_dmaengine_t dmaengine, bus_addr_t dst1, bus_addr_t dst2, bus_addr_t src1,
                                             bus_addr_t src2, bus_dmaengine_callback_t callback_fn, void *callback_arg,
                                             uint32_t flags) {
    BEGIN(flags);
    void *dsts[2] = {P(dst1), P(dst2)};
    const void *srcs[2] = {P(src1), P(src2)};
    const uint64_t lengths[2] = {4096, 4096};
    struct ioatd_sg_entry *list = &e->lists[(e->next_seq % ioatd_queue_depth(e->q)) * 2];
    int rc = (flags & (DMA_CRC_STORE | DMA_CRC_TEST | DMA_CRC_INLINE))
                 ? -EINVAL
                 : ioatd_prep_copy_sg(e->q, d, dsts, srcs, lengths, 2, list, wire_flags(flags));
    return finish(e, d, rc, callback_fn, callback_arg);
}

static uint32_t crc_flags(uint32_t flags, const uint32_t *initialseed) {
    return wire_flags(flags) | (initialseed ? IOATD_F_CRC_SEED : IOATD_F_CRC_CHAIN);
}

API struct bus_dmadesc *ioat_copy_crc(bus_dmaengine_t dmaengine, bus_addr_t dst, bus_addr_t src, bus_size_t len,
                                      uint32_t *initialseed, bus_addr_t crcptr, bus_dmaengine_callback_t callback_fn,
                                      void *callback_arg, uint32_t flags) {
    BEGIN(flags);
    int rc = ioatd_prep_copy_crc32c(e->q, d, P(dst), P(src), len, initialseed ? *initialseed : 0, P(crcptr),
                                    crc_flags(flags, initialseed));
    return finish(e, d, rc, callback_fn, callback_arg);
}

API struct bus_dmadesc *ioat_crc(bus_dmaengine_t dmaengine, bus_addr_t src, bus_size_t len, uint32_t *initialseed,
                                 bus_addr_t crcptr, bus_dmaengine_callback_t callback_fn, void *callback_arg, uint32_t flags) {
    BEGIN(flags);
    int rc = ioatd_prep_crc32c(e->q, d, P(src), len, initialseed ? *initialseed : 0, P(crcptr), crc_flags(flags, initialseed));
    return finish(e, d, rc, callback_fn, callback_arg);
}

API struct bus_dmadesc *ioat_blockfill(bus_dmaengine_t dmaengine, bus_addr_t dst, uint64_t fillpattern, bus_size_t len,
                                       bus_dmaengine_callback_t callback_fn, void *callback_arg, uint32_t flags) {
    BEGIN(flags);
    int rc = (flags & (DMA_CRC_STORE | DMA_CRC_TEST | DMA_CRC_INLINE))
                 ? -EINVAL
                 : ioatd_prep_fill(e->q, d, P(dst), fillpattern, len, wire_flags(flags));
    return finish(e, d, rc, callback_fn, callback_arg);
}

API struct bus_dmadesc *ioat_null(bus_dmaengine_t dmaengine, bus_dmaengine_callback_t callback_fn, void *callback_arg,
                                  uint32_t flags) {
    BEGIN(flags);
    int rc = (flags & (DMA_CRC_STORE | DMA_CRC_TEST | DMA_CRC_INLINE)) ? -EINVAL
                                                                           : ioatd_prep_null(e->q, d, wire_flags(flags));
    return finish(e, d, rc, callback_fn, callback_arg);
}

/* Closes the shared connection and every ended one: their buffers are unmapped, and engines not put
 * are freed (their handles are dangling from here). The next use connects anew. */
API void ioat_shutdown(void) {
    pthread_mutex_lock(&lock);
    while (engines) {
        struct engine *e = engines;
        engines = e->next;
        engine_free(e);
    }
    if (client) ioatd_close(client);
    client = NULL;
    while (retired) {
        struct retired *r = retired;
        retired = r->next;
        ioatd_close(r->c);
        free(r);
    }
    pthread_mutex_unlock(&lock);
}

/* At exit (or when the library is unloaded) the shared connection closes: the server frees this
 * process's buffers and queues then anyway, and nothing is left open behind the program's back. */
__attribute__((destructor)) static void close_client(void) {
    ioat_shutdown();
    free(socket_path);
    socket_path = NULL;
}
