/* Digests and encodings from OpenSSL's libcrypto, for the Lua layer (the
 * WebSocket handshake's SHA-1 and base64): a well-kept library, not code
 * of our own. */
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "lua_util.h"
#include "visibility.h" /* last: see there */

/* core.sha1(s) -> 20 raw bytes */
static int l_sha1(lua_State *L)
{
    size_t len;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1(s, len, md);
    lua_pushlstring(L, (const char *)md, sizeof(md));
    return 1;
}

/* core.base64(s) -> RFC 4648 base64 with padding, no line breaks */
static int l_base64(lua_State *L)
{
    size_t len;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    luaL_argcheck(L, len <= (size_t)0x30000000, 1, "string too long");
    luaL_Buffer b;
    size_t out_len = 4 * ((len + 2) / 3);
    unsigned char *out = (unsigned char *)luaL_buffinitsize(L, &b, out_len + 1);
    int n = EVP_EncodeBlock(out, s, (int)len);
    luaL_pushresultsize(&b, (size_t)n);
    return 1;
}

int pm_open_crypto(lua_State *L)
{
    static const luaL_Reg fns[] = {{"sha1", l_sha1}, {"base64", l_base64}, {NULL, NULL}};
    luaL_setfuncs(L, fns, 0);
    return 0;
}
