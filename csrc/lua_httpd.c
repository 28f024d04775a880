/* The C parts of the daemon's HTTP endpoint: the request head parser
 * (httpd.h) for lua/portman/httpd.lua, and the join that puts the
 * /metrics text together for lua/portman/metrics.lua.
 *
 * core.httpd_parse(bytes) -> head | false | nil, msg, "protocol"
 * core.text_join(parts, n) -> string
 * core.histograms_new(bounds) -> set (histograms of check durations)
 * core.counters_text(chunks, prefix, mid, names, rows, labels)
 *
 * head is {method, target, minor, head = its length in bytes,
 * content_length (absent when none), chunked, close, keep_alive}; false
 * means every line so far is good and more bytes are needed. The caller
 * caps the bytes it passes (the server's head limit). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

#define CHUNK_BYTES 65536
#define CHUNK_SLACK 4096 /* a series or row past the chunk size */

/* ---- histograms: core.histograms_new(bounds) -> set ----
 *
 * The per-service histograms of /metrics, kept in C: a scrape at 10,000
 * services writes 80,000 histogram lines, and reading each series' counts
 * out of Lua tables (a dozen API calls and as many cache misses a series)
 * was most of it. Series live in arrays indexed by slot; the set's user
 * value maps a name to its slot.
 *
 * set:observe(name, value)  counts value (the bucket: the first bound >= value)
 * set:remove(name)          forgets name's series
 * set:get(name) -> {counts = non-cumulative counts (#bounds + 1), sum, count} or nil
 * set:text(chunks, metric, label, names): appends to chunks, for each of
 *   names (in order) that has a series, in strings of about 64 KiB:
 *     METRIC_bucket{LABEL="NAME",le="BOUND"} CUMULATIVE   (each bound, then "+Inf")
 *     METRIC_sum{LABEL="NAME"} SUM
 *     METRIC_count{LABEL="NAME"} COUNT
 *   NAME escaped as the text format asks, bounds written as %g. */
#define HISTOGRAMS "portman.histograms"
#define HIST_MAX_BOUNDS 32
#define HIST_MAX_LABEL 4096 /* a service name is far shorter */

typedef struct {
    int nb;                                  /* bounds */
    double bounds[HIST_MAX_BOUNDS];
    char les[HIST_MAX_BOUNDS + 1][32];       /* as the le label writes them; the last "+Inf" */
    size_t le_lens[HIST_MAX_BOUNDS + 1];
    size_t used, cap;                        /* slots handed out (high water), allocated */
    uint64_t *counts;                        /* cap * (nb + 1) */
    struct series {
        double sum;
        uint64_t count;
        char *label;                         /* escaped; NULL: a free slot */
        size_t label_len;
    } *s;
    size_t *free_slots, nfree;
} hset;

static hset *check_hset(lua_State *L)
{
    return luaL_checkudata(L, 1, HISTOGRAMS);
}

static int hset_gc(lua_State *L)
{
    hset *h = check_hset(L);
    for (size_t i = 0; i < h->used; i++)
        free(h->s[i].label);
    free(h->counts);
    free(h->s);
    free(h->free_slots);
    memset(h, 0, sizeof(*h));
    return 0;
}

/* An escaped copy of s (malloc'd), its length in *len; NULL when out of memory. */
static char *escaped_copy(const char *s, size_t n, size_t *len)
{
    char *out = malloc(2 * n + 1);
    if (!out)
        return NULL;
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' || s[i] == '"') {
            out[j++] = '\\';
            out[j++] = s[i];
        } else if (s[i] == '\n') {
            out[j++] = '\\';
            out[j++] = 'n';
        } else {
            out[j++] = s[i];
        }
    }
    out[j] = '\0';
    *len = j;
    return out;
}

/* Grows every array to cap slots; 0 when out of memory (nothing lost). */
static int hset_grow(hset *h, size_t cap)
{
    size_t row = (size_t)h->nb + 1;
    uint64_t *counts = realloc(h->counts, cap * row * sizeof(uint64_t));
    if (counts)
        h->counts = counts;
    struct series *series = realloc(h->s, cap * sizeof(*series));
    if (series)
        h->s = series;
    size_t *free_slots = realloc(h->free_slots, cap * sizeof(size_t));
    if (free_slots)
        h->free_slots = free_slots;
    if (!counts || !series || !free_slots)
        return 0;
    h->cap = cap;
    return 1;
}

/* The slot of the name at index 2 (made when make and absent), or -1. */
static lua_Integer hset_slot(lua_State *L, hset *h, int make)
{
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 2);
    int found = lua_rawget(L, -2) == LUA_TNUMBER;
    lua_Integer slot = found ? lua_tointeger(L, -1) : -1;
    lua_pop(L, 1);
    if (found || !make) {
        lua_pop(L, 1);
        return slot;
    }
    size_t len;
    const char *name = lua_tolstring(L, 2, &len);
    luaL_argcheck(L, len <= HIST_MAX_LABEL, 2, "name too long");
    if (h->nfree == 0 && h->used == h->cap && !hset_grow(h, h->cap ? 2 * h->cap : 64))
        return luaL_error(L, "histograms: out of memory");
    size_t elen;
    char *label = escaped_copy(name, len, &elen);
    if (!label)
        return luaL_error(L, "histograms: out of memory");
    size_t i = h->nfree ? h->free_slots[--h->nfree] : h->used++;
    h->s[i] = (struct series){.label = label, .label_len = elen};
    memset(h->counts + i * ((size_t)h->nb + 1), 0, ((size_t)h->nb + 1) * sizeof(uint64_t));
    lua_pushvalue(L, 2);
    lua_pushinteger(L, (lua_Integer)i);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    return (lua_Integer)i;
}

static int hset_observe(lua_State *L)
{
    hset *h = check_hset(L);
    luaL_checktype(L, 2, LUA_TSTRING);
    double v = luaL_checknumber(L, 3);
    size_t i = (size_t)hset_slot(L, h, 1);
    int k = 0;
    while (k < h->nb && v > h->bounds[k])
        k++;
    h->counts[i * ((size_t)h->nb + 1) + (size_t)k]++;
    h->s[i].sum += v;
    h->s[i].count++;
    return 0;
}

/* The set at 1 and the slot of the name at 2, or -1 when it has none. */
static lua_Integer named_slot(lua_State *L, hset **h)
{
    *h = check_hset(L);
    luaL_checktype(L, 2, LUA_TSTRING);
    return hset_slot(L, *h, 0);
}

static int hset_remove(lua_State *L)
{
    hset *h;
    lua_Integer slot = named_slot(L, &h);
    if (slot < 0)
        return 0;
    size_t i = (size_t)slot;
    free(h->s[i].label);
    h->s[i].label = NULL;
    h->free_slots[h->nfree++] = i;
    lua_getiuservalue(L, 1, 1);
    lua_pushvalue(L, 2);
    lua_pushnil(L);
    lua_rawset(L, -3);
    return 0;
}

static int hset_get(lua_State *L)
{
    hset *h;
    lua_Integer slot = named_slot(L, &h);
    if (slot < 0)
        return 0;
    size_t i = (size_t)slot, row = (size_t)h->nb + 1;
    lua_createtable(L, 0, 3);
    lua_createtable(L, (int)row, 0);
    for (size_t k = 0; k < row; k++) {
        lua_pushinteger(L, (lua_Integer)h->counts[i * row + k]);
        lua_rawseti(L, -2, (lua_Integer)k + 1);
    }
    lua_setfield(L, -2, "counts");
    lua_pushnumber(L, h->s[i].sum);
    lua_setfield(L, -2, "sum");
    lua_pushinteger(L, (lua_Integer)h->s[i].count);
    lua_setfield(L, -2, "count");
    return 1;
}

/* Copies n bytes at p and returns the end. */
static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

/* Writes v in decimal at p; returns the end. */
static char *put_uint(char *p, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return put(p, tmp + i, sizeof(tmp) - i);
}

/* Writes x as the text format reads it; returns the end (at most 32
 * bytes): a non-negative x below 2^53 ns (104 days of check time) as its
 * decimal with at most 9 fraction digits, trailing zeros dropped; any
 * other value through %.15g. A sum is on every series, and snprintf's
 * float path was a tenth of a /metrics render. */
static char *put_seconds(char *p, double x)
{
    if (!(x >= 0 && x < 9007199.0))
        return p + snprintf(p, 32, "%.15g", x);
    uint64_t ns = (uint64_t)(x * 1e9 + 0.5);
    p = put_uint(p, ns / 1000000000ULL);
    uint32_t frac = (uint32_t)(ns % 1000000000ULL);
    if (frac == 0)
        return p;
    int n = 9;
    while (frac % 10 == 0) {
        frac /= 10;
        n--;
    }
    *p = '.';
    for (int i = n; i >= 1; i--) {
        p[i] = (char)('0' + frac % 10);
        frac /= 10;
    }
    return p + n + 1;
}

/* The text of series i, written into b in one piece. */
static void hset_series(luaL_Buffer *b, const hset *h, size_t i, const char *metric, size_t ml, const char *lname,
                        size_t ll)
{
    const struct series *se = &h->s[i];
    size_t row = (size_t)h->nb + 1, vl = se->label_len;
    /* each line: metric, a suffix (<= 8), "{", label, "=\"", value,
     * "\",le=\"" and a bound (<= 38), "\"} " and a number (<= 35) */
    size_t most = (row + 2) * (ml + ll + vl + 90);
    char *start = luaL_prepbuffsize(b, most), *p = start;
    uint64_t cum = 0;
    for (size_t k = 0; k < row; k++) {
        cum += h->counts[i * row + k];
        p = put(p, metric, ml);
        p = put(p, "_bucket{", 8);
        p = put(p, lname, ll);
        p = put(p, "=\"", 2);
        p = put(p, se->label, vl);
        p = put(p, "\",le=\"", 6);
        p = put(p, h->les[k], h->le_lens[k]);
        p = put(p, "\"} ", 3);
        p = put_uint(p, k + 1 < row ? cum : se->count);
        *p++ = '\n';
    }
    static const char *const tails[] = {"_sum{", "_count{"};
    for (int t = 0; t < 2; t++) {
        p = put(p, metric, ml);
        p = put(p, tails[t], (size_t)(5 + 2 * t));
        p = put(p, lname, ll);
        p = put(p, "=\"", 2);
        p = put(p, se->label, vl);
        p = put(p, "\"} ", 3);
        p = t == 0 ? put_seconds(p, se->sum) : put_uint(p, se->count);
        *p++ = '\n';
    }
    luaL_addsize(b, (size_t)(p - start));
}

static int hset_text(lua_State *L)
{
    hset *h = check_hset(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    size_t ml, ll;
    const char *metric = luaL_checklstring(L, 3, &ml);
    const char *lname = luaL_checklstring(L, 4, &ll);
    luaL_checktype(L, 5, LUA_TTABLE);
    luaL_argcheck(L, ml <= HIST_MAX_LABEL && ll <= HIST_MAX_LABEL, 3, "name too long");
    lua_getiuservalue(L, 1, 1); /* 6: name -> slot */
    lua_Integer n = (lua_Integer)lua_rawlen(L, 5);
    lua_Integer out = (lua_Integer)lua_rawlen(L, 2);
    lua_Integer i = 1;
    while (i <= n) {
        luaL_Buffer b;
        /* sized once: a buffer that doubles past 64 KiB is copied, then
         * mmapped and faulted in afresh for every chunk */
        luaL_buffinitsize(L, &b, CHUNK_BYTES + CHUNK_SLACK);
        /* the buffer's slots are above here: every read below is balanced */
        for (; i <= n && luaL_bufflen(&b) < CHUNK_BYTES; i++) {
            lua_rawgeti(L, 5, i);
            int found = lua_rawget(L, 6) == LUA_TNUMBER;
            lua_Integer slot = found ? lua_tointeger(L, -1) : -1;
            lua_pop(L, 1);
            if (slot >= 0)
                hset_series(&b, h, (size_t)slot, metric, ml, lname, ll);
        }
        luaL_pushresult(&b);
        if (lua_rawlen(L, -1) > 0)
            lua_rawseti(L, 2, ++out);
        else
            lua_pop(L, 1);
    }
    return 0;
}

static int hset_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int nb = (int)lua_rawlen(L, 1);
    luaL_argcheck(L, nb <= HIST_MAX_BOUNDS, 1, "too many bounds");
    hset *h = lua_newuserdatauv(L, sizeof(hset), 1);
    memset(h, 0, sizeof(*h));
    h->nb = nb;
    for (int k = 0; k < nb; k++) {
        lua_rawgeti(L, 1, k + 1);
        int isnum;
        h->bounds[k] = lua_tonumberx(L, -1, &isnum);
        lua_pop(L, 1);
        luaL_argcheck(L, isnum && (k == 0 || h->bounds[k] > h->bounds[k - 1]), 1, "increasing numbers expected");
        h->le_lens[k] = (size_t)snprintf(h->les[k], sizeof(h->les[k]), "%g", h->bounds[k]);
    }
    memcpy(h->les[nb], "+Inf", 5);
    h->le_lens[nb] = 4;
    luaL_setmetatable(L, HISTOGRAMS);
    lua_newtable(L);
    lua_setiuservalue(L, -2, 1);
    return 1;
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
 * a histogram set's text. */
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
        luaL_buffinitsize(L, &b, CHUNK_BYTES + CHUNK_SLACK); /* as in hset_text */
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
    static const luaL_Reg methods[] = {{"observe", hset_observe}, {"remove", hset_remove}, {"get", hset_get},
                                       {"text", hset_text}, {NULL, NULL}};
    static const luaL_Reg meta[] = {{"__gc", hset_gc}, {NULL, NULL}};
    pm_newclass(L, HISTOGRAMS, methods, meta);
    lua_pushcfunction(L, hset_new);
    lua_setfield(L, -2, "histograms_new");
    lua_pushcfunction(L, l_text_join);
    lua_setfield(L, -2, "text_join");
    lua_pushcfunction(L, l_parse);
    lua_setfield(L, -2, "httpd_parse");
    return 0;
}
