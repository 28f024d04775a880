/* What the admin socket needs that luv lacks: the peer's credentials
 * (SO_PEERCRED), this process's ids and fd limit, and giving freed memory
 * back. */
#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lua_util.h"
#include "visibility.h" /* last: see there */

/* core.peercred(fd) -> pid, uid, gid */
static int l_peercred(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
        return pm_fail_errno(L, errno, "SO_PEERCRED");
    lua_pushinteger(L, cred.pid);
    lua_pushinteger(L, cred.uid);
    lua_pushinteger(L, cred.gid);
    return 3;
}

/* core.ids() -> pid, uid, gid of this process */
static int l_ids(lua_State *L)
{
    lua_pushinteger(L, getpid());
    lua_pushinteger(L, getuid());
    lua_pushinteger(L, getgid());
    return 3;
}

/* core.trim_memory() -> true when memory was given back to the system.
 * Lua frees into malloc's free lists; glibc keeps those pages (they count
 * in the RSS) until malloc_trim hands the free ones back. */
static int l_trim_memory(lua_State *L)
{
#ifdef __GLIBC__
    lua_pushboolean(L, malloc_trim(0));
#else
    lua_pushboolean(L, 0);
#endif
    return 1;
}

/* core.fd_limit() -> the soft RLIMIT_NOFILE (math.maxinteger: none) */
static int l_fd_limit(lua_State *L)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return pm_fail_errno(L, errno, "getrlimit RLIMIT_NOFILE");
    lua_pushinteger(L, rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (rlim_t)LUA_MAXINTEGER ? LUA_MAXINTEGER
                                                                                           : (lua_Integer)rl.rlim_cur);
    return 1;
}

int pm_open_admin(lua_State *L)
{
    static const luaL_Reg fns[] = {{"peercred", l_peercred}, {"ids", l_ids}, {"trim_memory", l_trim_memory},
                                   {"fd_limit", l_fd_limit}, {NULL, NULL}};
    luaL_setfuncs(L, fns, 0);
    return 0;
}
