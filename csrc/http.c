/* HTTP engine: curl's multi_socket API on one epoll instance (curl's
 * "multi_socket" pattern, as in its hiperfifo and ephiperfifo examples).
 * curl tells us through the socket callback which fds to watch for what;
 * we keep them in the epoll set. Its timer callback gives the time of the
 * next timeout; the caller asks pm_http_timeout() and calls step then. */
#include "http.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include "visibility.h" /* last: see there */

#define DEFAULT_MAX_BODY (64u << 20)
/* A peer's response headers, all lines together: far above what etcd or a
 * router sends, far below what would hurt (curl alone allows 300 KiB). */
#define MAX_HEADER_BYTES (64u << 10)
#define EPOLL_BATCH 64

typedef struct xfer {
    CURL *easy;
    uint64_t id;
    int stream;
    int too_big; /* 1: the body outgrew max; 2: the headers outgrew MAX_HEADER_BYTES */
    size_t header_bytes;
    char *buf;
    size_t len, cap, max;
    struct curl_slist *headers;
    char errbuf[CURL_ERROR_SIZE];
    struct xfer *prev, *next;
} xfer;

struct pm_http {
    CURLM *multi;
    int epfd;
    long long deadline; /* monotonic ms of curl's timer; -1: none */
    uint64_t next_id;
    size_t active;
    xfer *xfers;
    pm_http_event *events;
    size_t nevents, cap;
    char errmsg[128];
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc;
static void global_init(void) { global_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* CURLMOPT_SOCKETFUNCTION: keep the epoll set in step with what curl
 * wants. socketp is non-NULL once the fd is in the set. */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    pm_http *h = userp;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(h->epfd, EPOLL_CTL_DEL, s, NULL); /* may be closed already */
        curl_multi_assign(h->multi, s, NULL);
        return 0;
    }
    struct epoll_event ev = {0};
    ev.data.fd = s;
    if (what & CURL_POLL_IN)
        ev.events |= EPOLLIN;
    if (what & CURL_POLL_OUT)
        ev.events |= EPOLLOUT;
    int op = socketp ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(h->epfd, op, s, &ev) < 0) {
        /* an fd number reused before curl told us of the old one's end */
        op = op == EPOLL_CTL_ADD ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
        if (epoll_ctl(h->epfd, op, s, &ev) < 0)
            return -1;
    }
    if (!socketp)
        curl_multi_assign(h->multi, s, h);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: -1 removes the timer. */
static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    pm_http *h = userp;
    h->deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    return 0;
}

static size_t on_body(char *data, size_t size, size_t n, void *userp)
{
    xfer *x = userp;
    size_t len = size * n;
    if (x->len + len > x->max) {
        x->too_big = 1;
        return 0; /* curl fails the transfer with CURLE_WRITE_ERROR */
    }
    if (x->len + len > x->cap) {
        size_t cap = x->cap ? x->cap : 1024;
        while (cap < x->len + len)
            cap *= 2;
        char *buf = realloc(x->buf, cap);
        if (!buf)
            return 0;
        x->buf = buf;
        x->cap = cap;
    }
    memcpy(x->buf + x->len, data, len);
    x->len += len;
    return len;
}

static size_t on_header(char *data, size_t size, size_t n, void *userp)
{
    (void)data;
    xfer *x = userp;
    size_t len = size * n;
    x->header_bytes += len;
    if (x->header_bytes > MAX_HEADER_BYTES) {
        x->too_big = 2;
        return 0; /* curl fails the transfer */
    }
    return len;
}

pm_http *pm_http_new(void)
{
    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK) {
        errno = ENOMEM;
        return NULL;
    }
    pm_http *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->deadline = -1;
    h->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (h->epfd < 0) {
        int saved = errno;
        free(h);
        errno = saved;
        return NULL;
    }
    h->multi = curl_multi_init();
    if (!h->multi) {
        close(h->epfd);
        free(h);
        errno = ENOMEM;
        return NULL;
    }
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
    return h;
}

int pm_http_fd(const pm_http *h) { return h->epfd; }
size_t pm_http_active(const pm_http *h) { return h->active; }

static void xfer_free(pm_http *h, xfer *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        h->xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    curl_multi_remove_handle(h->multi, x->easy);
    curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->headers);
    free(x->buf);
    free(x);
    h->active--;
}

#define SET(opt, val) (rc == CURLE_OK ? (rc = curl_easy_setopt(x->easy, opt, val)) : rc)

static CURLcode configure(xfer *x, const pm_http_request *req, pm_http *h)
{
    CURLcode rc = CURLE_OK;
    /* no "Expect: 100-continue" wait before a body over 1 KiB */
    x->headers = curl_slist_append(NULL, "Expect:");
    if (x->headers && req->body) {
        const char *ctype = req->content_type ? req->content_type : "application/json";
        snprintf(h->errmsg, sizeof(h->errmsg), "Content-Type: %s", ctype);
        struct curl_slist *l = curl_slist_append(x->headers, h->errmsg);
        if (!l) {
            curl_slist_free_all(x->headers);
            x->headers = NULL;
        }
    }
    for (size_t i = 0; x->headers && i < req->nheaders; i++) {
        struct curl_slist *l = curl_slist_append(x->headers, req->headers[i]);
        if (!l) {
            curl_slist_free_all(x->headers);
            x->headers = NULL;
        }
        x->headers = l;
    }
    if (!x->headers)
        return CURLE_OUT_OF_MEMORY;
    SET(CURLOPT_URL, req->url);
    SET(CURLOPT_PRIVATE, x);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, x);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, x);
    SET(CURLOPT_ERRORBUFFER, x->errbuf);
    SET(CURLOPT_HTTPHEADER, x->headers);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    if (req->body) {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        SET(CURLOPT_COPYPOSTFIELDS, req->body);
    }
    if (req->method)
        SET(CURLOPT_CUSTOMREQUEST, req->method);
    if (req->timeout_ms > 0)
        SET(CURLOPT_TIMEOUT_MS, req->timeout_ms);
    if (req->connect_timeout_ms > 0)
        SET(CURLOPT_CONNECTTIMEOUT_MS, req->connect_timeout_ms);
    if (req->userpwd) {
        SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        SET(CURLOPT_USERPWD, req->userpwd);
    }
    if (req->cacert)
        SET(CURLOPT_CAINFO, req->cacert);
    if (req->cert)
        SET(CURLOPT_SSLCERT, req->cert);
    if (req->key)
        SET(CURLOPT_SSLKEY, req->key);
    if (req->insecure) {
        SET(CURLOPT_SSL_VERIFYPEER, 0L);
        SET(CURLOPT_SSL_VERIFYHOST, 0L);
    }
    return rc;
}

uint64_t pm_http_start(pm_http *h, const pm_http_request *req, const char **code, const char **err)
{
    *code = "unsupported";
    if (!req->url || (strncasecmp(req->url, "http://", 7) && strncasecmp(req->url, "https://", 8))) {
        *err = "only http:// and https:// URLs";
        return 0;
    }
    *code = "protocol";
    xfer *x = calloc(1, sizeof(*x));
    if (!x || !(x->easy = curl_easy_init())) {
        free(x);
        *err = "out of memory";
        return 0;
    }
    x->id = ++h->next_id;
    x->stream = req->stream;
    x->max = req->max_body ? req->max_body : DEFAULT_MAX_BODY;
    x->next = h->xfers;
    if (h->xfers)
        h->xfers->prev = x;
    h->xfers = x;
    h->active++;
    CURLcode rc = configure(x, req, h);
    if (rc != CURLE_OK) {
        snprintf(h->errmsg, sizeof(h->errmsg), "%s", curl_easy_strerror(rc));
        *err = h->errmsg;
        xfer_free(h, x);
        return 0;
    }
    CURLMcode mrc = curl_multi_add_handle(h->multi, x->easy);
    if (mrc != CURLM_OK) {
        snprintf(h->errmsg, sizeof(h->errmsg), "%s", curl_multi_strerror(mrc));
        *err = h->errmsg;
        xfer_free(h, x);
        return 0;
    }
    return x->id;
}

static void clear_events(pm_http *h)
{
    for (size_t i = 0; i < h->nevents; i++)
        free(h->events[i].body);
    h->nevents = 0;
}

static pm_http_event *push_event(pm_http *h)
{
    if (h->nevents == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 16;
        pm_http_event *ev = realloc(h->events, cap * sizeof(*ev));
        if (!ev)
            return NULL;
        h->events = ev;
        h->cap = cap;
    }
    pm_http_event *ev = &h->events[h->nevents++];
    memset(ev, 0, sizeof(*ev));
    return ev;
}

/* Hands x's buffered body to ev (the event frees it at the next step). */
static void take_body(xfer *x, pm_http_event *ev)
{
    ev->body = x->buf;
    ev->len = x->len;
    x->buf = NULL;
    x->len = x->cap = 0;
}

/* The code word for a failed transfer (docs/design.md, "Errors"). */
static const char *code_word(CURLcode rc, long os_errno, int too_big)
{
    if (too_big)
        return "protocol";
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_COULDNT_CONNECT:
        return os_errno == ECONNREFUSED ? "refused" : "unreachable";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return "unreachable";
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
        return "closed";
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_LOGIN_DENIED:
        return "denied";
    case CURLE_URL_MALFORMAT:
    case CURLE_NOT_BUILT_IN:
        return "unsupported";
    default:
        return "protocol";
    }
}

static void finish(pm_http *h, CURL *easy, CURLcode rc)
{
    xfer *x = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
    pm_http_event *ev = push_event(h);
    if (!ev) { /* out of memory: drop the result rather than the engine */
        xfer_free(h, x);
        return;
    }
    ev->id = x->id;
    ev->kind = PM_HTTP_DONE;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &ev->status);
    if (rc != CURLE_OK) {
        long os_errno = 0;
        curl_easy_getinfo(easy, CURLINFO_OS_ERRNO, &os_errno);
        ev->code = code_word(rc, os_errno, x->too_big);
        if (x->too_big)
            ev->error = x->too_big == 2 ? "response headers too large" : "response body too large";
        else
            ev->error = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
        /* errbuf lives in x: copy it into the event's body slot */
        size_t n = strlen(ev->error);
        char *copy = malloc(n + 1);
        if (copy) {
            memcpy(copy, ev->error, n + 1);
            ev->body = copy;
            ev->len = 0;
            ev->error = copy;
        } else {
            ev->error = curl_easy_strerror(rc);
        }
    } else {
        take_body(x, ev);
    }
    xfer_free(h, x);
}

size_t pm_http_step(pm_http *h, pm_http_event **out)
{
    clear_events(h);
    int running;
    struct epoll_event evs[EPOLL_BATCH];
    for (int round = 0; round < 16; round++) {
        int n = epoll_wait(h->epfd, evs, EPOLL_BATCH, 0);
        for (int i = 0; i < n; i++) {
            int flags = 0;
            if (evs[i].events & (EPOLLIN | EPOLLHUP))
                flags |= CURL_CSELECT_IN;
            if (evs[i].events & EPOLLOUT)
                flags |= CURL_CSELECT_OUT;
            if (evs[i].events & EPOLLERR)
                flags |= CURL_CSELECT_ERR;
            curl_multi_socket_action(h->multi, evs[i].data.fd, flags, &running);
        }
        if (n < EPOLL_BATCH)
            break;
    }
    if (h->deadline >= 0 && now_ms() >= h->deadline) {
        h->deadline = -1; /* curl may set a new one inside the call */
        curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    for (xfer *x = h->xfers; x; x = x->next) {
        if (x->stream && x->len) {
            pm_http_event *ev = push_event(h);
            if (!ev)
                break;
            ev->id = x->id;
            ev->kind = PM_HTTP_DATA;
            curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &ev->status);
            take_body(x, ev);
        }
    }
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(h->multi, &left)))
        if (msg->msg == CURLMSG_DONE)
            finish(h, msg->easy_handle, msg->data.result);
    *out = h->events;
    return h->nevents;
}

long pm_http_timeout(const pm_http *h)
{
    if (h->deadline < 0)
        return -1;
    long long left = h->deadline - now_ms();
    return left > 0 ? (long)left : 0;
}

int pm_http_cancel(pm_http *h, uint64_t id)
{
    for (xfer *x = h->xfers; x; x = x->next)
        if (x->id == id) {
            xfer_free(h, x);
            return 1;
        }
    return 0;
}

void pm_http_free(pm_http *h)
{
    if (!h)
        return;
    while (h->xfers)
        xfer_free(h, h->xfers);
    clear_events(h);
    free(h->events);
    curl_multi_cleanup(h->multi);
    close(h->epfd);
    free(h);
}
