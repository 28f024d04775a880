/* UPnP IGD over miniupnpc, off the loop thread. miniupnpc's discovery and
 * SOAP calls block, so each job runs on its own pthread and signals an
 * eventfd when done: the loop polls that fd and then reads the result. */
#ifndef PORTMAN_UPNP_H
#define PORTMAN_UPNP_H

#include <stdatomic.h>
#include <pthread.h>

enum pm_upnp_op {
    PM_UPNP_DISCOVER,    /* find a valid connected IGD */
    PM_UPNP_EXTERNAL_IP, /* GetExternalIPAddress */
    PM_UPNP_ADD,         /* AddPortMapping */
    PM_UPNP_ADD_ANY,     /* IGDv2 AddAnyPortMapping (AddPortMapping on v1) */
    PM_UPNP_DELETE,      /* DeletePortMapping */
    PM_UPNP_GET,         /* GetSpecificPortMappingEntry */
    PM_UPNP_LIST,        /* GetGenericPortMappingEntry, index 0 up */
};

/* The gateway a discovery found; a job given one skips discovery. */
struct pm_upnp_igd {
    char control_url[256];
    char service_type[128];
    char lan_addr[64];
};

struct pm_upnp_entry {
    int external_port, internal_port, enabled;
    unsigned lease;
    char proto[8], internal_ip[64], desc[96];
};

struct pm_upnp_job {
    /* in */
    int op, timeout_ms, have_igd;
    int external_port, internal_port;
    unsigned lease;
    char proto[4], internal_ip[64], desc[80];
    /* in and out: the IGD used (found again when the cached one failed) */
    struct pm_upnp_igd igd;
    /* out */
    int status;      /* 0, a UPnP error code (> 0) or a miniupnpc one (< 0) */
    const char *code; /* the code word (docs/design.md, "Errors") when status != 0 */
    char msg[160];
    char external_ip[64];
    int got_port;    /* the external port AddAnyPortMapping gave */
    struct pm_upnp_entry entry;
    struct pm_upnp_entry *entries;
    int n_entries;
    /* private */
    int efd;
    atomic_int refs;
    pthread_t thread;
};

/* Starts a copy of args on a new thread; returns it, or NULL with errno
 * set. The job's fd becomes readable when the result is ready. */
struct pm_upnp_job *pm_upnp_start(const struct pm_upnp_job *args);
/* Is the result ready? (reads the eventfd; never blocks) */
int pm_upnp_ready(struct pm_upnp_job *job);
/* Gives up the caller's share: a job still running frees itself at its end. */
void pm_upnp_release(struct pm_upnp_job *job);

#endif
