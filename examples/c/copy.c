/* copy: the smallest libioatd program. Two buffers, one queue, one copy, checked.
 *
 *     cc copy.c $(pkg-config --cflags --libs libioatd) -o copy && ./copy [SOCKET]
 */
#include <stdio.h>
#include <string.h>

#include <ioatd/client.h>

int main(int argc, char **argv) {
    struct ioatd_client *c;
    int rc = ioatd_connect(argc > 1 ? argv[1] : NULL, 0, &c);
    if (rc < 0) {
        fprintf(stderr, "copy: connect: %s\n", ioatd_strerror(NULL, rc));
        return 1;
    }
    char *src, *dst;
    struct ioatd_queue *q;
    if ((rc = ioatd_buffer_alloc(c, 1 << 20, 0, (void **)&src)) < 0 ||
        (rc = ioatd_buffer_alloc(c, 1 << 20, 0, (void **)&dst)) < 0 ||
        (rc = ioatd_queue_open(c, IOATD_ANY_CHANNEL, 16, &q)) < 0) {
        fprintf(stderr, "copy: %s\n", ioatd_strerror(c, rc));
        ioatd_close(c);
        return 1;
    }
    for (int i = 0; i < 1 << 20; i++) src[i] = (char)(i * 7);

    struct ioatd_desc *d = ioatd_get_desc(q);
    ioatd_prep_copy(q, d, dst, src, 1 << 20, 0);
    ioatd_desc_set_cookie(d, 1);
    ioatd_submit(q);

    struct ioatd_completion_record *r;
    rc = ioatd_wait_completion(q, &r, -1);
    if (rc < 0) {
        fprintf(stderr, "copy: %s\n", ioatd_strerror(c, rc));
        ioatd_close(c);
        return 1;
    }
    int ok = r->status == IOATD_ST_SUCCESS && memcmp(dst, src, 1 << 20) == 0;
    printf("copy: 1 MiB over a %s queue: %s, bytes %s\n", ioatd_queue_is_ring(q) ? "ring" : "socket",
           ioatd_status_name(r->status), ok ? "equal" : "DIFFERENT");
    ioatd_completion_seen(q, r);
    ioatd_close(c);
    return ok ? 0 : 1;
}
