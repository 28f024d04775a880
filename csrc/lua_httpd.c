/* The C parts of the daemon's HTTP endpoint: the request head parser
 * (httpd.h) for lua/portman/httpd.lua, and the join that puts the
 * /metrics text together for lua/portman/metrics.lua.
 *
 * core.httpd_parse(bytes) -> head | false | nil, msg, "protocol"
 * core.text_join(parts, n) -> string
 * core.histogram_text(name, label, value, les, counts, sum, count) -> string
 *
 * head is {method, target, minor, head = its length in bytes,
 * content_length (absent when none), chunked, close, keep_alive}; false
 * means every line so far is good and more bytes are needed. The caller
 * caps the bytes it passes (the server's head limit). */
#include <stdio.h>

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

/* Appends integer v in decimal: no snprintf and no string object per
 * number (table.concat makes one for each, which at 100,000 numbers is
 * most of a /metrics render's time). */
static void add_integer(luaL_Buffer *b, lua_Integer v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        tmp[--i] = '-';
    luaL_addlstring(b, tmp + i, sizeof(tmp) - i);
}

/* text_join(parts, n): parts[1..n] joined, as table.concat(parts, "", 1,
 * n), integers written in decimal and floats as %.15g (Prometheus reads
 * both); anything else raises, naming its index. */
static int l_text_join(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (lua_Integer i = 1; i <= n; i++) {
        int t = lua_rawgeti(L, 1, i);
        if (t == LUA_TSTRING) {
            luaL_addvalue(&b);
            continue;
        }
        if (t == LUA_TNUMBER && lua_isinteger(L, -1)) {
            lua_Integer v = lua_tointeger(L, -1);
            lua_pop(L, 1);
            add_integer(&b, v);
        } else if (t == LUA_TNUMBER) {
            char tmp[32];
            int len = snprintf(tmp, sizeof(tmp), "%.15g", (double)lua_tonumber(L, -1));
            lua_pop(L, 1);
            luaL_addlstring(&b, tmp, (size_t)len);
        } else {
            return luaL_error(L, "text_join: parts[%d] is a %s, not a string or number", (int)i, luaL_typename(L, -1));
        }
    }
    luaL_pushresult(&b);
    return 1;
}

static void add_number(luaL_Buffer *b, lua_State *L, int idx)
{
    if (lua_isinteger(L, idx)) {
        add_integer(b, lua_tointeger(L, idx));
    } else {
        char tmp[32];
        int len = snprintf(tmp, sizeof(tmp), "%.15g", (double)lua_tonumber(L, idx));
        luaL_addlstring(b, tmp, (size_t)len);
    }
}

/* histogram_text(name, label, value, les, counts, sum, count): the lines
 * of one histogram series in the text format, 0.0.4:
 *   NAME_bucket{LABEL="VALUE",le="LE"} CUMULATIVE   (one for each les[i])
 *   NAME_bucket{LABEL="VALUE",le="+Inf"} COUNT
 *   NAME_sum{LABEL="VALUE"} SUM
 *   NAME_count{LABEL="VALUE"} COUNT
 * counts[i] is the non-cumulative count of bucket i; value is escaped
 * already. At 10,000 services this is most of a /metrics render, so it is
 * done here in one buffer rather than as dozens of Lua pieces a series. */
static int l_histogram_text(lua_State *L)
{
    size_t nl, ll, vl;
    const char *name = luaL_checklstring(L, 1, &nl);
    const char *label = luaL_checklstring(L, 2, &ll);
    const char *value = luaL_checklstring(L, 3, &vl);
    luaL_checktype(L, 4, LUA_TTABLE);
    luaL_checktype(L, 5, LUA_TTABLE);
    luaL_checknumber(L, 6);
    lua_Integer count = luaL_checkinteger(L, 7);
    lua_Integer nles = (lua_Integer)lua_rawlen(L, 4);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    lua_Integer cum = 0;
    for (lua_Integer i = 1; i <= nles + 1; i++) {
        const char *le = "+Inf";
        size_t lel = 4;
        if (i <= nles) {
            lua_rawgeti(L, 4, i);
            le = lua_tolstring(L, -1, &lel);
            lua_pop(L, 1); /* the string stays alive in les */
            if (!le)
                return luaL_argerror(L, 4, "strings expected");
            lua_rawgeti(L, 5, i);
            cum += lua_tointeger(L, -1);
            lua_pop(L, 1);
        }
        luaL_addlstring(&b, name, nl);
        luaL_addstring(&b, "_bucket{");
        luaL_addlstring(&b, label, ll);
        luaL_addstring(&b, "=\"");
        luaL_addlstring(&b, value, vl);
        luaL_addstring(&b, "\",le=\"");
        luaL_addlstring(&b, le, lel);
        luaL_addstring(&b, "\"} ");
        add_integer(&b, i <= nles ? cum : count);
        luaL_addchar(&b, '\n');
    }
    static const char *const tails[] = {"_sum{", "_count{"};
    for (int t = 0; t < 2; t++) {
        luaL_addlstring(&b, name, nl);
        luaL_addstring(&b, tails[t]);
        luaL_addlstring(&b, label, ll);
        luaL_addstring(&b, "=\"");
        luaL_addlstring(&b, value, vl);
        luaL_addstring(&b, "\"} ");
        if (t == 0)
            add_number(&b, L, 6);
        else
            add_integer(&b, count);
        luaL_addchar(&b, '\n');
    }
    luaL_pushresult(&b);
    return 1;
}

int pm_open_httpd(lua_State *L)
{
    lua_pushcfunction(L, l_histogram_text);
    lua_setfield(L, -2, "histogram_text");
    lua_pushcfunction(L, l_text_join);
    lua_setfield(L, -2, "text_join");
    lua_pushcfunction(L, l_parse);
    lua_setfield(L, -2, "httpd_parse");
    return 0;
}
