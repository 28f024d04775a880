/* portman.allocator: a port pool over the bitmap, with the pick strategy in
 * C so that allocate and release are one C call each from Lua. Option
 * checking lives in lua/portman/allocator.lua; this file trusts its caller
 * only for what that file checks (range and strategy), and checks ports. */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>

#include "bitmap.h"
#include "lua_util.h"

#define ALLOCATOR "portman.allocator"

enum { SEQUENTIAL, RANDOM, HASH };
static const char *const strategies[] = {"sequential", "random", "hash", NULL};

typedef struct {
    int strategy;
    uint32_t cursor; /* where the next sequential search starts */
    uint64_t bm_storage[]; /* the pm_bitmap lives here, 8-byte aligned */
} allocator;

static pm_bitmap *bitmap_of(allocator *a) { return (pm_bitmap *)a->bm_storage; }

static allocator *check_allocator(lua_State *L)
{
    return luaL_checkudata(L, 1, ALLOCATOR);
}

/* An unpredictable 64-bit value (RFC 6056 wants ports an attacker cannot
 * guess): getrandom, buffered so a syscall serves many picks. */
static uint64_t random64(void)
{
    static _Thread_local uint64_t buf[32];
    static _Thread_local unsigned left;
    if (left == 0) {
        size_t got = 0;
        while (got < sizeof(buf)) {
            ssize_t n = getrandom((char *)buf + got, sizeof(buf) - got, 0);
            if (n > 0)
                got += (size_t)n;
            /* EINTR: try again; getrandom cannot otherwise fail for this size */
        }
        left = 32;
    }
    return buf[--left];
}

/* Uniform in [0, n) by rejection: no modulo bias. */
static uint32_t uniform(uint32_t n)
{
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t r;
    do
        r = random64();
    while (r >= limit);
    return (uint32_t)(r % n);
}

/* core.allocator_new(lo, hi, strategy, start): start is where the sequential
 * cursor begins (the hash strategy's stable start). */
static int l_new(lua_State *L)
{
    lua_Integer lo = luaL_checkinteger(L, 1);
    lua_Integer hi = luaL_checkinteger(L, 2);
    int strategy = luaL_checkoption(L, 3, NULL, strategies);
    lua_Integer start = luaL_optinteger(L, 4, lo);
    luaL_argcheck(L, lo >= PM_PORT_MIN && lo <= PM_PORT_MAX, 1, "port out of range 1-65535");
    luaL_argcheck(L, hi >= lo && hi <= PM_PORT_MAX, 2, "port out of range");
    luaL_argcheck(L, start >= lo && start <= hi, 4, "start outside the range");
    size_t size = sizeof(allocator) + pm_bitmap_size((uint32_t)lo, (uint32_t)hi);
    allocator *a = lua_newuserdatauv(L, size, 0);
    a->strategy = strategy;
    a->cursor = (uint32_t)start;
    pm_bitmap_init(bitmap_of(a), (uint32_t)lo, (uint32_t)hi);
    luaL_setmetatable(L, ALLOCATOR);
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
    pm_bitmap *bm = bitmap_of(a);
    uint32_t p;
    if (bm->nfree == 0)
        return pm_fail(L, "exhausted", "no free port in %d-%d", (int)bm->lo, (int)bm->hi);
    if (a->strategy == RANDOM) {
        p = pm_bitmap_nth_free(bm, uniform(bm->nfree));
    } else {
        p = pm_bitmap_next_free(bm, a->cursor);
        a->cursor = p < bm->hi ? p + 1 : bm->lo;
    }
    pm_bitmap_set(bm, p);
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

/* a:_cursor([port]): reads, or sets for a restore. */
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
    lua_pushcfunction(L, ports_next);
    lua_pushvalue(L, 1);
    lua_pushinteger(L, (lua_Integer)bm->lo - 1);
    return 3;
}

static int l_serialize(lua_State *L)
{
    pm_bitmap *bm = bitmap_of(check_allocator(L));
    luaL_Buffer b;
    size_t need = pm_bitmap_serialize(bm, NULL, 0);
    char *out = luaL_buffinitsize(L, &b, need);
    pm_bitmap_serialize(bm, out, need);
    luaL_pushresultsize(&b, need);
    return 1;
}

/* a:_load(text): raises on a malformed or foreign text, leaving a empty. */
static int l_load(lua_State *L)
{
    pm_bitmap *bm = bitmap_of(check_allocator(L));
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    if (pm_bitmap_load(bm, text, len) < 0)
        luaL_argerror(L, 2, "corrupt allocator bitmap");
    return 0;
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
    {"_cursor", l_cursor},
    {"_serialize", l_serialize},
    {"_load", l_load},
    {NULL, NULL},
};

static const luaL_Reg meta[] = {
    {"__tostring", l_tostring},
    {"__len", l_allocated},
    {NULL, NULL},
};

int pm_open_allocator(lua_State *L)
{
    pm_newclass(L, ALLOCATOR, methods, meta);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "allocator_new");
    /* The Lua layer adds its own methods (snapshot) to the same __index. */
    luaL_getmetatable(L, ALLOCATOR);
    lua_getfield(L, -1, "__index");
    lua_setfield(L, -3, "allocator_methods");
    lua_pop(L, 1);
    return 0;
}
