/* STUN messages (RFC 8489, RFC 5389) with RFC 5780's NAT-discovery
 * attributes: a strict parser that never reads past the bytes it is given,
 * and a writer that builds a message in a caller's buffer.
 *
 * Lua-free: the fuzzer and the C benchmark link it alone. HMACs come from
 * OpenSSL's libcrypto; the FINGERPRINT's CRC-32 from crc32.c. */
#ifndef PORTMAN_STUN_H
#define PORTMAN_STUN_H

#include <stddef.h>
#include <stdint.h>

#define PM_STUN_HEADER 20
#define PM_STUN_MAGIC 0x2112A442u
#define PM_STUN_FINGERPRINT_XOR 0x5354554Eu
#define PM_STUN_TID_LEN 12
/* The most attributes a parsed message may carry: more is a protocol error. */
#define PM_STUN_MAX_ATTRS 64

enum pm_stun_class {
    PM_STUN_REQUEST = 0,
    PM_STUN_INDICATION = 1,
    PM_STUN_SUCCESS = 2,
    PM_STUN_ERROR = 3,
};

#define PM_STUN_BINDING 0x001
/* TURN's methods (RFC 8656 section 17, RFC 6062 section 6.1). */
#define PM_TURN_ALLOCATE 0x003
#define PM_TURN_REFRESH 0x004
#define PM_TURN_SEND 0x006
#define PM_TURN_DATA 0x007
#define PM_TURN_CREATE_PERMISSION 0x008
#define PM_TURN_CHANNEL_BIND 0x009
#define PM_TURN_CONNECT 0x00A
#define PM_TURN_CONNECTION_BIND 0x00B
#define PM_TURN_CONNECTION_ATTEMPT 0x00C

enum pm_stun_attr_type {
    PM_STUN_MAPPED_ADDRESS = 0x0001,
    PM_STUN_CHANGE_REQUEST = 0x0003,
    PM_STUN_USERNAME = 0x0006,
    PM_STUN_MESSAGE_INTEGRITY = 0x0008,
    PM_STUN_ERROR_CODE = 0x0009,
    PM_STUN_UNKNOWN_ATTRIBUTES = 0x000A,
    PM_TURN_CHANNEL_NUMBER = 0x000C,
    PM_TURN_LIFETIME = 0x000D,
    PM_TURN_XOR_PEER_ADDRESS = 0x0012,
    PM_TURN_DATA_ATTR = 0x0013,
    PM_STUN_REALM = 0x0014,
    PM_STUN_NONCE = 0x0015,
    PM_STUN_MESSAGE_INTEGRITY_SHA256 = 0x001C,
    PM_TURN_XOR_RELAYED_ADDRESS = 0x0016,
    PM_TURN_REQUESTED_ADDRESS_FAMILY = 0x0017,
    PM_TURN_EVEN_PORT = 0x0018,
    PM_TURN_REQUESTED_TRANSPORT = 0x0019,
    PM_TURN_DONT_FRAGMENT = 0x001A,
    PM_STUN_XOR_MAPPED_ADDRESS = 0x0020,
    PM_TURN_RESERVATION_TOKEN = 0x0022,
    PM_STUN_PADDING = 0x0026,
    PM_STUN_RESPONSE_PORT = 0x0027,
    PM_TURN_CONNECTION_ID = 0x002A, /* RFC 6062 */
    PM_STUN_SOFTWARE = 0x8022,
    PM_STUN_ALTERNATE_SERVER = 0x8023,
    PM_STUN_FINGERPRINT = 0x8028,
    PM_STUN_RESPONSE_ORIGIN = 0x802B,
    PM_STUN_OTHER_ADDRESS = 0x802C,
};

/* CHANGE-REQUEST flags (RFC 5780 section 7.2). */
#define PM_STUN_CHANGE_IP 0x4
#define PM_STUN_CHANGE_PORT 0x2

typedef struct {
    int family; /* 4 or 6 */
    uint16_t port;
    uint8_t addr[16]; /* 4 bytes used for IPv4, network order */
} pm_stun_addr;

typedef struct {
    uint16_t type;
    uint16_t len;  /* value length, without padding */
    uint32_t off;  /* offset of the value in the message */
} pm_stun_attr;

typedef struct {
    const uint8_t *buf;
    size_t len;
    uint16_t method;
    uint8_t cls;
    const uint8_t *tid;
    unsigned nattrs;
    int integrity;    /* index in attrs of MESSAGE-INTEGRITY, or -1 */
    int integrity256; /* of MESSAGE-INTEGRITY-SHA256, or -1 */
    int fingerprint;  /* of FINGERPRINT (checked by the parser), or -1 */
    int unknown_required; /* how many comprehension-required types are unknown */
    pm_stun_attr attrs[PM_STUN_MAX_ATTRS];
} pm_stun_msg;

/* Is the known attribute type one this codec understands? */
int pm_stun_known(uint16_t type);
/* The RFC's name of a known type ("XOR-MAPPED-ADDRESS"), or NULL. */
const char *pm_stun_attr_name(uint16_t type);

/* Parses len bytes at buf into m, which then points into buf. Checks the
 * header, the cookie, every length and padding, the format of every known
 * attribute and the FINGERPRINT when there is one. Attributes after
 * MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are
 * ignored (RFC 8489 section 14.5). Returns 0, or -1 with *why set to a
 * static description. Never reads outside buf[0..len). */
int pm_stun_parse(pm_stun_msg *m, const uint8_t *buf, size_t len, const char **why);

/* Quick test: could these bytes be a STUN message (top bits, cookie, length)? */
int pm_stun_is_stun(const uint8_t *buf, size_t len);

/* Checks the message's integrity with key: MESSAGE-INTEGRITY-SHA256 when
 * present, else MESSAGE-INTEGRITY. Returns 1 verified, 0 mismatch, -1 the
 * message carries neither. */
int pm_stun_check_integrity(const pm_stun_msg *m, const uint8_t *key, size_t keylen);

/* The address in a MAPPED-, XOR-MAPPED-, ALTERNATE-, RESPONSE-ORIGIN,
 * OTHER-ADDRESS, XOR-PEER- or XOR-RELAYED-ADDRESS attribute that
 * pm_stun_parse accepted. */
void pm_stun_get_addr(const pm_stun_msg *m, const pm_stun_attr *a, pm_stun_addr *out);
/* The first attribute of that type, or NULL. */
const pm_stun_attr *pm_stun_find(const pm_stun_msg *m, uint16_t type);
/* Big-endian loads of a value's bytes, for the binding. */
uint16_t pm_stun_u16(const uint8_t *p);
uint32_t pm_stun_u32(const uint8_t *p);

/* The writer: builds a message in buf[0..cap). After an error every call
 * does nothing and pm_stun_finish returns 0. */
typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;
    int failed;
} pm_stun_writer;

void pm_stun_begin(pm_stun_writer *w, uint8_t *buf, size_t cap, uint16_t method,
                   unsigned cls, const uint8_t tid[PM_STUN_TID_LEN]);
/* An attribute of len raw bytes, padded to 4 with the byte pad (0 is usual;
 * RFC 5769's samples use 0x20 to show any value will do). */
void pm_stun_add(pm_stun_writer *w, uint16_t type, const void *value, size_t len, uint8_t pad);
/* An address attribute; the XOR- ones are XORed with cookie and tid. */
void pm_stun_add_addr(pm_stun_writer *w, uint16_t type, const pm_stun_addr *a);
void pm_stun_add_u32(pm_stun_writer *w, uint16_t type, uint32_t value);
void pm_stun_add_error(pm_stun_writer *w, unsigned code, const char *reason, size_t len, uint8_t pad);
/* MESSAGE-INTEGRITY (HMAC-SHA1), or -SHA256 when sha256 is set, over the
 * message so far. */
void pm_stun_add_integrity(pm_stun_writer *w, const uint8_t *key, size_t keylen, int sha256);
void pm_stun_add_fingerprint(pm_stun_writer *w);
/* The message length, or 0 when it did not fit or an argument was bad. */
size_t pm_stun_finish(pm_stun_writer *w);

/* Is the address attribute type one of the XOR-ed ones? */
int pm_stun_is_xor(uint16_t type);

/* The long-term credential key: MD5(username ":" realm ":" password), the
 * password already SASLprep'd. out holds 16 bytes. Returns 0 or -1. */
int pm_stun_long_term_key(const char *user, size_t ulen, const char *realm, size_t rlen,
                          const char *pass, size_t plen, uint8_t out[16]);

#endif
