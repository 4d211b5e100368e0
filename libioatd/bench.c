/*
 * ioatd-cbench: libioatd's own speed, for comparison with the raw figures of `ioatctl bench` in the
 * same run (make bench-c does both): QD1 round trips of NULL and of a 64-byte COPY (each waited
 * for before the next), and 64-byte copies in batches with several batches in flight, over one
 * transport. Prints one JSON object. Nothing here asserts a time.
 *
 *     ioatd-cbench SOCKET ring|socket [QD1_OPS [SECONDS [BATCH]]]
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ioatd/client.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void fail(struct ioatd_client *c, const char *what, int rc) {
    fprintf(stderr, "ioatd-cbench: %s: %s\n", what, ioatd_strerror(c, rc));
    exit(1);
}

/* `ops` round trips after at least a tenth as many and 50 ms to warm up, as `ioatctl bench` does (the
 * first milliseconds of a new thread can share a CPU with the server's event loop); p50 and p99 in µs
 * into out[0], out[1]. */
static void qd1(struct ioatd_client *c, struct ioatd_queue *q, void *dst, void *src, int copy, int ops, double *out) {
    double *samples = malloc(sizeof(double) * (size_t)ops);
    double warm_until = now() + 0.05;
    int warmed = 0, kept = 0;
    while (kept < ops) {
        double start = now();
        struct ioatd_desc *d = ioatd_get_desc(q);
        if (copy) ioatd_prep_copy(q, d, dst, src, 64, IOATD_F_INT_EN);
        else ioatd_prep_null(q, d, IOATD_F_INT_EN);
        int rc = ioatd_submit(q);
        if (rc != 1) fail(c, "submit", rc);
        struct ioatd_completion_record *r;
        if ((rc = ioatd_wait_completion(q, &r, 10000)) != 0) fail(c, "wait", rc);
        if (r->status != IOATD_ST_SUCCESS) fail(c, "QD1 op", IOATD_ERR(IOATD_E_INTERNAL));
        ioatd_completion_seen(q, r);
        if (warmed >= ops / 10 && start >= warm_until) samples[kept++] = (now() - start) * 1e6;
        else warmed++;
    }
    qsort(samples, (size_t)ops, sizeof *samples, compare);
    out[0] = samples[ops / 2];
    out[1] = samples[(int)(ops * 0.99)];
    free(samples);
}

/* 64-byte copies, `batch` per submit, `in_flight` batches outstanding, for `seconds`: ops/s. */
static double small_ops(struct ioatd_client *c, struct ioatd_queue *q, uint8_t *dst, uint8_t *src, int batch, int in_flight,
                        double seconds) {
    long ops = 0, outstanding = 0;
    double start = now();
    for (;;) {
        int running = now() - start < seconds;
        while (running && outstanding + batch <= (long)batch * in_flight) {
            for (int i = 0; i < batch; i++) ioatd_prep_copy(q, ioatd_get_desc(q), dst + i * 128, src + i * 128, 64, 0);
            int rc = ioatd_submit(q);
            if (rc != batch) fail(c, "submit", rc);
            outstanding += batch;
        }
        if (outstanding == 0) break;
        struct ioatd_completion_record *recs[256];
        int n = ioatd_peek_batch(q, recs, 256);
        if (n == 0) {
            int rc = ioatd_wait_completion(q, recs, 10000);
            if (rc != 0) fail(c, "wait", rc);
            n = ioatd_peek_batch(q, recs, 256);
        }
        if (n < 0) fail(c, "peek", n);
        for (int i = 0; i < n; i++)
            if (recs[i]->status != IOATD_ST_SUCCESS) fail(c, ioatd_status_name(recs[i]->status), IOATD_ERR(IOATD_E_INTERNAL));
        ioatd_cq_advance(q, (unsigned)n);
        ops += n;
        outstanding -= n;
    }
    return (double)ops / (now() - start);
}

int main(int argc, char **argv) {
    if (argc < 3 || (strcmp(argv[2], "ring") != 0 && strcmp(argv[2], "socket") != 0)) {
        fprintf(stderr, "usage: ioatd-cbench SOCKET ring|socket [QD1_OPS [SECONDS [BATCH]]]\n");
        return 2;
    }
    int ring = strcmp(argv[2], "ring") == 0;
    int ops = argc > 3 ? atoi(argv[3]) : 2000;
    double seconds = argc > 4 ? atof(argv[4]) : 0.6;
    int batch = argc > 5 ? atoi(argv[5]) : 32;
    if (ops < 10 || seconds <= 0 || batch < 1 || batch > 64) {
        fprintf(stderr, "ioatd-cbench: QD1_OPS >= 10, SECONDS > 0, 1 <= BATCH <= 64\n");
        return 2;
    }
    struct ioatd_client *c;
    int rc = ioatd_connect(argv[1], ring ? 0 : IOATD_CONNECT_NO_RINGS, &c);
    if (rc < 0) fail(NULL, "connect", rc);
    if (ring && !ioatd_rings_granted(c)) fail(c, "the server did not grant rings", IOATD_ERR(IOATD_E_PERMISSION_DENIED));
    uint8_t *src, *dst;
    struct ioatd_queue *q1, *qn;
    if ((rc = ioatd_buffer_alloc(c, 1 << 20, 0, (void **)&src)) < 0 || (rc = ioatd_buffer_alloc(c, 1 << 20, 0, (void **)&dst)) < 0)
        fail(c, "alloc", rc);
    if ((rc = ioatd_queue_open(c, IOATD_ANY_CHANNEL, 8, &q1)) < 0) fail(c, "open", rc);
    if ((rc = ioatd_queue_open(c, ioatd_queue_channel(q1), (uint32_t)batch * 4, &qn)) < 0) fail(c, "open", rc);
    /* The raw figures of ioatctl bench spin 1000 µs before they sleep; the same here. */
    ioatd_queue_set_spin(q1, 1000);
    ioatd_queue_set_spin(qn, 1000);
    memset(src, 7, 1 << 20);
    double null_us[2], copy_us[2];
    qd1(c, q1, NULL, NULL, 0, ops, null_us);
    qd1(c, q1, dst + 4096, src, 1, ops, copy_us);
    double rate = small_ops(c, qn, dst, src, batch, 4, seconds);
    printf("{\"transport\": \"%s\", \"qd1\": {\"ops\": %d, \"null_us\": {\"p50\": %.3f, \"p99\": %.3f}, "
           "\"copy64_us\": {\"p50\": %.3f, \"p99\": %.3f}}, \"small\": {\"batch\": %d, \"in_flight\": 4, \"ops_per_s\": %.0f}}\n",
           argv[2], ops, null_us[0], null_us[1], copy_us[0], copy_us[1], batch, rate);
    ioatd_close(c);
    return 0;
}
