/* Fuzzing Lua code with libFuzzer: the harness embeds Lua 5.4, loads a
 * driver script (fuzz/NAME_fuzz.lua, which returns a function of one
 * string) with portman's modules on the path, and calls it with each
 * input. A Lua error is a finding: the driver checks what the code under
 * test promises (return nil, err; never raise) and raises when it breaks.
 *
 * Coverage: liblua is not instrumented, so a line hook feeds libFuzzer's
 * extra counters with (source, line) pairs of the Lua code run: inputs
 * that reach new lines of the Lua parser are kept, as for C code. */
#ifndef PORTMAN_LUA_FUZZ_H
#define PORTMAN_LUA_FUZZ_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define LUA_FUZZ_COUNTERS 65536
__attribute__((used, section("__libfuzzer_extra_counters"))) static uint8_t lua_fuzz_counters[LUA_FUZZ_COUNTERS];

static lua_State *lua_fuzz_L;
static int lua_fuzz_ref = LUA_NOREF;

static void lua_fuzz_hook(lua_State *L, lua_Debug *ar)
{
    if (!lua_getinfo(L, "S", ar))
        return;
    /* the source string is interned: its address names the chunk */
    uint32_t h = (uint32_t)(uintptr_t)ar->source * 2654435761u ^ (uint32_t)ar->currentline * 40503u;
    lua_fuzz_counters[h % LUA_FUZZ_COUNTERS]++;
}

/* Runs from the fuzz/ directory (as `make -C fuzz run` does): the modules
 * come from ../lua, the C core from ../build. */
static void lua_fuzz_init(const char *driver)
{
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_dostring(L, "package.path = '../lua/?.lua;../lua/?/init.lua;' .. package.path\n"
                         "package.cpath = '../build/?.so;' .. package.cpath") != LUA_OK ||
        luaL_loadfile(L, driver) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK || !lua_isfunction(L, -1)) {
        fprintf(stderr, "lua_fuzz: %s: %s\n", driver, lua_tostring(L, -1));
        abort();
    }
    lua_fuzz_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_sethook(L, lua_fuzz_hook, LUA_MASKLINE, 0);
    lua_fuzz_L = L;
}

static int lua_fuzz_traceback(lua_State *L)
{
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

/* Calls the driver with one input; a raise is reported and aborts. */
static void lua_fuzz_one(const uint8_t *data, size_t size)
{
    lua_State *L = lua_fuzz_L;
    lua_pushcfunction(L, lua_fuzz_traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua_fuzz_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, -3) != LUA_OK) {
        fprintf(stderr, "lua_fuzz: the driver raised: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_pop(L, 1);
    lua_gc(L, LUA_GCSTEP, 0);
}

#endif
