// CIOATRing: the ring fast path of protocol/ioatd_ring.h, for Swift. The header lives once, beside the
// wire structures it uses; this module only makes it importable.
#ifndef CIOAT_RING_H
#define CIOAT_RING_H
#include "../../../protocol/ioatd_ring.h"
#endif
