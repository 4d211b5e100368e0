#include "CMallocCounter.h"
#include <errno.h>
#include <stddef.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static int counting;
static uint64_t count;
// Thread-local (local-exec TLS in the executable: reading it never allocates).
static __thread int counting_here;
static __thread uint64_t count_here;

static inline void note(void) {
    if (__atomic_load_n(&counting, __ATOMIC_RELAXED)) __atomic_add_fetch(&count, 1, __ATOMIC_RELAXED);
    if (counting_here) __atomic_add_fetch(&count_here, 1, __ATOMIC_RELAXED);
}

void cmalloc_counting_thread(int on) {
    if (on) count_here = 0;
    counting_here = on;
}

uint64_t cmalloc_thread_count(void) { return count_here; }

const uint64_t *cmalloc_thread_counter(void) { return &count_here; }

uint64_t cmalloc_read(const uint64_t *counter) { return __atomic_load_n(counter, __ATOMIC_RELAXED); }

void cmalloc_counting(int on) {
    if (on) __atomic_store_n(&count, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&counting, on, __ATOMIC_SEQ_CST);
}

uint64_t cmalloc_count(void) { return __atomic_load_n(&count, __ATOMIC_RELAXED); }

void *malloc(size_t n) { note(); return __libc_malloc(n); }
void *calloc(size_t n, size_t size) { note(); return __libc_calloc(n, size); }
void *realloc(void *p, size_t n) { note(); return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }

int posix_memalign(void **out, size_t alignment, size_t n) {
    note();
    void *p = __libc_memalign(alignment, n);
    if (p == NULL) return ENOMEM;
    *out = p;
    return 0;
}
