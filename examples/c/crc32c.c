/* crc32c: the CRC32C of each file, computed by the server; prints what `ioatctl crc32c` prints.
 *
 *     cc crc32c.c $(pkg-config --cflags --libs libioatd) -o crc32c && ./crc32c FILE...
 *
 * Each file is read in 4 MiB pieces into one ioatd buffer; each piece's CRC32C is seeded with the
 * CRC of the pieces before it (IOATD_F_CRC_SEED), so the last record holds the file's CRC.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <ioatd/client.h>

#define CHUNK (4u << 20)

int main(int argc, char **argv) {
    struct ioatd_client *c;
    int rc = ioatd_connect(NULL, 0, &c);
    if (rc < 0) {
        fprintf(stderr, "crc32c: connect: %s\n", ioatd_strerror(NULL, rc));
        return 1;
    }
    uint8_t *buffer;
    struct ioatd_queue *q;
    if ((rc = ioatd_buffer_alloc(c, CHUNK, 0, (void **)&buffer)) < 0 || (rc = ioatd_queue_open(c, IOATD_ANY_CHANNEL, 4, &q)) < 0) {
        fprintf(stderr, "crc32c: %s\n", ioatd_strerror(c, rc));
        ioatd_close(c);
        return 1;
    }
    int status = 0;
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "rb");
        if (!f) {
            fprintf(stderr, "crc32c: %s: %s\n", argv[i], strerror(errno));
            status = 1;
            continue;
        }
        uint32_t crc = 0;
        size_t n;
        while ((n = fread(buffer, 1, CHUNK, f)) > 0) {
            ioatd_prep_crc32c(q, ioatd_get_desc(q), buffer, n, crc, NULL, IOATD_F_CRC_SEED);
            ioatd_submit(q);
            struct ioatd_completion_record *r;
            rc = ioatd_wait_completion(q, &r, -1);
            if (rc < 0 || r->status != IOATD_ST_SUCCESS) {
                fprintf(stderr, "crc32c: %s: %s\n", argv[i], rc < 0 ? ioatd_strerror(c, rc) : ioatd_status_name(r->status));
                ioatd_close(c);
                fclose(f);
                return 1;
            }
            crc = r->result;
            ioatd_completion_seen(q, r);
        }
        if (ferror(f)) {
            fprintf(stderr, "crc32c: %s: read error\n", argv[i]);
            status = 1;
        } else {
            printf("%08x  %s\n", crc, argv[i]);
        }
        fclose(f);
    }
    ioatd_close(c);
    return status;
}
