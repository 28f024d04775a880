/* Port bitmap with a one-level summary; see bitmap.h. */
#include "bitmap.h"

#include <string.h>
#include "visibility.h" /* last: see there */

#define ALL_ONES (~(uint64_t)0)

static inline int ctz64(uint64_t x) { return __builtin_ctzll(x); }
static inline int popcount64(uint64_t x) { return __builtin_popcountll(x); }

size_t pm_bitmap_size(uint32_t lo, uint32_t hi)
{
    uint32_t nwords = (hi - lo + 1 + 63) / 64;
    return sizeof(pm_bitmap) + nwords * sizeof(uint64_t);
}

void pm_bitmap_init(pm_bitmap *bm, uint32_t lo, uint32_t hi)
{
    memset(bm, 0, sizeof(*bm));
    bm->lo = lo;
    bm->hi = hi;
    bm->nbits = hi - lo + 1;
    bm->nwords = (bm->nbits + 63) / 64;
    bm->ngroups = (bm->nwords + 63) / 64;
    bm->nfree = bm->nbits;
    memset(bm->words, 0, bm->nwords * sizeof(uint64_t));
    /* The bits past the range count as allocated, so no search returns them. */
    uint32_t tail = bm->nbits % 64;
    if (tail)
        bm->words[bm->nwords - 1] = ALL_ONES << tail;
    for (uint32_t w = 0; w < bm->nwords; w++)
        bm->nonfull[w / 64] |= (uint64_t)1 << (w % 64);
    for (uint32_t w = 0; w < bm->nwords; w++) {
        uint16_t n = (uint16_t)popcount64(~bm->words[w]);
        bm->group_free[w / 64] += n;
        bm->block_free[w / PM_BITMAP_BLOCK_WORDS] += n;
    }
}

int pm_bitmap_test(const pm_bitmap *bm, uint32_t port)
{
    uint32_t i = port - bm->lo;
    return (int)((bm->words[i / 64] >> (i % 64)) & 1);
}

int pm_bitmap_set(pm_bitmap *bm, uint32_t port)
{
    uint32_t i = port - bm->lo, w = i / 64;
    uint64_t bit = (uint64_t)1 << (i % 64);
    if (bm->words[w] & bit)
        return 0;
    bm->words[w] |= bit;
    if (bm->words[w] == ALL_ONES)
        bm->nonfull[w / 64] &= ~((uint64_t)1 << (w % 64));
    bm->group_free[w / 64]--;
    bm->block_free[w / PM_BITMAP_BLOCK_WORDS]--;
    bm->nfree--;
    return 1;
}

int pm_bitmap_clear(pm_bitmap *bm, uint32_t port)
{
    uint32_t i = port - bm->lo, w = i / 64;
    uint64_t bit = (uint64_t)1 << (i % 64);
    if (!(bm->words[w] & bit))
        return 0;
    bm->words[w] &= ~bit;
    bm->nonfull[w / 64] |= (uint64_t)1 << (w % 64);
    bm->group_free[w / 64]++;
    bm->block_free[w / PM_BITMAP_BLOCK_WORDS]++;
    bm->nfree++;
    return 1;
}

/* Index of the first word at or after w with a free bit, or -1. */
static int64_t next_nonfull_word(const pm_bitmap *bm, uint32_t w)
{
    if (w >= bm->nwords)
        return -1;
    uint32_t g = w / 64;
    uint64_t m = bm->nonfull[g] & (ALL_ONES << (w % 64));
    for (;;) {
        if (m)
            return (int64_t)g * 64 + ctz64(m);
        if (++g >= bm->ngroups)
            return -1;
        m = bm->nonfull[g];
    }
}

/* Index of the first free bit at or after i, or -1. */
static int64_t find_free_from(const pm_bitmap *bm, uint32_t i)
{
    uint32_t w = i / 64;
    uint64_t m = ~bm->words[w] & (ALL_ONES << (i % 64));
    if (m)
        return (int64_t)w * 64 + ctz64(m);
    int64_t nw = next_nonfull_word(bm, w + 1);
    if (nw < 0)
        return -1;
    return nw * 64 + ctz64(~bm->words[nw]);
}

uint32_t pm_bitmap_next_free(const pm_bitmap *bm, uint32_t hint)
{
    if (bm->nfree == 0)
        return 0;
    uint32_t i = (hint >= bm->lo && hint <= bm->hi) ? hint - bm->lo : 0;
    int64_t found = find_free_from(bm, i);
    if (found < 0)
        found = find_free_from(bm, 0);
    return bm->lo + (uint32_t)found;
}

/* Position of the k-th zero... of x's set bits: k < popcount(x). Narrows by
 * halves so the cost is six steps whatever k is. */
static uint32_t select_bit(uint64_t x, uint32_t k)
{
    uint32_t pos = 0;
    for (uint32_t width = 32; width; width >>= 1) {
        uint64_t low = x & ((ALL_ONES) >> (64 - width));
        uint32_t c = (uint32_t)popcount64(low);
        if (k >= c) {
            k -= c;
            x >>= width;
            pos += width;
        } else {
            x = low;
        }
    }
    return pos;
}

uint32_t pm_bitmap_nth_free(const pm_bitmap *bm, uint32_t k)
{
    if (k >= bm->nfree)
        return 0;
    uint32_t g = 0;
    while (k >= bm->group_free[g])
        k -= bm->group_free[g++];
    uint32_t blk = g * (64 / PM_BITMAP_BLOCK_WORDS);
    while (k >= bm->block_free[blk])
        k -= bm->block_free[blk++];
    for (uint32_t w = blk * PM_BITMAP_BLOCK_WORDS;; w++) {
        uint64_t freebits = ~bm->words[w];
        uint32_t c = (uint32_t)popcount64(freebits);
        if (k < c)
            return bm->lo + w * 64 + select_bit(freebits, k);
        k -= c;
    }
}

uint32_t pm_bitmap_next_set(const pm_bitmap *bm, uint32_t port)
{
    if (port < bm->lo)
        port = bm->lo;
    if (port > bm->hi)
        return 0;
    uint32_t i = port - bm->lo, w = i / 64;
    uint64_t m = bm->words[w] & (ALL_ONES << (i % 64));
    while (!m) {
        if (++w >= bm->nwords)
            return 0;
        m = bm->words[w];
    }
    uint32_t found = w * 64 + (uint32_t)ctz64(m);
    return found < bm->nbits ? bm->lo + found : 0; /* past the end: padding */
}

/* ---- text form ---- */

typedef struct {
    char *out;
    size_t cap, len;
} sink;

static void put_char(sink *s, char c)
{
    if (s->len < s->cap)
        s->out[s->len] = c;
    s->len++;
}

static void put_uint(sink *s, uint32_t v)
{
    char tmp[10];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        put_char(s, tmp[--n]);
}

static void put_run(sink *s, uint32_t a, uint32_t b)
{
    put_uint(s, a);
    if (b != a) {
        put_char(s, '-');
        put_uint(s, b);
    }
}

size_t pm_bitmap_serialize(const pm_bitmap *bm, char *out, size_t cap)
{
    sink s = {out, cap, 0};
    static const char magic[] = "PMB1 ";
    for (const char *p = magic; *p; p++)
        put_char(&s, *p);
    put_run(&s, bm->lo, bm->hi);
    uint32_t p = pm_bitmap_next_set(bm, bm->lo);
    char sep = ' ';
    while (p) {
        uint32_t end = p;
        while (end < bm->hi && pm_bitmap_test(bm, end + 1))
            end++;
        put_char(&s, sep);
        sep = ',';
        put_run(&s, p, end);
        p = end < bm->hi ? pm_bitmap_next_set(bm, end + 1) : 0;
    }
    return s.len;
}

typedef struct {
    const char *p, *end;
} cursor;

/* A decimal port 1..65535 without sign or leading zero. */
static int read_port(cursor *c, uint32_t *v)
{
    const char *start = c->p;
    uint32_t x = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9' && c->p - start < 5)
        x = x * 10 + (uint32_t)(*c->p++ - '0');
    if (c->p == start || (*start == '0') || x > PM_PORT_MAX)
        return -1;
    if (c->p < c->end && *c->p >= '0' && *c->p <= '9')
        return -1; /* six digits or more */
    *v = x;
    return 0;
}

static int read_run(cursor *c, uint32_t *a, uint32_t *b)
{
    if (read_port(c, a) < 0)
        return -1;
    *b = *a;
    if (c->p < c->end && *c->p == '-') {
        c->p++;
        if (read_port(c, b) < 0 || *b < *a)
            return -1;
    }
    return 0;
}

static int read_header(cursor *c, uint32_t *lo, uint32_t *hi)
{
    if (c->end - c->p < 5 || memcmp(c->p, "PMB1 ", 5) != 0)
        return -1;
    c->p += 5;
    return read_run(c, lo, hi);
}

int pm_bitmap_parse_range(const char *text, size_t len, uint32_t *lo, uint32_t *hi)
{
    cursor c = {text, text + len};
    return read_header(&c, lo, hi);
}

static int load_runs(pm_bitmap *bm, cursor *c)
{
    uint32_t lo, hi;
    if (read_header(c, &lo, &hi) < 0 || lo != bm->lo || hi != bm->hi)
        return -1;
    if (c->p == c->end)
        return 0;
    if (*c->p++ != ' ')
        return -1;
    uint32_t prev_end = 0;
    for (;;) {
        uint32_t a, b;
        if (read_run(c, &a, &b) < 0 || a < bm->lo || b > bm->hi || (prev_end && a <= prev_end))
            return -1;
        for (uint32_t p = a; p <= b; p++)
            pm_bitmap_set(bm, p);
        prev_end = b;
        if (c->p == c->end)
            return 0;
        if (*c->p++ != ',')
            return -1;
    }
}

int pm_bitmap_load(pm_bitmap *bm, const char *text, size_t len)
{
    cursor c = {text, text + len};
    pm_bitmap_init(bm, bm->lo, bm->hi);
    if (load_runs(bm, &c) < 0) {
        pm_bitmap_init(bm, bm->lo, bm->hi);
        return -1;
    }
    return 0;
}
