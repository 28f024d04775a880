/* The request head parser: see httpd.h. */
#include <string.h>
#include <strings.h>

#include "httpd.h"
#include "visibility.h" /* last: see there */

/* tchar of RFC 9110 5.6.2: the characters of a token */
static int is_tchar(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return 1;
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* a field value's character: VCHAR, obs-text, SP or HTAB */
static int is_value_char(unsigned char c)
{
    return c == ' ' || c == '\t' || (c > 0x20 && c != 0x7f);
}

static long bad(const char **why, const char *what)
{
    *why = what;
    return -1;
}

/* The request line p[0..n): 1 when it is whole and good, 0 when it is
 * not whole yet (complete == 0) and good so far, -1 when it is bad. It is
 * checked while it arrives, so that garbage is refused at once. */
static long request_line(const unsigned char *p, size_t n, int complete, pm_httpd_req *req, const char **why)
{
    static const char version[] = "HTTP/1.";
    size_t i = 0;
    while (i < n && is_tchar(p[i]))
        i++;
    if (i == n)
        return complete ? bad(why, "request line: no target") : 0;
    if (p[i] != ' ' || i == 0)
        return bad(why, "request line: bad method");
    req->method = (const char *)p;
    req->method_len = i;
    size_t t = ++i;
    while (i < n && p[i] > 0x20 && p[i] < 0x7f)
        i++;
    if (i == n)
        return complete ? bad(why, "request line: no version") : 0;
    if (p[i] != ' ' || i == t)
        return bad(why, "request line: bad target");
    req->target = (const char *)p + t;
    req->target_len = i - t;
    size_t v = i + 1, left = n - v;
    size_t cmp = left < 7 ? left : 7;
    if (memcmp(p + v, version, cmp) != 0 || left > 8 || (complete && left != 8))
        return bad(why, "request line: not HTTP/1.0 or HTTP/1.1");
    if (left == 8 && p[v + 7] != '0' && p[v + 7] != '1')
        return bad(why, "request line: not HTTP/1.0 or HTTP/1.1");
    if (!complete)
        return 0;
    req->minor = p[v + 7] - '0';
    return 1;
}

/* Does the list value v[0..n) hold the token word (case-insensitively)? */
static int has_token(const unsigned char *v, size_t n, const char *word)
{
    size_t wl = strlen(word), i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < n && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
            i++;
        if (i - s == wl && strncasecmp((const char *)v + s, word, wl) == 0)
            return 1;
    }
    return 0;
}

static long content_length(const unsigned char *v, size_t n, pm_httpd_req *req, const char **why)
{
    long long x = 0;
    if (n == 0 || n > 18)
        return bad(why, "Content-Length: not a length");
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return bad(why, "Content-Length: not a length");
        x = x * 10 + (v[i] - '0');
    }
    if (req->content_length >= 0 && req->content_length != x)
        return bad(why, "Content-Length: two different lengths");
    req->content_length = x;
    return 1;
}

/* One header field line p[0..n) (whole, without its line end). */
static long field(const unsigned char *p, size_t n, pm_httpd_req *req, const char **why)
{
    if (p[0] == ' ' || p[0] == '\t')
        return bad(why, "header: obsolete line folding");
    size_t i = 0;
    while (i < n && is_tchar(p[i]))
        i++;
    if (i == 0 || i == n || p[i] != ':')
        return bad(why, "header: bad field name");
    size_t name_len = i++;
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    size_t v = i, end = n;
    for (; i < n; i++)
        if (!is_value_char(p[i]))
            return bad(why, "header: bad character in a field value");
    while (end > v && (p[end - 1] == ' ' || p[end - 1] == '\t'))
        end--;
    if (++req->nheaders > PM_HTTPD_MAX_HEADERS)
        return bad(why, "header: too many fields");
    const char *name = (const char *)p;
    if (name_len == 14 && strncasecmp(name, "content-length", 14) == 0)
        return content_length(p + v, end - v, req, why);
    if (name_len == 17 && strncasecmp(name, "transfer-encoding", 17) == 0)
        req->chunked = 1;
    else if (name_len == 10 && strncasecmp(name, "connection", 10) == 0) {
        req->close |= has_token(p + v, end - v, "close");
        req->keep_alive |= has_token(p + v, end - v, "keep-alive");
    } else if (name_len == 4 && strncasecmp(name, "host", 4) == 0 && ++req->host > 1)
        return bad(why, "header: two Host fields");
    return 1;
}

/* The end of a whole head: what RFC 9112 asks of it as a whole. */
static long finish(pm_httpd_req *req, size_t head, const char **why)
{
    if (req->minor == 1 && req->host == 0)
        return bad(why, "header: HTTP/1.1 without a Host field");
    if (req->chunked && req->content_length >= 0)
        return bad(why, "header: both Transfer-Encoding and Content-Length");
    return (long)head;
}

long pm_httpd_parse(const char *buf, size_t len, pm_httpd_req *req, const char **why)
{
    const unsigned char *b = (const unsigned char *)buf;
    memset(req, 0, sizeof(*req));
    req->content_length = -1;
    *why = NULL;
    size_t pos = 0;
    /* empty lines before the request line are ignored (RFC 9112 2.2) */
    while (pos < len && (b[pos] == '\r' || b[pos] == '\n')) {
        if (b[pos] == '\r' && pos + 1 < len && b[pos + 1] != '\n')
            return bad(why, "a bare CR");
        pos++;
    }
    int first = 1;
    while (pos < len) {
        const unsigned char *nl = memchr(b + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - b) : len;
        if (!nl && !first)
            return 0; /* a partial header line: checked once whole */
        if (end > pos && b[end - 1] == '\r')
            end--; /* a partial line's last CR may be its CRLF's first half */
        long r;
        if (first) {
            r = request_line(b + pos, end - pos, nl != NULL, req, why);
            if (r <= 0)
                return r;
            first = 0;
        } else if (end == pos) {
            return finish(req, (size_t)(nl - b) + 1, why);
        } else if ((r = field(b + pos, end - pos, req, why)) < 0) {
            return r;
        }
        pos = (size_t)(nl - b) + 1;
    }
    return 0;
}
