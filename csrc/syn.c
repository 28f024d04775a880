/* SYN scan packets: see syn.h. */
#include "syn.h"

#include <errno.h>
#include <string.h>

#include "probe.h"
#include "visibility.h" /* last: see there */

#define IPPROTO_TCP_ 6
#define IPPROTO_ICMP_ 1
#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10
#define MSS 1460

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

uint32_t pm_syn_sum(uint32_t sum, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += get16(data + i);
    if (len & 1)
        sum += (uint32_t)data[len - 1] << 8;
    return sum;
}

uint16_t pm_syn_fold(uint32_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* SipHash-2-4 of a 12-byte message (the two addresses and ports): the
 * sequence number must not be guessable from earlier ones without the
 * scan's key. */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                             \
    do {                                                                                                     \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                            \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                               \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                               \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                            \
    } while (0)

static uint64_t le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t siphash12(const uint8_t key[16], const uint8_t msg[12])
{
    uint64_t k0 = le64(key), k1 = le64(key + 8);
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    uint64_t m = le64(msg);
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
    /* the last block: the 4 remaining bytes and the length (12) on top */
    m = (uint64_t)12 << 56 | (uint64_t)msg[11] << 24 | (uint64_t)msg[10] << 16 | (uint64_t)msg[9] << 8 | msg[8];
    v3 ^= m;
    SIPROUND;
    SIPROUND;
    v0 ^= m;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

uint32_t pm_syn_seq(const uint8_t key[PM_SYN_KEY_LEN], uint32_t src, uint32_t dst, uint16_t sport,
                    uint16_t dport)
{
    uint8_t msg[12];
    put32(msg, src);
    put32(msg + 4, dst);
    put16(msg + 8, sport);
    put16(msg + 10, dport);
    return (uint32_t)siphash12(key, msg);
}

void pm_syn_build(uint8_t out[PM_SYN_LEN], uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport,
                  uint32_t seq)
{
    memset(out, 0, PM_SYN_LEN);
    put16(out, sport);
    put16(out + 2, dport);
    put32(out + 4, seq);
    out[12] = (PM_SYN_LEN / 4) << 4; /* data offset, in 32-bit words */
    out[13] = TCP_SYN;
    put16(out + 14, 1024); /* window, as nmap's SYN */
    out[20] = 2; /* MSS option: kind 2, length 4 */
    out[21] = 4;
    put16(out + 22, MSS);
    uint8_t pseudo[12];
    put32(pseudo, src);
    put32(pseudo + 4, dst);
    pseudo[8] = 0;
    pseudo[9] = IPPROTO_TCP_;
    put16(pseudo + 10, PM_SYN_LEN);
    put16(out + 16, pm_syn_fold(pm_syn_sum(pm_syn_sum(0, pseudo, sizeof(pseudo)), out, PM_SYN_LEN)));
}

/* An IPv4 header at pkt (len bytes from there): its length, and the
 * protocol and total length it gives, or -1. total is capped at len: a
 * raw socket gives at most what arrived, and an ICMP error quotes only the
 * start of the packet. A fragment other than the first is refused (no TCP
 * header in it). */
static int ip_header(const uint8_t *pkt, size_t len, int quoted, size_t *ihl, int *proto, size_t *total)
{
    if (len < 20 || pkt[0] >> 4 != 4)
        return -1;
    *ihl = (size_t)(pkt[0] & 0x0f) * 4;
    *total = get16(pkt + 2);
    if (*ihl < 20 || *ihl > len || *total < *ihl)
        return -1;
    if (!quoted && *total > len)
        return -1;
    if (*total > len)
        *total = len;
    if ((get16(pkt + 6) & 0x1fff) != 0)
        return -1;
    *proto = pkt[9];
    return 0;
}

/* A TCP segment answering a SYN of ours: SYN+ACK or RST+ACK. */
static int parse_tcp(const uint8_t *ip, size_t ihl, size_t total, pm_syn_reply *r)
{
    const uint8_t *tcp = ip + ihl;
    size_t tlen = total - ihl;
    if (tlen < 20 || (size_t)(tcp[12] >> 4) * 4 < 20 || (size_t)(tcp[12] >> 4) * 4 > tlen)
        return -1;
    uint8_t flags = tcp[13];
    if (!(flags & TCP_ACK))
        return -1; /* an answer to a SYN acknowledges it */
    if ((flags & (TCP_SYN | TCP_RST | TCP_FIN)) == TCP_SYN)
        r->kind = PM_SYN_SYNACK;
    else if ((flags & (TCP_SYN | TCP_RST)) == TCP_RST)
        r->kind = PM_SYN_RST;
    else
        return -1;
    /* the reply goes from the target to us: swap to the probe's view */
    r->dst = get32(ip + 12);
    r->src = get32(ip + 16);
    r->from = r->dst;
    r->dport = get16(tcp);
    r->sport = get16(tcp + 2);
    r->seq = get32(tcp + 8) - 1;
    r->icmp_type = r->icmp_code = 0;
    return 0;
}

/* An ICMP destination unreachable (3) or time exceeded (11) that quotes the
 * IP header and the first 8 bytes of a TCP segment of ours. */
static int parse_icmp(const uint8_t *ip, size_t ihl, size_t total, pm_syn_reply *r)
{
    const uint8_t *icmp = ip + ihl;
    size_t ilen = total - ihl;
    if (ilen < 8 || (icmp[0] != 3 && icmp[0] != 11))
        return -1;
    const uint8_t *inner = icmp + 8;
    size_t iihl, itotal;
    int proto;
    if (ip_header(inner, ilen - 8, 1, &iihl, &proto, &itotal) < 0 || proto != IPPROTO_TCP_ ||
        itotal < iihl + 8)
        return -1;
    const uint8_t *tcp = inner + iihl;
    r->kind = PM_SYN_ICMP;
    r->from = get32(ip + 12);
    r->src = get32(inner + 12);
    r->dst = get32(inner + 16);
    r->sport = get16(tcp);
    r->dport = get16(tcp + 2);
    r->seq = get32(tcp + 4);
    r->icmp_type = icmp[0];
    r->icmp_code = icmp[1];
    return 0;
}

int pm_syn_parse(const uint8_t *pkt, size_t len, pm_syn_reply *r)
{
    size_t ihl, total;
    int proto;
    if (ip_header(pkt, len, 0, &ihl, &proto, &total) < 0)
        return -1;
    if (proto == IPPROTO_TCP_)
        return parse_tcp(pkt, ihl, total, r);
    if (proto == IPPROTO_ICMP_)
        return parse_icmp(pkt, ihl, total, r);
    return -1;
}

int pm_syn_match(const pm_syn_reply *r, const uint8_t key[PM_SYN_KEY_LEN], uint32_t src, uint32_t dst,
                 uint16_t sport)
{
    return r->src == src && r->dst == dst && r->sport == sport &&
           r->seq == pm_syn_seq(key, src, dst, sport, r->dport);
}

/* Linux's errno for an ICMP destination unreachable code (icmp_err_convert
 * in net/ipv4/icmp.c), so that a SYN scan names the same error as a
 * connect() would. */
static int unreach_errno(int code)
{
    switch (code) {
    case 0: /* net unreachable */
    case 6: /* net unknown */
    case 9: /* net administratively prohibited */
    case 11: /* net unreachable for TOS */
        return ENETUNREACH;
    case 2:
        return ENOPROTOOPT;
    case 4:
        return EMSGSIZE;
    case 5:
        return EOPNOTSUPP;
    case 7:
        return EHOSTDOWN;
    case 8:
        return ENONET;
    default: /* host unreachable, host prohibited, filtered, precedence */
        return EHOSTUNREACH;
    }
}

int pm_syn_state(const pm_syn_reply *r, int *err)
{
    *err = 0;
    switch (r->kind) {
    case PM_SYN_SYNACK:
        return PM_PROBE_OPEN;
    case PM_SYN_RST:
        return PM_PROBE_CLOSED;
    case PM_SYN_ICMP:
        if (r->icmp_type == 3 && r->icmp_code == 3)
            return PM_PROBE_CLOSED;
        if (r->icmp_type == 3 && r->icmp_code == 4)
            return -1; /* fragmentation needed: a path MTU matter, not the port's */
        *err = r->icmp_type == 3 ? unreach_errno(r->icmp_code) : EHOSTUNREACH;
        return PM_PROBE_UNREACHABLE;
    default:
        return -1;
    }
}
