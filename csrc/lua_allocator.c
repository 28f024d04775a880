/* portman.allocator: a port pool over the bitmap, with the pick strategy in
 * C so that allocate and release are one C call each from Lua. Option
 * checking lives in lua/portman/allocator.lua; this file trusts its caller
 * only for what that file checks (range and strategy), and checks ports.
 *
 * The object's methods are exactly the documented API (README.md,
 * portman.allocator), snapshot included. What restore needs besides (the
 * cursor, the bitmap as text) are functions of the core module, not
 * methods: core.allocator_cursor, core.allocator_serialize and
 * core.allocator_load. */
#include <stdint.h>

#include "pool.h"
#include "lua_util.h"
#include "visibility.h" /* last: see there */

#define ALLOCATOR "portman.allocator"

static const char *const strategies[] = {"sequential", "random", "hash", NULL};

typedef pm_pool allocator;

/* The userdata's user values: what a snapshot keeps that the pool does not. */
enum { UV_NODE_ID = 1, UV_ALLOW_PRIVILEGED = 2, NUV = 2 };

static pm_bitmap *bitmap_of(allocator *a) { return pm_pool_bitmap(a); }

/* allocate and release are hot (tens of ns): the methods carry the
 * metatable as an upvalue (pm_checkself). */
static allocator *check_allocator(lua_State *L)
{
    return pm_checkself(L, ALLOCATOR);
}

static void check_range(lua_State *L, lua_Integer lo, lua_Integer hi)
{
    luaL_argcheck(L, lo >= PM_PORT_MIN && lo <= PM_PORT_MAX, 1, "port out of range 1-65535");
    luaL_argcheck(L, hi >= lo && hi <= PM_PORT_MAX, 2, "port out of range");
}

/* core.allocator_new(lo, hi, strategy[, node_id[, allow_privileged]]): the
 * hash strategy starts at node_id's hash, the others at lo. node_id and
 * allow_privileged are kept for snapshots. */
static int l_new(lua_State *L)
{
    lua_Integer lo = luaL_checkinteger(L, 1);
    lua_Integer hi = luaL_checkinteger(L, 2);
    int strategy = luaL_checkoption(L, 3, NULL, strategies);
    check_range(L, lo, hi);
    uint32_t start = (uint32_t)lo;
    if (strategy == PM_HASH) {
        size_t len;
        const char *id = luaL_checklstring(L, 4, &len);
        start = pm_hash_start(id, len, (uint32_t)lo, (uint32_t)hi);
    } else if (!lua_isnoneornil(L, 4)) {
        luaL_checktype(L, 4, LUA_TSTRING);
    }
    int privileged = lua_toboolean(L, 5);
    allocator *a = lua_newuserdatauv(L, pm_pool_size((uint32_t)lo, (uint32_t)hi), NUV);
    pm_pool_init(a, (uint32_t)lo, (uint32_t)hi, strategy, start);
    luaL_setmetatable(L, ALLOCATOR);
    if (lua_type(L, 4) == LUA_TSTRING) {
        lua_pushvalue(L, 4);
        lua_setiuservalue(L, -2, UV_NODE_ID);
    }
    if (privileged) {
        lua_pushboolean(L, 1);
        lua_setiuservalue(L, -2, UV_ALLOW_PRIVILEGED);
    }
    return 1;
}

/* A port argument that must lie in the pool's range. */
static uint32_t check_port(lua_State *L, int arg, const pm_bitmap *bm)
{
    lua_Integer p = luaL_checkinteger(L, arg);
    if (p < bm->lo || p > bm->hi) {
        if (p < PM_PORT_MIN || p > PM_PORT_MAX)
            luaL_argerror(L, arg, "port out of range 1-65535");
        luaL_argerror(L, arg, lua_pushfstring(L, "port %d outside the pool %d-%d",
                                              (int)p, (int)bm->lo, (int)bm->hi));
    }
    return (uint32_t)p;
}

static int l_allocate(lua_State *L)
{
    allocator *a = check_allocator(L);
    uint32_t p = pm_pool_allocate(a);
    if (!p) {
        pm_bitmap *bm = bitmap_of(a);
        return pm_fail(L, "exhausted", "no free port in %d-%d", (int)bm->lo, (int)bm->hi);
    }
    lua_pushinteger(L, p);
    return 1;
}

static int l_reserve(lua_State *L)
{
    pm_bitmap *bm = bitmap_of(check_allocator(L));
    uint32_t p = check_port(L, 2, bm);
    if (!pm_bitmap_set(bm, p))
        return pm_fail(L, "conflict", "port %d is already allocated", (int)p);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_release(lua_State *L)
{
    pm_bitmap *bm = bitmap_of(check_allocator(L));
    lua_pushboolean(L, pm_bitmap_clear(bm, check_port(L, 2, bm)));
    return 1;
}

static int l_is_allocated(lua_State *L)
{
    pm_bitmap *bm = bitmap_of(check_allocator(L));
    lua_pushboolean(L, pm_bitmap_test(bm, check_port(L, 2, bm)));
    return 1;
}

static int l_allocated(lua_State *L)
{
    lua_pushinteger(L, pm_bitmap_allocated(bitmap_of(check_allocator(L))));
    return 1;
}

static int l_free(lua_State *L)
{
    lua_pushinteger(L, bitmap_of(check_allocator(L))->nfree);
    return 1;
}

static int l_size(lua_State *L)
{
    lua_pushinteger(L, bitmap_of(check_allocator(L))->nbits);
    return 1;
}

static int l_utilization(lua_State *L)
{
    pm_bitmap *bm = bitmap_of(check_allocator(L));
    lua_pushnumber(L, 100.0 * pm_bitmap_allocated(bm) / bm->nbits);
    return 1;
}

static int l_range(lua_State *L)
{
    pm_bitmap *bm = bitmap_of(check_allocator(L));
    lua_pushinteger(L, bm->lo);
    lua_pushinteger(L, bm->hi);
    return 2;
}

static int l_strategy(lua_State *L)
{
    lua_pushstring(L, strategies[check_allocator(L)->strategy]);
    return 1;
}

/* core.allocator_cursor(a[, port]): reads, or sets for a restore. */
static int l_cursor(lua_State *L)
{
    allocator *a = check_allocator(L);
    if (!lua_isnoneornil(L, 2))
        a->cursor = check_port(L, 2, bitmap_of(a));
    lua_pushinteger(L, a->cursor);
    return 1;
}

/* Iterator step: (a, prev) -> next allocated port after prev. */
static int ports_next(lua_State *L)
{
    pm_bitmap *bm = bitmap_of(check_allocator(L));
    lua_Integer prev = luaL_checkinteger(L, 2);
    uint32_t p = prev < bm->hi ? pm_bitmap_next_set(bm, prev < bm->lo ? bm->lo : (uint32_t)prev + 1) : 0;
    if (!p)
        return 0;
    lua_pushinteger(L, p);
    return 1;
}

/* for port in a:ports() do ... end, in ascending order. */
static int l_ports(lua_State *L)
{
    pm_bitmap *bm = bitmap_of(check_allocator(L));
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_pushcclosure(L, ports_next, 1);
    lua_pushvalue(L, 1);
    lua_pushinteger(L, (lua_Integer)bm->lo - 1);
    return 3;
}

/* Pushes the bitmap as text ("PMB1 lo-hi a-b,c"). */
static void push_serialized(lua_State *L, const pm_bitmap *bm)
{
    luaL_Buffer b;
    size_t need = pm_bitmap_serialize(bm, NULL, 0);
    char *out = luaL_buffinitsize(L, &b, need);
    pm_bitmap_serialize(bm, out, need);
    luaL_pushresultsize(&b, need);
}

/* core.allocator_serialize(a): the allocated ports as text. */
static int l_serialize(lua_State *L)
{
    push_serialized(L, bitmap_of(check_allocator(L)));
    return 1;
}

/* a:snapshot(): a plain, JSON-safe table that allocator.restore turns back
 * into this pool: {version = 1, range = {lo, hi}, strategy, node_id,
 * allow_privileged, cursor, bitmap}. */
static int l_snapshot(lua_State *L)
{
    allocator *a = check_allocator(L);
    pm_bitmap *bm = bitmap_of(a);
    lua_createtable(L, 0, 7);
    lua_pushinteger(L, 1);
    lua_setfield(L, -2, "version");
    lua_createtable(L, 2, 0);
    lua_pushinteger(L, bm->lo);
    lua_rawseti(L, -2, 1);
    lua_pushinteger(L, bm->hi);
    lua_rawseti(L, -2, 2);
    lua_setfield(L, -2, "range");
    lua_pushstring(L, strategies[a->strategy]);
    lua_setfield(L, -2, "strategy");
    lua_getiuservalue(L, 1, UV_NODE_ID); /* nil when there is none: no field */
    lua_setfield(L, -2, "node_id");
    lua_getiuservalue(L, 1, UV_ALLOW_PRIVILEGED);
    lua_setfield(L, -2, "allow_privileged");
    lua_pushinteger(L, a->cursor);
    lua_setfield(L, -2, "cursor");
    push_serialized(L, bm);
    lua_setfield(L, -2, "bitmap");
    return 1;
}

/* core.is_allocator(v) */
static int l_is_allocator(lua_State *L)
{
    int same = 0;
    if (lua_type(L, 1) == LUA_TUSERDATA && lua_getmetatable(L, 1)) {
        same = lua_rawequal(L, -1, lua_upvalueindex(1));
        lua_pop(L, 1);
    }
    lua_pushboolean(L, same);
    return 1;
}

/* core.allocator_load(a, text): raises on a malformed or foreign text,
 * leaving a empty. */
static int l_load(lua_State *L)
{
    pm_bitmap *bm = bitmap_of(check_allocator(L));
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    if (pm_bitmap_load(bm, text, len) < 0)
        luaL_argerror(L, 2, "corrupt allocator bitmap");
    return 0;
}

/* core.hash_start(node_id, lo, hi) */
static int l_hash_start(lua_State *L)
{
    size_t len;
    const char *id = luaL_checklstring(L, 1, &len);
    lua_Integer lo = luaL_checkinteger(L, 2), hi = luaL_checkinteger(L, 3);
    check_range(L, lo, hi);
    lua_pushinteger(L, pm_hash_start(id, len, (uint32_t)lo, (uint32_t)hi));
    return 1;
}

static int l_fnv1a32(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    lua_pushinteger(L, pm_fnv1a32(s, len));
    return 1;
}

static int l_tostring(lua_State *L)
{
    allocator *a = check_allocator(L);
    pm_bitmap *bm = bitmap_of(a);
    lua_pushfstring(L, ALLOCATOR " %d-%d %s (%d of %d allocated)", (int)bm->lo, (int)bm->hi,
                    strategies[a->strategy], (int)pm_bitmap_allocated(bm), (int)bm->nbits);
    return 1;
}

static const luaL_Reg methods[] = {
    {"allocate", l_allocate},
    {"reserve", l_reserve},
    {"release", l_release},
    {"is_allocated", l_is_allocated},
    {"allocated", l_allocated},
    {"free", l_free},
    {"size", l_size},
    {"utilization", l_utilization},
    {"range", l_range},
    {"strategy", l_strategy},
    {"ports", l_ports},
    {"snapshot", l_snapshot},
    {NULL, NULL},
};

/* Functions of the core module that need the metatable (as upvalue 1, like
 * the methods): restore's tools, and the type test. */
static const luaL_Reg functions[] = {
    {"allocator_cursor", l_cursor},
    {"allocator_serialize", l_serialize},
    {"allocator_load", l_load},
    {"is_allocator", l_is_allocator},
    {NULL, NULL},
};

static const luaL_Reg meta[] = {
    {"__tostring", l_tostring},
    {"__len", l_allocated},
    {NULL, NULL},
};

int pm_open_allocator(lua_State *L)
{
    /* the module table is on top: stack [core] */
    luaL_newmetatable(L, ALLOCATOR); /* [core, mt] */
    lua_pushvalue(L, -1);
    luaL_setfuncs(L, meta, 1);
    lua_newtable(L); /* [core, mt, methods] */
    lua_pushvalue(L, -2);
    luaL_setfuncs(L, methods, 1);
    lua_setfield(L, -2, "__index"); /* [core, mt] */
    lua_pushvalue(L, -2); /* [core, mt, core] */
    lua_pushvalue(L, -2); /* [core, mt, core, mt] */
    luaL_setfuncs(L, functions, 1); /* [core, mt, core] */
    lua_pop(L, 2); /* [core] */
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "allocator_new");
    lua_pushcfunction(L, l_hash_start);
    lua_setfield(L, -2, "hash_start");
    lua_pushcfunction(L, l_fnv1a32);
    lua_setfield(L, -2, "fnv1a32");
    return 0;
}
