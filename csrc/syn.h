/* Raw TCP SYN scans over IPv4 (nmap -sS): the packets. Pure functions, no
 * sockets: lua_syn.c has the engine that sends and receives them, and
 * fuzz/syn_fuzz.c feeds the parser.
 *
 * A SYN goes out with a sequence number that is a keyed hash of (source
 * address, destination address, source port, destination port), as nmap
 * does: a reply counts only when its ack is that number + 1 (or, in an ICMP
 * error, when the TCP header it quotes carries that number), so a stale
 * reply from an earlier scan or a spoofed one that did not see the SYN is
 * ignored without keeping a table of what was sent. Addresses and ports are
 * in host byte order throughout this API. */
#ifndef PORTMAN_SYN_H
#define PORTMAN_SYN_H

#include <stddef.h>
#include <stdint.h>

/* A SYN segment: the TCP header (20 bytes) and an MSS option (4). */
#define PM_SYN_LEN 24
#define PM_SYN_KEY_LEN 16

/* The Internet checksum of data, folded into sum (start with 0); returns
 * the running sum; pm_syn_fold gives the final 16-bit checksum. */
uint32_t pm_syn_sum(uint32_t sum, const uint8_t *data, size_t len);
uint16_t pm_syn_fold(uint32_t sum);

/* The sequence number of the SYN from src:sport to dst:dport. */
uint32_t pm_syn_seq(const uint8_t key[PM_SYN_KEY_LEN], uint32_t src, uint32_t dst, uint16_t sport,
                    uint16_t dport);

/* Writes the SYN segment to out, its checksum over the IPv4 pseudo-header
 * included. */
void pm_syn_build(uint8_t out[PM_SYN_LEN], uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport,
                  uint32_t seq);

enum pm_syn_kind {
    PM_SYN_SYNACK = 1, /* SYN+ACK: the port is open */
    PM_SYN_RST, /* RST+ACK: closed */
    PM_SYN_ICMP, /* an ICMP destination unreachable or time exceeded quoting a TCP segment */
};

/* What a reply says about the probe it answers. src, dst, sport and dport
 * are the probe's (ours and the target's), seq the probe's sequence number
 * as the reply gives it back (ack - 1, or the quoted one). For ICMP, from is
 * the address that sent the error (a router, or the target). */
typedef struct {
    int kind;
    uint32_t src, dst, from;
    uint16_t sport, dport;
    uint32_t seq;
    uint8_t icmp_type, icmp_code;
} pm_syn_reply;

/* Parses one IPv4 packet as a raw socket gives it (the IP header first):
 * 0 with *r filled for a reply of one of the kinds above, -1 for anything
 * else (another protocol or TCP segment, a fragment, a truncated or
 * inconsistent header). It validates lengths and the header fields it
 * reads; it does not check that the reply matches a probe (the caller
 * compares addresses, ports and seq). */
int pm_syn_parse(const uint8_t *pkt, size_t len, pm_syn_reply *r);

/* Whether reply r answers the SYN that a scan with this key sent from
 * src:sport to r's dst:dport: the addresses, our port and the sequence
 * number all match. 1 or 0. */
int pm_syn_match(const pm_syn_reply *r, const uint8_t key[PM_SYN_KEY_LEN], uint32_t src, uint32_t dst,
                 uint16_t sport);

/* The probe state (PM_PROBE_*, probe.h) a reply means, and the errno behind
 * an unreachable one in *err (0 otherwise); -1 for an ICMP message that
 * says nothing about the port. The states are the connect engine's, so a
 * SYN scan reads the same: an ICMP port unreachable is closed, the other
 * unreachables and a time exceeded are unreachable, with the errno Linux
 * gives a connect() for them. */
int pm_syn_state(const pm_syn_reply *r, int *err);

#endif
