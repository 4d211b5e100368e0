/* ioatd's narrow view of DPDK: EAL start-up, dmadev channels and DMA memory registration.
 *
 * Swift imports only this header, which uses plain C types, so neither the Swift compiler nor a build
 * without the `DPDK` trait ever sees DPDK's headers. dpdk.c implements it when DPDK's headers are on the
 * include path (the trait adds them); otherwise the functions are not defined and nothing may call them.
 * Every function returns a negative errno value on failure unless it says otherwise. */
#ifndef IOATD_DPDK_H
#define IOATD_DPDK_H

#include <stddef.h>
#include <stdint.h>

/* Op flags for ioatd_dpdk_copy / ioatd_dpdk_fill (dmadev's RTE_DMA_OP_FLAG_* are RTE_BIT64 macros,
 * which Swift does not import). */
extern const uint64_t ioatd_dpdk_flag_fence;
extern const uint64_t ioatd_dpdk_flag_submit;
/* Capability bits of interest (RTE_DMA_CAPA_*). */
extern const uint64_t ioatd_dpdk_capa_sva;
extern const uint64_t ioatd_dpdk_capa_copy;
extern const uint64_t ioatd_dpdk_capa_fill;
extern const uint64_t ioatd_dpdk_capa_copy_sg;
extern const uint64_t ioatd_dpdk_capa_mem_to_mem;

/* One dmadev as ioatd sees it. */
struct ioatd_dpdk_device {
    int16_t id;
    char name[64];         /* dmadev name (for a PCI device, its address) */
    char driver[64];       /* the driver bound to it, "unknown" when DPDK does not say */
    uint64_t capabilities; /* RTE_DMA_CAPA_* */
    uint16_t max_vchans;
    uint16_t max_desc;
    uint16_t min_desc;
    int16_t numa_node;
};

/* rte_eal_init with argv (argv[0] is a program name). The calling thread's CPU affinity is restored
 * afterwards: EAL pins its caller to the main lcore, and the caller is ioatd's event loop. On failure
 * `error` holds DPDK's reason. */
int ioatd_dpdk_init(int argc, char **argv, char *error, size_t error_len);
/* rte_eal_cleanup. */
int ioatd_dpdk_cleanup(void);
/* 1 when the EAL runs in IOVA-as-VA mode (device addresses are virtual addresses), else 0. */
int ioatd_dpdk_iova_is_va(void);

/* Number of dmadevs. */
int ioatd_dpdk_device_count(void);
/* Fills `out` for the i-th dmadev (0-based, in id order). */
int ioatd_dpdk_device_info(int index, struct ioatd_dpdk_device *out);
/* Configures `vchans` memory-to-memory vchans of `ring_size` descriptors each and starts the device. */
int ioatd_dpdk_device_start(int16_t dev, uint16_t vchans, uint16_t ring_size);
/* Stops and closes the device. */
int ioatd_dpdk_device_close(int16_t dev);
/* rte_dma_stop + rte_dma_start: brings a halted device back (vchan configuration is kept). */
int ioatd_dpdk_device_restart(int16_t dev);
/* rte_dma_stop. */
int ioatd_dpdk_device_stop(int16_t dev);

/* Enqueue (rte_dma_copy / rte_dma_fill): returns the ring index (>= 0) or a negative errno
 * (-ENOSPC when the ring is full). Addresses are IOVAs. */
int ioatd_dpdk_copy(int16_t dev, uint16_t vchan, uint64_t src, uint64_t dst, uint32_t length, uint64_t flags);
int ioatd_dpdk_fill(int16_t dev, uint16_t vchan, uint64_t pattern, uint64_t dst, uint32_t length, uint64_t flags);
/* rte_dma_submit. */
int ioatd_dpdk_submit(int16_t dev, uint16_t vchan);
/* rte_dma_completed_status: up to `max` finished ops, oldest first; statuses are
 * rte_dma_status_code values. Returns how many (never negative). */
uint16_t ioatd_dpdk_completed(int16_t dev, uint16_t vchan, uint16_t max, uint32_t *statuses);
/* rte_dma_burst_capacity. */
uint16_t ioatd_dpdk_capacity(int16_t dev, uint16_t vchan);
/* 1 when rte_dma_vchan_status reports the vchan halted on an error, 0 when not, negative when the
 * driver cannot tell. */
int ioatd_dpdk_vchan_halted(int16_t dev, uint16_t vchan);

/* Makes [va, va+length) DMA-addressable: rte_extmem_register, then rte_dev_dma_map on every device that
 * cannot use virtual addresses directly (no RTE_DMA_CAPA_SVA). `length` is a multiple of `page_size` and
 * `va` is page-aligned. Undone by ioatd_dpdk_unregister_memory. */
int ioatd_dpdk_register_memory(void *va, size_t length, size_t page_size);
int ioatd_dpdk_unregister_memory(void *va, size_t length);
/* The IOVA of a registered virtual address (the address itself in IOVA-as-VA mode). */
uint64_t ioatd_dpdk_iova(const void *va);

#endif
