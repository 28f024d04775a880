/* Fuzzing portman's Lua code with libFuzzer. A target is NAME_fuzz.c,
 *
 *     #define LUA_FUZZ_DRIVER "NAME_fuzz.lua"
 *     #include "lua_fuzz.h"
 *
 * and the driver NAME_fuzz.lua, which returns a function of one string.
 * The harness embeds Lua 5.4, loads the driver with portman's modules on
 * the path (../lua, and the core from ../build: run from fuzz/, as `make
 * run` does; PORTMAN_ROOT overrides ".."), and calls it with each input.
 * A raise is a finding: the driver checks what the code under test
 * promises (nil and a message, never a raise) and raises when it breaks.
 *
 * Neither liblua nor Lua code is instrumented, so the fuzzer would mutate
 * blind: a line hook feeds it the Lua lines run, each edge (previous line,
 * line) a counter in libFuzzer's extra counters. */
#ifndef PORTMAN_LUA_FUZZ_H
#define PORTMAN_LUA_FUZZ_H

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define LUA_FUZZ_EDGES (1u << 16)
__attribute__((used, section("__libfuzzer_extra_counters"))) static uint8_t lua_fuzz_edges[LUA_FUZZ_EDGES];
static uintptr_t lua_fuzz_previous;
static lua_State *lua_fuzz_L;
static int lua_fuzz_ref = LUA_NOREF;

static void lua_fuzz_hook(lua_State *L, lua_Debug *ar)
{
    if (!lua_getinfo(L, "S", ar))
        return;
    /* a chunk's source string is interned: its address names the file */
    uintptr_t here = ((uintptr_t)ar->source * 31u) ^ ((uintptr_t)ar->currentline * 2654435761u);
    lua_fuzz_edges[(here ^ (lua_fuzz_previous >> 1)) & (LUA_FUZZ_EDGES - 1)]++;
    lua_fuzz_previous = here;
}

static void lua_fuzz_die(const char *what)
{
    fprintf(stderr, "lua_fuzz: %s: %s\n", what, lua_tostring(lua_fuzz_L, -1));
    abort();
}

static const char LUA_FUZZ_SETUP[] =
    "local root, driver = ...\n"
    "package.path = root .. '/lua/?.lua;' .. root .. '/lua/?/init.lua;' .. package.path\n"
    "package.cpath = root .. '/build/?.so;' .. package.cpath\n"
    "return dofile(driver)\n";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *root = getenv("PORTMAN_ROOT");
    lua_State *L = lua_fuzz_L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_loadbuffer(L, LUA_FUZZ_SETUP, sizeof(LUA_FUZZ_SETUP) - 1, "=lua_fuzz") != LUA_OK)
        lua_fuzz_die("setup chunk");
    lua_pushstring(L, root ? root : "..");
    lua_pushstring(L, LUA_FUZZ_DRIVER);
    if (lua_pcall(L, 2, 1, 0) != LUA_OK)
        lua_fuzz_die(LUA_FUZZ_DRIVER);
    if (!lua_isfunction(L, -1)) {
        lua_pushstring(L, "the driver returned no function");
        lua_fuzz_die(LUA_FUZZ_DRIVER);
    }
    lua_fuzz_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_sethook(L, lua_fuzz_hook, LUA_MASKLINE, 0);
    return 0;
}

static int lua_fuzz_traceback(lua_State *L)
{
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = lua_fuzz_L;
    lua_settop(L, 0);
    lua_fuzz_previous = 0;
    lua_pushcfunction(L, lua_fuzz_traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, lua_fuzz_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 1) != LUA_OK)
        lua_fuzz_die("the driver raised");
    lua_settop(L, 0);
    /* the garbage of this input freed now: libFuzzer counts a run with
     * more mallocs than frees as a possible leak and looks (slowly) */
    lua_gc(L, LUA_GCCOLLECT);
    return 0;
}

#endif
