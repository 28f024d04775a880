/* A port pool: the bitmap plus the pick strategy. Lua-free, so the C
 * benchmarks measure exactly what the Lua allocator runs. */
#ifndef PORTMAN_POOL_H
#define PORTMAN_POOL_H

#include "bitmap.h"

enum pm_strategy { PM_SEQUENTIAL, PM_RANDOM, PM_HASH };

typedef struct pm_pool {
    int strategy;
    uint32_t cursor;        /* where the next sequential search starts */
    uint64_t bm_storage[];  /* the pm_bitmap, 8-byte aligned */
} pm_pool;

static inline pm_bitmap *pm_pool_bitmap(pm_pool *p) { return (pm_bitmap *)p->bm_storage; }

size_t pm_pool_size(uint32_t lo, uint32_t hi);
/* start: where the cursor begins (lo, or the hash strategy's start). */
void pm_pool_init(pm_pool *p, uint32_t lo, uint32_t hi, int strategy, uint32_t start);
/* A free port by the pool's strategy, now allocated; 0 when full. */
uint32_t pm_pool_allocate(pm_pool *p);
/* FNV-1a 32-bit of the node id's bytes. */
uint32_t pm_fnv1a32(const char *s, size_t len);
/* The hash strategy's first port: lo + fnv1a32(node_id) % (hi - lo + 1). */
uint32_t pm_hash_start(const char *node_id, size_t len, uint32_t lo, uint32_t hi);
/* Uniform in [0, n) from getrandom(2), without modulo bias; n > 0. */
uint32_t pm_random_below(uint32_t n);

#endif
