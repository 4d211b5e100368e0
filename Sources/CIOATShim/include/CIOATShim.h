// CIOATShim: only what Swift cannot import from Glibc.
// Function-like macros (CMSG_*), declarations hidden behind _GNU_SOURCE (memfd_create, struct ucred),
// and constants Swift does not see. Every exported name carries the `cioat_` prefix.
#ifndef CIOAT_SHIM_H
#define CIOAT_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <signal.h>

/// memfd_create(2); returns -1 with errno set.
int cioat_memfd_create(const char *name, unsigned int flags);

/// Flag values for memfd_create(2).
extern const unsigned int cioat_MFD_CLOEXEC;
extern const unsigned int cioat_MFD_ALLOW_SEALING;
extern const unsigned int cioat_MFD_HUGETLB;

/// recvmsg(2) flag that marks received descriptors close-on-exec atomically.
extern const int cioat_MSG_CMSG_CLOEXEC;
/// POLLRDHUP (needs _GNU_SOURCE, so Swift does not see it).
extern const int cioat_POLLRDHUP;

/// Size of the control buffer needed to carry `count` file descriptors.
size_t cioat_cmsg_space_fds(unsigned int count);

/// Fills `control` (of `controllen` bytes, at least cioat_cmsg_space_fds(count)) with one SCM_RIGHTS
/// message carrying `fds`; returns the msg_controllen to use.
size_t cioat_cmsg_put_fds(void *control, size_t controllen, const int *fds, unsigned int count);

/// Walks the control messages of a received message. For every SCM_RIGHTS descriptor, stores it into
/// `fds` (up to `max`); descriptors beyond `max` are closed. Returns the number of descriptors received
/// (including those closed); sets *foreign to 1 if any control message other than SCM_RIGHTS was present.
unsigned int cioat_cmsg_take_fds(const struct msghdr *msg, int *fds, unsigned int max, int *foreign);

/// fcntl(2) file-sealing commands and seals (memfd_create(2)).
extern const int cioat_F_ADD_SEALS;
extern const int cioat_F_GET_SEALS;
extern const int cioat_F_SEAL_SEAL;
extern const int cioat_F_SEAL_SHRINK;
extern const int cioat_F_SEAL_GROW;
extern const int cioat_F_SEAL_WRITE;
extern const int cioat_F_SEAL_FUTURE_WRITE;

/// accept4(2) with SOCK_NONBLOCK | SOCK_CLOEXEC.
int cioat_accept_nonblock(int fd);

/// One spin-wait step: tells the CPU the thread is polling (x86 PAUSE, arm64 YIELD), so a sibling
/// hardware thread gets the core's resources and the poll does not flood the memory system.
static inline void cioat_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/// pthread_setname_np(3) for the calling thread.
void cioat_set_thread_name(const char *name);

/// Restricts the calling thread to the `n` CPUs in `cpus` (sched_setaffinity). 0 or -1 with errno.
int cioat_set_thread_affinity(const int *cpus, int n);

/// Stores up to `max` CPU numbers the calling thread may run on; returns how many, or -1 with errno.
int cioat_get_thread_affinity(int *cpus, int max);

/// SO_PEERCRED of a connected Unix socket. Returns 0 or -1 with errno.
int cioat_peercred(int fd, pid_t *pid, uid_t *uid, gid_t *gid);
int cioat_peerpidfd(int fd);
int cioat_pidfd_alive(int pidfd);
int cioat_pidfd_cgroupid(int pidfd, uint64_t *id);

/// SO_PEERGROUPS (Linux 4.13+) of a connected Unix socket: the peer's supplementary groups when it
/// connected. Stores up to `max` of them; returns how many the peer has (more than `max`: call again with
/// room for that many), or -1 with errno.
int cioat_peergroups(int fd, gid_t *groups, int max);

#endif
