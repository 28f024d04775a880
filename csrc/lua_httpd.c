/* The C parts of the daemon's HTTP endpoint: the request head parser
 * (httpd.h) for lua/portman/httpd.lua, and the join that puts the
 * /metrics text together for lua/portman/metrics.lua.
 *
 * core.httpd_parse(bytes) -> head | false | nil, msg, "protocol"
 * core.text_join(parts, n) -> string
 * core.histograms_text(chunks, name, label, les, names, hist)
 * core.counters_text(chunks, prefix, mid, names, rows, labels)
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

/* Appends x as the text format reads it: a non-negative x below 2^53 ns
 * (104 days of check time) as its decimal with at most 9 fraction digits,
 * trailing zeros dropped; any other value through %.15g. A histogram's sum
 * is a float on every line of it, and snprintf's float path was a tenth
 * of a /metrics render. */
static void add_seconds(luaL_Buffer *b, double x)
{
    if (x >= 0 && x < 9007199.0) {
        unsigned long long ns = (unsigned long long)(x * 1e9 + 0.5);
        add_integer(b, (lua_Integer)(ns / 1000000000ULL));
        unsigned long frac = (unsigned long)(ns % 1000000000ULL);
        if (frac == 0)
            return;
        char tmp[10];
        int n = 9;
        while (frac % 10 == 0) {
            frac /= 10;
            n--;
        }
        tmp[0] = '.';
        for (int i = n; i >= 1; i--) {
            tmp[i] = (char)('0' + frac % 10);
            frac /= 10;
        }
        luaL_addlstring(b, tmp, (size_t)n + 1);
        return;
    }
    char tmp[32];
    int len = snprintf(tmp, sizeof(tmp), "%.15g", x);
    luaL_addlstring(b, tmp, (size_t)len);
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
#define CHUNK_SLACK 4096 /* a series or row past the chunk size */

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

/* Reads hist[name] for the name on top into *h;
 * 0 when there is none. Leaves the stack as it found it. */
static int read_series(lua_State *L, int hist, int nbuckets, hist_series *h)
{
    lua_pushvalue(L, -1); /* the name */
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

/* The fixed pieces of a histogram's lines, with their lengths. */
typedef struct {
    const char *name, *label;
    size_t name_len, label_len;
    int nles;
    const char *les[HIST_MAX_BUCKETS + 1]; /* the last: "+Inf" */
    size_t le_lens[HIST_MAX_BUCKETS + 1];
} hist_text;

/* NAME TAIL LABEL="VALUE (the start of each line of a series) */
static void add_start(luaL_Buffer *b, const hist_text *t, const char *tail, size_t tail_len, const hist_series *h)
{
    luaL_addlstring(b, t->name, t->name_len);
    luaL_addlstring(b, tail, tail_len);
    luaL_addlstring(b, t->label, t->label_len);
    luaL_addlstring(b, "=\"", 2);
    luaL_addlstring(b, h->label, h->label_len);
}

static void add_series(luaL_Buffer *b, const hist_text *t, const hist_series *h)
{
    lua_Integer cum = 0;
    for (int i = 0; i <= t->nles; i++) {
        if (i < t->nles)
            cum += h->counts[i];
        add_start(b, t, "_bucket{", 8, h);
        luaL_addlstring(b, "\",le=\"", 6);
        luaL_addlstring(b, t->les[i], t->le_lens[i]);
        luaL_addlstring(b, "\"} ", 3);
        add_integer(b, i < t->nles ? cum : h->count);
        luaL_addchar(b, '\n');
    }
    add_start(b, t, "_sum{", 5, h);
    luaL_addlstring(b, "\"} ", 3);
    if (h->sum_is_int)
        add_integer(b, (lua_Integer)h->sum);
    else
        add_seconds(b, (double)h->sum);
    luaL_addchar(b, '\n');
    add_start(b, t, "_count{", 7, h);
    luaL_addlstring(b, "\"} ", 3);
    add_integer(b, h->count);
    luaL_addchar(b, '\n');
}

/* histograms_text(chunks, name, label, les, names, hist): appends to
 * chunks the text format's lines of every histogram series, in the order
 * of names (a list of strings), hist[name] being {label =
 * the escaped label value, counts = non-cumulative bucket counts, sum,
 * count}; a name without a series is skipped. Per series:
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
    hist_text t;
    t.name = luaL_checklstring(L, 2, &t.name_len);
    t.label = luaL_checklstring(L, 3, &t.label_len);
    luaL_checktype(L, 4, LUA_TTABLE);
    luaL_checktype(L, 5, LUA_TTABLE);
    luaL_checktype(L, 6, LUA_TTABLE);
    t.nles = (int)lua_rawlen(L, 4);
    if (t.nles > HIST_MAX_BUCKETS)
        return luaL_argerror(L, 4, "too many buckets");
    for (int i = 0; i < t.nles; i++) {
        lua_rawgeti(L, 4, i + 1);
        t.les[i] = lua_tolstring(L, -1, &t.le_lens[i]); /* anchored in the les table */
        lua_pop(L, 1);
        if (!t.les[i])
            return luaL_argerror(L, 4, "strings expected");
    }
    t.les[t.nles] = "+Inf";
    t.le_lens[t.nles] = 4;
    lua_Integer n = (lua_Integer)lua_rawlen(L, 5);
    lua_Integer out = (lua_Integer)lua_rawlen(L, 1);
    lua_Integer i = 1;
    while (i <= n) {
        luaL_Buffer b;
        /* sized once: a buffer that doubles past 64 KiB is copied, then
         * mmapped and faulted in afresh for every chunk */
        luaL_buffinitsize(L, &b, CHUNK_BYTES + CHUNK_SLACK);
        /* the buffer's slots are above here: every read below is balanced */
        for (; i <= n && luaL_bufflen(&b) < CHUNK_BYTES; i++) {
            hist_series h;
            lua_rawgeti(L, 5, i);
            int found = lua_type(L, -1) == LUA_TSTRING && read_series(L, 6, t.nles, &h);
            lua_pop(L, 1);
            if (found)
                add_series(&b, &t, &h);
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

/* Reads rows[name] and labels[name] for the name on top into *r; 0 when
 * either is missing. Leaves the stack as it found it. */
static int read_row(lua_State *L, int rows, int labels, counter_row *r)
{
    lua_pushvalue(L, -1); /* the name */
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

/* counters_text(chunks, prefix, mid, names, rows, labels): appends to
 * chunks, for each of names (strings, in order) whose rows[name]
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
        luaL_buffinitsize(L, &b, CHUNK_BYTES + CHUNK_SLACK); /* as in histograms_text */
        for (; i <= n && luaL_bufflen(&b) < CHUNK_BYTES; i++) {
            counter_row r;
            lua_rawgeti(L, 4, i);
            int found = lua_type(L, -1) == LUA_TSTRING && read_row(L, 5, 6, &r);
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
