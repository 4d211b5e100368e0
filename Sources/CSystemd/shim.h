#ifndef CSYSTEMD_SHIM_H
#define CSYSTEMD_SHIM_H
// libsystemd: socket activation (sd_listen_fds_with_names) and service notification (sd_notify,
// sd_watchdog_enabled).
#include <systemd/sd-daemon.h>
#endif
