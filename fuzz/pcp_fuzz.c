/* libFuzzer target for the PCP answer parser (pm_pcp_parse): the first 15
 * bytes choose the request (byte 0: bit 0 MAP, bit 1 a delete, bit 2 UDP,
 * bits 3-4 the request answered before; bytes 1-2 the internal port;
 * 3-14 the nonce); the rest is the gateway's answer. Whatever the bytes,
 * the parser must decide without reading past them, and an answer it
 * accepts must hold only values portman can use and save: they encode
 * back to the bytes that came. */
#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

#include "pcp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)
#define REQ_BYTES 15

static uint32_t get32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static void check_map(const uint8_t *b, size_t n, const struct pm_pcp_req *req, const struct pm_pcp_result *r)
{
    CHECK(n >= PM_PCP_MAP_LEN);
    CHECK(memcmp(b + 24, req->nonce, PM_PCP_NONCE) == 0 && b[36] == req->proto);
    CHECK(r->internal_port == req->internal_port && (b[40] << 8 | b[41]) == r->internal_port);
    if (req->lifetime == 0) {
        CHECK(get32(b + 4) == 0 && r->lifetime == 0 && r->external_port == 0 && r->external_ip[0] == 0);
        return;
    }
    CHECK(r->lifetime >= 1 && r->lifetime <= PM_PCP_MAX_LIFETIME && get32(b + 4) == r->lifetime);
    CHECK(r->external_port >= 1 && r->external_port <= 65535 && (b[42] << 8 | b[43]) == r->external_port);
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    CHECK(memcmp(b + 44, prefix, 12) == 0);
    struct in_addr a;
    CHECK(inet_pton(AF_INET, r->external_ip, &a) == 1 && memcmp(&a, b + 56, 4) == 0);
    CHECK(b[56] != 0 && b[56] != 127 && b[56] < 224 && memcmp(b + 56, req->gateway, 4) != 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < REQ_BYTES) return 0;
    struct pm_pcp_req req = {.op = data[0] & 1, .lifetime = data[0] & 2 ? 0 : 7200,
                             .proto = data[0] & 4 ? 17 : 6,
                             .internal_port = (uint16_t)(data[1] << 8 | data[2]),
                             .client = {192, 168, 1, 10}, .gateway = {192, 168, 1, 1}};
    if (req.internal_port == 0) req.internal_port = 1; /* the binding asks 1-65535 */
    memcpy(req.nonce, data + 3, PM_PCP_NONCE);
    int prev_op = (data[0] >> 3) % 3 - 1; /* -1: none */
    const uint8_t *b = data + REQ_BYTES;
    size_t n = size - REQ_BYTES;
    /* the request encodes to RFC 6887's length and fields */
    uint8_t pkt[PM_PCP_MAP_LEN];
    size_t len = pm_pcp_build(pkt, sizeof pkt, &req);
    CHECK(len == (req.op ? 60u : 24u) && pkt[0] == 2 && pkt[1] == req.op);
    struct pm_pcp_result r;
    int used = pm_pcp_parse(b, n, &req, prev_op, &r);
    if (!used) {
        /* only a late copy of the previous answer is ignored */
        CHECK(prev_op >= 0 && prev_op != req.op && n >= 4 && b[0] == 2 && b[1] == (0x80 | prev_op));
        return 0;
    }
    CHECK(r.done == 1 && r.op == req.op);
    if (r.error) {
        CHECK(r.code != NULL && r.why[0] != 0 && memchr(r.why, 0, sizeof r.why) != NULL);
        CHECK(r.external_ip[0] == 0 && r.external_port == 0 && r.lifetime == 0);
        return 0;
    }
    /* accepted: version 2, R and the request's opcode, result 0, 24-1100 bytes in 4s */
    CHECK(n >= PM_PCP_HEADER && n <= PM_PCP_MAX_MSG && n % 4 == 0);
    CHECK(b[0] == 2 && b[1] == (0x80 | req.op) && b[3] == 0 && r.epoch == get32(b + 8));
    if (req.op == PM_PCP_MAP) check_map(b, n, &req, &r);
    return 0;
}
