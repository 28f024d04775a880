/* The request head parser of portman's small HTTP/1.1 server (the
 * daemon's /metrics and status page, lua/portman/httpd.lua). It parses a
 * request line and header fields as RFC 9112 writes them, strictly: a
 * token method, a target of visible characters, HTTP/1.0 or HTTP/1.1,
 * field names that are tokens with the colon right after them, field
 * values of visible characters, spaces and tabs, no obsolete line folding.
 * Lines end in CRLF (a bare LF is taken too, as RFC 9112 2.2 allows; a
 * bare CR is refused). It reads only the bytes it is given, keeps no
 * state between calls and allocates nothing: the caller calls it again
 * with the bytes so far when more arrive, and caps their size itself.
 * Lua-free, so the fuzz harness drives it as the binding does. */
#ifndef PORTMAN_HTTPD_H
#define PORTMAN_HTTPD_H

#include <stddef.h>

#define PM_HTTPD_MAX_HEADERS 100

typedef struct {
    const char *method; /* into the buffer */
    size_t method_len;
    const char *target;
    size_t target_len;
    int minor;              /* HTTP/1.minor: 0 or 1 */
    long long content_length; /* -1 when there is none */
    int chunked;            /* a Transfer-Encoding field came */
    int close;              /* Connection: close */
    int keep_alive;         /* Connection: keep-alive */
    int host;               /* how many Host fields came */
    size_t nheaders;
} pm_httpd_req;

/* Parses the head at buf[0..len).
 * Returns the head's length (through its empty line) when it is complete,
 * 0 when every complete line so far is well-formed and more bytes are
 * needed, -1 when it is malformed (*why then says how; a static string). */
long pm_httpd_parse(const char *buf, size_t len, pm_httpd_req *req, const char **why);

#endif
