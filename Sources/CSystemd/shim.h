#ifndef CSYSTEMD_SHIM_H
#define CSYSTEMD_SHIM_H
// libsystemd: socket activation (sd_listen_fds_with_names), service notification (sd_notify,
// sd_watchdog_enabled) and the file-descriptor store (sd_pid_notify_with_fds), and two questions to the
// service manager over D-Bus that ioatd asks about its own unit (sd-bus). Variadic sd-bus calls cannot be
// made from Swift, hence these small functions.
#include <systemd/sd-daemon.h>
#include <systemd/sd-bus.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/// Stores `fd` in the service's file-descriptor store under `name` (FDSTORE=1, FDNAME=). 0 or -errno.
static inline int csd_fdstore_add(int fd, const char *name) {
    char state[320];
    if (strlen(name) > 255) return -22;
    snprintf(state, sizeof state, "FDSTORE=1\nFDNAME=%s", name);
    int r = sd_pid_notify_with_fds(0, 0, state, &fd, 1);
    return r > 0 ? 0 : (r == 0 ? -107 : r);
}

/// Drops what the store holds under `name` (FDSTOREREMOVE=1). 0 or -errno.
static inline int csd_fdstore_remove(const char *name) {
    char state[320];
    if (strlen(name) > 255) return -22;
    snprintf(state, sizeof state, "FDSTOREREMOVE=1\nFDNAME=%s", name);
    int r = sd_notify(0, state);
    return r > 0 ? 0 : (r == 0 ? -107 : r);
}

/// The D-Bus object path of the unit this process runs in (caller frees), or NULL with *error set.
static inline char *csd_own_unit(sd_bus *bus, int *error) {
    sd_bus_error e = SD_BUS_ERROR_NULL;
    sd_bus_message *reply = NULL;
    const char *path = NULL;
    char *result = NULL;
    int r = sd_bus_call_method(bus, "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                               "org.freedesktop.systemd1.Manager", "GetUnitByPID", &e, &reply, "u", (uint32_t)getpid());
    if (r >= 0) r = sd_bus_message_read(reply, "o", &path);
    if (r >= 0 && path) result = strdup(path);
    *error = r < 0 ? r : 0;
    sd_bus_message_unref(reply);
    sd_bus_error_free(&e);
    return result;
}

/// Opens the system bus and finds this process's unit: 0 with *bus and *unit (the caller frees both
/// with csd_close_own_unit), or -errno.
static inline int csd_open_own_unit(sd_bus **bus, char **unit) {
    *bus = NULL;
    *unit = NULL;
    int r = sd_bus_open_system(bus);
    if (r < 0) return r;
    *unit = csd_own_unit(*bus, &r);
    return r;
}

static inline void csd_close_own_unit(sd_bus *bus, char *unit) {
    free(unit);
    sd_bus_flush_close_unref(bus);
}

/// FileDescriptorStoreMax= of the service this process runs in: >= 0, or -errno when the service manager
/// cannot be asked (no system bus, not a service).
static inline int64_t csd_fd_store_max(void) {
    sd_bus *bus;
    char *unit;
    int r = csd_open_own_unit(&bus, &unit);
    uint32_t max = 0;
    if (unit) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        r = sd_bus_get_property_trivial(bus, "org.freedesktop.systemd1", unit, "org.freedesktop.systemd1.Service",
                                        "FileDescriptorStoreMax", &e, 'u', &max);
        sd_bus_error_free(&e);
    }
    csd_close_own_unit(bus, unit);
    return r < 0 ? r : (int64_t)max;
}

/// Whether the job the service manager runs on this process's unit is a restart (1), something else or
/// none (0), or -errno when it cannot be asked. During `systemctl restart` the job's type stays
/// "restart" while the old instance is being stopped.
static inline int csd_restart_job_running(void) {
    sd_bus *bus;
    char *unit;
    int r = csd_open_own_unit(&bus, &unit);
    int answer = 0;
    if (unit) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        uint32_t id = 0;
        const char *job = NULL;
        r = sd_bus_get_property(bus, "org.freedesktop.systemd1", unit, "org.freedesktop.systemd1.Unit", "Job", &e, &reply, "(uo)");
        if (r >= 0) r = sd_bus_message_read(reply, "(uo)", &id, &job);
        if (r >= 0 && id != 0 && job) {
            char *type = NULL;
            sd_bus_error e2 = SD_BUS_ERROR_NULL;
            r = sd_bus_get_property_string(bus, "org.freedesktop.systemd1", job, "org.freedesktop.systemd1.Job", "JobType", &e2, &type);
            if (r >= 0 && type) answer = strcmp(type, "restart") == 0 || strcmp(type, "try-restart") == 0 || strcmp(type, "reload-or-restart") == 0;
            free(type);
            sd_bus_error_free(&e2);
        }
        sd_bus_message_unref(reply);
        sd_bus_error_free(&e);
    }
    csd_close_own_unit(bus, unit);
    return r < 0 ? r : answer;
}
#endif
