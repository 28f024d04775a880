/* libFuzzer target for the NAT-PMP answer parser (pm_pmp_parse): the
 * first 5 bytes choose the request (opcode, internal port, whether it
 * deletes) and the request answered before; the rest is the gateway's
 * answer. Whatever the bytes, the parser must decide without reading past
 * them, and an answer it accepts must hold only values portman can use and
 * save: they encode back to the bytes that came. */
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

#include "pmp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

static uint32_t get32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static void check_address(const uint8_t *b, const struct pm_pmp_req *req, const struct pm_pmp_result *r)
{
    struct in_addr a;
    CHECK(inet_pton(AF_INET, r->external_ip, &a) == 1);
    CHECK(memcmp(&a.s_addr, b + 8, 4) == 0); /* the address that came */
    unsigned top = b[8];
    CHECK(top != 0 && top != 127 && top < 224 && a.s_addr != req->gateway);
}

static void check_mapping(const uint8_t *b, const struct pm_pmp_req *req, const struct pm_pmp_result *r)
{
    CHECK(r->internal_port == req->internal_port);
    CHECK((b[8] << 8 | b[9]) == r->internal_port);
    if (req->lifetime == 0) {
        CHECK(get32(b + 12) == 0 && r->lifetime == 0 && r->external_port == 0);
        return;
    }
    CHECK(r->external_port >= 1 && r->external_port <= 65535);
    CHECK((b[10] << 8 | b[11]) == r->external_port);
    CHECK(r->lifetime >= 1 && r->lifetime <= PM_PMP_MAX_LIFETIME && get32(b + 12) == r->lifetime);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5) return 0;
    struct pm_pmp_req req = {.op = data[0] % 3, .internal_port = (uint16_t)(data[1] << 8 | data[2]),
                             .lifetime = data[3] & 1 ? 0 : 7200, .gateway = htonl(0x0a000001)};
    if (req.op == 0) req.internal_port = 0, req.lifetime = 0;
    if (req.op != 0 && req.internal_port == 0) req.internal_port = 1; /* the binding asks 1-65535 */
    int prev_op = data[4] % 4 - 1; /* -1: none */
    const uint8_t *b = data + 5;
    size_t n = size - 5;
    struct pm_pmp_result r;
    int used = pm_pmp_parse(b, n, &req, prev_op, &r);
    if (!used) {
        /* only a late copy of the previous answer is ignored */
        CHECK(prev_op >= 0 && n >= 2 && b[0] == 0 && b[1] == 128 + prev_op && prev_op != req.op);
        return 0;
    }
    CHECK(r.done == 1);
    if (r.error) {
        CHECK(r.code != NULL && r.why[0] != 0 && memchr(r.why, 0, sizeof r.why) != NULL);
        CHECK(r.external_ip[0] == 0 && r.external_port == 0 && r.lifetime == 0);
        return 0;
    }
    /* accepted: version 0, the request's opcode, result 0, long enough */
    CHECK(n >= (req.op == 0 ? 12u : 16u) && b[0] == 0 && b[1] == 128 + req.op && b[2] == 0 && b[3] == 0);
    CHECK(r.epoch == get32(b + 4));
    if (req.op == 0) check_address(b, &req, &r);
    else check_mapping(b, &req, &r);
    return 0;
}
