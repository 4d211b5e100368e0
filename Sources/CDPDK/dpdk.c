/* The DPDK calls behind ioatd_dpdk.h. Compiled to nothing when DPDK's headers are not on the include
 * path, which is the case unless the package is built with the `DPDK` trait. */
#if __has_include(<rte_dmadev.h>)

#define ALLOW_EXPERIMENTAL_API 1
#define _GNU_SOURCE 1
#include <rte_config.h>
#include <rte_common.h>
#include <rte_dev.h>
#include <rte_dmadev.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_memory.h>

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>

#include "ioatd_dpdk.h"

const uint64_t ioatd_dpdk_flag_fence = RTE_DMA_OP_FLAG_FENCE;
const uint64_t ioatd_dpdk_flag_submit = RTE_DMA_OP_FLAG_SUBMIT;
const uint64_t ioatd_dpdk_capa_sva = RTE_DMA_CAPA_SVA;
const uint64_t ioatd_dpdk_capa_copy = RTE_DMA_CAPA_OPS_COPY;
const uint64_t ioatd_dpdk_capa_fill = RTE_DMA_CAPA_OPS_FILL;
const uint64_t ioatd_dpdk_capa_copy_sg = RTE_DMA_CAPA_OPS_COPY_SG;
const uint64_t ioatd_dpdk_capa_mem_to_mem = RTE_DMA_CAPA_MEM_TO_MEM;

/* IOATEngine/DmadevStatus.swift spells these numbers out; it must agree with the header. */
_Static_assert(RTE_DMA_STATUS_SUCCESSFUL == 0, "dmadev status");
_Static_assert(RTE_DMA_STATUS_USER_ABORT == 1, "dmadev status");
_Static_assert(RTE_DMA_STATUS_NOT_ATTEMPTED == 2, "dmadev status");
_Static_assert(RTE_DMA_STATUS_INVALID_SRC_ADDR == 3, "dmadev status");
_Static_assert(RTE_DMA_STATUS_INVALID_DST_ADDR == 4, "dmadev status");
_Static_assert(RTE_DMA_STATUS_INVALID_ADDR == 5, "dmadev status");
_Static_assert(RTE_DMA_STATUS_INVALID_LENGTH == 6, "dmadev status");
_Static_assert(RTE_DMA_STATUS_INVALID_OPCODE == 7, "dmadev status");
_Static_assert(RTE_DMA_STATUS_BUS_READ_ERROR == 8, "dmadev status");
_Static_assert(RTE_DMA_STATUS_BUS_WRITE_ERROR == 9, "dmadev status");
_Static_assert(RTE_DMA_STATUS_BUS_ERROR == 10, "dmadev status");
_Static_assert(RTE_DMA_STATUS_DATA_POISION == 11, "dmadev status");
_Static_assert(RTE_DMA_STATUS_DESCRIPTOR_READ_ERROR == 12, "dmadev status");
_Static_assert(RTE_DMA_STATUS_DEV_LINK_ERROR == 13, "dmadev status");
_Static_assert(RTE_DMA_STATUS_PAGE_FAULT == 14, "dmadev status");
_Static_assert(RTE_DMA_STATUS_ERROR_UNKNOWN == 0x100, "dmadev status");

int ioatd_dpdk_init(int argc, char **argv, char *error, size_t error_len) {
    cpu_set_t saved;
    int have_affinity = pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) == 0;
    int rc = rte_eal_init(argc, argv);
    if (rc < 0) {
        int e = rte_errno;
        snprintf(error, error_len, "rte_eal_init failed: %s (rte_errno %d)", rte_strerror(e), e);
        return -(e ? e : EINVAL);
    }
    if (have_affinity) pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
    return 0;
}

int ioatd_dpdk_cleanup(void) { return rte_eal_cleanup(); }

int ioatd_dpdk_iova_is_va(void) { return rte_eal_iova_mode() == RTE_IOVA_VA; }

int ioatd_dpdk_device_count(void) { return rte_dma_count_avail(); }

/* The driver's name, found by walking the buses' devices for the one named like the dmadev. */
static void driver_of(const char *name, char *out, size_t out_len) {
    static const char *const buses[] = {"bus=pci", "bus=vdev", "bus=dsa"};
    snprintf(out, out_len, "unknown");
    for (size_t b = 0; b < sizeof buses / sizeof buses[0]; b++) {
        struct rte_dev_iterator it;
        struct rte_device *dev;
        RTE_DEV_FOREACH(dev, buses[b], &it) {
            const char *dev_name = rte_dev_name(dev);
            const struct rte_driver *driver = rte_dev_driver(dev);
            if (dev_name && driver && strncmp(name, dev_name, strlen(dev_name)) == 0) {
                snprintf(out, out_len, "%s", rte_driver_name(driver));
                return;
            }
        }
    }
}

int ioatd_dpdk_device_info(int index, struct ioatd_dpdk_device *out) {
    int seen = 0;
    int16_t id;
    RTE_DMA_FOREACH_DEV(id) {
        if (seen++ != index) continue;
        struct rte_dma_info info;
        int rc = rte_dma_info_get(id, &info);
        if (rc < 0) return rc;
        memset(out, 0, sizeof *out);
        out->id = id;
        snprintf(out->name, sizeof out->name, "%s", info.dev_name);
        driver_of(info.dev_name, out->driver, sizeof out->driver);
        out->capabilities = info.dev_capa;
        out->max_vchans = info.max_vchans;
        out->max_desc = info.max_desc;
        out->min_desc = info.min_desc;
        out->numa_node = info.numa_node;
        return 0;
    }
    return -ENODEV;
}

int ioatd_dpdk_device_start(int16_t dev, uint16_t vchans, uint16_t ring_size) {
    struct rte_dma_conf conf = {.nb_vchans = vchans, .enable_silent = false};
    int rc = rte_dma_configure(dev, &conf);
    if (rc < 0) return rc;
    for (uint16_t v = 0; v < vchans; v++) {
        struct rte_dma_vchan_conf vconf = {.direction = RTE_DMA_DIR_MEM_TO_MEM, .nb_desc = ring_size};
        rc = rte_dma_vchan_setup(dev, v, &vconf);
        if (rc < 0) return rc;
    }
    return rte_dma_start(dev);
}

int ioatd_dpdk_device_close(int16_t dev) {
    rte_dma_stop(dev);
    return rte_dma_close(dev);
}

int ioatd_dpdk_device_stop(int16_t dev) { return rte_dma_stop(dev); }

int ioatd_dpdk_device_restart(int16_t dev) {
    int rc = rte_dma_stop(dev);
    if (rc < 0) return rc;
    return rte_dma_start(dev);
}

int ioatd_dpdk_copy(int16_t dev, uint16_t vchan, uint64_t src, uint64_t dst, uint32_t length, uint64_t flags) {
    return rte_dma_copy(dev, vchan, src, dst, length, flags);
}

int ioatd_dpdk_fill(int16_t dev, uint16_t vchan, uint64_t pattern, uint64_t dst, uint32_t length, uint64_t flags) {
    return rte_dma_fill(dev, vchan, pattern, dst, length, flags);
}

int ioatd_dpdk_submit(int16_t dev, uint16_t vchan) { return rte_dma_submit(dev, vchan); }

uint16_t ioatd_dpdk_completed(int16_t dev, uint16_t vchan, uint16_t max, uint32_t *statuses) {
    uint16_t last = 0;
    _Static_assert(sizeof(enum rte_dma_status_code) == sizeof(uint32_t), "status code size");
    return rte_dma_completed_status(dev, vchan, max, &last, (enum rte_dma_status_code *)statuses);
}

uint16_t ioatd_dpdk_capacity(int16_t dev, uint16_t vchan) { return rte_dma_burst_capacity(dev, vchan); }

int ioatd_dpdk_vchan_halted(int16_t dev, uint16_t vchan) {
    enum rte_dma_vchan_status status;
    int rc = rte_dma_vchan_status(dev, vchan, &status);
    if (rc < 0) return rc;
    return status == RTE_DMA_VCHAN_HALTED_ERROR;
}

/* Devices that need an IOMMU mapping (no shared virtual addressing). */
static int for_each_mapped_device(void *va, size_t length, int map) {
    int16_t id;
    int first_error = 0;
    RTE_DMA_FOREACH_DEV(id) {
        struct rte_dma_info info;
        if (rte_dma_info_get(id, &info) < 0 || (info.dev_capa & RTE_DMA_CAPA_SVA)) continue;
        struct rte_dev_iterator it;
        struct rte_device *dev;
        RTE_DEV_FOREACH(dev, "bus=pci", &it) {
            if (strcmp(rte_dev_name(dev), info.dev_name) != 0) continue;
            int rc = map ? rte_dev_dma_map(dev, va, (uint64_t)(uintptr_t)va, length)
                         : rte_dev_dma_unmap(dev, va, (uint64_t)(uintptr_t)va, length);
            if (rc < 0 && first_error == 0) first_error = -(rte_errno ? rte_errno : EINVAL);
        }
    }
    return first_error;
}

int ioatd_dpdk_register_memory(void *va, size_t length, size_t page_size) {
    if (rte_extmem_register(va, length, NULL, 0, page_size) < 0) return -(rte_errno ? rte_errno : EINVAL);
    int rc = for_each_mapped_device(va, length, 1);
    if (rc < 0) {
        for_each_mapped_device(va, length, 0);
        rte_extmem_unregister(va, length);
    }
    return rc;
}

int ioatd_dpdk_unregister_memory(void *va, size_t length) {
    int rc = for_each_mapped_device(va, length, 0);
    if (rte_extmem_unregister(va, length) < 0 && rc == 0) rc = -(rte_errno ? rte_errno : EINVAL);
    return rc;
}

uint64_t ioatd_dpdk_iova(const void *va) {
    /* Devices are only used in IOVA-as-VA mode or with shared virtual addressing (see the engine). */
    return (uint64_t)(uintptr_t)va;
}

#endif
