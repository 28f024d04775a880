/* TURN's ChannelData messages (RFC 8656 section 12.4) and the framing of
 * STUN and ChannelData messages on a stream (RFC 8656 section 12.5,
 * RFC 6062). The STUN side of TURN (methods and attributes) is in stun.h.
 *
 * Lua-free, like stun.c: the fuzzer links it alone. */
#ifndef PORTMAN_TURN_H
#define PORTMAN_TURN_H

#include <stddef.h>
#include <stdint.h>

#define PM_TURN_CHANNEL_HEADER 4
#define PM_TURN_CHANNEL_MIN 0x4000
#define PM_TURN_CHANNEL_MAX 0x4FFF

/* Writes a ChannelData message for channel with len bytes of data into
 * buf[0..cap); on a stream (tcp set) it is padded to a multiple of 4 with
 * zeros. Returns its length, or 0 when the channel is out of range, the
 * data is over 65535 bytes or it does not fit. */
size_t pm_turn_channel_write(uint8_t *buf, size_t cap, uint16_t channel, const void *data,
                             size_t len, int tcp);

/* Parses the ChannelData message in buf[0..len): over UDP (tcp 0) a whole
 * datagram, which may carry up to the padding after the data; on a stream
 * exactly one frame as pm_turn_frame_length delimits it. Sets *channel,
 * *data (pointing into buf) and *datalen. Returns 0, or -1 with *why set. */
int pm_turn_channel_parse(const uint8_t *buf, size_t len, int tcp, uint16_t *channel,
                          const uint8_t **data, size_t *datalen, const char **why);

/* The length of the message that starts a stream's bytes: a STUN message's
 * 20 + its length, a ChannelData message's 4 + its length rounded up to 4.
 * Returns 0 when fewer than 4 bytes are there (read more), -1 with *why
 * set when the bytes start neither (the stream is lost: close it). */
long pm_turn_frame_length(const uint8_t *buf, size_t len, const char **why);

#endif
