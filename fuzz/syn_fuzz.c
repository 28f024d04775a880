/* libFuzzer target for the SYN scan's reply parser (pm_syn_parse, syn.c):
 * the input is one IPv4 packet as a raw socket gives it. Whatever the
 * bytes, the parser must decide without reading past them, and a reply it
 * accepts must say what the bytes say: the kind from the TCP flags or the
 * ICMP type, the ports and sequence number from where the header puts
 * them. The state a reply maps to must be a known one. A SYN built back
 * from the reply's addresses and ports must carry a checksum that sums to
 * zero over the pseudo-header. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "probe.h"
#include "syn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

static uint32_t get32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static uint16_t get16(const uint8_t *b) { return (uint16_t)(b[0] << 8 | b[1]); }

static void check_tcp(const uint8_t *d, size_t size, size_t ihl, const pm_syn_reply *r)
{
    const uint8_t *tcp = d + ihl;
    CHECK(d[9] == 6 && ihl + 20 <= size && ihl + (size_t)(tcp[12] >> 4) * 4 <= size);
    CHECK(tcp[13] & 0x10); /* ACK */
    CHECK(r->kind == ((tcp[13] & 0x02) ? PM_SYN_SYNACK : PM_SYN_RST));
    CHECK(r->dport == get16(tcp) && r->sport == get16(tcp + 2) && r->seq == get32(tcp + 8) - 1);
    CHECK(r->dst == get32(d + 12) && r->src == get32(d + 16));
}

static void check_icmp(const uint8_t *d, size_t size, size_t ihl, const pm_syn_reply *r)
{
    CHECK(d[9] == 1 && ihl + 8 + 20 <= size);
    const uint8_t *icmp = d + ihl, *inner = icmp + 8;
    size_t iihl = (size_t)(inner[0] & 0x0f) * 4;
    CHECK(r->kind == PM_SYN_ICMP && (icmp[0] == 3 || icmp[0] == 11) && r->icmp_type == icmp[0]);
    CHECK(inner[9] == 6 && ihl + 8 + iihl + 8 <= size);
    CHECK(r->sport == get16(inner + iihl) && r->dport == get16(inner + iihl + 2));
    CHECK(r->seq == get32(inner + iihl + 4) && r->src == get32(inner + 12) && r->dst == get32(inner + 16));
    CHECK(r->from == get32(d + 12));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* a copy of exactly size bytes, so ASan sees any read past the end */
    uint8_t *d = malloc(size ? size : 1);
    if (!d)
        return 0;
    memcpy(d, data, size);
    pm_syn_reply r;
    if (pm_syn_parse(d, size, &r) == 0) {
        CHECK(size >= 20 && d[0] >> 4 == 4);
        size_t ihl = (size_t)(d[0] & 0x0f) * 4;
        CHECK(ihl >= 20 && ihl <= size && get16(d + 2) <= size && (get16(d + 6) & 0x1fff) == 0);
        if (r.kind == PM_SYN_ICMP)
            check_icmp(d, size, ihl, &r);
        else
            check_tcp(d, size, ihl, &r);
        int err, state = pm_syn_state(&r, &err);
        CHECK(state == -1 || state == PM_PROBE_OPEN || state == PM_PROBE_CLOSED || state == PM_PROBE_UNREACHABLE);
        CHECK(state == PM_PROBE_UNREACHABLE ? err != 0 : err == 0);
        static const uint8_t key[PM_SYN_KEY_LEN] = "fuzzing-key-0123";
        CHECK(pm_syn_match(&r, key, r.src, r.dst, r.sport) == (r.seq == pm_syn_seq(key, r.src, r.dst, r.sport, r.dport)));
        uint8_t seg[PM_SYN_LEN], pseudo[12];
        pm_syn_build(seg, r.src, r.dst, r.sport, r.dport, r.seq);
        memcpy(pseudo, d + 12, 8); /* the reply's addresses: the sum does not depend on their order */
        pseudo[8] = 0;
        pseudo[9] = 6;
        pseudo[10] = 0;
        pseudo[11] = PM_SYN_LEN;
        if (r.kind != PM_SYN_ICMP)
            CHECK(pm_syn_fold(pm_syn_sum(pm_syn_sum(0, pseudo, 12), seg, PM_SYN_LEN)) == 0);
    }
    free(d);
    return 0;
}
