/* libFuzzer target: the admin socket's request framing and decoding
 * (admin_fuzz.lua drives portman.lines and admin.request). */
#define LUA_FUZZ_DRIVER "admin_fuzz.lua"
#include "lua_fuzz.h"
