/* Helpers shared by the Lua bindings of the C core. */
#ifndef PORTMAN_LUA_UTIL_H
#define PORTMAN_LUA_UTIL_H

#include <lauxlib.h>
#include <lua.h>

/* Pushes nil, "code: message", code and returns 3: the failure convention
 * (docs/design.md, "Errors"), so a binding can `return pm_fail(L, "exhausted", ...)`. */
int pm_fail(lua_State *L, const char *code, const char *fmt, ...);
/* The same for an errno: code is its code word from the error table
 * ("conflict" for EADDRINUSE), else the errno's name; the message names the
 * errno either way: "conflict: bind: EADDRINUSE: Address already in use". */
int pm_fail_errno(lua_State *L, int err, const char *what);
/* The errno's symbolic name ("EADDRINUSE"), or "EUNKNOWN". */
const char *pm_errno_name(int err);
/* The errno's code word ("conflict"), or NULL where its name is the code. */
const char *pm_errno_code(int err);

/* Creates metatable tname with methods in __index (and meta entries from
 * meta, which may be NULL); leaves nothing on the stack. */
void pm_newclass(lua_State *L, const char *tname, const luaL_Reg *methods, const luaL_Reg *meta);
/* pm_newclass for an object that holds a resource: __gc and __close call
 * close (which must be safe to call twice), __tostring is tostring when
 * not NULL. */
void pm_newclosable(lua_State *L, const char *tname, const luaL_Reg *methods, lua_CFunction close,
                    lua_CFunction tostring);

/* The userdata at index 1 when its metatable is the calling C closure's
 * first upvalue, else raises a type error naming tname. luaL_checkudata
 * looks the metatable up in the registry by name; a method called for
 * every allocation or check result carries it as an upvalue instead. */
void *pm_checkself(lua_State *L, const char *tname);

/* Each part of the core adds its functions to the module table on top. */
int pm_open_util(lua_State *L);
int pm_open_allocator(lua_State *L);
int pm_open_state(lua_State *L);
int pm_open_admin(lua_State *L);
int pm_open_crypto(lua_State *L);
int pm_open_listener(lua_State *L);
int pm_open_stun(lua_State *L);
int pm_open_dns(lua_State *L);
int pm_open_idna(lua_State *L);
int pm_open_probe(lua_State *L);
int pm_open_syn(lua_State *L);
int pm_open_http(lua_State *L);
int pm_open_httpd(lua_State *L);
int pm_open_history(lua_State *L);
int pm_open_metrics(lua_State *L);
int pm_open_nat(lua_State *L);
int pm_open_pcp(lua_State *L);
int pm_open_sandbox(lua_State *L);
int pm_open_stderr(lua_State *L);
int pm_open_spawn(lua_State *L);

#endif
