/*
 * ring_threads.c - protocol/ioatd_ring.h's thread contract, checked under ThreadSanitizer: one thread
 * submits, another reaps, a third plays the server, all on one ring (made here, in the layout a server
 * writes), and every record comes back in order. The reaping thread's ioatd_ring_consume must not read
 * what only the submitting thread writes (it once read sq_tail_published: a data race TSan reports).
 * The server sets NEED_WAKEUP on the submission side now and then, so consume takes its wake-up path.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ioatd_ring.h"

enum { ENTRIES = 64, OPS = 200000 };

struct shared {
    struct ioatd_ring ring;
    uint8_t *memory;
    int server_end;
    int failures;
    uint32_t stop;
};

/* The server: takes descriptors in order, writes a record naming each, publishes; every 64th look it
 * sleeps on NEED_WAKEUP briefly as a real server does before it waits. */
static void *server(void *arg) {
    struct shared *s = arg;
    struct ioatd_ring *r = &s->ring;
    uint32_t head = 0, tail = 0, looks = 0;
    while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
        if ((++looks & 63) == 0) {
            ioatd_store_relaxed(r->sq_flags, IOATD_RING_SQ_NEED_WAKEUP);
            ioatd_fence();
        }
        uint32_t published = ioatd_load_acquire(r->sq_tail);
        while (head != published && tail - ioatd_load_acquire(r->cq_head) < r->cq_entries) {
            const struct ioatd_desc *d = &r->sqes[head & (r->sq_entries - 1)];
            struct ioatd_completion_record *c = &r->cqes[tail & (r->cq_entries - 1)];
            memset(c, 0, sizeof *c);
            c->cookie = d->cookie;
            head++, tail++;
        }
        ioatd_store_release(r->sq_head, head);
        ioatd_store_release(r->cq_tail, tail);
        ioatd_store_relaxed(r->sq_flags, 0);
        char bytes[64];
        while (recv(s->server_end, bytes, sizeof bytes, MSG_DONTWAIT) > 0) {}
        if (head == published) sched_yield();
    }
    return NULL;
}

static void *submitter(void *arg) {
    struct shared *s = arg;
    for (uint64_t i = 0; i < OPS;) {
        struct ioatd_desc *d = ioatd_ring_get_desc(&s->ring);
        if (d == NULL) {
            ioatd_ring_submit(&s->ring);
            sched_yield();
            continue;
        }
        memset(d, 0, sizeof *d);
        d->opcode = IOATD_OP_NULL;
        d->cookie = i++;
        if ((i & 7) == 0) ioatd_ring_submit(&s->ring);
    }
    ioatd_ring_submit(&s->ring);
    return NULL;
}

static void *reaper(void *arg) {
    struct shared *s = arg;
    uint64_t next = 0;
    while (next < OPS) {
        uint32_t n = ioatd_ring_ready(&s->ring);
        if (n == 0) {
            sched_yield();
            continue;
        }
        for (uint32_t i = 0; i < n; i++) {
            uint64_t cookie = ioatd_ring_record(&s->ring, i)->cookie;
            if (cookie != next) {
                fprintf(stderr, "record %llu names op %llu\n", (unsigned long long)next, (unsigned long long)cookie);
                s->failures++;
                return NULL;
            }
            next++;
        }
        ioatd_ring_consume(&s->ring, n);
    }
    return NULL;
}

int main(void) {
    struct shared s = {0};
    size_t size = 4096 * 4; /* the header page, then the rings (64 × 64 + 64 × 32 bytes) */
    s.memory = aligned_alloc(4096, size);
    memset(s.memory, 0, size);
    struct ioatd_ring_header *h = (struct ioatd_ring_header *)s.memory;
    h->magic = IOATD_RING_MAGIC;
    h->layout = IOATD_RING_LAYOUT;
    h->header_size = sizeof *h;
    h->queue = 1;
    h->depth = ENTRIES;
    h->sq_entries = ENTRIES;
    h->cq_entries = ENTRIES;
    h->size = size;
    /* Each index on a cache line of its own, as the server lays them out. */
    h->offsets.sq_head = 256, h->offsets.sq_tail = 320, h->offsets.sq_flags = 384, h->offsets.cq_head = 448;
    h->offsets.cq_tail = 512, h->offsets.cq_event = 576, h->offsets.cq_flags = 640, h->offsets.error = 704;
    h->offsets.sqes = 4096;
    h->offsets.cqes = 4096 + ENTRIES * 64;
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0, pair) != 0) { perror("socketpair"); return 1; }
    s.server_end = pair[1];
    if (ioatd_ring_attach(&s.ring, s.memory, size, pair[0]) != 0) { fprintf(stderr, "attach refused the ring\n"); return 1; }
    pthread_t a, b, c;
    pthread_create(&a, NULL, server, &s);
    pthread_create(&b, NULL, submitter, &s);
    pthread_create(&c, NULL, reaper, &s);
    pthread_join(b, NULL);
    pthread_join(c, NULL);
    __atomic_store_n(&s.stop, 1, __ATOMIC_RELEASE);
    pthread_join(a, NULL);
    printf("ring threads: %d ops submitted by one thread and reaped by another, %d failing\n", OPS, s.failures);
    free(s.memory);
    return s.failures == 0 ? 0 : 1;
}
