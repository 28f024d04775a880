/* libFuzzer target for the readers of raw DNS answers in dns.c: the bytes
 * are one answer, read for A and AAAA addresses (pm_dns_parse_addrs) and
 * SRV records (pm_dns_parse_srv). Whatever the bytes, a reader must decide
 * without reading past them, with a status the engine knows; an address it
 * gives must be inet_ntop's own text for some address, and when c-ares'
 * parser accepts the same answer, it must find those addresses too, in the
 * same order. The first 16 bytes are also formatted as an IPv4 and an
 * IPv6 address and compared with inet_ntop. */
#include <ares.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dns.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)
#define FEW 8
#define CARES_MAX 256

static void check_format(const uint8_t *b)
{
    char mine[46], theirs[INET6_ADDRSTRLEN];
    CHECK(pm_dns_format_addr(AF_INET, b, mine) == strlen(mine));
    CHECK(inet_ntop(AF_INET, b, theirs, sizeof(theirs)) && strcmp(mine, theirs) == 0);
    CHECK(pm_dns_format_addr(AF_INET6, b, mine) == strlen(mine));
    CHECK(inet_ntop(AF_INET6, b, theirs, sizeof(theirs)) && strcmp(mine, theirs) == 0);
}

/* An address as the engine gives it: inet_ntop's text of the address that
 * inet_pton reads from it. */
static void check_addr(const pm_dns_addr *a, int family)
{
    unsigned char bin[16];
    char again[INET6_ADDRSTRLEN];
    CHECK(a->family == family && a->ttl <= 0x7fffffffu);
    CHECK(memchr(a->address, '\0', sizeof(a->address)));
    CHECK(inet_pton(family, a->address, bin) == 1);
    CHECK(inet_ntop(family, bin, again, sizeof(again)) && strcmp(again, a->address) == 0);
}

/* c-ares' addresses for the same answer, as text; -1 when it does not
 * accept the answer, finds more than it was given room for, or followed a
 * CNAME: c-ares 1.18 follows any CNAME in the answer, whoever owns it,
 * where pm_dns_parse_addrs follows only the chain from the question (RFC
 * 1034 section 3.6.2), so with CNAMEs the two may rightly differ. Without,
 * c-ares may still take a record of another owner (it compares names as C
 * strings, which a label holding a NUL byte cuts short), so ours need only
 * be among its. */
static int cares_addrs(const uint8_t *data, size_t size, int family, char (*out)[INET6_ADDRSTRLEN])
{
    int n = CARES_MAX, status;
    struct hostent *host = NULL;
    if (family == AF_INET) {
        struct ares_addrttl ttls[CARES_MAX];
        status = ares_parse_a_reply(data, (int)size, &host, ttls, &n);
        for (int i = 0; status == ARES_SUCCESS && i < n; i++)
            inet_ntop(AF_INET, &ttls[i].ipaddr, out[i], INET6_ADDRSTRLEN);
    } else {
        struct ares_addr6ttl ttls[CARES_MAX];
        status = ares_parse_aaaa_reply(data, (int)size, &host, ttls, &n);
        for (int i = 0; status == ARES_SUCCESS && i < n; i++)
            inet_ntop(AF_INET6, &ttls[i].ip6addr, out[i], INET6_ADDRSTRLEN);
    }
    int aliases = host && host->h_aliases && host->h_aliases[0];
    if (host)
        ares_free_hostent(host);
    return status == ARES_SUCCESS && n < CARES_MAX && !aliases ? n : -1;
}

static void check_addrs(const uint8_t *data, size_t size, int family)
{
    pm_dns_addr few[FEW];
    size_t n, again;
    int status = pm_dns_parse_addrs(data, size, family, few, FEW, &n);
    CHECK(status == ARES_SUCCESS || status == ARES_ENODATA || status == ARES_EBADRESP);
    CHECK((status == ARES_SUCCESS) == (n > 0));
    if (status != ARES_SUCCESS)
        return;
    /* the engine's second reading, into room for all */
    pm_dns_addr *all = malloc(n * sizeof(*all));
    CHECK(all);
    CHECK(pm_dns_parse_addrs(data, size, family, all, n, &again) == ARES_SUCCESS && again == n);
    for (size_t i = 0; i < n; i++) {
        check_addr(&all[i], family);
        if (i < FEW)
            CHECK(all[i].ttl == few[i].ttl && strcmp(all[i].address, few[i].address) == 0);
    }
    static char theirs[CARES_MAX][INET6_ADDRSTRLEN];
    int m = cares_addrs(data, size, family, theirs);
    if (m >= 0) { /* ours, in order, among c-ares': see cares_addrs for why not all */
        int j = 0;
        for (size_t i = 0; i < n; i++, j++) {
            while (j < m && strcmp(theirs[j], all[i].address) != 0)
                j++;
            CHECK(j < m);
        }
    }
    free(all);
}

static void check_srv(const uint8_t *data, size_t size)
{
    pm_dns_result r;
    memset(&r, 0, sizeof(r));
    pm_dns_parse_srv(data, (int)size, &r);
    CHECK(r.status == ARES_SUCCESS || r.status == ARES_ENODATA || r.status == ARES_EBADRESP
          || r.status == ARES_ENOMEM);
    CHECK((r.status == ARES_SUCCESS) == (r.n > 0));
    for (size_t i = 0; i < r.n; i++) {
        CHECK(memchr(r.srvs[i].target, '\0', sizeof(r.srvs[i].target)));
        CHECK(r.srvs[i].ttl <= 0x7fffffffu); /* RFC 2181 section 8 */
    }
    free(r.srvs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65535) /* a DNS message's limit, over TCP */
        return 0;
    if (size >= 16)
        check_format(data);
    check_addrs(data, size, AF_INET);
    check_addrs(data, size, AF_INET6);
    check_srv(data, size);
    return 0;
}
