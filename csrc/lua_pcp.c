/* Lua binding of the PCP client (pcp.h): the engine on one socket, and
 * the codec alone (pcp_encode, pcp_decode) for the specs. */
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "lua_util.h"
#include "pcp.h"
#include "visibility.h" /* last: see there */

#define PCP "portman.pcp"

static lua_Integer int_field(lua_State *L, int t, const char *k, lua_Integer lo, lua_Integer hi, lua_Integer dflt)
{
    lua_getfield(L, t, k);
    lua_Integer v = dflt;
    if (!lua_isnil(L, -1)) {
        int ok;
        v = lua_tointegerx(L, -1, &ok);
        if (!ok || v < lo || v > hi)
            luaL_argerror(L, t, lua_pushfstring(L, "%s: integer in %I-%I expected", k, lo, hi));
    }
    lua_pop(L, 1);
    return v;
}

static void addr_field(lua_State *L, int t, const char *k, uint8_t out[4])
{
    lua_getfield(L, t, k);
    memset(out, 0, 4);
    if (!lua_isnil(L, -1)) {
        const char *s = lua_tostring(L, -1);
        if (!s || inet_pton(AF_INET, s, out) != 1)
            luaL_argerror(L, t, lua_pushfstring(L, "%s: IPv4 address expected", k));
    }
    lua_pop(L, 1);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* nonce: 24 hex digits; absent: a fresh random one */
static void nonce_field(lua_State *L, int t, uint8_t out[PM_PCP_NONCE])
{
    lua_getfield(L, t, "nonce");
    if (lua_isnil(L, -1)) {
        if (getrandom(out, PM_PCP_NONCE, 0) != PM_PCP_NONCE) luaL_error(L, "getrandom: %s", strerror(errno));
    } else {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        int ok = s && len == 2 * PM_PCP_NONCE;
        for (size_t i = 0; ok && i < PM_PCP_NONCE; i++) {
            int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
            ok = hi >= 0 && lo >= 0;
            out[i] = (uint8_t)(hi << 4 | lo);
        }
        if (!ok) luaL_argerror(L, t, "nonce: 24 hex digits expected");
    }
    lua_pop(L, 1);
}

static void push_nonce(lua_State *L, const uint8_t nonce[PM_PCP_NONCE])
{
    char hex[2 * PM_PCP_NONCE + 1];
    for (int i = 0; i < PM_PCP_NONCE; i++) snprintf(hex + 2 * i, 3, "%02x", nonce[i]);
    lua_pushstring(L, hex);
}

/* {op = "map" | "announce", proto, internal_port, external_port,
 *  external_ip, lifetime, nonce, client, gateway} */
static void check_req(lua_State *L, int t, struct pm_pcp_req *r)
{
    static const char *const OPS[] = {"announce", "map", NULL};
    luaL_checktype(L, t, LUA_TTABLE);
    memset(r, 0, sizeof *r);
    lua_getfield(L, t, "op");
    r->op = luaL_checkoption(L, -1, "map", OPS);
    lua_pop(L, 1);
    addr_field(L, t, "client", r->client);
    addr_field(L, t, "gateway", r->gateway);
    if (r->op == PM_PCP_ANNOUNCE) return;
    lua_getfield(L, t, "proto");
    const char *proto = lua_isnil(L, -1) ? "tcp" : lua_tostring(L, -1);
    if (!proto || (strcmp(proto, "tcp") != 0 && strcmp(proto, "udp") != 0))
        luaL_argerror(L, t, "proto: \"tcp\" or \"udp\" expected");
    r->proto = proto[0] == 't' ? 6 : 17;
    lua_pop(L, 1);
    r->internal_port = (uint16_t)int_field(L, t, "internal_port", 1, 65535, 0);
    if (r->internal_port == 0) luaL_argerror(L, t, "internal_port: integer in 1-65535 expected");
    r->external_port = (uint16_t)int_field(L, t, "external_port", 0, 65535, 0);
    r->lifetime = (uint32_t)int_field(L, t, "lifetime", 0, 0xffffffffLL, 7200);
    addr_field(L, t, "external_ip", r->external);
    nonce_field(L, t, r->nonce);
}

/* the answer as a table, or nil, msg, code */
static int push_result(lua_State *L, const struct pm_pcp_result *r, const struct pm_pcp_req *req, const char *gw)
{
    if (r->error) return pm_fail(L, r->code, "PCP %s: %s", gw, r->why);
    lua_createtable(L, 0, 7);
    lua_pushstring(L, r->op == PM_PCP_MAP ? "map" : "announce");
    lua_setfield(L, -2, "op");
    lua_pushinteger(L, r->epoch);
    lua_setfield(L, -2, "epoch");
    if (r->op != PM_PCP_MAP) return 1;
    lua_pushinteger(L, r->lifetime);
    lua_setfield(L, -2, "lifetime");
    lua_pushinteger(L, r->internal_port);
    lua_setfield(L, -2, "internal_port");
    if (r->external_port) {
        lua_pushinteger(L, r->external_port);
        lua_setfield(L, -2, "external_port");
        lua_pushstring(L, r->external_ip);
        lua_setfield(L, -2, "external_ip");
    }
    push_nonce(L, req->nonce);
    lua_setfield(L, -2, "nonce");
    return 1;
}

/* core.pcp_encode(req) -> the request's bytes (req.client and .gateway given) */
static int l_encode(lua_State *L)
{
    struct pm_pcp_req r;
    check_req(L, 1, &r);
    uint8_t b[PM_PCP_MAP_LEN];
    size_t n = pm_pcp_build(b, sizeof b, &r);
    lua_pushlstring(L, (const char *)b, n);
    push_nonce(L, r.nonce);
    return 2;
}

/* core.pcp_decode(bytes, req[, prev_op]) -> answer table, false (ignored), or nil, msg, code */
static int l_decode(lua_State *L)
{
    size_t n;
    const char *b = luaL_checklstring(L, 1, &n);
    struct pm_pcp_req req;
    check_req(L, 2, &req);
    int prev = (int)luaL_optinteger(L, 3, -1);
    struct pm_pcp_result r;
    if (!pm_pcp_parse((const uint8_t *)b, n, &req, prev, &r)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    return push_result(L, &r, &req, "answer");
}

typedef struct {
    struct pm_pcp p;
    int open;
} upcp;

/* core.pcp_open([gateway]) -> engine, gateway address, local address */
static int l_open(lua_State *L)
{
    const char *gw = luaL_optstring(L, 1, NULL);
    upcp *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->open = 0;
    luaL_setmetatable(L, PCP);
    if (pm_pcp_open(&u->p, gw) < 0) {
        int e = errno;
        if (e == ENETUNREACH && !gw) return pm_fail(L, "not_found", "PCP: no default gateway");
        return pm_fail_errno(L, e, "PCP socket");
    }
    u->open = 1;
    lua_pushstring(L, u->p.gateway);
    lua_pushstring(L, u->p.local);
    return 3;
}

static upcp *check_pcp(lua_State *L)
{
    upcp *u = luaL_checkudata(L, 1, PCP);
    if (!u->open) luaL_error(L, "attempt to use a closed PCP engine");
    return u;
}

static int l_fd(lua_State *L)
{
    lua_pushinteger(L, pm_pcp_fd(&check_pcp(L)->p));
    return 1;
}

/* e:request(req) with req.timeout (ms, 5000) -> true, or nil, msg, code */
static int l_request(lua_State *L)
{
    upcp *u = check_pcp(L);
    struct pm_pcp_req r;
    check_req(L, 2, &r);
    int timeout = (int)int_field(L, 2, "timeout", 1, 3600000, 5000);
    if (pm_pcp_request(&u->p, &r, timeout) < 0) return pm_fail_errno(L, errno, "PCP send");
    lua_pushboolean(L, 1);
    return 1;
}

static int l_timeout(lua_State *L)
{
    lua_pushinteger(L, pm_pcp_timeout_ms(&check_pcp(L)->p));
    return 1;
}

/* e:step() -> false (waiting), or the answer table, or nil, msg, code */
static int l_step(lua_State *L)
{
    upcp *u = check_pcp(L);
    struct pm_pcp_result r;
    pm_pcp_step(&u->p, &r);
    if (!r.done) {
        lua_pushboolean(L, 0);
        return 1;
    }
    return push_result(L, &r, &u->p.req, u->p.gateway);
}

static int l_close(lua_State *L)
{
    upcp *u = luaL_checkudata(L, 1, PCP);
    if (u->open) {
        u->open = 0;
        pm_pcp_close(&u->p);
    }
    return 0;
}

int pm_open_pcp(lua_State *L)
{
    static const luaL_Reg methods[] = {{"fd", l_fd}, {"request", l_request}, {"timeout", l_timeout},
        {"step", l_step}, {"close", l_close}, {NULL, NULL}};
    pm_newclosable(L, PCP, methods, l_close, NULL);
    static const luaL_Reg fns[] = {{"pcp_open", l_open}, {"pcp_encode", l_encode}, {"pcp_decode", l_decode},
        {NULL, NULL}};
    luaL_setfuncs(L, fns, 0);
    return 0;
}
