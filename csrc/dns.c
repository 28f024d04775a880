/* The c-ares engine (dns.h). c-ares 1.18.1 (Debian 12) is the floor: its
 * sockets come through ARES_OPT_SOCK_STATE_CB and are driven with
 * ares_process_fd, as Node's cares_wrap.cc does. One family's addresses
 * are one ares_search whose raw answer is read here (pm_dns_parse_addrs):
 * ares_getaddrinfo, which gives TTLs too, costs several times as much per
 * name in allocations, parsing and formatting (it stays for AF_UNSPEC).
 * ares_parse_srv_reply gives no TTLs, so SRV TTLs are read from the raw
 * answer with libresolv's ns_initparse/ns_parserr. */
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
#include <time.h>
#include <unistd.h>
#include "visibility.h" /* last: see there */

typedef struct request request;

struct pm_dns {
    ares_channel channel;
    int epfd;
    size_t inflight, waiting, max_inflight; /* max 0: no limit */
    request *wait_head, **wait_tail; /* waiting for room on the wire */
    pm_dns_result *done, **done_tail; /* finished, not yet stepped out */
    int destroying; /* results that arrive now are dropped */
    /* ares_timeout walks every query in flight, so pm_dns_timeout keeps
     * its answer as a time (ms, CLOCK_MONOTONIC; -1: none kept) and bounds
     * it by what was sent since: a query sent at t times out at t +
     * base_ms at the earliest (c-ares doubles the timeout per round). */
    int64_t deadline, send_bound;
    int base_ms;
};

/* What a query carries into its c-ares callback: its result, allocated
 * when the query starts so that the callback never fails to report (the
 * result comes first, so freeing the result frees the request), and its
 * name, kept while it waits for room. */
struct request {
    pm_dns_result r;
    pm_dns *dns;
    int family;
    request *next_wait;
    char name[];
};

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

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The first try's timeout the channel settled on (ours, or resolv.conf's,
 * or c-ares' default); when it will not say, 100 ms: steps come early
 * (ares_timeout is asked again then), never late. */
static int base_timeout(ares_channel channel)
{
    struct ares_options o;
    int mask = 0, ms = 100;
    if (ares_save_options(channel, &o, &mask) == ARES_SUCCESS) {
        if (o.timeout > 0) /* milliseconds: saved with ARES_OPT_TIMEOUTMS */
            ms = o.timeout;
        ares_destroy_options(&o);
    }
    return ms;
}

/* A query may have been sent at `at`: the next step is due by at + base_ms. */
static void note_send(pm_dns *d, int64_t at)
{
    int64_t bound = at + d->base_ms;
    if (d->send_bound < 0 || bound < d->send_bound)
        d->send_bound = bound;
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
    d->wait_tail = &d->wait_head;
    d->max_inflight = cfg->max_inflight > 0 ? (size_t)cfg->max_inflight : 0;
    d->deadline = d->send_bound = -1;
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
    d->base_ms = base_timeout(d->channel);
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
    for (request *q = d->wait_head, *next; q; q = next) {
        next = q->next_wait;
        free(q);
    }
    pm_dns_results_free(d->done);
    close(d->epfd);
    free(d);
}

int pm_dns_fd(const pm_dns *d) { return d->epfd; }

size_t pm_dns_pending(const pm_dns *d) { return d->inflight + d->waiting; }

int pm_dns_timeout(pm_dns *d)
{
    if (d->done || (d->waiting && !d->inflight))
        return 0;
    if (!d->inflight) {
        d->deadline = d->send_bound = -1;
        return -1;
    }
    int64_t now = now_ms();
    if (d->deadline < 0 || now >= d->deadline) {
        struct timeval tv, *t = ares_timeout(d->channel, NULL, &tv);
        d->send_bound = -1;
        if (!t) {
            d->deadline = -1;
            return -1;
        }
        d->deadline = now + (int64_t)t->tv_sec * 1000 + (t->tv_usec + 999) / 1000;
    }
    int64_t due = d->deadline;
    if (d->send_bound >= 0 && d->send_bound < due)
        due = d->send_bound;
    due -= now;
    return due < 0 ? 0 : due > 0x7fffffff ? 0x7fffffff : (int)due;
}

/* Queues a finished query for the next step. */
static void finish(request *q)
{
    pm_dns *d = q->dns;
    d->inflight--;
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

/* RFC 2181 section 8: a TTL with the top bit set counts as 0. */
static uint32_t wire_ttl(uint32_t ttl) { return ttl > 0x7fffffffu ? 0 : ttl; }

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
        uint32_t ttl = wire_ttl(ns_rr_ttl(rr));
        if (ns_rr_type(rr) == ns_t_cname && ttl < *chain)
            *chain = ttl;
        else if (ns_rr_type(rr) == ns_t_srv && n < max)
            ttls[n++] = ttl;
    }
    return (int)n;
}

void pm_dns_parse_srv(const unsigned char *abuf, int alen, pm_dns_result *r)
{
    r->status = ARES_SUCCESS;
    r->n = 0;
    r->srvs = NULL;
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
        pm_dns_parse_srv(abuf, alen, &q->r);
    finish(q);
}

/* Raw answers: names are compared where they lie in the message, following
 * compression pointers, never copied out. */

enum { HOPS_MAX = 64, NAME_MAX_WIRE = 255, T_A_ = 1, T_CNAME_ = 5, T_AAAA_ = 28, C_IN_ = 1 };

static unsigned get16(const unsigned char *p) { return (unsigned)p[0] << 8 | p[1]; }

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The offset just past the name at off as it lies there (a pointer ends
 * it), in *end; -1 when it runs out of the message or has a reserved label
 * type. Where the pointers lead is checked by label_at on use. */
static int name_end(const unsigned char *m, size_t len, size_t off, size_t *end)
{
    while (off < len) {
        unsigned c = m[off];
        if (c == 0) {
            *end = off + 1;
            return 0;
        }
        if ((c & 0xC0) == 0xC0) {
            if (off + 2 > len)
                return -1;
            *end = off + 2;
            return 0;
        }
        if (c & 0xC0)
            return -1;
        off += 1 + c;
    }
    return -1;
}

/* The length of the label at *off (0: the name's end), after following any
 * pointers there (*off moves to the label's length byte); -1 when malformed
 * or after HOPS_MAX pointers (a loop). */
static int label_at(const unsigned char *m, size_t len, size_t *off, int *hops)
{
    for (;;) {
        if (*off >= len)
            return -1;
        unsigned c = m[*off];
        if ((c & 0xC0) == 0xC0) {
            if (*off + 2 > len || ++*hops > HOPS_MAX)
                return -1;
            *off = (size_t)(c & 0x3F) << 8 | m[*off + 1];
            continue;
        }
        if ((c & 0xC0) || *off + 1 + c > len)
            return -1;
        return (int)c;
    }
}

static unsigned char lower(unsigned char c) { return c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c; }

/* Are the names at a and b the same (ASCII case ignored)? 1 or 0; -1 when
 * either is malformed as far as they were read. */
static int name_equal(const unsigned char *m, size_t len, size_t a, size_t b)
{
    int ha = 0, hb = 0;
    size_t total = 0;
    for (;;) {
        int la = label_at(m, len, &a, &ha), lb = label_at(m, len, &b, &hb);
        if (la < 0 || lb < 0)
            return -1;
        if (la != lb)
            return 0;
        if (la == 0)
            return 1;
        total += (size_t)la + 1;
        if (total > NAME_MAX_WIRE)
            return -1;
        for (int i = 1; i <= la; i++)
            if (lower(m[a + (size_t)i]) != lower(m[b + (size_t)i]))
                return 0;
        a += (size_t)la + 1;
        b += (size_t)la + 1;
    }
}

static char *put_dec(char *p, unsigned v)
{
    if (v >= 100)
        *p++ = (char)('0' + v / 100);
    if (v >= 10)
        *p++ = (char)('0' + v / 10 % 10);
    *p++ = (char)('0' + v % 10);
    return p;
}

static char *put_ipv4(char *p, const unsigned char *b)
{
    for (int i = 0; i < 4; i++) {
        if (i)
            *p++ = '.';
        p = put_dec(p, b[i]);
    }
    return p;
}

static char *put_hex(char *p, unsigned v)
{
    static const char digits[] = "0123456789abcdef";
    int shift = 12;
    while (shift > 0 && !(v >> shift & 0xF))
        shift -= 4;
    for (; shift >= 0; shift -= 4)
        *p++ = digits[v >> shift & 0xF];
    return p;
}

/* glibc's inet_ntop, step by step (RFC 5952: the longest run of two or more
 * zero groups, the first of equals, becomes "::"; an IPv4-mapped or
 * -compatible address ends in dotted quad): the same text for every
 * address, which the fuzzer checks. */
size_t pm_dns_format_addr(int family, const unsigned char *src, char *out)
{
    char *p = out;
    if (family == AF_INET) {
        p = put_ipv4(p, src);
        *p = '\0';
        return (size_t)(p - out);
    }
    unsigned words[8];
    int best = -1, best_len = 0, cur = -1, cur_len = 0;
    for (int i = 0; i < 8; i++) {
        words[i] = get16(src + 2 * i);
        if (words[i] == 0) {
            if (cur < 0)
                cur = i, cur_len = 0;
            if (++cur_len > best_len)
                best = cur, best_len = cur_len;
        } else {
            cur = -1;
        }
    }
    if (best_len < 2)
        best = -1;
    for (int i = 0; i < 8; i++) {
        if (best >= 0 && i >= best && i < best + best_len) {
            if (i == best)
                *p++ = ':';
            continue;
        }
        if (i)
            *p++ = ':';
        if (i == 6 && best == 0 && (best_len == 6 || (best_len == 5 && words[5] == 0xffff))) {
            p = put_ipv4(p, src + 12);
            break;
        }
        p = put_hex(p, words[i]);
    }
    if (best >= 0 && best + best_len == 8)
        *p++ = ':';
    *p = '\0';
    return (size_t)(p - out);
}

/* pm_dns_parse_addrs for a malformed answer: nothing of it counts, not
 * even the addresses read before the fault. */
static int bad_answer(size_t *n)
{
    *n = 0;
    return ARES_EBADRESP;
}

int pm_dns_parse_addrs(const unsigned char *m, size_t len, int family, pm_dns_addr *out,
                       size_t max, size_t *n)
{
    *n = 0;
    if (len < 12 || get16(m + 4) != 1)
        return bad_answer(n);
    unsigned count = get16(m + 6), want = family == AF_INET6 ? T_AAAA_ : T_A_;
    size_t size = family == AF_INET6 ? 16 : 4, off, owner = 12; /* the name asked for */
    if (name_end(m, len, 12, &off) < 0 || off + 4 > len)
        return bad_answer(n);
    off += 4;
    uint32_t chain = UINT32_MAX;
    for (unsigned i = 0; i < count; i++) {
        size_t rr = off;
        if (name_end(m, len, off, &off) < 0 || off + 10 > len)
            return bad_answer(n);
        unsigned type = get16(m + off), class = get16(m + off + 2), rdlen = get16(m + off + 8);
        uint32_t ttl = wire_ttl(get32(m + off + 4));
        size_t rdata = off + 10;
        off = rdata + rdlen;
        if (off > len)
            return bad_answer(n);
        if (class != C_IN_ || (type != want && type != T_CNAME_))
            continue;
        int same = name_equal(m, len, rr, owner);
        if (same < 0)
            return bad_answer(n);
        if (!same)
            continue;
        if (type == T_CNAME_) {
            /* the chain goes on from the target, which must be whole */
            size_t end;
            if (name_end(m, len, rdata, &end) < 0 || end > off || name_equal(m, len, rdata, rdata) < 0)
                return bad_answer(n);
            owner = rdata;
            if (ttl < chain)
                chain = ttl;
        } else if (rdlen == size) {
            if (*n < max) {
                pm_dns_addr *a = &out[*n];
                a->family = family;
                a->ttl = ttl;
                pm_dns_format_addr(family, m + rdata, a->address);
            }
            ++*n;
        }
    }
    for (size_t i = 0; i < *n && i < max; i++)
        if (chain < out[i].ttl)
            out[i].ttl = chain;
    return *n ? ARES_SUCCESS : ARES_ENODATA;
}

/* One family's answer: read into the result (a stack buffer first; a
 * larger answer is read again into its own). */
static void addr_done(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    (void)timeouts;
    request *q = arg;
    pm_dns_result *r = &q->r;
    r->status = status;
    if (status == ARES_SUCCESS) {
        pm_dns_addr few[8];
        size_t n;
        r->status = pm_dns_parse_addrs(abuf, (size_t)alen, q->family, few, 8, &n);
        if (r->status == ARES_SUCCESS) {
            r->addrs = malloc(n * sizeof(*r->addrs));
            if (!r->addrs)
                oom_result(r);
            else if (n <= 8)
                memcpy(r->addrs, few, n * sizeof(*r->addrs));
            else
                pm_dns_parse_addrs(abuf, (size_t)alen, q->family, r->addrs, n, &n);
            if (r->addrs)
                r->n = n;
        }
    }
    finish(q);
}

static request *new_request(pm_dns *d, const char *name, int family, uint64_t id, int kind)
{
    size_t len = strlen(name);
    request *q = calloc(1, sizeof(*q) + len + 1);
    if (!q) {
        errno = ENOMEM;
        return NULL;
    }
    q->dns = d;
    q->family = family;
    q->r.id = id;
    q->r.kind = kind;
    memcpy(q->name, name, len + 1);
    return q;
}

/* Puts a query on the wire (its callback may run before this returns). */
static void send_request(pm_dns *d, request *q)
{
    d->inflight++;
    if (d->send_bound < 0)
        note_send(d, now_ms()); /* later sends are due later */
    if (q->r.kind == PM_DNS_SRV) {
        ares_query(d->channel, q->name, ns_c_in, ns_t_srv, srv_done, q);
    } else if (q->family == AF_UNSPEC) {
        struct ares_addrinfo_hints hints;
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_UNSPEC;
        /* No RFC 6724 sort: it connects a UDP socket per address, and the
         * Lua layer orders addresses itself (RFC 8305). */
        hints.ai_flags = ARES_AI_NOSORT;
        hints.ai_socktype = SOCK_STREAM; /* one node per address, not per socket type */
        ares_getaddrinfo(d->channel, q->name, NULL, &hints, addrinfo_done, q);
    } else {
        ares_search(d->channel, q->name, ns_c_in, q->family == AF_INET6 ? ns_t_aaaa : ns_t_a, addr_done, q);
    }
}

/* Sends waiting queries while there is room on the wire. */
static void fill_window(pm_dns *d)
{
    while (d->wait_head && (!d->max_inflight || d->inflight < d->max_inflight)) {
        request *q = d->wait_head;
        d->wait_head = q->next_wait;
        if (!d->wait_head)
            d->wait_tail = &d->wait_head;
        d->waiting--;
        send_request(d, q);
    }
}

static int start(pm_dns *d, const char *name, int family, uint64_t id, int kind)
{
    request *q = new_request(d, name, family, id, kind);
    if (!q)
        return -1;
    if (d->wait_head || (d->max_inflight && d->inflight >= d->max_inflight)) {
        *d->wait_tail = q;
        d->wait_tail = &q->next_wait;
        d->waiting++;
    } else {
        send_request(d, q);
    }
    return 0;
}

int pm_dns_resolve(pm_dns *d, const char *name, int family, uint64_t id)
{
    return start(d, name, family, id, PM_DNS_ADDR);
}

int pm_dns_srv(pm_dns *d, const char *name, uint64_t id)
{
    return start(d, name, AF_UNSPEC, id, PM_DNS_SRV);
}

pm_dns_result *pm_dns_step(pm_dns *d)
{
    struct epoll_event ev[64];
    int n, rounds = 0, processed = 0;
    /* Anything c-ares sends in here (a retry, the next server, TCP after a
     * truncated answer) times out after this at the earliest. */
    note_send(d, now_ms());
    do {
        n = epoll_wait(d->epfd, ev, 64, 0);
        for (int i = 0; i < n; i++) {
            ares_socket_t fd = ev[i].data.fd;
            /* An error (ICMP port unreachable) shows on the next read. */
            int r = ev[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP);
            int w = ev[i].events & EPOLLOUT;
            ares_process_fd(d->channel, r ? fd : ARES_SOCKET_BAD, w ? fd : ARES_SOCKET_BAD);
            processed = 1;
        }
    } while (n == 64 && ++rounds < 16);
    /* Timeouts and retries: c-ares checks them on every call. */
    if (!processed)
        ares_process_fd(d->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    /* Before the caller settles this step's answers: the server works on
     * the next queries meanwhile. */
    fill_window(d);
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
