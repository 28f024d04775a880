#include "sockopt.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include "visibility.h" /* last: see there */

#define INET (PM_FOR_INET | PM_FOR_INET6)
#define ANYFAM (INET | PM_FOR_UNIX)
#define ANYTYPE (PM_FOR_STREAM | PM_FOR_DGRAM)

/* OPT(name, kind, level, CONSTANT, applies): the constant may be missing
 * from this build's headers; then the entry stays, marked unavailable. */
#define OPT_YES(n, k, lvl, c, ap) {n, #c, k, 1, lvl, c, ap}
#define OPT_NO(n, k, c, ap) {n, c, k, 0, 0, 0, ap}

static const pm_sockopt options[] = {
    OPT_YES("reuseaddr", PM_OPT_BOOL, SOL_SOCKET, SO_REUSEADDR, INET | ANYTYPE),
#ifdef SO_REUSEPORT
    OPT_YES("reuseport", PM_OPT_BOOL, SOL_SOCKET, SO_REUSEPORT, INET | ANYTYPE),
#else
    OPT_NO("reuseport", PM_OPT_BOOL, "SO_REUSEPORT", INET | ANYTYPE),
#endif
    OPT_YES("v6only", PM_OPT_BOOL, IPPROTO_IPV6, IPV6_V6ONLY, PM_FOR_INET6 | ANYTYPE),
    OPT_YES("nodelay", PM_OPT_BOOL, IPPROTO_TCP, TCP_NODELAY, INET | PM_FOR_STREAM),
    OPT_YES("keepalive", PM_OPT_BOOL, SOL_SOCKET, SO_KEEPALIVE, INET | PM_FOR_STREAM),
#ifdef TCP_KEEPIDLE
    OPT_YES("keepidle", PM_OPT_INT, IPPROTO_TCP, TCP_KEEPIDLE, INET | PM_FOR_STREAM),
    OPT_YES("keepintvl", PM_OPT_INT, IPPROTO_TCP, TCP_KEEPINTVL, INET | PM_FOR_STREAM),
    OPT_YES("keepcnt", PM_OPT_INT, IPPROTO_TCP, TCP_KEEPCNT, INET | PM_FOR_STREAM),
#else
    OPT_NO("keepidle", PM_OPT_INT, "TCP_KEEPIDLE", INET | PM_FOR_STREAM),
    OPT_NO("keepintvl", PM_OPT_INT, "TCP_KEEPINTVL", INET | PM_FOR_STREAM),
    OPT_NO("keepcnt", PM_OPT_INT, "TCP_KEEPCNT", INET | PM_FOR_STREAM),
#endif
#ifdef TCP_FASTOPEN
    OPT_YES("fastopen", PM_OPT_INT, IPPROTO_TCP, TCP_FASTOPEN, INET | PM_FOR_STREAM),
#else
    OPT_NO("fastopen", PM_OPT_INT, "TCP_FASTOPEN", INET | PM_FOR_STREAM),
#endif
#ifdef TCP_DEFER_ACCEPT
    OPT_YES("defer_accept", PM_OPT_INT, IPPROTO_TCP, TCP_DEFER_ACCEPT, INET | PM_FOR_STREAM),
#else
    OPT_NO("defer_accept", PM_OPT_INT, "TCP_DEFER_ACCEPT", INET | PM_FOR_STREAM),
#endif
    OPT_YES("rcvbuf", PM_OPT_INT, SOL_SOCKET, SO_RCVBUF, ANYFAM | ANYTYPE),
    OPT_YES("sndbuf", PM_OPT_INT, SOL_SOCKET, SO_SNDBUF, ANYFAM | ANYTYPE),
#ifdef IP_FREEBIND
    /* IPv6 sockets honour the IPv4-level flag too (one inet flag in Linux) */
    OPT_YES("freebind", PM_OPT_BOOL, IPPROTO_IP, IP_FREEBIND, INET | ANYTYPE),
#else
    OPT_NO("freebind", PM_OPT_BOOL, "IP_FREEBIND", INET | ANYTYPE),
#endif
#ifdef SO_BINDTODEVICE
    OPT_YES("bindtodevice", PM_OPT_DEVICE, SOL_SOCKET, SO_BINDTODEVICE, INET | ANYTYPE),
#else
    OPT_NO("bindtodevice", PM_OPT_DEVICE, "SO_BINDTODEVICE", INET | ANYTYPE),
#endif
    /* level and option chosen by family in set/get */
    {"tos", "IP_TOS/IPV6_TCLASS", PM_OPT_TOS, 1, IPPROTO_IP, IP_TOS, INET | ANYTYPE},
    OPT_YES("linger", PM_OPT_LINGER, SOL_SOCKET, SO_LINGER, ANYFAM | PM_FOR_STREAM),
    OPT_YES("broadcast", PM_OPT_BOOL, SOL_SOCKET, SO_BROADCAST, PM_FOR_INET | PM_FOR_DGRAM),
#ifdef IP_LOCAL_PORT_RANGE
    /* Linux 6.3: the range port 0 picks from, (hi << 16) | lo */
    OPT_YES("local_port_range", PM_OPT_INT, IPPROTO_IP, IP_LOCAL_PORT_RANGE, INET | ANYTYPE),
#else
    OPT_NO("local_port_range", PM_OPT_INT, "IP_LOCAL_PORT_RANGE", INET | ANYTYPE),
#endif
};

size_t pm_sockopt_count(void) { return sizeof(options) / sizeof(options[0]); }

const pm_sockopt *pm_sockopt_at(size_t i)
{
    return i < pm_sockopt_count() ? &options[i] : NULL;
}

const pm_sockopt *pm_sockopt_find(const char *name)
{
    for (size_t i = 0; i < pm_sockopt_count(); i++)
        if (strcmp(options[i].name, name) == 0)
            return &options[i];
    return NULL;
}

int pm_sockopt_applies(const pm_sockopt *o, int family, int type)
{
    unsigned fam = family == AF_INET ? PM_FOR_INET : family == AF_INET6 ? PM_FOR_INET6
                 : family == AF_UNIX ? PM_FOR_UNIX : 0;
    unsigned ty = type == SOCK_STREAM ? PM_FOR_STREAM : type == SOCK_DGRAM ? PM_FOR_DGRAM : 0;
    return (o->applies & fam) && (o->applies & ty);
}

static void where(const pm_sockopt *o, int family, int *level, int *optname)
{
    *level = o->level;
    *optname = o->optname;
    if (o->kind == PM_OPT_TOS && family == AF_INET6) {
        *level = IPPROTO_IPV6;
        *optname = IPV6_TCLASS;
    }
}

int pm_sockopt_set(int fd, int family, const pm_sockopt *o, const pm_optval *v)
{
    int level, optname, r;
    if (!o->available)
        return ENOPROTOOPT;
    where(o, family, &level, &optname);
    if (o->kind == PM_OPT_LINGER) {
        struct linger l = {v->i >= 0, v->i >= 0 ? v->i : 0};
        r = setsockopt(fd, level, optname, &l, sizeof(l));
    } else if (o->kind == PM_OPT_DEVICE) {
        r = setsockopt(fd, level, optname, v->dev, (socklen_t)strnlen(v->dev, sizeof(v->dev)));
    } else {
        r = setsockopt(fd, level, optname, &v->i, sizeof(v->i));
    }
    return r < 0 ? errno : 0;
}

int pm_sockopt_get(int fd, int family, const pm_sockopt *o, pm_optval *v)
{
    int level, optname, r;
    memset(v, 0, sizeof(*v));
    if (!o->available)
        return ENOPROTOOPT;
    where(o, family, &level, &optname);
    if (o->kind == PM_OPT_LINGER) {
        struct linger l;
        socklen_t len = sizeof(l);
        r = getsockopt(fd, level, optname, &l, &len);
        v->i = l.l_onoff ? l.l_linger : -1;
    } else if (o->kind == PM_OPT_DEVICE) {
        socklen_t len = sizeof(v->dev);
        r = getsockopt(fd, level, optname, v->dev, &len);
        v->dev[sizeof(v->dev) - 1] = '\0';
    } else {
        socklen_t len = sizeof(v->i);
        r = getsockopt(fd, level, optname, &v->i, &len);
        if (o->kind == PM_OPT_BOOL)
            v->i = v->i != 0;
    }
    return r < 0 ? errno : 0;
}
