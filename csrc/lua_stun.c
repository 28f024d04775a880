/* portman.core's STUN functions: a thin binding over stun.c.
 *
 *   core.stun_decode(bytes [, key]) -> msg | nil, "protocol: ...", "protocol"
 *   core.stun_encode(msg [, key [, pad]]) -> bytes (raises on a bad msg)
 *   core.stun_is_stun(bytes) -> boolean
 *   core.stun_long_term_key(username, realm, password) -> 16-byte key
 *   core.stun_transaction_id() -> 12 random bytes
 *   core.turn_channel_encode(channel, data [, tcp]) -> bytes (raises on bad arguments)
 *   core.turn_channel_decode(bytes [, tcp]) -> channel, data | nil, "protocol: ...", "protocol"
 *   core.turn_frame_length(bytes) -> n (the first message's length) | false
 *     (fewer than 4 bytes) | nil, "protocol: ...", "protocol"
 *
 * A message is a table: method (integer), class ("request" | "indication" |
 * "success" | "error"), transaction_id (12 bytes), one field per known
 * attribute named like the RFC in lower case with underscores
 * (xor_mapped_address = {family = 4, ip = "192.0.2.1", port = 32853}; TURN's:
 * lifetime, channel_number, connection_id, requested_transport and
 * requested_address_family integers, data and reservation_token strings,
 * even_port and dont_fragment booleans),
 * unknown = {[type] = raw bytes}, and attributes, the attribute types in
 * wire order (encode follows it, so a decoded message re-encodes as it was). */
#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "lua_util.h"
#include "stun.h"
#include "turn.h"
#include "visibility.h" /* last: see there */

static const char *const classes[] = {"request", "indication", "success", "error", NULL};

/* The Lua field name of each known type: the RFC's name, lower case, '_'. */
static const struct {
    uint16_t type;
    const char *field;
} fields[] = {
    {PM_STUN_MAPPED_ADDRESS, "mapped_address"},
    {PM_STUN_CHANGE_REQUEST, "change_request"},
    {PM_STUN_USERNAME, "username"},
    {PM_STUN_MESSAGE_INTEGRITY, "message_integrity"},
    {PM_STUN_ERROR_CODE, "error_code"},
    {PM_STUN_UNKNOWN_ATTRIBUTES, "unknown_attributes"},
    {PM_TURN_CHANNEL_NUMBER, "channel_number"},
    {PM_TURN_LIFETIME, "lifetime"},
    {PM_TURN_XOR_PEER_ADDRESS, "xor_peer_address"},
    {PM_TURN_DATA_ATTR, "data"},
    {PM_TURN_XOR_RELAYED_ADDRESS, "xor_relayed_address"},
    {PM_TURN_REQUESTED_ADDRESS_FAMILY, "requested_address_family"},
    {PM_TURN_EVEN_PORT, "even_port"},
    {PM_TURN_REQUESTED_TRANSPORT, "requested_transport"},
    {PM_TURN_DONT_FRAGMENT, "dont_fragment"},
    {PM_TURN_RESERVATION_TOKEN, "reservation_token"},
    {PM_TURN_CONNECTION_ID, "connection_id"},
    {PM_STUN_REALM, "realm"},
    {PM_STUN_NONCE, "nonce"},
    {PM_STUN_MESSAGE_INTEGRITY_SHA256, "message_integrity_sha256"},
    {PM_STUN_XOR_MAPPED_ADDRESS, "xor_mapped_address"},
    {PM_STUN_PADDING, "padding"},
    {PM_STUN_RESPONSE_PORT, "response_port"},
    {PM_STUN_SOFTWARE, "software"},
    {PM_STUN_ALTERNATE_SERVER, "alternate_server"},
    {PM_STUN_RESPONSE_ORIGIN, "response_origin"},
    {PM_STUN_OTHER_ADDRESS, "other_address"},
    {PM_STUN_FINGERPRINT, "fingerprint"},
};
#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

static const char *field_of(uint16_t type)
{
    for (size_t i = 0; i < NFIELDS; i++)
        if (fields[i].type == type)
            return fields[i].field;
    return NULL;
}

/* --- decode --- */

static void push_addr(lua_State *L, const pm_stun_msg *m, const pm_stun_attr *a)
{
    pm_stun_addr addr;
    char text[INET6_ADDRSTRLEN];
    pm_stun_get_addr(m, a, &addr);
    inet_ntop(addr.family == 4 ? AF_INET : AF_INET6, addr.addr, text, sizeof(text));
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, addr.family);
    lua_setfield(L, -2, "family");
    lua_pushstring(L, text);
    lua_setfield(L, -2, "ip");
    lua_pushinteger(L, addr.port);
    lua_setfield(L, -2, "port");
}

/* Pushes the Lua value of a known attribute that the parser accepted. */
static void push_value(lua_State *L, const pm_stun_msg *m, const pm_stun_attr *a)
{
    const uint8_t *v = m->buf + a->off;
    switch (a->type) {
    case PM_STUN_MAPPED_ADDRESS:
    case PM_STUN_XOR_MAPPED_ADDRESS:
    case PM_STUN_ALTERNATE_SERVER:
    case PM_STUN_RESPONSE_ORIGIN:
    case PM_STUN_OTHER_ADDRESS:
    case PM_TURN_XOR_PEER_ADDRESS:
    case PM_TURN_XOR_RELAYED_ADDRESS:
        push_addr(L, m, a);
        break;
    case PM_TURN_CHANNEL_NUMBER:
        lua_pushinteger(L, pm_stun_u16(v));
        break;
    case PM_TURN_LIFETIME:
    case PM_TURN_CONNECTION_ID:
        lua_pushinteger(L, pm_stun_u32(v));
        break;
    case PM_TURN_REQUESTED_TRANSPORT:
        lua_pushinteger(L, v[0]);
        break;
    case PM_TURN_REQUESTED_ADDRESS_FAMILY:
        lua_pushinteger(L, v[0] == 1 ? 4 : 6);
        break;
    case PM_TURN_EVEN_PORT:
        lua_pushboolean(L, v[0] & 0x80);
        break;
    case PM_TURN_DONT_FRAGMENT:
        lua_pushboolean(L, 1);
        break;
    case PM_STUN_CHANGE_REQUEST:
        lua_createtable(L, 0, 2);
        lua_pushboolean(L, v[3] & PM_STUN_CHANGE_IP);
        lua_setfield(L, -2, "ip");
        lua_pushboolean(L, v[3] & PM_STUN_CHANGE_PORT);
        lua_setfield(L, -2, "port");
        break;
    case PM_STUN_ERROR_CODE:
        lua_createtable(L, 0, 2);
        lua_pushinteger(L, (v[2] & 7) * 100 + v[3]);
        lua_setfield(L, -2, "code");
        lua_pushlstring(L, (const char *)v + 4, a->len - 4u);
        lua_setfield(L, -2, "reason");
        break;
    case PM_STUN_UNKNOWN_ATTRIBUTES:
        lua_createtable(L, a->len / 2, 0);
        for (int i = 0; i < a->len / 2; i++) {
            lua_pushinteger(L, pm_stun_u16(v + 2 * i));
            lua_rawseti(L, -2, i + 1);
        }
        break;
    case PM_STUN_RESPONSE_PORT:
        lua_pushinteger(L, pm_stun_u16(v));
        break;
    case PM_STUN_MESSAGE_INTEGRITY:
    case PM_STUN_MESSAGE_INTEGRITY_SHA256:
    case PM_STUN_FINGERPRINT:
        lua_pushboolean(L, 1); /* present (and, for FINGERPRINT, checked) */
        break;
    default: /* USERNAME, REALM, NONCE, SOFTWARE, PADDING, DATA, RESERVATION-TOKEN */
        lua_pushlstring(L, (const char *)v, a->len);
        break;
    }
}

/* Sets msg.unknown[type] = raw value (first occurrence only), and lists
 * comprehension-required ones in msg.unknown_required. */
static void add_unknown(lua_State *L, const pm_stun_msg *m, const pm_stun_attr *a)
{
    if (lua_getfield(L, -1, "unknown") != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, "unknown");
    }
    if (lua_rawgeti(L, -1, a->type) == LUA_TNIL) {
        lua_pushlstring(L, (const char *)m->buf + a->off, a->len);
        lua_rawseti(L, -3, a->type);
    }
    lua_pop(L, 2);
    if (a->type >= 0x8000)
        return;
    if (lua_getfield(L, -1, "unknown_required") != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_pushvalue(L, -1);
        lua_setfield(L, -3, "unknown_required");
    }
    lua_pushinteger(L, a->type);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    lua_pop(L, 1);
}

static int l_decode(lua_State *L)
{
    size_t len, keylen = 0;
    const char *bytes = luaL_checklstring(L, 1, &len);
    const char *key = luaL_optlstring(L, 2, NULL, &keylen);
    pm_stun_msg m;
    const char *why;
    if (pm_stun_parse(&m, (const uint8_t *)bytes, len, &why) < 0)
        return pm_fail(L, "protocol", "%s", why);
    if (key) {
        int ok = pm_stun_check_integrity(&m, (const uint8_t *)key, keylen);
        if (ok == 0)
            return pm_fail(L, "protocol", "MESSAGE-INTEGRITY mismatch");
        if (ok < 0)
            return pm_fail(L, "protocol", "no MESSAGE-INTEGRITY to check");
    }
    lua_createtable(L, 0, 5 + (int)m.nattrs);
    lua_pushinteger(L, m.method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, classes[m.cls]);
    lua_setfield(L, -2, "class");
    lua_pushlstring(L, (const char *)m.tid, PM_STUN_TID_LEN);
    lua_setfield(L, -2, "transaction_id");
    lua_createtable(L, (int)m.nattrs, 0);
    for (unsigned i = 0; i < m.nattrs; i++) {
        lua_pushinteger(L, m.attrs[i].type);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "attributes");
    for (unsigned i = 0; i < m.nattrs; i++) {
        const char *field = field_of(m.attrs[i].type);
        if (!field) {
            add_unknown(L, &m, &m.attrs[i]);
        } else if (lua_getfield(L, -1, field) == LUA_TNIL) { /* the first one counts */
            lua_pop(L, 1);
            push_value(L, &m, &m.attrs[i]);
            lua_setfield(L, -2, field);
        } else {
            lua_pop(L, 1);
        }
    }
    if (key) {
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "verified");
    }
    return 1;
}

/* --- encode --- */

typedef struct {
    lua_State *L;
    pm_stun_writer w;
    const char *key;
    size_t keylen;
    uint8_t pad;
} encoder;

static int bad(lua_State *L, const char *field, const char *what)
{
    return luaL_argerror(L, 1, lua_pushfstring(L, "field '%s': %s", field, what));
}

/* msg[field] as a string, raising when it is something else. */
static const char *text_field(lua_State *L, const char *field, size_t *len)
{
    if (lua_getfield(L, 1, field) != LUA_TSTRING)
        bad(L, field, "string expected");
    const char *s = lua_tolstring(L, -1, len);
    lua_pop(L, 1); /* msg still anchors the string */
    return s;
}

static lua_Integer int_in(lua_State *L, int idx, const char *field, const char *name, lua_Integer lo,
                          lua_Integer hi)
{
    int isint;
    lua_Integer v = lua_tointegerx(L, idx, &isint);
    if (!isint || v < lo || v > hi)
        bad(L, field, lua_pushfstring(L, "%s: integer in %I-%I expected", name, lo, hi));
    return v;
}

static void add_addr(encoder *e, uint16_t type, const char *field)
{
    lua_State *L = e->L;
    pm_stun_addr a;
    if (lua_getfield(L, 1, field) != LUA_TTABLE)
        bad(L, field, "address table expected");
    lua_getfield(L, -1, "ip");
    const char *ip = lua_tostring(L, -1);
    if (!ip)
        bad(L, field, "ip: string expected");
    a.family = strchr(ip, ':') ? 6 : 4;
    if (inet_pton(a.family == 4 ? AF_INET : AF_INET6, ip, a.addr) != 1)
        bad(L, field, lua_pushfstring(L, "ip: not an IP address '%s'", ip));
    lua_getfield(L, -2, "port");
    a.port = (uint16_t)int_in(L, -1, field, "port", 0, 65535);
    lua_pop(L, 3);
    pm_stun_add_addr(&e->w, type, &a);
}

static void add_flags(encoder *e, const char *field)
{
    lua_State *L = e->L;
    if (lua_getfield(L, 1, field) != LUA_TTABLE)
        bad(L, field, "table {ip = boolean, port = boolean} expected");
    lua_getfield(L, -1, "ip");
    lua_getfield(L, -2, "port");
    uint32_t flags = (lua_toboolean(L, -2) ? PM_STUN_CHANGE_IP : 0) |
                     (lua_toboolean(L, -1) ? PM_STUN_CHANGE_PORT : 0);
    lua_pop(L, 3);
    pm_stun_add_u32(&e->w, PM_STUN_CHANGE_REQUEST, flags);
}

static void add_error(encoder *e, const char *field)
{
    lua_State *L = e->L;
    size_t len = 0;
    if (lua_getfield(L, 1, field) != LUA_TTABLE)
        bad(L, field, "table {code = n, reason = text} expected");
    lua_getfield(L, -1, "code");
    unsigned code = (unsigned)int_in(L, -1, field, "code", 300, 699);
    lua_getfield(L, -2, "reason");
    const char *reason = lua_isnil(L, -1) ? "" : lua_tolstring(L, -1, &len);
    if (!reason)
        bad(L, field, "reason: string expected");
    pm_stun_add_error(&e->w, code, reason, len, e->pad);
    lua_pop(L, 3);
}

static void add_unknown_list(encoder *e, const char *field)
{
    lua_State *L = e->L;
    uint8_t types[2 * 64];
    if (lua_getfield(L, 1, field) != LUA_TTABLE)
        bad(L, field, "list of attribute types expected");
    lua_Integer n = luaL_len(L, -1);
    if (n > 64)
        bad(L, field, "at most 64 types");
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        lua_Integer t = int_in(L, -1, field, "type", 0, 0xFFFF);
        types[2 * (i - 1)] = (uint8_t)(t >> 8);
        types[2 * (i - 1) + 1] = (uint8_t)t;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    pm_stun_add(&e->w, PM_STUN_UNKNOWN_ATTRIBUTES, types, (size_t)n * 2, e->pad);
}

static void add_raw_unknown(encoder *e, uint16_t type)
{
    lua_State *L = e->L;
    size_t len;
    if (lua_getfield(L, 1, "unknown") != LUA_TTABLE || lua_rawgeti(L, -1, type) != LUA_TSTRING)
        luaL_argerror(L, 1, lua_pushfstring(L, "attributes: no raw value in unknown[%d]", (int)type));
    const char *v = lua_tolstring(L, -1, &len);
    pm_stun_add(&e->w, type, v, len, e->pad);
    lua_pop(L, 2);
}

static void add_integrity(encoder *e, int sha256)
{
    if (!e->key)
        luaL_argerror(e->L, 2, "a key is needed for MESSAGE-INTEGRITY");
    pm_stun_add_integrity(&e->w, (const uint8_t *)e->key, e->keylen, sha256);
}

static lua_Integer int_field(encoder *e, const char *field, lua_Integer lo, lua_Integer hi)
{
    lua_getfield(e->L, 1, field);
    lua_Integer v = int_in(e->L, -1, field, field, lo, hi);
    lua_pop(e->L, 1);
    return v;
}

/* TURN's attributes that are not addresses or text; 0 when type is none. */
static int add_turn(encoder *e, uint16_t type, const char *field)
{
    lua_State *L = e->L;
    uint8_t b;
    switch (type) {
    case PM_TURN_CHANNEL_NUMBER:
        pm_stun_add_u32(&e->w, type, (uint32_t)int_field(e, field, 0x4000, 0x4FFF) << 16);
        return 1;
    case PM_TURN_LIFETIME:
    case PM_TURN_CONNECTION_ID:
        pm_stun_add_u32(&e->w, type, (uint32_t)int_field(e, field, 0, 0xFFFFFFFF));
        return 1;
    case PM_TURN_REQUESTED_TRANSPORT:
        pm_stun_add_u32(&e->w, type, (uint32_t)int_field(e, field, 0, 255) << 24);
        return 1;
    case PM_TURN_REQUESTED_ADDRESS_FAMILY:
        b = (uint8_t)int_field(e, field, 4, 6);
        if (b == 5)
            bad(L, field, "4 or 6 expected");
        pm_stun_add_u32(&e->w, type, (uint32_t)(b == 4 ? 1 : 2) << 24);
        return 1;
    case PM_TURN_EVEN_PORT:
        lua_getfield(L, 1, field);
        b = lua_toboolean(L, -1) ? 0x80 : 0;
        lua_pop(L, 1);
        pm_stun_add(&e->w, type, &b, 1, e->pad);
        return 1;
    case PM_TURN_DONT_FRAGMENT:
        pm_stun_add(&e->w, type, NULL, 0, e->pad);
        return 1;
    default:
        return 0;
    }
}

static void add_one(encoder *e, uint16_t type)
{
    lua_State *L = e->L;
    const char *field = field_of(type);
    size_t len;
    const char *s;
    if (!field) {
        add_raw_unknown(e, type);
        return;
    }
    switch (type) {
    case PM_STUN_MAPPED_ADDRESS:
    case PM_STUN_XOR_MAPPED_ADDRESS:
    case PM_STUN_ALTERNATE_SERVER:
    case PM_STUN_RESPONSE_ORIGIN:
    case PM_STUN_OTHER_ADDRESS:
    case PM_TURN_XOR_PEER_ADDRESS:
    case PM_TURN_XOR_RELAYED_ADDRESS:
        add_addr(e, type, field);
        break;
    case PM_STUN_CHANGE_REQUEST:
        add_flags(e, field);
        break;
    case PM_STUN_ERROR_CODE:
        add_error(e, field);
        break;
    case PM_STUN_UNKNOWN_ATTRIBUTES:
        add_unknown_list(e, field);
        break;
    case PM_STUN_RESPONSE_PORT:
        lua_getfield(L, 1, field);
        pm_stun_add_u32(&e->w, type, (uint32_t)int_in(L, -1, field, "port", 0, 65535) << 16);
        lua_pop(L, 1);
        break;
    case PM_STUN_MESSAGE_INTEGRITY:
    case PM_STUN_MESSAGE_INTEGRITY_SHA256:
        add_integrity(e, type == PM_STUN_MESSAGE_INTEGRITY_SHA256);
        break;
    case PM_STUN_FINGERPRINT:
        pm_stun_add_fingerprint(&e->w);
        break;
    default: /* text, PADDING, DATA, RESERVATION-TOKEN; TURN's numbers */
        if (add_turn(e, type, field))
            break;
        s = text_field(L, field, &len);
        pm_stun_add(&e->w, type, s, len, e->pad);
        break;
    }
}

static int cmp_u16(const void *a, const void *b)
{
    return (int)*(const uint16_t *)a - (int)*(const uint16_t *)b;
}

/* Without msg.attributes: every known field present, in the table's
 * order, then the raw unknown ones, then the integrity and fingerprint
 * attributes, which must come last. */
static void add_default_order(encoder *e)
{
    lua_State *L = e->L;
    for (size_t i = 0; i < NFIELDS; i++) {
        uint16_t t = fields[i].type;
        if (t == PM_STUN_MESSAGE_INTEGRITY || t == PM_STUN_MESSAGE_INTEGRITY_SHA256 ||
            t == PM_STUN_FINGERPRINT)
            continue;
        /* a flag set false (dont_fragment = false) is absent */
        int kind = lua_getfield(L, 1, fields[i].field);
        int present = kind != LUA_TNIL && (t != PM_TURN_DONT_FRAGMENT || lua_toboolean(L, -1));
        lua_pop(L, 1);
        if (present)
            add_one(e, t);
    }
    if (lua_getfield(L, 1, "unknown") == LUA_TTABLE) {
        uint16_t types[PM_STUN_MAX_ATTRS];
        size_t n = 0;
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pop(L, 1);
            lua_Integer t = int_in(L, -1, "unknown", "key", 0, 0xFFFF);
            if (n == PM_STUN_MAX_ATTRS)
                bad(L, "unknown", "too many attributes");
            if (!field_of((uint16_t)t))
                types[n++] = (uint16_t)t;
        }
        qsort(types, n, sizeof(types[0]), cmp_u16); /* a stable wire order */
        for (size_t i = 0; i < n; i++)
            add_raw_unknown(e, types[i]);
    }
    lua_pop(L, 1);
    static const uint16_t last[] = {PM_STUN_MESSAGE_INTEGRITY, PM_STUN_MESSAGE_INTEGRITY_SHA256,
                                    PM_STUN_FINGERPRINT};
    for (size_t i = 0; i < 3; i++) {
        int present = lua_getfield(L, 1, field_of(last[i])) != LUA_TNIL &&
                      lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (present)
            add_one(e, last[i]);
    }
}

static int l_encode(lua_State *L)
{
    uint8_t buf[65535 + PM_STUN_HEADER];
    encoder e = {.L = L};
    size_t tidlen;
    luaL_checktype(L, 1, LUA_TTABLE);
    e.key = luaL_optlstring(L, 2, NULL, &e.keylen);
    lua_Integer pad = luaL_optinteger(L, 3, 0);
    luaL_argcheck(L, pad >= 0 && pad <= 255, 3, "pad byte out of range 0-255");
    e.pad = (uint8_t)pad;
    lua_getfield(L, 1, "method");
    unsigned method = lua_isnil(L, -1) ? PM_STUN_BINDING
                                      : (unsigned)int_in(L, -1, "method", "method", 0, 0xFFF);
    lua_getfield(L, 1, "class");
    int cls = lua_isnil(L, -1) ? PM_STUN_REQUEST : -1;
    for (int i = 0; cls < 0 && classes[i]; i++)
        if (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), classes[i]) == 0)
            cls = i;
    if (cls < 0)
        bad(L, "class", "request, indication, success or error expected");
    lua_pop(L, 2);
    const char *tid = text_field(L, "transaction_id", &tidlen);
    if (tidlen != PM_STUN_TID_LEN)
        bad(L, "transaction_id", "12-byte string expected");
    pm_stun_begin(&e.w, buf, sizeof(buf), (uint16_t)method, (unsigned)cls, (const uint8_t *)tid);
    if (lua_getfield(L, 1, "attributes") == LUA_TTABLE) {
        lua_Integer n = luaL_len(L, -1);
        for (lua_Integer i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, i);
            uint16_t t = (uint16_t)int_in(L, -1, "attributes", "type", 0, 0xFFFF);
            lua_pop(L, 1);
            add_one(&e, t);
        }
        lua_pop(L, 1);
    } else {
        lua_pop(L, 1);
        add_default_order(&e);
    }
    size_t len = pm_stun_finish(&e.w);
    if (!len)
        luaL_argerror(L, 1, "message too large or a value out of range");
    lua_pushlstring(L, (const char *)buf, len);
    return 1;
}

static int l_is_stun(lua_State *L)
{
    size_t len;
    const char *bytes = luaL_checklstring(L, 1, &len);
    lua_pushboolean(L, pm_stun_is_stun((const uint8_t *)bytes, len));
    return 1;
}

static int l_long_term_key(lua_State *L)
{
    size_t ulen, rlen, plen;
    const char *user = luaL_checklstring(L, 1, &ulen);
    const char *realm = luaL_checklstring(L, 2, &rlen);
    const char *pass = luaL_checklstring(L, 3, &plen);
    uint8_t key[16];
    if (pm_stun_long_term_key(user, ulen, realm, rlen, pass, plen, key) < 0)
        return luaL_error(L, "MD5 is not available");
    lua_pushlstring(L, (const char *)key, sizeof(key));
    return 1;
}

/* RFC 8489 section 6: the transaction id must be uniformly random. */
static int l_transaction_id(lua_State *L)
{
    uint8_t tid[PM_STUN_TID_LEN];
    if (RAND_bytes(tid, sizeof(tid)) != 1)
        return luaL_error(L, "no random bytes available");
    lua_pushlstring(L, (const char *)tid, sizeof(tid));
    return 1;
}

/* --- ChannelData (turn.c) --- */

static int l_channel_encode(lua_State *L)
{
    static uint8_t buf[PM_TURN_CHANNEL_HEADER + 65535 + 3];
    size_t len;
    lua_Integer ch = luaL_checkinteger(L, 1);
    const char *data = luaL_checklstring(L, 2, &len);
    int tcp = lua_toboolean(L, 3);
    luaL_argcheck(L, ch >= PM_TURN_CHANNEL_MIN && ch <= PM_TURN_CHANNEL_MAX, 1,
                  "channel number out of range 0x4000-0x4FFF");
    luaL_argcheck(L, len <= 0xFFFF, 2, "at most 65535 bytes");
    size_t n = pm_turn_channel_write(buf, sizeof(buf), (uint16_t)ch, data, len, tcp);
    lua_pushlstring(L, (const char *)buf, n);
    return 1;
}

static int l_channel_decode(lua_State *L)
{
    size_t len, datalen;
    const char *bytes = luaL_checklstring(L, 1, &len);
    int tcp = lua_toboolean(L, 2);
    uint16_t ch;
    const uint8_t *data;
    const char *why;
    if (pm_turn_channel_parse((const uint8_t *)bytes, len, tcp, &ch, &data, &datalen, &why) < 0)
        return pm_fail(L, "protocol", "%s", why);
    lua_pushinteger(L, ch);
    lua_pushlstring(L, (const char *)data, datalen);
    return 2;
}

static int l_frame_length(lua_State *L)
{
    size_t len;
    const char *bytes = luaL_checklstring(L, 1, &len);
    const char *why;
    long n = pm_turn_frame_length((const uint8_t *)bytes, len, &why);
    if (n < 0)
        return pm_fail(L, "protocol", "%s", why);
    if (n == 0)
        lua_pushboolean(L, 0);
    else
        lua_pushinteger(L, n);
    return 1;
}

static const luaL_Reg funcs[] = {
    {"stun_decode", l_decode},
    {"stun_encode", l_encode},
    {"stun_is_stun", l_is_stun},
    {"stun_long_term_key", l_long_term_key},
    {"stun_transaction_id", l_transaction_id},
    {"turn_channel_encode", l_channel_encode},
    {"turn_channel_decode", l_channel_decode},
    {"turn_frame_length", l_frame_length},
    {NULL, NULL},
};

int pm_open_stun(lua_State *L)
{
    luaL_setfuncs(L, funcs, 0);
    return 0;
}
