/* libFuzzer target for TURN's parts of the codec: ChannelData framing
 * (datagrams and streams) and the TURN attributes of STUN messages. The
 * first byte picks the mode: even, the rest is a stream of STUN and
 * ChannelData frames as a TCP connection to the server carries them; odd,
 * one UDP datagram. Whatever parses must re-encode to the same bytes and
 * keep its values in the ranges the RFCs give (ASan watches the edges). */
#include <stdint.h>
#include <string.h>

#include "stun.h"
#include "turn.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t out[PM_TURN_CHANNEL_HEADER + 65535 + 3];

static void channel(const uint8_t *buf, size_t len, int tcp)
{
    uint16_t ch;
    const uint8_t *d;
    size_t n;
    const char *why = NULL;
    if (pm_turn_channel_parse(buf, len, tcp, &ch, &d, &n, &why) < 0) {
        if (!why)
            __builtin_trap();
        return;
    }
    if (ch < PM_TURN_CHANNEL_MIN || ch > PM_TURN_CHANNEL_MAX || d != buf + 4 || n > len - 4)
        __builtin_trap();
    size_t w = pm_turn_channel_write(out, sizeof(out), ch, d, n, tcp);
    /* the same header and data; on a stream the same length with padding */
    if (w < 4 + n || memcmp(out, buf, 4 + n) != 0 || (tcp && w != len))
        __builtin_trap();
}

/* A parsed message's TURN attributes: in range, and each address
 * re-encodes to its own bytes (but for the reserved first byte). */
static void turn_attrs(const pm_stun_msg *m)
{
    static uint8_t msg[65535 + PM_STUN_HEADER];
    for (unsigned i = 0; i < m->nattrs; i++) {
        const pm_stun_attr *a = &m->attrs[i];
        const uint8_t *v = m->buf + a->off;
        if ((size_t)a->off + a->len > m->len)
            __builtin_trap();
        if (a->type == PM_TURN_CHANNEL_NUMBER &&
            (a->len != 4 || pm_stun_u16(v) < 0x4000 || pm_stun_u16(v) > 0x4FFF))
            __builtin_trap();
        if ((a->type == PM_TURN_LIFETIME || a->type == PM_TURN_CONNECTION_ID) && a->len != 4)
            __builtin_trap();
        if (a->type == PM_TURN_XOR_PEER_ADDRESS || a->type == PM_TURN_XOR_RELAYED_ADDRESS) {
            pm_stun_addr addr;
            pm_stun_writer w;
            pm_stun_get_addr(m, a, &addr);
            pm_stun_begin(&w, msg, sizeof(msg), m->method, m->cls, m->tid);
            pm_stun_add_addr(&w, a->type, &addr);
            size_t n = pm_stun_finish(&w);
            if (n != PM_STUN_HEADER + 4 + a->len || memcmp(msg + PM_STUN_HEADER + 5, v + 1, a->len - 1u))
                __builtin_trap();
        }
    }
}

static void frame(const uint8_t *buf, size_t len, int tcp)
{
    if (len && buf[0] >> 6 == 1) {
        channel(buf, len, tcp);
        return;
    }
    pm_stun_msg m;
    if (pm_stun_parse(&m, buf, len, NULL) == 0)
        turn_attrs(&m);
}

static void stream(const uint8_t *buf, size_t len)
{
    while (len) {
        const char *why = NULL;
        long n = pm_turn_frame_length(buf, len, &why);
        if (n < 0 && !why)
            __builtin_trap();
        if (n <= 0 || (size_t)n > len)
            return; /* lost, or wait for more bytes */
        if (n < 4)
            __builtin_trap();
        frame(buf, (size_t)n, 1);
        buf += n;
        len -= (size_t)n;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 1)
        frame(data + 1, size - 1, 0);
    else
        stream(data + 1, size - 1);
    return 0;
}
