#include "listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "visibility.h" /* last: see there */

int pm_addr_ip(const char *host, int port, struct sockaddr_storage *addr, socklen_t *len)
{
    memset(addr, 0, sizeof(*addr));
    struct sockaddr_in *a4 = (struct sockaddr_in *)addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)addr;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof(*a4);
        return AF_INET;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*a6);
        return AF_INET6;
    }
    return 0;
}

int pm_addr_unix(const char *name, size_t namelen, int abstract,
                 struct sockaddr_storage *addr, socklen_t *len)
{
    struct sockaddr_un *u = (struct sockaddr_un *)addr;
    size_t room = sizeof(u->sun_path) - 1; /* a path keeps its NUL; a name its lead NUL */
    if (namelen == 0 || namelen > room || memchr(name, '\0', namelen))
        return -1;
    memset(addr, 0, sizeof(*addr));
    u->sun_family = AF_UNIX;
    memcpy(u->sun_path + (abstract ? 1 : 0), name, namelen);
    /* an abstract name is exactly its bytes: the length bounds it */
    *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + namelen + 1);
    return 0;
}

void pm_addr_format(const struct sockaddr *a, socklen_t len, char *out, size_t size)
{
    char ip[INET6_ADDRSTRLEN];
    if (a->sa_family == AF_INET) {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)a;
        inet_ntop(AF_INET, &a4->sin_addr, ip, sizeof(ip));
        snprintf(out, size, "%s:%d", ip, ntohs(a4->sin_port));
    } else if (a->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)a;
        inet_ntop(AF_INET6, &a6->sin6_addr, ip, sizeof(ip));
        snprintf(out, size, "[%s]:%d", ip, ntohs(a6->sin6_port));
    } else if (a->sa_family == AF_UNIX) {
        const struct sockaddr_un *u = (const struct sockaddr_un *)a;
        size_t n = len > offsetof(struct sockaddr_un, sun_path)
                       ? len - offsetof(struct sockaddr_un, sun_path) : 0;
        if (n == 0)
            snprintf(out, size, "%s", "");
        else if (u->sun_path[0] == '\0')
            snprintf(out, size, "@%.*s", (int)(n - 1), u->sun_path + 1);
        else
            snprintf(out, size, "%.*s", (int)strnlen(u->sun_path, n), u->sun_path);
    } else {
        snprintf(out, size, "family %d", a->sa_family);
    }
}

/* Decimal digits of v at out; returns their count. */
static size_t put_uint(unsigned v, char *out)
{
    char rev[10];
    size_t n = 0;
    do
        rev[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = rev[n - 1 - i];
    return n;
}

int pm_addr_ip_parts(const struct sockaddr_storage *a, char *host, char *addr)
{
    size_t n;
    int port;
    if (a->ss_family == AF_INET) {
        /* by hand: inet_ntop formats IPv4 with sprintf, the costliest step
         * of a listener's open */
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)a;
        const unsigned char *b = (const unsigned char *)&a4->sin_addr;
        n = 0;
        for (int i = 0; i < 4; i++) {
            if (i)
                host[n++] = '.';
            n += put_uint(b[i], host + n);
        }
        port = ntohs(a4->sin_port);
    } else if (a->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)a;
        inet_ntop(AF_INET6, &a6->sin6_addr, host, INET6_ADDRSTRLEN);
        n = strlen(host);
        port = ntohs(a6->sin6_port);
    } else {
        return -1;
    }
    host[n] = '\0';
    char *p = addr;
    int v6 = a->ss_family == AF_INET6;
    if (v6)
        *p++ = '[';
    memcpy(p, host, n);
    p += n;
    if (v6)
        *p++ = ']';
    *p++ = ':';
    p += put_uint((unsigned)port, p);
    *p = '\0';
    return port;
}

static int fail(pm_sockerr *e, int err, const char *fmt, ...)
{
    va_list ap;
    e->err = err;
    va_start(ap, fmt);
    vsnprintf(e->what, sizeof(e->what), fmt, ap);
    va_end(ap);
    return -1;
}

int pm_unix_in_use(const struct sockaddr *a, socklen_t len, int type)
{
    /* Non-blocking, so a full backlog answers EAGAIN (in use) at once. */
    int fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return 1;
    int r = connect(fd, a, len);
    int err = errno;
    close(fd);
    return r == 0 || err != ECONNREFUSED;
}

/* bind(), and for a Unix path that a crash left behind, unlink and bind
 * again. A file that is not a socket, or a socket someone answers on, stays. */
static int bind_or_reclaim(int fd, const pm_sockspec *s)
{
    if (bind(fd, (const struct sockaddr *)&s->addr, s->addrlen) == 0)
        return 0;
    const struct sockaddr_un *u = (const struct sockaddr_un *)&s->addr;
    if (errno != EADDRINUSE || s->family != AF_UNIX || u->sun_path[0] == '\0')
        return -1;
    struct stat st;
    if (lstat(u->sun_path, &st) != 0 || !S_ISSOCK(st.st_mode) ||
        pm_unix_in_use((const struct sockaddr *)&s->addr, s->addrlen, s->type)) {
        errno = EADDRINUSE;
        return -1;
    }
    if (unlink(u->sun_path) != 0 && errno != ENOENT) {
        errno = EADDRINUSE;
        return -1;
    }
    return bind(fd, (const struct sockaddr *)&s->addr, s->addrlen);
}

static int set_options(int fd, const pm_sockspec *s, pm_sockerr *e)
{
    for (size_t i = 0; i < s->nopts; i++) {
        const pm_sockopt *o = s->opts[i].opt;
        int err = pm_sockopt_set(fd, s->family, o, &s->opts[i].val);
        if (err)
            return fail(e, err, "setsockopt %s", o->cname);
    }
    return 0;
}

/* The failed step with the address it was for ("bind 127.0.0.1:80"); the
 * address is formatted only here, so an open that succeeds never pays it. */
static int fail_at(pm_sockerr *e, int err, const char *step, const pm_sockspec *s)
{
    char name[128];
    pm_addr_format((const struct sockaddr *)&s->addr, s->addrlen, name, sizeof(name));
    return fail(e, err, "%s %s", step, name);
}

/* Options, then connect, or bind (reclaiming a stale Unix path), chmod and
 * listen. Returns 0, or -1 with *e filled; fd stays open. */
static int socket_setup(int fd, const pm_sockspec *s, pm_sockerr *e)
{
    if (set_options(fd, s, e) < 0)
        return -1;
    if (s->connect) {
        if (connect(fd, (const struct sockaddr *)&s->addr, s->addrlen) < 0 && errno != EINPROGRESS)
            return fail_at(e, errno, "connect", s);
        return 0;
    }
    if (bind_or_reclaim(fd, s) < 0)
        return fail_at(e, errno, "bind", s);
    const struct sockaddr_un *u = (const struct sockaddr_un *)&s->addr;
    int path = s->family == AF_UNIX && u->sun_path[0] != '\0';
    if (path && s->mode >= 0 && chmod(u->sun_path, (mode_t)s->mode) < 0) {
        fail_at(e, errno, "chmod", s);
        unlink(u->sun_path);
        return -1;
    }
    if (s->type == SOCK_STREAM && listen(fd, s->backlog) < 0) {
        fail_at(e, errno, "listen", s);
        if (path)
            unlink(u->sun_path);
        return -1;
    }
    return 0;
}

int pm_socket_open(const pm_sockspec *s, pm_sockerr *e)
{
    /* SOCK_NONBLOCK and SOCK_CLOEXEC here: no fcntl() afterwards */
    int fd = socket(s->family, s->type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return fail(e, errno, "socket");
    if (socket_setup(fd, s, e) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int port_of(const struct sockaddr_storage *a)
{
    if (a->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)a)->sin_port);
    if (a->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
    return -1;
}

int pm_socket_bound(int fd, const pm_sockspec *s, struct sockaddr_storage *out, socklen_t *len)
{
    /* a Unix name or a port asked is known already; a connected socket's
     * own end never is */
    if (!s->connect && port_of(&s->addr) != 0) {
        *out = s->addr;
        *len = s->addrlen;
        return 0;
    }
    *len = sizeof(*out);
    return getsockname(fd, (struct sockaddr *)out, len);
}
