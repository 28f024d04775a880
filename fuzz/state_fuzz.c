/* libFuzzer target: the daemon's state file loader (state_fuzz.lua drives
 * lua/portman/state.lua). */
#define LUA_FUZZ_DRIVER "state_fuzz.lua"
#include "lua_fuzz.h"
