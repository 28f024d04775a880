/* UPnP IGD jobs on worker threads (see upnp.h). */
#include "upnp.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <miniupnpc/miniupnpc.h>
#include <miniupnpc/upnpcommands.h>
#include <miniupnpc/upnperrors.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "visibility.h" /* last: see there */


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

int pm_upnp_url_ipv4(const char *url, unsigned *addr)
{
    if (strncasecmp(url, "http://", 7) != 0) return -1;
    const char *h = url + 7;
    size_t n = strcspn(h, ":/");
    char host[INET_ADDRSTRLEN];
    if (n == 0 || n >= sizeof host) return -1;
    memcpy(host, h, n);
    host[n] = 0;
    struct in_addr a;
    if (inet_pton(AF_INET, host, &a) != 1) return -1;
    *addr = a.s_addr;
    return 0;
}

int pm_upnp_parse_ssdp(const char *buf, size_t len, char *loc, size_t n)
{
    if (len < 12 || strncasecmp(buf, "HTTP/1.", 7) != 0 || memcmp(buf + 8, " 200", 4) != 0) return -1;
    size_t i = 0;
    while (i < len) {
        size_t e = i;
        while (e < len && buf[e] != '\n') e++;
        size_t end = e > i && buf[e - 1] == '\r' ? e - 1 : e; /* the line is buf[i, end) */
        if (end - i > 9 && strncasecmp(buf + i, "LOCATION:", 9) == 0) {
            size_t v = i + 9;
            while (v < end && (buf[v] == ' ' || buf[v] == '\t')) v++;
            while (end > v && (buf[end - 1] == ' ' || buf[end - 1] == '\t')) end--;
            size_t vlen = end - v;
            if (vlen <= 7 || vlen >= n || strncasecmp(buf + v, "http://", 7) != 0) return -1;
            for (size_t k = v; k < end; k++)
                if ((unsigned char)buf[k] < 0x21 || (unsigned char)buf[k] > 0x7e) return -1;
            memcpy(loc, buf + v, vlen);
            loc[vlen] = 0;
            return 0;
        }
        i = e + 1;
    }
    return -1;
}

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* The IGD described at url, when it is one with a WAN connection service
 * that reports itself connected: fills j->igd. 0, or -1 (j's error set). */
static int use_description(struct pm_upnp_job *j, const char *url, int check_connected)
{
    struct UPNPUrls urls;
    struct IGDdatas data;
    char lan[64] = "";
    memset(&urls, 0, sizeof urls);
    memset(&data, 0, sizeof data);
    if (!UPNP_GetIGDFromUrl(url, &urls, &data, lan, sizeof lan)) {
        fail(j, -1, "unreachable", "the IGD's description could not be read");
        return -1;
    }
    int ok = urls.controlURL && urls.controlURL[0] && data.first.servicetype[0] &&
             strlen(urls.controlURL) < sizeof j->igd.control_url &&
             strlen(data.first.servicetype) < sizeof j->igd.service_type && pm_upnp_parse_ipv4(lan, 0) == 0;
    if (!ok) {
        FreeUPNPUrls(&urls);
        fail(j, -1, "not_found", "no WAN connection service in the IGD's description");
        return -1;
    }
    if (check_connected && !UPNPIGD_IsConnected(&urls, &data)) {
        FreeUPNPUrls(&urls);
        fail(j, -1, "unreachable", "the IGD reports it is not connected");
        return -1;
    }
    snprintf(j->igd.control_url, sizeof j->igd.control_url, "%s", urls.controlURL);
    snprintf(j->igd.service_type, sizeof j->igd.service_type, "%s", data.first.servicetype);
    snprintf(j->igd.lan_addr, sizeof j->igd.lan_addr, "%s", lan);
    FreeUPNPUrls(&urls);
    j->have_igd = 1;
    j->status = 0; /* an earlier answer's failure is not this one's */
    j->code = NULL;
    j->msg[0] = 0;
    return 0;
}

#define SSDP_FIRST_MS 250 /* the first window: a router on the LAN answers well within it */
#define SSDP_TRIED 8

/* SSDP: an M-SEARCH for an IGD, sent again after SSDP_FIRST_MS and then
 * every second until j->timeout_ms; each answer's description is read
 * (only from the address that answered) and the first connected IGD ends
 * the search at once. 0, or -1 (j's error set). */
static int ssdp_search(struct pm_upnp_job *j)
{
    static const char msearch[] = "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n"
                                  "ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
                                  "MAN: \"ssdp:discover\"\r\nMX: 1\r\n\r\n";
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        char why[96];
        snprintf(why, sizeof why, "SSDP socket: %s", strerror(errno));
        fail(j, -1, "unreachable", why);
        return -1;
    }
    struct sockaddr_in to;
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_port = htons(1900);
    inet_pton(AF_INET, "239.255.255.250", &to.sin_addr);
    unsigned char ttl = 2;
    setsockopt(s, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl);
    char tried[SSDP_TRIED][256];
    int ntried = 0, sent = 0, answered = 0;
    int64_t start = now_ms(), deadline = start + (j->timeout_ms > 0 ? j->timeout_ms : 2000), next_send = start;
    for (;;) {
        int64_t t = now_ms();
        if (t >= deadline) break;
        if (t >= next_send) {
            if (sendto(s, msearch, sizeof msearch - 1, 0, (struct sockaddr *)&to, sizeof to) > 0) sent++;
            next_send = t + (sent <= 1 ? SSDP_FIRST_MS : 1000);
        }
        int64_t until = next_send < deadline ? next_send : deadline;
        struct pollfd p = {.fd = s, .events = POLLIN};
        if (poll(&p, 1, (int)(until - t)) <= 0) continue;
        char buf[1536], loc[256];
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        unsigned host;
        if (n <= 0 || pm_upnp_parse_ssdp(buf, (size_t)n, loc, sizeof loc) < 0) continue;
        /* a LOCATION elsewhere than the answering host is not followed */
        if (pm_upnp_url_ipv4(loc, &host) < 0 || host != from.sin_addr.s_addr) continue;
        int seen = 0;
        for (int i = 0; i < ntried; i++) seen |= strcmp(tried[i], loc) == 0;
        if (seen || ntried == SSDP_TRIED) continue;
        snprintf(tried[ntried++], sizeof tried[0], "%s", loc);
        answered = 1;
        if (use_description(j, loc, 1) == 0) {
            close(s);
            return 0;
        }
    }
    close(s);
    if (!answered) fail(j, -1, "not_found", "no UPnP device answered the discovery");
    else if (!j->code) fail(j, -1, "not_found", "no valid Internet Gateway Device found");
    return -1;
}

/* Finds the IGD: at desc_url when given, else by SSDP; fills j->igd. */
static int discover(struct pm_upnp_job *j)
{
    j->discovered = 1;
    if (j->desc_url[0]) return use_description(j, j->desc_url, 0);
    return ssdp_search(j);
}

/* A known IGD: the address this host reaches it from now (a UDP connect
 * sends nothing). 0, or -1 when its host cannot be reached. */
static int local_addr_for(struct pm_upnp_job *j)
{
    unsigned host;
    if (pm_upnp_url_ipv4(j->igd.control_url, &host) < 0) return -1;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(1900);
    a.sin_addr.s_addr = host;
    socklen_t len = sizeof a;
    int r = connect(s, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(s, (struct sockaddr *)&a, &len) == 0 &&
            inet_ntop(AF_INET, &a.sin_addr, j->igd.lan_addr, sizeof j->igd.lan_addr) ? 0 : -1;
    close(s);
    return r;
}

/* GetGenericPortMappingEntry at j->index: j->entry, or j->end past the last. */
static int entry_at(struct pm_upnp_job *j)
{
    const char *url = j->igd.control_url, *st = j->igd.service_type;
    char idx[16], ext[16] = "", client[64] = "", in[16] = "", proto[8] = "", desc[96] = "", en[8] = "",
         rhost[80] = "", dur[24] = "";
    snprintf(idx, sizeof idx, "%d", j->index);
    int r = UPNP_GetGenericPortMappingEntry(url, st, idx, ext, client, in, proto, desc, en, rhost, dur);
    if (r == 713 || r == 714 || (r == 402 && j->index > 0)) { /* past the last entry */
        j->end = 1;
        return 0;
    }
    if (r != UPNPCOMMAND_SUCCESS) {
        fail_status(j, r, "GetGenericPortMappingEntry");
        return r;
    }
    char why[64];
    if (pm_upnp_parse_entry(&j->entry, ext, client, in, proto, desc, en, dur, why, sizeof why) < 0) {
        snprintf(j->msg, sizeof j->msg, "GetGenericPortMappingEntry %d: %s", j->index, why);
        j->status = -1;
        j->code = "protocol";
        return -1;
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
    case PM_UPNP_ENTRY:
        return entry_at(j);
    default:
        fail(j, -1, "protocol", "unknown operation");
        return -1;
    }
}

static void run(struct pm_upnp_job *j)
{
    int cached = j->have_igd && local_addr_for(j) == 0;
    if (!cached && discover(j)) return;
    int r = call(j);
    /* a known IGD that no longer answers (a router restart moves its HTTP
     * port): find it again and retry once */
    if (r < 0 && cached && j->code && strcmp(j->code, "unreachable") == 0) {
        j->status = 0;
        j->code = NULL;
        j->msg[0] = 0;
        j->have_igd = 0;
        if (discover(j)) return;
        call(j);
    }
}

static void drop(struct pm_upnp_job *j)
{
    if (atomic_fetch_sub(&j->refs, 1) != 1) return;
    close(j->efd);
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
    j->got_port = 0;
    j->discovered = 0;
    j->end = 0;
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
