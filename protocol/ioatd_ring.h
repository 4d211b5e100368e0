/*
 * ioatd_ring.h - the client's side of a ring queue (SPEC.md §5.10), as static inline functions, but
 * for the two that make system calls (ioatd_ring_kick, ioatd_ring_disarm), which libioatd exports
 * (LIBIOATD_1.2; link with -lioatd).
 *
 * This is the one implementation of the ring fast path: the Swift client imports it through a C
 * module, and the server uses its atomic helpers for its own side. Every shared index is a u32 that
 * counts forever (wrapping at 2^32); a slot is `index & (entries - 1)`. The memory-ordering rule of
 * each step is written as the C11 order it uses (GCC/Clang __atomic builtins take the same orders).
 *
 * A client, with `r` attached to a RING_OK's mapping and doorbell:
 *
 *     struct ioatd_desc *d = ioatd_ring_get_desc(&r);   // NULL: the submission ring is full
 *     *d = ...;                                           // a SUBMIT descriptor, bit for bit
 *     ioatd_ring_submit(&r);                              // publish; ring the doorbell if the server sleeps
 *     while (ioatd_ring_ready(&r) == 0) { if (ioatd_ring_arm(&r, 1)) poll(r.doorbell...); ioatd_ring_disarm(&r); }
 *     struct ioatd_completion_record *c = ioatd_ring_record(&r, 0);
 *     ioatd_ring_consume(&r, 1);                          // hand the slot (a credit) back
 */
#ifndef IOATD_RING_H
#define IOATD_RING_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#include "ioatd.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Shared-memory accesses, named by their C11 memory order. */
static inline uint32_t ioatd_load_acquire(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint32_t ioatd_load_relaxed(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void ioatd_store_release(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void ioatd_store_relaxed(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
/* atomic_thread_fence(memory_order_seq_cst): orders a store before a later load (the wake-up handshake). */
static inline void ioatd_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* virtio's event index test: whether moving an index from `old` to `now` passed `event`. */
static inline int ioatd_ring_crossed(uint32_t event, uint32_t now, uint32_t old) {
    return (uint32_t)(now - event - 1) < (uint32_t)(now - old);
}

/* The client's view of one ring queue. Threads: one thread at a time submits (ioatd_ring_get_desc,
 * ioatd_ring_submit) and it alone touches sq_tail_local and sq_tail_published; one thread at a time
 * reaps (ioatd_ring_ready, _record, _consume, _arm, _disarm) and it alone touches cq_head_local. The two
 * may be different threads: neither reads the other's fields (ioatd_ring_consume reads the shared
 * sq_tail, not sq_tail_published). */
struct ioatd_ring {
    uint8_t *base;
    size_t size;
    uint32_t *sq_head, *sq_tail, *sq_flags, *cq_head, *cq_tail, *cq_event, *cq_flags, *error;
    struct ioatd_desc *sqes;
    struct ioatd_completion_record *cqes;
    uint32_t queue, depth, sq_entries, cq_entries;
    /* Next slot to fill, and the tail the server has been shown. */
    uint32_t sq_tail_local, sq_tail_published;
    /* Next record to read. */
    uint32_t cq_head_local;
    /* The client's end of the doorbell socket. */
    int doorbell;
};

/* Checks the header a server wrote and points `r` at the fields it names. Returns 0, or -EINVAL when
 * the mapping is not a ring this header understands. */
static inline int ioatd_ring_attach(struct ioatd_ring *r, void *base, size_t size, int doorbell) {
    const struct ioatd_ring_header *h = (const struct ioatd_ring_header *)base;
    if (base == NULL || size < sizeof *h || h->magic != IOATD_RING_MAGIC || h->layout != IOATD_RING_LAYOUT ||
        h->header_size < sizeof *h || h->size != size)
        return -EINVAL;
    uint32_t sq = h->sq_entries, cq = h->cq_entries;
    if (sq == 0 || (sq & (sq - 1)) != 0 || cq == 0 || (cq & (cq - 1)) != 0 || h->depth == 0 || h->depth > cq)
        return -EINVAL;
    const struct ioatd_ring_offsets *o = &h->offsets;
    const uint32_t words[] = {o->sq_head, o->sq_tail, o->sq_flags, o->cq_head, o->cq_tail, o->cq_event, o->cq_flags, o->error};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (words[i] % 4 != 0 || (uint64_t)words[i] + 4 > size) return -EINVAL;
    if (o->sqes % 64 != 0 || (uint64_t)o->sqes + (uint64_t)sq * sizeof(struct ioatd_desc) > size) return -EINVAL;
    if (o->cqes % 32 != 0 || (uint64_t)o->cqes + (uint64_t)cq * sizeof(struct ioatd_completion_record) > size) return -EINVAL;
    uint8_t *b = (uint8_t *)base;
    r->base = b;
    r->size = size;
    r->sq_head = (uint32_t *)(b + o->sq_head);
    r->sq_tail = (uint32_t *)(b + o->sq_tail);
    r->sq_flags = (uint32_t *)(b + o->sq_flags);
    r->cq_head = (uint32_t *)(b + o->cq_head);
    r->cq_tail = (uint32_t *)(b + o->cq_tail);
    r->cq_event = (uint32_t *)(b + o->cq_event);
    r->cq_flags = (uint32_t *)(b + o->cq_flags);
    r->error = (uint32_t *)(b + o->error);
    r->sqes = (struct ioatd_desc *)(b + o->sqes);
    r->cqes = (struct ioatd_completion_record *)(b + o->cqes);
    r->queue = h->queue;
    r->depth = h->depth;
    r->sq_entries = sq;
    r->cq_entries = cq;
    r->sq_tail_local = r->sq_tail_published = ioatd_load_relaxed(r->sq_tail);
    r->cq_head_local = ioatd_load_relaxed(r->cq_head);
    r->doorbell = doorbell;
    return 0;
}

/* Free submission slots. sq_head is read with acquire: the server has copied the slots it passed. */
static inline uint32_t ioatd_ring_sq_space(const struct ioatd_ring *r) {
    return r->sq_entries - (r->sq_tail_local - ioatd_load_acquire(r->sq_head));
}

/* The next free submission slot, or NULL when the ring is full. The slot is the caller's until
 * ioatd_ring_submit publishes it. */
static inline struct ioatd_desc *ioatd_ring_get_desc(struct ioatd_ring *r) {
    if (ioatd_ring_sq_space(r) == 0) return NULL;
    return &r->sqes[r->sq_tail_local++ & (r->sq_entries - 1)];
}

/* Rings the doorbell: one byte on the doorbell socket, never blocking (a full socket already rings).
 * Returns 0 or -errno. In libioatd (a system call has no place in inline code). */
int ioatd_ring_kick(const struct ioatd_ring *r);

/* Publishes every slot taken since the last call: the descriptors' plain stores happen before the
 * release store of sq_tail, which the server reads with acquire. Then a seq_cst fence orders that
 * store before the load of sq_flags, the other half of the server's "set NEED_WAKEUP, fence, read
 * sq_tail": either the server sees the new tail or this sees NEED_WAKEUP and rings. Returns 0 or
 * -errno from the doorbell. */
static inline int ioatd_ring_submit(struct ioatd_ring *r) {
    if (r->sq_tail_local == r->sq_tail_published) return 0;
    ioatd_store_release(r->sq_tail, r->sq_tail_local);
    r->sq_tail_published = r->sq_tail_local;
    ioatd_fence();
    if (ioatd_load_relaxed(r->sq_flags) & IOATD_RING_SQ_NEED_WAKEUP) return ioatd_ring_kick(r);
    return 0;
}

/* Records ready to read: cq_tail is read with acquire, so the records before it are complete. */
static inline uint32_t ioatd_ring_ready(const struct ioatd_ring *r) {
    return ioatd_load_acquire(r->cq_tail) - r->cq_head_local;
}

/* The i-th ready record (i < ioatd_ring_ready). */
static inline const struct ioatd_completion_record *ioatd_ring_record(const struct ioatd_ring *r, uint32_t i) {
    return &r->cqes[(r->cq_head_local + i) & (r->cq_entries - 1)];
}

/* Hands `n` read records back (each is a credit). The release store of cq_head orders the reads of
 * those records before the server may overwrite them. If the server sleeps with descriptors it could
 * not take for want of credits, it is woken (same fence rule as ioatd_ring_submit). */
static inline int ioatd_ring_consume(struct ioatd_ring *r, uint32_t n) {
    r->cq_head_local += n;
    ioatd_store_release(r->cq_head, r->cq_head_local);
    ioatd_fence();
    if ((ioatd_load_relaxed(r->sq_flags) & IOATD_RING_SQ_NEED_WAKEUP)
        && ioatd_load_acquire(r->sq_head) != ioatd_load_relaxed(r->sq_tail))
        return ioatd_ring_kick(r);
    return 0;
}

/* Before sleeping on the doorbell until `want` records are ready: asks the server to ring once the
 * record at cq_head + want - 1 is written (cq_event, then NEED_WAKEUP in cq_flags), then, after a
 * seq_cst fence, looks again. Returns 1 when the caller may sleep, 0 when the records are already
 * there (call ioatd_ring_disarm either way once awake). */
static inline int ioatd_ring_arm(struct ioatd_ring *r, uint32_t want) {
    ioatd_store_relaxed(r->cq_event, r->cq_head_local + (want ? want : 1) - 1);
    ioatd_store_relaxed(r->cq_flags, IOATD_RING_CQ_NEED_WAKEUP);
    ioatd_fence();
    return ioatd_ring_ready(r) < (want ? want : 1) && ioatd_load_relaxed(r->error) == 0;
}

/* After waking: the server need not ring any more; empties the doorbell socket. In libioatd. */
void ioatd_ring_disarm(struct ioatd_ring *r);

/* 0 while the queue works; else the error code (§7) with which the server broke it. */
static inline uint32_t ioatd_ring_error(const struct ioatd_ring *r) { return ioatd_load_acquire(r->error); }

#ifdef __cplusplus
}
#endif

#endif /* IOATD_RING_H */
