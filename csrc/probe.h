/* Port probes: non-blocking TCP connects (and UDP probes) to many
 * (address, port) pairs, as an engine with one pollable fd (an epoll
 * instance). The caller polls pm_probe_fd() for readability, calls
 * pm_probe_step() when it is readable or when pm_probe_timeout() says so,
 * and gets results back in batches. Lua-free: the Lua binding and the
 * benchmarks both drive it.
 *
 * States follow nmap's names: open (connected, or a UDP reply), closed (RST
 * or ECONNREFUSED, an ICMP port unreachable for UDP; a socket that connected
 * to itself), filtered (no answer before the timeout), unreachable (ICMP
 * host, net or admin unreachable), error (anything else, with its errno),
 * open|filtered (UDP: no answer to any try).
 *
 * UDP retransmits and paces, as nmap -sU does. A host answers a closed UDP
 * port with an ICMP port unreachable, but rate-limits those: Linux sends a
 * burst of 6, then one a second to each source (net.ipv4.icmp_ratelimit,
 * 1000 ms). So a probe left unanswered is sent again, up to `retries` times,
 * before its port counts as open|filtered, and each address has a pace: the
 * least time between two probes sent to it. The pace starts at 0 (as fast as
 * the concurrency allows) and doubles, up to 1 s, whenever a retransmitted
 * probe gets an answer: the answer to its earlier try was lost, which is what
 * rate limiting looks like. The tries a port gets are capped at one more than
 * the highest try that any port of its address was answered on, so a host
 * that drops everything costs two tries a port, not retries + 1; and a retry
 * waits at least a second after the try before it, so that the host's ICMP
 * budget has refilled by then. TCP needs none of this: the kernel retransmits
 * SYNs itself. */
#ifndef PORTMAN_PROBE_H
#define PORTMAN_PROBE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum pm_probe_state {
    PM_PROBE_OPEN,
    PM_PROBE_CLOSED,
    PM_PROBE_FILTERED,
    PM_PROBE_UNREACHABLE,
    PM_PROBE_ERROR,
    PM_PROBE_OPEN_FILTERED,
};

/* The state's name ("open", ..., "open|filtered"). */
const char *pm_probe_state_name(int state);

typedef struct {
    uint32_t target; /* index in the order targets were added */
    uint16_t port;
    uint16_t address; /* index of the address the target was added with */
    uint8_t state;
    int err; /* the errno behind unreachable and error, else 0 */
} pm_probe_result;

typedef struct {
    int udp; /* nonzero: UDP probes */
    unsigned timeout_ms; /* per probe; 0 takes 1000 */
    unsigned concurrency; /* sockets in flight; 0 takes the default */
    const void *payload; /* UDP: the datagram to send (may be empty) */
    size_t payload_len;
    unsigned retries; /* UDP: most retransmissions of an unanswered probe */
} pm_probe_opts;

/* The retries a caller passes when it has no opinion. */
#define PM_PROBE_DEFAULT_RETRIES 6
#define PM_PROBE_MAX_RETRIES 50

typedef struct pm_probe pm_probe;

/* Sockets the engine may hold open at once: what RLIMIT_NOFILE leaves
 * after the fds already open and a reserve for the rest of the process;
 * at least 1 when anything is left, 0 when nothing is. */
unsigned pm_probe_max_concurrency(void);
/* The default concurrency: pm_probe_max_concurrency(), at most 4096. */
unsigned pm_probe_default_concurrency(void);

/* A new engine, or NULL with errno set. A concurrency above
 * pm_probe_max_concurrency() is lowered to it (never above RLIMIT_NOFILE);
 * EMFILE when no fd is left for any probe. */
pm_probe *pm_probe_new(const pm_probe_opts *opts);
/* Adds one address (copied) and returns its index, or -1 (EINVAL: not
 * AF_INET/AF_INET6; ENOMEM; ERANGE beyond 65535 addresses). */
int pm_probe_add_address(pm_probe *p, const struct sockaddr *sa, socklen_t len);
/* Adds the targets (address, ports[i]) in order; 0, or -1 with errno
 * (EBUSY once the first step ran). */
int pm_probe_add_ports(pm_probe *p, int address, const uint16_t *ports, size_t n);

/* The fd to poll for readability (the epoll instance). */
int pm_probe_fd(const pm_probe *p);
/* Does the ready work: reaps answers, expires probes past their timeout,
 * starts new probes up to the concurrency bound. Writes at most max results
 * to out and returns how many it wrote. A run of 2048 targets or more on a
 * machine with two cores is split in two halves, each with half the
 * concurrency, and step() works on both at once (one on a thread of the
 * engine's own); it returns when both are done, so the caller stays
 * single-threaded. */
size_t pm_probe_step(pm_probe *p, pm_probe_result *out, size_t max);
/* Milliseconds until pm_probe_step() has work without an event on the fd:
 * 0 now, -1 when the run is over (everything reported, or cancelled). */
int pm_probe_timeout(const pm_probe *p);
/* Nonzero once every target is reported, or the run was cancelled. */
int pm_probe_done(const pm_probe *p);
/* Stops the run: closes the sockets in flight; nothing more is reported. */
void pm_probe_cancel(pm_probe *p);

/* Counters: targets added, results reported, sockets in flight now, the
 * largest number in flight (with two shards, the sum of each one's largest,
 * so at most the true peak's upper bound), the concurrency in force, and the
 * shards the run uses (0 before the first step, then 1 or 2). UDP: the
 * probes sent (every try), how many of them were retransmissions, and the
 * largest pace any address reached (ms between two probes). A UDP run uses
 * one shard: the pace of an address is one thread's. */
typedef struct {
    size_t targets, reported, sent, retransmits;
    unsigned inflight, peak, concurrency, shards, pace_ms;
} pm_probe_stats;
void pm_probe_get_stats(const pm_probe *p, pm_probe_stats *st);

/* Closes every fd and frees p (NULL is fine). */
void pm_probe_free(pm_probe *p);

#endif
