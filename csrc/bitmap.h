/* A bitmap over a port range, with a summary level so that a search in a
 * nearly full pool looks at a few words, never at every bit.
 *
 * Lua-free: fuzzers and C benchmarks link it alone. The caller owns the
 * memory (pm_bitmap_size bytes), so a Lua userdata can hold it whole. */
#ifndef PORTMAN_BITMAP_H
#define PORTMAN_BITMAP_H

#include <stddef.h>
#include <stdint.h>

#define PM_PORT_MIN 1
#define PM_PORT_MAX 65535
/* 65535 bits fit in 1024 words; 1024 words fit in 16 summary words. */
#define PM_BITMAP_MAX_WORDS 1024
#define PM_BITMAP_MAX_GROUPS 16
/* A random pick counts its way down: groups of 4096 ports, then blocks of
 * 512 (8 words), then words. */
#define PM_BITMAP_BLOCK_WORDS 8
#define PM_BITMAP_MAX_BLOCKS (PM_BITMAP_MAX_WORDS / PM_BITMAP_BLOCK_WORDS)

typedef struct pm_bitmap {
    uint32_t lo, hi;     /* inclusive port range */
    uint32_t nbits;      /* hi - lo + 1 */
    uint32_t nwords;     /* 64-bit words in use */
    uint32_t ngroups;    /* summary words in use: one bit per word */
    uint32_t nfree;      /* free ports in the range */
    uint64_t nonfull[PM_BITMAP_MAX_GROUPS];  /* bit i: word i has a free port */
    uint16_t group_free[PM_BITMAP_MAX_GROUPS]; /* free ports under each summary word */
    uint16_t block_free[PM_BITMAP_MAX_BLOCKS]; /* free ports in each block of 8 words */
    uint64_t words[];    /* bit set: allocated; bits past nbits stay set */
} pm_bitmap;

/* Bytes needed for a bitmap over lo..hi (lo <= hi, both in 1..65535). */
size_t pm_bitmap_size(uint32_t lo, uint32_t hi);
/* Initialise an all-free bitmap in mem, which holds pm_bitmap_size bytes. */
void pm_bitmap_init(pm_bitmap *bm, uint32_t lo, uint32_t hi);

int pm_bitmap_test(const pm_bitmap *bm, uint32_t port);
/* 1 if the port was free and is now set, 0 if it was already set. */
int pm_bitmap_set(pm_bitmap *bm, uint32_t port);
/* 1 if the port was set and is now free, 0 if it was already free. */
int pm_bitmap_clear(pm_bitmap *bm, uint32_t port);

/* First free port at or after hint, wrapping to lo; 0 when full.
 * A hint outside the range starts at lo. */
uint32_t pm_bitmap_next_free(const pm_bitmap *bm, uint32_t hint);
/* The k-th free port in ascending order (0-based, k < nfree); 0 if none. */
uint32_t pm_bitmap_nth_free(const pm_bitmap *bm, uint32_t k);
/* First allocated port at or after port (no wrap); 0 when none. */
uint32_t pm_bitmap_next_set(const pm_bitmap *bm, uint32_t port);

static inline uint32_t pm_bitmap_allocated(const pm_bitmap *bm)
{
    return bm->nbits - bm->nfree;
}

/* Text form "PMB1 lo-hi a-b,c,...": the allocated ports as ascending runs.
 * pm_bitmap_serialize writes at most cap bytes (no NUL) and returns the length
 * the whole text needs; call it with cap 0 to size a buffer. */
size_t pm_bitmap_serialize(const pm_bitmap *bm, char *out, size_t cap);
/* Reads the range from text into *lo, *hi; 0 on success, -1 if malformed. */
int pm_bitmap_parse_range(const char *text, size_t len, uint32_t *lo, uint32_t *hi);
/* Loads text into bm (already initialised for the same range); 0 on
 * success, -1 if the text is malformed (bm is then left all free). */
int pm_bitmap_load(pm_bitmap *bm, const char *text, size_t len);

#endif
