#include "stun.h"

#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>

#include "crc32.h"
#include "visibility.h" /* last: see there */

/* Byte limits of the text attributes (RFC 8489 section 14: 128 characters
 * of up to 6 bytes each is 763 bytes; USERNAME less than 513 bytes). */
#define MAX_USERNAME 513
#define MAX_TEXT 763

uint16_t pm_stun_u16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }

uint32_t pm_stun_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
    put16(p, (uint16_t)(v >> 16));
    put16(p + 2, (uint16_t)v);
}

static const struct {
    uint16_t type;
    const char *name;
} names[] = {
    {PM_STUN_MAPPED_ADDRESS, "MAPPED-ADDRESS"},
    {PM_STUN_CHANGE_REQUEST, "CHANGE-REQUEST"},
    {PM_STUN_USERNAME, "USERNAME"},
    {PM_STUN_MESSAGE_INTEGRITY, "MESSAGE-INTEGRITY"},
    {PM_STUN_ERROR_CODE, "ERROR-CODE"},
    {PM_STUN_UNKNOWN_ATTRIBUTES, "UNKNOWN-ATTRIBUTES"},
    {PM_TURN_CHANNEL_NUMBER, "CHANNEL-NUMBER"},
    {PM_TURN_LIFETIME, "LIFETIME"},
    {PM_TURN_XOR_PEER_ADDRESS, "XOR-PEER-ADDRESS"},
    {PM_TURN_DATA_ATTR, "DATA"},
    {PM_TURN_XOR_RELAYED_ADDRESS, "XOR-RELAYED-ADDRESS"},
    {PM_TURN_REQUESTED_ADDRESS_FAMILY, "REQUESTED-ADDRESS-FAMILY"},
    {PM_TURN_EVEN_PORT, "EVEN-PORT"},
    {PM_TURN_REQUESTED_TRANSPORT, "REQUESTED-TRANSPORT"},
    {PM_TURN_DONT_FRAGMENT, "DONT-FRAGMENT"},
    {PM_TURN_RESERVATION_TOKEN, "RESERVATION-TOKEN"},
    {PM_TURN_CONNECTION_ID, "CONNECTION-ID"},
    {PM_STUN_REALM, "REALM"},
    {PM_STUN_NONCE, "NONCE"},
    {PM_STUN_MESSAGE_INTEGRITY_SHA256, "MESSAGE-INTEGRITY-SHA256"},
    {PM_STUN_XOR_MAPPED_ADDRESS, "XOR-MAPPED-ADDRESS"},
    {PM_STUN_PADDING, "PADDING"},
    {PM_STUN_RESPONSE_PORT, "RESPONSE-PORT"},
    {PM_STUN_SOFTWARE, "SOFTWARE"},
    {PM_STUN_ALTERNATE_SERVER, "ALTERNATE-SERVER"},
    {PM_STUN_FINGERPRINT, "FINGERPRINT"},
    {PM_STUN_RESPONSE_ORIGIN, "RESPONSE-ORIGIN"},
    {PM_STUN_OTHER_ADDRESS, "OTHER-ADDRESS"},
};

const char *pm_stun_attr_name(uint16_t type)
{
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (names[i].type == type)
            return names[i].name;
    return NULL;
}

int pm_stun_known(uint16_t type) { return pm_stun_attr_name(type) != NULL; }

int pm_stun_is_xor(uint16_t type)
{
    return type == PM_STUN_XOR_MAPPED_ADDRESS || type == PM_TURN_XOR_PEER_ADDRESS ||
           type == PM_TURN_XOR_RELAYED_ADDRESS;
}

static int is_address(uint16_t type)
{
    return type == PM_STUN_MAPPED_ADDRESS || pm_stun_is_xor(type) ||
           type == PM_STUN_ALTERNATE_SERVER || type == PM_STUN_RESPONSE_ORIGIN ||
           type == PM_STUN_OTHER_ADDRESS;
}

/* TURN's fixed-size attributes (RFC 8656 section 18, RFC 6062 section 6.2):
 * NULL when the value is good, else why not. */
static const char *check_turn_value(uint16_t type, const uint8_t *v, uint16_t len)
{
    switch (type) {
    case PM_TURN_CHANNEL_NUMBER:
        if (len != 4)
            return "CHANNEL-NUMBER has a bad length";
        /* 0x4000-0x4FFF; the rest is reserved (RFC 8656 section 12) */
        return pm_stun_u16(v) >= 0x4000 && pm_stun_u16(v) <= 0x4FFF ? NULL
                                                                      : "CHANNEL-NUMBER out of range";
    case PM_TURN_LIFETIME:
    case PM_TURN_REQUESTED_TRANSPORT:
    case PM_TURN_CONNECTION_ID:
        return len == 4 ? NULL : "fixed-size attribute has a bad length";
    case PM_TURN_REQUESTED_ADDRESS_FAMILY:
        if (len != 4)
            return "REQUESTED-ADDRESS-FAMILY has a bad length";
        return v[0] == 1 || v[0] == 2 ? NULL : "REQUESTED-ADDRESS-FAMILY has an unknown family";
    case PM_TURN_EVEN_PORT:
        return len == 1 ? NULL : "EVEN-PORT has a bad length";
    case PM_TURN_DONT_FRAGMENT:
        return len == 0 ? NULL : "DONT-FRAGMENT has a value";
    case PM_TURN_RESERVATION_TOKEN:
        return len == 8 ? NULL : "RESERVATION-TOKEN has a bad length";
    default:
        return NULL; /* DATA: any bytes */
    }
}

/* The format of a known attribute's value: NULL when good, else why not. */
static const char *check_value(uint16_t type, const uint8_t *v, uint16_t len)
{
    if (is_address(type)) {
        if (len < 4)
            return "address attribute too short";
        if (v[1] == 1)
            return len == 8 ? NULL : "IPv4 address attribute has a bad length";
        if (v[1] == 2)
            return len == 20 ? NULL : "IPv6 address attribute has a bad length";
        return "address attribute has an unknown family";
    }
    switch (type) {
    case PM_STUN_CHANGE_REQUEST:
    case PM_STUN_RESPONSE_PORT:
    case PM_STUN_FINGERPRINT:
        return len == 4 ? NULL : "fixed-size attribute has a bad length";
    case PM_STUN_MESSAGE_INTEGRITY:
        return len == 20 ? NULL : "MESSAGE-INTEGRITY has a bad length";
    case PM_STUN_MESSAGE_INTEGRITY_SHA256:
        return len >= 16 && len <= 32 && len % 4 == 0 ? NULL
                                                      : "MESSAGE-INTEGRITY-SHA256 has a bad length";
    case PM_STUN_ERROR_CODE:
        if (len < 4 || len - 4 > MAX_TEXT)
            return "ERROR-CODE has a bad length";
        if ((v[2] & 7) < 3 || (v[2] & 7) > 6 || v[3] > 99)
            return "ERROR-CODE out of range 300-699";
        return NULL;
    case PM_STUN_UNKNOWN_ATTRIBUTES:
        return len % 2 == 0 ? NULL : "UNKNOWN-ATTRIBUTES has an odd length";
    case PM_STUN_USERNAME:
        return len < MAX_USERNAME ? NULL : "USERNAME too long";
    case PM_STUN_REALM:
    case PM_STUN_NONCE:
    case PM_STUN_SOFTWARE:
        return len <= MAX_TEXT ? NULL : "text attribute too long";
    default:
        return check_turn_value(type, v, len); /* and PADDING: any bytes */
    }
}

int pm_stun_is_stun(const uint8_t *buf, size_t len)
{
    return len >= PM_STUN_HEADER && (buf[0] & 0xC0) == 0 && pm_stun_u32(buf + 4) == PM_STUN_MAGIC &&
           (size_t)pm_stun_u16(buf + 2) + PM_STUN_HEADER == len && pm_stun_u16(buf + 2) % 4 == 0;
}

static int fail(const char **why, const char *msg)
{
    if (why)
        *why = msg;
    return -1;
}

/* Attributes that may follow MESSAGE-INTEGRITY (RFC 8489 section 14.5, 14.6). */
static int after_integrity_ok(uint16_t type, const pm_stun_msg *m)
{
    return type == PM_STUN_FINGERPRINT ||
           (type == PM_STUN_MESSAGE_INTEGRITY_SHA256 && m->integrity256 < 0);
}

static int add_attr(pm_stun_msg *m, uint16_t type, uint16_t len, size_t off, const char **why)
{
    if (m->nattrs == PM_STUN_MAX_ATTRS)
        return fail(why, "too many attributes");
    const char *bad = check_value(type, m->buf + off, len);
    if (bad)
        return fail(why, bad);
    int index = (int)m->nattrs;
    m->attrs[m->nattrs++] = (pm_stun_attr){type, len, (uint32_t)off};
    if (type == PM_STUN_MESSAGE_INTEGRITY)
        m->integrity = index;
    else if (type == PM_STUN_MESSAGE_INTEGRITY_SHA256)
        m->integrity256 = index;
    else if (type == PM_STUN_FINGERPRINT)
        m->fingerprint = index;
    else if (type < 0x8000 && !pm_stun_known(type))
        m->unknown_required++;
    return 0;
}

static int check_fingerprint(const pm_stun_msg *m, const char **why)
{
    const pm_stun_attr *a = &m->attrs[m->fingerprint];
    if (a->off + 4 != m->len)
        return fail(why, "FINGERPRINT is not the last attribute");
    uint32_t crc = pm_crc32(0, m->buf, a->off - 4) ^ PM_STUN_FINGERPRINT_XOR;
    return crc == pm_stun_u32(m->buf + a->off) ? 0 : fail(why, "FINGERPRINT mismatch");
}

int pm_stun_parse(pm_stun_msg *m, const uint8_t *buf, size_t len, const char **why)
{
    if (len < PM_STUN_HEADER)
        return fail(why, "message shorter than the STUN header");
    if (buf[0] & 0xC0)
        return fail(why, "not a STUN message (top bits set)");
    if (pm_stun_u32(buf + 4) != PM_STUN_MAGIC)
        return fail(why, "bad magic cookie");
    size_t body = pm_stun_u16(buf + 2);
    if (body % 4)
        return fail(why, "message length not a multiple of 4");
    if (body + PM_STUN_HEADER != len)
        return fail(why, "message length does not match the datagram");
    uint16_t t = pm_stun_u16(buf);
    m->buf = buf;
    m->len = len;
    m->method = (uint16_t)((t & 0x000F) | (t & 0x00E0) >> 1 | (t & 0x3E00) >> 2);
    m->cls = (uint8_t)((t >> 4 & 1) | (t >> 7 & 2));
    m->tid = buf + 8;
    m->nattrs = 0;
    m->integrity = m->integrity256 = m->fingerprint = -1;
    m->unknown_required = 0;
    size_t off = PM_STUN_HEADER;
    while (off < len) {
        if (len - off < 4)
            return fail(why, "truncated attribute header");
        uint16_t type = pm_stun_u16(buf + off), alen = pm_stun_u16(buf + off + 2);
        size_t padded = ((size_t)alen + 3) & ~(size_t)3;
        if (padded > len - off - 4)
            return fail(why, "attribute runs past the message");
        if (m->fingerprint >= 0)
            return fail(why, "attribute after FINGERPRINT");
        /* After MESSAGE-INTEGRITY only the SHA-256 one and FINGERPRINT count;
         * anything else is ignored, as the RFC says. */
        if ((m->integrity < 0 && m->integrity256 < 0) || after_integrity_ok(type, m))
            if (add_attr(m, type, alen, off + 4, why) < 0)
                return -1;
        off += 4 + padded;
    }
    if (m->fingerprint >= 0 && check_fingerprint(m, why) < 0)
        return -1;
    return 0;
}

const pm_stun_attr *pm_stun_find(const pm_stun_msg *m, uint16_t type)
{
    for (unsigned i = 0; i < m->nattrs; i++)
        if (m->attrs[i].type == type)
            return &m->attrs[i];
    return NULL;
}

void pm_stun_get_addr(const pm_stun_msg *m, const pm_stun_attr *a, pm_stun_addr *out)
{
    const uint8_t *v = m->buf + a->off;
    size_t n = v[1] == 1 ? 4 : 16;
    out->family = v[1] == 1 ? 4 : 6;
    out->port = pm_stun_u16(v + 2);
    memcpy(out->addr, v + 4, n);
    if (pm_stun_is_xor(a->type)) {
        /* XOR with the cookie, then (IPv6) the transaction id: bytes 4..19 of
         * the header are exactly that sequence. */
        out->port ^= PM_STUN_MAGIC >> 16;
        for (size_t i = 0; i < n; i++)
            out->addr[i] ^= m->buf[4 + i];
    }
}

/* HMAC of the message up to attribute a, with the header's length field
 * rewritten to end just after a (RFC 8489 sections 14.5 and 14.6). */
static int hmac_upto(const pm_stun_msg *m, const pm_stun_attr *a, const uint8_t *key, size_t keylen,
                     const char *digest, uint8_t *out, size_t outsize, size_t *outlen)
{
    size_t upto = a->off - 4;
    uint8_t head[PM_STUN_HEADER];
    memcpy(head, m->buf, PM_STUN_HEADER);
    put16(head + 2, (uint16_t)(upto + 4 + a->len - PM_STUN_HEADER));
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)digest, 0),
        OSSL_PARAM_construct_end(),
    };
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    /* An empty key is legal in HMAC; OpenSSL wants a non-NULL pointer. */
    static const uint8_t nokey[1];
    int ok = ctx && EVP_MAC_init(ctx, keylen ? key : nokey, keylen, params) &&
             EVP_MAC_update(ctx, head, PM_STUN_HEADER) &&
             EVP_MAC_update(ctx, m->buf + PM_STUN_HEADER, upto - PM_STUN_HEADER) &&
             EVP_MAC_final(ctx, out, outlen, outsize);
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return ok ? 0 : -1;
}

/* Compares without an early exit: timing must not tell how much matched. */
static int same(const uint8_t *a, const uint8_t *b, size_t n)
{
    uint8_t diff = 0;
    for (size_t i = 0; i < n; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

int pm_stun_check_integrity(const pm_stun_msg *m, const uint8_t *key, size_t keylen)
{
    uint8_t mac[EVP_MAX_MD_SIZE];
    size_t maclen = 0;
    const pm_stun_attr *a;
    const char *digest;
    if (m->integrity256 >= 0) {
        a = &m->attrs[m->integrity256];
        digest = "SHA256";
    } else if (m->integrity >= 0) {
        a = &m->attrs[m->integrity];
        digest = "SHA1";
    } else {
        return -1;
    }
    if (hmac_upto(m, a, key, keylen, digest, mac, sizeof(mac), &maclen) < 0 || maclen < a->len)
        return 0;
    return same(mac, m->buf + a->off, a->len);
}

/* --- the writer --- */

void pm_stun_begin(pm_stun_writer *w, uint8_t *buf, size_t cap, uint16_t method, unsigned cls,
                   const uint8_t tid[PM_STUN_TID_LEN])
{
    w->buf = buf;
    w->cap = cap;
    w->len = PM_STUN_HEADER;
    w->failed = cap < PM_STUN_HEADER || method > 0xFFF || cls > 3;
    if (w->failed)
        return;
    uint16_t t = (uint16_t)((method & 0x000F) | (method & 0x0070) << 1 | (method & 0x0F80) << 2 |
                            (cls & 1) << 4 | (cls & 2) << 7);
    put16(buf, t);
    put16(buf + 2, 0);
    put32(buf + 4, PM_STUN_MAGIC);
    memcpy(buf + 8, tid, PM_STUN_TID_LEN);
}

/* Room for an attribute of len bytes; returns where its value goes. */
static uint8_t *reserve(pm_stun_writer *w, uint16_t type, size_t len, uint8_t pad)
{
    size_t padded = (len + 3) & ~(size_t)3;
    if (w->failed || len > 0xFFFF || padded + 4 > w->cap - w->len ||
        w->len + 4 + padded - PM_STUN_HEADER > 0xFFFF) {
        w->failed = 1;
        return NULL;
    }
    uint8_t *p = w->buf + w->len;
    put16(p, type);
    put16(p + 2, (uint16_t)len);
    memset(p + 4 + len, pad, padded - len);
    w->len += 4 + padded;
    put16(w->buf + 2, (uint16_t)(w->len - PM_STUN_HEADER));
    return p + 4;
}

void pm_stun_add(pm_stun_writer *w, uint16_t type, const void *value, size_t len, uint8_t pad)
{
    uint8_t *p = reserve(w, type, len, pad);
    if (p && len)
        memcpy(p, value, len);
}

void pm_stun_add_u32(pm_stun_writer *w, uint16_t type, uint32_t value)
{
    uint8_t *p = reserve(w, type, 4, 0);
    if (p)
        put32(p, value);
}

void pm_stun_add_addr(pm_stun_writer *w, uint16_t type, const pm_stun_addr *a)
{
    if (a->family != 4 && a->family != 6) {
        w->failed = 1;
        return;
    }
    size_t n = a->family == 4 ? 4 : 16;
    uint8_t *p = reserve(w, type, 4 + n, 0);
    if (!p)
        return;
    p[0] = 0;
    p[1] = a->family == 4 ? 1 : 2;
    put16(p + 2, a->port);
    memcpy(p + 4, a->addr, n);
    if (pm_stun_is_xor(type)) {
        put16(p + 2, a->port ^ (PM_STUN_MAGIC >> 16));
        for (size_t i = 0; i < n; i++)
            p[4 + i] ^= w->buf[4 + i];
    }
}

void pm_stun_add_error(pm_stun_writer *w, unsigned code, const char *reason, size_t len, uint8_t pad)
{
    if (code < 300 || code > 699 || len > MAX_TEXT) {
        w->failed = 1;
        return;
    }
    uint8_t *p = reserve(w, PM_STUN_ERROR_CODE, 4 + len, pad);
    if (!p)
        return;
    p[0] = p[1] = 0;
    p[2] = (uint8_t)(code / 100);
    p[3] = (uint8_t)(code % 100);
    if (len)
        memcpy(p + 4, reason, len);
}

void pm_stun_add_integrity(pm_stun_writer *w, const uint8_t *key, size_t keylen, int sha256)
{
    uint16_t type = sha256 ? PM_STUN_MESSAGE_INTEGRITY_SHA256 : PM_STUN_MESSAGE_INTEGRITY;
    size_t n = sha256 ? 32 : 20;
    size_t start = w->len;
    uint8_t *p = reserve(w, type, n, 0);
    if (!p)
        return;
    /* The length field already covers this attribute, as the HMAC wants. */
    unsigned outlen = 0;
    uint8_t mac[EVP_MAX_MD_SIZE];
    static const uint8_t nokey[1]; /* HMAC allows an empty key; OpenSSL wants a pointer */
    if (!HMAC(sha256 ? EVP_sha256() : EVP_sha1(), keylen ? key : nokey, (int)keylen, w->buf, start,
              mac, &outlen) ||
        outlen != n) {
        w->failed = 1;
        return;
    }
    memcpy(p, mac, n);
}

void pm_stun_add_fingerprint(pm_stun_writer *w)
{
    size_t start = w->len;
    uint8_t *p = reserve(w, PM_STUN_FINGERPRINT, 4, 0);
    if (p)
        put32(p, pm_crc32(0, w->buf, start) ^ PM_STUN_FINGERPRINT_XOR);
}

size_t pm_stun_finish(pm_stun_writer *w) { return w->failed ? 0 : w->len; }

int pm_stun_long_term_key(const char *user, size_t ulen, const char *realm, size_t rlen,
                          const char *pass, size_t plen, uint8_t out[16])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned n = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_md5(), NULL) && EVP_DigestUpdate(ctx, user, ulen) &&
             EVP_DigestUpdate(ctx, ":", 1) && EVP_DigestUpdate(ctx, realm, rlen) &&
             EVP_DigestUpdate(ctx, ":", 1) && EVP_DigestUpdate(ctx, pass, plen) &&
             EVP_DigestFinal_ex(ctx, out, &n);
    EVP_MD_CTX_free(ctx);
    return ok && n == 16 ? 0 : -1;
}
