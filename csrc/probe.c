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
 * once, and MSG_ERRQUEUE gives its type and code. */
#include "probe.h"

#include <dirent.h>
#include <errno.h>
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define RESERVE_FDS 32 /* left for the rest of the process */
#define DEFAULT_CONCURRENCY 4096
#define DEFAULT_TIMEOUT_MS 1000
#define EVENTS 256

typedef struct {
    int fd; /* -1 when free */
    uint32_t target;
    uint64_t deadline; /* ms, CLOCK_MONOTONIC */
    int32_t prev, next; /* the in-flight list, oldest first; next links the free list */
} slot;

typedef struct {
    struct sockaddr_storage sa;
    socklen_t len;
} address;

typedef struct {
    uint16_t address, port;
} target;

struct pm_probe {
    int epfd;
    int udp;
    unsigned timeout_ms, concurrency;
    void *payload;
    size_t payload_len;
    address *addrs;
    size_t naddrs;
    target *targets;
    size_t ntargets, cap_targets, next_target, reported;
    slot *slots;
    int32_t free_slot, head, tail; /* -1: none */
    unsigned inflight, peak;
    int spare; /* a refused TCP socket ready to connect again, or -1 */
    int spare_family;
    int blocked; /* out of fds or local ports: wait for a probe to finish */
    int cancelled;
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
    p->timeout_ms = opts->timeout_ms ? opts->timeout_ms : DEFAULT_TIMEOUT_MS;
    p->concurrency = opts->concurrency ? opts->concurrency : pm_probe_default_concurrency();
    if (p->concurrency > max)
        p->concurrency = max;
    p->free_slot = p->head = p->tail = -1;
    p->spare = -1;
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
    for (unsigned i = p->concurrency; i-- > 0;) {
        p->slots[i].fd = -1;
        p->slots[i].next = p->free_slot;
        p->free_slot = (int32_t)i;
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
static const struct sockaddr *target_addr(pm_probe *p, uint32_t t, struct sockaddr_storage *buf,
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

static void emit(pm_probe *p, pm_probe_result *r, uint32_t t, int state, int err)
{
    r->target = t;
    r->port = p->targets[t].port;
    r->address = p->targets[t].address;
    r->state = (uint8_t)state;
    r->err = err;
    p->reported++;
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

static void keep_spare(pm_probe *p, int fd, int family)
{
    if (p->spare >= 0)
        close(p->spare);
    p->spare = fd;
    p->spare_family = family;
}

static int new_socket(pm_probe *p, int family)
{
    if (!p->udp && p->spare >= 0) {
        int fd = p->spare;
        p->spare = -1;
        if (p->spare_family == family)
            return fd;
        close(fd);
    }
    int fd = socket(family, (p->udp ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    if (family == AF_INET)
        setsockopt(fd, SOL_IP, IP_RECVERR, &one, sizeof(one));
    else
        setsockopt(fd, SOL_IPV6, IPV6_RECVERR, &one, sizeof(one));
    return fd;
}

/* Puts fd for target t into a slot and the epoll set. */
static int start_waiting(pm_probe *p, int fd, uint32_t t)
{
    int32_t s = p->free_slot;
    slot *sl = &p->slots[s];
    struct epoll_event ev = {.events = p->udp ? EPOLLIN : EPOLLOUT, .data.u64 = (uint64_t)s};
    if (epoll_ctl(p->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return -1;
    p->free_slot = sl->next;
    sl->fd = fd;
    sl->target = t;
    sl->deadline = now_ms() + p->timeout_ms;
    sl->prev = p->tail;
    sl->next = -1;
    if (p->tail >= 0)
        p->slots[p->tail].next = s;
    else
        p->head = s;
    p->tail = s;
    if (++p->inflight > p->peak)
        p->peak = p->inflight;
    return 0;
}

static void finish_slot(pm_probe *p, int32_t s)
{
    slot *sl = &p->slots[s];
    if (sl->prev >= 0)
        p->slots[sl->prev].next = sl->next;
    else
        p->head = sl->next;
    if (sl->next >= 0)
        p->slots[sl->next].prev = sl->prev;
    else
        p->tail = sl->prev;
    sl->fd = -1;
    sl->next = p->free_slot;
    p->free_slot = s;
    p->inflight--;
    p->blocked = 0;
}

/* A resource the host is short of: worth waiting for a probe to finish. */
static int transient(int err)
{
    return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM || err == EADDRNOTAVAIL;
}

/* Starts the probe of target t: 1 with a result in *r (it finished at
 * once), 0 when it waits in the epoll set, -1 when it must be retried. */
static int launch_tcp(pm_probe *p, uint32_t t, pm_probe_result *r)
{
    struct sockaddr_storage buf;
    socklen_t len;
    const struct sockaddr *sa = target_addr(p, t, &buf, &len);
    int fd = new_socket(p, sa->sa_family);
    if (fd < 0)
        goto failed;
    if (connect(fd, sa, len) == 0)
        goto connected;
    if (errno == EINPROGRESS) {
        if (connect(fd, sa, len) == 0 || errno == EISCONN)
            goto connected;
        if (errno == EALREADY) {
            if (start_waiting(p, fd, t) == 0)
                return 0;
            close(fd);
            goto failed;
        }
    }
    if (errno == ECONNREFUSED) {
        keep_spare(p, fd, sa->sa_family);
        emit(p, r, t, PM_PROBE_CLOSED, 0);
        return 1;
    }
    int err = errno;
    close(fd);
    errno = err;
failed:
    if (transient(errno) && p->inflight > 0)
        return -1;
    emit(p, r, t, errno_state(errno), errno);
    return 1;
connected:
    emit(p, r, t, connected_state(fd, sa), 0);
    close_connected(fd);
    return 1;
}

static int launch_udp(pm_probe *p, uint32_t t, pm_probe_result *r)
{
    struct sockaddr_storage buf;
    socklen_t len;
    const struct sockaddr *sa = target_addr(p, t, &buf, &len);
    int fd = new_socket(p, sa->sa_family);
    if (fd < 0)
        goto failed;
    if (connect(fd, sa, len) < 0 || send(fd, p->payload, p->payload_len, 0) < 0 ||
        start_waiting(p, fd, t) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        goto failed;
    }
    return 0;
failed:
    if (transient(errno) && p->inflight > 0)
        return -1;
    emit(p, r, t, errno_state(errno), errno);
    return 1;
}

/* An event on slot s: 1 with a result in *r, or 0 while it still waits. */
static int reap(pm_probe *p, int32_t s, uint32_t events, pm_probe_result *r)
{
    slot *sl = &p->slots[s];
    int fd = sl->fd, state, err = 0;
    uint32_t t = sl->target;
    struct sockaddr_storage buf;
    socklen_t len;
    const struct sockaddr *sa = target_addr(p, t, &buf, &len);
    if ((events & EPOLLERR) && icmp_state(fd, &state, &err))
        goto done;
    if (p->udp) {
        char byte;
        if (recv(fd, &byte, 1, MSG_DONTWAIT | MSG_TRUNC) >= 0)
            state = PM_PROBE_OPEN;
        else if (errno == EAGAIN || errno == EINTR)
            return 0;
        else
            state = errno_state(err = errno);
        if (state == PM_PROBE_CLOSED)
            err = 0;
        goto done;
    }
    if (connect(fd, sa, len) == 0 || errno == EISCONN) {
        state = connected_state(fd, sa);
        finish_slot(p, s);
        close_connected(fd);
        emit(p, r, t, state, 0);
        return 1;
    }
    if (errno == EALREADY || errno == EINTR)
        return 0;
    err = errno;
    state = errno_state(err);
    if (state == PM_PROBE_CLOSED)
        err = 0;
done:
    finish_slot(p, s);
    close(fd);
    emit(p, r, t, state, err);
    return 1;
}

size_t pm_probe_step(pm_probe *p, pm_probe_result *out, size_t max)
{
    size_t n = 0;
    if (p->cancelled)
        return 0;
    while (p->inflight > 0 && n < max) {
        struct epoll_event ev[EVENTS];
        int want = max - n < EVENTS ? (int)(max - n) : EVENTS;
        int k = epoll_wait(p->epfd, ev, want, 0);
        for (int i = 0; i < k; i++)
            n += (size_t)reap(p, (int32_t)ev[i].data.u64, ev[i].events, &out[n]);
        if (k < want)
            break;
    }
    uint64_t now = now_ms();
    while (n < max && p->head >= 0 && p->slots[p->head].deadline <= now) {
        int32_t s = p->head;
        int fd = p->slots[s].fd;
        uint32_t t = p->slots[s].target;
        finish_slot(p, s);
        close(fd);
        emit(p, &out[n++], t, p->udp ? PM_PROBE_OPEN_FILTERED : PM_PROBE_FILTERED, 0);
    }
    while (n < max && !p->blocked && p->inflight < p->concurrency && p->next_target < p->ntargets) {
        uint32_t t = (uint32_t)p->next_target;
        int rc = p->udp ? launch_udp(p, t, &out[n]) : launch_tcp(p, t, &out[n]);
        if (rc < 0) {
            p->blocked = 1;
            break;
        }
        p->next_target++;
        n += (size_t)rc;
    }
    if (p->next_target == p->ntargets && p->spare >= 0) {
        close(p->spare);
        p->spare = -1;
    }
    return n;
}

int pm_probe_timeout(const pm_probe *p)
{
    if (pm_probe_done(p))
        return -1;
    if (!p->blocked && p->inflight < p->concurrency && p->next_target < p->ntargets)
        return 0;
    if (p->head < 0)
        return p->next_target < p->ntargets ? 0 : -1;
    uint64_t now = now_ms(), deadline = p->slots[p->head].deadline;
    return deadline <= now ? 0 : (int)(deadline - now);
}

int pm_probe_done(const pm_probe *p)
{
    return p->cancelled || p->reported == p->ntargets;
}

static void close_all(pm_probe *p)
{
    while (p->head >= 0) {
        int fd = p->slots[p->head].fd;
        finish_slot(p, p->head);
        close(fd);
    }
    if (p->spare >= 0)
        close(p->spare);
    p->spare = -1;
}

void pm_probe_cancel(pm_probe *p)
{
    close_all(p);
    p->cancelled = 1;
}

void pm_probe_get_stats(const pm_probe *p, pm_probe_stats *st)
{
    st->targets = p->ntargets;
    st->reported = p->reported;
    st->inflight = p->inflight;
    st->peak = p->peak;
    st->concurrency = p->concurrency;
}

void pm_probe_free(pm_probe *p)
{
    if (!p)
        return;
    if (p->slots)
        close_all(p);
    if (p->epfd >= 0)
        close(p->epfd);
    free(p->slots);
    free(p->addrs);
    free(p->targets);
    free(p->payload);
    free(p);
}
