/* Allocator benchmarks from C: allocate+release throughput, and the latency
 * of one allocation in a 99.9%-full 64K pool, beside a naive bit-by-bit
 * scan of the same bitmap (the baseline), in the same run. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "pool.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static pm_pool *new_pool(uint32_t lo, uint32_t hi, int strategy)
{
    pm_pool *p = malloc(pm_pool_size(lo, hi));
    if (!p)
        abort();
    pm_pool_init(p, lo, hi, strategy, lo);
    return p;
}

/* The baseline: the first free port at or after the cursor, bit by bit. */
static uint32_t naive_allocate(pm_pool *p)
{
    pm_bitmap *bm = pm_pool_bitmap(p);
    for (uint32_t n = 0; n < bm->nbits; n++) {
        uint32_t port = p->cursor + n > bm->hi ? p->cursor + n - bm->nbits : p->cursor + n;
        if (!pm_bitmap_test(bm, port)) {
            pm_bitmap_set(bm, port);
            p->cursor = port < bm->hi ? port + 1 : bm->lo;
            return port;
        }
    }
    return 0;
}

static volatile uint32_t sink;

static void throughput(const char *name, int strategy, long n)
{
    pm_pool *p = new_pool(1024, 65535, strategy);
    for (uint32_t port = 1024; port < 1024 + 32000; port++) /* half full */
        pm_bitmap_set(pm_pool_bitmap(p), port * 2 - 1024);
    double t = now();
    for (long i = 0; i < n; i++) {
        uint32_t port = pm_pool_allocate(p);
        pm_bitmap_clear(pm_pool_bitmap(p), port);
        sink = port;
    }
    t = now() - t;
    printf("  %-34s %8.1f M pairs/s  (%.1f ns a pair)\n", name, n / t / 1e6, t / n * 1e9);
    free(p);
}

/* A 64K pool with 65 free ports scattered (99.9% used); each round takes a
 * port and gives it back, so the pool stays 99.9% full. */
static void nearly_full(const char *name, int strategy, int naive, long n)
{
    pm_pool *p = new_pool(1, 65535, strategy);
    pm_bitmap *bm = pm_pool_bitmap(p);
    srand(7);
    for (uint32_t port = 1; port <= 65535; port++)
        pm_bitmap_set(bm, port);
    while (bm->nfree < 65)
        pm_bitmap_clear(bm, 1 + (uint32_t)rand() % 65535);
    double t = now();
    for (long i = 0; i < n; i++) {
        uint32_t port = naive ? naive_allocate(p) : pm_pool_allocate(p);
        pm_bitmap_clear(bm, port);
        sink = port;
    }
    t = now() - t;
    printf("  %-34s %8.1f ns an allocation (+release)\n", name, t / n * 1e9);
    free(p);
}

int main(void)
{
    printf("allocate+release, pool 1024-65535 half full:\n");
    throughput("portman sequential", PM_SEQUENTIAL, 20000000);
    throughput("portman random (getrandom)", PM_RANDOM, 5000000);
    printf("one allocation in a 99.9%%-full 64K pool:\n");
    nearly_full("portman sequential (summary level)", PM_SEQUENTIAL, 0, 5000000);
    nearly_full("portman random (k-th free)", PM_RANDOM, 0, 2000000);
    nearly_full("baseline: naive bit-by-bit scan", PM_SEQUENTIAL, 1, 20000);
    return 0;
}
