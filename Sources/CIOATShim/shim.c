#define _GNU_SOURCE
#include "CIOATShim.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <fcntl.h>
#include <poll.h>

int cioat_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }

const unsigned int cioat_MFD_CLOEXEC = MFD_CLOEXEC;
const unsigned int cioat_MFD_ALLOW_SEALING = MFD_ALLOW_SEALING;
const unsigned int cioat_MFD_HUGETLB = MFD_HUGETLB;
const int cioat_MSG_CMSG_CLOEXEC = MSG_CMSG_CLOEXEC;
const int cioat_POLLRDHUP = POLLRDHUP;

const int cioat_F_ADD_SEALS = F_ADD_SEALS;
const int cioat_F_GET_SEALS = F_GET_SEALS;
const int cioat_F_SEAL_SEAL = F_SEAL_SEAL;
const int cioat_F_SEAL_SHRINK = F_SEAL_SHRINK;
const int cioat_F_SEAL_GROW = F_SEAL_GROW;
const int cioat_F_SEAL_WRITE = F_SEAL_WRITE;
#ifdef F_SEAL_FUTURE_WRITE
const int cioat_F_SEAL_FUTURE_WRITE = F_SEAL_FUTURE_WRITE;
#else
const int cioat_F_SEAL_FUTURE_WRITE = 0x0010;
#endif

int cioat_accept_nonblock(int fd) { return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC); }

size_t cioat_cmsg_space_fds(unsigned int count) { return CMSG_SPACE(sizeof(int) * count); }

size_t cioat_cmsg_put_fds(void *control, size_t controllen, const int *fds, unsigned int count) {
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_control = control;
    msg.msg_controllen = controllen;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    if (cmsg == NULL || controllen < CMSG_SPACE(sizeof(int) * count)) return 0;
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * count);
    memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * count);
    return CMSG_SPACE(sizeof(int) * count);
}

unsigned int cioat_cmsg_take_fds(const struct msghdr *msg, int *fds, unsigned int max, int *foreign) {
    unsigned int received = 0;
    *foreign = 0;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR((struct msghdr *)msg); cmsg != NULL;
         cmsg = CMSG_NXTHDR((struct msghdr *)msg, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) {
            *foreign = 1;
            continue;
        }
        size_t n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        const unsigned char *data = CMSG_DATA(cmsg);
        for (size_t i = 0; i < n; i++) {
            int fd;
            memcpy(&fd, data + i * sizeof(int), sizeof fd);
            if (received < max) fds[received] = fd;
            else close(fd);
            received++;
        }
    }
    return received;
}

int cioat_peercred(int fd, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59
#endif

int cioat_peergroups(int fd, gid_t *groups, int max) {
    socklen_t len = (socklen_t)(max * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) != 0) {
        if (errno != ERANGE) return -1;  // ERANGE: len now says how much room they need
    }
    return (int)(len / sizeof(gid_t));
}

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

/* The peer's pidfd (SO_PEERPIDFD, Linux 6.5): the process that connected, which a pid number cannot
 * name once it may have been reused. -1 with errno (ENOPROTOOPT on older kernels). */
int cioat_peerpidfd(int fd) {
    int pidfd = -1;
    socklen_t len = sizeof pidfd;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) != 0) return -1;
    return pidfd;
}

#include <sys/syscall.h>
#include <unistd.h>
/* Whether the process behind `pidfd` is still running: signal 0 through the pidfd (pidfd_send_signal,
 * Linux 5.1) checks it exists without signalling it. 1 alive, 0 gone (ESRCH), -1 other errors. */
int cioat_pidfd_alive(int pidfd) {
    if (syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) == 0) return 1;
    return errno == ESRCH ? 0 : -1;
}

#include <sys/ioctl.h>
/* PIDFD_GET_INFO (Linux 6.13), spelled out: Debian 12's headers predate it. The kernel takes any size
 * from its first version (64 bytes) on. */
struct cioat_pidfd_info {
    uint64_t mask, cgroupid;
    uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid, spare0;
};
#define CIOAT_PIDFD_GET_INFO _IOWR(0xFF, 11, struct cioat_pidfd_info)
#define CIOAT_PIDFD_INFO_CGROUPID (1ULL << 2)

/* The cgroup v2 id of the process behind `pidfd`, without /proc: 1 and `*id`; 0 when the process has
 * exited; -1 with errno when the kernel cannot say (no PIDFD_GET_INFO, or no cgroup v2). */
int cioat_pidfd_cgroupid(int pidfd, uint64_t *id) {
    struct cioat_pidfd_info info;
    memset(&info, 0, sizeof info);
    info.mask = CIOAT_PIDFD_INFO_CGROUPID;
    if (ioctl(pidfd, CIOAT_PIDFD_GET_INFO, &info) != 0) return errno == ESRCH ? 0 : -1;
    if (!(info.mask & CIOAT_PIDFD_INFO_CGROUPID)) {
        errno = ENODATA;
        return -1;
    }
    *id = info.cgroupid;
    return 1;
}

#include <pthread.h>
void cioat_set_thread_name(const char *name) { pthread_setname_np(pthread_self(), name); }

#include <sched.h>
int cioat_set_thread_affinity(const int *cpus, int n) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < n; i++) CPU_SET(cpus[i], &set);
    return sched_setaffinity(0, sizeof set, &set);
}

int cioat_get_thread_affinity(int *cpus, int max) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return -1;
    int n = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && n < max; cpu++)
        if (CPU_ISSET(cpu, &set)) cpus[n++] = cpu;
    return n;
}
