/*
 * ring.c - the doorbell system calls of a ring queue (protocol/ioatd_ring.h), the one part of the ring
 * fast path that is not inline: a program that includes the header calls them from libioatd
 * (LIBIOATD_1.2), and the Swift client compiles this same file into its C module (Sources/CIOATRing).
 * Inline code in a header that makes system calls would be compiled into every program, outside the
 * library's version script and out of reach of a fix in the library.
 */
#include <errno.h>
#include <sys/socket.h>

#include "../protocol/ioatd_ring.h"

#ifndef IOATD_RING_API
#define IOATD_RING_API __attribute__((visibility("default")))
#endif

/* One byte on the doorbell socket, never blocking: a full socket already rings. */
IOATD_RING_API int ioatd_ring_kick(const struct ioatd_ring *r) {
    static const char one = 1;
    if (send(r->doorbell, &one, 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1 || errno == EAGAIN) return 0;
    return -errno;
}

/* The server need not ring any more (cq_flags cleared); the doorbell socket is emptied. */
IOATD_RING_API void ioatd_ring_disarm(struct ioatd_ring *r) {
    char bytes[64];
    ioatd_store_relaxed(r->cq_flags, 0);
    while (recv(r->doorbell, bytes, sizeof bytes, MSG_DONTWAIT) > 0) {}
}
