/* Socket options by name, in the spirit of Rust's socket2 and nginx's
 * `listen` parameters: one table maps a stable name ("nodelay") to its level,
 * its option and how its value is read and written.
 *
 * Lua-free. An option this build's headers lack stays in the table with
 * available = 0, so a caller can tell "no such option" (a typo) from "not on
 * this system" (unsupported). */
#ifndef PORTMAN_SOCKOPT_H
#define PORTMAN_SOCKOPT_H

#include <net/if.h>
#include <stddef.h>

typedef enum {
    PM_OPT_BOOL,   /* int 0/1 */
    PM_OPT_INT,    /* non-negative int */
    PM_OPT_LINGER, /* struct linger: value -1 is off, else seconds */
    PM_OPT_DEVICE, /* interface name (SO_BINDTODEVICE) */
    PM_OPT_TOS,    /* IP_TOS on IPv4, IPV6_TCLASS on IPv6 */
} pm_optkind;

/* Which sockets an option is meant for (a mask of these). */
enum {
    PM_FOR_INET = 1,
    PM_FOR_INET6 = 2,
    PM_FOR_UNIX = 4,
    PM_FOR_STREAM = 8,
    PM_FOR_DGRAM = 16,
};

typedef struct {
    const char *name;    /* "nodelay" */
    const char *cname;   /* "TCP_NODELAY", for messages */
    pm_optkind kind;
    int available;       /* 0: this build's headers lack it */
    int level, optname;  /* valid when available */
    unsigned applies;    /* PM_FOR_* families | PM_FOR_* types */
} pm_sockopt;

typedef struct {
    int i;                  /* BOOL, INT, TOS; LINGER: -1 off or seconds */
    char dev[IF_NAMESIZE];  /* DEVICE; "" unbinds */
} pm_optval;

size_t pm_sockopt_count(void);
const pm_sockopt *pm_sockopt_at(size_t i);
/* The option named name, or NULL. */
const pm_sockopt *pm_sockopt_find(const char *name);
/* Does o apply to a socket of this family (AF_*) and type (SOCK_*)? */
int pm_sockopt_applies(const pm_sockopt *o, int family, int type);

/* Set or read o on fd (family picks IP_TOS or IPV6_TCLASS). Return 0, or an
 * errno value (ENOPROTOOPT when o is not available in this build). */
int pm_sockopt_set(int fd, int family, const pm_sockopt *o, const pm_optval *v);
int pm_sockopt_get(int fd, int family, const pm_sockopt *o, pm_optval *v);

#endif
