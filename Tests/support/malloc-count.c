/*
 * malloc-count.c - an LD_PRELOAD library for the allocation test of the server's event loop: counts the
 * allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc) made by the process's main
 * thread, which is where ioatd runs its loop, into a u64 in the file IOATD_MALLOC_COUNT_FILE (made
 * and mapped at load), which the test reads while the server runs. Other threads are not counted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static uint64_t *counter;
static pid_t process;
/* -1 unknown, 0 another thread, 1 the main thread. Initial-exec TLS: reading it never allocates. */
static __thread __attribute__((tls_model("initial-exec"))) int main_thread = -1;

__attribute__((constructor)) static void start(void) {
    const char *path = getenv("IOATD_MALLOC_COUNT_FILE");
    if (path == NULL) return;
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || ftruncate(fd, sizeof(uint64_t)) != 0) return;
    void *p = mmap(NULL, sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return;
    process = getpid();
    counter = p;
}

static inline void note(void) {
    if (counter == NULL) return;
    if (main_thread < 0) main_thread = (pid_t)syscall(SYS_gettid) == process;
    if (main_thread) __atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
}

void *malloc(size_t n) { note(); return __libc_malloc(n); }
void *calloc(size_t n, size_t size) { note(); return __libc_calloc(n, size); }
void *realloc(void *p, size_t n) { note(); return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
void *aligned_alloc(size_t alignment, size_t n) { note(); return __libc_memalign(alignment, n); }
int posix_memalign(void **out, size_t alignment, size_t n) {
    note();
    void *p = __libc_memalign(alignment, n);
    if (p == NULL) return ENOMEM;
    *out = p;
    return 0;
}
