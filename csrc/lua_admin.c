/* What the admin socket needs that luv lacks: the peer's credentials
 * (SO_PEERCRED) and this process's ids. */
#include <errno.h>
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

int pm_open_admin(lua_State *L)
{
    static const luaL_Reg fns[] = {{"peercred", l_peercred}, {"ids", l_ids}, {NULL, NULL}};
    luaL_setfuncs(L, fns, 0);
    return 0;
}
