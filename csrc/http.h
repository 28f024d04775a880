/* HTTP client engine over libcurl's multi interface. One pollable fd (an
 * epoll instance fed by curl's socket callback), pm_http_step() to do the
 * ready work and hand back finished transfers (and, for streaming
 * transfers, the body bytes received so far) in one batch, and
 * pm_http_timeout() for curl's timer. Nothing in it blocks: the caller
 * polls the fd, calls step when it is readable or when the timeout is
 * due. Lua-free, so benchmarks and the Lua binding both drive it. */
#ifndef PORTMAN_HTTP_H
#define PORTMAN_HTTP_H

#include <stddef.h>
#include <stdint.h>

typedef struct pm_http pm_http;

typedef struct {
    const char *url;
    const char *method;       /* NULL: POST with a body, GET without */
    const char *body;         /* copied; may be NULL */
    size_t body_len;
    const char *content_type; /* with a body; NULL: application/json */
    const char *const *headers; /* more "Name: value" lines, or NULL */
    size_t nheaders;
    long timeout_ms;          /* whole transfer; 0: none (for streams) */
    long connect_timeout_ms;  /* 0: curl's default */
    int stream;               /* nonzero: deliver body bytes as they arrive */
    size_t max_body;          /* a larger body fails the transfer; 0: 64 MiB */
    const char *userpwd;      /* "user:password" for basic auth, or NULL */
    const char *cacert;       /* PEM file of the CA to trust, or NULL */
    const char *cert, *key;   /* client certificate and key (PEM), or NULL */
    int insecure;             /* nonzero: skip peer and host verification */
} pm_http_request;

enum pm_http_kind {
    PM_HTTP_DATA, /* a streaming transfer received body bytes */
    PM_HTTP_DONE, /* a transfer finished (the last event for its id) */
};

typedef struct {
    uint64_t id;
    int kind;           /* enum pm_http_kind */
    long status;        /* the HTTP status; 0 when none arrived */
    const char *code;   /* DONE: NULL on success, else a code word */
    const char *error;  /* DONE: curl's message when code is set */
    char *body;         /* the body (DONE) or the new bytes (DATA) */
    size_t len;
} pm_http_event;

/* A new engine, or NULL with errno set. */
pm_http *pm_http_new(void);
/* The fd to poll for readability. */
int pm_http_fd(const pm_http *h);
/* Starts a transfer; returns its id (> 0), or 0 with *code set to a code
 * word ("unsupported" for a URL that is not http(s), else "protocol")
 * and *err to a message. */
uint64_t pm_http_start(pm_http *h, const pm_http_request *req, const char **code, const char **err);
/* Does the ready work; *out points at the events, valid until the next
 * step or free. Returns how many. */
size_t pm_http_step(pm_http *h, pm_http_event **out);
/* Milliseconds until step has work without an event on the fd: 0 now,
 * -1 when curl has no timer set. */
long pm_http_timeout(const pm_http *h);
/* Transfers in flight. */
size_t pm_http_active(const pm_http *h);
/* Stops transfer id; nothing more is reported for it. 1 if it was live. */
int pm_http_cancel(pm_http *h, uint64_t id);
/* Stops every transfer, closes the fd, frees h (NULL is fine). */
void pm_http_free(pm_http *h);

#endif
