/* NAT-PMP (RFC 6886) over libnatpmp, driven by the caller's loop: one
 * request at a time on a non-blocking socket; pm_pmp_fd() to poll (an
 * epoll instance: an ICMP error on the socket itself would reach the
 * loop as a poll error, here it only makes the fd readable),
 * pm_pmp_timeout_ms() for the next retry (250 ms, doubling, as libnatpmp
 * schedules them), pm_pmp_step() when either fires. libnatpmp builds and
 * sends the requests; the answers are read and checked here
 * (pm_pmp_parse), as libnatpmp believes any answer of the right size. */
#ifndef PORTMAN_PMP_H
#define PORTMAN_PMP_H

#include <natpmp.h>
#include <stddef.h>
#include <stdint.h>

/* The longest lifetime believed from a gateway: a week, as long as portman
 * asks for (nat.lua's lifetime bound). RFC 6886 lets the gateway grant
 * another lifetime than asked; one longer than a week is taken for junk
 * (2^32-1 would put the renewal 68 years away). */
#define PM_PMP_MAX_LIFETIME 604800u
/* A malformed or inconsistent answer (pm_pmp_result.error; code "protocol") */
#define PM_PMP_ERR_BADANSWER (-200)
/* The most retries, as libnatpmp (NATPMP_MAX_RETRIES): about 64 s in all */
#define PM_PMP_MAX_TRIES 9

/* What an answer must match: the request it answers. */
struct pm_pmp_req {
    int op;                 /* 0: public address; 1: UDP mapping; 2: TCP mapping */
    uint16_t internal_port; /* a mapping's */
    uint32_t lifetime;      /* asked for; 0 deletes */
    uint32_t gateway;       /* the gateway's address, network order */
};

struct pm_pmp {
    natpmp_t np;
    int ep; /* an epoll instance holding the socket: what the loop polls */
    int open, busy;
    int prev_op; /* the opcode of the request answered before this one, or -1 */
    struct pm_pmp_req req;
    char gateway[16];
};

struct pm_pmp_result {
    int done;           /* 0: still waiting */
    int error;          /* 0, a libnatpmp error (< 0) or PM_PMP_ERR_BADANSWER */
    const char *code;   /* the code word (docs/design.md, "Errors") when error != 0 */
    char why[96];       /* what was wrong with the answer, when error != 0 and it is set */
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
/* Parses and checks the n bytes of an answer to req (no socket: the fuzz
 * target calls it). prev_op is the opcode of the request answered before
 * on the same socket (-1: none): a late copy of that answer (a retry
 * answered twice) is ignored. Returns 0 when the bytes are to be ignored,
 * else 1 with r filled: done, and the answer's fields or an error and its
 * code. Every field is checked: version 0, opcode 128 + req->op, result
 * code 0 (another is the error it names), the length of the opcode's
 * answer (bytes after it are ignored), then an address that is a unicast
 * one other than 0/8, 127/8 and the gateway's own, or a mapping of the
 * internal port asked for with an external port 1-65535 and a lifetime in
 * 1-PM_PMP_MAX_LIFETIME (a delete's: lifetime 0, its external port unused). */
int pm_pmp_parse(const uint8_t *b, size_t n, const struct pm_pmp_req *req, int prev_op,
                 struct pm_pmp_result *r);
/* The code word of a libnatpmp error. */
const char *pm_pmp_code(int err, int sys_errno);

#endif
