/* portman.dns: the Lua face of the c-ares engine (dns.h). The Lua layer
 * (lua/portman/resolver/init.lua) drives it with portman.engine: polls
 * d:fd(), runs a timer for d:timeout(), and calls d:step() for the
 * finished queries. Names and servers are checked there (an
 * internationalized name arrives in its ASCII form, lua_idna.c); this file
 * checks types and closed use. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "dns.h"
#include "lua_util.h"
#include "visibility.h" /* last: see there */

#define DNS "portman.dns"

typedef struct {
    pm_dns *dns; /* NULL once closed */
} dns_box;

static const char *const families[] = {"inet", "inet6", "any", NULL};
static const int family_values[] = {AF_INET, AF_INET6, AF_UNSPEC};

static pm_dns *check_dns(lua_State *L)
{
    dns_box *b = luaL_checkudata(L, 1, DNS);
    if (!b->dns)
        luaL_error(L, "attempt to use a closed " DNS);
    return b->dns;
}

/* core.dns_new([servers_csv], [timeout_ms], [tries], [max_inflight])
 * -> engine | nil, msg, code */
static int l_new(lua_State *L)
{
    lua_Integer inflight = luaL_optinteger(L, 4, 0);
    pm_dns_config cfg = {
        .servers = luaL_optstring(L, 1, NULL),
        .timeout_ms = (int)luaL_optinteger(L, 2, 0),
        .tries = (int)luaL_optinteger(L, 3, 0),
        .max_inflight = inflight > 0x7fffffff ? 0x7fffffff : (int)inflight,
    };
    luaL_argcheck(L, cfg.timeout_ms >= 0, 2, "timeout must not be negative");
    luaL_argcheck(L, cfg.tries >= 0, 3, "tries must not be negative");
    luaL_argcheck(L, inflight >= 0, 4, "max_inflight must not be negative");
    /* Created closed, so that a failure below leaves nothing to free. */
    dns_box *b = lua_newuserdatauv(L, sizeof(*b), 0);
    b->dns = NULL;
    luaL_setmetatable(L, DNS);
    char err[256];
    b->dns = pm_dns_new(&cfg, err, sizeof(err));
    if (!b->dns)
        return pm_fail(L, "unreachable", "%s", err);
    return 1;
}

static int l_close(lua_State *L)
{
    dns_box *b = luaL_checkudata(L, 1, DNS);
    pm_dns_free(b->dns);
    b->dns = NULL;
    return 0;
}

static int l_fd(lua_State *L)
{
    lua_pushinteger(L, pm_dns_fd(check_dns(L)));
    return 1;
}

/* d:timeout() -> ms until the next step is due, or nil when idle. */
static int l_timeout(lua_State *L)
{
    int ms = pm_dns_timeout(check_dns(L));
    if (ms < 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, ms);
    return 1;
}

static int l_pending(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)pm_dns_pending(check_dns(L)));
    return 1;
}

/* d:resolve(name, family, id) -> true | nil, msg, code */
static int l_resolve(lua_State *L)
{
    pm_dns *d = check_dns(L);
    const char *name = luaL_checkstring(L, 2);
    int family = family_values[luaL_checkoption(L, 3, NULL, families)];
    lua_Integer id = luaL_checkinteger(L, 4);
    if (pm_dns_resolve(d, name, family, (uint64_t)id) < 0)
        return pm_fail_errno(L, errno, "resolve");
    lua_pushboolean(L, 1);
    return 1;
}

/* d:srv(name, id) -> true | nil, msg, code */
static int l_srv(lua_State *L)
{
    pm_dns *d = check_dns(L);
    const char *name = luaL_checkstring(L, 2);
    lua_Integer id = luaL_checkinteger(L, 3);
    if (pm_dns_srv(d, name, (uint64_t)id) < 0)
        return pm_fail_errno(L, errno, "srv");
    lua_pushboolean(L, 1);
    return 1;
}

static void set_int(lua_State *L, const char *k, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

static void set_str(lua_State *L, const char *k, const char *v)
{
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
}

/* Pushes the records; returns their smallest TTL (0 when none). */
static uint32_t push_records(lua_State *L, const pm_dns_result *r)
{
    uint32_t least = UINT32_MAX;
    lua_createtable(L, (int)r->n, 0);
    for (size_t i = 0; i < r->n; i++) {
        uint32_t ttl = r->kind == PM_DNS_ADDR ? r->addrs[i].ttl : r->srvs[i].ttl;
        if (ttl < least)
            least = ttl;
        lua_createtable(L, 0, r->kind == PM_DNS_ADDR ? 3 : 5);
        if (r->kind == PM_DNS_ADDR) {
            set_str(L, "address", r->addrs[i].address);
            set_str(L, "family", r->addrs[i].family == AF_INET6 ? "inet6" : "inet");
            set_int(L, "ttl", r->addrs[i].ttl);
        } else {
            set_str(L, "target", r->srvs[i].target);
            set_int(L, "port", r->srvs[i].port);
            set_int(L, "priority", r->srvs[i].priority);
            set_int(L, "weight", r->srvs[i].weight);
            set_int(L, "ttl", r->srvs[i].ttl);
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return r->n ? least : 0;
}

/* d:step() -> {id, records, ttl, false, id, false, code, reason, ...}: the
 * finished queries in the order they finished, four slots each (one flat
 * table a step, not one table a query): the id, then the records
 * ({{address, family, ttl}, ...} or {{target, port, priority, weight,
 * ttl}, ...}) and their smallest TTL, or false, a code word and the
 * reason. */
static int l_step(lua_State *L)
{
    pm_dns_result *list = pm_dns_step(check_dns(L));
    int n = 0;
    for (pm_dns_result *r = list; r; r = r->next)
        n++;
    lua_createtable(L, n > 0x7fffffff / 4 ? 0 : 4 * n, 0);
    lua_Integer i = 0;
    for (pm_dns_result *r = list; r; r = r->next) {
        lua_pushinteger(L, (lua_Integer)r->id);
        lua_rawseti(L, -2, ++i);
        if (r->status == 0) {
            lua_Integer ttl = push_records(L, r);
            lua_rawseti(L, -2, ++i);
            lua_pushinteger(L, ttl);
            lua_rawseti(L, -2, ++i);
            lua_pushboolean(L, 0);
        } else {
            lua_pushboolean(L, 0);
            lua_rawseti(L, -2, ++i);
            lua_pushstring(L, pm_dns_status_code(r->status));
            lua_rawseti(L, -2, ++i);
            lua_pushstring(L, pm_dns_status_text(r->status));
        }
        lua_rawseti(L, -2, ++i);
    }
    pm_dns_results_free(list);
    return 1;
}

static int l_tostring(lua_State *L)
{
    dns_box *b = luaL_checkudata(L, 1, DNS);
    if (b->dns)
        lua_pushfstring(L, DNS " (%d pending)", (int)pm_dns_pending(b->dns));
    else
        lua_pushliteral(L, DNS " (closed)");
    return 1;
}

/* core.dns_parse_ip(text) -> family, canonical text | nil: is text a literal
 * IPv4 or IPv6 address (an IPv6 one may come in brackets)? */
static int l_parse_ip(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    char buf[64], out[INET6_ADDRSTRLEN];
    unsigned char bin[sizeof(struct in6_addr)];
    if (len == 0 || len >= sizeof(buf))
        return 0;
    memcpy(buf, s, len + 1);
    if (inet_pton(AF_INET, buf, bin) == 1) {
        inet_ntop(AF_INET, bin, out, sizeof(out));
        lua_pushliteral(L, "inet");
        lua_pushstring(L, out);
        return 2;
    }
    if (buf[0] == '[' && buf[len - 1] == ']') {
        buf[len - 1] = '\0';
        memmove(buf, buf + 1, len - 1);
    }
    if (inet_pton(AF_INET6, buf, bin) == 1) {
        inet_ntop(AF_INET6, bin, out, sizeof(out));
        lua_pushliteral(L, "inet6");
        lua_pushstring(L, out);
        return 2;
    }
    return 0;
}

/* core.dns_name(name) -> name in lower case | nil: is name a DNS name in
 * ASCII that is not a literal address (labels of 1-63 letters, digits, '-'
 * and '_', 253 characters in all, a trailing dot allowed)? The Lua layer
 * checks anything else, and words its errors, itself (resolver/names.lua);
 * this is its fast path for a name it has not seen. */
static int l_name(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    size_t bare = len && s[len - 1] == '.' ? len - 1 : len;
    if (bare == 0 || bare > 253)
        return 0;
    char low[256];
    size_t label = 0;
    int upper = 0, numeric = 1;
    for (size_t i = 0; i < bare; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.') {
            if (label == 0)
                return 0;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
            if (++label > 63)
                return 0;
            numeric &= c >= '0' && c <= '9';
        } else if (c >= 'A' && c <= 'Z') {
            if (++label > 63)
                return 0;
            c = (unsigned char)(c + 32);
            upper = 1;
            numeric = 0;
        } else {
            return 0;
        }
        low[i] = (char)c;
    }
    if (label == 0)
        return 0;
    unsigned char bin[4];
    if (numeric) { /* digits and dots: maybe an IPv4 literal */
        low[bare] = '\0';
        if (inet_pton(AF_INET, low, bin) == 1)
            return 0;
    }
    if (!upper) {
        lua_pushvalue(L, 1);
    } else {
        if (bare < len)
            low[bare] = '.';
        lua_pushlstring(L, low, len);
    }
    return 1;
}

static const luaL_Reg methods[] = {
    {"fd", l_fd},
    {"timeout", l_timeout},
    {"pending", l_pending},
    {"resolve", l_resolve},
    {"srv", l_srv},
    {"step", l_step},
    {"close", l_close},
    {NULL, NULL},
};

int pm_open_dns(lua_State *L)
{
    pm_newclosable(L, DNS, methods, l_close, l_tostring);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "dns_new");
    lua_pushcfunction(L, l_parse_ip);
    lua_setfield(L, -2, "dns_parse_ip");
    lua_pushcfunction(L, l_name);
    lua_setfield(L, -2, "dns_name");
    return 0;
}
