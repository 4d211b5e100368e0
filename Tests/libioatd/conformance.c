/*
 * libioatd against a real ioatd: every opcode of protocol version 2 through the C library, bytes
 * checked (destination, unchanged source, guard bytes either side), and every kind of refusal
 * reaching the caller as its code. Run by Tests/libioatd/run.sh, once per transport, plain and
 * under AddressSanitizer + UndefinedBehaviorSanitizer.
 *
 *     conformance SOCKET ring|socket
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <ioatd/client.h>

static int failures, checks;
#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        checks++;                                                               \
        if (!(cond)) {                                                          \
            failures++;                                                         \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);     \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
        }                                                                       \
    } while (0)

#define SIZE (1u << 20)
#define GUARD 0xA5

static struct ioatd_client *c;
static struct ioatd_queue *q;

/* Takes a slot, or fails the run: the queue is never full here. */
static struct ioatd_desc *slot(void) {
    struct ioatd_desc *d = ioatd_get_desc(q);
    if (!d) {
        fprintf(stderr, "FAIL: no free slot (in use %u of %u)\n", ioatd_queue_in_use(q), ioatd_queue_depth(q));
        exit(1);
    }
    return d;
}

/* Submits what was prepared and reads `n` records into out[] (in order). */
static void run(struct ioatd_completion_record *out, int n) {
    int rc = ioatd_submit(q);
    CHECK(rc == n, "submit returned %d (%s), expected %d", rc, ioatd_strerror(c, rc), n);
    for (int i = 0; i < n; i++) {
        struct ioatd_completion_record *r;
        rc = ioatd_wait_completion(q, &r, 10000);
        if (rc != 0) {
            fprintf(stderr, "FAIL: record %d of %d: %s\n", i, n, ioatd_strerror(c, rc));
            exit(1);
        }
        out[i] = *r;
        ioatd_completion_seen(q, r);
    }
    CHECK(ioatd_queue_in_use(q) == 0, "%u still in use", ioatd_queue_in_use(q));
}

static void one(struct ioatd_completion_record *out) { run(out, 1); }

static void fill_random(uint8_t *p, size_t n, uint32_t seed) {
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (uint8_t)(seed >> 16);
    }
}

static int all(const uint8_t *p, size_t n, uint8_t v) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return 0;
    return 1;
}

static uint32_t crc32c(const uint8_t *p, size_t n, uint32_t crc) {
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
    }
    return ~crc;
}

int main(int argc, char **argv) {
    if (argc != 3 || (strcmp(argv[2], "ring") != 0 && strcmp(argv[2], "socket") != 0)) {
        fprintf(stderr, "usage: conformance SOCKET ring|socket\n");
        return 2;
    }
    int want_ring = strcmp(argv[2], "ring") == 0;
    CHECK(ioatd_lib_version() == IOATD_LIB_VERSION, "run-time version %#x, header %#x", ioatd_lib_version(), IOATD_LIB_VERSION);
    int rc = ioatd_connect(argv[1], want_ring ? 0 : IOATD_CONNECT_NO_RINGS, &c);
    if (rc != 0) {
        fprintf(stderr, "FAIL: connect %s: %s\n", argv[1], ioatd_strerror(NULL, rc));
        return 1;
    }
    CHECK(ioatd_protocol_version(c) == 3, "version %d", ioatd_protocol_version(c));
    CHECK(ioatd_channel_count(c) >= 1, "%d channels", ioatd_channel_count(c));
    struct ioatd_channel ch;
    CHECK(ioatd_channel_info(c, 0, &ch) == 0 && ch.max_transfer > 0 && ch.max_depth > 0, "channel 0");
    CHECK(ioatd_channel_info(c, (unsigned)ioatd_channel_count(c), &ch) == -EINVAL, "channel past the end");

    uint8_t *a, *b, *x;
    CHECK(ioatd_buffer_alloc(c, SIZE, 0, (void **)&a) == 0, "alloc a");
    CHECK(ioatd_buffer_alloc(c, SIZE, IOATD_ALLOC_NO_HUGEPAGE, (void **)&b) == 0, "alloc b");
    CHECK(ioatd_buffer_alloc(c, SIZE, 0, (void **)&x) == 0, "alloc x");
    struct ioatd_buffer_info info;
    CHECK(ioatd_buffer_info(c, b + 100, &info) == 0 && info.addr == b && info.size >= SIZE && info.handle != 0, "info");
    rc = ioatd_queue_open(c, IOATD_ANY_CHANNEL, 32, &q);
    if (rc != 0) {
        fprintf(stderr, "FAIL: open: %s\n", ioatd_strerror(c, rc));
        return 1;
    }
    CHECK(ioatd_queue_is_ring(q) == want_ring, "is_ring %d, wanted %d", ioatd_queue_is_ring(q), want_ring);
    struct ioatd_completion_record r[8];

    /* COPY: destination equals source, source unchanged, guard bytes untouched. */
    fill_random(a, SIZE, 1);
    memset(b, GUARD, SIZE);
    uint8_t *before = malloc(SIZE);
    memcpy(before, a, SIZE);
    CHECK(ioatd_prep_copy(q, slot(), b + 8, a + 1, 65536, 0) == 0, "prep copy");
    one(r);
    CHECK(r[0].status == IOATD_ST_SUCCESS && r[0].bytes_done == 65536 && r[0].opcode == IOATD_OP_COPY, "copy %s",
          ioatd_status_name(r[0].status));
    CHECK(memcmp(b + 8, a + 1, 65536) == 0, "copied bytes");
    CHECK(all(b, 8, GUARD) && all(b + 8 + 65536, 64, GUARD), "guard bytes around the copy");
    CHECK(memcmp(a, before, SIZE) == 0, "source unchanged");

    /* FILL: the pattern's little-endian bytes, phase from the start of the range. */
    memset(b, GUARD, SIZE);
    CHECK(ioatd_prep_fill(q, slot(), b + 3, 0x0807060504030201ull, 1001, 0) == 0, "prep fill");
    one(r);
    int fill_ok = r[0].status == IOATD_ST_SUCCESS;
    for (int i = 0; i < 1001; i++) fill_ok &= b[3 + i] == (uint8_t)(1 + i % 8);
    CHECK(fill_ok, "fill bytes");
    CHECK(all(b, 3, GUARD) && all(b + 1004, 64, GUARD), "guard bytes around the fill");

    /* CRC32C: the RFC 3720 vector, a seed chaining by value, STORE to a location, TEST. */
    memcpy(x, "123456789", 9);
    CHECK(ioatd_prep_crc32c(q, slot(), x, 9, 0, NULL, 0) == 0, "prep crc");
    one(r);
    CHECK(r[0].status == IOATD_ST_SUCCESS && r[0].result == 0xE3069283u, "crc32c(123456789) = %#x", r[0].result);
    uint32_t first = crc32c(a, 4096, 0);
    CHECK(ioatd_prep_crc32c(q, slot(), a + 4096, 4096, first, NULL, IOATD_F_CRC_SEED) == 0, "prep seeded crc");
    one(r);
    CHECK(r[0].result == crc32c(a, 8192, 0), "seeded crc %#x, expected %#x", r[0].result, crc32c(a, 8192, 0));
    uint32_t *where = (uint32_t *)(x + 64);
    *where = 0;
    memset(b, GUARD, SIZE);
    CHECK(ioatd_prep_copy_crc32c(q, slot(), b + 16, a, 5000, 0, where, IOATD_F_CRC_STORE) == 0, "prep copy_crc store");
    one(r);
    CHECK(r[0].status == IOATD_ST_SUCCESS && r[0].result == crc32c(a, 5000, 0) && *where == r[0].result,
          "copy_crc32c result %#x stored %#x", r[0].result, *where);
    CHECK(memcmp(b + 16, a, 5000) == 0 && all(b, 16, GUARD) && all(b + 5016, 64, GUARD), "copy_crc32c bytes");
    *where ^= 1;
    CHECK(ioatd_prep_crc32c(q, slot(), a, 5000, 0, where, IOATD_F_CRC_TEST) == 0, "prep crc test");
    one(r);
    CHECK(r[0].status == IOATD_ST_MISMATCH, "CRC TEST of a wrong value: %s", ioatd_status_name(r[0].status));

    /* COMPARE and COMPARE_PATTERN: equal, then the offset of the first difference. */
    memcpy(b, a, 8192);
    b[777] ^= 0xFF;
    CHECK(ioatd_prep_compare(q, slot(), a, b, 512, 0) == 0, "prep compare");
    CHECK(ioatd_prep_compare(q, slot(), a, b, 8192, 0) == 0, "prep compare");
    run(r, 2);
    CHECK(r[0].status == IOATD_ST_SUCCESS && r[1].status == IOATD_ST_MISMATCH && r[1].bytes_done == 777,
          "compare: %s, %s at %llu", ioatd_status_name(r[0].status), ioatd_status_name(r[1].status),
          (unsigned long long)r[1].bytes_done);
    memset(x, 0x3C, 4096);
    x[100] = 0;
    CHECK(ioatd_prep_compare_pattern(q, slot(), x, 0x3C3C3C3C3C3C3C3Cull, 100, 0) == 0, "prep pattern");
    CHECK(ioatd_prep_compare_pattern(q, slot(), x, 0x3C3C3C3C3C3C3C3Cull, 4096, 0) == 0, "prep pattern");
    run(r, 2);
    CHECK(r[0].status == IOATD_ST_SUCCESS && r[1].status == IOATD_ST_MISMATCH && r[1].bytes_done == 100, "compare_pattern");

    /* DUALCAST: both destinations. */
    memset(b, GUARD, SIZE);
    CHECK(ioatd_prep_dualcast(q, slot(), b + 8, b + 65536, a, 4000, 0) == 0, "prep dualcast");
    one(r);
    CHECK(memcmp(b + 8, a, 4000) == 0 && memcmp(b + 65536, a, 4000) == 0, "dualcast bytes");
    CHECK(all(b, 8, GUARD) && all(b + 4008, 64, GUARD) && all(b + 65536 + 4000, 64, GUARD), "dualcast guards");

    /* XOR of three sources; the library writes the source list into a buffer. */
    const void *srcs[3] = {a, a + 8192, a + 16384};
    memset(b, GUARD, SIZE);
    struct ioatd_xor_source *list = (struct ioatd_xor_source *)(x + 8192);
    CHECK(ioatd_prep_xor(q, slot(), b + 8, srcs, 3, 4096, list, 0) == 0, "prep xor");
    one(r);
    int xor_ok = r[0].status == IOATD_ST_SUCCESS;
    for (int i = 0; i < 4096; i++) xor_ok &= b[8 + i] == (uint8_t)(a[i] ^ a[8192 + i] ^ a[16384 + i]);
    CHECK(xor_ok && all(b, 8, GUARD) && all(b + 4104, 64, GUARD), "xor bytes");

    /* COPY_SG: two ranges. */
    memset(b, GUARD, SIZE);
    void *dsts[2] = {b + 100, b + 9000};
    const void *sg_srcs[2] = {a + 50, a + 70000};
    const uint64_t lengths[2] = {300, 5000};
    struct ioatd_sg_entry *sg = (struct ioatd_sg_entry *)(x + 16384);
    CHECK(ioatd_prep_copy_sg(q, slot(), dsts, sg_srcs, lengths, 2, sg, 0) == 0, "prep copy_sg");
    one(r);
    CHECK(r[0].status == IOATD_ST_SUCCESS && r[0].bytes_done == 5300, "copy_sg %s", ioatd_status_name(r[0].status));
    CHECK(memcmp(b + 100, a + 50, 300) == 0 && memcmp(b + 9000, a + 70000, 5000) == 0, "copy_sg bytes");
    CHECK(all(b + 400, 8600, GUARD) && all(b, 100, GUARD) && all(b + 14000, 64, GUARD), "copy_sg guards");

    /* NULL, DRAIN, FENCE and cookies, INT_EN: a batch whose records come in order. */
    memset(b, GUARD, SIZE);
    struct ioatd_desc *d = slot();
    ioatd_prep_copy(q, d, b, a, 4096, 0);
    ioatd_desc_set_cookie(d, 11);
    d = slot();
    ioatd_prep_copy(q, d, b + 8192, b, 4096, IOATD_F_FENCE); /* reads what the first wrote */
    ioatd_desc_set_cookie(d, 12);
    d = slot();
    ioatd_prep_null(q, d, 0);
    ioatd_desc_set_cookie(d, 13);
    d = slot();
    ioatd_prep_drain(q, d, IOATD_F_INT_EN);
    ioatd_desc_set_cookie(d, 14);
    run(r, 4);
    CHECK(r[0].cookie == 11 && r[1].cookie == 12 && r[2].cookie == 13 && r[3].cookie == 14, "cookies in order");
    CHECK(r[2].opcode == IOATD_OP_NULL && r[3].opcode == IOATD_OP_DRAIN && r[3].status == IOATD_ST_SUCCESS, "null, drain");
    CHECK(memcmp(b + 8192, a, 4096) == 0, "fenced copy saw the first copy's bytes");

    /* Local refusal: a pointer outside every buffer is -EINVAL, nothing sent; the slot goes back. */
    uint8_t stack[64];
    d = slot();
    CHECK(ioatd_prep_copy(q, d, b, stack, sizeof stack, 0) == -EINVAL, "stack pointer refused");
    CHECK(ioatd_prep_copy(q, d, b + SIZE - 10, a, 64, 0) == -EINVAL, "range past the buffer's end refused");
    CHECK(ioatd_unget_desc(q, d) == 0 && ioatd_queue_in_use(q) == 0, "slot given back");
    CHECK(ioatd_submit(q) == 0, "nothing to submit");

    /* Server refusals of descriptors: the code in the record's status, the text through strerror. */
    d = slot();
    ioatd_prep_copy(q, d, b, a, 64, 0);
    d->src_handle = 0x7777777;
    ioatd_desc_set_cookie(d, 21);
    one(r);
    CHECK(r[0].status == IOATD_STATUS_REFUSED + IOATD_E_BAD_HANDLE && r[0].cookie == 21, "bad handle: status %s",
          ioatd_status_name(r[0].status));
    const char *text = ioatd_strerror(c, IOATD_ERR(IOATD_E_BAD_HANDLE));
    CHECK(strstr(text, "BAD_HANDLE") != NULL, "strerror: %s", text);
    d = slot();
    ioatd_prep_copy(q, d, b, a, 64, 0);
    d->flags = IOATD_F_CRC_SEED;
    one(r);
    CHECK(r[0].status == IOATD_STATUS_REFUSED + IOATD_E_BAD_FLAGS, "CRC_SEED on COPY: %s", ioatd_status_name(r[0].status));
    d = slot();
    ioatd_prep_null(q, d, 0);
    d->opcode = 0x42;
    one(r);
    CHECK(r[0].status == IOATD_STATUS_REFUSED + IOATD_E_UNKNOWN_OPCODE, "opcode 0x42: %s", ioatd_status_name(r[0].status));

    /* A read-only registered memfd: a source, never a destination. */
    int memfd = memfd_create("conformance", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    CHECK(memfd >= 0 && ftruncate(memfd, 65536) == 0, "memfd");
    uint8_t *ro = NULL;
    CHECK(ioatd_buffer_register(c, memfd, (void **)&ro) == IOATD_ERR(IOATD_E_NOT_SEALED), "unsealed memfd refused");
    CHECK(strstr(ioatd_strerror(c, IOATD_ERR(IOATD_E_NOT_SEALED)), "NOT_SEALED") != NULL, "NOT_SEALED named");
    CHECK(fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE) == 0, "seal");
    rc = ioatd_buffer_register(c, memfd, (void **)&ro);
    CHECK(rc == 0, "register: %s", ioatd_strerror(c, rc));
    if (rc == 0) {
        CHECK(ioatd_buffer_info(c, ro, &info) == 0 && (info.flags & IOATD_BUF_READ_ONLY), "registered read-only");
        /* (Separate submits: over the socket a refusal refuses its whole SUBMIT.) */
        CHECK(ioatd_prep_copy(q, slot(), b, ro, 4096, 0) == 0, "prep from read-only");
        one(r);
        CHECK(r[0].status == IOATD_ST_SUCCESS && all(b, 4096, 0), "copy from the read-only buffer");
        CHECK(ioatd_prep_copy(q, slot(), ro, a, 4096, 0) == 0, "prep to read-only");
        one(r);
        CHECK(r[0].status == IOATD_STATUS_REFUSED + IOATD_E_READ_ONLY, "copy into it: %s", ioatd_status_name(r[0].status));
        CHECK(ioatd_buffer_free(c, ro) == 0, "free registered");
    }
    int pipefd[2];
    CHECK(pipe(pipefd) == 0, "pipe");
    CHECK(ioatd_buffer_register(c, pipefd[0], (void **)&ro) == IOATD_ERR(IOATD_E_NOT_MEMFD), "a pipe is NOT_MEMFD");
    close(pipefd[0]);
    close(pipefd[1]);
    close(memfd);

    /* Control refusals. */
    void *nothing;
    CHECK(ioatd_buffer_alloc(c, 4096, IOATD_ALLOC_HUGEPAGE_REQUIRED | IOATD_ALLOC_NO_HUGEPAGE, &nothing) ==
              IOATD_ERR(IOATD_E_BAD_FLAGS), "alloc flags");
    CHECK(ioatd_buffer_alloc(c, 0, 0, &nothing) == IOATD_ERR(IOATD_E_BAD_LENGTH), "alloc 0");
    struct ioatd_queue *q2;
    CHECK(ioatd_queue_open(c, IOATD_ANY_CHANNEL, 0, &q2) == IOATD_ERR(IOATD_E_BAD_DEPTH), "depth 0");
    CHECK(ioatd_queue_open(c, 999999, 8, &q2) == IOATD_ERR(IOATD_E_BAD_CHANNEL), "channel 999999");
    CHECK(strstr(ioatd_strerror(c, IOATD_ERR(IOATD_E_BAD_CHANNEL)), "999999") != NULL, "message names the channel: %s",
          ioatd_strerror(c, IOATD_ERR(IOATD_E_BAD_CHANNEL)));
    CHECK(ioatd_queue_set_coalesce(q, 0xFFFFFFFFu) == IOATD_ERR(IOATD_E_BAD_PERIOD), "period");
    CHECK(ioatd_buffer_free(c, a + 1) == -EINVAL, "free of an address that is no buffer's start");
    d = slot();
    ioatd_prep_null(q, d, 0);
    CHECK(ioatd_submit(q) == 1, "submit");
    CHECK(ioatd_queue_close(q) == IOATD_ERR(IOATD_E_BUSY), "close with an op outstanding");
    struct ioatd_completion_record *last;
    CHECK(ioatd_wait_completion(q, &last, 10000) == 0, "wait");
    ioatd_completion_seen(q, last);

    /* A full queue gives no slot; one seen record gives one back. */
    uint32_t depth = ioatd_queue_depth(q);
    for (uint32_t i = 0; i < depth; i++) ioatd_prep_null(q, slot(), 0);
    CHECK(ioatd_get_desc(q) == NULL, "no slot past the depth");
    CHECK(ioatd_submit(q) == (int)depth, "submit %u", depth);
    for (uint32_t i = 0; i < depth; i++) {
        CHECK(ioatd_wait_completion(q, &last, 10000) == 0, "record %u", i);
        ioatd_completion_seen(q, last);
    }
    CHECK(ioatd_get_desc(q) != NULL && ioatd_unget_desc(q, NULL) == -EINVAL, "slot after the records were seen");

    char *json = NULL;
    CHECK(ioatd_status(c, &json) == 0 && json && strstr(json, "\"protocol_version\""), "STATUS");
    free(json);
    free(before);
    CHECK(ioatd_queue_in_use(q) == 1, "one slot taken");
    ioatd_close(c); /* with a slot taken and buffers open: everything goes */
    printf("conformance (%s): %d checks, %d failed\n", argv[2], checks, failures);
    return failures ? 1 : 0;
}
