/* libFuzzer target for SSDP answers (upnp.c's pm_upnp_parse_ssdp): the
 * input is one UDP payload, as recvfrom hands it over (not NUL-terminated:
 * it is copied to a buffer of exactly its size, so a read past its end is
 * caught). An accepted answer's LOCATION is an http:// URL of printable
 * bytes that fits its buffer and appears in the input; pm_upnp_url_ipv4
 * reads it back. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "upnp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 2048) return 0;
    char *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    char loc[64];
    memset(loc, 'x', sizeof loc);
    if (pm_upnp_parse_ssdp(buf, size, loc, sizeof loc) == 0) {
        size_t n = strnlen(loc, sizeof loc);
        CHECK(n > 7 && n < sizeof loc);
        CHECK(strncasecmp(loc, "http://", 7) == 0);
        for (size_t i = 0; i < n; i++) CHECK(loc[i] > 0x20 && loc[i] < 0x7f);
        CHECK(memmem(buf, size, loc, n) != NULL);
        CHECK(strncasecmp(buf, "HTTP/1.", 7) == 0);
        unsigned a;
        (void)pm_upnp_url_ipv4(loc, &a);
    }
    free(buf);
    return 0;
}
