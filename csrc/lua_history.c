/* A health check's history: a ring of the last `size` results, each its
 * success flag, when it ended (ms, the scheduler's clock), how long it
 * took and how late it started (ms). lua/portman/health.lua keeps the
 * result's status word and message beside it, for the results that have
 * them (docs/design.md, "Health checks").
 *
 * core.history_new(size) -> ring
 * ring:push(ok, at, ms, lag) -> slot (1..size) the result went to
 * ring:get(k) -> slot, ok, at, ms, lag of the k-th oldest result (k in
 *   1..count), or nothing
 * ring:count() -> results kept (at most size)
 * ring:size() -> size
 *
 * Why C: 10,000 checks keep a million results. As Lua arrays (six values
 * of 16 bytes a result) they took 96 MB, and a status document or a
 * scrape that read a field of each check spent most of its time waiting
 * on memory. Here a result is 17 bytes: at as a double, ms and lag as
 * floats (7 significant digits: a microsecond of a 10 s check), ok a
 * byte. */
#include <stdint.h>
#include <string.h>

#include "lua_util.h"
#include "visibility.h" /* last: see there */

#define HISTORY "portman.history"
#define HISTORY_MAX 100000

typedef struct {
    uint32_t size, next, count; /* next: the slot (0-based) the next push takes */
    double *at;
    float *ms, *lag;
    uint8_t *ok;
} ring;

/* push runs for every check result: the metatable is the methods'
 * upvalue (pm_checkself). */
static ring *check_ring(lua_State *L)
{
    return pm_checkself(L, HISTORY);
}

/* One block: the header, then the arrays, the doubles first (aligned). */
static int l_new(lua_State *L)
{
    lua_Integer size = luaL_checkinteger(L, 1);
    luaL_argcheck(L, size >= 1 && size <= HISTORY_MAX, 1, "size: 1-100000 expected");
    size_t n = (size_t)size;
    size_t bytes = sizeof(ring) + n * (sizeof(double) + 2 * sizeof(float) + 1);
    ring *r = lua_newuserdatauv(L, bytes, 0);
    memset(r, 0, bytes);
    r->size = (uint32_t)n;
    r->at = (double *)(void *)(r + 1);
    r->ms = (float *)(void *)(r->at + n);
    r->lag = r->ms + n;
    r->ok = (uint8_t *)(r->lag + n);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_setmetatable(L, -2);
    return 1;
}

static int l_push(lua_State *L)
{
    ring *r = check_ring(L);
    int ok = lua_toboolean(L, 2);
    double at = luaL_checknumber(L, 3);
    double ms = luaL_checknumber(L, 4);
    double lag = luaL_checknumber(L, 5);
    uint32_t i = r->next;
    r->ok[i] = (uint8_t)ok;
    r->at[i] = at;
    r->ms[i] = (float)ms;
    r->lag[i] = (float)lag;
    r->next = (i + 1) % r->size;
    if (r->count < r->size)
        r->count++;
    lua_pushinteger(L, (lua_Integer)i + 1);
    return 1;
}

static int l_get(lua_State *L)
{
    ring *r = check_ring(L);
    lua_Integer k = luaL_checkinteger(L, 2);
    if (k < 1 || k > (lua_Integer)r->count)
        return 0;
    uint32_t first = r->count < r->size ? 0 : r->next;
    uint32_t i = (uint32_t)((first + (uint64_t)(k - 1)) % r->size);
    lua_pushinteger(L, (lua_Integer)i + 1);
    lua_pushboolean(L, r->ok[i]);
    lua_pushnumber(L, r->at[i]);
    lua_pushnumber(L, (lua_Number)r->ms[i]);
    lua_pushnumber(L, (lua_Number)r->lag[i]);
    return 5;
}

static int l_count(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)check_ring(L)->count);
    return 1;
}

static int l_size(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)check_ring(L)->size);
    return 1;
}

int pm_open_history(lua_State *L)
{
    static const luaL_Reg methods[] = {{"push", l_push}, {"get", l_get}, {"count", l_count},
                                       {"size", l_size}, {NULL, NULL}};
    luaL_newmetatable(L, HISTORY); /* [core, mt] */
    lua_newtable(L);
    lua_pushvalue(L, -2);
    luaL_setfuncs(L, methods, 1);
    lua_setfield(L, -2, "__index");
    lua_pushvalue(L, -1);
    lua_pushcclosure(L, l_new, 1); /* [core, mt, new] */
    lua_setfield(L, -3, "history_new");
    lua_pop(L, 1);
    return 0;
}
