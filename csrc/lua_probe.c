/* portman.probe: the Lua binding of the probe engine (probe.c). The Lua
 * layer (lua/portman/probe.lua) resolves names and checks options; this
 * file checks every argument it is given anyway, since core is reachable. */
#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>

#include "lua_probe.h"
#include "lua_util.h"
#include "probe.h"
#include "visibility.h" /* last: see there */

#define PROBE "portman.probe"
#define DEFAULT_BATCH 4096
#define MAX_BATCH 65536

typedef struct {
    pm_probe *p; /* NULL once closed */
    pm_probe_result *buf;
    size_t bufcap;
    int naddrs;
} probe_ud;

static const char *const protos[] = {"tcp", "udp", NULL};

static probe_ud *check_open(lua_State *L)
{
    probe_ud *u = luaL_checkudata(L, 1, PROBE);
    if (!u->p)
        luaL_error(L, "attempt to use a closed probe");
    return u;
}

static int probe_close(lua_State *L)
{
    probe_ud *u = luaL_checkudata(L, 1, PROBE);
    pm_probe_free(u->p);
    u->p = NULL;
    free(u->buf);
    u->buf = NULL;
    return 0;
}

/* A numeric IPv4 or IPv6 address (with an optional %scope) into ss. */
static int parse_address(const char *text, struct sockaddr_storage *ss, socklen_t *len)
{
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST, .ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(text, NULL, &hints, &res) != 0)
        return -1;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

static int add_addresses(lua_State *L, pm_probe *p, int arg)
{
    luaL_checktype(L, arg, LUA_TTABLE);
    lua_Integer n = luaL_len(L, arg);
    luaL_argcheck(L, n >= 1, arg, "at least one address expected");
    for (lua_Integer i = 1; i <= n; i++) {
        struct sockaddr_storage ss;
        socklen_t len = 0;
        if (lua_geti(L, arg, i) != LUA_TSTRING || parse_address(lua_tostring(L, -1), &ss, &len) < 0)
            luaL_argerror(L, arg, lua_pushfstring(L, "address %d: numeric IP address expected", (int)i));
        lua_pop(L, 1);
        if (pm_probe_add_address(p, (struct sockaddr *)&ss, len) < 0)
            return -1;
    }
    return (int)n;
}

static int add_ports(lua_State *L, pm_probe *p, int naddrs, int arg)
{
    luaL_checktype(L, arg, LUA_TTABLE);
    lua_Integer n = luaL_len(L, arg);
    luaL_argcheck(L, n >= 1 && n <= 1 << 24, arg, "1 to 16777216 ports expected");
    uint16_t *ports = malloc((size_t)n * sizeof(*ports));
    if (!ports)
        return -1;
    for (lua_Integer i = 1; i <= n; i++) {
        int isnum;
        lua_geti(L, arg, i);
        lua_Integer port = lua_tointegerx(L, -1, &isnum);
        lua_pop(L, 1);
        if (!isnum || port < 1 || port > 65535) {
            free(ports);
            luaL_argerror(L, arg, lua_pushfstring(L, "port %d: integer in 1-65535 expected", (int)i));
        }
        ports[i - 1] = (uint16_t)port;
    }
    for (int a = 0; a < naddrs; a++) {
        if (pm_probe_add_ports(p, a, ports, (size_t)n) < 0) {
            free(ports);
            return -1;
        }
    }
    free(ports);
    return 0;
}

/* core.probe_new(proto, addresses, ports, timeout_ms, concurrency[, payload[, retries]]):
 * probes every address at every port, address by address. concurrency 0
 * takes the default; a value above what RLIMIT_NOFILE allows is lowered.
 * retries (UDP: retransmissions of an unanswered probe, 0-50) defaults to
 * PM_PROBE_DEFAULT_RETRIES.
 * Returns the probe, or nil, msg, errno name (EMFILE when no fd is left). */
static int l_new(lua_State *L)
{
    int udp = luaL_checkoption(L, 1, NULL, protos);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_Integer timeout = luaL_checkinteger(L, 4);
    lua_Integer concurrency = luaL_checkinteger(L, 5);
    size_t plen = 0;
    const char *payload = luaL_optlstring(L, 6, "", &plen);
    lua_Integer retries = luaL_optinteger(L, 7, PM_PROBE_DEFAULT_RETRIES);
    luaL_argcheck(L, timeout >= 1 && timeout <= 3600000, 4, "timeout out of range 1-3600000 ms");
    luaL_argcheck(L, concurrency >= 0 && concurrency <= 1 << 20, 5, "concurrency out of range 0-1048576");
    luaL_argcheck(L, retries >= 0 && retries <= PM_PROBE_MAX_RETRIES, 7, "retries out of range 0-50");
    probe_ud *u = lua_newuserdatauv(L, sizeof(*u), 1);
    memset(u, 0, sizeof(*u));
    luaL_setmetatable(L, PROBE);
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, 1); /* the addresses, to name them in results */
    pm_probe_opts opts = {.udp = udp, .timeout_ms = (unsigned)timeout, .concurrency = (unsigned)concurrency,
                          .payload = payload, .payload_len = plen, .retries = (unsigned)retries};
    u->p = pm_probe_new(&opts);
    if (!u->p)
        return pm_fail_errno(L, errno, "probe");
    int naddrs = add_addresses(L, u->p, 2);
    if (naddrs < 0 || add_ports(L, u->p, naddrs, 3) < 0) {
        int err = errno;
        probe_close(L);
        return pm_fail_errno(L, err, "probe");
    }
    u->naddrs = naddrs;
    return 1;
}

static int l_fd(lua_State *L)
{
    lua_pushinteger(L, pm_probe_fd(check_open(L)->p));
    return 1;
}

size_t pm_probe_step_buffer(lua_State *L, pm_probe_result **buf, size_t *cap)
{
    lua_Integer max = luaL_optinteger(L, 2, DEFAULT_BATCH);
    luaL_argcheck(L, max >= 1 && max <= MAX_BATCH, 2, "batch size out of range 1-65536");
    if (*cap < (size_t)max) {
        pm_probe_result *b = realloc(*buf, (size_t)max * sizeof(*b));
        if (!b)
            luaL_error(L, "not enough memory");
        *buf = b;
        *cap = (size_t)max;
    }
    return (size_t)max;
}

void pm_probe_push_batch(lua_State *L, const pm_probe_result *r, size_t n, int addrs)
{
    lua_createtable(L, 0, 5);
    int batch = lua_gettop(L);
    lua_pushinteger(L, (lua_Integer)n);
    lua_setfield(L, batch, "n");
    lua_createtable(L, (int)n, 0); /* port */
    lua_createtable(L, (int)n, 0); /* state */
    lua_newtable(L); /* error */
    if (addrs)
        lua_createtable(L, (int)n, 0); /* address */
    for (size_t i = 0; i < n; i++) {
        lua_Integer k = (lua_Integer)i + 1;
        lua_pushinteger(L, r[i].port);
        lua_rawseti(L, batch + 1, k);
        lua_pushstring(L, pm_probe_state_name(r[i].state));
        lua_rawseti(L, batch + 2, k);
        if (r[i].err) {
            lua_pushstring(L, pm_errno_name(r[i].err));
            lua_rawseti(L, batch + 3, k);
        }
        if (addrs) {
            lua_geti(L, addrs, (lua_Integer)r[i].address + 1);
            lua_rawseti(L, batch + 4, k);
        }
    }
    if (addrs)
        lua_setfield(L, batch, "address");
    lua_setfield(L, batch, "error");
    lua_setfield(L, batch, "state");
    lua_setfield(L, batch, "port");
}

/* p:step([max]): does the ready work; returns the results it produced as
 * one batch (pm_probe_push_batch). error names the errno behind an
 * unreachable or error state; address is there when probing more than
 * one address. */
static int l_step(lua_State *L)
{
    probe_ud *u = check_open(L);
    size_t max = pm_probe_step_buffer(L, &u->buf, &u->bufcap);
    size_t n = pm_probe_step(u->p, u->buf, max);
    int addrs = 0;
    if (u->naddrs > 1) {
        lua_getiuservalue(L, 1, 1);
        addrs = lua_gettop(L);
    }
    pm_probe_push_batch(L, u->buf, n, addrs);
    return 1;
}

/* p:timeout(): ms until a step is due without an event on the fd (0: now),
 * or nil when the run is over. */
static int l_timeout(lua_State *L)
{
    int ms = pm_probe_timeout(check_open(L)->p);
    if (ms < 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, ms);
    return 1;
}

static int l_done(lua_State *L)
{
    lua_pushboolean(L, pm_probe_done(check_open(L)->p));
    return 1;
}

static int l_cancel(lua_State *L)
{
    pm_probe_cancel(check_open(L)->p);
    return 0;
}

static int l_stats(lua_State *L)
{
    pm_probe_stats st;
    pm_probe_get_stats(check_open(L)->p, &st);
    lua_createtable(L, 0, 9);
    lua_pushinteger(L, (lua_Integer)st.targets);
    lua_setfield(L, -2, "targets");
    lua_pushinteger(L, (lua_Integer)st.reported);
    lua_setfield(L, -2, "reported");
    lua_pushinteger(L, st.inflight);
    lua_setfield(L, -2, "inflight");
    lua_pushinteger(L, st.peak);
    lua_setfield(L, -2, "peak");
    lua_pushinteger(L, st.concurrency);
    lua_setfield(L, -2, "concurrency");
    lua_pushinteger(L, st.shards);
    lua_setfield(L, -2, "shards");
    lua_pushinteger(L, (lua_Integer)st.sent);
    lua_setfield(L, -2, "sent");
    lua_pushinteger(L, (lua_Integer)st.retransmits);
    lua_setfield(L, -2, "retransmits");
    lua_pushinteger(L, st.pace_ms);
    lua_setfield(L, -2, "pace_ms");
    return 1;
}

static int l_tostring(lua_State *L)
{
    probe_ud *u = luaL_checkudata(L, 1, PROBE);
    if (!u->p) {
        lua_pushliteral(L, PROBE " (closed)");
        return 1;
    }
    pm_probe_stats st;
    pm_probe_get_stats(u->p, &st);
    lua_pushfstring(L, PROBE " (%d of %d reported, %d in flight)", (int)st.reported, (int)st.targets,
                    (int)st.inflight);
    return 1;
}

static int l_max_concurrency(lua_State *L)
{
    lua_pushinteger(L, pm_probe_max_concurrency());
    return 1;
}

static int l_default_concurrency(lua_State *L)
{
    lua_pushinteger(L, pm_probe_default_concurrency());
    return 1;
}

static const luaL_Reg methods[] = {
    {"fd", l_fd},
    {"step", l_step},
    {"timeout", l_timeout},
    {"done", l_done},
    {"cancel", l_cancel},
    {"stats", l_stats},
    {"close", probe_close},
    {NULL, NULL},
};

int pm_open_probe(lua_State *L)
{
    pm_newclosable(L, PROBE, methods, probe_close, l_tostring);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "probe_new");
    lua_pushcfunction(L, l_max_concurrency);
    lua_setfield(L, -2, "probe_max_concurrency");
    lua_pushcfunction(L, l_default_concurrency);
    lua_setfield(L, -2, "probe_default_concurrency");
    return 0;
}
