/* portman.syn: the raw SYN scan engine (nmap -sS) for TCP probes over IPv4,
 * and its Lua binding. It has the probe engine's shape (probe.h: one fd to
 * poll, step(), timeout(), results in batches), so portman.engine drives
 * either.
 *
 * One raw IPPROTO_TCP socket sends a crafted SYN (syn.c) per port and
 * receives the replies: SYN+ACK is open, RST closed; an ICMP error read from
 * a raw IPPROTO_ICMP socket is closed (port unreachable) or unreachable, as
 * for a connect(); nothing by the timeout is filtered. The kernel answers a
 * SYN+ACK with a RST itself, since no socket owns the connection: a TCP
 * socket bound to the scan's source port (and never connected) keeps any
 * other socket of this host from taking that port meanwhile. A probe costs a
 * send() and a slot, not a socket, so the concurrency is not bound by
 * RLIMIT_NOFILE.
 *
 * A SYN unanswered after half the timeout is sent once more (nmap retransmits
 * at its default timing too); the port counts as filtered when the timeout
 * after the first SYN has passed, so a retransmission costs no time. Both
 * SYNs carry the same sequence number: an answer to either counts. When the
 * socket's send buffer is full (EAGAIN), the engine waits for it to be
 * writable (EPOLLOUT on the fd the caller polls); on ENOBUFS (a queue below
 * the socket full) it waits a millisecond: it never spins. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lua_probe.h"
#include "lua_util.h"
#include "probe.h"
#include "syn.h"
#include "visibility.h" /* last: see there */

#define SYN "portman.syn"
#define DEFAULT_CONCURRENCY 4096
#define MAX_CONCURRENCY 65536
#define RCVBUF (8 << 20) /* replies to a burst of sends wait here until read */
#define READ_EVERY 256 /* sends between two reads of the replies */
#define SEND_BATCH 64 /* SYNs per sendmmsg() */
#define MAX_READS 8192 /* packets read per socket per step: a flood cannot hold the loop */
#define BACKOFF_MS 1 /* after ENOBUFS */
#define PKT_MAX 2048

typedef struct {
    uint16_t port;
    uint8_t retried;
    uint64_t first, sent; /* ms: the first SYN, the last one */
    int32_t prev, next; /* its list, oldest first; next links the free list */
} syn_slot;

typedef struct {
    int32_t head, tail;
} slot_list;

typedef struct {
    int epfd, raw, icmp, hold; /* -1 when closed */
    uint32_t src, dst; /* host order */
    uint16_t sport;
    uint8_t key[PM_SYN_KEY_LEN];
    unsigned timeout_ms, retry_ms, concurrency;
    uint16_t *ports;
    size_t nports, next;
    int32_t *slot_of; /* port -> its slot while in flight, else -1 */
    syn_slot *slots;
    int32_t free_slot;
    slot_list waiting, retried; /* sent once; sent twice */
    unsigned inflight, peak;
    size_t reported, sent, retransmits, ignored;
    int blocked; /* EAGAIN: waiting for EPOLLOUT */
    uint64_t backoff_until;
    int cancelled;
    pm_probe_result *buf;
    size_t bufcap;
} syn_engine;

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void close_engine(syn_engine *e)
{
    close_fd(&e->epfd);
    close_fd(&e->raw);
    close_fd(&e->icmp);
    close_fd(&e->hold);
    free(e->ports);
    free(e->slot_of);
    free(e->slots);
    free(e->buf);
    e->ports = NULL;
    e->slot_of = NULL;
    e->slots = NULL;
    e->buf = NULL;
}

static struct sockaddr_in sin_of(uint32_t addr, uint16_t port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(addr);
    return sa;
}

/* The source address the kernel routes dst from: a UDP socket's connect()
 * picks it without sending anything. */
static int source_for(uint32_t dst, uint32_t *src)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in sa = sin_of(dst, 9), local;
    socklen_t len = sizeof(local);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    if (rc == 0)
        rc = getsockname(fd, (struct sockaddr *)&local, &len);
    int err = errno;
    close(fd);
    errno = err;
    if (rc < 0)
        return -1;
    *src = ntohl(local.sin_addr.s_addr);
    return 0;
}

/* Keeps only TCP segments to our port on the raw socket (on loopback it
 * would also get our own SYNs, and on any host every other segment):
 * ldxb 4*([0]&0xf); ldh [x+2]; jeq #sport; ret all; ret 0. */
static int attach_filter(int fd, uint16_t sport)
{
    struct sock_filter code[] = {
        BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, 0),
        BPF_STMT(BPF_LD | BPF_H | BPF_IND, 2),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, sport, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, 0xffff),
        BPF_STMT(BPF_RET | BPF_K, 0),
    };
    struct sock_fprog prog = {.len = sizeof(code) / sizeof(code[0]), .filter = code};
    return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog));
}

static void big_rcvbuf(int fd)
{
    int size = RCVBUF;
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof(size)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
}

static int watch(int epfd, int fd, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.fd = fd};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

/* The sockets: raw ones first, so that a process without CAP_NET_RAW fails
 * (EPERM) before anything else is made. 0, or -1 with errno. */
static int open_sockets(syn_engine *e)
{
    int type = SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC;
    e->raw = socket(AF_INET, type, IPPROTO_TCP);
    if (e->raw < 0)
        return -1;
    e->icmp = socket(AF_INET, type, IPPROTO_ICMP);
    if (e->icmp < 0 || source_for(e->dst, &e->src) < 0)
        return -1;
    struct sockaddr_in local = sin_of(e->src, 0), peer = sin_of(e->dst, 0), bound;
    socklen_t len = sizeof(bound);
    e->hold = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (e->hold < 0 || bind(e->hold, (struct sockaddr *)&local, sizeof(local)) < 0 ||
        getsockname(e->hold, (struct sockaddr *)&bound, &len) < 0)
        return -1;
    e->sport = ntohs(bound.sin_port);
    /* bound to our address and connected to the target's, the raw socket
     * gets only what the target sends to us */
    if (bind(e->raw, (struct sockaddr *)&local, sizeof(local)) < 0 ||
        connect(e->raw, (struct sockaddr *)&peer, sizeof(peer)) < 0 || attach_filter(e->raw, e->sport) < 0 ||
        bind(e->icmp, (struct sockaddr *)&local, sizeof(local)) < 0)
        return -1;
    big_rcvbuf(e->raw);
    big_rcvbuf(e->icmp);
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (e->epfd < 0 || watch(e->epfd, e->raw, EPOLLIN) < 0 || watch(e->epfd, e->icmp, EPOLLIN) < 0)
        return -1;
    if (getrandom(e->key, sizeof(e->key), 0) != sizeof(e->key))
        return -1;
    return 0;
}

static int alloc_state(syn_engine *e)
{
    e->slot_of = malloc(65536 * sizeof(*e->slot_of));
    e->slots = calloc(e->concurrency, sizeof(*e->slots));
    if (!e->slot_of || !e->slots) {
        errno = ENOMEM;
        return -1;
    }
    for (size_t i = 0; i < 65536; i++)
        e->slot_of[i] = -1;
    e->free_slot = -1;
    for (unsigned i = e->concurrency; i-- > 0;) {
        e->slots[i].next = e->free_slot;
        e->free_slot = (int32_t)i;
    }
    e->waiting = e->retried = (slot_list){-1, -1};
    return 0;
}

static void list_push(syn_engine *e, slot_list *l, int32_t s)
{
    e->slots[s].prev = l->tail;
    e->slots[s].next = -1;
    if (l->tail >= 0)
        e->slots[l->tail].next = s;
    else
        l->head = s;
    l->tail = s;
}

static void list_unlink(syn_engine *e, slot_list *l, int32_t s)
{
    syn_slot *sl = &e->slots[s];
    if (sl->prev >= 0)
        e->slots[sl->prev].next = sl->next;
    else
        l->head = sl->next;
    if (sl->next >= 0)
        e->slots[sl->next].prev = sl->prev;
    else
        l->tail = sl->prev;
}

/* Slot s is answered or expired: back to the free list, a result in *r. */
static void finish(syn_engine *e, int32_t s, int state, int err, pm_probe_result *r)
{
    syn_slot *sl = &e->slots[s];
    list_unlink(e, sl->retried ? &e->retried : &e->waiting, s);
    e->slot_of[sl->port] = -1;
    sl->next = e->free_slot;
    e->free_slot = s;
    e->inflight--;
    *r = (pm_probe_result){.port = sl->port, .state = (uint8_t)state, .err = err};
    e->reported++;
}

/* Sends the SYNs to ports[0..k) in one sendmmsg() (a send() each costs
 * twice as much on loopback, where the kernel also runs each packet's
 * input path per call): how many went out, or -1 with errno when the first
 * did not. */
static int send_many(syn_engine *e, const uint16_t *ports, unsigned k)
{
    uint8_t segs[SEND_BATCH][PM_SYN_LEN];
    struct iovec iov[SEND_BATCH];
    struct mmsghdr msgs[SEND_BATCH];
    memset(msgs, 0, k * sizeof(msgs[0]));
    for (unsigned i = 0; i < k; i++) {
        uint16_t port = ports[i];
        pm_syn_build(segs[i], e->src, e->dst, e->sport, port, pm_syn_seq(e->key, e->src, e->dst, e->sport, port));
        iov[i] = (struct iovec){segs[i], PM_SYN_LEN};
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int rc = sendmmsg(e->raw, msgs, k, MSG_DONTWAIT);
    if (rc > 0)
        e->sent += (size_t)rc;
    return rc;
}

/* A send failed: 1 when it is worth trying again later (the engine waits
 * for writability, or a millisecond), 0 when it is the probe's answer. */
static int send_later(syn_engine *e, int err, uint64_t now)
{
    if (err == EAGAIN || err == EWOULDBLOCK) {
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = e->raw};
        epoll_ctl(e->epfd, EPOLL_CTL_MOD, e->raw, &ev);
        e->blocked = 1;
        return 1;
    }
    if (err == ENOBUFS || err == EINTR || err == ENOMEM) {
        e->backoff_until = now + BACKOFF_MS;
        return 1;
    }
    return 0;
}

static int can_send(const syn_engine *e, uint64_t now) { return !e->blocked && now >= e->backoff_until; }

/* A failed send that is the probe's answer (an unreachable route, a local
 * firewall's EPERM): the state a connect() would give. */
static int send_error_state(int err)
{
    return err == ENETUNREACH || err == EHOSTUNREACH || err == EHOSTDOWN || err == ENONET ? PM_PROBE_UNREACHABLE
                                                                                             : PM_PROBE_ERROR;
}

/* Reads replies from fd until none is left, max results are out or
 * MAX_READS packets were read; returns the results written. */
static size_t read_replies(syn_engine *e, int fd, pm_probe_result *out, size_t max)
{
    size_t n = 0;
    uint8_t pkt[PKT_MAX];
    for (int i = 0; i < MAX_READS && n < max; i++) {
        ssize_t len = recv(fd, pkt, sizeof(pkt), MSG_DONTWAIT);
        if (len < 0)
            break;
        pm_syn_reply r;
        int err, state;
        if (pm_syn_parse(pkt, (size_t)len, &r) < 0 || !pm_syn_match(&r, e->key, e->src, e->dst, e->sport) ||
            e->slot_of[r.dport] < 0 || (state = pm_syn_state(&r, &err)) < 0) {
            e->ignored++;
            continue;
        }
        finish(e, e->slot_of[r.dport], state, err, &out[n++]);
    }
    return n;
}

static size_t read_all(syn_engine *e, pm_probe_result *out, size_t max)
{
    size_t n = read_replies(e, e->raw, out, max);
    return n + read_replies(e, e->icmp, out + n, max - n);
}

/* The slots from s on whose second SYN is due (at most SEND_BATCH). */
static unsigned due_retries(const syn_engine *e, int32_t s, uint64_t now, int32_t *ids, uint16_t *ports)
{
    unsigned k = 0;
    for (; s >= 0 && k < SEND_BATCH; s = e->slots[s].next) {
        const syn_slot *sl = &e->slots[s];
        if (sl->sent + e->retry_ms > now || sl->first + e->timeout_ms <= now)
            break;
        ids[k] = s;
        ports[k++] = sl->port;
    }
    return k;
}

/* Probes past their timeout are filtered; ones past half of it get their
 * second SYN. Returns the results written. */
static size_t expire(syn_engine *e, uint64_t now, pm_probe_result *out, size_t max)
{
    size_t n = 0;
    while (n < max && e->retried.head >= 0 && e->slots[e->retried.head].first + e->timeout_ms <= now)
        finish(e, e->retried.head, PM_PROBE_FILTERED, 0, &out[n++]);
    while (n < max && e->waiting.head >= 0) {
        int32_t ids[SEND_BATCH];
        uint16_t ports[SEND_BATCH];
        if (e->slots[e->waiting.head].first + e->timeout_ms <= now) {
            finish(e, e->waiting.head, PM_PROBE_FILTERED, 0, &out[n++]);
            continue;
        }
        unsigned k = e->retry_ms && can_send(e, now) ? due_retries(e, e->waiting.head, now, ids, ports) : 0;
        if (k == 0)
            break;
        int sent = send_many(e, ports, k);
        if (sent < 0) {
            int err = errno;
            if (send_later(e, err, now))
                break;
            finish(e, ids[0], send_error_state(err), err, &out[n++]);
            continue;
        }
        for (int i = 0; i < sent; i++) {
            list_unlink(e, &e->waiting, ids[i]);
            e->slots[ids[i]].retried = 1;
            e->slots[ids[i]].sent = now;
            list_push(e, &e->retried, ids[i]);
        }
        e->retransmits += (size_t)sent;
    }
    return n;
}

/* Takes a free slot for port, just sent. */
static void start_slot(syn_engine *e, uint16_t port, uint64_t now)
{
    int32_t s = e->free_slot;
    syn_slot *sl = &e->slots[s];
    e->free_slot = sl->next;
    *sl = (syn_slot){.port = port, .first = now, .sent = now};
    list_push(e, &e->waiting, s);
    e->slot_of[port] = s;
    if (++e->inflight > e->peak)
        e->peak = e->inflight;
}

/* Sends first SYNs up to the concurrency bound, reading the replies every
 * READ_EVERY sends so that the receive buffer never overflows. */
static size_t launch(syn_engine *e, uint64_t now, pm_probe_result *out, size_t max)
{
    size_t n = 0;
    unsigned since_read = 0;
    while (n < max && e->inflight < e->concurrency && e->next < e->nports && can_send(e, now)) {
        size_t k = e->concurrency - e->inflight;
        if (k > e->nports - e->next)
            k = e->nports - e->next;
        if (k > SEND_BATCH)
            k = SEND_BATCH;
        int sent = send_many(e, e->ports + e->next, (unsigned)k);
        if (sent < 0) {
            int err = errno;
            if (send_later(e, err, now))
                break;
            out[n++] = (pm_probe_result){.port = e->ports[e->next++], .state = (uint8_t)send_error_state(err),
                                         .err = err};
            e->reported++;
            continue;
        }
        for (int i = 0; i < sent; i++)
            start_slot(e, e->ports[e->next++], now);
        since_read += (unsigned)sent;
        if (since_read >= READ_EVERY) {
            since_read = 0;
            n += read_all(e, out + n, max - n);
            now = now_ms();
        }
    }
    return n;
}

static size_t engine_step(syn_engine *e, pm_probe_result *out, size_t max)
{
    if (e->cancelled)
        return 0;
    if (e->blocked) { /* woken by EPOLLOUT (or the timer): try to send again */
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = e->raw};
        epoll_ctl(e->epfd, EPOLL_CTL_MOD, e->raw, &ev);
        e->blocked = 0;
    }
    size_t n = read_all(e, out, max);
    uint64_t now = now_ms();
    n += expire(e, now, out + n, max - n);
    n += launch(e, now, out + n, max - n);
    return n;
}

static int engine_done(const syn_engine *e) { return e->cancelled || (e->next >= e->nports && e->inflight == 0); }

static int engine_timeout(const syn_engine *e)
{
    if (engine_done(e))
        return -1;
    uint64_t now = now_ms(), due = UINT64_MAX;
    if (e->inflight < e->concurrency && e->next < e->nports && !e->blocked)
        due = e->backoff_until > now ? e->backoff_until : now;
    if (e->waiting.head >= 0) {
        const syn_slot *sl = &e->slots[e->waiting.head];
        uint64_t t = sl->first + e->timeout_ms;
        /* blocked, a retransmission waits for EPOLLOUT, not for the timer */
        if (e->retry_ms && !e->blocked && sl->sent + e->retry_ms < t)
            t = sl->sent + e->retry_ms;
        if (t < due)
            due = t;
    }
    if (e->retried.head >= 0 && e->slots[e->retried.head].first + e->timeout_ms < due)
        due = e->slots[e->retried.head].first + e->timeout_ms;
    if (due == UINT64_MAX) /* blocked with nothing in flight: EPOLLOUT wakes the caller */
        return 100;
    return due <= now ? 0 : due - now > INT32_MAX ? INT32_MAX : (int)(due - now);
}

/* Lua ----------------------------------------------------------------------- */

static syn_engine *check_open(lua_State *L)
{
    syn_engine *e = luaL_checkudata(L, 1, SYN);
    if (e->epfd < 0)
        luaL_error(L, "attempt to use a closed syn scan");
    return e;
}

static int l_close(lua_State *L)
{
    close_engine(luaL_checkudata(L, 1, SYN));
    return 0;
}

/* The ports argument into e->ports: integers in 1-65535, each once. */
static void read_ports(lua_State *L, syn_engine *e, int arg)
{
    luaL_checktype(L, arg, LUA_TTABLE);
    lua_Integer n = luaL_len(L, arg);
    luaL_argcheck(L, n >= 1 && n <= 65535, arg, "1 to 65535 ports expected");
    e->ports = malloc((size_t)n * sizeof(*e->ports));
    if (!e->ports)
        luaL_error(L, "not enough memory");
    for (lua_Integer i = 1; i <= n; i++) {
        int isnum;
        lua_geti(L, arg, i);
        lua_Integer port = lua_tointegerx(L, -1, &isnum);
        lua_pop(L, 1);
        if (!isnum || port < 1 || port > 65535)
            luaL_argerror(L, arg, lua_pushfstring(L, "port %d: integer in 1-65535 expected", (int)i));
        e->ports[i - 1] = (uint16_t)port;
    }
    e->nports = (size_t)n;
}

/* Whether ports has a port twice (a probe is found by its port). */
static int has_duplicates(const syn_engine *e)
{
    for (size_t i = 0; i < e->nports; i++) {
        if (e->slot_of[e->ports[i]] == -2)
            return 1;
        e->slot_of[e->ports[i]] = -2;
    }
    for (size_t i = 0; i < e->nports; i++)
        e->slot_of[e->ports[i]] = -1;
    return 0;
}

/* core.syn_new(address, ports, timeout_ms, concurrency): a SYN scan of the
 * IPv4 address's ports (each once). concurrency 0 takes 4096 (probes in
 * flight; no socket each). Returns the scan, or nil, msg, code: `denied`
 * without CAP_NET_RAW. */
static int l_new(lua_State *L)
{
    const char *text = luaL_checkstring(L, 1);
    struct in_addr dst;
    luaL_argcheck(L, inet_pton(AF_INET, text, &dst) == 1, 1, "numeric IPv4 address expected");
    lua_Integer timeout = luaL_checkinteger(L, 3);
    lua_Integer concurrency = luaL_checkinteger(L, 4);
    luaL_argcheck(L, timeout >= 1 && timeout <= 3600000, 3, "timeout out of range 1-3600000 ms");
    luaL_argcheck(L, concurrency >= 0 && concurrency <= 1 << 20, 4, "concurrency out of range 0-1048576");
    syn_engine *e = lua_newuserdatauv(L, sizeof(*e), 0);
    memset(e, 0, sizeof(*e));
    e->epfd = e->raw = e->icmp = e->hold = -1;
    luaL_setmetatable(L, SYN);
    e->dst = ntohl(dst.s_addr);
    e->timeout_ms = (unsigned)timeout;
    e->retry_ms = timeout >= 2 ? (unsigned)timeout / 2 : 0;
    e->concurrency = concurrency == 0 ? DEFAULT_CONCURRENCY
                     : concurrency > MAX_CONCURRENCY ? MAX_CONCURRENCY : (unsigned)concurrency;
    read_ports(L, e, 2);
    if (alloc_state(e) < 0)
        return luaL_error(L, "not enough memory");
    if (has_duplicates(e))
        return luaL_argerror(L, 2, "a port is listed twice");
    if (open_sockets(e) < 0) {
        int err = errno;
        close_engine(e);
        if (err == EPERM || err == EACCES)
            return pm_fail(L, "denied", "syn scan: a raw socket needs CAP_NET_RAW (%s)", pm_errno_name(err));
        return pm_fail_errno(L, err, "syn scan");
    }
    return 1;
}

static int l_fd(lua_State *L)
{
    lua_pushinteger(L, check_open(L)->epfd);
    return 1;
}

/* s:step([max]): the results of the ready work, as one batch in the probe
 * engine's columns: {n, port = {...}, state = {...}, error = {[i] = name}}. */
static int l_step(lua_State *L)
{
    syn_engine *e = check_open(L);
    size_t max = pm_probe_step_buffer(L, &e->buf, &e->bufcap);
    pm_probe_push_batch(L, e->buf, engine_step(e, e->buf, max), 0);
    return 1;
}

static int l_timeout(lua_State *L)
{
    int ms = engine_timeout(check_open(L));
    if (ms < 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, ms);
    return 1;
}

static int l_done(lua_State *L)
{
    lua_pushboolean(L, engine_done(check_open(L)));
    return 1;
}

static int l_cancel(lua_State *L)
{
    check_open(L)->cancelled = 1;
    return 0;
}

static void set_int(lua_State *L, const char *k, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

/* s:stats(): the probe engine's counters (sent counts every SYN, the
 * retransmits among them), the scan's source port, and the replies ignored
 * (not ours, or for a port no longer in flight). */
static int l_stats(lua_State *L)
{
    syn_engine *e = check_open(L);
    lua_createtable(L, 0, 12);
    set_int(L, "targets", (lua_Integer)e->nports);
    set_int(L, "reported", (lua_Integer)e->reported);
    set_int(L, "inflight", e->inflight);
    set_int(L, "peak", e->peak);
    set_int(L, "concurrency", e->concurrency);
    set_int(L, "shards", 1);
    set_int(L, "sent", (lua_Integer)e->sent);
    set_int(L, "retransmits", (lua_Integer)e->retransmits);
    set_int(L, "pace_ms", 0);
    set_int(L, "ignored", (lua_Integer)e->ignored);
    set_int(L, "source_port", e->sport);
    return 1;
}

static int l_tostring(lua_State *L)
{
    syn_engine *e = luaL_checkudata(L, 1, SYN);
    if (e->epfd < 0)
        lua_pushliteral(L, SYN " (closed)");
    else
        lua_pushfstring(L, SYN " (%d of %d reported, %d in flight)", (int)e->reported, (int)e->nports,
                        (int)e->inflight);
    return 1;
}

/* The packet functions, for specs and tools ---------------------------------- */

static uint32_t check_ipv4(lua_State *L, int arg)
{
    struct in_addr a;
    luaL_argcheck(L, inet_pton(AF_INET, luaL_checkstring(L, arg), &a) == 1, arg, "numeric IPv4 address expected");
    return ntohl(a.s_addr);
}

static uint16_t check_port(lua_State *L, int arg)
{
    lua_Integer p = luaL_checkinteger(L, arg);
    luaL_argcheck(L, p >= 0 && p <= 65535, arg, "port out of range 0-65535");
    return (uint16_t)p;
}

static const uint8_t *check_key(lua_State *L, int arg)
{
    size_t len;
    const char *key = luaL_checklstring(L, arg, &len);
    luaL_argcheck(L, len == PM_SYN_KEY_LEN, arg, "16-byte key expected");
    return (const uint8_t *)key;
}

/* core.syn_packet(key, src, dst, sport, dport): the SYN segment a scan
 * with that key sends (the TCP header, no IP header), and its seq. */
static int l_packet(lua_State *L)
{
    const uint8_t *key = check_key(L, 1);
    uint32_t src = check_ipv4(L, 2), dst = check_ipv4(L, 3);
    uint16_t sport = check_port(L, 4), dport = check_port(L, 5);
    uint32_t seq = pm_syn_seq(key, src, dst, sport, dport);
    uint8_t seg[PM_SYN_LEN];
    pm_syn_build(seg, src, dst, sport, dport, seq);
    lua_pushlstring(L, (const char *)seg, sizeof(seg));
    lua_pushinteger(L, seq);
    return 2;
}

/* core.syn_reply(packet, key, src, dst, sport): what the engine makes of
 * an IPv4 packet read from its raw sockets, for a scan with that key from
 * src:sport to dst: the state and errno name (nil when none), or nil and
 * why it is ignored ("malformed", "not ours", "no state"). */
static int l_reply(lua_State *L)
{
    size_t len;
    const uint8_t *pkt = (const uint8_t *)luaL_checklstring(L, 1, &len);
    const uint8_t *key = check_key(L, 2);
    uint32_t src = check_ipv4(L, 3), dst = check_ipv4(L, 4);
    uint16_t sport = check_port(L, 5);
    pm_syn_reply r;
    int err, state;
    lua_pushnil(L);
    if (pm_syn_parse(pkt, len, &r) < 0)
        lua_pushliteral(L, "malformed");
    else if (!pm_syn_match(&r, key, src, dst, sport))
        lua_pushliteral(L, "not ours");
    else if ((state = pm_syn_state(&r, &err)) < 0)
        lua_pushliteral(L, "no state");
    else {
        lua_pop(L, 1);
        lua_pushstring(L, pm_probe_state_name(state));
        if (err)
            lua_pushstring(L, pm_errno_name(err));
        else
            lua_pushnil(L);
    }
    return 2;
}

static const luaL_Reg methods[] = {
    {"fd", l_fd},
    {"step", l_step},
    {"timeout", l_timeout},
    {"done", l_done},
    {"cancel", l_cancel},
    {"stats", l_stats},
    {"close", l_close},
    {NULL, NULL},
};

int pm_open_syn(lua_State *L)
{
    pm_newclosable(L, SYN, methods, l_close, l_tostring);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "syn_new");
    lua_pushcfunction(L, l_packet);
    lua_setfield(L, -2, "syn_packet");
    lua_pushcfunction(L, l_reply);
    lua_setfield(L, -2, "syn_reply");
    return 0;
}
