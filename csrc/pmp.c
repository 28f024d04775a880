/* NAT-PMP requests over libnatpmp without blocking (see pmp.h). */
#include "pmp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <sys/time.h>
#include "visibility.h" /* last: see there */

int pm_pmp_open(struct pm_pmp *p, const char *gw)
{
    memset(p, 0, sizeof *p);
    in_addr_t forced = 0;
    if (gw) {
        struct in_addr a;
        if (inet_pton(AF_INET, gw, &a) != 1) {
            errno = EINVAL;
            return NATPMP_ERR_INVALIDARGS;
        }
        forced = a.s_addr;
    }
    int r = initnatpmp(&p->np, gw != NULL, forced);
    if (r < 0) return r;
    p->ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = p->np.s};
    if (p->ep < 0 || epoll_ctl(p->ep, EPOLL_CTL_ADD, p->np.s, &ev) < 0) {
        int e = errno;
        if (p->ep >= 0) close(p->ep);
        closenatpmp(&p->np);
        errno = e;
        return NATPMP_ERR_SOCKETERROR;
    }
    struct in_addr a = {.s_addr = p->np.gateway};
    inet_ntop(AF_INET, &a, p->gateway, sizeof p->gateway);
    p->open = 1;
    p->prev_op = -1;
    return 0;
}

void pm_pmp_close(struct pm_pmp *p)
{
    if (!p->open) return;
    p->open = 0;
    close(p->ep);
    closenatpmp(&p->np);
}

int pm_pmp_fd(const struct pm_pmp *p)
{
    return p->open ? p->ep : -1;
}

int pm_pmp_request(struct pm_pmp *p, const char *proto, int internal_port, int external_port,
                   uint32_t lifetime)
{
    int r, op = 0;
    if (!proto) {
        r = sendpublicaddressrequest(&p->np);
    } else {
        op = strcmp(proto, "udp") == 0 ? NATPMP_PROTOCOL_UDP : NATPMP_PROTOCOL_TCP;
        r = sendnewportmappingrequest(&p->np, op, (uint16_t)internal_port, (uint16_t)external_port, lifetime);
    }
    if (r < 0) return r;
    p->req = (struct pm_pmp_req){.op = op, .internal_port = (uint16_t)internal_port,
                                 .lifetime = proto ? lifetime : 0, .gateway = p->np.gateway};
    p->busy = 1;
    return 0;
}

int pm_pmp_timeout_ms(struct pm_pmp *p)
{
    if (!p->busy) return -1;
    struct timeval tv;
    if (getnatpmprequesttimeout(&p->np, &tv) < 0) return 0;
    if (tv.tv_sec < 0) return 0;
    long ms = tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000;
    return ms < 0 ? 0 : (int)ms;
}

const char *pm_pmp_code(int err, int sys_errno)
{
    switch (err) {
    case NATPMP_ERR_NOTAUTHORIZED: return "denied";
    case NATPMP_ERR_OUTOFRESOURCES: return "exhausted";
    case NATPMP_ERR_NETWORKFAILURE: return "unreachable";
    case NATPMP_ERR_UNSUPPORTEDVERSION: case NATPMP_ERR_UNSUPPORTEDOPCODE: return "unsupported";
    /* no answer after every retry, no gateway, or an ICMP port unreachable */
    case NATPMP_ERR_NOGATEWAYSUPPORT: case NATPMP_ERR_CANNOTGETGATEWAY: return "not_found";
    case NATPMP_ERR_RECVFROM: case NATPMP_ERR_SENDERR: case NATPMP_ERR_CONNECTERR:
        return sys_errno == ECONNREFUSED ? "not_found" : sys_errno == ENETUNREACH ? "unreachable"
                                                                                  : "protocol";
    default: return "protocol";
    }
}

static uint16_t get16(const uint8_t *b)
{
    return (uint16_t)(b[0] << 8 | b[1]);
}

static uint32_t get32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* A malformed answer: r says what was wrong; returns 1 (an answer, read). */
__attribute__((format(printf, 2, 3))) static int bad(struct pm_pmp_result *r, const char *fmt, ...)
{
    r->done = 1;
    r->error = PM_PMP_ERR_BADANSWER;
    r->code = "protocol";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof r->why, fmt, ap);
    va_end(ap);
    return 1;
}

/* A non-zero result code (RFC 6886 3.5): the libnatpmp error it stands for. */
static int result_error(struct pm_pmp_result *r, unsigned rc)
{
    static const int errs[] = {0, NATPMP_ERR_UNSUPPORTEDVERSION, NATPMP_ERR_NOTAUTHORIZED,
                               NATPMP_ERR_NETWORKFAILURE, NATPMP_ERR_OUTOFRESOURCES,
                               NATPMP_ERR_UNSUPPORTEDOPCODE};
    static const char *const what[] = {"", "unsupported version", "not authorized or refused",
                                       "network failure", "out of resources", "unsupported opcode"};
    if (rc >= sizeof errs / sizeof errs[0]) return bad(r, "undefined result code %u", rc);
    r->done = 1;
    r->error = errs[rc];
    r->code = pm_pmp_code(r->error, 0);
    snprintf(r->why, sizeof r->why, "%s (result code %u)", what[rc], rc);
    return 1;
}

/* An external address: unicast, not "this network" (0/8, also RFC 6886's
 * "no address"), not loopback, not the gateway's own LAN side. */
static int check_address(const uint8_t *b, const struct pm_pmp_req *req, struct pm_pmp_result *r)
{
    uint32_t a = get32(b);
    uint32_t wire;
    memcpy(&wire, b, 4);
    inet_ntop(AF_INET, &wire, r->external_ip, sizeof r->external_ip);
    unsigned top = a >> 24;
    if (top == 0 || top == 127 || top >= 224 || wire == req->gateway) {
        bad(r, "external address %s", r->external_ip);
        r->external_ip[0] = 0;
        return 1;
    }
    r->done = 1;
    return 1;
}

static int check_mapping(const uint8_t *b, const struct pm_pmp_req *req, struct pm_pmp_result *r)
{
    unsigned in = get16(b + 8), ext = get16(b + 10);
    uint32_t life = get32(b + 12);
    if (in != req->internal_port)
        return bad(r, "internal port %u in the answer, %u asked", in, (unsigned)req->internal_port);
    if (req->lifetime == 0) {
        /* a delete: RFC 6886 3.4 answers lifetime 0; the external port is unused */
        if (life != 0) return bad(r, "lifetime %" PRIu32 " s answering a delete", life);
        r->done = 1;
        r->internal_port = (int)in;
        return 1;
    }
    if (ext == 0) return bad(r, "external port 0");
    if (life == 0 || life > PM_PMP_MAX_LIFETIME)
        return bad(r, "lifetime %" PRIu32 " s (1-%u expected)", life, PM_PMP_MAX_LIFETIME);
    r->done = 1;
    r->internal_port = (int)in;
    r->external_port = (int)ext;
    r->lifetime = life;
    return 1;
}

int pm_pmp_parse(const uint8_t *b, size_t n, const struct pm_pmp_req *req, int prev_op,
                 struct pm_pmp_result *r)
{
    memset(r, 0, sizeof *r);
    unsigned want = 128u + (unsigned)req->op;
    size_t need = req->op == 0 ? 12 : 16;
    if (n < 2) return bad(r, "answer of %zu bytes", n);
    if (b[0] != 0) return bad(r, "version %u answer", b[0]);
    if (b[1] != want) {
        /* a retry answered twice: the late copy of the previous answer */
        if (prev_op >= 0 && b[1] == 128u + (unsigned)prev_op) return 0;
        return bad(r, "opcode %u answering opcode %d", b[1], req->op);
    }
    if (n < 4) return bad(r, "answer of %zu bytes", n);
    unsigned rc = get16(b + 2);
    if (rc != 0) return result_error(r, rc);
    if (n < need) return bad(r, "answer of %zu bytes, %zu expected", n, need);
    r->epoch = get32(b + 4);
    return req->op == 0 ? check_address(b + 8, req, r) : check_mapping(b, req, r);
}

static void finish(struct pm_pmp *p, struct pm_pmp_result *r)
{
    p->busy = 0;
    p->np.has_pending_request = 0;
    p->prev_op = p->req.op;
    r->done = 1;
}

static void sys_error(struct pm_pmp *p, struct pm_pmp_result *r, int err, int e)
{
    memset(r, 0, sizeof *r);
    r->error = err;
    r->sys_errno = e;
    r->code = pm_pmp_code(err, e);
    finish(p, r);
}

/* No answer yet: resend when due (libnatpmp's schedule), give up after
 * PM_PMP_MAX_TRIES. */
static void retry(struct pm_pmp *p, struct pm_pmp_result *r)
{
    struct timeval now;
    gettimeofday(&now, NULL);
    if (timercmp(&now, &p->np.retry_time, <)) return;
    if (p->np.try_number >= PM_PMP_MAX_TRIES) {
        sys_error(p, r, NATPMP_ERR_NOGATEWAYSUPPORT, 0);
        return;
    }
    int delay = 250 * (1 << p->np.try_number);
    struct timeval d = {.tv_sec = delay / 1000, .tv_usec = (delay % 1000) * 1000};
    timeradd(&p->np.retry_time, &d, &p->np.retry_time);
    p->np.try_number++;
    if (send(p->np.s, p->np.pending_request, (size_t)p->np.pending_request_len, 0) < 0)
        sys_error(p, r, NATPMP_ERR_SENDERR, errno);
}

/* Datagrams read at most per step, so a flood of ignored ones cannot hold the loop */
#define MAX_READS 16

void pm_pmp_step(struct pm_pmp *p, struct pm_pmp_result *r)
{
    memset(r, 0, sizeof *r);
    for (int i = 0; i < MAX_READS; i++) {
        /* NAT-PMP answers are 12 or 16 bytes: a longer datagram is cut,
         * which leaves its first bytes to check all the same */
        uint8_t buf[64];
        ssize_t n = recv(p->np.s, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (!p->busy) continue; /* nothing asked: whatever came is stale */
        if (n < 0) {
            /* the socket's pending error (an ICMP port unreachable) */
            int e = errno;
            sys_error(p, r, e == ECONNREFUSED ? NATPMP_ERR_NOGATEWAYSUPPORT : NATPMP_ERR_RECVFROM, e);
            return;
        }
        if (pm_pmp_parse(buf, (size_t)n, &p->req, p->prev_op, r)) {
            finish(p, r);
            return;
        }
    }
    if (p->busy) retry(p, r);
}
