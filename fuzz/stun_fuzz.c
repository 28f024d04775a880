/* libFuzzer target for the STUN parser: any bytes must parse or fail
 * cleanly, and whatever parses must survive every accessor, re-encode
 * attribute by attribute to the same bytes, and verify integrity without
 * reading outside the input (ASan watches the edges). */
#include <stdint.h>
#include <string.h>

#include "crc32.h"
#include "stun.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void reencode(const pm_stun_msg *m)
{
    static uint8_t out[65535 + PM_STUN_HEADER];
    pm_stun_writer w;
    pm_stun_begin(&w, out, sizeof(out), m->method, m->cls, m->tid);
    for (unsigned i = 0; i < m->nattrs; i++) {
        const pm_stun_attr *a = &m->attrs[i];
        const uint8_t *v = m->buf + a->off;
        if (a->type == PM_STUN_XOR_MAPPED_ADDRESS || a->type == PM_STUN_MAPPED_ADDRESS) {
            pm_stun_addr addr;
            pm_stun_get_addr(m, a, &addr);
            pm_stun_add_addr(&w, a->type, &addr);
            /* the decoded address must encode back to the same value, but
             * for the reserved first byte that receivers ignore */
            if (memcmp(out + w.len - a->len + 1, v + 1, a->len - 1u) != 0)
                __builtin_trap();
        } else {
            pm_stun_add(&w, a->type, v, a->len, 0);
        }
    }
    if (!pm_stun_finish(&w) && m->len <= sizeof(out))
        __builtin_trap(); /* what parsed must fit again */
}

/* A mutated message almost never keeps a valid FINGERPRINT: so that the
 * fuzzer reaches what lies past that check, a message whose only fault is
 * its fingerprint is parsed again with the CRC made right. */
static int parse_fixed(pm_stun_msg *m, const uint8_t *data, size_t size, uint8_t *copy)
{
    const char *why = NULL;
    if (pm_stun_parse(m, data, size, &why) == 0)
        return 0;
    if (!why)
        __builtin_trap();
    if (strcmp(why, "FINGERPRINT mismatch") != 0)
        return -1;
    memcpy(copy, data, size);
    uint32_t crc = pm_crc32(0, copy, size - 8) ^ PM_STUN_FINGERPRINT_XOR;
    copy[size - 4] = (uint8_t)(crc >> 24);
    copy[size - 3] = (uint8_t)(crc >> 16);
    copy[size - 2] = (uint8_t)(crc >> 8);
    copy[size - 1] = (uint8_t)crc;
    if (pm_stun_parse(m, copy, size, &why) < 0)
        __builtin_trap(); /* the fingerprint was the only fault */
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t copy[65535 + PM_STUN_HEADER];
    pm_stun_msg m;
    pm_stun_is_stun(data, size);
    if (size > sizeof(copy) || parse_fixed(&m, data, size, copy) < 0)
        return 0;
    data = m.buf;
    if (m.nattrs > PM_STUN_MAX_ATTRS)
        __builtin_trap();
    for (unsigned i = 0; i < m.nattrs; i++) {
        const pm_stun_attr *a = &m.attrs[i];
        if ((size_t)a->off + a->len > size)
            __builtin_trap();
        pm_stun_attr_name(a->type);
        if (a->type == PM_STUN_ALTERNATE_SERVER || a->type == PM_STUN_OTHER_ADDRESS ||
            a->type == PM_STUN_RESPONSE_ORIGIN) {
            pm_stun_addr addr;
            pm_stun_get_addr(&m, a, &addr);
        }
    }
    static const uint8_t key[] = "VOkJxbRl1RmTxUk/WvJxBt";
    pm_stun_check_integrity(&m, key, sizeof(key) - 1);
    reencode(&m);
    return 0;
}
