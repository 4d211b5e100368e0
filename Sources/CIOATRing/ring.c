// protocol/ioatd_ring.h is header-only (static inline); compiling it here checks it under -Wall with the
// package's own C flags. Nothing is defined.
#include "CIOATRing.h"
