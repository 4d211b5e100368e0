/*
 * <ioatd/ioat.h> against a real ioatd: every ioat(4) call, bytes checked, and each callback run once,
 * in order, with the error the manual's caller would expect. Run by Tests/libioatd/run.sh (plain and
 * under the sanitizers) with IOATD_SOCKET set.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ioatd/ioat.h>

static int failures, checks;
#define CHECK(cond, ...)                                                    \
    do {                                                                    \
        checks++;                                                           \
        if (!(cond)) {                                                      \
            failures++;                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                   \
            fputc('\n', stderr);                                            \
        }                                                                   \
    } while (0)

/* Each callback appends (tag, error) here. */
struct seen {
    int tag, error;
};
static struct seen seen[512];
static int nseen;
static void callback(void *arg, int error) {
    if (nseen < 512) seen[nseen++] = (struct seen){(int)(intptr_t)arg, error};
}

#define A(p) ((bus_addr_t)(uintptr_t)(p))
#define TAG(n) ((void *)(intptr_t)(n))

static uint32_t crc32c(const uint8_t *p, size_t n, uint32_t crc) {
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
    }
    return ~crc;
}

/* Drives callbacks until `n` have run (or the engine says it cannot). */
static void drain(bus_dmaengine_t e, int n) {
    while (nseen < n) {
        int rc = ioat_poll(e, 5000);
        if (rc < 0) {
            fprintf(stderr, "FAIL: ioat_poll: %d\n", rc);
            exit(1);
        }
        if (rc == 0 && nseen < n) {
            fprintf(stderr, "FAIL: %d of %d callbacks after 5 s\n", nseen, n);
            exit(1);
        }
    }
}

int main(void) {
    bus_dmaengine_t e = ioat_get_dmaengine(0);
    if (!e) {
        fprintf(stderr, "FAIL: ioat_get_dmaengine(0) (IOATD_SOCKET=%s)\n", getenv("IOATD_SOCKET"));
        return 1;
    }
    CHECK(ioat_get_dmaengine(0) == e, "the same channel gives the same engine");
    ioat_put_dmaengine(e); /* the second reference */
    CHECK(ioat_get_dmaengine(4096) == NULL, "no channel 4096");
    struct ioatd_channel ch;
    CHECK(ioatd_channel_info(ioat_client(), 0, &ch) == 0, "channel info");
    CHECK(ioat_get_hwversion(e) == ch.hw_version && ioat_get_max_io_size(e) == ch.max_transfer, "hwversion, max io size");
    uint16_t max = ioat_get_max_coalesce_period(e);
    CHECK(max == (ch.max_coalesce_us > 0xFFFF ? 0xFFFF : ch.max_coalesce_us), "max coalesce %u", max);
    CHECK(ioat_set_interrupt_coalesce(e, 10) == 0, "coalesce 10 us");
    CHECK(max == 0xFFFF || ioat_set_interrupt_coalesce(e, (uint16_t)(max + 1)) == ERANGE, "coalesce above max: ERANGE");
    CHECK(ioat_set_interrupt_coalesce(e, 0) == 0, "coalesce off");

    uint8_t *src, *dst, *aux;
    struct ioatd_client *c = ioat_client();
    CHECK(ioatd_buffer_alloc(c, 1 << 20, 0, (void **)&src) == 0 && ioatd_buffer_alloc(c, 1 << 20, 0, (void **)&dst) == 0 &&
              ioatd_buffer_alloc(c, 4096, 0, (void **)&aux) == 0, "buffers");
    for (int i = 0; i < 1 << 20; i++) src[i] = (uint8_t)(i * 13 + 5);
    memset(dst, 0xA5, 1 << 20);

    /* One acquire/release: fill, copy, 8k-aligned copy, copy_crc (seeded, STORE), crc (TEST, wrong), null. */
    ioat_acquire(e);
    CHECK(ioat_blockfill(e, A(dst + 8), 0x1122334455667788ull, 1000, callback, TAG(1), 0) != NULL, "blockfill");
    CHECK(ioat_copy(e, A(dst + 4096), A(src + 3), 5000, callback, TAG(2), 0) != NULL, "copy");
    CHECK(ioat_copy_8k_aligned(e, A(dst + 65536), A(dst + 131072), A(src + 8192), A(src + 40960), callback, TAG(3), 0) != NULL,
          "copy_8k_aligned");
    uint32_t seed = crc32c(src, 100, 0);
    CHECK(ioat_copy_crc(e, A(dst + 200000), A(src + 100), 3000, &seed, A(aux), callback, TAG(4), DMA_CRC_STORE) != NULL, "copy_crc");
    uint32_t *wrong = (uint32_t *)(aux + 64);
    *wrong = 0x12345678;
    CHECK(ioat_crc(e, A(src), 4096, NULL, A(wrong), callback, TAG(5), DMA_CRC_TEST) != NULL, "crc test");
    CHECK(ioat_null(e, callback, TAG(6), DMA_INT_EN | DMA_FENCE) != NULL, "null");
    /* Refused before anything is sent: an address outside every buffer, a flag FreeBSD does not have. */
    uint8_t stack[16];
    CHECK(ioat_copy(e, A(dst), A(stack), sizeof stack, callback, TAG(99), 0) == NULL, "stack address refused");
    CHECK(ioat_null(e, callback, TAG(99), 0x100) == NULL, "unknown flag refused");
    CHECK(ioat_copy(e, A(dst), A(src), 64, callback, TAG(99), DMA_CRC_STORE) == NULL, "CRC flag on a copy refused");
    ioat_release(e);
    drain(e, 6);
    CHECK(nseen == 6, "%d callbacks", nseen);
    for (int i = 0; i < nseen; i++) CHECK(seen[i].tag == i + 1, "callback %d is tag %d (in submission order)", i, seen[i].tag);
    CHECK(seen[0].error == 0 && seen[1].error == 0 && seen[2].error == 0 && seen[3].error == 0 && seen[5].error == 0,
          "errors %d %d %d %d %d", seen[0].error, seen[1].error, seen[2].error, seen[3].error, seen[5].error);
    CHECK(seen[4].error == EILSEQ, "CRC TEST of a wrong value: error %d, expected EILSEQ", seen[4].error);
    int fill_ok = dst[7] == 0xA5 && dst[1008] == 0xA5;
    for (int i = 0; i < 1000; i++) fill_ok &= dst[8 + i] == (uint8_t)(0x1122334455667788ull >> (8 * (i % 8)));
    CHECK(fill_ok, "blockfill bytes and guards");
    CHECK(memcmp(dst + 4096, src + 3, 5000) == 0 && dst[4095] == 0xA5 && dst[9096] == 0xA5, "copy bytes and guards");
    CHECK(memcmp(dst + 65536, src + 8192, 4096) == 0 && memcmp(dst + 131072, src + 40960, 4096) == 0 &&
              dst[65536 + 4096] == 0xA5 && dst[131072 + 4096] == 0xA5, "copy_8k_aligned bytes and guards");
    CHECK(memcmp(dst + 200000, src + 100, 3000) == 0, "copy_crc bytes");
    uint32_t stored;
    memcpy(&stored, aux, 4);
    CHECK(stored == crc32c(src, 3100, 0), "seeded copy_crc stored %#x, expected %#x", stored, crc32c(src, 3100, 0));

    /* acquire_reserve: more than the depth is EINVAL; M_NOWAIT on a full engine is EAGAIN, and the
     * caller does not hold it; M_WAITOK waits, running callbacks meanwhile. */
    CHECK(ioat_acquire_reserve(e, 1u << 30, M_WAITOK) == EINVAL, "reserve above the depth");
    nseen = 0;
    ioat_acquire(e);
    int queued = 0;
    while (ioat_null(e, callback, TAG(100 + queued), DMA_NO_WAIT) != NULL) queued++;
    ioat_release(e);
    CHECK(queued >= 8, "a full engine after %d ops", queued);
    CHECK(ioat_acquire_reserve(e, 1, M_NOWAIT) == EAGAIN, "M_NOWAIT on a full engine");
    CHECK(ioat_acquire_reserve(e, 1, M_WAITOK) == 0, "M_WAITOK waits for room");
    CHECK(nseen >= 1, "callbacks ran while reserve waited (%d)", nseen);
    CHECK(ioat_copy(e, A(dst), A(src), 4096, callback, TAG(100 + queued), 0) != NULL, "the reserved op");
    ioat_release(e); /* M_NOWAIT's failure left the engine free: this release pairs with M_WAITOK */
    drain(e, queued + 1);
    int order = 1;
    for (int i = 0; i < nseen; i++) order &= seen[i].tag == 100 + i && seen[i].error == 0;
    CHECK(order && nseen == queued + 1, "%d callbacks in order, all successful", nseen);
    CHECK(memcmp(dst, src, 4096) == 0, "the reserved copy's bytes");

    /* put_dmaengine runs the callbacks of what is still outstanding before it closes the queue. */
    nseen = 0;
    ioat_acquire(e);
    for (int i = 0; i < 5; i++) ioat_copy(e, A(dst + 500000 + i * 4096), A(src + i * 4096), 4096, callback, TAG(i), 0);
    ioat_release(e);
    ioat_put_dmaengine(e);
    CHECK(nseen == 5, "put ran %d of 5 outstanding callbacks", nseen);
    CHECK(memcmp(dst + 500000, src, 5 * 4096) == 0, "their bytes");
    printf("ioat conformance: %d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
