/* Starting and watching programs (portman.supervisor; docs/design.md,
 * "Supervised programs").
 *
 *   core.spawn{file, argv, env?, cwd?, uid?, gid?, groups?, fds?, listen_fds?,
 *              stdin?, stdout?, stderr?, new_session?, pdeath_signal?}
 *     -> pid | nil, msg, code
 *     file: the program; without a '/', looked up in the PATH of env (else
 *     portman's PATH, else /usr/local/bin:/usr/bin:/bin), as execvp does.
 *     argv: {argv0, ...}. env: {"K=V", ...}, the whole environment
 *     (portman's own when absent). fds: placed at 3, 4, ... in the child,
 *     not close-on-exec there (socket activation); with listen_fds, also
 *     LISTEN_FDS=#fds and LISTEN_PID=<the child's pid> (replacing any in
 *     env). stdin/stdout/stderr: fds the caller made (/dev/null by
 *     default). new_session (true by default): setsid, so the program and
 *     its children are one process group whose id is the pid.
 *     pdeath_signal: a signal name the child gets when the thread that
 *     spawned it ends (prctl PR_SET_PDEATHSIG), set after the ids change
 *     (a change of ids clears it). uid, gid, groups: the ids to take;
 *     running as root, the supplementary groups become groups, or {gid}
 *     when only uid or gid is given, so none of root's stay.
 *     A failure in the child before exec (exec itself, chdir, setuid, ...)
 *     comes back through a close-on-exec pipe as its errno: spawn reaps the
 *     child and returns nil, "not_found: exec postgres: ENOENT: ...".
 *   core.reap(pid) -> nil (running) | exit_code | false, signal_name
 *     | nil, msg, code: waitpid(pid, WNOHANG) on that pid only, so
 *     libuv's own children are never reaped here.
 *   core.kill(pid | -pgid, signal_name?) -> true | nil, msg, code
 *     ("SIGTERM" by default; "SIG0" checks that the target exists).
 *   core.user_info(name | uid) -> {name, uid, gid, home, shell, groups}
 *     | nil, msg, "not_found"; core.group_info(name | gid) -> {name, gid}
 *     | nil, msg, "not_found".
 *
 * The process has other threads (miniupnpc's worker, the stderr reader),
 * so between fork and exec the child calls only async-signal-safe
 * functions: argv, envp, the PATH candidates and the LISTEN_PID slot are
 * built before the fork, in memory the parent's Lua state owns. Signals
 * are blocked across the fork (libuv's handlers must never run in the
 * child); the child resets every disposition and unblocks them. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lua_util.h"
#include "visibility.h" /* last: see there */

/* environ comes from unistd.h (_GNU_SOURCE): declared again after
 * visibility.h, it would be taken for a hidden symbol of ours. */

#define MAX_FDS 1024
#define MAX_GROUPS 65536
#define DEFAULT_PATH "/usr/local/bin:/usr/bin:/bin"

static const struct { int sig; const char *name; } signals[] = {
    {SIGHUP, "SIGHUP"},   {SIGINT, "SIGINT"},       {SIGQUIT, "SIGQUIT"},   {SIGILL, "SIGILL"},
    {SIGTRAP, "SIGTRAP"}, {SIGABRT, "SIGABRT"},     {SIGBUS, "SIGBUS"},     {SIGFPE, "SIGFPE"},
    {SIGKILL, "SIGKILL"}, {SIGUSR1, "SIGUSR1"},     {SIGSEGV, "SIGSEGV"},   {SIGUSR2, "SIGUSR2"},
    {SIGPIPE, "SIGPIPE"}, {SIGALRM, "SIGALRM"},     {SIGTERM, "SIGTERM"},   {SIGSTKFLT, "SIGSTKFLT"},
    {SIGCHLD, "SIGCHLD"}, {SIGCONT, "SIGCONT"},     {SIGSTOP, "SIGSTOP"},   {SIGTSTP, "SIGTSTP"},
    {SIGTTIN, "SIGTTIN"}, {SIGTTOU, "SIGTTOU"},     {SIGURG, "SIGURG"},     {SIGXCPU, "SIGXCPU"},
    {SIGXFSZ, "SIGXFSZ"}, {SIGVTALRM, "SIGVTALRM"}, {SIGPROF, "SIGPROF"},   {SIGWINCH, "SIGWINCH"},
    {SIGIO, "SIGIO"},     {SIGPWR, "SIGPWR"},       {SIGSYS, "SIGSYS"},
};
#define N_SIGNALS (sizeof(signals) / sizeof(signals[0]))

static int signal_number(const char *name)
{
    if (strcmp(name, "SIG0") == 0)
        return 0;
    for (size_t i = 0; i < N_SIGNALS; i++)
        if (strcmp(signals[i].name, name) == 0)
            return signals[i].sig;
    return -1;
}

static void push_signal_name(lua_State *L, int sig)
{
    for (size_t i = 0; i < N_SIGNALS; i++)
        if (signals[i].sig == sig) {
            lua_pushstring(L, signals[i].name);
            return;
        }
    lua_pushfstring(L, "SIG%d", sig);
}

/* --- arguments -------------------------------------------------------- */

static const char *const spawn_keys[] = {
    "file", "argv", "env", "cwd", "uid", "gid", "groups", "fds", "listen_fds", "stdin", "stdout",
    "stderr", "new_session", "pdeath_signal", NULL,
};

static void check_keys(lua_State *L)
{
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        int known = 0;
        if (lua_type(L, -2) == LUA_TSTRING) {
            const char *k = lua_tostring(L, -2);
            for (int i = 0; spawn_keys[i]; i++)
                known |= strcmp(spawn_keys[i], k) == 0;
        }
        if (!known) {
            lua_pop(L, 1);
            luaL_argerror(L, 1, lua_pushfstring(L, "unknown field '%s'", luaL_tolstring(L, -1, NULL)));
        }
        lua_pop(L, 1);
    }
}

/* A string field without NULs, or NULL when absent. */
static const char *opt_string(lua_State *L, const char *k, int required)
{
    int t = lua_getfield(L, 1, k);
    const char *s = NULL;
    if (t == LUA_TNIL && !required) {
        lua_pop(L, 1);
        return NULL;
    }
    size_t len = 0;
    if (t == LUA_TSTRING)
        s = lua_tolstring(L, -1, &len);
    if (!s || len == 0 || memchr(s, '\0', len))
        luaL_argerror(L, 1, lua_pushfstring(L, "%s: non-empty string without NUL expected, got %s", k,
                                            luaL_typename(L, -1)));
    lua_pop(L, 1); /* the table keeps the string alive */
    return s;
}

static lua_Integer opt_int(lua_State *L, const char *k, lua_Integer lo, lua_Integer hi, lua_Integer dflt)
{
    int t = lua_getfield(L, 1, k);
    if (t == LUA_TNIL) {
        lua_pop(L, 1);
        return dflt;
    }
    int isint = 0;
    lua_Integer n = t == LUA_TNUMBER ? lua_tointegerx(L, -1, &isint) : 0;
    if (!isint || n < lo || n > hi)
        luaL_argerror(L, 1, lua_pushfstring(L, "%s: integer %I-%I expected", k, lo, hi));
    lua_pop(L, 1);
    return n;
}

static int opt_bool(lua_State *L, const char *k, int dflt)
{
    int t = lua_getfield(L, 1, k);
    int v = dflt;
    if (t == LUA_TBOOLEAN)
        v = lua_toboolean(L, -1);
    else if (t != LUA_TNIL)
        luaL_argerror(L, 1, lua_pushfstring(L, "%s: boolean expected, got %s", k, luaL_typename(L, -1)));
    lua_pop(L, 1);
    return v;
}

/* A list field: pushes it and returns its length, or 0 (and pushes
 * nothing) when absent and optional. */
static lua_Integer opt_list(lua_State *L, const char *k, int required, lua_Integer max)
{
    int t = lua_getfield(L, 1, k);
    if (t == LUA_TNIL && !required) {
        lua_pop(L, 1);
        return -1;
    }
    if (t != LUA_TTABLE)
        luaL_argerror(L, 1, lua_pushfstring(L, "%s: list expected, got %s", k, luaL_typename(L, -1)));
    lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
    if ((required && n == 0) || n > max)
        luaL_argerror(L, 1, lua_pushfstring(L, "%s: list of 1-%I items expected", k, max));
    return n;
}

/* Item i of the list on top: a string without NULs (env items hold '='). */
static const char *list_string(lua_State *L, const char *k, lua_Integer i, int need_eq, size_t *lenp)
{
    size_t len = 0;
    const char *s = NULL;
    if (lua_rawgeti(L, -1, i) == LUA_TSTRING)
        s = lua_tolstring(L, -1, &len);
    if (!s || memchr(s, '\0', len))
        luaL_argerror(L, 1, lua_pushfstring(L, "%s[%I]: string without NUL expected, got %s", k, i,
                                            luaL_typename(L, -1)));
    if (need_eq && (len == 0 || s[0] == '=' || !memchr(s, '=', len)))
        luaL_argerror(L, 1, lua_pushfstring(L, "%s[%I]: \"NAME=value\" expected, got \"%s\"", k, i, s));
    lua_pop(L, 1);
    if (lenp)
        *lenp = len;
    return s;
}

static lua_Integer list_int(lua_State *L, const char *k, lua_Integer i, lua_Integer lo, lua_Integer hi)
{
    int isint = 0;
    lua_Integer n = lua_rawgeti(L, -1, i) == LUA_TNUMBER ? lua_tointegerx(L, -1, &isint) : 0;
    if (!isint || n < lo || n > hi)
        luaL_argerror(L, 1, lua_pushfstring(L, "%s[%I]: integer %I-%I expected", k, i, lo, hi));
    lua_pop(L, 1);
    return n;
}

static int valid_fd(int fd)
{
    return fcntl(fd, F_GETFD) >= 0;
}

/* --- the child ---------------------------------------------------------- */

enum stage { ST_SIGNALS = 1, ST_SETSID, ST_GROUPS, ST_SETGID, ST_SETUID, ST_PDEATH, ST_CHDIR, ST_FDS, ST_EXEC };

static const char *const stage_names[] = {
    "", "signals", "setsid", "setgroups", "setgid", "setuid", "prctl PR_SET_PDEATHSIG", "chdir", "place fds",
    "exec",
};

typedef struct {
    char *const *argv;
    char *const *envp;
    char *const *paths; /* exec candidates, NULL-terminated */
    char *pid_slot;     /* the digits of LISTEN_PID=, or NULL */
    const char *cwd;
    int set_ids, has_uid, has_gid, set_groups;
    uid_t uid;
    gid_t gid;
    const gid_t *groups;
    size_t ngroups;
    int new_session, pdeath;
    pid_t parent;
    int src[3];           /* stdin, stdout, stderr */
    const int *fds;       /* placed at 3.. */
    int nfds;
    int base;             /* above every fd involved */
    int errfd;            /* the report pipe's write end */
    int maxfd;            /* the fallback's bound for close-on-exec */
} child_plan;

/* Async-signal-safe from here to exec: no malloc, no stdio, no locks. */
static void report(const child_plan *c, int stage, int err)
{
    int msg[2] = {stage, err};
    ssize_t r;
    do
        r = write(c->errfd, msg, sizeof msg);
    while (r < 0 && errno == EINTR);
    _exit(127);
}

static void put_pid(char *slot, pid_t pid)
{
    char digits[24];
    int n = 0;
    unsigned long v = (unsigned long)pid;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (int i = 0; i < n; i++)
        slot[i] = digits[n - 1 - i];
    slot[n] = '\0';
}

static void child(child_plan *c)
{
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, &dfl, NULL) == 0)
            continue;
        /* glibc keeps its own signals (32, 33) from sigaction; one ignored
         * by whoever started portman would stay ignored in the program.
         * The kernel's struct with every field zero is SIG_DFL, no flags,
         * an empty mask, whatever its layout. */
        long zero[8] = {0};
        (void)syscall(SYS_rt_sigaction, sig, zero, NULL, (size_t)(NSIG / 8));
    }
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
        report(c, ST_SIGNALS, errno);
    if (c->new_session && setsid() < 0)
        report(c, ST_SETSID, errno);
    if (c->set_groups && setgroups(c->ngroups, c->groups) < 0)
        report(c, ST_GROUPS, errno);
    if (c->has_gid && setresgid(c->gid, c->gid, c->gid) < 0)
        report(c, ST_SETGID, errno);
    if (c->has_uid && setresuid(c->uid, c->uid, c->uid) < 0)
        report(c, ST_SETUID, errno);
    if (c->pdeath) { /* after the ids: changing them clears it */
        if (prctl(PR_SET_PDEATHSIG, (unsigned long)c->pdeath) < 0)
            report(c, ST_PDEATH, errno);
        if (getppid() != c->parent) { /* the parent died before the prctl */
            (void)raise(c->pdeath);
            _exit(127);
        }
    }
    if (c->cwd && chdir(c->cwd) < 0)
        report(c, ST_CHDIR, errno);
    /* Every source first goes above all the targets (close-on-exec copies),
     * so no target overwrites a source still to be placed. */
    int errfd = fcntl(c->errfd, F_DUPFD_CLOEXEC, c->base);
    if (errfd < 0)
        report(c, ST_FDS, errno);
    c->errfd = errfd;
    int tmp[3 + MAX_FDS];
    int n = 3 + c->nfds;
    for (int i = 0; i < n; i++) {
        int src = i < 3 ? c->src[i] : c->fds[i - 3];
        tmp[i] = fcntl(src, F_DUPFD_CLOEXEC, c->base);
        if (tmp[i] < 0)
            report(c, ST_FDS, errno);
    }
    for (int i = 0; i < n; i++)
        if (dup2(tmp[i], i) < 0) /* the copy at i is not close-on-exec */
            report(c, ST_FDS, errno);
    /* Everything else closes at exec. */
    if (close_range((unsigned)n, ~0U, CLOSE_RANGE_CLOEXEC) < 0)
        for (int fd = n; fd < c->maxfd; fd++)
            (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    if (c->pid_slot)
        put_pid(c->pid_slot, getpid());
    int err = ENOENT, denied = 0;
    for (char *const *p = c->paths; *p; p++) {
        execve(*p, c->argv, c->envp);
        err = errno;
        if (err == EACCES)
            denied = 1;
        else if (err != ENOENT && err != ENOTDIR && err != ESTALE && err != ENODEV && err != ETIMEDOUT)
            break; /* as execvp: only these move on to the next directory */
    }
    report(c, ST_EXEC, denied && (err == ENOENT || err == ENOTDIR) ? EACCES : err);
}

/* --- core.spawn --------------------------------------------------------- */

/* A bump allocator over one userdata block, left on the stack: freed by
 * the collector whatever happens (a raise included). */
typedef struct {
    char *p;
    size_t left;
} arena;

static void *take(arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n > a->left)
        return NULL; /* sized beforehand: never */
    void *p = a->p;
    a->p += n;
    a->left -= n;
    return p;
}

static int is_listen_var(const char *s)
{
    return strncmp(s, "LISTEN_PID=", 11) == 0 || strncmp(s, "LISTEN_FDS=", 11) == 0;
}

static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    check_keys(L);
    child_plan c;
    memset(&c, 0, sizeof c);

    const char *file = opt_string(L, "file", 1);
    c.cwd = opt_string(L, "cwd", 0);

    lua_Integer argc = opt_list(L, "argv", 1, 65536);
    size_t bytes = (size_t)(argc + 1) * sizeof(char *);
    for (lua_Integer i = 1; i <= argc; i++)
        (void)list_string(L, "argv", i, 0, NULL);
    int argv_idx = lua_gettop(L);

    lua_Integer envc = opt_list(L, "env", 0, 1 << 20);
    int env_idx = envc >= 0 ? lua_gettop(L) : 0;
    const char *path_var = NULL;
    if (envc >= 0) {
        for (lua_Integer i = 1; i <= envc; i++) {
            const char *s = list_string(L, "env", i, 1, NULL);
            if (strncmp(s, "PATH=", 5) == 0)
                path_var = s + 5;
        }
    } else {
        envc = 0;
        for (char **e = environ; *e; e++)
            envc++;
        path_var = getenv("PATH");
    }
    if (env_idx && !path_var)
        path_var = getenv("PATH");
    bytes += (size_t)(envc + 3) * sizeof(char *) + 64;

    lua_Integer nfds = opt_list(L, "fds", 0, MAX_FDS);
    int fds_idx = nfds >= 0 ? lua_gettop(L) : 0;
    if (nfds < 0)
        nfds = 0;
    bytes += (size_t)nfds * sizeof(int);
    for (lua_Integer i = 1; i <= nfds; i++) {
        lua_Integer fd = list_int(L, "fds", i, 0, INT_MAX);
        if (!valid_fd((int)fd))
            luaL_argerror(L, 1, lua_pushfstring(L, "fds[%I]: %I is not an open fd", i, fd));
    }
    int listen = opt_bool(L, "listen_fds", 0);

    static const char *const stdnames[] = {"stdin", "stdout", "stderr"};
    int std[3];
    for (int i = 0; i < 3; i++) {
        std[i] = (int)opt_int(L, stdnames[i], 0, INT_MAX, -1);
        if (std[i] >= 0 && !valid_fd(std[i]))
            luaL_argerror(L, 1, lua_pushfstring(L, "%s: %d is not an open fd", stdnames[i], std[i]));
    }

    c.has_uid = lua_getfield(L, 1, "uid") != LUA_TNIL;
    lua_pop(L, 1);
    c.uid = (uid_t)opt_int(L, "uid", 0, 0xfffffffe, 0);
    c.has_gid = lua_getfield(L, 1, "gid") != LUA_TNIL;
    lua_pop(L, 1);
    c.gid = (gid_t)opt_int(L, "gid", 0, 0xfffffffe, 0);
    lua_Integer ngroups = opt_list(L, "groups", 0, MAX_GROUPS);
    int groups_idx = ngroups >= 0 ? lua_gettop(L) : 0;
    if (ngroups >= 0)
        for (lua_Integer i = 1; i <= ngroups; i++)
            (void)list_int(L, "groups", i, 0, 0xfffffffe);
    c.new_session = opt_bool(L, "new_session", 1);
    const char *pdeath = opt_string(L, "pdeath_signal", 0);
    if (pdeath) {
        c.pdeath = signal_number(pdeath);
        if (c.pdeath <= 0)
            luaL_argerror(L, 1, lua_pushfstring(L, "pdeath_signal: unknown signal '%s'", pdeath));
    }

    /* The exec candidates: the file itself, or each PATH directory's. */
    size_t flen = strlen(file), npaths = 1;
    int search = strchr(file, '/') == NULL;
    if (search) {
        if (!path_var || !*path_var)
            path_var = DEFAULT_PATH;
        for (const char *p = path_var; *p; p++)
            npaths += *p == ':';
        bytes += strlen(path_var) + npaths * (flen + 2 + 16);
    }
    bytes += (npaths + 1) * sizeof(char *);
    size_t ng = ngroups > 0 ? (size_t)ngroups : 1;
    bytes += ng * sizeof(gid_t);
    bytes += 16 * (npaths + 16) + 128; /* each take rounds up to 16; the LISTEN_ variables */

    arena a;
    a.left = bytes;
    a.p = lua_newuserdatauv(L, bytes, 0);

    /* argv */
    char **argv = take(&a, (size_t)(argc + 1) * sizeof(char *));
    lua_pushvalue(L, argv_idx);
    for (lua_Integer i = 1; i <= argc; i++)
        argv[i - 1] = (char *)list_string(L, "argv", i, 0, NULL);
    argv[argc] = NULL;
    lua_pop(L, 1);

    /* envp: the caller's (or ours), with LISTEN_FDS and LISTEN_PID set when asked */
    char **envp = take(&a, (size_t)(envc + 3) * sizeof(char *));
    size_t ne = 0;
    if (env_idx) {
        lua_pushvalue(L, env_idx);
        for (lua_Integer i = 1; i <= envc; i++) {
            const char *s = list_string(L, "env", i, 1, NULL);
            if (!(listen && is_listen_var(s)))
                envp[ne++] = (char *)s;
        }
        lua_pop(L, 1);
    } else {
        for (char **e = environ; *e; e++)
            if (!(listen && is_listen_var(*e)))
                envp[ne++] = *e;
    }
    if (listen) {
        char *fdsvar = take(&a, 32), *pidvar = take(&a, 40);
        memcpy(fdsvar, "LISTEN_FDS=", 11);
        put_pid(fdsvar + 11, (pid_t)nfds);
        memcpy(pidvar, "LISTEN_PID=", 12);
        c.pid_slot = pidvar + 11; /* filled in by the child */
        envp[ne++] = fdsvar;
        envp[ne++] = pidvar;
    }
    envp[ne] = NULL;

    /* exec candidates */
    char **paths = take(&a, (npaths + 1) * sizeof(char *));
    size_t np = 0;
    if (!search) {
        paths[np++] = (char *)file;
    } else {
        const char *p = path_var;
        for (;;) {
            const char *end = strchr(p, ':');
            size_t dlen = end ? (size_t)(end - p) : strlen(p);
            char *cand = take(&a, dlen + flen + 2);
            if (dlen == 0) { /* an empty entry is the current directory */
                memcpy(cand, file, flen + 1);
            } else {
                memcpy(cand, p, dlen);
                cand[dlen] = '/';
                memcpy(cand + dlen + 1, file, flen + 1);
            }
            paths[np++] = cand;
            if (!end)
                break;
            p = end + 1;
        }
    }
    paths[np] = NULL;

    int *fds = take(&a, (size_t)(nfds ? nfds : 1) * sizeof(int));
    int maxfd = 2;
    if (fds_idx) {
        lua_pushvalue(L, fds_idx);
        for (lua_Integer i = 1; i <= nfds; i++) {
            fds[i - 1] = (int)list_int(L, "fds", i, 0, INT_MAX);
            if (fds[i - 1] > maxfd)
                maxfd = fds[i - 1];
        }
        lua_pop(L, 1);
    }
    gid_t *groups = take(&a, ng * sizeof(gid_t));
    if (groups_idx) {
        lua_pushvalue(L, groups_idx);
        for (lua_Integer i = 1; i <= ngroups; i++)
            groups[i - 1] = (gid_t)list_int(L, "groups", i, 0, 0xfffffffe);
        lua_pop(L, 1);
    }
    int root = geteuid() == 0;
    if (ngroups >= 0) {
        c.set_groups = 1;
        c.ngroups = (size_t)ngroups;
    } else if (root && (c.has_uid || c.has_gid)) {
        c.set_groups = 1; /* none of root's groups stay */
        c.ngroups = 1;
        groups[0] = c.has_gid ? c.gid : getgid();
    }
    c.groups = groups;
    c.argv = argv;
    c.envp = envp;
    c.paths = paths;
    c.fds = fds;
    c.nfds = (int)nfds;

    /* The fds the child needs, made before the fork. */
    int devnull[3] = {-1, -1, -1};
    for (int i = 0; i < 3; i++) {
        if (std[i] < 0) {
            devnull[i] = open("/dev/null", (i == 0 ? O_RDONLY : O_WRONLY) | O_CLOEXEC);
            if (devnull[i] < 0) {
                int err = errno;
                for (int j = 0; j < i; j++)
                    if (devnull[j] >= 0)
                        (void)close(devnull[j]);
                return pm_fail_errno(L, err, "open /dev/null");
            }
            std[i] = devnull[i];
        }
        c.src[i] = std[i];
        if (std[i] > maxfd)
            maxfd = std[i];
    }
    int pipefd[2];
    int perr = pipe2(pipefd, O_CLOEXEC) < 0 ? errno : 0;
    if (perr) {
        for (int i = 0; i < 3; i++)
            if (devnull[i] >= 0)
                (void)close(devnull[i]);
        return pm_fail_errno(L, perr, "pipe");
    }
    c.errfd = pipefd[1];
    if (pipefd[1] > maxfd)
        maxfd = pipefd[1];
    c.base = maxfd + 1 > 3 + c.nfds ? maxfd + 1 : 3 + c.nfds;
    struct rlimit rl;
    c.maxfd = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)INT_MAX ? (int)rl.rlim_cur : 65536;
    c.parent = getpid();

    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0)
        child(&c); /* never returns */
    int ferr = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    (void)close(pipefd[1]);
    for (int i = 0; i < 3; i++)
        if (devnull[i] >= 0)
            (void)close(devnull[i]);
    if (pid < 0) {
        (void)close(pipefd[0]);
        return pm_fail_errno(L, ferr, "fork");
    }
    int msg[2];
    size_t got = 0;
    while (got < sizeof msg) {
        ssize_t r = read(pipefd[0], (char *)msg + got, sizeof msg - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    (void)close(pipefd[0]);
    if (got == 0) {
        lua_pushinteger(L, pid);
        return 1;
    }
    /* The child failed before exec (and exits 127): reap it, say why. */
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    if (got < sizeof msg)
        return pm_fail(L, "EIO", "spawn %s: the child's report was cut short", file);
    int stage = msg[0] >= ST_SIGNALS && msg[0] <= ST_EXEC ? msg[0] : ST_EXEC;
    const char *what = stage == ST_EXEC ? lua_pushfstring(L, "exec %s", file)
                       : stage == ST_CHDIR ? lua_pushfstring(L, "chdir %s", c.cwd)
                       : stage == ST_SETUID ? lua_pushfstring(L, "setuid %d", (int)c.uid)
                       : stage == ST_SETGID ? lua_pushfstring(L, "setgid %d", (int)c.gid)
                       : lua_pushfstring(L, "spawn %s: %s", file, stage_names[stage]);
    return pm_fail_errno(L, msg[1], what);
}

/* --- core.reap, core.kill ------------------------------------------------ */

static int l_reap(lua_State *L)
{
    lua_Integer pid = luaL_checkinteger(L, 1);
    if (pid <= 0 || pid > INT_MAX)
        luaL_argerror(L, 1, "pid: positive integer expected (one child only)");
    int st;
    pid_t r;
    do
        r = waitpid((pid_t)pid, &st, WNOHANG);
    while (r < 0 && errno == EINTR);
    if (r < 0)
        return pm_fail_errno(L, errno, lua_pushfstring(L, "waitpid %I", pid));
    if (r == 0) {
        lua_pushnil(L);
        return 1;
    }
    if (WIFEXITED(st)) {
        lua_pushinteger(L, WEXITSTATUS(st));
        return 1;
    }
    if (WIFSIGNALED(st)) {
        lua_pushboolean(L, 0);
        push_signal_name(L, WTERMSIG(st));
        return 2;
    }
    lua_pushnil(L); /* stopped or continued: not asked for, still there */
    return 1;
}

static int check_signal(lua_State *L, int arg, const char *dflt)
{
    const char *name = luaL_optstring(L, arg, dflt);
    int sig = signal_number(name);
    if (sig < 0)
        luaL_argerror(L, arg, lua_pushfstring(L, "unknown signal '%s'", name));
    return sig;
}

static int l_kill(lua_State *L)
{
    lua_Integer pid = luaL_checkinteger(L, 1);
    if (pid == 0 || pid == -1 || pid > INT_MAX || pid < -(lua_Integer)INT_MAX)
        luaL_argerror(L, 1, "pid or -pgid expected (0 and -1 are refused)");
    int sig = check_signal(L, 2, "SIGTERM");
    if (kill((pid_t)pid, sig) < 0)
        return pm_fail_errno(L, errno, lua_pushfstring(L, "kill %I", pid));
    lua_pushboolean(L, 1);
    return 1;
}

/* --- users and groups ---------------------------------------------------- */

static int lookup_failed(lua_State *L, int err, const char *kind, int arg)
{
    if (err == 0 || err == ENOENT || err == ESRCH || err == EBADF || err == EPERM)
        return pm_fail(L, "not_found", "no %s %s", kind, luaL_tolstring(L, arg, NULL));
    return pm_fail_errno(L, err, lua_pushfstring(L, "%s %s", kind, luaL_tolstring(L, arg, NULL)));
}

/* The name or id at arg (a string of digits counts as an id). */
static int id_arg(lua_State *L, int arg, const char *what, const char **name, lua_Integer *id)
{
    int isint = 0;
    *name = NULL;
    *id = lua_tointegerx(L, arg, &isint);
    if (lua_type(L, arg) == LUA_TNUMBER) {
        if (!isint || *id < 0 || *id > 0xfffffffe)
            luaL_argerror(L, arg, lua_pushfstring(L, "%s: id 0-4294967294 expected", what));
        return 1;
    }
    size_t len;
    const char *s = luaL_checklstring(L, arg, &len);
    if (len == 0 || memchr(s, '\0', len))
        luaL_argerror(L, arg, lua_pushfstring(L, "%s: name or id expected", what));
    *name = s;
    return 0;
}

static int l_user_info(lua_State *L)
{
    const char *name;
    lua_Integer id;
    int by_id = id_arg(L, 1, "user", &name, &id);
    struct passwd pw, *res = NULL;
    long sz = sysconf(_SC_GETPW_R_SIZE_MAX);
    size_t bufsz = sz > 0 ? (size_t)sz : 16384;
    int err;
    char *buf;
    for (;;) {
        buf = lua_newuserdatauv(L, bufsz, 0);
        err = by_id ? getpwuid_r((uid_t)id, &pw, buf, bufsz, &res) : getpwnam_r(name, &pw, buf, bufsz, &res);
        if (err != ERANGE || bufsz >= (1 << 24))
            break;
        lua_pop(L, 1);
        bufsz *= 4;
    }
    if (!res)
        return lookup_failed(L, err, "user", 1);
    int n = 64;
    gid_t *groups = NULL;
    for (;;) {
        groups = lua_newuserdatauv(L, (size_t)n * sizeof(gid_t), 0);
        int got = n;
        if (getgrouplist(pw.pw_name, pw.pw_gid, groups, &got) >= 0) {
            n = got;
            break;
        }
        lua_pop(L, 1);
        if (got <= n)
            got = n * 2;
        if (got > MAX_GROUPS)
            return pm_fail(L, "EINVAL", "user %s: more than %d groups", pw.pw_name, MAX_GROUPS);
        n = got;
    }
    lua_createtable(L, 0, 6);
    lua_pushstring(L, pw.pw_name);
    lua_setfield(L, -2, "name");
    lua_pushinteger(L, pw.pw_uid);
    lua_setfield(L, -2, "uid");
    lua_pushinteger(L, pw.pw_gid);
    lua_setfield(L, -2, "gid");
    lua_pushstring(L, pw.pw_dir ? pw.pw_dir : "");
    lua_setfield(L, -2, "home");
    lua_pushstring(L, pw.pw_shell ? pw.pw_shell : "");
    lua_setfield(L, -2, "shell");
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        lua_pushinteger(L, groups[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "groups");
    return 1;
}

static int l_group_info(lua_State *L)
{
    const char *name;
    lua_Integer id;
    int by_id = id_arg(L, 1, "group", &name, &id);
    struct group gr, *res = NULL;
    long sz = sysconf(_SC_GETGR_R_SIZE_MAX);
    size_t bufsz = sz > 0 ? (size_t)sz : 16384;
    int err;
    for (;;) {
        char *buf = lua_newuserdatauv(L, bufsz, 0);
        err = by_id ? getgrgid_r((gid_t)id, &gr, buf, bufsz, &res) : getgrnam_r(name, &gr, buf, bufsz, &res);
        if (err != ERANGE || bufsz >= (1 << 24))
            break;
        lua_pop(L, 1);
        bufsz *= 4;
    }
    if (!res)
        return lookup_failed(L, err, "group", 1);
    lua_createtable(L, 0, 2);
    lua_pushstring(L, gr.gr_name);
    lua_setfield(L, -2, "name");
    lua_pushinteger(L, gr.gr_gid);
    lua_setfield(L, -2, "gid");
    return 1;
}

int pm_open_spawn(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"spawn", l_spawn},           {"reap", l_reap},
        {"kill", l_kill},             {"user_info", l_user_info},
        {"group_info", l_group_info}, {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
    return 0;
}
