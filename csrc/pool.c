/* Pick strategies over the bitmap; see pool.h. */
#include "pool.h"

#include <sys/random.h>
#include "visibility.h" /* last: see there */

size_t pm_pool_size(uint32_t lo, uint32_t hi)
{
    return sizeof(pm_pool) + pm_bitmap_size(lo, hi);
}

void pm_pool_init(pm_pool *p, uint32_t lo, uint32_t hi, int strategy, uint32_t start)
{
    p->strategy = strategy;
    p->cursor = start;
    pm_bitmap_init(pm_pool_bitmap(p), lo, hi);
}

/* An unpredictable 64-bit value (RFC 6056: ports an attacker cannot guess),
 * from getrandom, buffered so one syscall serves many picks. */
static uint64_t random64(void)
{
    static _Thread_local uint64_t buf[256];
    static _Thread_local unsigned left;
    if (left == 0) {
        size_t got = 0;
        while (got < sizeof(buf)) {
            ssize_t n = getrandom((char *)buf + got, sizeof(buf) - got, 0);
            if (n > 0) /* else EINTR: try again; it cannot otherwise fail at this size */
                got += (size_t)n;
        }
        left = sizeof(buf) / sizeof(buf[0]);
    }
    return buf[--left];
}

uint32_t pm_random_below(uint32_t n)
{
    uint64_t limit = UINT64_MAX - UINT64_MAX % n; /* rejection removes the bias */
    uint64_t r;
    do
        r = random64();
    while (r >= limit);
    return (uint32_t)(r % n);
}

uint32_t pm_fnv1a32(const char *s, size_t len)
{
    uint32_t h = 0x811c9dc5u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 0x01000193u;
    return h;
}

uint32_t pm_hash_start(const char *node_id, size_t len, uint32_t lo, uint32_t hi)
{
    return lo + pm_fnv1a32(node_id, len) % (hi - lo + 1);
}

uint32_t pm_pool_allocate(pm_pool *p)
{
    pm_bitmap *bm = pm_pool_bitmap(p);
    uint32_t port;
    if (bm->nfree == 0)
        return 0;
    if (p->strategy == PM_RANDOM) {
        port = pm_bitmap_nth_free(bm, pm_random_below(bm->nfree));
    } else {
        port = pm_bitmap_next_free(bm, p->cursor);
        p->cursor = port < bm->hi ? port + 1 : bm->lo;
    }
    pm_bitmap_set(bm, port);
    return port;
}
