/* UPnP IGD over miniupnpc, off the loop thread. miniupnpc's discovery and
 * SOAP calls block, so each job runs on its own pthread and signals an
 * eventfd when done: the loop polls that fd and then reads the result. */
#ifndef PORTMAN_UPNP_H
#define PORTMAN_UPNP_H

#include <stdatomic.h>
#include <pthread.h>
#include <stddef.h>

enum pm_upnp_op {
    PM_UPNP_DISCOVER,    /* find a valid connected IGD (SSDP, or the description at desc_url) */
    PM_UPNP_EXTERNAL_IP, /* GetExternalIPAddress */
    PM_UPNP_ADD,         /* AddPortMapping */
    PM_UPNP_ADD_ANY,     /* IGDv2 AddAnyPortMapping (AddPortMapping on v1) */
    PM_UPNP_DELETE,      /* DeletePortMapping */
    PM_UPNP_GET,         /* GetSpecificPortMappingEntry */
    PM_UPNP_ENTRY,       /* GetGenericPortMappingEntry at index */
};

/* The gateway a discovery found; a job given one skips discovery (its
 * lan_addr is then worked out again: the host's address may have changed). */
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
    int external_port, internal_port, index;
    char desc_url[256]; /* the IGD's root description: no SSDP (upnpc -u) */
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
    int discovered;  /* 1: this job searched (SSDP or desc_url) for the IGD */
    int end;         /* PM_UPNP_ENTRY: index is past the last entry */
    struct pm_upnp_entry entry;
    /* private */
    int efd;
    atomic_int refs;
    pthread_t thread;
};

/* The values portman takes from the IGD's answers, as miniupnpc hands
 * them over (the SOAP answer's strings, NUL-terminated): each is parsed
 * strictly, and one that does not parse makes the call fail with the code
 * "protocol" (and nothing of it is used or saved). Pure functions. */
#define PM_UPNP_MAX_LEASE 2147483648u /* 2^31 s: UPnP's ui4, kept within an int32 */
/* A port: decimal digits only (no sign, space or suffix), 1-65535; or -1. */
int pm_upnp_parse_port(const char *s);
/* A lease duration: decimal digits only, 0-PM_UPNP_MAX_LEASE; 0 or -1. */
int pm_upnp_parse_lease(const char *s, unsigned *out);
/* A UPnP boolean ("0", "1", "false", "true", "no", "yes", any case): 0, 1 or -1. */
int pm_upnp_parse_bool(const char *s);
/* An address: a dotted quad (inet_pton); with external, also one a router
 * can be reached at (not 0/8, 127/8, multicast or reserved). 0 or -1. */
int pm_upnp_parse_ipv4(const char *s, int external);
/* A port mapping entry from GetGenericPortMappingEntry (or
 * GetSpecificPortMappingEntry, with the external port and protocol that
 * were asked): fills e and returns 0, or writes why (n bytes) and returns -1. */
int pm_upnp_parse_entry(struct pm_upnp_entry *e, const char *ext, const char *client, const char *in,
                        const char *proto, const char *desc, const char *en, const char *dur, char *why,
                        size_t n);

/* An SSDP answer (buf, len bytes, not NUL-terminated): an HTTP/1.x 200
 * response whose LOCATION header is an http:// URL of printable bytes,
 * copied to loc (n bytes with its NUL). 0, or -1 for anything else. */
int pm_upnp_parse_ssdp(const char *buf, size_t len, char *loc, size_t n);
/* The host of an http:// URL when it is a dotted quad: 0 and *addr set (network order), or -1. */
int pm_upnp_url_ipv4(const char *url, unsigned *addr);

/* Starts a copy of args on a new thread; returns it, or NULL with errno
 * set. The job's fd becomes readable when the result is ready. */
struct pm_upnp_job *pm_upnp_start(const struct pm_upnp_job *args);
/* Is the result ready? (reads the eventfd; never blocks) */
int pm_upnp_ready(struct pm_upnp_job *job);
/* Gives up the caller's share: a job still running frees itself at its end. */
void pm_upnp_release(struct pm_upnp_job *job);

#endif
