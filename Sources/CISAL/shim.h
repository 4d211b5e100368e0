#ifndef CISAL_SHIM_H
#define CISAL_SHIM_H
// ISA-L: crc32_iscsi for CRC32C, xor_gen for XOR parity.
#include <isa-l/crc.h>
#include <isa-l/raid.h>
#endif
