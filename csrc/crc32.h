/* CRC-32 (ISO-HDLC, the one of zlib, Ethernet and STUN's FINGERPRINT).
 * OpenSSL's libcrypto has no CRC, so this one is ours: slicing-by-8 over
 * tables built once, about a byte a cycle. Lua-free. */
#ifndef PORTMAN_CRC32_H
#define PORTMAN_CRC32_H

#include <stddef.h>
#include <stdint.h>

/* The CRC-32 of len bytes at p, continuing from crc (0 to start). */
uint32_t pm_crc32(uint32_t crc, const void *p, size_t len);

#endif
