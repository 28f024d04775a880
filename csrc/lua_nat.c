/* Lua bindings of the router mapping engines: UPnP IGD jobs (a worker
 * thread each; the loop polls the job's fd) and NAT-PMP requests (the
 * loop polls libnatpmp's socket and steps it when due). */
#include <arpa/inet.h>
#include <errno.h>
#include <sys/socket.h>
#include <string.h>

#include "lua_util.h"
#include "pmp.h"
#include "upnp.h"
#include "visibility.h" /* last: see there */

#define UPNP_JOB "portman.upnp_job"
#define PMP "portman.natpmp"

typedef struct {
    struct pm_upnp_job *job;
    int done;
} ujob;

static const char *const OPS[] = {"discover", "external_ip", "add", "add_any", "delete", "get", "entry", NULL};

static void copy_field(lua_State *L, int t, const char *k, char *dst, size_t n)
{
    lua_getfield(L, t, k);
    if (!lua_isnil(L, -1)) {
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (!s || len >= n) luaL_argerror(L, 2, lua_pushfstring(L, "%s: string of at most %d bytes expected", k, (int)n - 1));
        memcpy(dst, s, len + 1);
    }
    lua_pop(L, 1);
}

static lua_Integer int_field(lua_State *L, int t, const char *k, lua_Integer lo, lua_Integer hi, lua_Integer dflt)
{
    lua_getfield(L, t, k);
    lua_Integer v = dflt;
    if (!lua_isnil(L, -1)) {
        int ok;
        v = lua_tointegerx(L, -1, &ok);
        if (!ok || v < lo || v > hi)
            luaL_argerror(L, 2, lua_pushfstring(L, "%s: integer in %I-%I expected", k, lo, hi));
    }
    lua_pop(L, 1);
    return v;
}

/* core.upnp_start(op, {timeout, igd = {control_url, service_type, lan_addr},
 *   desc_url, external_port, internal_port, internal_ip, proto, lease,
 *   description, index}) -> job */
static int l_upnp_start(lua_State *L)
{
    struct pm_upnp_job a;
    memset(&a, 0, sizeof a);
    a.op = luaL_checkoption(L, 1, NULL, OPS);
    luaL_checktype(L, 2, LUA_TTABLE);
    a.timeout_ms = (int)int_field(L, 2, "timeout", 1, 600000, 2000);
    a.external_port = (int)int_field(L, 2, "external_port", 0, 65535, 0);
    a.internal_port = (int)int_field(L, 2, "internal_port", 0, 65535, 0);
    a.lease = (unsigned)int_field(L, 2, "lease", 0, 604800, 0);
    a.index = (int)int_field(L, 2, "index", 0, 65535, 0);
    strcpy(a.proto, "TCP");
    lua_getfield(L, 2, "proto");
    if (!lua_isnil(L, -1)) {
        const char *p = lua_tostring(L, -1);
        if (p && strcmp(p, "udp") == 0) strcpy(a.proto, "UDP");
        else if (!p || strcmp(p, "tcp") != 0) luaL_argerror(L, 2, "proto: \"tcp\" or \"udp\" expected");
    }
    lua_pop(L, 1);
    copy_field(L, 2, "internal_ip", a.internal_ip, sizeof a.internal_ip);
    copy_field(L, 2, "description", a.desc, sizeof a.desc);
    copy_field(L, 2, "desc_url", a.desc_url, sizeof a.desc_url);
    lua_getfield(L, 2, "igd");
    if (lua_istable(L, -1)) {
        int t = lua_gettop(L);
        copy_field(L, t, "control_url", a.igd.control_url, sizeof a.igd.control_url);
        copy_field(L, t, "service_type", a.igd.service_type, sizeof a.igd.service_type);
        copy_field(L, t, "lan_addr", a.igd.lan_addr, sizeof a.igd.lan_addr);
        a.have_igd = a.igd.control_url[0] != 0;
    }
    lua_pop(L, 1);
    ujob *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->job = NULL;
    u->done = 0;
    luaL_setmetatable(L, UPNP_JOB);
    u->job = pm_upnp_start(&a);
    if (!u->job) return pm_fail_errno(L, errno, "upnp worker");
    return 1;
}

static ujob *check_job(lua_State *L)
{
    ujob *u = luaL_checkudata(L, 1, UPNP_JOB);
    if (!u->job) luaL_error(L, "attempt to use a closed UPnP job");
    return u;
}

static int l_job_fd(lua_State *L)
{
    lua_pushinteger(L, check_job(L)->job->efd);
    return 1;
}

static void push_entry(lua_State *L, const struct pm_upnp_entry *e)
{
    lua_createtable(L, 0, 7);
    lua_pushinteger(L, e->external_port);
    lua_setfield(L, -2, "external_port");
    lua_pushinteger(L, e->internal_port);
    lua_setfield(L, -2, "internal_port");
    lua_pushstring(L, e->internal_ip);
    lua_setfield(L, -2, "internal_ip");
    lua_pushstring(L, strcmp(e->proto, "UDP") == 0 ? "udp" : "tcp");
    lua_setfield(L, -2, "proto");
    lua_pushstring(L, e->desc);
    lua_setfield(L, -2, "description");
    lua_pushinteger(L, e->lease);
    lua_setfield(L, -2, "lifetime");
    lua_pushboolean(L, e->enabled);
    lua_setfield(L, -2, "enabled");
}

/* job:result() -> false while running; then a table, or nil, msg, code
 * (and the IGD used, when one was found, as a 4th value). The table's
 * `discovered` says the job searched for the IGD; an "entry" job's has
 * `entry`, or `done` past the last one. */
static int l_job_result(lua_State *L)
{
    ujob *u = check_job(L);
    if (!u->done && !pm_upnp_ready(u->job)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    u->done = 1;
    struct pm_upnp_job *j = u->job;
    if (j->status) {
        pm_fail(L, j->code ? j->code : "protocol", "%s", j->msg);
        if (!j->have_igd) return 3;
    } else {
        lua_createtable(L, 0, 6);
        if (j->external_ip[0]) {
            lua_pushstring(L, j->external_ip);
            lua_setfield(L, -2, "external_ip");
        }
        if (j->got_port) {
            lua_pushinteger(L, j->got_port);
            lua_setfield(L, -2, "external_port");
        }
        if (j->op == PM_UPNP_GET) {
            push_entry(L, &j->entry);
            lua_setfield(L, -2, "entry");
        }
        if (j->op == PM_UPNP_ENTRY && !j->end) {
            push_entry(L, &j->entry);
            lua_setfield(L, -2, "entry");
        }
        if (j->op == PM_UPNP_ENTRY && j->end) {
            lua_pushboolean(L, 1);
            lua_setfield(L, -2, "done");
        }
        lua_pushboolean(L, j->discovered);
        lua_setfield(L, -2, "discovered");
        lua_pushnil(L);
        lua_pushnil(L);
    }
    lua_createtable(L, 0, 3);
    lua_pushstring(L, j->igd.control_url);
    lua_setfield(L, -2, "control_url");
    lua_pushstring(L, j->igd.service_type);
    lua_setfield(L, -2, "service_type");
    lua_pushstring(L, j->igd.lan_addr);
    lua_setfield(L, -2, "lan_addr");
    return 4;
}

static int l_job_close(lua_State *L)
{
    ujob *u = luaL_checkudata(L, 1, UPNP_JOB);
    if (u->job) {
        pm_upnp_release(u->job); /* a job still running frees itself when it ends */
        u->job = NULL;
    }
    return 0;
}

/* NAT-PMP */

typedef struct {
    struct pm_pmp p;
    int open;
} upmp;

/* core.natpmp_open([gateway]) -> engine, gateway address, local address */
static int l_pmp_open(lua_State *L)
{
    const char *gw = luaL_optstring(L, 1, NULL);
    upmp *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->open = 0;
    luaL_setmetatable(L, PMP);
    errno = 0;
    int r = pm_pmp_open(&u->p, gw);
    if (r < 0) {
        int e = errno;
        return pm_fail(L, pm_pmp_code(r, e), "NAT-PMP: %s (%d)",
                       r == NATPMP_ERR_CANNOTGETGATEWAY ? "no default gateway" : strerror(e), r);
    }
    u->open = 1;
    lua_pushstring(L, u->p.gateway);
    /* the socket is connected to the gateway: its address is the one the
     * gateway maps to */
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    char local[INET_ADDRSTRLEN] = "";
    if (getsockname(u->p.np.s, (struct sockaddr *)&sa, &len) == 0)
        inet_ntop(AF_INET, &sa.sin_addr, local, sizeof local);
    lua_pushstring(L, local);
    return 3;
}

static upmp *check_pmp(lua_State *L)
{
    upmp *u = luaL_checkudata(L, 1, PMP);
    if (!u->open) luaL_error(L, "attempt to use a closed NAT-PMP engine");
    return u;
}

static int l_pmp_fd(lua_State *L)
{
    lua_pushinteger(L, pm_pmp_fd(&check_pmp(L)->p));
    return 1;
}

/* e:request() asks for the public address; e:request(proto, internal, external, lifetime) maps */
static int l_pmp_request(lua_State *L)
{
    upmp *u = check_pmp(L);
    const char *proto = NULL;
    int in = 0, ext = 0;
    lua_Integer life = 0;
    if (!lua_isnoneornil(L, 2)) {
        static const char *const P[] = {"tcp", "udp", NULL};
        proto = P[luaL_checkoption(L, 2, NULL, P)];
        lua_Integer i = luaL_checkinteger(L, 3), x = luaL_optinteger(L, 4, 0);
        life = luaL_optinteger(L, 5, 7200);
        luaL_argcheck(L, i >= 1 && i <= 65535, 3, "port out of range 1-65535");
        luaL_argcheck(L, x >= 0 && x <= 65535, 4, "port out of range 0-65535");
        luaL_argcheck(L, life >= 0 && life <= 0xffffffffLL, 5, "lifetime out of range");
        in = (int)i;
        ext = (int)x;
    }
    errno = 0;
    int r = pm_pmp_request(&u->p, proto, in, ext, (uint32_t)life);
    if (r < 0) return pm_fail(L, pm_pmp_code(r, errno), "NAT-PMP request failed (%d)", r);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_pmp_timeout(lua_State *L)
{
    lua_pushinteger(L, pm_pmp_timeout_ms(&check_pmp(L)->p));
    return 1;
}

/* e:step() -> false (waiting), or the answer table, or nil, msg, code */
static int l_pmp_step(lua_State *L)
{
    upmp *u = check_pmp(L);
    struct pm_pmp_result r;
    pm_pmp_step(&u->p, &r);
    if (!r.done) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (r.error) {
        /* r.why says what the gateway answered; the others are failures to hear it */
        if (r.why[0]) return pm_fail(L, r.code, "NAT-PMP %s: %s", u->p.gateway, r.why);
        const char *why = r.error == NATPMP_ERR_NOGATEWAYSUPPORT ? "no NAT-PMP answer from the gateway"
                        : r.sys_errno ? strerror(r.sys_errno) : "request failed";
        return pm_fail(L, r.code, "NAT-PMP %s: %s (%d)", u->p.gateway, why, r.error);
    }
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, r.epoch);
    lua_setfield(L, -2, "epoch");
    if (r.external_ip[0]) {
        lua_pushstring(L, r.external_ip);
        lua_setfield(L, -2, "external_ip");
    } else {
        lua_pushinteger(L, r.internal_port);
        lua_setfield(L, -2, "internal_port");
        lua_pushinteger(L, r.external_port);
        lua_setfield(L, -2, "external_port");
        lua_pushinteger(L, r.lifetime);
        lua_setfield(L, -2, "lifetime");
    }
    return 1;
}

static int l_pmp_close(lua_State *L)
{
    upmp *u = luaL_checkudata(L, 1, PMP);
    if (u->open) {
        u->open = 0;
        pm_pmp_close(&u->p);
    }
    return 0;
}

int pm_open_nat(lua_State *L)
{
    static const luaL_Reg job_methods[] = {
        {"fd", l_job_fd}, {"result", l_job_result}, {"close", l_job_close}, {NULL, NULL}};
    static const luaL_Reg job_meta[] = {{"__gc", l_job_close}, {"__close", l_job_close}, {NULL, NULL}};
    pm_newclass(L, UPNP_JOB, job_methods, job_meta);
    static const luaL_Reg pmp_methods[] = {{"fd", l_pmp_fd}, {"request", l_pmp_request},
        {"timeout", l_pmp_timeout}, {"step", l_pmp_step}, {"close", l_pmp_close}, {NULL, NULL}};
    static const luaL_Reg pmp_meta[] = {{"__gc", l_pmp_close}, {"__close", l_pmp_close}, {NULL, NULL}};
    pm_newclass(L, PMP, pmp_methods, pmp_meta);
    static const luaL_Reg fns[] = {{"upnp_start", l_upnp_start}, {"natpmp_open", l_pmp_open}, {NULL, NULL}};
    luaL_setfuncs(L, fns, 0);
    return 0;
}
