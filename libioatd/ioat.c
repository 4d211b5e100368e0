/*
 * libioatd: FreeBSD's ioat(4) API on an ioatd connection (see <ioatd/ioat.h>).
 *
 * One engine per channel, counted; its queue's cookies are submission sequence numbers, and the
 * engine keeps each operation's callback at (sequence mod depth), which no later operation can reuse
 * before that record is seen (the queue's depth bounds both).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ioatd/ioat.h"

#define API __attribute__((visibility("default")))
#define ENGINE_DEPTH 256u

struct engine {
    uint32_t channel; /* position in the server's channel list */
    int refs;
    struct ioatd_queue *q;
    pthread_mutex_t enqueue; /* ioat_acquire ... ioat_release */
    struct bus_dmadesc *callbacks;
    uint64_t next_seq;
    /* Room for ioat_copy_8k_aligned's entry lists: two entries per slot. */
    struct ioatd_sg_entry *lists;
    struct engine *next;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER; /* the client, the engine list */
static struct ioatd_client *client;
static struct engine *engines;

API struct ioatd_client *ioat_client(void) {
    pthread_mutex_lock(&lock);
    if (!client) {
        struct ioatd_client *c;
        if (ioatd_connect(NULL, 0, &c) == 0) client = c;
    }
    struct ioatd_client *c = client;
    pthread_mutex_unlock(&lock);
    return c;
}

API bus_dmaengine_t ioat_get_dmaengine(uint32_t channel_index) {
    struct ioatd_client *c = ioat_client();
    if (!c) return NULL;
    pthread_mutex_lock(&lock);
    struct engine *e;
    for (e = engines; e; e = e->next)
        if (e->channel == channel_index) {
            e->refs++;
            pthread_mutex_unlock(&lock);
            return e;
        }
    struct ioatd_channel ch;
    e = calloc(1, sizeof *e);
    if (!e || ioatd_channel_info(c, channel_index, &ch) != 0) goto fail;
    uint32_t depth = ch.max_depth < ENGINE_DEPTH ? ch.max_depth : ENGINE_DEPTH;
    if (ioatd_queue_open(c, ch.index, depth, &e->q) != 0) goto fail;
    depth = ioatd_queue_depth(e->q);
    e->callbacks = calloc(depth, sizeof *e->callbacks);
    if (!e->callbacks || ioatd_buffer_alloc(c, (uint64_t)depth * 2 * sizeof(struct ioatd_sg_entry), 0, (void **)&e->lists) != 0) {
        ioatd_queue_close(e->q);
        goto fail;
    }
    e->channel = channel_index;
    e->refs = 1;
    pthread_mutex_init(&e->enqueue, NULL);
    e->next = engines;
    engines = e;
    pthread_mutex_unlock(&lock);
    return e;
fail:
    if (e) free(e->callbacks);
    free(e);
    pthread_mutex_unlock(&lock);
    return NULL;
}

static int callback_error(uint16_t status) {
    switch (status) {
    case IOATD_ST_SUCCESS: return 0;
    case IOATD_ST_MISMATCH: return EILSEQ;
    case IOATD_ST_NOT_ATTEMPTED:
    case IOATD_ST_CANCELLED: return ECANCELED;
    default: return status > IOATD_STATUS_REFUSED && status < IOATD_STATUS_REFUSED + 0x100 ? EINVAL : EIO;
    }
}

/* Runs the callbacks of the ready records (with `lock` held; callbacks run with it released). */
static int reap(struct engine *e, int timeout_ms) {
    uint32_t depth = ioatd_queue_depth(e->q);
    int ran = 0;
    struct ioatd_completion_record *recs[32];
    int n = ioatd_peek_batch(e->q, recs, 32);
    /* Waiting sleeps without `lock`, so other threads enqueue meanwhile; the state is read under it. */
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (n == 0 && timeout_ms != 0 && ioatd_queue_in_use(e->q) > 0) {
        int left = -1;
        if (timeout_ms > 0) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            left = timeout_ms - (int)((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000);
            if (left <= 0) return 0;
        }
        if (ioatd_queue_arm(e->q, 1)) {
            struct pollfd p[2] = {{ioatd_queue_event_fd(e->q), POLLIN, 0}, {ioatd_client_fd(client), POLLIN, 0}};
            pthread_mutex_unlock(&lock);
            poll(p, 2, left < 0 || left > 100 ? 100 : left);
            pthread_mutex_lock(&lock);
        }
        ioatd_queue_disarm(e->q);
        n = ioatd_peek_batch(e->q, recs, 32);
    }
    if (n < 0) {
        /* The connection is gone: every outstanding callback hears ENXIO, once. */
        uint32_t lost = ioatd_queue_in_use(e->q);
        for (uint32_t i = 0; i < lost && i < depth; i++) {
            struct bus_dmadesc *d = &e->callbacks[(e->next_seq - lost + i) % depth];
            bus_dmaengine_callback_t fn = d->callback_fn;
            d->callback_fn = NULL;
            if (fn) {
                pthread_mutex_unlock(&lock);
                fn(d->callback_arg, ENXIO);
                pthread_mutex_lock(&lock);
            }
        }
        return -ENXIO;
    }
    for (int i = 0; i < n; i++) {
        struct bus_dmadesc *d = &e->callbacks[recs[i]->cookie % depth];
        bus_dmaengine_callback_t fn = d->callback_fn;
        void *arg = d->callback_arg;
        int error = callback_error(recs[i]->status);
        d->callback_fn = NULL;
        if (fn) {
            pthread_mutex_unlock(&lock);
            fn(arg, error);
            pthread_mutex_lock(&lock);
            ran++;
        }
    }
    ioatd_cq_advance(e->q, (unsigned)n);
    return ran;
}

API int ioat_poll(bus_dmaengine_t dmaengine, int timeout_ms) {
    struct engine *e = dmaengine;
    pthread_mutex_lock(&lock);
    ioatd_queue_disarm(e->q);
    int ran = reap(e, timeout_ms);
    if (ran >= 0 && ioatd_queue_in_use(e->q) > 0) ioatd_queue_arm(e->q, 1);
    pthread_mutex_unlock(&lock);
    return ran;
}

API int ioat_get_fd(bus_dmaengine_t dmaengine) { return ioatd_queue_event_fd(((struct engine *)dmaengine)->q); }

API void ioat_put_dmaengine(bus_dmaengine_t dmaengine) {
    struct engine *e = dmaengine;
    pthread_mutex_lock(&lock);
    if (--e->refs > 0) {
        pthread_mutex_unlock(&lock);
        return;
    }
    /* The last reference: outstanding operations finish and their callbacks run first. */
    ioatd_submit(e->q);
    while (ioatd_queue_in_use(e->q) > 0)
        if (reap(e, -1) < 0) break;
    for (struct engine **p = &engines; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            break;
        }
    ioatd_buffer_free(client, e->lists);
    ioatd_queue_close(e->q);
    pthread_mutex_unlock(&lock);
    pthread_mutex_destroy(&e->enqueue);
    free(e->callbacks);
    free(e);
}

static int channel(struct engine *e, struct ioatd_channel *out) {
    return ioatd_channel_info(client, e->channel, out);
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
    if (delay > ioat_get_max_coalesce_period(dmaengine)) return ERANGE;
    pthread_mutex_lock(&lock);
    int rc = ioatd_queue_set_coalesce(e->q, delay);
    pthread_mutex_unlock(&lock);
    return rc == 0 ? 0 : ioatd_err_code(rc) == IOATD_E_BAD_PERIOD ? ERANGE : ENXIO;
}

API void ioat_acquire(bus_dmaengine_t dmaengine) { pthread_mutex_lock(&((struct engine *)dmaengine)->enqueue); }

API int ioat_acquire_reserve(bus_dmaengine_t dmaengine, uint32_t n, int mflags) {
    struct engine *e = dmaengine;
    if (n > ioatd_queue_depth(e->q)) return EINVAL;
    pthread_mutex_lock(&e->enqueue);
    pthread_mutex_lock(&lock);
    int rc = 0;
    while (ioatd_queue_depth(e->q) - ioatd_queue_in_use(e->q) < n) {
        if (mflags & M_NOWAIT) {
            rc = EAGAIN;
            break;
        }
        ioatd_submit(e->q); /* what this holder enqueued must run for room to come */
        if (reap(e, -1) < 0) {
            rc = ENXIO;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    if (rc) pthread_mutex_unlock(&e->enqueue);
    return rc;
}

API void ioat_release(bus_dmaengine_t dmaengine) {
    struct engine *e = dmaengine;
    pthread_mutex_lock(&lock);
    ioatd_submit(e->q);
    pthread_mutex_unlock(&lock);
    pthread_mutex_unlock(&e->enqueue);
}

/* A slot for one operation (with `lock` held): waits for room unless DMA_NO_WAIT. */
static struct ioatd_desc *slot(struct engine *e, uint32_t flags) {
    for (;;) {
        struct ioatd_desc *d = ioatd_get_desc(e->q);
        if (d || (flags & DMA_NO_WAIT)) return d;
        ioatd_submit(e->q);
        if (reap(e, -1) < 0) return NULL;
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

#define BEGIN(flags)                                          \
    struct engine *e = dmaengine;                             \
    if ((flags) & ~(uint32_t)DMA_ALL_FLAGS) return NULL;      \
    pthread_mutex_lock(&lock);                                \
    struct ioatd_desc *d = slot(e, flags);                    \
    if (!d) {                                                 \
        pthread_mutex_unlock(&lock);                          \
        return NULL;                                          \
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

/* At exit (or when the library is unloaded) the shared connection closes: the server frees this
 * process's buffers and queues then anyway, and nothing is left open behind the program's back. */
__attribute__((destructor)) static void close_client(void) {
    pthread_mutex_lock(&lock);
    while (engines) {
        struct engine *e = engines;
        engines = e->next;
        pthread_mutex_destroy(&e->enqueue);
        free(e->callbacks);
        free(e);
    }
    if (client) ioatd_close(client);
    client = NULL;
    pthread_mutex_unlock(&lock);
}
