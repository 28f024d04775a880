/* libFuzzer target: the etcd client's reading of gateway answers and of
 * the watch stream (fuzz/etcd_fuzz.lua drives lua/portman/etcd.lua). */
#include "lua_fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    lua_fuzz_init("etcd_fuzz.lua");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_fuzz_one(data, size);
    return 0;
}
