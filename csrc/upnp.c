/* UPnP IGD jobs on worker threads (see upnp.h). */
#include "upnp.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <miniupnpc/miniupnpc.h>
#include <miniupnpc/upnpcommands.h>
#include <miniupnpc/upnperrors.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "visibility.h" /* last: see there */

#define MAX_ENTRIES 4096


/* The decimal number that is the whole of s (1-10 digits), at most max; or -1. */
static int parse_uint(const char *s, unsigned long max, unsigned long *out)
{
    unsigned long v = 0;
    size_t i = 0;
    for (; s[i]; i++) {
        if (s[i] < '0' || s[i] > '9' || i >= 10) return -1;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (i == 0 || v > max) return -1;
    *out = v;
    return 0;
}

int pm_upnp_parse_port(const char *s)
{
    unsigned long v;
    if (parse_uint(s, 65535, &v) < 0 || v == 0) return -1;
    return (int)v;
}

int pm_upnp_parse_lease(const char *s, unsigned *out)
{
    unsigned long v;
    if (parse_uint(s, PM_UPNP_MAX_LEASE, &v) < 0) return -1;
    *out = (unsigned)v;
    return 0;
}

int pm_upnp_parse_bool(const char *s)
{
    static const char *const words[] = {"0", "1", "false", "true", "no", "yes"};
    for (int i = 0; i < 6; i++)
        if (strcasecmp(s, words[i]) == 0) return i % 2;
    return -1;
}

int pm_upnp_parse_ipv4(const char *s, int external)
{
    struct in_addr a;
    if (inet_pton(AF_INET, s, &a) != 1) return -1;
    unsigned top = ntohl(a.s_addr) >> 24;
    if (external && (top == 0 || top == 127 || top >= 224)) return -1;
    return 0;
}

int pm_upnp_parse_entry(struct pm_upnp_entry *e, const char *ext, const char *client, const char *in,
                        const char *proto, const char *desc, const char *en, const char *dur, char *why,
                        size_t n)
{
    memset(e, 0, sizeof *e);
    const char *field = NULL;
    int enabled = pm_upnp_parse_bool(en);
    e->external_port = pm_upnp_parse_port(ext);
    e->internal_port = pm_upnp_parse_port(in);
    if (e->external_port < 0) field = "external port";
    else if (e->internal_port < 0) field = "internal port";
    else if (pm_upnp_parse_ipv4(client, 0) < 0) field = "internal client";
    else if (strcasecmp(proto, "TCP") != 0 && strcasecmp(proto, "UDP") != 0) field = "protocol";
    else if (enabled < 0) field = "enabled flag";
    else if (pm_upnp_parse_lease(dur, &e->lease) < 0) field = "lease duration";
    if (field) {
        memset(e, 0, sizeof *e);
        snprintf(why, n, "bad %s in the IGD's answer", field);
        return -1;
    }
    e->enabled = enabled;
    snprintf(e->proto, sizeof e->proto, "%s", toupper((unsigned char)proto[0]) == 'U' ? "UDP" : "TCP");
    snprintf(e->internal_ip, sizeof e->internal_ip, "%s", client);
    snprintf(e->desc, sizeof e->desc, "%s", desc);
    return 0;
}

static void fail(struct pm_upnp_job *j, int status, const char *code, const char *what)
{
    j->status = status;
    j->code = code;
    snprintf(j->msg, sizeof j->msg, "%s", what);
}

/* The code word (docs/design.md, "Errors") for a UPnP error code or a miniupnpc failure. */
static const char *code_of(int status)
{
    switch (status) {
    case 606: return "denied";
    case 718: case 729: return "conflict";
    case 713: case 714: case 730: return "not_found";
    case 728: return "exhausted";
    case 725: case 401: case 602: return "unsupported";
    case UPNPCOMMAND_HTTP_ERROR: return "unreachable";
    default: return "protocol";
    }
}

static void fail_status(struct pm_upnp_job *j, int status, const char *call)
{
    const char *s = strupnperror(status);
    j->status = status;
    j->code = code_of(status);
    snprintf(j->msg, sizeof j->msg, "%s failed: %d %s", call, status, s ? s : "error");
}

/* Finds a valid, connected IGD; fills j->igd. */
static int discover(struct pm_upnp_job *j)
{
    int err = 0;
    int delay = j->timeout_ms > 0 ? j->timeout_ms : 2000;
    /* one search type: upnpDiscover waits `delay` for each of four, and an
     * IGDv2 answers a search for v1 too (a device answers lower versions) */
    struct UPNPDev *devs = upnpDiscoverDevice("urn:schemas-upnp-org:device:InternetGatewayDevice:1", delay, NULL,
                                              NULL, UPNP_LOCAL_PORT_ANY, 0, 2, &err);
    if (!devs) {
        fail(j, -1, "not_found", "no UPnP device answered the discovery");
        return -1;
    }
    struct UPNPUrls urls;
    struct IGDdatas data;
    char lan[64] = "";
    memset(&urls, 0, sizeof urls);
    memset(&data, 0, sizeof data);
#if MINIUPNPC_API_VERSION >= 18
    char wan[64] = "";
    int r = UPNP_GetValidIGD(devs, &urls, &data, lan, sizeof lan, wan, sizeof wan);
    /* API 18: 1 connected, 2 connected with a reserved address, 3 not connected, 4 not an IGD */
    int connected = r == 1 || r == 2, unconnected = r == 3;
#else
    int r = UPNP_GetValidIGD(devs, &urls, &data, lan, sizeof lan);
    /* API 17: 1 connected, 2 not connected, 3 not an IGD */
    int connected = r == 1, unconnected = r == 2;
#endif
    freeUPNPDevlist(devs);
    if (!connected) {
        if (r) FreeUPNPUrls(&urls);
        if (unconnected) fail(j, -1, "unreachable", "the IGD reports it is not connected");
        else fail(j, -1, "not_found", "no valid Internet Gateway Device found");
        return -1;
    }
    snprintf(j->igd.control_url, sizeof j->igd.control_url, "%s", urls.controlURL);
    snprintf(j->igd.service_type, sizeof j->igd.service_type, "%s", data.first.servicetype);
    snprintf(j->igd.lan_addr, sizeof j->igd.lan_addr, "%s", lan);
    FreeUPNPUrls(&urls);
    j->have_igd = 1;
    return 0;
}

static int list(struct pm_upnp_job *j)
{
    const char *url = j->igd.control_url, *st = j->igd.service_type;
    for (int i = 0; i < MAX_ENTRIES; i++) {
        char idx[16], ext[16] = "", client[64] = "", in[16] = "", proto[8] = "", desc[96] = "",
             en[8] = "", rhost[80] = "", dur[24] = "";
        snprintf(idx, sizeof idx, "%d", i);
        int r = UPNP_GetGenericPortMappingEntry(url, st, idx, ext, client, in, proto, desc, en, rhost, dur);
        if (r == 713 || r == 714 || (r == 402 && i > 0)) return 0; /* past the last entry */
        if (r != UPNPCOMMAND_SUCCESS) {
            fail_status(j, r, "GetGenericPortMappingEntry");
            return r;
        }
        struct pm_upnp_entry *grown = realloc(j->entries, (size_t)(i + 1) * sizeof *grown);
        if (!grown) {
            fail(j, -1, "ENOMEM", "out of memory");
            return -1;
        }
        j->entries = grown;
        char why[64];
        if (pm_upnp_parse_entry(&grown[i], ext, client, in, proto, desc, en, dur, why,
                                sizeof why) < 0) {
            snprintf(j->msg, sizeof j->msg, "GetGenericPortMappingEntry %d: %s", i, why);
            j->status = -1;
            j->code = "protocol";
            return -1;
        }
        j->n_entries = i + 1;
    }
    return 0;
}

/* One call against j->igd; its UPnP or miniupnpc status. */
static int call(struct pm_upnp_job *j)
{
    const char *url = j->igd.control_url, *st = j->igd.service_type;
    char ext[16], in[16], lease[16];
    snprintf(ext, sizeof ext, "%d", j->external_port);
    snprintf(in, sizeof in, "%d", j->internal_port);
    snprintf(lease, sizeof lease, "%u", j->lease);
    const char *client = j->internal_ip[0] ? j->internal_ip : j->igd.lan_addr;
    const char *desc = j->desc[0] ? j->desc : "portman";
    int r;
    switch (j->op) {
    case PM_UPNP_DISCOVER:
        return 0;
    case PM_UPNP_EXTERNAL_IP:
        r = UPNP_GetExternalIPAddress(url, st, j->external_ip);
        if (r == 0 && !j->external_ip[0]) {
            fail(j, -1, "not_found", "the IGD has no external address");
            return -1;
        }
        if (r == 0 && pm_upnp_parse_ipv4(j->external_ip, 1) < 0) {
            j->external_ip[0] = 0;
            fail(j, -1, "protocol", "GetExternalIPAddress: bad external address in the IGD's answer");
            return -1;
        }
        if (r) fail_status(j, r, "GetExternalIPAddress");
        return r;
    case PM_UPNP_ADD:
        r = UPNP_AddPortMapping(url, st, ext, in, client, desc, j->proto, NULL, lease);
        if (r) fail_status(j, r, "AddPortMapping");
        else j->got_port = j->external_port;
        return r;
    case PM_UPNP_ADD_ANY: {
        if (!strstr(st, ":2")) { /* IGDv1 has no AddAnyPortMapping */
            fail(j, 401, "unsupported", "the IGD does not offer AddAnyPortMapping (IGDv1)");
            return 401;
        }
        char got[16] = "";
        r = UPNP_AddAnyPortMapping(url, st, ext, in, client, desc, j->proto, NULL, lease, got);
        if (r) {
            fail_status(j, r, "AddAnyPortMapping");
            return r;
        }
        /* the router made a mapping on a port it did not say right: it
         * lapses at the end of its lease (nothing here can name it) */
        j->got_port = pm_upnp_parse_port(got);
        if (j->got_port < 0) {
            j->got_port = 0;
            fail(j, -1, "protocol", "AddAnyPortMapping: bad reserved port in the IGD's answer");
            return -1;
        }
        return 0;
    }
    case PM_UPNP_DELETE:
        r = UPNP_DeletePortMapping(url, st, ext, j->proto, NULL);
        if (r) fail_status(j, r, "DeletePortMapping");
        return r;
    case PM_UPNP_GET: {
        char iclient[64] = "", iport[16] = "", idesc[96] = "", en[8] = "", dur[24] = "";
        r = UPNP_GetSpecificPortMappingEntry(url, st, ext, j->proto, NULL, iclient, iport, idesc, en, dur);
        if (r) {
            fail_status(j, r, "GetSpecificPortMappingEntry");
            return r;
        }
        char why[64];
        if (pm_upnp_parse_entry(&j->entry, ext, iclient, iport, j->proto, idesc, en, dur, why, sizeof why) < 0) {
            snprintf(j->msg, sizeof j->msg, "GetSpecificPortMappingEntry: %s", why);
            j->status = -1;
            j->code = "protocol";
            return -1;
        }
        return 0;
    }
    case PM_UPNP_LIST:
        return list(j);
    default:
        fail(j, -1, "protocol", "unknown operation");
        return -1;
    }
}

static void run(struct pm_upnp_job *j)
{
    int cached = j->have_igd;
    if (!cached && discover(j)) return;
    int r = call(j);
    /* a cached IGD that no longer answers (a router restart moves its HTTP
     * port): find it again and retry once */
    if (r < 0 && cached && j->code && strcmp(j->code, "unreachable") == 0) {
        j->status = 0;
        j->code = NULL;
        j->msg[0] = 0;
        j->have_igd = 0;
        if (discover(j)) return;
        free(j->entries);
        j->entries = NULL;
        j->n_entries = 0;
        call(j);
    }
}

static void drop(struct pm_upnp_job *j)
{
    if (atomic_fetch_sub(&j->refs, 1) != 1) return;
    close(j->efd);
    free(j->entries);
    free(j);
}

static void *worker(void *arg)
{
    struct pm_upnp_job *j = arg;
    run(j);
    uint64_t one = 1;
    /* the write publishes the result: the loop reads the fd before the job */
    ssize_t n = write(j->efd, &one, sizeof one);
    (void)n;
    drop(j);
    return NULL;
}

struct pm_upnp_job *pm_upnp_start(const struct pm_upnp_job *args)
{
    struct pm_upnp_job *j = malloc(sizeof *j);
    if (!j) return NULL;
    *j = *args;
    j->status = 0;
    j->code = NULL;
    j->msg[0] = 0;
    j->entries = NULL;
    j->n_entries = 0;
    j->got_port = 0;
    j->external_ip[0] = 0;
    j->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (j->efd < 0) {
        int e = errno;
        free(j);
        errno = e;
        return NULL;
    }
    atomic_init(&j->refs, 2);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int e = pthread_create(&j->thread, &attr, worker, j);
    pthread_attr_destroy(&attr);
    if (e) {
        close(j->efd);
        free(j);
        errno = e;
        return NULL;
    }
    return j;
}

int pm_upnp_ready(struct pm_upnp_job *j)
{
    uint64_t v;
    return read(j->efd, &v, sizeof v) == (ssize_t)sizeof v;
}

void pm_upnp_release(struct pm_upnp_job *j)
{
    drop(j);
}
