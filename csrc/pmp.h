/* NAT-PMP (RFC 6886) over libnatpmp, driven by the caller's loop: one
 * request at a time on a non-blocking socket; pm_pmp_fd() to poll (an
 * epoll instance: an ICMP error on the socket itself would reach the
 * loop as a poll error, here it only makes the fd readable),
 * pm_pmp_timeout_ms() for the next retry (250 ms, doubling, as libnatpmp
 * schedules them), pm_pmp_step() when either fires. */
#ifndef PORTMAN_PMP_H
#define PORTMAN_PMP_H

#include <natpmp.h>
#include <stdint.h>

struct pm_pmp {
    natpmp_t np;
    int ep; /* an epoll instance holding the socket: what the loop polls */
    int open, busy;
    char gateway[16];
};

struct pm_pmp_result {
    int done;           /* 0: still waiting */
    int error;          /* 0, or a libnatpmp error (< 0) */
    const char *code;   /* the code word (docs/design.md, "Errors") when error != 0 */
    int sys_errno;      /* errno of a socket error */
    uint32_t epoch;     /* seconds since the gateway's mapping table started */
    char external_ip[16];
    int internal_port, external_port;
    uint32_t lifetime;
};

/* Opens the socket towards the default gateway (or gw, dotted quad, when
 * not NULL); 0, or a libnatpmp error with errno set. */
int pm_pmp_open(struct pm_pmp *p, const char *gw);
void pm_pmp_close(struct pm_pmp *p);
int pm_pmp_fd(const struct pm_pmp *p);
/* Sends a public address request (proto 0) or a mapping request (proto
 * "tcp"/"udp": lifetime 0 deletes); 0 or a libnatpmp error. */
int pm_pmp_request(struct pm_pmp *p, const char *proto, int internal_port, int external_port,
                   uint32_t lifetime);
/* Milliseconds until the next retry is due (0: now; -1: nothing pending). */
int pm_pmp_timeout_ms(struct pm_pmp *p);
/* Reads an answer or resends when due; fills r (r->done says whether it finished). */
void pm_pmp_step(struct pm_pmp *p, struct pm_pmp_result *r);
/* The code word of a libnatpmp error. */
const char *pm_pmp_code(int err, int sys_errno);

#endif
