/* The probe engine: see probe.h.
 *
 * Cost model. On loopback (and any address of this host) the kernel runs the
 * whole handshake inside the connect() call: the SYN, the RST or SYN-ACK
 * that answers it. A second connect() on the same socket then reports the
 * outcome without waiting (0 or EISCONN: connected, ECONNREFUSED: refused,
 * EALREADY: still waiting), so a local probe costs no epoll work at all. A
 * refused socket is back in the unconnected state and connects again: it is
 * kept as a spare for the next probe, which saves a socket() and a close()
 * per closed port. Only probes still waiting go into the epoll set.
 *
 * ICMP errors. An ICMP unreachable that arrives while connect() still holds
 * the socket (a local namespace answers that fast) is only a "soft" error to
 * TCP: it keeps retrying until its own timeout. IP_RECVERR queues every ICMP
 * error on the socket's error queue, which makes epoll report EPOLLERR at
 * once, and MSG_ERRQUEUE gives its type and code.
 *
 * Two cores. A local scan is bound by the kernel's connect() work, which
 * runs on the calling thread, so a large run is split in two shards (every
 * other target), each with its own epoll instance nested in the engine's
 * one, and half the concurrency: step() runs shard 1 on a worker thread
 * while shard 0 runs on the caller's, and returns when both are done. The
 * caller sees one fd, one step(), one batch. */
#include "probe.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include "visibility.h" /* last: see there */

#define RESERVE_FDS 32 /* left for the rest of the process */
#define DEFAULT_CONCURRENCY 4096
#define DEFAULT_TIMEOUT_MS 1000
#define EVENTS 256
#define SHARD_MIN_TARGETS 2048 /* below this a second thread is not worth it */
/* UDP pacing (see probe.h): nmap's first send delay after drops, Linux's
 * default ICMP rate limit (one a second) as the slowest pace, and as the
 * least wait before a retry. */
#define FIRST_PACE_MS 50
#define MAX_PACE_MS 1000
#define RETRY_AFTER_MS 1000
#define QUIET_AFTER 64
#define QUIET_CHECK 16

typedef struct {
    int fd; /* -1 when free */
    uint32_t target;
    uint64_t deadline; /* ms, CLOCK_MONOTONIC; in the retry queue: when it may be sent again */
    uint64_t sent; /* ms: when its last try went out */
    int32_t prev, next; /* its list, oldest first; next links the free list */
    uint8_t tries; /* UDP: retransmissions so far */
    uint8_t queued; /* in the retry queue, not the in-flight list */
} slot;

typedef struct {
    struct sockaddr_storage sa;
    socklen_t len;
    /* UDP pacing: the least ms between two probes, when the next may go,
     * when the pace last grew, the highest try an answer came back on */
    unsigned pace;
    uint64_t next_send, boosted;
    int best_try;
} address;

typedef struct {
    uint16_t address, port;
} target;


/* The probes of every nshards-th target from first, with their own epoll
 * instance, slots and bound: touched by one thread at a time. */
typedef struct {
    pm_probe *p;
    int epfd;
    unsigned concurrency;
    size_t next_target, reported;
    slot *slots; /* this shard's part of pm_probe.slots */
    int32_t free_slot, head, tail; /* indices into slots; -1: none */
    int32_t rq_head, rq_tail; /* UDP: unanswered probes waiting to be sent again */
    unsigned inflight, peak; /* slots in use (waiting or queued) */
    size_t sent, retransmits;
    int spare; /* a refused TCP socket ready to connect again, or -1 */
    unsigned quiet, skipped; /* TCP: second connect()s still waiting in a row; ones skipped */
    int spare_family;
    int blocked; /* out of fds or local ports: wait for a probe to finish */
} shard;

struct pm_probe {
    int epfd; /* what the caller polls; with two shards it holds theirs */
    int udp;
    unsigned timeout_ms, concurrency, nshards, retries;
    int started, cancelled, turn;
    void *payload;
    size_t payload_len;
    address *addrs;
    size_t naddrs;
    target *targets;
    size_t ntargets, cap_targets;
    slot *slots;
    shard shards[2];
    /* the worker thread that steps shard 1 */
    pthread_t thread;
    int have_thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int job; /* 0 idle, 1 step requested, 2 exit */
    pm_probe_result *job_out;
    size_t job_max, job_n;
};

static const char *const state_names[] = {
    "open", "closed", "filtered", "unreachable", "error", "open|filtered",
};

const char *pm_probe_state_name(int state)
{
    if (state < 0 || state > PM_PROBE_OPEN_FILTERED)
        return "?";
    return state_names[state];
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static unsigned open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    unsigned n = 0;
    if (!d)
        return 64; /* no /proc: assume a modest number */
    while (readdir(d))
        n++;
    closedir(d);
    return n > 3 ? n - 3 : 0; /* ".", ".." and the directory's own fd */
}

unsigned pm_probe_max_concurrency(void)
{
    struct rlimit rl;
    uint64_t limit = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        limit = rl.rlim_cur == RLIM_INFINITY ? (1u << 20) : rl.rlim_cur;
    uint64_t used = open_fds() + 1 + RESERVE_FDS; /* + the epoll fd */
    if (limit <= used)
        return 0;
    limit -= used;
    return limit > (1u << 20) ? (1u << 20) : (unsigned)limit;
}

unsigned pm_probe_default_concurrency(void)
{
    unsigned max = pm_probe_max_concurrency();
    return max < DEFAULT_CONCURRENCY ? max : DEFAULT_CONCURRENCY;
}

pm_probe *pm_probe_new(const pm_probe_opts *opts)
{
    unsigned max = pm_probe_max_concurrency();
    if (max == 0) {
        errno = EMFILE;
        return NULL;
    }
    pm_probe *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->udp = opts->udp;
    p->retries = opts->retries > PM_PROBE_MAX_RETRIES ? PM_PROBE_MAX_RETRIES : opts->retries;
    p->timeout_ms = opts->timeout_ms ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    p->concurrency = opts->concurrency ? opts->concurrency : pm_probe_default_concurrency();
    if (p->concurrency > max)
        p->concurrency = max;
    for (int k = 0; k < 2; k++) {
        p->shards[k].epfd = -1;
        p->shards[k].spare = -1;
    }
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    p->slots = calloc(p->concurrency, sizeof(slot));
    if (opts->payload_len) {
        p->payload = malloc(opts->payload_len);
        if (p->payload)
            memcpy(p->payload, opts->payload, opts->payload_len);
        p->payload_len = opts->payload_len;
    }
    if (p->epfd < 0 || !p->slots || (opts->payload_len && !p->payload)) {
        int err = p->epfd < 0 ? errno : ENOMEM;
        pm_probe_free(p);
        errno = err;
        return NULL;
    }
    return p;
}

int pm_probe_add_address(pm_probe *p, const struct sockaddr *sa, socklen_t len)
{
    if ((sa->sa_family != AF_INET || len < sizeof(struct sockaddr_in)) &&
        (sa->sa_family != AF_INET6 || len < sizeof(struct sockaddr_in6))) {
        errno = EINVAL;
        return -1;
    }
    if (p->naddrs > UINT16_MAX) {
        errno = ERANGE;
        return -1;
    }
    address *a = realloc(p->addrs, (p->naddrs + 1) * sizeof(*a));
    if (!a)
        return -1;
    p->addrs = a;
    memset(&a[p->naddrs], 0, sizeof(*a));
    a[p->naddrs].len = sa->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    memcpy(&a[p->naddrs].sa, sa, a[p->naddrs].len);
    return (int)p->naddrs++;
}

int pm_probe_add_ports(pm_probe *p, int addr, const uint16_t *ports, size_t n)
{
    if (p->started) {
        errno = EBUSY;
        return -1;
    }
    if (addr < 0 || (size_t)addr >= p->naddrs) {
        errno = EINVAL;
        return -1;
    }
    if (p->ntargets + n > p->cap_targets) {
        size_t cap = p->cap_targets ? p->cap_targets : 64;
        while (cap < p->ntargets + n)
            cap *= 2;
        target *t = realloc(p->targets, cap * sizeof(*t));
        if (!t)
            return -1;
        p->targets = t;
        p->cap_targets = cap;
    }
    for (size_t i = 0; i < n; i++)
        p->targets[p->ntargets++] = (target){(uint16_t)addr, ports[i]};
    return 0;
}

int pm_probe_fd(const pm_probe *p) { return p->epfd; }

/* The target's address with its port filled in. */
static const struct sockaddr *target_addr(const pm_probe *p, uint32_t t, struct sockaddr_storage *buf,
                                          socklen_t *len)
{
    const address *a = &p->addrs[p->targets[t].address];
    memcpy(buf, &a->sa, a->len);
    *len = a->len;
    uint16_t port = htons(p->targets[t].port);
    if (buf->ss_family == AF_INET)
        ((struct sockaddr_in *)buf)->sin_port = port;
    else
        ((struct sockaddr_in6 *)buf)->sin6_port = port;
    return (struct sockaddr *)buf;
}

static void emit(shard *sh, pm_probe_result *r, uint32_t t, int state, int err)
{
    const target *tg = &sh->p->targets[t];
    r->target = t;
    r->port = tg->port;
    r->address = tg->address;
    r->state = (uint8_t)state;
    r->err = err;
    sh->reported++;
}

/* A failure without ICMP detail, from its errno. */
static int errno_state(int err)
{
    switch (err) {
    case ECONNREFUSED:
        return PM_PROBE_CLOSED;
    case ETIMEDOUT:
        return PM_PROBE_FILTERED;
    case ENETUNREACH:
    case EHOSTUNREACH:
    case EHOSTDOWN:
    case ENONET:
        return PM_PROBE_UNREACHABLE;
    default:
        return PM_PROBE_ERROR;
    }
}

/* Reads one ICMP error from fd's error queue: 1 and the state it means, or
 * 0 when the queue holds none. */
static int icmp_state(int fd, int *state, int *err)
{
    char control[512];
    char byte;
    struct iovec iov = {&byte, 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                       .msg_controllen = sizeof(control)};
    if (recvmsg(fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
        return 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (!((c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR) ||
              (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_RECVERR)))
            continue;
        struct sock_extended_err ee;
        memcpy(&ee, CMSG_DATA(c), sizeof(ee));
        *err = (int)ee.ee_errno;
        if (ee.ee_origin == SO_EE_ORIGIN_ICMP) {
            /* 3: destination unreachable, 3/3: port unreachable; 11: time exceeded */
            int port = ee.ee_type == 3 && ee.ee_code == 3;
            *state = port ? PM_PROBE_CLOSED
                          : (ee.ee_type == 3 || ee.ee_type == 11) ? PM_PROBE_UNREACHABLE : PM_PROBE_ERROR;
        } else if (ee.ee_origin == SO_EE_ORIGIN_ICMP6) {
            /* 1: destination unreachable, 1/4: port unreachable; 3: time exceeded */
            int port = ee.ee_type == 1 && ee.ee_code == 4;
            *state = port ? PM_PROBE_CLOSED
                          : (ee.ee_type == 1 || ee.ee_type == 3) ? PM_PROBE_UNREACHABLE : PM_PROBE_ERROR;
        } else {
            *state = errno_state(*err);
        }
        if (*state == PM_PROBE_CLOSED)
            *err = 0;
        return 1;
    }
    return 0;
}

/* A connected socket: open, unless it connected to itself (simultaneous
 * open to our own ephemeral port), which means nothing listens: closed. */
static int connected_state(int fd, const struct sockaddr *peer)
{
    struct sockaddr_storage local;
    socklen_t len = sizeof(local);
    if (getsockname(fd, (struct sockaddr *)&local, &len) < 0)
        return PM_PROBE_OPEN;
    if (local.ss_family == AF_INET && peer->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const void *)&local, *b = (const void *)peer;
        if (a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr)
            return PM_PROBE_CLOSED;
    } else if (local.ss_family == AF_INET6 && peer->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const void *)&local, *b = (const void *)peer;
        if (a->sin6_port == b->sin6_port && !memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(a->sin6_addr)))
            return PM_PROBE_CLOSED;
    }
    return PM_PROBE_OPEN;
}

/* Closes a connected socket with a RST (SO_LINGER 0): no TIME_WAIT left
 * behind to hold local ports when a scan runs again. */
static void close_connected(int fd)
{
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}

static void keep_spare(shard *sh, int fd, int family)
{
    if (sh->spare >= 0)
        close(sh->spare);
    sh->spare = fd;
    sh->spare_family = family;
}

static int new_socket(shard *sh, int family)
{
    int udp = sh->p->udp;
    if (!udp && sh->spare >= 0) {
        int fd = sh->spare;
        sh->spare = -1;
        if (sh->spare_family == family)
            return fd;
        close(fd);
    }
    int fd = socket(family, (udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    if (family == AF_INET)
        setsockopt(fd, SOL_IP, IP_RECVERR, &one, sizeof(one));
    else
        setsockopt(fd, SOL_IPV6, IPV6_RECVERR, &one, sizeof(one));
    return fd;
}

/* Appends slot s to the end of its list: the retry queue when it is
 * queued, else the in-flight list. */
static void list_push(shard *sh, int32_t s)
{
    slot *sl = &sh->slots[s];
    int32_t *head = sl->queued ? &sh->rq_head : &sh->head, *tail = sl->queued ? &sh->rq_tail : &sh->tail;
    sl->prev = *tail;
    sl->next = -1;
    if (*tail >= 0)
        sh->slots[*tail].next = s;
    else
        *head = s;
    *tail = s;
}

static void list_unlink(shard *sh, int32_t s)
{
    slot *sl = &sh->slots[s];
    int32_t *head = sl->queued ? &sh->rq_head : &sh->head, *tail = sl->queued ? &sh->rq_tail : &sh->tail;
    if (sl->prev >= 0)
        sh->slots[sl->prev].next = sl->next;
    else
        *head = sl->next;
    if (sl->next >= 0)
        sh->slots[sl->next].prev = sl->prev;
    else
        *tail = sl->prev;
}

static address *target_address(const pm_probe *p, uint32_t t)
{
    return &p->addrs[p->targets[t].address];
}

/* UDP: ms until the pace of t's address lets a probe go (0: now). */
static uint64_t pace_wait(const pm_probe *p, uint32_t t, uint64_t now)
{
    const address *a = target_address(p, t);
    uint64_t ready = a->next_send;
    return ready > now ? ready - now : 0;
}

/* A UDP probe went out to t's address at now. */
static void paced(shard *sh, uint32_t t, uint64_t now)
{
    address *a = target_address(sh->p, t);
    a->next_send = now + a->pace;
    sh->sent++;
}

/* An answer came back to slot sl's last try: a retransmission answered
 * means an earlier answer was lost, so the address's pace doubles (once for
 * the probes sent since it last grew: one burst of losses is one signal). */
static void learn(shard *sh, const slot *sl, uint64_t now)
{
    address *a = target_address(sh->p, sl->target);
    if (sl->tries > a->best_try)
        a->best_try = sl->tries;
    if (sl->tries == 0 || sl->sent <= a->boosted)
        return;
    a->pace = a->pace ? (a->pace * 2 < MAX_PACE_MS ? a->pace * 2 : MAX_PACE_MS) : FIRST_PACE_MS;
    a->boosted = now;
    if (a->next_send < now + a->pace)
        a->next_send = now + a->pace;
}

/* Puts fd for target t into a slot and the shard's epoll set. */
static int start_waiting(shard *sh, int fd, uint32_t t)
{
    int32_t s = sh->free_slot;
    slot *sl = &sh->slots[s];
    struct epoll_event ev = {.events = sh->p->udp ? EPOLLIN : EPOLLOUT, .data.u64 = (uint64_t)s};
    if (epoll_ctl(sh->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return -1;
    sh->free_slot = sl->next;
    sl->fd = fd;
    sl->target = t;
    sl->sent = now_ms();
    sl->deadline = sl->sent + sh->p->timeout_ms;
    sl->tries = 0;
    sl->queued = 0;
    list_push(sh, s);
    if (++sh->inflight > sh->peak)
        sh->peak = sh->inflight;
    return 0;
}

static void finish_slot(shard *sh, int32_t s)
{
    slot *sl = &sh->slots[s];
    list_unlink(sh, s);
    sl->fd = -1;
    sl->next = sh->free_slot;
    sh->free_slot = s;
    sh->inflight--;
    sh->blocked = 0;
}

/* A resource the host is short of: worth waiting for a probe to finish. */
static int transient(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM || err == EADDRNOTAVAIL;
}

/* Whether to ask a connect() in progress for its outcome at once (a local
 * handshake is over by then) or leave it to the epoll set: after QUIET_AFTER
 * probes in a row still waiting (a filtered or a remote host), asking is a
 * syscall in vain, so only every QUIET_CHECK-th probe asks, to notice when
 * the answers turn quick again. */
static int ask_again(shard *sh)
{
    return sh->quiet < QUIET_AFTER || ++sh->skipped % QUIET_CHECK == 0;
}

/* Starts the probe of target t: 1 with a result in *r (it finished at
 * once), 0 when it waits in the epoll set, -1 when it must be retried. */
static int launch_tcp(shard *sh, uint32_t t, pm_probe_result *r)
{
    struct sockaddr_storage buf;
    socklen_t len;
    const struct sockaddr *sa = target_addr(sh->p, t, &buf, &len);
    int fd = new_socket(sh, sa->sa_family);
    if (fd < 0)
        goto failed;
    if (connect(fd, sa, len) == 0)
        goto connected;
    if (errno == EINPROGRESS) {
        if (!ask_again(sh))
            goto wait;
        if (connect(fd, sa, len) == 0 || errno == EISCONN) {
            sh->quiet = 0;
            goto connected;
        }
        if (errno == EALREADY) {
            sh->quiet++;
            goto wait;
        }
        sh->quiet = 0;
    }
    if (errno == ECONNREFUSED) {
        keep_spare(sh, fd, sa->sa_family);
        emit(sh, r, t, PM_PROBE_CLOSED, 0);
        return 1;
    }
    int err = errno;
    close(fd);
    errno = err;
failed:
    if (transient(errno) && sh->inflight > 0)
        return -1;
    emit(sh, r, t, errno_state(errno), errno);
    return 1;
connected:
    emit(sh, r, t, connected_state(fd, sa), 0);
    close_connected(fd);
    return 1;
wait:
    if (start_waiting(sh, fd, t) == 0)
        return 0;
    close(fd);
    goto failed;
}

static int launch_udp(shard *sh, uint32_t t, pm_probe_result *r)
{
    struct sockaddr_storage buf;
    socklen_t len;
    const struct sockaddr *sa = target_addr(sh->p, t, &buf, &len);
    int fd = new_socket(sh, sa->sa_family);
    if (fd < 0)
        goto failed;
    if (connect(fd, sa, len) < 0 || send(fd, sh->p->payload, sh->p->payload_len, 0) < 0 ||
        start_waiting(sh, fd, t) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        goto failed;
    }
    paced(sh, t, sh->slots[sh->tail].sent);
    return 0;
failed:
    if (transient(errno) && sh->inflight > 0)
        return -1;
    emit(sh, r, t, errno_state(errno), errno);
    return 1;
}

/* An event on slot s: 1 with a result in *r, or 0 while it still waits. */
static int reap(shard *sh, int32_t s, uint32_t events, pm_probe_result *r)
{
    slot *sl = &sh->slots[s];
    int fd = sl->fd, state, err = 0;
    uint32_t t = sl->target;
    struct sockaddr_storage buf;
    socklen_t len;
    const struct sockaddr *sa = target_addr(sh->p, t, &buf, &len);
    if ((events & EPOLLERR) && icmp_state(fd, &state, &err))
        goto answered;
    if (sh->p->udp) {
        char byte;
        if (recv(fd, &byte, 1, MSG_DONTWAIT | MSG_TRUNC) >= 0)
            state = PM_PROBE_OPEN;
        else if (errno == EAGAIN || errno == EINTR)
            return 0;
        else
            state = errno_state(err = errno);
        if (state == PM_PROBE_CLOSED)
            err = 0;
        goto answered;
    }
    if (connect(fd, sa, len) == 0 || errno == EISCONN) {
        state = connected_state(fd, sa);
        finish_slot(sh, s);
        close_connected(fd);
        emit(sh, r, t, state, 0);
        return 1;
    }
    if (errno == EALREADY || errno == EINTR)
        return 0;
    err = errno;
    state = errno_state(err);
    if (state == PM_PROBE_CLOSED)
        err = 0;
    goto done;
answered:
    if (sh->p->udp)
        learn(sh, sl, now_ms());
done:
    finish_slot(sh, s);
    close(fd);
    emit(sh, r, t, state, err);
    return 1;
}

static int shard_done(const shard *sh)
{
    return sh->next_target >= sh->p->ntargets && sh->inflight == 0;
}

/* UDP: the retransmissions the port of target t gets: `retries` once its
 * address shows losses (a pace), else one more than the highest try any of
 * its ports was answered on. */
static unsigned allowed_retries(const shard *sh, uint32_t t)
{
    const address *a = target_address(sh->p, t);
    unsigned cap = (unsigned)a->best_try + 1;
    return a->pace || cap > sh->p->retries ? sh->p->retries : cap;
}

/* A UDP probe s past its timeout: 1 when it goes to the retry queue (its
 * socket stays open, so a late answer still counts), 0 when it has had
 * all its tries. */
static int retry_later(shard *sh, int32_t s)
{
    slot *sl = &sh->slots[s];
    if (sl->tries >= allowed_retries(sh, sl->target))
        return 0;
    list_unlink(sh, s);
    sl->queued = 1;
    unsigned wait = sh->p->timeout_ms > RETRY_AFTER_MS ? sh->p->timeout_ms : RETRY_AFTER_MS;
    sl->deadline = sl->sent + wait;
    list_push(sh, s);
    return 1;
}

/* Sends queued probe s again. 0, or 1 with a result in *r when the send
 * fails: an ICMP error that came in meanwhile is the answer. */
static int resend(shard *sh, int32_t s, uint64_t now, pm_probe_result *r)
{
    slot *sl = &sh->slots[s];
    uint32_t t = sl->target;
    int fd = sl->fd;
    if (send(fd, sh->p->payload, sh->p->payload_len, 0) < 0) {
        int err = errno, state;
        if (err == EAGAIN || transient(err)) {
            sl->deadline = now + 10; /* the socket's buffer is full: later */
            list_unlink(sh, s);
            list_push(sh, s);
            return 0;
        }
        if (!icmp_state(fd, &state, &err)) {
            state = errno_state(err);
            if (state == PM_PROBE_CLOSED)
                err = 0;
        }
        learn(sh, sl, now);
        finish_slot(sh, s);
        close(fd);
        emit(sh, r, t, state, err);
        return 1;
    }
    list_unlink(sh, s);
    sl->queued = 0;
    sl->tries++;
    sl->sent = now;
    sl->deadline = now + sh->p->timeout_ms;
    list_push(sh, s);
    paced(sh, t, now);
    sh->retransmits++;
    return 0;
}

/* TCP: the next target, on the socket and slot of probe s, which timed
 * out: connect() with AF_UNSPEC takes a socket out of SYN_SENT, ready to
 * connect again, still in the epoll set with its options, which saves a
 * close(), a socket(), a setsockopt() and an epoll_ctl() a probe when a
 * run of filtered ports is larger than the concurrency. 1 with a result in
 * *r when the new probe finished at once (its socket is then closed), else
 * 0; -1 when the socket could not be reused (the caller closes it). */
static int reuse_expired(shard *sh, int32_t s, pm_probe_result *r)
{
    pm_probe *p = sh->p;
    slot *sl = &sh->slots[s];
    int fd = sl->fd;
    uint32_t t = (uint32_t)sh->next_target;
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    if (target_address(p, t)->sa.ss_family != target_address(p, sl->target)->sa.ss_family ||
        connect(fd, &unspec, sizeof(unspec)) < 0)
        return -1;
    sh->next_target += p->nshards;
    struct sockaddr_storage buf;
    socklen_t len;
    const struct sockaddr *sa = target_addr(p, t, &buf, &len);
    int rc = connect(fd, sa, len), state, err = 0;
    if (rc < 0 && transient(errno)) { /* out of local ports: launch_tcp() waits for them */
        sh->next_target -= p->nshards;
        return -1;
    }
    if (rc < 0 && errno == EINPROGRESS) {
        if (!ask_again(sh))
            goto waiting;
        rc = connect(fd, sa, len);
        if (rc < 0 && errno == EALREADY) {
            sh->quiet++;
            goto waiting;
        }
        sh->quiet = 0;
    }
    if (rc == 0 || errno == EISCONN) {
        state = connected_state(fd, sa);
    } else {
        state = errno_state(err = errno);
        if (state == PM_PROBE_CLOSED)
            err = 0;
    }
    finish_slot(sh, s);
    if (state == PM_PROBE_OPEN)
        close_connected(fd);
    else
        close(fd);
    emit(sh, r, t, state, err);
    return 1;
waiting: /* the slot goes to the end of the in-flight list */
    list_unlink(sh, s);
    sl->target = t;
    sl->sent = now_ms();
    sl->deadline = sl->sent + p->timeout_ms;
    list_push(sh, s);
    return 0;
}

static size_t shard_step(shard *sh, pm_probe_result *out, size_t max)
{
    pm_probe *p = sh->p;
    size_t n = 0;
    while (sh->inflight > 0 && n < max) {
        struct epoll_event ev[EVENTS];
        int want = max - n < EVENTS ? (int)(max - n) : EVENTS;
        int k = epoll_wait(sh->epfd, ev, want, 0);
        for (int i = 0; i < k; i++)
            n += (size_t)reap(sh, (int32_t)ev[i].data.u64, ev[i].events, &out[n]);
        if (k < want)
            break;
    }
    uint64_t now = now_ms();
    while (sh->head >= 0 && sh->slots[sh->head].deadline <= now) {
        int32_t s = sh->head;
        if (p->udp && retry_later(sh, s))
            continue;
        if (n >= max)
            break;
        int fd = sh->slots[s].fd;
        uint32_t t = sh->slots[s].target;
        emit(sh, &out[n++], t, p->udp ? PM_PROBE_OPEN_FILTERED : PM_PROBE_FILTERED, 0);
        if (!p->udp && n < max && sh->next_target < p->ntargets) {
            int rc = reuse_expired(sh, s, &out[n]);
            if (rc >= 0) {
                n += (size_t)rc;
                continue;
            }
        }
        finish_slot(sh, s);
        close(fd);
    }
    /* retransmissions first: they have waited longest */
    while (n < max && sh->rq_head >= 0) {
        int32_t s = sh->rq_head;
        if (sh->slots[s].deadline > now || pace_wait(p, sh->slots[s].target, now) > 0)
            break;
        n += (size_t)resend(sh, s, now, &out[n]);
    }
    while (n < max && !sh->blocked && sh->inflight < sh->concurrency && sh->next_target < p->ntargets) {
        uint32_t t = (uint32_t)sh->next_target;
        if (p->udp && pace_wait(p, t, now) > 0)
            break;
        int rc = p->udp ? launch_udp(sh, t, &out[n]) : launch_tcp(sh, t, &out[n]);
        if (rc < 0) {
            sh->blocked = 1;
            break;
        }
        sh->next_target += p->nshards;
        n += (size_t)rc;
    }
    if (sh->next_target >= p->ntargets && sh->spare >= 0) {
        close(sh->spare);
        sh->spare = -1;
    }
    return n;
}

static int shard_timeout(const shard *sh)
{
    if (shard_done(sh))
        return -1;
    const pm_probe *p = sh->p;
    uint64_t now = now_ms(), due = UINT64_MAX;
    if (!sh->blocked && sh->inflight < sh->concurrency && sh->next_target < p->ntargets)
        due = now + (p->udp ? pace_wait(p, (uint32_t)sh->next_target, now) : 0);
    if (sh->head >= 0 && sh->slots[sh->head].deadline < due)
        due = sh->slots[sh->head].deadline;
    if (sh->rq_head >= 0) {
        const slot *sl = &sh->slots[sh->rq_head];
        uint64_t ready = now + pace_wait(p, sl->target, now);
        if (sl->deadline > ready)
            ready = sl->deadline;
        if (ready < due)
            due = ready;
    }
    if (due == UINT64_MAX) /* blocked, nothing in flight: try again now */
        return 0;
    return due <= now ? 0 : due - now > INT32_MAX ? INT32_MAX : (int)(due - now);
}

static void *worker(void *arg)
{
    pm_probe *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->job == 0)
            pthread_cond_wait(&p->cv, &p->mu);
        if (p->job == 2)
            break;
        pthread_mutex_unlock(&p->mu);
        size_t n = shard_step(&p->shards[1], p->job_out, p->job_max);
        pthread_mutex_lock(&p->mu);
        p->job_n = n;
        p->job = 0;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static int init_shard(pm_probe *p, int k, unsigned first_slot, unsigned concurrency)
{
    shard *sh = &p->shards[k];
    sh->p = p;
    sh->concurrency = concurrency;
    sh->next_target = (size_t)k;
    sh->slots = p->slots + first_slot;
    sh->free_slot = sh->head = sh->tail = sh->rq_head = sh->rq_tail = -1;
    for (unsigned i = concurrency; i-- > 0;) {
        sh->slots[i].fd = -1;
        sh->slots[i].next = sh->free_slot;
        sh->free_slot = (int32_t)i;
    }
    if (p->nshards == 1) {
        sh->epfd = p->epfd;
        return 0;
    }
    sh->epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)k};
    if (sh->epfd < 0 || epoll_ctl(p->epfd, EPOLL_CTL_ADD, sh->epfd, &ev) < 0)
        return -1;
    return 0;
}

/* Splits the run into shards on the first step, when the targets are known:
 * two for a large run on a machine with two cores or more, else one. */
static void start(pm_probe *p)
{
    p->started = 1;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    /* UDP keeps one shard: an address's pace is one thread's to keep */
    p->nshards = !p->udp && p->ntargets >= SHARD_MIN_TARGETS && cores >= 2 && p->concurrency >= 2 ? 2 : 1;
    if (p->nshards == 2) {
        unsigned c0 = (p->concurrency + 1) / 2;
        pthread_mutex_init(&p->mu, NULL);
        pthread_cond_init(&p->cv, NULL);
        if (init_shard(p, 0, 0, c0) == 0 && init_shard(p, 1, c0, p->concurrency - c0) == 0 &&
            pthread_create(&p->thread, NULL, worker, p) == 0) {
            p->have_thread = 1;
            return;
        }
        /* no second shard after all: fall back on one */
        for (int k = 0; k < 2; k++) {
            if (p->shards[k].epfd >= 0)
                close(p->shards[k].epfd);
            p->shards[k].epfd = -1;
        }
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
        p->nshards = 1;
    }
    init_shard(p, 0, 0, p->concurrency);
}

size_t pm_probe_step(pm_probe *p, pm_probe_result *out, size_t max)
{
    if (p->cancelled)
        return 0;
    if (!p->started)
        start(p);
    if (p->nshards == 1)
        return shard_step(&p->shards[0], out, max);
    int done0 = shard_done(&p->shards[0]), done1 = shard_done(&p->shards[1]);
    if (done0 || done1 || max < 2) {
        /* one shard's turn on this thread; with room for one result only,
         * they take turns so that neither starves */
        int k = done0 ? 1 : done1 ? 0 : (p->turn ^= 1);
        return shard_step(&p->shards[k], out, max);
    }
    size_t max0 = (max + 1) / 2, max1 = max - max0;
    pthread_mutex_lock(&p->mu);
    p->job_out = out + max0;
    p->job_max = max1;
    p->job = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    size_t n0 = shard_step(&p->shards[0], out, max0);
    pthread_mutex_lock(&p->mu);
    while (p->job != 0)
        pthread_cond_wait(&p->cv, &p->mu);
    size_t n1 = p->job_n;
    pthread_mutex_unlock(&p->mu);
    memmove(out + n0, out + max0, n1 * sizeof(*out));
    return n0 + n1;
}

int pm_probe_timeout(const pm_probe *p)
{
    if (p->cancelled)
        return -1;
    if (!p->started)
        return p->ntargets ? 0 : -1;
    int best = -1;
    for (unsigned k = 0; k < p->nshards; k++) {
        int t = shard_timeout(&p->shards[k]);
        if (t >= 0 && (best < 0 || t < best))
            best = t;
    }
    return best;
}

int pm_probe_done(const pm_probe *p)
{
    if (p->cancelled)
        return 1;
    if (!p->started)
        return p->ntargets == 0;
    for (unsigned k = 0; k < p->nshards; k++)
        if (!shard_done(&p->shards[k]))
            return 0;
    return 1;
}

static void close_shard(shard *sh)
{
    if (!sh->slots)
        return;
    while (sh->head >= 0 || sh->rq_head >= 0) {
        int32_t s = sh->head >= 0 ? sh->head : sh->rq_head;
        int fd = sh->slots[s].fd;
        finish_slot(sh, s);
        close(fd);
    }
    if (sh->spare >= 0)
        close(sh->spare);
    sh->spare = -1;
}

void pm_probe_cancel(pm_probe *p)
{
    for (unsigned k = 0; k < p->nshards; k++)
        close_shard(&p->shards[k]);
    p->cancelled = 1;
}

void pm_probe_get_stats(const pm_probe *p, pm_probe_stats *st)
{
    memset(st, 0, sizeof(*st));
    st->targets = p->ntargets;
    st->concurrency = p->concurrency;
    for (unsigned k = 0; k < p->nshards; k++) {
        st->reported += p->shards[k].reported;
        st->inflight += p->shards[k].inflight;
        st->peak += p->shards[k].peak;
        st->sent += p->shards[k].sent;
        st->retransmits += p->shards[k].retransmits;
    }
    for (size_t i = 0; i < p->naddrs; i++)
        if (p->addrs[i].pace > st->pace_ms)
            st->pace_ms = p->addrs[i].pace;
    st->shards = p->started ? p->nshards : 0;
}

void pm_probe_free(pm_probe *p)
{
    if (!p)
        return;
    if (p->have_thread) {
        pthread_mutex_lock(&p->mu);
        p->job = 2;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->thread, NULL);
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
    }
    for (unsigned k = 0; k < p->nshards; k++) {
        close_shard(&p->shards[k]);
        if (p->shards[k].epfd >= 0 && p->shards[k].epfd != p->epfd)
            close(p->shards[k].epfd);
    }
    if (p->epfd >= 0)
        close(p->epfd);
    free(p->slots);
    free(p->addrs);
    free(p->targets);
    free(p->payload);
    free(p);
}
