/* portman.idna: internationalized domain names to the ASCII form DNS
 * carries (IDNA2008 with UTS #46 non-transitional mapping, through
 * libidn2), for lua/portman/resolver/names.lua.
 *
 * core.idna_to_ascii(utf8) -> ascii | nil, msg, code
 *
 * Any bytes are accepted without raising: input that is not UTF-8, holds a
 * NUL, or is no valid IDN (a disallowed code point, a label over 63 bytes
 * once encoded, ...) fails with code "protocol" and libidn2's reason. The
 * UTF-8 is checked here first (RFC 3629: no overlong forms, surrogates or
 * code points past U+10FFFF), so libidn2 only ever sees well-formed text. */
#include <idn2.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lua_util.h"
#include "visibility.h" /* last: see there */

/* Longer input is no domain name in any form (253 bytes in ASCII; a
 * UTF-8 code point takes at most 4 bytes, and the A-label form is longer
 * than the U-label): refused before libidn2 spends time on it. */
#define IDNA_MAX_INPUT 1024

/* Is s[0..len) well-formed UTF-8 (RFC 3629)? */
static int utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 1, cp = c & 0x1Fu, min = 0x80;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2, cp = c & 0x0Fu, min = 0x800;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3, cp = c & 0x07u, min = 0x10000;
        } else {
            return 0; /* a continuation byte first, 0xC0/0xC1, or 0xF5.. */
        }
        if (len - i - 1 < n)
            return 0;
        for (size_t k = 1; k <= n; k++) {
            unsigned char cc = s[i + k];
            if ((cc & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (cc & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += n + 1;
    }
    return 1;
}

static int l_to_ascii(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    if (len == 0)
        return pm_fail(L, "protocol", "IDNA: empty name");
    if (len > IDNA_MAX_INPUT)
        return pm_fail(L, "protocol", "IDNA: name of %d bytes is too long", (int)len);
    if (memchr(s, '\0', len))
        return pm_fail(L, "protocol", "IDNA: name holds a NUL byte");
    if (!utf8_valid((const unsigned char *)s, len))
        return pm_fail(L, "protocol", "IDNA: name is not valid UTF-8");
    char *out = NULL;
    int rc = idn2_to_ascii_8z(s, &out, IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
    if (rc != IDN2_OK) {
        idn2_free(out);
        if (rc == IDN2_MALLOC)
            return luaL_error(L, "not enough memory");
        return pm_fail(L, "protocol", "IDNA: %s", idn2_strerror(rc));
    }
    lua_pushstring(L, out);
    idn2_free(out);
    return 1;
}

int pm_open_idna(lua_State *L)
{
    lua_pushcfunction(L, l_to_ascii);
    lua_setfield(L, -2, "idna_to_ascii");
    return 0;
}
