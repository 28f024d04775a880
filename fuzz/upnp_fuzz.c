/* libFuzzer target for the values portman takes from an IGD's answers
 * (upnp.c's pm_upnp_parse_*): the input is the strings miniupnpc would
 * hand over, split at newlines (external port, internal client, internal
 * port, protocol, description, enabled, lease duration). Each must parse
 * strictly or be refused: the parsers agree with a plain reading of the
 * rules (all digits, in range; a dotted quad), and an accepted entry holds
 * only values portman can use and save. */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "upnp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)
#define FIELDS 7

/* The rule, read plainly: 1-10 decimal digits and nothing else, in lo-hi. */
static int ref_number(const char *s, unsigned long long lo, unsigned long long hi)
{
    size_t len = strlen(s);
    if (len == 0 || len > 10 || strspn(s, "0123456789") != len) return 0;
    unsigned long long v = strtoull(s, NULL, 10);
    return v >= lo && v <= hi;
}

static void check_one(const char *s)
{
    int port = pm_upnp_parse_port(s);
    CHECK((port > 0) == ref_number(s, 1, 65535));
    if (port > 0) CHECK((unsigned long long)port == strtoull(s, NULL, 10));
    unsigned lease = 12345;
    int ok = pm_upnp_parse_lease(s, &lease) == 0;
    CHECK(ok == ref_number(s, 0, PM_UPNP_MAX_LEASE));
    if (ok) CHECK(lease == strtoull(s, NULL, 10));
    else CHECK(lease == 12345);
    int b = pm_upnp_parse_bool(s);
    CHECK(b == -1 || b == 0 || b == 1);
    struct in_addr a;
    int quad = inet_pton(AF_INET, s, &a) == 1;
    CHECK((pm_upnp_parse_ipv4(s, 0) == 0) == quad);
    if (pm_upnp_parse_ipv4(s, 1) == 0) {
        unsigned top = ntohl(a.s_addr) >> 24;
        CHECK(quad && top != 0 && top != 127 && top < 224);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096) return 0;
    char *buf = malloc(size + 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    const char *f[FIELDS];
    char *p = buf;
    for (int i = 0; i < FIELDS; i++) {
        f[i] = p;
        char *nl = strchr(p, '\n');
        if (nl) {
            *nl = 0;
            p = nl + 1;
        } else {
            p += strlen(p); /* the fields left are empty */
        }
    }
    for (int i = 0; i < FIELDS; i++) check_one(f[i]);
    struct pm_upnp_entry e;
    char why[64];
    memset(why, 'x', sizeof why);
    if (pm_upnp_parse_entry(&e, f[0], f[1], f[2], f[3], f[4], f[5], f[6], why, sizeof why) == 0) {
        CHECK(e.external_port >= 1 && e.external_port <= 65535);
        CHECK(e.internal_port >= 1 && e.internal_port <= 65535);
        CHECK(e.lease <= PM_UPNP_MAX_LEASE);
        CHECK(e.enabled == 0 || e.enabled == 1);
        CHECK(strcmp(e.proto, "TCP") == 0 || strcmp(e.proto, "UDP") == 0);
        CHECK(strcasecmp(e.proto, f[3]) == 0);
        struct in_addr a;
        CHECK(inet_pton(AF_INET, e.internal_ip, &a) == 1 && strcmp(e.internal_ip, f[1]) == 0);
        CHECK(strncmp(e.desc, f[4], sizeof e.desc - 1) == 0);
    } else {
        CHECK(memchr(why, 0, sizeof why) != NULL && why[0] != 0);
        CHECK(e.external_port == 0 && e.internal_port == 0 && e.internal_ip[0] == 0);
    }
    free(buf);
    return 0;
}
