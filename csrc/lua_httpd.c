/* The C parts of the daemon's HTTP endpoint: the request head parser
 * (httpd.h) for lua/portman/httpd.lua, and the join that puts the
 * /metrics text together for lua/portman/metrics.lua.
 *
 * core.httpd_parse(bytes) -> head | false | nil, msg, "protocol"
 * core.text_join(parts, n) -> string
 * core.histograms_text(chunks, name, label, les, entries, hist)
 * core.counters_text(chunks, prefix, mid, entries, rows, labels)
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

#define HIST_MAX_BUCKETS 32
#define CHUNK_BYTES 65536

/* One series' values, read out of its Lua table. The label string stays
 * alive in that table while the lines are written. */
typedef struct {
    const char *label;
    size_t label_len;
    lua_Integer counts[HIST_MAX_BUCKETS + 1];
    lua_Number sum;
    lua_Integer count;
    int sum_is_int;
} hist_series;

/* Reads hist[name] for the entry on top (a table with `name`) into *h;
 * 0 when there is none. Leaves the stack as it found it. */
static int read_series(lua_State *L, int hist, int nbuckets, hist_series *h)
{
    if (lua_getfield(L, -1, "name") != LUA_TSTRING) {
        lua_pop(L, 1);
        return 0;
    }
    if (lua_rawget(L, hist) != LUA_TTABLE) {
        lua_pop(L, 1);
        return 0;
    }
    int ok = lua_getfield(L, -1, "label") == LUA_TSTRING;
    h->label = lua_tolstring(L, -1, &h->label_len);
    ok = ok && lua_getfield(L, -2, "counts") == LUA_TTABLE;
    for (int i = 0; ok && i < nbuckets; i++) {
        lua_rawgeti(L, -1, i + 1);
        h->counts[i] = lua_tointeger(L, -1);
        lua_pop(L, 1);
    }
    ok = ok && lua_getfield(L, -3, "sum") == LUA_TNUMBER;
    h->sum_is_int = lua_isinteger(L, -1);
    h->sum = lua_tonumber(L, -1);
    ok = ok && lua_getfield(L, -4, "count") == LUA_TNUMBER;
    h->count = lua_tointeger(L, -1);
    lua_pop(L, 5); /* count, sum, counts, label, the series */
    return ok;
}

static void add_series(luaL_Buffer *b, const char *name, const char *label, const char *const *les, int nles,
                       const hist_series *h)
{
    lua_Integer cum = 0;
    for (int i = 0; i <= nles; i++) {
        if (i < nles)
            cum += h->counts[i];
        luaL_addstring(b, name);
        luaL_addstring(b, "_bucket{");
        luaL_addstring(b, label);
        luaL_addstring(b, "=\"");
        luaL_addlstring(b, h->label, h->label_len);
        luaL_addstring(b, "\",le=\"");
        luaL_addstring(b, i < nles ? les[i] : "+Inf");
        luaL_addstring(b, "\"} ");
        add_integer(b, i < nles ? cum : h->count);
        luaL_addchar(b, '\n');
    }
    static const char *const tails[] = {"_sum{", "_count{"};
    for (int t = 0; t < 2; t++) {
        luaL_addstring(b, name);
        luaL_addstring(b, tails[t]);
        luaL_addstring(b, label);
        luaL_addstring(b, "=\"");
        luaL_addlstring(b, h->label, h->label_len);
        luaL_addstring(b, "\"} ");
        if (t == 1) {
            add_integer(b, h->count);
        } else if (h->sum_is_int) {
            add_integer(b, (lua_Integer)h->sum);
        } else {
            char tmp[32];
            int len = snprintf(tmp, sizeof(tmp), "%.15g", (double)h->sum);
            luaL_addlstring(b, tmp, (size_t)len);
        }
        luaL_addchar(b, '\n');
    }
}

/* histograms_text(chunks, name, label, les, entries, hist): appends to
 * chunks the text format's lines of every histogram series, in the order
 * of entries (a list of tables with `name`), hist[name] being {label =
 * the escaped label value, counts = non-cumulative bucket counts, sum,
 * count}; an entry without a series is skipped. Per series:
 *   NAME_bucket{LABEL="VALUE",le="LE"} CUMULATIVE   (one for each les[i])
 *   NAME_bucket{LABEL="VALUE",le="+Inf"} COUNT
 *   NAME_sum{LABEL="VALUE"} SUM
 *   NAME_count{LABEL="VALUE"} COUNT
 * The text comes as strings of about 64 KiB: at 10,000 services this is
 * most of a /metrics render, and one walk in C with no string a series
 * costs a fraction of the Lua loop. */
static int l_histograms_text(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *name = luaL_checkstring(L, 2);
    const char *label = luaL_checkstring(L, 3);
    luaL_checktype(L, 4, LUA_TTABLE);
    luaL_checktype(L, 5, LUA_TTABLE);
    luaL_checktype(L, 6, LUA_TTABLE);
    int nles = (int)lua_rawlen(L, 4);
    if (nles > HIST_MAX_BUCKETS)
        return luaL_argerror(L, 4, "too many buckets");
    const char *les[HIST_MAX_BUCKETS];
    for (int i = 0; i < nles; i++) {
        lua_rawgeti(L, 4, i + 1);
        les[i] = lua_tostring(L, -1); /* anchored in the les table */
        lua_pop(L, 1);
        if (!les[i])
            return luaL_argerror(L, 4, "strings expected");
    }
    lua_Integer n = (lua_Integer)lua_rawlen(L, 5);
    lua_Integer out = (lua_Integer)lua_rawlen(L, 1);
    lua_Integer i = 1;
    while (i <= n) {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        /* the buffer's slots are above here: every read below is balanced */
        for (; i <= n && luaL_bufflen(&b) < CHUNK_BYTES; i++) {
            hist_series h;
            lua_rawgeti(L, 5, i);
            int found = lua_type(L, -1) == LUA_TTABLE && read_series(L, 6, nles, &h);
            lua_pop(L, 1);
            if (found)
                add_series(&b, name, label, les, nles, &h);
        }
        luaL_pushresult(&b);
        if (lua_rawlen(L, -1) > 0)
            lua_rawseti(L, 1, ++out);
        else
            lua_pop(L, 1);
    }
    return 0;
}

/* Appends a label value escaped as the text format asks. */
static void add_escaped(luaL_Buffer *b, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\\' || s[i] == '"') {
            luaL_addchar(b, '\\');
            luaL_addchar(b, s[i]);
        } else if (s[i] == '\n') {
            luaL_addstring(b, "\\n");
        } else {
            luaL_addchar(b, s[i]);
        }
    }
}

#define ROW_MAX 32

/* One entry's counters, read out of its row (the strings stay alive in
 * the row and in labels while the lines are written). */
typedef struct {
    const char *label;
    size_t label_len;
    int n;
    const char *keys[ROW_MAX];
    size_t key_lens[ROW_MAX];
    lua_Integer values[ROW_MAX];
} counter_row;

/* Reads rows[name] and labels[name] for the entry on top into *r; 0 when
 * either is missing. Leaves the stack as it found it. */
static int read_row(lua_State *L, int rows, int labels, counter_row *r)
{
    if (lua_getfield(L, -1, "name") != LUA_TSTRING) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pushvalue(L, -1);
    int has_label = lua_rawget(L, labels) == LUA_TSTRING; /* name, label */
    r->label = lua_tolstring(L, -1, &r->label_len);
    lua_pushvalue(L, -2);
    int has_row = lua_rawget(L, rows) == LUA_TTABLE; /* name, label, row */
    r->n = 0;
    if (has_label && has_row) {
        lua_pushnil(L);
        while (r->n < ROW_MAX && lua_next(L, -2)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_isinteger(L, -1)) {
                r->keys[r->n] = lua_tolstring(L, -2, &r->key_lens[r->n]);
                r->values[r->n++] = lua_tointeger(L, -1);
            }
            lua_pop(L, 1);
        }
        if (r->n == ROW_MAX)
            lua_pop(L, 1); /* the key lua_next left */
    }
    lua_pop(L, 3);
    return has_label && has_row;
}

/* counters_text(chunks, prefix, mid, entries, rows, labels): appends to
 * chunks, for each entry (a table with `name`, in order) whose rows[name]
 * is a table {key = count} and labels[name] a string, a line per key (at
 * most 32 a row; string keys and integer counts only):
 *   PREFIX labels[name] MID escaped(key) "} COUNT
 * (prefix is `metric{label1="`, mid `",label2="`; labels[name] is the
 * first label's value, escaped already). Strings of about 64 KiB, as
 * histograms_text makes them. */
static int l_counters_text(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    size_t pl, ml;
    const char *prefix = luaL_checklstring(L, 2, &pl);
    const char *mid = luaL_checklstring(L, 3, &ml);
    luaL_checktype(L, 4, LUA_TTABLE);
    luaL_checktype(L, 5, LUA_TTABLE);
    luaL_checktype(L, 6, LUA_TTABLE);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 4);
    lua_Integer out = (lua_Integer)lua_rawlen(L, 1);
    lua_Integer i = 1;
    while (i <= n) {
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (; i <= n && luaL_bufflen(&b) < CHUNK_BYTES; i++) {
            counter_row r;
            lua_rawgeti(L, 4, i);
            int found = lua_type(L, -1) == LUA_TTABLE && read_row(L, 5, 6, &r);
            lua_pop(L, 1);
            for (int k = 0; found && k < r.n; k++) {
                luaL_addlstring(&b, prefix, pl);
                luaL_addlstring(&b, r.label, r.label_len);
                luaL_addlstring(&b, mid, ml);
                add_escaped(&b, r.keys[k], r.key_lens[k]);
                luaL_addstring(&b, "\"} ");
                add_integer(&b, r.values[k]);
                luaL_addchar(&b, '\n');
            }
        }
        luaL_pushresult(&b);
        if (lua_rawlen(L, -1) > 0)
            lua_rawseti(L, 1, ++out);
        else
            lua_pop(L, 1);
    }
    return 0;
}

int pm_open_httpd(lua_State *L)
{
    lua_pushcfunction(L, l_counters_text);
    lua_setfield(L, -2, "counters_text");
    lua_pushcfunction(L, l_histograms_text);
    lua_setfield(L, -2, "histograms_text");
    lua_pushcfunction(L, l_text_join);
    lua_setfield(L, -2, "text_join");
    lua_pushcfunction(L, l_parse);
    lua_setfield(L, -2, "httpd_parse");
    return 0;
}
