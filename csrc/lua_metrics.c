/* The C parts of /metrics (lua/portman/metrics.lua; docs/design.md,
 * "Metrics"): what grows with the number of services is kept and written
 * here. At 10,000 services a scrape is 110,000 lines; built in Lua, or
 * read out of Lua tables a field at a time, that took most of 100 ms.
 *
 * core.text_join(parts, n) -> string
 *   parts[1..n] joined, as table.concat(parts, "", 1, n), integers in
 *   decimal and floats as %.15g; anything else raises, naming its index.
 * core.histograms_new(bounds) -> set
 *   the per-service histograms of check durations and counts of check
 *   results (below).
 * core.service_text(chunks, metric, mode, names, protos, statuses, up)
 *   a line (or two) per service (below).
 *
 * The text comes as strings of about 64 KiB appended to `chunks`: the
 * HTTP server writes the list as it is (writev). Label values are
 * escaped as the text format asks: backslash, double quote, newline. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lua_util.h"
#include "visibility.h" /* last: see there */

#define CHUNK_BYTES 65536
#define CHUNK_SLACK 4096 /* a service's lines past the chunk size */
#define MAX_NAME 4096    /* a metric, label or service name; far shorter in practice */

/* ---- writing text at a pointer; each returns the new end ---- */

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

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

static char *put_int(char *p, lua_Integer v)
{
    if (v >= 0)
        return put_uint(p, (uint64_t)v);
    *p++ = '-';
    return put_uint(p, 0ULL - (uint64_t)v);
}

/* x as the text format reads it (at most 32 bytes): a non-negative x
 * below 2^53 ns (104 days of check time) as its decimal with at most 9
 * fraction digits, trailing zeros dropped; any other value through
 * %.15g. A sum is on every series, and snprintf's float path was a tenth
 * of a render. */
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

/* s escaped (at most 2n bytes). */
static char *put_escaped(char *p, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\\' || c == '"' || c == '\n') {
            *p++ = '\\';
            *p++ = c == '\n' ? 'n' : c;
        } else {
            *p++ = c;
        }
    }
    return p;
}

/* A malloc'd escaped copy of s, its length in *len; NULL when out of memory. */
static char *escaped_copy(const char *s, size_t n, size_t *len)
{
    char *out = malloc(2 * n + 1);
    if (!out)
        return NULL;
    *len = (size_t)(put_escaped(out, s, n) - out);
    out[*len] = '\0';
    return out;
}

/* ---- chunks ---- */

/* A chunk being written: a luaL_Buffer sized once (one that doubles past
 * 64 KiB is copied, then mmapped and faulted in afresh for every chunk). */
static void chunk_start(lua_State *L, luaL_Buffer *b)
{
    luaL_buffinitsize(L, b, CHUNK_BYTES + CHUNK_SLACK);
}

/* Ends the chunk: appends it to the list at index chunks unless empty. */
static void chunk_end(lua_State *L, luaL_Buffer *b, int chunks)
{
    luaL_pushresult(b);
    if (lua_rawlen(L, -1) > 0)
        lua_rawseti(L, chunks, (lua_Integer)lua_rawlen(L, chunks) + 1);
    else
        lua_pop(L, 1);
}

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
        } else if (t == LUA_TNUMBER) {
            int isint = lua_isinteger(L, -1);
            lua_Integer v = lua_tointeger(L, -1);
            lua_Number x = lua_tonumber(L, -1);
            lua_pop(L, 1);
            char *p = luaL_prepbuffsize(&b, 32);
            char *end = isint ? put_int(p, v) : p + snprintf(p, 32, "%.15g", (double)x);
            luaL_addsize(&b, (size_t)(end - p));
        } else {
            return luaL_error(L, "text_join: parts[%d] is a %s, not a string or number", (int)i, luaL_typename(L, -1));
        }
    }
    luaL_pushresult(&b);
    return 1;
}

/* ---- the histogram set ----
 *
 * set:observe(name, value[, result])  counts value in name's histogram (the
 *   bucket: the first bound >= value) and, when given, one result word
 * set:remove(name)  forgets name's series
 * set:get(name) -> {counts = non-cumulative counts (#bounds + 1), sum, count,
 *   results = {word = n}} or nil
 * set:text(chunks, metric, label, names): for each of names (in order)
 *   that has a series:
 *     METRIC_bucket{LABEL="NAME",le="BOUND"} CUMULATIVE   (each bound, then "+Inf")
 *     METRIC_sum{LABEL="NAME"} SUM
 *     METRIC_count{LABEL="NAME"} COUNT
 *   bounds written as %g
 * set:results_text(chunks, metric, label, rlabel, names): for each of
 *   names with results, a line per word (in the order words first came):
 *     METRIC{LABEL="NAME",RLABEL="WORD"} N
 *
 * Series live in arrays indexed by slot; the set's first user value maps
 * a name to its slot, the second a result word to its number. A set takes
 * at most MAX_WORDS distinct words: a check that makes up a new word each
 * run has the rest counted as "other". */
#define HISTOGRAMS "portman.histograms"
#define MAX_BOUNDS 32
#define MAX_WORDS 64

struct result {
    uint64_t n;
    uint32_t word;
};

struct series {
    double sum;
    uint64_t count;
    char *label; /* escaped; NULL: a free slot */
    size_t label_len;
    struct result *res;
    uint32_t nres, capres;
};

typedef struct {
    int nb; /* bounds */
    double bounds[MAX_BOUNDS];
    char les[MAX_BOUNDS + 1][32]; /* as the le label writes them; the last "+Inf" */
    size_t le_lens[MAX_BOUNDS + 1];
    size_t used, cap; /* slots handed out (high water), allocated */
    uint64_t *counts; /* cap * (nb + 1) */
    struct series *s;
    size_t *free_slots, nfree;
    uint32_t nwords;
    char *words[MAX_WORDS + 1]; /* escaped; the last: "other" */
    size_t word_lens[MAX_WORDS + 1];
} hset;

static hset *check_hset(lua_State *L)
{
    return luaL_checkudata(L, 1, HISTOGRAMS);
}

static int hset_gc(lua_State *L)
{
    hset *h = check_hset(L);
    for (size_t i = 0; i < h->used; i++) {
        free(h->s[i].label);
        free(h->s[i].res);
    }
    for (uint32_t w = 0; w < h->nwords; w++)
        free(h->words[w]);
    free(h->counts);
    free(h->s);
    free(h->free_slots);
    memset(h, 0, sizeof(*h));
    return 0;
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

/* The number value of key (at index k) in user value uv, or -1. */
static lua_Integer lookup(lua_State *L, int uv, int k)
{
    lua_getiuservalue(L, 1, uv);
    lua_pushvalue(L, k);
    lua_Integer v = lua_rawget(L, -2) == LUA_TNUMBER ? lua_tointeger(L, -1) : -1;
    lua_pop(L, 2);
    return v;
}

static void remember(lua_State *L, int uv, int k, lua_Integer v)
{
    lua_getiuservalue(L, 1, uv);
    lua_pushvalue(L, k);
    if (v < 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, v);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

/* The slot of the name at index 2, made when absent. */
static size_t hset_slot(lua_State *L, hset *h)
{
    lua_Integer found = lookup(L, 1, 2);
    if (found >= 0)
        return (size_t)found;
    size_t len;
    const char *name = lua_tolstring(L, 2, &len);
    luaL_argcheck(L, len <= MAX_NAME, 2, "name too long");
    if (h->nfree == 0 && h->used == h->cap && !hset_grow(h, h->cap ? 2 * h->cap : 64))
        luaL_error(L, "histograms: out of memory");
    size_t elen = 0;
    char *label = escaped_copy(name, len, &elen);
    if (!label)
        luaL_error(L, "histograms: out of memory");
    size_t i = h->nfree ? h->free_slots[--h->nfree] : h->used++;
    h->s[i] = (struct series){.label = label, .label_len = elen};
    memset(h->counts + i * ((size_t)h->nb + 1), 0, ((size_t)h->nb + 1) * sizeof(uint64_t));
    remember(L, 1, 2, (lua_Integer)i);
    return i;
}

/* The number of the result word at index k (MAX_WORDS: "other"). */
static uint32_t hset_word(lua_State *L, hset *h, int k)
{
    lua_Integer found = lookup(L, 2, k);
    if (found >= 0)
        return (uint32_t)found;
    if (h->nwords == MAX_WORDS)
        return MAX_WORDS;
    size_t len;
    const char *word = lua_tolstring(L, k, &len);
    luaL_argcheck(L, len <= MAX_NAME, k, "result word too long");
    char *copy = escaped_copy(word, len, &h->word_lens[h->nwords]);
    if (!copy)
        luaL_error(L, "histograms: out of memory");
    h->words[h->nwords] = copy;
    remember(L, 2, k, (lua_Integer)h->nwords);
    return h->nwords++;
}

static void count_result(lua_State *L, struct series *se, uint32_t word)
{
    for (uint32_t r = 0; r < se->nres; r++) {
        if (se->res[r].word == word) {
            se->res[r].n++;
            return;
        }
    }
    if (se->nres == se->capres) {
        uint32_t cap = se->capres ? 2 * se->capres : 2;
        struct result *res = realloc(se->res, cap * sizeof(*res));
        if (!res)
            luaL_error(L, "histograms: out of memory");
        se->res = res;
        se->capres = cap;
    }
    se->res[se->nres++] = (struct result){.n = 1, .word = word};
}

static int hset_observe(lua_State *L)
{
    hset *h = check_hset(L);
    luaL_checktype(L, 2, LUA_TSTRING);
    double v = luaL_checknumber(L, 3);
    int has_word = !lua_isnoneornil(L, 4);
    if (has_word)
        luaL_checktype(L, 4, LUA_TSTRING);
    size_t i = hset_slot(L, h);
    int k = 0;
    while (k < h->nb && v > h->bounds[k])
        k++;
    h->counts[i * ((size_t)h->nb + 1) + (size_t)k]++;
    h->s[i].sum += v;
    h->s[i].count++;
    if (has_word)
        count_result(L, &h->s[i], hset_word(L, h, 4));
    return 0;
}

/* The set at 1 and the slot of the name at 2, or -1 when it has none. */
static lua_Integer named_slot(lua_State *L, hset **h)
{
    *h = check_hset(L);
    luaL_checktype(L, 2, LUA_TSTRING);
    return lookup(L, 1, 2);
}

static int hset_remove(lua_State *L)
{
    hset *h;
    lua_Integer slot = named_slot(L, &h);
    if (slot < 0)
        return 0;
    struct series *se = &h->s[slot];
    free(se->label);
    free(se->res);
    *se = (struct series){0};
    h->free_slots[h->nfree++] = (size_t)slot;
    remember(L, 1, 2, -1);
    return 0;
}

static const char *word_of(const hset *h, uint32_t w, size_t *len)
{
    if (w >= h->nwords) {
        *len = 5;
        return "other";
    }
    *len = h->word_lens[w];
    return h->words[w];
}

static int hset_get(lua_State *L)
{
    hset *h;
    lua_Integer slot = named_slot(L, &h);
    if (slot < 0)
        return 0;
    const struct series *se = &h->s[slot];
    size_t row = (size_t)h->nb + 1;
    lua_createtable(L, 0, 4);
    lua_createtable(L, (int)row, 0);
    for (size_t k = 0; k < row; k++) {
        lua_pushinteger(L, (lua_Integer)h->counts[(size_t)slot * row + k]);
        lua_rawseti(L, -2, (lua_Integer)k + 1);
    }
    lua_setfield(L, -2, "counts");
    lua_pushnumber(L, se->sum);
    lua_setfield(L, -2, "sum");
    lua_pushinteger(L, (lua_Integer)se->count);
    lua_setfield(L, -2, "count");
    lua_createtable(L, 0, (int)se->nres);
    for (uint32_t r = 0; r < se->nres; r++) {
        size_t len;
        const char *w = word_of(h, se->res[r].word, &len);
        lua_pushlstring(L, w, len); /* escaped: the words are plain in practice */
        lua_pushinteger(L, (lua_Integer)se->res[r].n);
        lua_rawset(L, -3);
    }
    lua_setfield(L, -2, "results");
    return 1;
}

/* The names of a text call: the metric and label at 3 and 4 (and a second
 * label at 5 when lname2), the name list after them. */
typedef struct {
    const char *metric, *lname, *lname2;
    size_t ml, ll, ll2;
} text_names;

static void series_text(luaL_Buffer *b, const hset *h, size_t i, const text_names *t)
{
    const struct series *se = &h->s[i];
    size_t row = (size_t)h->nb + 1, vl = se->label_len;
    /* each line: metric, a suffix (<= 8), "{", label, "=\"", value,
     * "\",le=\"" and a bound (<= 38), "\"} " and a number (<= 35) */
    size_t most = (row + 2) * (t->ml + t->ll + vl + 90);
    char *start = luaL_prepbuffsize(b, most), *p = start;
    uint64_t cum = 0;
    for (size_t k = 0; k < row; k++) {
        cum += h->counts[i * row + k];
        p = put(p, t->metric, t->ml);
        p = put(p, "_bucket{", 8);
        p = put(p, t->lname, t->ll);
        p = put(p, "=\"", 2);
        p = put(p, se->label, vl);
        p = put(p, "\",le=\"", 6);
        p = put(p, h->les[k], h->le_lens[k]);
        p = put(p, "\"} ", 3);
        p = put_uint(p, k + 1 < row ? cum : se->count);
        *p++ = '\n';
    }
    static const char *const tails[] = {"_sum{", "_count{"};
    for (int k = 0; k < 2; k++) {
        p = put(p, t->metric, t->ml);
        p = put(p, tails[k], (size_t)(5 + 2 * k));
        p = put(p, t->lname, t->ll);
        p = put(p, "=\"", 2);
        p = put(p, se->label, vl);
        p = put(p, "\"} ", 3);
        p = k == 0 ? put_seconds(p, se->sum) : put_uint(p, se->count);
        *p++ = '\n';
    }
    luaL_addsize(b, (size_t)(p - start));
}

static void results_text(luaL_Buffer *b, const hset *h, size_t i, const text_names *t)
{
    const struct series *se = &h->s[i];
    for (uint32_t r = 0; r < se->nres; r++) {
        size_t wl;
        const char *w = word_of(h, se->res[r].word, &wl);
        size_t most = t->ml + t->ll + t->ll2 + se->label_len + wl + 40;
        char *start = luaL_prepbuffsize(b, most), *p = start;
        p = put(p, t->metric, t->ml);
        *p++ = '{';
        p = put(p, t->lname, t->ll);
        p = put(p, "=\"", 2);
        p = put(p, se->label, se->label_len);
        p = put(p, "\",", 2);
        p = put(p, t->lname2, t->ll2);
        p = put(p, "=\"", 2);
        p = put(p, w, wl);
        p = put(p, "\"} ", 3);
        p = put_uint(p, se->res[r].n);
        *p++ = '\n';
        luaL_addsize(b, (size_t)(p - start));
    }
}

/* The walk of both texts over the names at index `names`. */
static int walk(lua_State *L, int results)
{
    hset *h = check_hset(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    text_names t = {0};
    t.metric = luaL_checklstring(L, 3, &t.ml);
    t.lname = luaL_checklstring(L, 4, &t.ll);
    int names = 5;
    if (results) {
        t.lname2 = luaL_checklstring(L, 5, &t.ll2);
        names = 6;
    }
    luaL_checktype(L, names, LUA_TTABLE);
    luaL_argcheck(L, t.ml <= MAX_NAME && t.ll <= MAX_NAME && t.ll2 <= MAX_NAME, 3, "name too long");
    lua_settop(L, names);
    lua_getiuservalue(L, 1, 1); /* names + 1: name -> slot */
    int slots = names + 1;
    lua_Integer n = (lua_Integer)lua_rawlen(L, names);
    lua_Integer i = 1;
    while (i <= n) {
        luaL_Buffer b;
        chunk_start(L, &b);
        /* the buffer's slots are above here: every read below is balanced */
        for (; i <= n && luaL_bufflen(&b) < CHUNK_BYTES; i++) {
            lua_rawgeti(L, names, i);
            lua_Integer slot = lua_rawget(L, slots) == LUA_TNUMBER ? lua_tointeger(L, -1) : -1;
            lua_pop(L, 1);
            if (slot >= 0 && results)
                results_text(&b, h, (size_t)slot, &t);
            else if (slot >= 0)
                series_text(&b, h, (size_t)slot, &t);
        }
        chunk_end(L, &b, 2);
    }
    return 0;
}

static int hset_text(lua_State *L)
{
    return walk(L, 0);
}

static int hset_results_text(lua_State *L)
{
    return walk(L, 1);
}

static int hset_new(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int nb = (int)lua_rawlen(L, 1);
    luaL_argcheck(L, nb <= MAX_BOUNDS, 1, "too many bounds");
    hset *h = lua_newuserdatauv(L, sizeof(hset), 2);
    memset(h, 0, sizeof(*h));
    luaL_setmetatable(L, HISTOGRAMS); /* from here on, __gc frees what is made */
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
    for (int uv = 1; uv <= 2; uv++) {
        lua_newtable(L);
        lua_setiuservalue(L, -2, uv);
    }
    return 1;
}

/* ---- core.service_text(chunks, metric, mode, names, protos, statuses, up) ----
 * mode "up": METRIC{service="NAME",proto="PROTO"} 1 when up[status], else 0
 * mode "status": METRIC{service="NAME",status="healthy"} 1 or 0, and for
 *   a service with another status, METRIC{service="NAME",status="STATUS"} 1 */
static char *service_line(char *p, const char *metric, size_t ml, const char *name, size_t nl, const char *key,
                          const char *val, size_t vl)
{
    p = put(p, metric, ml);
    p = put(p, "{service=\"", 10);
    p = put_escaped(p, name, nl);
    p = put(p, "\",", 2);
    p = put(p, key, strlen(key));
    p = put(p, "=\"", 2);
    p = put_escaped(p, val, vl);
    return put(p, "\"} ", 3);
}

static int l_service_text(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    size_t ml;
    const char *metric = luaL_checklstring(L, 2, &ml);
    int up_mode = luaL_checkoption(L, 3, NULL, (const char *const[]){"status", "up", NULL});
    for (int k = 4; k <= 7; k++)
        luaL_checktype(L, k, LUA_TTABLE);
    luaL_argcheck(L, ml <= MAX_NAME, 2, "name too long");
    lua_settop(L, 7);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 4);
    lua_Integer i = 1;
    while (i <= n) {
        luaL_Buffer b;
        chunk_start(L, &b);
        for (; i <= n && luaL_bufflen(&b) < CHUNK_BYTES; i++) {
            size_t nl = 0, pl = 0, sl = 0;
            lua_rawgeti(L, 4, i);
            lua_rawgeti(L, 5, i);
            lua_rawgeti(L, 6, i);
            const char *name = lua_tolstring(L, -3, &nl);
            const char *proto = lua_tolstring(L, -2, &pl);
            const char *status = lua_tolstring(L, -1, &sl);
            int up = lua_rawget(L, 7) != LUA_TNIL && lua_toboolean(L, -1); /* replaces the status */
            /* the strings stay anchored in their lists: the stack is
             * balanced again before the buffer is touched */
            lua_pop(L, 3);
            if (!name || !status || (up_mode && !proto) || nl > MAX_NAME || pl > MAX_NAME || sl > MAX_NAME)
                continue;
            /* two lines at most, each with escaped values of up to 2x */
            char *start = luaL_prepbuffsize(&b, 2 * (ml + 2 * (nl + sl + pl) + 64)), *p = start;
            if (up_mode) {
                p = service_line(p, metric, ml, name, nl, "proto", proto, pl);
                *p++ = up ? '1' : '0';
            } else {
                int healthy = sl == 7 && memcmp(status, "healthy", 7) == 0;
                p = service_line(p, metric, ml, name, nl, "status", "healthy", 7);
                *p++ = healthy ? '1' : '0';
                if (!healthy) {
                    *p++ = '\n';
                    p = service_line(p, metric, ml, name, nl, "status", status, sl);
                    *p++ = '1';
                }
            }
            *p++ = '\n';
            luaL_addsize(&b, (size_t)(p - start));
        }
        chunk_end(L, &b, 1);
    }
    return 0;
}

int pm_open_metrics(lua_State *L)
{
    static const luaL_Reg methods[] = {{"observe", hset_observe},      {"remove", hset_remove}, {"get", hset_get},
                                       {"text", hset_text},            {"results_text", hset_results_text},
                                       {NULL, NULL}};
    static const luaL_Reg meta[] = {{"__gc", hset_gc}, {NULL, NULL}};
    pm_newclass(L, HISTOGRAMS, methods, meta);
    lua_pushcfunction(L, hset_new);
    lua_setfield(L, -2, "histograms_new");
    lua_pushcfunction(L, l_service_text);
    lua_setfield(L, -2, "service_text");
    lua_pushcfunction(L, l_text_join);
    lua_setfield(L, -2, "text_join");
    return 0;
}
