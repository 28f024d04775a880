/* STUN codec throughput on one core: encode, and decode+verify (parse
 * with the FINGERPRINT check, then the XOR-MAPPED-ADDRESS), of a Binding
 * success response with XOR-MAPPED-ADDRESS and FINGERPRINT. Baselines in
 * the same run: copying the message, and the CRC-32 alone. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "crc32.h"
#include "stun.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static volatile unsigned sink;

typedef unsigned (*work)(const uint8_t *msg, size_t len, unsigned i);

/* Runs fn in rounds of n until a second has passed; returns calls/second. */
static double rate(work fn, const uint8_t *msg, size_t len)
{
    const unsigned n = 1u << 20;
    unsigned total = 0, acc = 0;
    double start = now(), t;
    do {
        for (unsigned i = 0; i < n; i++)
            acc += fn(msg, len, i);
        total += n;
        t = now() - start;
    } while (t < 1.0);
    sink = acc;
    return total / t;
}

static const uint8_t tid[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

static unsigned encode(const uint8_t *msg, size_t len, unsigned i)
{
    (void)msg;
    (void)len;
    uint8_t buf[64];
    pm_stun_writer w;
    pm_stun_addr a = {.family = 4, .port = (uint16_t)i, .addr = {192, 0, 2, 1}};
    pm_stun_begin(&w, buf, sizeof(buf), PM_STUN_BINDING, PM_STUN_SUCCESS, tid);
    pm_stun_add_addr(&w, PM_STUN_XOR_MAPPED_ADDRESS, &a);
    pm_stun_add_fingerprint(&w);
    return (unsigned)pm_stun_finish(&w) + buf[27];
}

static unsigned decode(const uint8_t *msg, size_t len, unsigned i)
{
    (void)i;
    pm_stun_msg m;
    pm_stun_addr a;
    if (pm_stun_parse(&m, msg, len, NULL) < 0)
        return 0;
    const pm_stun_attr *x = pm_stun_find(&m, PM_STUN_XOR_MAPPED_ADDRESS);
    if (!x)
        return 0;
    pm_stun_get_addr(&m, x, &a);
    return a.port;
}

static unsigned copy(const uint8_t *msg, size_t len, unsigned i)
{
    uint8_t buf[64];
    memcpy(buf, msg, len);
    buf[i & 31] ^= 1;
    return buf[(i + 7) & 31];
}

static unsigned crc(const uint8_t *msg, size_t len, unsigned i)
{
    (void)i;
    return pm_crc32(0, msg, len - 8);
}

int main(void)
{
    uint8_t msg[64];
    pm_stun_writer w;
    pm_stun_addr a = {.family = 4, .port = 32853, .addr = {192, 0, 2, 1}};
    pm_stun_begin(&w, msg, sizeof(msg), PM_STUN_BINDING, PM_STUN_SUCCESS, tid);
    pm_stun_add_addr(&w, PM_STUN_XOR_MAPPED_ADDRESS, &a);
    pm_stun_add_fingerprint(&w);
    size_t len = pm_stun_finish(&w);
    if (decode(msg, len, 0) != 32853) {
        fprintf(stderr, "bench/stun: the message does not decode\n");
        return 1;
    }
    printf("STUN Binding response, XOR-MAPPED-ADDRESS + FINGERPRINT (%zu bytes), one core\n", len);
    printf("  %-34s %8.2f M/s\n", "encode", rate(encode, msg, len) / 1e6);
    printf("  %-34s %8.2f M/s   (target >= 10)\n", "decode+verify", rate(decode, msg, len) / 1e6);
    printf("  %-34s %8.2f M/s\n", "baseline: memcpy of the message", rate(copy, msg, len) / 1e6);
    printf("  %-34s %8.2f M/s\n", "baseline: CRC-32 of the message", rate(crc, msg, len) / 1e6);
    return 0;
}
