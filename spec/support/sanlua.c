/* A minimal Lua 5.4 interpreter linked with AddressSanitizer and UBSan, so
 * that the sanitizer specs load the instrumented core without LD_PRELOAD:
 * the tools the specs start (make, ip, nft, servers) then run as they are,
 * and only this process is checked for leaks.
 * usage: sanlua [-e chunk]... [script [args]] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

/* Leak checking on by default in this binary only. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "detect_leaks=1"; }

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    luaL_traceback(L, L, msg ? msg : "(error object is not a string)", 1);
    return 1;
}

static int report(lua_State *L, int status)
{
    if (status != LUA_OK) {
        fprintf(stderr, "sanlua: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    return status;
}

static int call(lua_State *L, int nargs)
{
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, traceback);
    lua_insert(L, base);
    int status = lua_pcall(L, nargs, 0, base);
    lua_remove(L, base);
    return status;
}

/* arg = {[0] = script, args...}, with the interpreter at negative indices. */
static void set_arg(lua_State *L, char **argv, int argc, int script)
{
    lua_createtable(L, argc - script, script + 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - script);
    }
    lua_setglobal(L, "arg");
}

int main(int argc, char **argv)
{
    lua_State *L = luaL_newstate();
    if (!L)
        return 1;
    luaL_openlibs(L);
    int i = 1, status = LUA_OK;
    for (; i < argc && status == LUA_OK && strcmp(argv[i], "-e") == 0; i += 2) {
        if (i + 1 >= argc) {
            fprintf(stderr, "sanlua: -e needs an argument\n");
            lua_close(L);
            return 1;
        }
        status = report(L, luaL_loadstring(L, argv[i + 1]) || call(L, 0));
    }
    if (status == LUA_OK && i < argc) {
        set_arg(L, argv, argc, i);
        status = luaL_loadfile(L, argv[i]);
        if (status == LUA_OK) {
            for (int j = i + 1; j < argc; j++)
                lua_pushstring(L, argv[j]);
            status = call(L, argc - i - 1);
        }
        report(L, status);
    }
    lua_close(L);
    return status == LUA_OK ? 0 : 1;
}
