/* The request head parser of the daemon's HTTP endpoint (httpd.h), for
 * lua/portman/httpd.lua (the /metrics text is csrc/lua_metrics.c's).
 *
 * core.httpd_parse(bytes) -> head | false | nil, msg, "protocol"
 *
 * head is {method, target, minor, head = its length in bytes,
 * content_length (absent when none), chunked, close, keep_alive}; false
 * means every line so far is good and more bytes are needed. The caller
 * caps the bytes it passes (the server's head limit). */
#include "httpd.h"
#include "lua_util.h"
#include "visibility.h" /* last: see there */

static int l_parse(lua_State *L)
{
    size_t len;
    const char *buf = luaL_checklstring(L, 1, &len);
    pm_httpd_req req;
    const char *why;
    long r = pm_httpd_parse(buf, len, &req, &why);
    if (r < 0)
        return pm_fail(L, "protocol", "%s", why);
    if (r == 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_createtable(L, 0, 8);
    lua_pushlstring(L, req.method, req.method_len);
    lua_setfield(L, -2, "method");
    lua_pushlstring(L, req.target, req.target_len);
    lua_setfield(L, -2, "target");
    lua_pushinteger(L, req.minor);
    lua_setfield(L, -2, "minor");
    lua_pushinteger(L, r);
    lua_setfield(L, -2, "head");
    if (req.content_length >= 0) {
        lua_pushinteger(L, (lua_Integer)req.content_length);
        lua_setfield(L, -2, "content_length");
    }
    lua_pushboolean(L, req.chunked);
    lua_setfield(L, -2, "chunked");
    lua_pushboolean(L, req.close);
    lua_setfield(L, -2, "close");
    lua_pushboolean(L, req.keep_alive);
    lua_setfield(L, -2, "keep_alive");
    return 1;
}

int pm_open_httpd(lua_State *L)
{
    lua_pushcfunction(L, l_parse);
    lua_setfield(L, -2, "httpd_parse");
    return 0;
}
