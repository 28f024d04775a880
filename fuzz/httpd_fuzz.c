/* libFuzzer target for the HTTP request head parser (pm_httpd_parse).
 * Whatever the bytes, the parser must decide without reading past them
 * (ASan), and what it decides must hold together:
 * - a complete head's length is within the bytes, ends in LF, and its
 *   method and target point into them, a token and visible characters;
 * - the same head with more bytes after it parses the same way (the
 *   bytes after a head are never part of it);
 * - a head cut anywhere before its end is "more needed" or malformed,
 *   never complete;
 * - a malformed input says why. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "httpd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

static void check_head(const char *buf, size_t size, long r, const pm_httpd_req *req)
{
    CHECK((size_t)r <= size && buf[r - 1] == '\n');
    CHECK(req->method >= buf && req->method_len > 0 && req->method + req->method_len <= buf + r);
    CHECK(req->target > req->method && req->target_len > 0 && req->target + req->target_len <= buf + r);
    for (size_t i = 0; i < req->target_len; i++)
        CHECK(req->target[i] > 0x20 && req->target[i] < 0x7f);
    CHECK(req->minor == 0 || req->minor == 1);
    CHECK(req->content_length >= -1);
    CHECK(req->nheaders <= PM_HTTPD_MAX_HEADERS);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16384)
        return 0;
    /* an exact-size copy, so ASan sees a read past the end */
    char *buf = malloc(size ? size : 1);
    memcpy(buf, data, size);
    pm_httpd_req req;
    const char *why;
    long r = pm_httpd_parse(buf, size, &req, &why);
    CHECK(r >= -1);
    if (r < 0)
        CHECK(why != NULL && why[0] != '\0');
    if (r > 0) {
        check_head(buf, size, r, &req);
        pm_httpd_req again;
        /* the head alone: the same answer */
        CHECK(pm_httpd_parse(buf, (size_t)r, &again, &why) == r);
        CHECK(again.method_len == req.method_len && again.target_len == req.target_len);
        CHECK(again.content_length == req.content_length && again.close == req.close);
        /* cut before its end: never complete */
        for (size_t cut = 0; cut < (size_t)r; cut += 1 + cut / 8)
            CHECK(pm_httpd_parse(buf, cut, &again, &why) <= 0);
    }
    free(buf);
    return 0;
}
