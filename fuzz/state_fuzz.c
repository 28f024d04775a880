/* libFuzzer target for the daemon's state file loader: the file is read
 * from a directory that others may have written, so any bytes must give a
 * checked state or nil and a message, and never raise
 * (state.parse_checked, what state.load_checked does past the read). A
 * state it takes must also be usable: each saved service registers
 * without raising, and the state writes back as JSON that reads back the
 * same way; a refusal's message is one short printable line (it is
 * logged and printed). Any raise or failed assert here is a finding:
 * abort.
 *
 * It embeds Lua 5.4 and loads portman's Lua modules from ../lua and the
 * core from ../build (run from fuzz/, as `make run` does; PORTMAN_ROOT
 * overrides ".."). Neither the Lua interpreter nor Lua code is
 * instrumented, so the fuzzer would mutate blind: a line hook feeds it
 * the Lua lines run, each edge (previous line, line) a counter in
 * libFuzzer's extra counters. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static lua_State *L;
static int check_ref = LUA_NOREF;

#define EDGES (1u << 16)
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t edges[EDGES];
static uintptr_t previous;

static void on_line(lua_State *S, lua_Debug *ar)
{
    if (!lua_getinfo(S, "S", ar))
        return;
    /* a chunk's source string is interned: its address names the file */
    uintptr_t here = ((uintptr_t)ar->source * 31u) ^ ((uintptr_t)ar->currentline * 2654435761u);
    edges[(here ^ (previous >> 1)) & (EDGES - 1)]++;
    previous = here;
}

static const char SETUP[] =
    "local root = ...\n"
    "package.path = root .. '/lua/?.lua;' .. root .. '/lua/?/init.lua;' .. package.path\n"
    "package.cpath = root .. '/build/?.so;' .. package.cpath\n"
    "local state = require 'portman.state'\n"
    "local registry = require 'portman.registry'\n"
    "local json = require 'portman.json'\n"
    "return function(text)\n"
    "  local doc, err, code = state.parse_checked(text, 'fuzz')\n"
    "  if doc == nil then\n"
    "    assert(type(err) == 'string' and code == 'protocol' and err:match('^protocol: '), 'failure shape')\n"
    "    -- the message goes to the log and the terminal: one short printable line\n"
    "    assert(#err <= 600 and not err:find('[%c\\128-\\255]'), 'message: ' .. err:sub(1, 200))\n"
    "    return\n"
    "  end\n"
    "  assert(type(doc) == 'table' and err == nil, 'success shape')\n"
    "  local reg = registry.new{check_host = false}\n"
    "  for _, s in ipairs(doc.registry and doc.registry.services or {}) do\n"
    "    reg:register(s) -- nil, conflict is fine; a raise is not\n"
    "  end\n"
    "  local back, berr = state.parse_checked(json.encode(doc), 'again')\n"
    "  assert(back, berr)\n"
    "end\n";

static void die(const char *what)
{
    fprintf(stderr, "state_fuzz: %s: %s\n", what, lua_tostring(L, -1));
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *root = getenv("PORTMAN_ROOT");
    L = luaL_newstate();
    luaL_openlibs(L);
    if (luaL_loadbuffer(L, SETUP, sizeof(SETUP) - 1, "=state_fuzz") != LUA_OK)
        die("setup chunk");
    lua_pushstring(L, root ? root : "..");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK)
        die("setup");
    check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_sethook(L, on_line, LUA_MASKLINE, 0);
    return 0;
}

static int traceback(lua_State *S)
{
    luaL_traceback(S, S, lua_tostring(S, 1), 1);
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_settop(L, 0);
    previous = 0;
    lua_pushcfunction(L, traceback);
    lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 1) != LUA_OK)
        die("raised");
    lua_settop(L, 0);
    /* the garbage of this input freed now: libFuzzer counts a run with
     * more mallocs than frees as a possible leak and looks (slowly) */
    lua_gc(L, LUA_GCCOLLECT);
    return 0;
}
