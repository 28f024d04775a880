#include "turn.h"

#include <string.h>

#include "stun.h"
#include "visibility.h" /* last: see there */

static int fail(const char **why, const char *msg)
{
    if (why)
        *why = msg;
    return -1;
}

static size_t padded(size_t n) { return (n + 3) & ~(size_t)3; }

size_t pm_turn_channel_write(uint8_t *buf, size_t cap, uint16_t channel, const void *data,
                             size_t len, int tcp)
{
    size_t total = PM_TURN_CHANNEL_HEADER + (tcp ? padded(len) : len);
    if (channel < PM_TURN_CHANNEL_MIN || channel > PM_TURN_CHANNEL_MAX || len > 0xFFFF ||
        total > cap)
        return 0;
    buf[0] = (uint8_t)(channel >> 8);
    buf[1] = (uint8_t)channel;
    buf[2] = (uint8_t)(len >> 8);
    buf[3] = (uint8_t)len;
    if (len)
        memcpy(buf + PM_TURN_CHANNEL_HEADER, data, len);
    memset(buf + PM_TURN_CHANNEL_HEADER + len, 0, total - PM_TURN_CHANNEL_HEADER - len);
    return total;
}

int pm_turn_channel_parse(const uint8_t *buf, size_t len, int tcp, uint16_t *channel,
                          const uint8_t **data, size_t *datalen, const char **why)
{
    if (len < PM_TURN_CHANNEL_HEADER)
        return fail(why, "ChannelData shorter than its header");
    uint16_t ch = pm_stun_u16(buf);
    size_t n = pm_stun_u16(buf + 2);
    if (ch < PM_TURN_CHANNEL_MIN || ch > PM_TURN_CHANNEL_MAX)
        return fail(why, "ChannelData channel number out of range 0x4000-0x4FFF");
    size_t body = len - PM_TURN_CHANNEL_HEADER;
    if (n > body)
        return fail(why, "ChannelData length runs past the message");
    if (tcp ? body != padded(n) : body > padded(n))
        return fail(why, "ChannelData has bytes past its padding");
    *channel = ch;
    *data = buf + PM_TURN_CHANNEL_HEADER;
    *datalen = n;
    return 0;
}

long pm_turn_frame_length(const uint8_t *buf, size_t len, const char **why)
{
    if (len < 4)
        return 0;
    size_t n = pm_stun_u16(buf + 2);
    switch (buf[0] >> 6) {
    case 0: /* STUN: its length counts whole attributes */
        if (n % 4)
            return fail(why, "STUN message length not a multiple of 4");
        return (long)(PM_STUN_HEADER + n);
    case 1: /* ChannelData */
        if (pm_stun_u16(buf) > PM_TURN_CHANNEL_MAX)
            return fail(why, "ChannelData channel number out of range 0x4000-0x4FFF");
        return (long)(PM_TURN_CHANNEL_HEADER + padded(n));
    default:
        return fail(why, "neither STUN nor ChannelData on the stream");
    }
}
