/* portman.core: the C core as one Lua module. Each part adds its own
 * functions; only luaopen_portman_core is exported. */
#include <dlfcn.h>

#include "lua_util.h"
#include "visibility.h" /* last: see there */

typedef int (*opener)(lua_State *L);

static const opener parts[] = {
    pm_open_util,
    pm_open_allocator,
    pm_open_state,
    pm_open_admin,
    pm_open_crypto,
    pm_open_listener,
    pm_open_stun,
    pm_open_dns,
    pm_open_idna,
    pm_open_probe,
    pm_open_syn,
    pm_open_http,
    pm_open_httpd,
    pm_open_history,
    pm_open_metrics,
    pm_open_nat,
    pm_open_pcp,
    pm_open_sandbox,
    pm_open_stderr,
    pm_open_spawn,
};

PM_EXPORT int luaopen_portman_core(lua_State *L);

/* Keeps this module mapped until the process ends. lua_close unloads C
 * modules, but a UPnP worker thread that outlived its job may still be in
 * our code then; unmapping it under the thread would crash the process. */
static void pin_module(void)
{
    Dl_info info;
    if (dladdr((void *)luaopen_portman_core, &info) && info.dli_fname)
        (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NODELETE); /* kept on purpose */
}

PM_EXPORT int luaopen_portman_core(lua_State *L)
{
    pin_module();
    lua_newtable(L);
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        parts[i](L);
    return 1;
}
