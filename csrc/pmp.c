/* NAT-PMP requests over libnatpmp without blocking (see pmp.h). */
#include "pmp.h"

#include <arpa/inet.h>
#include <errno.h>
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
    int r;
    if (!proto) {
        r = sendpublicaddressrequest(&p->np);
    } else {
        int pr = strcmp(proto, "udp") == 0 ? NATPMP_PROTOCOL_UDP : NATPMP_PROTOCOL_TCP;
        r = sendnewportmappingrequest(&p->np, pr, (uint16_t)internal_port, (uint16_t)external_port, lifetime);
    }
    if (r < 0) return r;
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

void pm_pmp_step(struct pm_pmp *p, struct pm_pmp_result *r)
{
    memset(r, 0, sizeof *r);
    /* libnatpmp reads whatever length came into its 16-byte buffer and
     * parses it: a short answer would hand back bytes nobody sent. Look
     * first; drop a version-0 answer too short for its opcode (RFC 6886:
     * 12 bytes for the address, 16 for a mapping), as if it never came. */
    unsigned char peek[16];
    ssize_t n = recv(p->np.s, peek, sizeof peek, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
        /* the peek took the socket's pending error (an ICMP port unreachable) */
        p->busy = 0;
        r->done = 1;
        r->sys_errno = errno;
        r->error = errno == ECONNREFUSED ? NATPMP_ERR_NOGATEWAYSUPPORT : NATPMP_ERR_RECVFROM;
        r->code = pm_pmp_code(r->error, errno);
        return;
    }
    if (n >= 0 && (n < 2 || (peek[0] == 0 && (peek[1] < 128 || peek[1] > 130 ||
                                              n < (peek[1] == 128 ? 12 : 16))))) {
        ssize_t dropped = recv(p->np.s, peek, sizeof peek, MSG_DONTWAIT);
        (void)dropped;
        return;
    }
    natpmpresp_t resp;
    errno = 0;
    int e = readnatpmpresponseorretry(&p->np, &resp);
    if (e == NATPMP_TRYAGAIN) return;
    p->busy = 0;
    r->done = 1;
    if (e < 0) {
        r->error = e;
        r->sys_errno = errno;
        r->code = pm_pmp_code(e, errno);
        return;
    }
    r->epoch = resp.epoch;
    if (resp.type == NATPMP_RESPTYPE_PUBLICADDRESS) {
        inet_ntop(AF_INET, &resp.pnu.publicaddress.addr, r->external_ip, sizeof r->external_ip);
    } else {
        r->internal_port = resp.pnu.newportmapping.privateport;
        r->external_port = resp.pnu.newportmapping.mappedpublicport;
        r->lifetime = resp.pnu.newportmapping.lifetime;
    }
}
