// Counts calls to malloc, calloc, realloc and posix_memalign while counting is on, for the tests that
// check the data path allocates nothing. Linked only into the test bundle: its malloc replaces libc's
// for the whole test process and forwards to glibc's own (__libc_malloc and friends).
#ifndef CMALLOC_COUNTER_H
#define CMALLOC_COUNTER_H
#include <stdint.h>

/// Starts or stops counting (process-wide); starting resets the count.
void cmalloc_counting(int on);
/// Allocations counted since counting started.
uint64_t cmalloc_count(void);
/// Starts or stops counting on the calling thread only (other threads' allocations are not counted);
/// starting resets the thread's count.
void cmalloc_counting_thread(int on);
/// Allocations the calling thread made since it started counting.
uint64_t cmalloc_thread_count(void);
/// The calling thread's counter, for another thread to read with cmalloc_read (the server's event loop
/// publishes it; the test reads it between phases).
const uint64_t *cmalloc_thread_counter(void);
/// Reads a counter cmalloc_thread_counter gave.
uint64_t cmalloc_read(const uint64_t *counter);
#endif
