/* The c-ares engine (dns.h). c-ares 1.18.1 (Debian 12) is the floor: its
 * sockets come through ARES_OPT_SOCK_STATE_CB and are driven with
 * ares_process_fd, as Node's cares_wrap.cc does; ares_getaddrinfo gives
 * per-address TTLs; ares_parse_srv_reply gives none, so SRV TTLs are read
 * from the raw answer with libresolv's ns_initparse/ns_parserr. */
#include "dns.h"

#include <ares.h>
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <resolv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>
#include "visibility.h" /* last: see there */

struct pm_dns {
    ares_channel channel;
    int epfd;
    size_t pending;
    pm_dns_result *done, **done_tail; /* finished, not yet stepped out */
    int destroying; /* results that arrive now are dropped */
};

/* What a query carries into its c-ares callback: its result, allocated
 * when the query starts so that the callback never fails to report (the
 * result comes first, so freeing the result frees the request). */
typedef struct {
    pm_dns_result r;
    pm_dns *dns;
} request;

static pthread_once_t library_once = PTHREAD_ONCE_INIT;
static int library_status = ARES_SUCCESS;

static void library_init(void)
{
    library_status = ares_library_init(ARES_LIB_INIT_ALL);
}

/* c-ares tells us which of its sockets want reading or writing; we mirror
 * that in the epoll set so that one fd stands for all of them. */
static void sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    pm_dns *d = data;
    if (!readable && !writable) {
        epoll_ctl(d->epfd, EPOLL_CTL_DEL, fd, NULL);
        return;
    }
    struct epoll_event ev = {.events = (readable ? EPOLLIN : 0u) | (writable ? EPOLLOUT : 0u)};
    ev.data.fd = fd;
    if (epoll_ctl(d->epfd, EPOLL_CTL_MOD, fd, &ev) < 0 && errno == ENOENT)
        epoll_ctl(d->epfd, EPOLL_CTL_ADD, fd, &ev);
    /* Should ADD fail (ENOMEM), the query still ends at its timeout. */
}

pm_dns *pm_dns_new(const pm_dns_config *cfg, char *err, size_t errlen)
{
    pthread_once(&library_once, library_init);
    if (library_status != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares: %s", ares_strerror(library_status));
        return NULL;
    }
    pm_dns *d = calloc(1, sizeof(*d));
    if (!d) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    d->done_tail = &d->done;
    d->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (d->epfd < 0) {
        snprintf(err, errlen, "epoll_create1: %s", strerror(errno));
        free(d);
        return NULL;
    }
    struct ares_options o;
    memset(&o, 0, sizeof(o));
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_LOOKUPS;
    o.sock_state_cb = sock_state;
    o.sock_state_cb_data = d;
    /* DNS only: the Lua layer answers literals and the hosts file itself. */
    o.lookups = (char *)"b";
    if (cfg->timeout_ms > 0) {
        o.timeout = cfg->timeout_ms;
        mask |= ARES_OPT_TIMEOUTMS;
    }
#ifdef ARES_OPT_QUERY_CACHE
    /* c-ares 1.23+ caches answers by default; only portman's cache caches. */
    o.qcache_max_ttl = 0;
    mask |= ARES_OPT_QUERY_CACHE;
#endif
    if (cfg->tries > 0) {
        o.tries = cfg->tries;
        mask |= ARES_OPT_TRIES;
    }
    int rc = ares_init_options(&d->channel, &o, mask);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "ares_init_options: %s", ares_strerror(rc));
        close(d->epfd);
        free(d);
        return NULL;
    }
    /* Set once, before any query: c-ares 1.18.1 refuses while busy. */
    if (cfg->servers && (rc = ares_set_servers_ports_csv(d->channel, cfg->servers)) != ARES_SUCCESS) {
        snprintf(err, errlen, "servers '%s': %s", cfg->servers, ares_strerror(rc));
        ares_destroy(d->channel);
        close(d->epfd);
        free(d);
        return NULL;
    }
    return d;
}

void pm_dns_free(pm_dns *d)
{
    if (!d)
        return;
    d->destroying = 1;
    ares_destroy(d->channel); /* calls back every query with ARES_EDESTRUCTION */
    pm_dns_results_free(d->done);
    close(d->epfd);
    free(d);
}

int pm_dns_fd(const pm_dns *d) { return d->epfd; }

size_t pm_dns_pending(const pm_dns *d) { return d->pending; }

int pm_dns_timeout(pm_dns *d)
{
    if (d->done)
        return 0;
    struct timeval tv, *t = ares_timeout(d->channel, NULL, &tv);
    if (!t)
        return -1;
    long ms = (long)t->tv_sec * 1000 + (t->tv_usec + 999) / 1000;
    return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}

/* Queues a finished query for the next step. */
static void finish(request *q)
{
    pm_dns *d = q->dns;
    d->pending--;
    if (d->destroying) {
        pm_dns_results_free(&q->r);
        return;
    }
    *d->done_tail = &q->r;
    d->done_tail = &q->r.next;
}

/* A result whose records could not be allocated. */
static pm_dns_result *oom_result(pm_dns_result *r)
{
    free(r->addrs);
    free(r->srvs);
    r->addrs = NULL;
    r->srvs = NULL;
    r->n = 0;
    r->status = ARES_ENOMEM;
    return r;
}

static uint32_t ttl_of(int ttl) { return ttl < 0 ? 0 : (uint32_t)ttl; }

static void addrinfo_done(void *arg, int status, int timeouts, struct ares_addrinfo *ai)
{
    (void)timeouts;
    request *q = arg;
    pm_dns_result *r = &q->r;
    r->status = status;
    if (status == ARES_SUCCESS && ai) {
        /* An address is only as fresh as the CNAMEs that led to it. */
        uint32_t chain = UINT32_MAX;
        for (struct ares_addrinfo_cname *c = ai->cnames; c; c = c->next)
            if (ttl_of(c->ttl) < chain)
                chain = ttl_of(c->ttl);
        size_t n = 0;
        for (struct ares_addrinfo_node *node = ai->nodes; node; node = node->ai_next)
            n++;
        r->addrs = n ? calloc(n, sizeof(*r->addrs)) : NULL;
        if (n && !r->addrs) {
            oom_result(r);
        } else {
            for (struct ares_addrinfo_node *node = ai->nodes; node; node = node->ai_next) {
                pm_dns_addr *a = &r->addrs[r->n];
                const void *src;
                if (node->ai_family == AF_INET)
                    src = &((struct sockaddr_in *)(void *)node->ai_addr)->sin_addr;
                else if (node->ai_family == AF_INET6)
                    src = &((struct sockaddr_in6 *)(void *)node->ai_addr)->sin6_addr;
                else
                    continue;
                if (!inet_ntop(node->ai_family, src, a->address, sizeof(a->address)))
                    continue;
                a->family = node->ai_family;
                a->ttl = ttl_of(node->ai_ttl) < chain ? ttl_of(node->ai_ttl) : chain;
                r->n++;
            }
            if (r->n == 0)
                r->status = ARES_ENODATA;
        }
    }
    ares_freeaddrinfo(ai);
    finish(q);
}

/* The TTLs of the answer section, read with libresolv: SRV records' own in
 * answer order (the order ares_parse_srv_reply keeps), and the smallest
 * CNAME TTL on the way. Returns the number of SRV TTLs stored, or -1. */
static int srv_ttls(const unsigned char *abuf, int alen, uint32_t *ttls, size_t max,
                    uint32_t *chain)
{
    ns_msg msg;
    if (ns_initparse(abuf, alen, &msg) < 0)
        return -1;
    int count = ns_msg_count(msg, ns_s_an);
    size_t n = 0;
    *chain = UINT32_MAX;
    for (int i = 0; i < count; i++) {
        ns_rr rr;
        if (ns_parserr(&msg, ns_s_an, i, &rr) < 0)
            return -1;
        if (ns_rr_class(rr) != ns_c_in)
            continue;
        if (ns_rr_type(rr) == ns_t_cname && ns_rr_ttl(rr) < *chain)
            *chain = ns_rr_ttl(rr);
        else if (ns_rr_type(rr) == ns_t_srv && n < max)
            ttls[n++] = ns_rr_ttl(rr);
    }
    return (int)n;
}

static void srv_fill(pm_dns_result *r, const unsigned char *abuf, int alen)
{
    struct ares_srv_reply *list = NULL;
    int status = ares_parse_srv_reply(abuf, alen, &list);
    if (status != ARES_SUCCESS) {
        /* A reply that does not parse (EBADNAME, EBADRESP, ...) is the
         * server's fault, whatever word the parser chose for it. */
        r->status = status == ARES_ENODATA || status == ARES_ENOMEM ? status : ARES_EBADRESP;
        return;
    }
    size_t n = 0;
    for (struct ares_srv_reply *s = list; s; s = s->next)
        n++;
    uint32_t *ttls = n ? calloc(n, sizeof(*ttls)) : NULL;
    r->srvs = n ? calloc(n, sizeof(*r->srvs)) : NULL;
    if (n && (!ttls || !r->srvs)) {
        free(ttls);
        ares_free_data(list);
        oom_result(r);
        return;
    }
    uint32_t chain;
    if (srv_ttls(abuf, alen, ttls, n, &chain) != (int)n) {
        /* c-ares and libresolv disagree on the answer: treat it as bad. */
        free(ttls);
        ares_free_data(list);
        free(r->srvs);
        r->srvs = NULL;
        r->status = ARES_EBADRESP;
        return;
    }
    for (struct ares_srv_reply *s = list; s; s = s->next, r->n++) {
        pm_dns_srv_record *out = &r->srvs[r->n];
        snprintf(out->target, sizeof(out->target), "%s", s->host);
        out->port = s->port;
        out->priority = s->priority;
        out->weight = s->weight;
        out->ttl = ttls[r->n] < chain ? ttls[r->n] : chain;
    }
    free(ttls);
    ares_free_data(list);
    if (r->n == 0)
        r->status = ARES_ENODATA;
}

static void srv_done(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    (void)timeouts;
    request *q = arg;
    q->r.status = status;
    if (status == ARES_SUCCESS)
        srv_fill(&q->r, abuf, alen);
    finish(q);
}

static request *new_request(pm_dns *d, uint64_t id, int kind)
{
    request *q = calloc(1, sizeof(*q));
    if (!q) {
        errno = ENOMEM;
        return NULL;
    }
    q->dns = d;
    q->r.id = id;
    q->r.kind = kind;
    d->pending++;
    return q;
}

int pm_dns_resolve(pm_dns *d, const char *name, int family, uint64_t id)
{
    request *q = new_request(d, id, PM_DNS_ADDR);
    if (!q)
        return -1;
    struct ares_addrinfo_hints hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = family;
    /* No RFC 6724 sort: it connects a UDP socket per address, and the Lua
     * layer orders addresses itself (RFC 8305). */
    hints.ai_flags = ARES_AI_NOSORT;
    hints.ai_socktype = SOCK_STREAM; /* one node per address, not per socket type */
    ares_getaddrinfo(d->channel, name, NULL, &hints, addrinfo_done, q);
    return 0;
}

int pm_dns_srv(pm_dns *d, const char *name, uint64_t id)
{
    request *q = new_request(d, id, PM_DNS_SRV);
    if (!q)
        return -1;
    ares_query(d->channel, name, ns_c_in, ns_t_srv, srv_done, q);
    return 0;
}

pm_dns_result *pm_dns_step(pm_dns *d)
{
    struct epoll_event ev[64];
    int n, rounds = 0;
    do {
        n = epoll_wait(d->epfd, ev, 64, 0);
        for (int i = 0; i < n; i++) {
            ares_socket_t fd = ev[i].data.fd;
            /* An error (ICMP port unreachable) shows on the next read. */
            int r = ev[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP);
            int w = ev[i].events & EPOLLOUT;
            ares_process_fd(d->channel, r ? fd : ARES_SOCKET_BAD, w ? fd : ARES_SOCKET_BAD);
        }
    } while (n == 64 && ++rounds < 16);
    /* Timeouts and retries: c-ares checks them on every call. */
    ares_process_fd(d->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    pm_dns_result *r = d->done;
    d->done = NULL;
    d->done_tail = &d->done;
    return r;
}

void pm_dns_results_free(pm_dns_result *r)
{
    while (r) {
        pm_dns_result *next = r->next;
        free(r->addrs);
        free(r->srvs);
        free(r);
        r = next;
    }
}

const char *pm_dns_status_code(int status)
{
    switch (status) {
    case ARES_SUCCESS:
        return "ok";
    case ARES_ENODATA:
    case ARES_ENOTFOUND:
    case ARES_ENONAME:
    case ARES_EBADNAME:
        return "not_found";
    case ARES_ETIMEOUT:
        return "timeout";
    case ARES_EREFUSED:
    case ARES_ECONNREFUSED:
    case ARES_ESERVFAIL: /* the server declined to give an answer */
        return "refused";
    case ARES_ECANCELLED:
    case ARES_EDESTRUCTION:
        return "closed";
    case ARES_ENOMEM:
        return "ENOMEM";
    case ARES_EFORMERR:
    case ARES_ENOTIMP:
    case ARES_EBADRESP:
    case ARES_EBADQUERY:
    case ARES_EBADFAMILY:
    case ARES_EOF:
        return "protocol";
    default:
        return "unreachable";
    }
}

const char *pm_dns_status_text(int status)
{
    switch (status) {
    case ARES_ENODATA:
        return "no record of that type";
    case ARES_ENOTFOUND:
        return "no such name (NXDOMAIN)";
    case ARES_ESERVFAIL:
        return "server failure (SERVFAIL)";
    case ARES_EREFUSED:
        return "query refused (REFUSED)";
    case ARES_ECONNREFUSED:
        return "connection refused";
    case ARES_ETIMEOUT:
        return "no answer before the timeout";
    default:
        return ares_strerror(status);
    }
}
