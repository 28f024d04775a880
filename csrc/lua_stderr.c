/* Capturing the process's stderr, so that what C libraries (miniupnpc's
 * perror and fprintf(stderr, ...)), child processes and stray writes put
 * on fd 2 becomes log events (portman.log; docs/design.md, "Logs").
 *
 *   core.stderr_capture([max_line]) -> cap: fd 2 becomes the write end of a
 *     pipe. A reader thread drains the pipe at once, so a writer never
 *     waits on the loop (a child run by os.execute while the loop is
 *     blocked, miniupnpc on its worker thread). It splits the bytes into
 *     lines of at most max_line bytes (4096; the rest of a longer line is
 *     dropped and counted) and queues them, up to QUEUE_MAX bytes (further
 *     lines are dropped and counted), signalling an eventfd.
 *   cap:fd() -> the eventfd, for the loop to poll;
 *   cap:step() -> {line, ..., truncated = {[i] = bytes dropped}?,
 *     dropped = bytes?} or false when nothing is queued;
 *   cap:stream() -> a Lua file writing to the original stderr (its own
 *     fd), for the logger's own lines;
 *   cap:restore() puts the original stderr back on fd 2, lets the thread
 *     read what the pipe still holds, and ends it; a last step() returns
 *     those lines. Idempotent;
 *   cap:close() (also __gc, __close): restore(), then frees the rest. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "lua_util.h"
#include "visibility.h" /* last: see there */

#define CAPTURE "portman.stderr_capture"
#define QUEUE_MAX (1024 * 1024) /* bytes of lines waiting for the loop */
#define LINE_MAX_CAP (1024 * 1024)

/* A queue of records: [size_t len][size_t truncated][len bytes]. */
typedef struct {
    char *data;
    size_t len, cap;
} queue;

typedef struct {
    int orig;   /* a dup of the original fd 2; -1 once restored */
    int rfd;    /* the pipe's read end (the thread's) */
    int efd;    /* lines are queued */
    int stopfd; /* tells the thread to finish */
    int thread_started, mutex_ready, closed;
    pthread_t thread;
    pthread_mutex_t mu;
    size_t max_line;
    /* the thread's line in progress */
    char *cur;
    size_t cur_len, cur_cut;
    /* under mu: the thread appends to q, step() swaps it with out */
    queue q, out;
    uint64_t dropped;
} capture;

static void close_fd(int *fd)
{
    if (*fd >= 0) {
        (void)close(*fd);
        *fd = -1;
    }
}

static int reserve(queue *q, size_t more)
{
    if (q->len + more <= q->cap)
        return 1;
    size_t cap = q->cap ? q->cap : 4096;
    while (cap < q->len + more)
        cap *= 2;
    char *d = realloc(q->data, cap);
    if (!d)
        return 0;
    q->data = d;
    q->cap = cap;
    return 1;
}

/* Queues the line in progress (thread side). */
static void push_line(capture *c)
{
    size_t head = 2 * sizeof(size_t);
    pthread_mutex_lock(&c->mu);
    if (c->q.len + head + c->cur_len > QUEUE_MAX || !reserve(&c->q, head + c->cur_len)) {
        c->dropped += c->cur_len + c->cur_cut + 1;
    } else {
        memcpy(c->q.data + c->q.len, &c->cur_len, sizeof(size_t));
        memcpy(c->q.data + c->q.len + sizeof(size_t), &c->cur_cut, sizeof(size_t));
        memcpy(c->q.data + c->q.len + head, c->cur, c->cur_len);
        c->q.len += head + c->cur_len;
    }
    uint64_t one = 1;
    (void)!write(c->efd, &one, sizeof one);
    pthread_mutex_unlock(&c->mu);
    c->cur_len = c->cur_cut = 0;
}

static void feed(capture *c, const char *p, size_t n)
{
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t seg = nl ? (size_t)(nl - p) : n;
        size_t room = c->max_line - c->cur_len;
        size_t take = seg < room ? seg : room;
        memcpy(c->cur + c->cur_len, p, take);
        c->cur_len += take;
        c->cur_cut += seg - take;
        if (!nl)
            return;
        push_line(c);
        p += seg + 1;
        n -= seg + 1;
    }
}

static void *reader(void *arg)
{
    capture *c = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals are the loop's */
    char buf[4096];
    int done = 0;
    while (!done) {
        struct pollfd p[2] = {{.fd = c->rfd, .events = POLLIN}, {.fd = c->stopfd, .events = POLLIN}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        done = p[1].revents != 0; /* but first what the pipe holds now */
        for (;;) {
            ssize_t r = read(c->rfd, buf, sizeof buf);
            if (r > 0) {
                feed(c, buf, (size_t)r);
                continue;
            }
            if (r < 0 && errno == EINTR)
                continue;
            if (r == 0 || errno != EAGAIN)
                done = 1; /* every writer is gone, or the pipe broke */
            break;
        }
    }
    if (c->cur_len > 0 || c->cur_cut > 0)
        push_line(c); /* a last line without its newline */
    return NULL;
}

static void restore(capture *c)
{
    if (c->orig >= 0) {
        while (dup2(c->orig, 2) < 0 && errno == EINTR) {
        }
        close_fd(&c->orig);
    }
    if (c->thread_started) {
        uint64_t one = 1;
        (void)!write(c->stopfd, &one, sizeof one);
        pthread_join(c->thread, NULL);
        c->thread_started = 0;
    }
    close_fd(&c->rfd);
    close_fd(&c->stopfd);
}

static void release(capture *c)
{
    if (c->closed)
        return;
    restore(c);
    close_fd(&c->efd);
    free(c->cur);
    free(c->q.data);
    free(c->out.data);
    c->cur = c->q.data = c->out.data = NULL;
    if (c->mutex_ready)
        pthread_mutex_destroy(&c->mu);
    c->mutex_ready = 0;
    c->closed = 1;
}

static capture *check_capture(lua_State *L)
{
    capture *c = luaL_checkudata(L, 1, CAPTURE);
    if (c->closed)
        luaL_error(L, "attempt to use a closed stderr capture");
    return c;
}

/* core.stderr_capture([max_line]) -> cap, or nil, msg, code */
static int l_capture(lua_State *L)
{
    lua_Integer max_line = luaL_optinteger(L, 1, 4096);
    luaL_argcheck(L, max_line >= 1 && max_line <= LINE_MAX_CAP, 1, "max_line: 1-1048576 expected");
    capture *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    c->orig = c->rfd = c->efd = c->stopfd = -1;
    c->max_line = (size_t)max_line;
    luaL_setmetatable(L, CAPTURE);
    int p[2] = {-1, -1}, err = 0;
    const char *what = NULL;
    if ((c->cur = malloc(c->max_line)) == NULL) {
        err = ENOMEM, what = "stderr capture";
    } else if ((err = pthread_mutex_init(&c->mu, NULL)) != 0) {
        what = "mutex";
    } else if ((c->mutex_ready = 1, pipe2(p, O_CLOEXEC)) < 0) {
        err = errno, what = "pipe";
    } else if ((c->rfd = p[0], fcntl(c->rfd, F_SETFL, O_NONBLOCK)) < 0) {
        err = errno, what = "fcntl";
    } else if ((c->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0 ||
               (c->stopfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        err = errno, what = "eventfd";
    } else if ((c->orig = fcntl(2, F_DUPFD_CLOEXEC, 3)) < 0) {
        err = errno, what = "dup stderr";
    } else if ((err = pthread_create(&c->thread, NULL, reader, c)) != 0) {
        what = "stderr reader";
    } else {
        c->thread_started = 1;
        fflush(stderr);
        int r;
        while ((r = dup2(p[1], 2)) < 0 && errno == EINTR) {
        }
        if (r < 0)
            err = errno, what = "dup2";
    }
    if (p[1] >= 0)
        (void)close(p[1]); /* fd 2 is the write end now */
    if (what) {
        int orig = c->orig;
        c->orig = -1; /* fd 2 was never replaced: nothing to put back */
        if (orig >= 0)
            (void)close(orig);
        release(c);
        return pm_fail_errno(L, err, what);
    }
    return 1;
}

static int l_fd(lua_State *L)
{
    lua_pushinteger(L, check_capture(L)->efd);
    return 1;
}

static int l_step(lua_State *L)
{
    capture *c = check_capture(L);
    pthread_mutex_lock(&c->mu);
    uint64_t v;
    (void)!read(c->efd, &v, sizeof v);
    queue t = c->out;
    c->out = c->q;
    t.len = 0;
    c->q = t;
    uint64_t dropped = c->dropped;
    c->dropped = 0;
    pthread_mutex_unlock(&c->mu);
    if (c->out.len == 0 && dropped == 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_newtable(L);
    int n = 0, has_cut = 0;
    size_t head = 2 * sizeof(size_t);
    for (size_t at = 0; at < c->out.len;) {
        size_t len, cut;
        memcpy(&len, c->out.data + at, sizeof len);
        memcpy(&cut, c->out.data + at + sizeof(size_t), sizeof cut);
        lua_pushlstring(L, c->out.data + at + head, len);
        lua_rawseti(L, -2, ++n);
        if (cut > 0) {
            if (!has_cut) {
                lua_newtable(L);
                lua_setfield(L, -2, "truncated");
                has_cut = 1;
            }
            lua_getfield(L, -1, "truncated");
            lua_pushinteger(L, (lua_Integer)cut);
            lua_rawseti(L, -2, n);
            lua_pop(L, 1);
        }
        at += head + len;
    }
    c->out.len = 0;
    if (dropped > 0) {
        lua_pushinteger(L, (lua_Integer)dropped);
        lua_setfield(L, -2, "dropped");
    }
    return 1;
}

/* The Lua io library closes a file through its closef. */
static int stream_close(lua_State *L)
{
    luaL_Stream *p = luaL_checkudata(L, 1, LUA_FILEHANDLE);
    int ok = fclose(p->f) == 0;
    return luaL_fileresult(L, ok, NULL);
}

static int l_stream(lua_State *L)
{
    capture *c = check_capture(L);
    if (c->orig < 0)
        luaL_error(L, "attempt to use a restored stderr capture");
    luaL_Stream *p = lua_newuserdatauv(L, sizeof *p, 0);
    p->f = NULL;
    p->closef = NULL; /* a closed file until it is open */
    luaL_setmetatable(L, LUA_FILEHANDLE);
    int fd = fcntl(c->orig, F_DUPFD_CLOEXEC, 3);
    if (fd < 0)
        return pm_fail_errno(L, errno, "dup stderr");
    if ((p->f = fdopen(fd, "w")) == NULL) {
        int err = errno;
        (void)close(fd);
        return pm_fail_errno(L, err, "fdopen");
    }
    p->closef = stream_close;
    return 1;
}

static int l_restore(lua_State *L)
{
    restore(check_capture(L));
    return 0;
}

static int l_close(lua_State *L)
{
    release(luaL_checkudata(L, 1, CAPTURE));
    return 0;
}

int pm_open_stderr(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"fd", l_fd}, {"step", l_step}, {"stream", l_stream}, {"restore", l_restore}, {"close", l_close},
        {NULL, NULL}};
    pm_newclosable(L, CAPTURE, methods, l_close, NULL);
    lua_pushcfunction(L, l_capture);
    lua_setfield(L, -2, "stderr_capture");
    return 0;
}
