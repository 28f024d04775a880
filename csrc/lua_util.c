#include "lua_util.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include "visibility.h" /* last: see there */

int pm_fail(lua_State *L, const char *code, const char *fmt, ...)
{
    va_list ap;
    lua_pushnil(L);
    lua_pushstring(L, code);
    lua_pushliteral(L, ": ");
    va_start(ap, fmt);
    lua_pushvfstring(L, fmt, ap);
    va_end(ap);
    lua_concat(L, 3);
    lua_pushstring(L, code);
    return 3;
}

int pm_fail_errno(lua_State *L, int err, const char *what)
{
    const char *name = pm_errno_name(err), *code = pm_errno_code(err);
    if (!code)
        return pm_fail(L, name, "%s: %s", what, strerror(err));
    return pm_fail(L, code, "%s: %s: %s", what, name, strerror(err));
}

/* The one error table (docs/design.md, "Errors"): each errno's name, and
 * the code word it means to a caller where one fits; NULL keeps the name.
 * Lua reads the same table as core.errno_codes (portman.errors). */
#define E(x, code) { x, #x, code }
static const struct { int err; const char *name; const char *code; } errno_table[] = {
    E(EPERM, "denied"), E(EACCES, "denied"),
    E(ENOENT, "not_found"), E(ESRCH, "not_found"), E(ECHILD, "not_found"),
    E(EADDRINUSE, "conflict"),
    E(ECONNREFUSED, "refused"),
    E(ETIMEDOUT, "timeout"),
    E(ENETUNREACH, "unreachable"), E(EHOSTUNREACH, "unreachable"), E(ENETDOWN, "unreachable"),
    E(EHOSTDOWN, "unreachable"),
    E(ECONNRESET, "closed"), E(EPIPE, "closed"), E(ECONNABORTED, "closed"), E(ENOTCONN, "closed"),
    E(ENOPROTOOPT, "unsupported"), E(EOPNOTSUPP, "unsupported"), E(EAFNOSUPPORT, "unsupported"),
    E(EPROTONOSUPPORT, "unsupported"), E(ENOSYS, "unsupported"),
    E(EINTR, NULL), E(EIO, NULL), E(EBADF, NULL), E(EAGAIN, NULL), E(ENOMEM, NULL),
    E(EFAULT, NULL), E(EBUSY, NULL), E(EEXIST, NULL), E(ENODEV, NULL), E(ENOTDIR, NULL),
    E(EISDIR, NULL), E(EINVAL, NULL), E(ENFILE, NULL), E(EMFILE, NULL), E(ENOSPC, NULL),
    E(ERANGE, NULL), E(ENAMETOOLONG, NULL), E(ENOTSOCK, NULL), E(EDESTADDRREQ, NULL),
    E(EMSGSIZE, NULL), E(EPROTOTYPE, NULL), E(EADDRNOTAVAIL, NULL), E(ENOBUFS, NULL),
    E(EISCONN, NULL), E(EALREADY, NULL), E(EINPROGRESS, NULL), E(EROFS, NULL), E(ELOOP, NULL),
    E(ENOEXEC, NULL), E(ETXTBSY, NULL), E(E2BIG, NULL),
};
#undef E
#define N_ERRNO (sizeof(errno_table) / sizeof(errno_table[0]))

const char *pm_errno_name(int err)
{
    for (size_t i = 0; i < N_ERRNO; i++)
        if (errno_table[i].err == err)
            return errno_table[i].name;
    return "EUNKNOWN";
}

const char *pm_errno_code(int err)
{
    for (size_t i = 0; i < N_ERRNO; i++)
        if (errno_table[i].err == err)
            return errno_table[i].code;
    return NULL;
}

int pm_open_util(lua_State *L)
{
    lua_createtable(L, 0, (int)N_ERRNO);
    for (size_t i = 0; i < N_ERRNO; i++) {
        lua_pushstring(L, errno_table[i].code ? errno_table[i].code : errno_table[i].name);
        lua_setfield(L, -2, errno_table[i].name);
    }
    lua_setfield(L, -2, "errno_codes");
    lua_createtable(L, 0, (int)N_ERRNO); /* io.open and friends give numbers */
    for (size_t i = 0; i < N_ERRNO; i++) {
        lua_pushstring(L, errno_table[i].name);
        lua_rawseti(L, -2, errno_table[i].err);
    }
    lua_setfield(L, -2, "errno_names");
    return 0;
}

void *pm_checkself(lua_State *L, const char *tname)
{
    void *p = lua_touserdata(L, 1);
    if (p && lua_getmetatable(L, 1)) {
        int same = lua_rawequal(L, -1, lua_upvalueindex(1));
        lua_pop(L, 1);
        if (same)
            return p;
    }
    luaL_typeerror(L, 1, tname);
    return NULL;
}

void pm_newclass(lua_State *L, const char *tname, const luaL_Reg *methods, const luaL_Reg *meta)
{
    luaL_newmetatable(L, tname);
    if (meta)
        luaL_setfuncs(L, meta, 0);
    lua_newtable(L);
    luaL_setfuncs(L, methods, 0);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 1);
}

void pm_newclosable(lua_State *L, const char *tname, const luaL_Reg *methods, lua_CFunction close,
                    lua_CFunction tostring)
{
    /* a NULL function in a luaL_Reg sets the field to false, and a false
     * __tostring would be called: the entry is left out instead */
    const luaL_Reg meta[] = {{"__gc", close}, {"__close", close}, {tostring ? "__tostring" : NULL, tostring},
                             {NULL, NULL}};
    pm_newclass(L, tname, methods, meta);
}
