/*
 * <ioatd/ioat.h> - FreeBSD's ioat(4) kernel API, in user space, on ioatd.
 *
 * The functions and flags are those of FreeBSD's ioat(4) manual, with its signatures; a program
 * written against ioat(4) builds against this header with few changes. What differs, because this is
 * a process talking to a server rather than a driver talking to hardware:
 *
 * - bus_addr_t is a virtual address inside an ioatd buffer of the calling process, not a bus address:
 *   allocate buffers with ioatd_buffer_alloc(ioat_client(), ...) (or register a memfd) and pass
 *   (bus_addr_t)(uintptr_t)pointer. An address outside every buffer makes the operation return NULL.
 *   Buffers need not be physically contiguous, and a copy may be longer than ioat_get_max_io_size():
 *   the server splits it (SPEC.md §6.7).
 * - A bus_dmaengine_t is one queue on one channel of this process's connection (ioat_client(): the
 *   socket ioat_set_socket named, else $IOATD_SOCKET, else the default socket of SPEC.md §1, opened on
 *   first use). ioat_get_dmaengine(i) opens channel i of the server's list (0 ... count - 1); every
 *   get of one channel returns the same engine, counted. An engine holds up to 256 operations (fewer
 *   when the channel's max_depth is lower): ioat_get_depth says how many.
 * - When the connection ends (the server was killed, crashed or restarted), each operation in flight
 *   has its callback called with ENXIO, operations on engines of that connection return NULL and
 *   ioat_poll returns -ENXIO; put those engines. The next ioat_client() or ioat_get_dmaengine()
 *   connects anew. Buffers allocated on the old connection stay mapped (ioatd_buffer_free on the old
 *   client unmaps them, as does ioat_shutdown); they cannot be used by the new connection's engines.
 * - ioat_acquire / ioat_release: exclusive access to enqueue on the engine, as in the kernel (a
 *   mutex); ioat_release submits what was enqueued since ioat_acquire. Nothing reaches the server
 *   before ioat_release (or before the engine is full, which submits first). An operation by a
 *   thread that does not hold the engine, or from inside a callback, returns NULL.
 *   ioat_acquire_reserve(n): room for n operations is guaranteed until ioat_release.
 * - Callbacks never run on their own: there is no interrupt and no library thread. They run in the
 *   caller's thread, inside ioat_poll() (which the caller drives: in its own loop, or when
 *   ioat_get_fd() polls readable), and inside calls that must wait for room (ioat_acquire_reserve with
 *   M_WAITOK, an operation without DMA_NO_WAIT on a full engine) or for the end (ioat_put_dmaengine).
 *   Every operation with a callback gets it called exactly once, in submission order, with error 0 on
 *   success, EILSEQ for a CRC TEST that did not match, ECANCELED when not attempted (a FENCE behind a
 *   failure) or cancelled, EINVAL when the server refused the descriptor, EIO for any other failure,
 *   ENXIO when the connection ended before the operation's record came. DMA_INT_EN asks the server
 *   to send the record (and those before it) at once over the socket transport; with rings records
 *   are visible as they complete. As in the kernel, it is invalid to enqueue from a callback.
 * - DMA_CRC_* are FreeBSD's values. Without initialseed a CRC continues the engine's running CRC
 *   (IOATD_F_CRC_CHAIN, ioat(4)'s "accumulate"); with it, it starts from *initialseed.
 *
 * These functions may be called from several threads: enqueueing under ioat_acquire as in the kernel,
 * and ioat_poll from any number of threads at once (one of them runs the callbacks at a time, so the
 * order holds). ioatd_* calls on ioat_client() (ioatd_buffer_alloc and the like) may run beside them.
 * A NULL engine is EINVAL (or NULL, 0, nothing: whatever the call returns), never a crash.
 */
#ifndef IOATD_IOAT_H
#define IOATD_IOAT_H

#include <stddef.h>
#include <stdint.h>

#include "client.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef void *bus_dmaengine_t;
typedef uint64_t bus_addr_t;
typedef uint64_t bus_size_t;
typedef void (*bus_dmaengine_callback_t)(void *arg, int error);

/* What an operation returns: its callback, until it has run. NULL means the operation was not
 * enqueued (a bad address, a full engine with DMA_NO_WAIT, or without it no room within the client's
 * bound on waiting for the server, a lost connection). */
struct bus_dmadesc {
    bus_dmaengine_callback_t callback_fn;
    void *callback_arg;
};

/* Operation flags (FreeBSD's values). */
#define DMA_INT_EN 0x1
#define DMA_NO_WAIT 0x2
#define DMA_FENCE 0x4
#define DMA_CRC_STORE 0x8
#define DMA_CRC_TEST 0x10
#define DMA_CRC_INLINE 0x20
#define DMA_ALL_FLAGS (DMA_INT_EN | DMA_NO_WAIT | DMA_FENCE | DMA_CRC_STORE | DMA_CRC_TEST | DMA_CRC_INLINE)

/* ioat_acquire_reserve mflags, as malloc(9)'s. */
#ifndef M_NOWAIT
#define M_NOWAIT 0x0001
#endif
#ifndef M_WAITOK
#define M_WAITOK 0x0002
#endif

/* The connection these functions use (connected on first use, and again after it ended; NULL if
 * that failed: ioatd_strerror(NULL, -errno) in this thread says why). */
struct ioatd_client *ioat_client(void);
/* Not in FreeBSD: the socket (NULL: the default) and ioatd_connect flags for the connection, before
 * its first use or after ioat_shutdown: 0, or -EBUSY while a connection or an engine exists. */
int ioat_set_socket(const char *path, unsigned flags);
/* ioat_put_dmaengine waits for the engine's outstanding operations and runs their callbacks, within
 * the client's bound; the callbacks of any still outstanding then hear ETIMEDOUT. */

/* Not in FreeBSD: closes the connection, every ended one and their buffers, after the program put its
 * engines (engines not put are freed and their handles dangle). The next use connects anew. The
 * library does this at exit. */
void ioat_shutdown(void);
/* Not in FreeBSD: how many operations the engine holds (its queue's depth), 0 for NULL. */
uint32_t ioat_get_depth(bus_dmaengine_t dmaengine);

bus_dmaengine_t ioat_get_dmaengine(uint32_t channel_index);
void ioat_put_dmaengine(bus_dmaengine_t dmaengine);
int ioat_get_hwversion(bus_dmaengine_t dmaengine);
size_t ioat_get_max_io_size(bus_dmaengine_t dmaengine);
/* 0, or ERANGE above ioat_get_max_coalesce_period(), ENXIO when the connection is gone. */
int ioat_set_interrupt_coalesce(bus_dmaengine_t dmaengine, uint16_t delay);
uint16_t ioat_get_max_coalesce_period(bus_dmaengine_t dmaengine);
void ioat_acquire(bus_dmaengine_t dmaengine);
/* 0 holding the engine; EAGAIN with M_NOWAIT when there is no room now; ETIMEDOUT with M_WAITOK when
 * no room came within the client's bound on waiting for the server (30 s unless set with
 * ioatd_set_call_timeout(ioat_client(), ms)); EINVAL when n is above the engine's depth; ENXIO when the
 * connection is gone. On failure the caller does not hold the engine. */
int ioat_acquire_reserve(bus_dmaengine_t dmaengine, uint32_t n, int mflags);
void ioat_release(bus_dmaengine_t dmaengine);

struct bus_dmadesc *ioat_copy(bus_dmaengine_t dmaengine, bus_addr_t dst, bus_addr_t src, bus_size_t len,
                              bus_dmaengine_callback_t callback_fn, void *callback_arg, uint32_t flags);
struct bus_dmadesc *ioat_copy_8k_aligned(bus_dmaengine_t dmaengine, bus_addr_t dst1, bus_addr_t dst2, bus_addr_t src1,
                                         bus_addr_t src2, bus_dmaengine_callback_t callback_fn, void *callback_arg,
                                         uint32_t flags);
struct bus_dmadesc *ioat_copy_crc(bus_dmaengine_t dmaengine, bus_addr_t dst, bus_addr_t src, bus_size_t len,
                                  uint32_t *initialseed, bus_addr_t crcptr, bus_dmaengine_callback_t callback_fn,
                                  void *callback_arg, uint32_t flags);
struct bus_dmadesc *ioat_crc(bus_dmaengine_t dmaengine, bus_addr_t src, bus_size_t len, uint32_t *initialseed,
                             bus_addr_t crcptr, bus_dmaengine_callback_t callback_fn, void *callback_arg, uint32_t flags);
struct bus_dmadesc *ioat_blockfill(bus_dmaengine_t dmaengine, bus_addr_t dst, uint64_t fillpattern, bus_size_t len,
                                   bus_dmaengine_callback_t callback_fn, void *callback_arg, uint32_t flags);
struct bus_dmadesc *ioat_null(bus_dmaengine_t dmaengine, bus_dmaengine_callback_t callback_fn, void *callback_arg,
                              uint32_t flags);

/* Not in FreeBSD (the kernel has interrupts): runs the callbacks of every operation completed by
 * now, waiting up to timeout_ms (-1: forever, 0: not at all) for at least one when any is
 * outstanding. Returns how many callbacks ran, or a negative error (-ENXIO: the connection is gone). */
int ioat_poll(bus_dmaengine_t dmaengine, int timeout_ms);
/* Not in FreeBSD: a descriptor that polls readable once a record of an operation released (submitted)
 * is ready, or the connection ended: then call ioat_poll. It stays readable until ioat_poll runs.
 * -errno if it cannot be made. */
int ioat_get_fd(bus_dmaengine_t dmaengine);

#ifdef __cplusplus
}
#endif

#endif /* IOATD_IOAT_H */
