/* portman.core: the C core as one Lua module. Each part adds its own
 * functions; only luaopen_portman_core is exported. */
#include "lua_util.h"

typedef int (*opener)(lua_State *L);

static const opener parts[] = {
    pm_open_allocator,
    pm_open_state,
    pm_open_admin,
    pm_open_crypto,
    pm_open_listener,
    pm_open_stun,
    pm_open_dns,
    pm_open_probe,
    pm_open_http,
    pm_open_nat,
};

__attribute__((visibility("default"))) int luaopen_portman_core(lua_State *L)
{
    lua_newtable(L);
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        parts[i](L);
    return 1;
}
