/* PCP (RFC 6887) client: a pure codec (pm_pcp_build, pm_pcp_parse: the
 * fuzz target and the specs call them without a socket) and an engine on
 * one UDP socket connected to the gateway's port 5351, driven by the
 * caller's loop as the NAT-PMP one (pmp.h): pm_pcp_fd() to poll (an epoll
 * instance holding the socket, so an ICMP error only makes it readable),
 * pm_pcp_timeout_ms() for the next resend, pm_pcp_step() when either
 * fires. One request at a time; IPv4 only (the addresses travel in their
 * IPv4-mapped IPv6 form). */
#ifndef PORTMAN_PCP_H
#define PORTMAN_PCP_H

#include <stddef.h>
#include <stdint.h>

#define PM_PCP_PORT 5351
#define PM_PCP_VERSION 2
#define PM_PCP_ANNOUNCE 0
#define PM_PCP_MAP 1
#define PM_PCP_HEADER 24    /* the common header of requests and answers */
#define PM_PCP_MAP_LEN 60   /* header and MAP opcode data */
#define PM_PCP_MAX_MSG 1100 /* RFC 6887 7: the longest PCP message */
#define PM_PCP_NONCE 12
/* The longest lifetime believed from a gateway: a week, as NAT-PMP's
 * (pmp.h): 2^32-1 would put the renewal 68 years away. */
#define PM_PCP_MAX_LIFETIME 604800u
/* The first resend after 250 ms, then doubling (RFC 6887 8.1.1 starts at
 * 3 s; portman's caller has a timeout of a few seconds), each with RFC
 * 6887's +-10 % jitter, until the caller's timeout. */
#define PM_PCP_FIRST_RT_MS 250
#define PM_PCP_MAX_RT_MS 1024000

/* pm_pcp_result.error besides a PCP result code (1-255) */
#define PM_PCP_ERR_BADANSWER (-1) /* a malformed or mismatched answer */
#define PM_PCP_ERR_NOANSWER (-2)  /* none within the timeout */
#define PM_PCP_ERR_SYS (-3)       /* a socket error: sys_errno */

/* A request, and what its answer must match. */
struct pm_pcp_req {
    int op;                       /* PM_PCP_ANNOUNCE or PM_PCP_MAP */
    uint32_t lifetime;            /* asked for; 0 deletes */
    uint8_t client[4];            /* the client's address (the socket's own) */
    uint8_t nonce[PM_PCP_NONCE];  /* the mapping's: the same for its renewals and delete */
    uint8_t proto;                /* 6 (TCP) or 17 (UDP) */
    uint16_t internal_port;
    uint16_t external_port;       /* suggested; 0: none */
    uint8_t external[4];          /* suggested; 0.0.0.0: none */
    uint8_t gateway[4];           /* never an external address */
};

struct pm_pcp_result {
    int done;          /* 0: still waiting */
    int error;         /* 0, a PCP result code or PM_PCP_ERR_* */
    const char *code;  /* the code word (docs/design.md, "Errors") when error != 0 */
    char why[112];     /* what was wrong, when error != 0 */
    int sys_errno;
    int op;
    uint32_t epoch;    /* the server's epoch time: seconds since its mappings began */
    uint32_t lifetime;
    char external_ip[16];
    int internal_port, external_port;
};

/* Writes the request (24 bytes for ANNOUNCE, 60 for MAP) into b (cap
 * bytes); returns its length, or 0 when cap is too small or op unknown. */
size_t pm_pcp_build(uint8_t *b, size_t cap, const struct pm_pcp_req *req);

/* Parses and checks the n bytes of an answer to req. prev_op is the opcode
 * of the request answered before on the same socket (-1: none): a late
 * copy of that answer is ignored (returns 0). Else returns 1 with r
 * filled: the answer's fields, or an error and its code. Checked: at
 * least 4 bytes; version 2 (a NAT-PMP gateway's "unsupported version"
 * answer is `unsupported`); the R bit and the request's opcode; 24-1100
 * bytes, a multiple of 4; result code 0 (another is the error it names);
 * then for MAP: 60 bytes, the nonce, protocol and internal port of the
 * request, a lifetime in 1-PM_PCP_MAX_LIFETIME (0 answering a delete), an
 * external port 1-65535 and an external address in IPv4-mapped form that
 * is unicast, not 0/8, 127/8 nor the gateway's own (a delete's external
 * port and address are unused); and the options after it well formed. */
int pm_pcp_parse(const uint8_t *b, size_t n, const struct pm_pcp_req *req, int prev_op,
                 struct pm_pcp_result *r);

/* The code word of a PCP result code (RFC 6887 7.4). */
const char *pm_pcp_result_code(unsigned rc);

struct pm_pcp {
    int s, ep;
    int open, busy;
    int prev_op;
    struct pm_pcp_req req;
    uint8_t pkt[PM_PCP_MAP_LEN];
    size_t pkt_len;
    int64_t next_ms, deadline_ms; /* CLOCK_MONOTONIC */
    int64_t rt_ms;                /* the current retransmission time */
    int tries;
    uint32_t jitter;              /* xorshift state for the jitter */
    char gateway[16], local[16];
};

/* Opens the socket towards gw (dotted quad) or the default gateway;
 * 0, or -1 with errno set (ENETUNREACH: no default gateway). */
int pm_pcp_open(struct pm_pcp *p, const char *gw);
void pm_pcp_close(struct pm_pcp *p);
int pm_pcp_fd(const struct pm_pcp *p);
/* Sends req (its client and gateway fields are filled here) and resends
 * it on the schedule above until timeout_ms; 0, or -1 with errno. */
int pm_pcp_request(struct pm_pcp *p, const struct pm_pcp_req *req, int timeout_ms);
/* Milliseconds until the next step is due (0: now; -1: nothing pending). */
int pm_pcp_timeout_ms(const struct pm_pcp *p);
/* Reads an answer, or resends when due; fills r (r->done says whether it finished). */
void pm_pcp_step(struct pm_pcp *p, struct pm_pcp_result *r);

#endif
