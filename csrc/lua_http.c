/* portman.http: the Lua face of the curl engine (http.h). The Lua layer
 * (lua/portman/http.lua) polls h:fd() with uv.new_poll, runs a uv timer for
 * h:timeout(), and calls h:step() for the finished transfers. Option names
 * are checked there; this file checks types and closed use. */
#include <errno.h>
#include <string.h>

#include "http.h"
#include "lua_util.h"
#include "visibility.h" /* last: see there */

#define HTTP "portman.http"

typedef struct {
    pm_http *http; /* NULL once closed */
} http_box;

static pm_http *check_http(lua_State *L)
{
    http_box *b = luaL_checkudata(L, 1, HTTP);
    if (!b->http)
        luaL_error(L, "attempt to use a closed " HTTP);
    return b->http;
}

/* core.http_new() -> engine | nil, msg, code */
static int l_new(lua_State *L)
{
    http_box *b = lua_newuserdatauv(L, sizeof(*b), 0);
    b->http = NULL; /* created closed: a failure leaves nothing to free */
    luaL_setmetatable(L, HTTP);
    b->http = pm_http_new();
    if (!b->http)
        return pm_fail_errno(L, errno, "http_new");
    return 1;
}

static int l_close(lua_State *L)
{
    http_box *b = luaL_checkudata(L, 1, HTTP);
    pm_http_free(b->http);
    b->http = NULL;
    return 0;
}

static int l_fd(lua_State *L)
{
    lua_pushinteger(L, pm_http_fd(check_http(L)));
    return 1;
}

/* h:timeout() -> ms until the next step is due, or nil when curl has no timer */
static int l_timeout(lua_State *L)
{
    long ms = pm_http_timeout(check_http(L));
    if (ms < 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, ms);
    return 1;
}

static int l_active(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)pm_http_active(check_http(L)));
    return 1;
}

static const char *opt_string(lua_State *L, const char *key, size_t *len)
{
    const char *s = NULL;
    int t = lua_getfield(L, 2, key);
    if (t == LUA_TSTRING)
        s = lua_tolstring(L, -1, len);
    else if (t != LUA_TNIL)
        luaL_argerror(L, 2, lua_pushfstring(L, "%s: string expected, got %s", key, luaL_typename(L, -1)));
    /* left on the stack, so the string lives until the request is made */
    return s;
}

static long opt_ms(lua_State *L, const char *key)
{
    lua_Integer v = 0;
    int t = lua_getfield(L, 2, key);
    if (t != LUA_TNIL) {
        int ok;
        v = lua_tointegerx(L, -1, &ok);
        if (!ok || v < 0 || v > 86400000)
            luaL_argerror(L, 2, lua_pushfstring(L, "%s: milliseconds expected (0-86400000)", key));
    }
    lua_pop(L, 1);
    return (long)v;
}

static int opt_bool(lua_State *L, const char *key)
{
    lua_getfield(L, 2, key);
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* h:request{url=, method=, body=, content_type=, timeout=, connect_timeout=,
 * headers=, stream=, max_body=, userpwd=, cacert=, cert=, key=, insecure=} -> id
 * | nil, msg, code */
static int l_request(lua_State *L)
{
    pm_http *h = check_http(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checkstack(L, 16, "request options");
    pm_http_request req = {0};
    req.url = opt_string(L, "url", NULL);
    if (!req.url)
        luaL_argerror(L, 2, "url: string expected");
    req.method = opt_string(L, "method", NULL);
    req.body = opt_string(L, "body", &req.body_len);
    req.content_type = opt_string(L, "content_type", NULL);
    req.userpwd = opt_string(L, "userpwd", NULL);
    req.cacert = opt_string(L, "cacert", NULL);
    req.cert = opt_string(L, "cert", NULL);
    req.key = opt_string(L, "key", NULL);
    req.timeout_ms = opt_ms(L, "timeout");
    req.connect_timeout_ms = opt_ms(L, "connect_timeout");
    req.stream = opt_bool(L, "stream");
    req.insecure = opt_bool(L, "insecure");
    const char *headers[16];
    int t = lua_getfield(L, 2, "headers");
    if (t == LUA_TTABLE) {
        req.nheaders = lua_rawlen(L, -1);
        if (req.nheaders > sizeof(headers) / sizeof(headers[0]))
            luaL_argerror(L, 2, "headers: at most 16");
        luaL_checkstack(L, 20, "request headers");
        for (size_t i = 0; i < req.nheaders; i++) {
            lua_rawgeti(L, -1 - (int)i, (lua_Integer)i + 1);
            headers[i] = lua_tostring(L, -1);
            if (lua_type(L, -1) != LUA_TSTRING || strpbrk(headers[i], "\r\n"))
                luaL_argerror(L, 2, "headers: list of one-line strings expected");
        }
        req.headers = headers;
    } else if (t != LUA_TNIL) {
        luaL_argerror(L, 2, "headers: list of one-line strings expected");
    }
    lua_getfield(L, 2, "max_body");
    req.max_body = (size_t)luaL_optinteger(L, -1, 0);
    lua_pop(L, 1);
    const char *code = NULL, *err = NULL;
    uint64_t id = pm_http_start(h, &req, &code, &err);
    if (!id)
        return pm_fail(L, code, "%s (%s)", err, req.url);
    lua_pushinteger(L, (lua_Integer)id);
    return 1;
}

/* h:step() -> {{id=, done=, status=, body=, code=, error=}, ...} */
static int l_step(lua_State *L)
{
    pm_http_event *evs;
    size_t n = pm_http_step(check_http(L), &evs);
    lua_createtable(L, (int)n, 0);
    for (size_t i = 0; i < n; i++) {
        pm_http_event *ev = &evs[i];
        lua_createtable(L, 0, 5);
        lua_pushinteger(L, (lua_Integer)ev->id);
        lua_setfield(L, -2, "id");
        lua_pushboolean(L, ev->kind == PM_HTTP_DONE);
        lua_setfield(L, -2, "done");
        lua_pushinteger(L, ev->status);
        lua_setfield(L, -2, "status");
        if (ev->code) {
            lua_pushstring(L, ev->code);
            lua_setfield(L, -2, "code");
            lua_pushstring(L, ev->error);
            lua_setfield(L, -2, "error");
        } else {
            lua_pushlstring(L, ev->body ? ev->body : "", ev->len);
            lua_setfield(L, -2, "body");
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static int l_cancel(lua_State *L)
{
    pm_http *h = check_http(L);
    lua_Integer id = luaL_checkinteger(L, 2);
    lua_pushboolean(L, id > 0 && pm_http_cancel(h, (uint64_t)id));
    return 1;
}

static int l_tostring(lua_State *L)
{
    http_box *b = luaL_checkudata(L, 1, HTTP);
    if (!b->http)
        lua_pushliteral(L, HTTP " (closed)");
    else
        lua_pushfstring(L, HTTP " (%d active)", (int)pm_http_active(b->http));
    return 1;
}

static const luaL_Reg methods[] = {
    {"fd", l_fd},
    {"timeout", l_timeout},
    {"active", l_active},
    {"request", l_request},
    {"step", l_step},
    {"cancel", l_cancel},
    {"close", l_close},
    {NULL, NULL},
};

int pm_open_http(lua_State *L)
{
    pm_newclosable(L, HTTP, methods, l_close, l_tostring);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "http_new");
    return 0;
}
