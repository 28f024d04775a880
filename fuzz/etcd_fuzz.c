/* libFuzzer target: the etcd client's reading of gateway answers and of
 * the watch stream (etcd_fuzz.lua drives lua/portman/etcd.lua). */
#define LUA_FUZZ_DRIVER "etcd_fuzz.lua"
#include "lua_fuzz.h"
