// The ring fast path of protocol/ioatd_ring.h is inline; its two system calls (the doorbell) are
// defined once, in libioatd/ring.c, which libioatd exports and this module compiles for Swift.
#include "CIOATRing.h"
#include "../../libioatd/ring.c"
