/* Listening sockets made the way socket2 and nginx make them: socket() with
 * close-on-exec and non-blocking always, every option set before bind(),
 * then bind(), listen() for streams, and the file mode for a Unix path.
 *
 * Lua-free. Failures report the errno and the step that failed
 * ("bind 127.0.0.1:8080", "setsockopt SO_REUSEPORT"), so the binding can
 * word the message and pick the code. */
#ifndef PORTMAN_LISTENER_H
#define PORTMAN_LISTENER_H

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "sockopt.h"

#define PM_MAX_OPTS 32

typedef struct {
    const pm_sockopt *opt;
    pm_optval val;
} pm_optset;

typedef struct {
    int family;      /* AF_INET, AF_INET6, AF_UNIX */
    int type;        /* SOCK_STREAM, SOCK_DGRAM */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int backlog;     /* streams: listen(backlog) */
    int connect;     /* connect to addr instead of binding it (clients) */
    int mode;        /* Unix path: chmod after bind; -1 leaves it */
    pm_optset opts[PM_MAX_OPTS];
    size_t nopts;
} pm_sockspec;

typedef struct {
    int err;         /* errno */
    char what[160];  /* the step: "bind 127.0.0.1:80" */
} pm_sockerr;

/* Fills addr from an IP literal and a port; returns the family, or 0 when
 * host is not an IPv4 or IPv6 literal. */
int pm_addr_ip(const char *host, int port, struct sockaddr_storage *addr, socklen_t *len);
/* Fills addr for a Unix socket path, or an abstract name when abstract is
 * set (no leading NUL in name). Returns 0, or -1 when it does not fit. */
int pm_addr_unix(const char *name, size_t namelen, int abstract,
                 struct sockaddr_storage *addr, socklen_t *len);
/* The host ("::1") into host (INET6_ADDRSTRLEN bytes) and the address
 * ("[::1]:80") into addr (PM_ADDR_IP_LEN bytes) of an IPv4 or IPv6
 * address; returns the port, or -1 for another family. */
#define PM_ADDR_IP_LEN (INET6_ADDRSTRLEN + 8)
int pm_addr_ip_parts(const struct sockaddr_storage *a, char *host, char *addr);
/* "127.0.0.1:80", "[::1]:80", "/run/x.sock", "@name" (abstract), "" (unnamed). */
void pm_addr_format(const struct sockaddr *a, socklen_t len, char *out, size_t size);

/* Opens the socket s describes; returns the fd, or -1 with *e filled.
 * A Unix path already bound is taken over only when it is a socket file
 * that nothing answers on (a stale file left by a crash). */
int pm_socket_open(const pm_sockspec *s, pm_sockerr *e);

/* The address fd (opened from s) is bound to: s's own when it names a port
 * or a Unix name, else the kernel's pick (getsockname). 0, or -1 and errno. */
int pm_socket_bound(int fd, const pm_sockspec *s, struct sockaddr_storage *out, socklen_t *len);

/* Is a process accepting (stream) or bound (dgram) on this Unix address?
 * Answers 1 also when unsure, so a caller never deletes a live socket.
 * It asks by connecting: a live stream server sees one connection that
 * closes at once (the price nginx and others pay too). */
int pm_unix_in_use(const struct sockaddr *a, socklen_t len, int type);

#endif
