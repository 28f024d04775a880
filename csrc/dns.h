/* A DNS engine over one c-ares channel, with one pollable fd (docs/design.md,
 * "The engine contract"):
 * c-ares reports its sockets through its socket-state callback and this
 * engine keeps them in an epoll instance; the caller polls that fd, calls
 * pm_dns_step() when it is readable or when pm_dns_timeout() has passed,
 * and gets back the queries that finished. No select(), no blocking call,
 * nothing of Lua or libuv. Many queries may be in flight at once. */
#ifndef PORTMAN_DNS_H
#define PORTMAN_DNS_H

#include <stddef.h>
#include <stdint.h>

typedef struct pm_dns pm_dns;

enum pm_dns_kind { PM_DNS_ADDR, PM_DNS_SRV };

/* One address with its TTL: the minimum over the CNAME chain that led to it. */
typedef struct {
    int family; /* AF_INET or AF_INET6 */
    char address[46]; /* INET6_ADDRSTRLEN */
    uint32_t ttl;
} pm_dns_addr;

/* One SRV record (RFC 2782) with its TTL read from the raw answer. */
typedef struct {
    char target[1025]; /* NS_MAXDNAME */
    uint16_t port, priority, weight;
    uint32_t ttl;
} pm_dns_srv_record;

/* A finished query. status is 0 on success or a c-ares status (ARES_E*):
 * pm_dns_status_code() names it with one of portman's code words. */
typedef struct pm_dns_result {
    uint64_t id; /* the caller's id, given to pm_dns_resolve/pm_dns_srv */
    int kind; /* enum pm_dns_kind */
    int status;
    size_t n; /* records in addrs or srvs */
    pm_dns_addr *addrs;
    pm_dns_srv_record *srvs;
    struct pm_dns_result *next;
} pm_dns_result;

typedef struct {
    const char *servers; /* "IP:PORT,[IPv6]:PORT,..."; NULL: /etc/resolv.conf */
    int timeout_ms; /* first try's timeout; 0: c-ares' default */
    int tries; /* 0: c-ares' default */
    /* Queries on the wire at once; more wait in the engine, in order, and
     * go out as answers come in (a burst of a few hundred from one UDP
     * socket overflows the server's receive queue). 0: no limit. */
    int max_inflight;
} pm_dns_config;

/* Creates an engine; on failure returns NULL with a message in err. */
pm_dns *pm_dns_new(const pm_dns_config *cfg, char *err, size_t errlen);
/* Cancels every query in flight (their results are dropped), closes the
 * sockets and the epoll fd, frees everything. */
void pm_dns_free(pm_dns *d);

/* The fd to poll for readability. */
int pm_dns_fd(const pm_dns *d);
/* Milliseconds until pm_dns_step() must run even if the fd stays quiet;
 * 0 when results wait already, -1 when nothing is in flight. */
int pm_dns_timeout(pm_dns *d);
/* Queries started and not yet finished: on the wire or waiting for room. */
size_t pm_dns_pending(const pm_dns *d);

/* Starts an A and/or AAAA lookup (family AF_INET, AF_INET6 or AF_UNSPEC)
 * over DNS only (no hosts file), with resolv.conf's search domains and
 * ndots as c-ares applies them. One family is one query (ares_search) whose
 * answer pm_dns_parse_addrs reads; AF_UNSPEC goes through
 * ares_getaddrinfo. Returns 0, or -1 (ENOMEM). */
int pm_dns_resolve(pm_dns *d, const char *name, int family, uint64_t id);
/* Starts an SRV query for name. Returns 0, or -1 (ENOMEM). */
int pm_dns_srv(pm_dns *d, const char *name, uint64_t id);

/* Does the ready work; returns the finished queries as a list that the
 * caller frees with pm_dns_results_free (NULL when none finished). */
pm_dns_result *pm_dns_step(pm_dns *d);
void pm_dns_results_free(pm_dns_result *r);

/* Pure readers of a raw DNS answer (abuf, alen bytes), for the engine and
 * for the fuzzer. */

/* The addresses of family (AF_INET: A, AF_INET6: AAAA) that answer the
 * question, following the CNAME chain from the question's name in answer
 * order; an address's TTL is the smallest of its own and every CNAME's on
 * the way. A CNAME counts only when it owns the name the chain has reached
 * (RFC 1034 section 3.6.2; c-ares 1.18's getaddrinfo follows any CNAME in
 * the answer). Records of another class or type,
 * of another owner, or of the wrong length are skipped. Stores the first
 * max in out and the count of all in *n. Returns ARES_SUCCESS, ARES_ENODATA
 * (none) or ARES_EBADRESP (malformed: a name, record or count that does
 * not fit in the message). */
int pm_dns_parse_addrs(const unsigned char *abuf, size_t alen, int family, pm_dns_addr *out,
                       size_t max, size_t *n);
/* The SRV records of an answer with their TTLs (the smallest of the
 * record's and the CNAMEs'), into r->srvs and r->n (r->srvs allocated:
 * pm_dns_results_free frees it); sets r->status: ARES_SUCCESS,
 * ARES_ENODATA, ARES_EBADRESP or ARES_ENOMEM. */
void pm_dns_parse_srv(const unsigned char *abuf, int alen, pm_dns_result *r);
/* Writes an address (4 or 16 bytes of family) as inet_ntop does, into out
 * (46 bytes at least); returns its length. */
size_t pm_dns_format_addr(int family, const unsigned char *src, char *out);

/* portman's code word for a status: "not_found", "timeout", "refused",
 * "protocol", "closed", "ENOMEM" or "unreachable". */
const char *pm_dns_status_code(int status);
/* A human message for a status (c-ares' own words). */
const char *pm_dns_status_text(int status);

#endif
