/* PCP (RFC 6887) MAP and ANNOUNCE without blocking (see pcp.h). */
#include "pcp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "visibility.h" /* last: see there */

static void put16(uint8_t *b, uint16_t v)
{
    b[0] = (uint8_t)(v >> 8);
    b[1] = (uint8_t)v;
}

static void put32(uint8_t *b, uint32_t v)
{
    put16(b, (uint16_t)(v >> 16));
    put16(b + 2, (uint16_t)v);
}

static uint16_t get16(const uint8_t *b)
{
    return (uint16_t)(b[0] << 8 | b[1]);
}

static uint32_t get32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* An IPv4 address as RFC 6887 5 carries it: ::ffff:a.b.c.d */
static void put_mapped(uint8_t *b, const uint8_t v4[4])
{
    memset(b, 0, 10);
    b[10] = b[11] = 0xff;
    memcpy(b + 12, v4, 4);
}

size_t pm_pcp_build(uint8_t *b, size_t cap, const struct pm_pcp_req *req)
{
    size_t n = req->op == PM_PCP_MAP ? PM_PCP_MAP_LEN : req->op == PM_PCP_ANNOUNCE ? PM_PCP_HEADER : 0;
    if (n == 0 || cap < n) return 0;
    memset(b, 0, n);
    b[0] = PM_PCP_VERSION;
    b[1] = (uint8_t)req->op; /* R = 0: a request */
    put32(b + 4, req->op == PM_PCP_MAP ? req->lifetime : 0);
    put_mapped(b + 8, req->client);
    if (req->op != PM_PCP_MAP) return n;
    memcpy(b + 24, req->nonce, PM_PCP_NONCE);
    b[36] = req->proto;
    put16(b + 40, req->internal_port);
    put16(b + 42, req->external_port);
    put_mapped(b + 44, req->external);
    return n;
}

const char *pm_pcp_result_code(unsigned rc)
{
    switch (rc) {
    case 0: return NULL;
    case 2: return "denied";                          /* NOT_AUTHORIZED */
    case 8: case 10: case 13: return "exhausted";     /* NO_RESOURCES, USER_EX_QUOTA, EXCESSIVE_REMOTE_PEERS */
    case 1: case 4: case 5: case 9: return "unsupported"; /* UNSUPP_VERSION, _OPCODE, _OPTION, _PROTOCOL */
    case 7: return "unreachable";                     /* NETWORK_FAILURE */
    case 11: return "conflict";                       /* CANNOT_PROVIDE_EXTERNAL */
    default: return "protocol"; /* MALFORMED_REQUEST, MALFORMED_OPTION, ADDRESS_MISMATCH, undefined */
    }
}

static const char *const RESULT_NAMES[] = {
    "SUCCESS", "UNSUPP_VERSION", "NOT_AUTHORIZED", "MALFORMED_REQUEST", "UNSUPP_OPCODE", "UNSUPP_OPTION",
    "MALFORMED_OPTION", "NETWORK_FAILURE", "NO_RESOURCES", "UNSUPP_PROTOCOL", "USER_EX_QUOTA",
    "CANNOT_PROVIDE_EXTERNAL", "ADDRESS_MISMATCH", "EXCESSIVE_REMOTE_PEERS"};

/* A malformed answer: r says what was wrong; returns 1 (an answer, read). */
__attribute__((format(printf, 2, 3))) static int bad(struct pm_pcp_result *r, const char *fmt, ...)
{
    int op = r->op;
    memset(r, 0, sizeof *r);
    r->op = op;
    r->done = 1;
    r->error = PM_PCP_ERR_BADANSWER;
    r->code = "protocol";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof r->why, fmt, ap);
    va_end(ap);
    return 1;
}

static int result_error(struct pm_pcp_result *r, unsigned rc)
{
    r->done = 1;
    r->error = (int)rc;
    r->code = pm_pcp_result_code(rc);
    if (rc < sizeof RESULT_NAMES / sizeof RESULT_NAMES[0])
        snprintf(r->why, sizeof r->why, "%s (result code %u)", RESULT_NAMES[rc], rc);
    else
        snprintf(r->why, sizeof r->why, "undefined result code %u", rc);
    return 1;
}

/* The options after the opcode data (RFC 6887 7.3): each a 4-byte header
 * and its data padded to 4 bytes, all inside the message. Their contents
 * are not used. */
static int check_options(const uint8_t *b, size_t off, size_t n, struct pm_pcp_result *r)
{
    while (off < n) {
        if (n - off < 4) return bad(r, "option header cut at byte %zu", off);
        size_t len = get16(b + off + 2);
        size_t padded = (len + 3) & ~(size_t)3;
        if (padded > n - off - 4) return bad(r, "option %u of %zu bytes past the end", b[off], len);
        off += 4 + padded;
    }
    return 0;
}

/* The assigned external address: IPv4-mapped, unicast, not "this
 * network" (0/8), not loopback, not the gateway's LAN side. */
static int check_external(const uint8_t *a, const struct pm_pcp_req *req, struct pm_pcp_result *r)
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a, prefix, sizeof prefix) != 0) {
        char s[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, a, s, sizeof s);
        return bad(r, "external address %s is not IPv4-mapped", s);
    }
    const uint8_t *v4 = a + 12;
    if (v4[0] == 0 || v4[0] == 127 || v4[0] >= 224 || memcmp(v4, req->gateway, 4) == 0)
        return bad(r, "external address %u.%u.%u.%u", v4[0], v4[1], v4[2], v4[3]);
    inet_ntop(AF_INET, v4, r->external_ip, sizeof r->external_ip);
    return 0;
}

static int check_map(const uint8_t *b, size_t n, const struct pm_pcp_req *req, struct pm_pcp_result *r)
{
    if (n < PM_PCP_MAP_LEN) return bad(r, "MAP answer of %zu bytes, %d expected", n, PM_PCP_MAP_LEN);
    if (memcmp(b + 24, req->nonce, PM_PCP_NONCE) != 0) return bad(r, "nonce of another request");
    if (b[36] != req->proto) return bad(r, "protocol %u answering protocol %u", b[36], req->proto);
    unsigned in = get16(b + 40), ext = get16(b + 42);
    if (in != req->internal_port)
        return bad(r, "internal port %u in the answer, %u asked", in, (unsigned)req->internal_port);
    uint32_t life = get32(b + 4);
    if (req->lifetime == 0) {
        /* a delete (RFC 6887 15): lifetime 0; the external port and address are unused */
        if (life != 0) return bad(r, "lifetime %" PRIu32 " s answering a delete", life);
    } else {
        if (life == 0 || life > PM_PCP_MAX_LIFETIME)
            return bad(r, "lifetime %" PRIu32 " s (1-%u expected)", life, PM_PCP_MAX_LIFETIME);
        if (ext == 0) return bad(r, "external port 0");
        if (check_external(b + 44, req, r)) return 1;
        r->external_port = (int)ext;
        r->lifetime = life;
    }
    if (check_options(b, PM_PCP_MAP_LEN, n, r)) return 1;
    r->internal_port = (int)in;
    r->done = 1;
    return 1;
}

/* An answer that is not PCP version 2: a NAT-PMP gateway answers a PCP
 * request with its "unsupported version" (RFC 6887 9), version 0. */
static int other_version(const uint8_t *b, struct pm_pcp_result *r)
{
    if ((b[0] == 0 && get16(b + 2) == 1) || (b[0] == 1 && b[3] == 1)) {
        result_error(r, 1);
        snprintf(r->why, sizeof r->why, "the gateway speaks %s only (UNSUPP_VERSION)",
                 b[0] == 0 ? "NAT-PMP" : "PCP version 1");
        return 1;
    }
    return bad(r, "version %u answer", b[0]);
}

int pm_pcp_parse(const uint8_t *b, size_t n, const struct pm_pcp_req *req, int prev_op,
                 struct pm_pcp_result *r)
{
    memset(r, 0, sizeof *r);
    r->op = req->op;
    if (n < 4) return bad(r, "answer of %zu bytes", n);
    if (b[0] != PM_PCP_VERSION) return other_version(b, r);
    unsigned want = 0x80u | (unsigned)req->op;
    if (b[1] != want) {
        /* a retry answered twice: the late copy of the previous answer */
        if (prev_op >= 0 && prev_op != req->op && b[1] == (0x80u | (unsigned)prev_op)) return 0;
        if (!(b[1] & 0x80)) return bad(r, "a request (opcode %u), not an answer", b[1]);
        return bad(r, "opcode %u answering opcode %d", b[1] & 0x7fu, req->op);
    }
    if (n < PM_PCP_HEADER || n > PM_PCP_MAX_MSG || n % 4 != 0)
        return bad(r, "answer of %zu bytes (24-1100, a multiple of 4, expected)", n);
    r->epoch = get32(b + 8);
    if (b[3] != 0) return result_error(r, b[3]);
    if (req->op == PM_PCP_MAP) return check_map(b, n, req, r);
    if (check_options(b, PM_PCP_HEADER, n, r)) return 1;
    r->done = 1;
    return 1;
}

/* --- the engine --- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The default route's gateway, from /proc/net/route (as libnatpmp reads it). */
static int default_gateway(struct in_addr *gw)
{
    FILE *f = fopen("/proc/net/route", "re");
    if (!f) return -1;
    char line[256];
    int found = 0;
    while (!found && fgets(line, sizeof line, f)) {
        char ifname[32];
        unsigned long dest, g, flags;
        if (sscanf(line, "%31s %lx %lx %lx", ifname, &dest, &g, &flags) == 4 && dest == 0 && (flags & 2)) {
            gw->s_addr = (in_addr_t)g; /* the kernel writes it in network order */
            found = 1;
        }
    }
    fclose(f);
    if (!found) errno = ENETUNREACH;
    return found ? 0 : -1;
}

int pm_pcp_open(struct pm_pcp *p, const char *gw)
{
    memset(p, 0, sizeof *p);
    p->s = p->ep = -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(PM_PCP_PORT)};
    if (gw) {
        if (inet_pton(AF_INET, gw, &sa.sin_addr) != 1) {
            errno = EINVAL;
            return -1;
        }
    } else if (default_gateway(&sa.sin_addr) < 0) {
        return -1;
    }
    p->s = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    p->ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = p->s};
    struct sockaddr_in me;
    socklen_t len = sizeof me;
    if (p->s < 0 || p->ep < 0 || connect(p->s, (struct sockaddr *)&sa, sizeof sa) < 0
        || getsockname(p->s, (struct sockaddr *)&me, &len) < 0
        || epoll_ctl(p->ep, EPOLL_CTL_ADD, p->s, &ev) < 0) {
        int e = errno;
        if (p->s >= 0) close(p->s);
        if (p->ep >= 0) close(p->ep);
        errno = e;
        return -1;
    }
    inet_ntop(AF_INET, &sa.sin_addr, p->gateway, sizeof p->gateway);
    inet_ntop(AF_INET, &me.sin_addr, p->local, sizeof p->local);
    memcpy(p->req.client, &me.sin_addr, 4);
    memcpy(p->req.gateway, &sa.sin_addr, 4);
    p->jitter = (uint32_t)now_ms() ^ (uint32_t)getpid() ^ 0x9e3779b9u;
    p->prev_op = -1;
    p->open = 1;
    return 0;
}

void pm_pcp_close(struct pm_pcp *p)
{
    if (!p->open) return;
    p->open = 0;
    close(p->ep);
    close(p->s);
}

int pm_pcp_fd(const struct pm_pcp *p)
{
    return p->open ? p->ep : -1;
}

/* RT * (1 + RAND), RAND in -0.1..+0.1 (RFC 6887 8.1.1) */
static int64_t jittered(struct pm_pcp *p, int64_t rt)
{
    p->jitter ^= p->jitter << 13;
    p->jitter ^= p->jitter >> 17;
    p->jitter ^= p->jitter << 5;
    return rt + rt * ((int64_t)(p->jitter % 201) - 100) / 1000;
}

int pm_pcp_request(struct pm_pcp *p, const struct pm_pcp_req *req, int timeout_ms)
{
    struct pm_pcp_req r = *req;
    memcpy(r.client, p->req.client, 4);
    memcpy(r.gateway, p->req.gateway, 4);
    size_t n = pm_pcp_build(p->pkt, sizeof p->pkt, &r);
    if (n == 0) {
        errno = EINVAL;
        return -1;
    }
    p->req = r;
    p->pkt_len = n;
    int64_t now = now_ms();
    p->deadline_ms = now + (timeout_ms > 0 ? timeout_ms : 1);
    p->rt_ms = PM_PCP_FIRST_RT_MS;
    p->next_ms = now + jittered(p, p->rt_ms);
    p->tries = 1;
    p->busy = 1;
    if (send(p->s, p->pkt, n, 0) < 0 && errno != EAGAIN) {
        p->busy = 0;
        return -1;
    }
    return 0;
}

int pm_pcp_timeout_ms(const struct pm_pcp *p)
{
    if (!p->busy) return -1;
    int64_t at = p->next_ms < p->deadline_ms ? p->next_ms : p->deadline_ms;
    int64_t ms = at - now_ms();
    return ms < 0 ? 0 : (int)ms;
}

static void finish(struct pm_pcp *p, struct pm_pcp_result *r)
{
    p->busy = 0;
    p->prev_op = p->req.op;
    r->done = 1;
}

static void sys_error(struct pm_pcp *p, struct pm_pcp_result *r, int e)
{
    memset(r, 0, sizeof *r);
    r->op = p->req.op;
    r->error = PM_PCP_ERR_SYS;
    r->sys_errno = e;
    /* an ICMP port unreachable: nothing serves PCP there */
    r->code = e == ECONNREFUSED ? "not_found" : e == ENETUNREACH || e == EHOSTUNREACH ? "unreachable" : "protocol";
    snprintf(r->why, sizeof r->why, "%s", e == ECONNREFUSED ? "no PCP server (port unreachable)" : strerror(e));
    finish(p, r);
}

/* No answer yet: give up at the deadline, resend when due */
static void retry(struct pm_pcp *p, struct pm_pcp_result *r)
{
    int64_t now = now_ms();
    if (now >= p->deadline_ms) {
        memset(r, 0, sizeof *r);
        r->op = p->req.op;
        r->error = PM_PCP_ERR_NOANSWER;
        r->code = "not_found";
        snprintf(r->why, sizeof r->why, "no PCP answer from the gateway (%d tries)", p->tries);
        finish(p, r);
        return;
    }
    if (now < p->next_ms) return;
    p->rt_ms = p->rt_ms * 2 > PM_PCP_MAX_RT_MS ? PM_PCP_MAX_RT_MS : p->rt_ms * 2;
    p->next_ms = now + jittered(p, p->rt_ms);
    p->tries++;
    if (send(p->s, p->pkt, p->pkt_len, 0) < 0 && errno != EAGAIN) sys_error(p, r, errno);
}

/* Datagrams read at most per step, so a flood of ignored ones cannot hold the loop */
#define MAX_READS 16

void pm_pcp_step(struct pm_pcp *p, struct pm_pcp_result *r)
{
    memset(r, 0, sizeof *r);
    for (int i = 0; i < MAX_READS; i++) {
        uint8_t buf[PM_PCP_MAX_MSG + 4];
        /* MSG_TRUNC: the datagram's real length, so an overlong one is refused */
        ssize_t n = recv(p->s, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (!p->busy) continue; /* nothing asked: whatever came is stale */
        if (n < 0) {
            sys_error(p, r, errno); /* the socket's pending error (an ICMP one) */
            return;
        }
        size_t len = (size_t)n > sizeof buf ? sizeof buf : (size_t)n;
        int used = (size_t)n > PM_PCP_MAX_MSG
                       ? bad(r, "answer of %zd bytes (24-1100, a multiple of 4, expected)", n)
                       : pm_pcp_parse(buf, len, &p->req, p->prev_op, r);
        if (used) {
            finish(p, r);
            return;
        }
    }
    if (p->busy) retry(p, r);
}
