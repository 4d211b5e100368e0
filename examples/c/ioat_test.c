/* ioat_test: a FreeBSD ioat(4) kernel user, ported to user space with <ioatd/ioat.h>.
 *
 * It does what sys/dev/ioat/ioat_test.c's default test does, in the same API: take the engine of a
 * channel, fill source blocks with a pattern (ioat_blockfill), copy them (ioat_copy, the last with
 * DMA_INT_EN), checksum them (ioat_crc with DMA_CRC_STORE), all under one ioat_acquire/ioat_release,
 * with a callback per operation; then check every byte and CRC. What changed from the kernel code:
 * buffers come from ioatd_buffer_alloc (bus_addr_t is their address), and the program drives the
 * callbacks with ioat_poll where the kernel had an interrupt.
 *
 *     cc ioat_test.c $(pkg-config --cflags --libs libioatd) -o ioat_test && ./ioat_test [CHANNEL]
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ioatd/ioat.h>

#define BLOCKS 8
#define BLOCK (64u << 10)

struct test {
    int done, errors;
};

static void callback(void *arg, int error) {
    struct test *t = arg;
    t->done++;
    if (error) {
        fprintf(stderr, "ioat_test: an operation failed: %s\n", strerror(error));
        t->errors++;
    }
}

static uint32_t crc32c(const uint8_t *p, size_t n) {
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
    }
    return ~crc;
}

int main(int argc, char **argv) {
    uint32_t channel = argc > 1 ? (uint32_t)strtoul(argv[1], NULL, 0) : 0;
    bus_dmaengine_t dma = ioat_get_dmaengine(channel);
    if (dma == NULL) {
        fprintf(stderr, "ioat_test: no engine for channel %u (is ioatd running?)\n", channel);
        return 1;
    }
    printf("ioat_test: channel %u, hardware version %#x, max transfer %zu, max coalesce %u us\n", channel,
           ioat_get_hwversion(dma), ioat_get_max_io_size(dma), ioat_get_max_coalesce_period(dma));
    uint8_t *src, *dst;
    uint32_t *crcs;
    struct ioatd_client *c = ioat_client();
    if (ioatd_buffer_alloc(c, BLOCKS * BLOCK, 0, (void **)&src) < 0 || ioatd_buffer_alloc(c, BLOCKS * BLOCK, 0, (void **)&dst) < 0 ||
        ioatd_buffer_alloc(c, 4096, 0, (void **)&crcs) < 0) {
        fprintf(stderr, "ioat_test: no buffers\n");
        return 1;
    }
    memset(dst, 0, BLOCKS * BLOCK);

    struct test t = {0, 0};
    int queued = 0;
    if (ioat_acquire_reserve(dma, 3 * BLOCKS, M_WAITOK) != 0) {
        fprintf(stderr, "ioat_test: cannot reserve %d operations\n", 3 * BLOCKS);
        return 1;
    }
    for (int i = 0; i < BLOCKS; i++) {
        bus_addr_t s = (bus_addr_t)(uintptr_t)(src + i * BLOCK), d = (bus_addr_t)(uintptr_t)(dst + i * BLOCK);
        uint64_t pattern = 0x0101010101010101ull * (uint64_t)(i + 1) ^ 0xFEDCBA9876543210ull;
        queued += ioat_blockfill(dma, s, pattern, BLOCK, callback, &t, 0) != NULL;
        /* The copy reads what the fill wrote: FENCE, as ioat(4) asks of dependent operations. */
        queued += ioat_copy(dma, d, s, BLOCK, callback, &t, DMA_FENCE | (i == BLOCKS - 1 ? DMA_INT_EN : 0)) != NULL;
        uint32_t seed = 0;
        queued += ioat_crc(dma, d, BLOCK, &seed, (bus_addr_t)(uintptr_t)&crcs[i], callback, &t, DMA_FENCE | DMA_CRC_STORE) != NULL;
    }
    ioat_release(dma);
    while (t.done < queued)
        if (ioat_poll(dma, 1000) < 0) break;

    int bad = queued != 3 * BLOCKS || t.done != queued || t.errors != 0;
    for (int i = 0; i < BLOCKS && !bad; i++) {
        uint64_t pattern = 0x0101010101010101ull * (uint64_t)(i + 1) ^ 0xFEDCBA9876543210ull;
        for (uint32_t k = 0; k < BLOCK; k++)
            if (dst[i * BLOCK + k] != (uint8_t)(pattern >> (8 * (k % 8)))) {
                fprintf(stderr, "ioat_test: block %d byte %u differs\n", i, k);
                bad = 1;
                break;
            }
        if (crcs[i] != crc32c(dst + i * BLOCK, BLOCK)) {
            fprintf(stderr, "ioat_test: block %d crc %08x, expected %08x\n", i, crcs[i], crc32c(dst + i * BLOCK, BLOCK));
            bad = 1;
        }
    }
    printf("ioat_test: %d operations, %d callbacks, %d errors: %s\n", queued, t.done, t.errors, bad ? "FAILED" : "ok");
    ioat_put_dmaengine(dma);
    return bad;
}
