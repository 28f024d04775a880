/* portman.socket: the Lua side of csrc/listener.c and csrc/sockopt.c.
 *
 *   core.socket_open(spec)        -> socket | nil, msg, code
 *   core.listen(spec)             -> socket, address, host, port, ino | nil, msg, code
 *   core.tcp_open(host, port, backlog[, options]) -> fd, port, host | nil, msg, code
 *   core.close_fd(fd)             (a raw socket fd: tcp_open's, or one released)
 *   core.socket_adopt(fd)         -> socket | nil, msg, code (an inherited fd)
 *   core.sockopts()               -> {name = {available, cname, kind, inet, ...}}
 *   core.getsockopt(fd, name)     -> value | nil, msg, code
 *   core.setsockopt(fd, name, v)  -> true | nil, msg, code
 *   core.sockinfo(fd)             -> {family, type, address, host, port, path, ...}
 *   core.unlink_socket(path, ino) -> removed?
 *   core.dgram_recv(fd[, max])    -> data, from | nil, msg, code
 *   core.dgram_send(fd, data, path, abstract) -> bytes | nil, msg, code
 *
 * The raw-fd forms serve sockets whose fd luv owns now (handle:fileno()).
 * Codes come from the one error table (lua_util.c): EADDRINUSE is
 * "conflict", EACCES/EPERM "denied", ENOPROTOOPT and EOPNOTSUPP
 * "unsupported", and so on; the message always carries the errno's name. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "listener.h"
#include "lua_util.h"
#include "sockopt.h"
#include "visibility.h" /* last: see there */

#define SOCKET "portman.socket"

typedef struct {
    int fd; /* -1 once closed or released */
} lsock;

static const char *const kinds[] = {"bool", "int", "linger", "device", "tos"};

static const pm_sockopt *check_optname(lua_State *L, int arg, const char *name)
{
    const pm_sockopt *o = pm_sockopt_find(name);
    if (!o)
        luaL_argerror(L, arg, lua_pushfstring(L, "unknown socket option '%s'", name));
    return o;
}

static int fail_unavailable(lua_State *L, const pm_sockopt *o)
{
    return pm_fail(L, "unsupported", "socket option '%s' (%s) is not available on this system",
                   o->name, o->cname);
}

/* Reads the value at idx into v for option o; raises at arg, naming what. */
static void check_value(lua_State *L, int idx, int arg, const char *what, const pm_sockopt *o,
                        pm_optval *v)
{
    memset(v, 0, sizeof(*v));
    idx = lua_absindex(L, idx);
    int t = lua_type(L, idx);
    const char *bad = NULL;
    if (o->kind == PM_OPT_BOOL) {
        if (t != LUA_TBOOLEAN)
            bad = "boolean expected";
        v->i = lua_toboolean(L, idx);
    } else if (o->kind == PM_OPT_DEVICE) {
        size_t len = 0;
        const char *s = t == LUA_TSTRING ? lua_tolstring(L, idx, &len) : NULL;
        if (t == LUA_TBOOLEAN && !lua_toboolean(L, idx))
            v->dev[0] = '\0'; /* false unbinds */
        else if (!s || len >= sizeof(v->dev) || memchr(s, '\0', len))
            bad = "interface name expected";
        else
            memcpy(v->dev, s, len + 1);
    } else {
        int isint = 0;
        lua_Integer n = lua_tointegerx(L, idx, &isint);
        lua_Integer max = o->kind == PM_OPT_TOS ? 255 : o->kind == PM_OPT_LINGER ? 65535 : 0x7fffffff;
        if (o->kind == PM_OPT_LINGER && t == LUA_TBOOLEAN && !lua_toboolean(L, idx))
            v->i = -1; /* false: no linger */
        else if (t != LUA_TNUMBER || !isint || n < 0 || n > max)
            bad = lua_pushfstring(L, "integer 0-%d%s expected", (int)max,
                                  o->kind == PM_OPT_LINGER ? " or false" : "");
        else
            v->i = (int)n;
    }
    if (bad)
        luaL_argerror(L, arg, lua_pushfstring(L, "%s: %s, got %s", what, bad, luaL_typename(L, idx)));
}

static void push_value(lua_State *L, const pm_sockopt *o, const pm_optval *v)
{
    if (o->kind == PM_OPT_BOOL)
        lua_pushboolean(L, v->i);
    else if (o->kind == PM_OPT_DEVICE && v->dev[0])
        lua_pushstring(L, v->dev);
    else if (o->kind == PM_OPT_DEVICE || (o->kind == PM_OPT_LINGER && v->i < 0))
        lua_pushboolean(L, 0);
    else
        lua_pushinteger(L, v->i);
}

static int fd_family(int fd)
{
    int family = AF_UNSPEC;
    socklen_t len = sizeof(family);
    getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &family, &len);
    return family;
}

static int do_getsockopt(lua_State *L, int fd, int namearg)
{
    const pm_sockopt *o = check_optname(L, namearg, luaL_checkstring(L, namearg));
    pm_optval v;
    if (!o->available)
        return fail_unavailable(L, o);
    int err = pm_sockopt_get(fd, fd_family(fd), o, &v);
    if (err)
        return pm_fail_errno(L, err, lua_pushfstring(L, "getsockopt %s", o->cname));
    push_value(L, o, &v);
    return 1;
}

static int do_setsockopt(lua_State *L, int fd, int namearg)
{
    const char *name = luaL_checkstring(L, namearg);
    const pm_sockopt *o = check_optname(L, namearg, name);
    pm_optval v;
    check_value(L, namearg + 1, namearg + 1, name, o, &v);
    if (!o->available)
        return fail_unavailable(L, o);
    int err = pm_sockopt_set(fd, fd_family(fd), o, &v);
    if (err)
        return pm_fail_errno(L, err, lua_pushfstring(L, "setsockopt %s", o->cname));
    lua_pushboolean(L, 1);
    return 1;
}

static int check_fd(lua_State *L, int arg)
{
    lua_Integer fd = luaL_checkinteger(L, arg);
    luaL_argcheck(L, fd >= 0 && fd <= 0x7fffffff, arg, "file descriptor expected");
    return (int)fd;
}

static int l_getsockopt(lua_State *L) { return do_getsockopt(L, check_fd(L, 1), 2); }
static int l_setsockopt(lua_State *L) { return do_setsockopt(L, check_fd(L, 1), 2); }

static void setfield_bool(lua_State *L, const char *k, int v)
{
    lua_pushboolean(L, v);
    lua_setfield(L, -2, k);
}

static int do_sockinfo(lua_State *L, int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss), ilen = sizeof(int);
    int type = 0, listening = 0;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return pm_fail_errno(L, errno, "getsockname");
    getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &ilen);
    ilen = sizeof(int);
    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &ilen);
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    char name[128];
    pm_addr_format((struct sockaddr *)&ss, len, name, sizeof(name));
    lua_createtable(L, 0, 10);
    lua_pushstring(L, ss.ss_family == AF_INET ? "inet" : ss.ss_family == AF_INET6 ? "inet6"
                      : ss.ss_family == AF_UNIX ? "unix" : "other");
    lua_setfield(L, -2, "family");
    lua_pushstring(L, type == SOCK_STREAM ? "stream" : type == SOCK_DGRAM ? "dgram" : "other");
    lua_setfield(L, -2, "type");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "address");
    if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
        char ip[INET6_ADDRSTRLEN];
        struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
        int v4 = ss.ss_family == AF_INET;
        inet_ntop(ss.ss_family, v4 ? (void *)&a4->sin_addr : (void *)&a6->sin6_addr, ip, sizeof(ip));
        lua_pushstring(L, ip);
        lua_setfield(L, -2, "host");
        lua_pushinteger(L, ntohs(v4 ? a4->sin_port : a6->sin6_port));
        lua_setfield(L, -2, "port");
    } else if (ss.ss_family == AF_UNIX && name[0] == '@') {
        lua_pushstring(L, name + 1);
        lua_setfield(L, -2, "abstract");
    } else if (ss.ss_family == AF_UNIX && name[0]) {
        struct stat st;
        lua_pushstring(L, name);
        lua_setfield(L, -2, "path");
        if (stat(name, &st) == 0) {
            lua_pushinteger(L, (lua_Integer)st.st_ino);
            lua_setfield(L, -2, "ino");
            lua_pushinteger(L, st.st_mode & 07777);
            lua_setfield(L, -2, "mode");
        }
    }
    setfield_bool(L, "listening", listening);
    setfield_bool(L, "nonblock", fl >= 0 && (fl & O_NONBLOCK));
    setfield_bool(L, "cloexec", fdfl >= 0 && (fdfl & FD_CLOEXEC));
    return 1;
}

static int l_sockinfo(lua_State *L) { return do_sockinfo(L, check_fd(L, 1)); }

/* ---- socket_open's spec table ---- */

static const char *const spec_keys[] = {"type", "host", "port", "path", "abstract", "backlog",
                                        "mode", "connect", "options", NULL};

static int field_type(lua_State *L, const char *k)
{
    lua_getfield(L, 1, k);
    return lua_type(L, -1);
}

static lua_Integer int_field(lua_State *L, const char *k, lua_Integer dflt, lua_Integer lo,
                             lua_Integer hi)
{
    int t = field_type(L, k), isint = 0;
    lua_Integer n = t == LUA_TNIL ? dflt : lua_tointegerx(L, -1, &isint);
    if (t != LUA_TNIL && (t != LUA_TNUMBER || !isint || n < lo || n > hi))
        luaL_argerror(L, 1, lua_pushfstring(L, "%s: integer %d-%d expected", k, (int)lo, (int)hi));
    lua_pop(L, 1);
    return n;
}

/* The table index of each option in s->opts, to sort them by. */
static size_t opt_index(const pm_sockopt *o) { return (size_t)(o - pm_sockopt_at(0)); }

/* Reads the options table at opts (nil: none) into s, blaming argument
 * arg. Takes only the options given (no walk over every known one), then
 * sorts them into the table's fixed order, so runs are reproducible. */
static void read_options(lua_State *L, int opts, int arg, pm_sockspec *s)
{
    int t = lua_type(L, opts);
    if (t == LUA_TNIL || t == LUA_TNONE)
        return;
    luaL_argcheck(L, t == LUA_TTABLE, arg, "options: table expected");
    lua_pushnil(L);
    while (lua_next(L, opts)) {
        const pm_sockopt *o = lua_type(L, -2) == LUA_TSTRING ? pm_sockopt_find(lua_tostring(L, -2)) : NULL;
        if (!o)
            luaL_argerror(L, arg, lua_pushfstring(L, "unknown socket option 'options.%s'",
                                                  luaL_tolstring(L, -2, NULL)));
        /* keys are unique and name options of the table: never full */
        luaL_argcheck(L, s->nopts < PM_MAX_OPTS, arg, "options: too many");
        int value = lua_gettop(L);
        pm_optset *slot = &s->opts[s->nopts++];
        slot->opt = o;
        check_value(L, value, arg, lua_pushfstring(L, "options.%s", o->name), o, &slot->val);
        lua_pop(L, 2); /* the message, the value */
    }
    for (size_t i = 1; i < s->nopts; i++) /* insertion sort: at most a few */
        for (size_t j = i; j > 0 && opt_index(s->opts[j].opt) < opt_index(s->opts[j - 1].opt); j--) {
            pm_optset tmp = s->opts[j];
            s->opts[j] = s->opts[j - 1];
            s->opts[j - 1] = tmp;
        }
}

static void spec_address(lua_State *L, pm_sockspec *s)
{
    int has_host = field_type(L, "host") != LUA_TNIL;
    int has_path = field_type(L, "path") != LUA_TNIL;
    int has_abs = field_type(L, "abstract") != LUA_TNIL;
    lua_pop(L, 3);
    luaL_argcheck(L, has_host + has_path + has_abs == 1, 1, "one of host, path, abstract expected");
    if (has_host) {
        field_type(L, "host");
        const char *host = lua_tostring(L, -1);
        int port = (int)int_field(L, "port", 0, 0, 65535);
        s->family = host ? pm_addr_ip(host, port, &s->addr, &s->addrlen) : 0;
        if (!s->family)
            luaL_argerror(L, 1, lua_pushfstring(L, "host: IP address expected, got '%s'",
                                                luaL_tolstring(L, -1, NULL)));
        lua_pop(L, 1);
        return;
    }
    const char *k = has_path ? "path" : "abstract";
    size_t len = 0;
    field_type(L, k);
    const char *name = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &len) : NULL;
    if (!name || pm_addr_unix(name, len, has_abs, &s->addr, &s->addrlen) < 0)
        luaL_argerror(L, 1, lua_pushfstring(L, "%s: non-empty string of at most %d bytes expected",
                                            k, (int)sizeof(((struct sockaddr_un *)0)->sun_path) - 2));
    lua_pop(L, 1);
    s->family = AF_UNIX;
}

static void check_spec(lua_State *L, pm_sockspec *s)
{
    static const char *const types[] = {"stream", "dgram", NULL};
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
        int known = 0;
        const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
        for (int i = 0; key && !known && spec_keys[i]; i++)
            known = strcmp(key, spec_keys[i]) == 0;
        if (!known)
            luaL_argerror(L, 1, lua_pushfstring(L, "unknown field '%s'", luaL_tolstring(L, -2, NULL)));
        lua_pop(L, 1);
    }
    memset(s, 0, sizeof(*s));
    field_type(L, "type");
    s->type = luaL_checkoption(L, -1, "stream", types) == 0 ? SOCK_STREAM : SOCK_DGRAM;
    lua_pop(L, 1);
    spec_address(L, s);
    s->backlog = (int)int_field(L, "backlog", 511, 0, 0x7fffffff);
    s->mode = (int)int_field(L, "mode", -1, 0, 07777);
    s->connect = field_type(L, "connect") != LUA_TNIL && lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, 1, "options");
    read_options(L, lua_gettop(L), 1, s);
    lua_pop(L, 1);
}

static lsock *new_socket(lua_State *L, int fd)
{
    lsock *s = lua_newuserdatauv(L, sizeof(lsock), 0);
    s->fd = fd;
    luaL_setmetatable(L, SOCKET);
    return s;
}

/* Checks the spec at 1 into *spec; an option this system lacks pushes
 * nil, msg, code and returns 3, else 0. */
static int check_open_spec(lua_State *L, pm_sockspec *spec)
{
    check_spec(L, spec);
    for (size_t i = 0; i < spec->nopts; i++)
        if (!spec->opts[i].opt->available)
            return fail_unavailable(L, spec->opts[i].opt);
    return 0;
}

/* Opens the socket the spec at 1 describes into a new socket object (on
 * top of the stack); returns 1, or pushes nil, msg, code and returns 3. */
static int open_spec(lua_State *L, pm_sockspec *spec)
{
    pm_sockerr err;
    if (check_open_spec(L, spec))
        return 3;
    /* the userdata first: a failure to allocate it must not leak the fd */
    lsock *s = new_socket(L, -1);
    int fd = pm_socket_open(spec, &err);
    if (fd < 0)
        return pm_fail_errno(L, err.err, err.what);
    s->fd = fd;
    return 1;
}

static int l_socket_open(lua_State *L)
{
    pm_sockspec spec;
    return open_spec(L, &spec);
}

/* Pushes where fd (opened from spec) is bound: address, host, port for IP;
 * address, nil, nil, ino for a Unix path; address for a Unix name. Returns
 * the count, or -1 with errno set. */
static int push_bound(lua_State *L, int fd, const pm_sockspec *spec)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (pm_socket_bound(fd, spec, &ss, &len) < 0)
        return -1;
    char host[INET6_ADDRSTRLEN], name[PM_ADDR_IP_LEN > 128 ? PM_ADDR_IP_LEN : 128];
    int port = pm_addr_ip_parts(&ss, host, name);
    if (port >= 0) {
        lua_pushstring(L, name);
        lua_pushstring(L, host);
        lua_pushinteger(L, port);
        return 3;
    }
    pm_addr_format((struct sockaddr *)&ss, len, name, sizeof(name));
    lua_pushstring(L, name);
    struct stat st;
    if (name[0] == '@' || !name[0] || stat(name, &st) != 0)
        return 1;
    lua_pushnil(L);
    lua_pushnil(L);
    lua_pushinteger(L, (lua_Integer)st.st_ino);
    return 4;
}

/* core.listen(spec) -> socket, address, host, port, ino | nil, msg, code:
 * socket_open and where it is bound in one call, with no syscall for what
 * the spec already says (getsockname only for port 0; stat only for the
 * inode of a Unix path, which close needs to remove the right file). */
static int l_listen(lua_State *L)
{
    pm_sockspec spec;
    if (open_spec(L, &spec) != 1)
        return 3;
    lsock *s = lua_touserdata(L, -1);
    int n = push_bound(L, s->fd, &spec);
    if (n < 0) {
        int err = errno;
        close(s->fd);
        s->fd = -1;
        return pm_fail_errno(L, err, "getsockname");
    }
    return 1 + n;
}

/* Reads host, port, backlog[, options] at args a..a+3 into a TCP spec. */
static int check_tcp_spec(lua_State *L, int a, pm_sockspec *spec)
{
    const char *host = luaL_checkstring(L, a);
    lua_Integer port = luaL_checkinteger(L, a + 1), backlog = luaL_checkinteger(L, a + 2);
    luaL_argcheck(L, port >= 0 && port <= 65535, a + 1, "port 0-65535 expected");
    luaL_argcheck(L, backlog >= 0 && backlog <= 0x7fffffff, a + 2, "non-negative backlog expected");
    memset(spec, 0, offsetof(pm_sockspec, opts)); /* opts[] is filled up to nopts */
    spec->nopts = 0;
    spec->type = SOCK_STREAM;
    spec->backlog = (int)backlog;
    spec->mode = -1;
    spec->family = pm_addr_ip(host, (int)port, &spec->addr, &spec->addrlen);
    luaL_argcheck(L, spec->family, a, "IP address expected");
    read_options(L, a + 3, a + 3, spec);
    for (size_t i = 0; i < spec->nopts; i++)
        if (!spec->opts[i].opt->available)
            return fail_unavailable(L, spec->opts[i].opt);
    return 0;
}

/* core.tcp_open(host, port, backlog[, options]) -> fd, port, host | nil,
 * msg, code: a TCP listener's socket, positionally, with no spec table to
 * build and read and no socket object: every TCP listener comes this way.
 * Nothing allocates once the socket exists (the host, the only string, is
 * pushed before), so no error can leak the fd; the caller stores it in a
 * slot its listener already has. getsockname only for port 0. */
static int l_tcp_open(lua_State *L)
{
    pm_sockspec spec;
    pm_sockerr err;
    if (check_tcp_spec(L, 1, &spec))
        return 3;
    char host[INET6_ADDRSTRLEN], addr[PM_ADDR_IP_LEN];
    if (spec.family == AF_INET) /* inet_pton takes only the canonical form */
        lua_pushvalue(L, 1);
    else {
        pm_addr_ip_parts(&spec.addr, host, addr);
        lua_pushstring(L, host);
    }
    int fd = pm_socket_open(&spec, &err);
    if (fd < 0)
        return pm_fail_errno(L, err.err, err.what);
    struct sockaddr_storage ss;
    socklen_t len;
    if (pm_socket_bound(fd, &spec, &ss, &len) < 0) {
        int e = errno;
        close(fd);
        return pm_fail_errno(L, e, "getsockname");
    }
    lua_pushinteger(L, fd);
    lua_pushinteger(L, ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                                     : ((struct sockaddr_in6 *)&ss)->sin6_port));
    lua_rotate(L, -3, -1); /* fd, port, host */
    return 3;
}

/* core.close_fd(fd): closes a raw socket fd (tcp_open's, or released). */
static int l_close_fd(lua_State *L)
{
    close(check_fd(L, 1));
    return 0;
}

/* An fd inherited from systemd (or any parent): must be a socket; we set
 * close-on-exec (sd_listen_fds does) and take ownership. */
static int l_socket_adopt(lua_State *L)
{
    int fd = check_fd(L, 1);
    int type;
    socklen_t len = sizeof(type);
    lsock *s = new_socket(L, -1);
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
        return pm_fail_errno(L, errno, lua_pushfstring(L, "adopt fd %d", fd));
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0)
        return pm_fail_errno(L, errno, lua_pushfstring(L, "adopt fd %d", fd));
    s->fd = fd;
    return 1;
}

/* core.ip_family(s) -> "inet" | "inet6" | nil: is s an IP literal? */
static int l_ip_family(lua_State *L)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int family = pm_addr_ip(luaL_checkstring(L, 1), 0, &ss, &len);
    if (family)
        lua_pushstring(L, family == AF_INET ? "inet" : "inet6");
    else
        lua_pushnil(L);
    return 1;
}

static int l_sockopts(lua_State *L)
{
    lua_createtable(L, 0, (int)pm_sockopt_count());
    for (size_t i = 0; i < pm_sockopt_count(); i++) {
        const pm_sockopt *o = pm_sockopt_at(i);
        lua_createtable(L, 0, 8);
        setfield_bool(L, "available", o->available);
        lua_pushstring(L, o->cname);
        lua_setfield(L, -2, "cname");
        lua_pushstring(L, kinds[o->kind]);
        lua_setfield(L, -2, "kind");
        setfield_bool(L, "inet", o->applies & PM_FOR_INET);
        setfield_bool(L, "inet6", o->applies & PM_FOR_INET6);
        setfield_bool(L, "unix", o->applies & PM_FOR_UNIX);
        setfield_bool(L, "stream", o->applies & PM_FOR_STREAM);
        setfield_bool(L, "dgram", o->applies & PM_FOR_DGRAM);
        lua_setfield(L, -2, o->name);
    }
    return 1;
}

/* Removes a Unix socket file only if it is still the one we bound (same
 * inode, still a socket): another process may have replaced it. */
static int l_unlink_socket(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer ino = luaL_checkinteger(L, 2);
    struct stat st;
    int same = lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) && (lua_Integer)st.st_ino == ino;
    lua_pushboolean(L, same && unlink(path) == 0);
    return 1;
}

static int l_dgram_recv(lua_State *L)
{
    int fd = check_fd(L, 1);
    lua_Integer max = luaL_optinteger(L, 2, 65536);
    luaL_argcheck(L, max > 0 && max <= 1 << 20, 2, "size 1-1048576 expected");
    struct sockaddr_storage from;
    socklen_t flen = sizeof(from);
    luaL_Buffer b;
    char *buf = luaL_buffinitsize(L, &b, (size_t)max);
    ssize_t n;
    do
        n = recvfrom(fd, buf, (size_t)max, 0, (struct sockaddr *)&from, &flen);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return pm_fail_errno(L, errno, "recvfrom");
    luaL_pushresultsize(&b, (size_t)n);
    char name[128];
    /* an unbound Unix sender comes with no address at all */
    if (flen <= offsetof(struct sockaddr_un, sun_path)) {
        lua_pushnil(L);
        return 2;
    }
    pm_addr_format((struct sockaddr *)&from, flen, name, sizeof(name));
    lua_pushstring(L, name);
    return 2;
}

static int l_dgram_send(lua_State *L)
{
    int fd = check_fd(L, 1);
    size_t len, plen = 0;
    const char *data = luaL_checklstring(L, 2, &len);
    const char *path = luaL_optlstring(L, 3, NULL, &plen);
    struct sockaddr_storage to;
    socklen_t tlen = 0;
    if (path && pm_addr_unix(path, plen, lua_toboolean(L, 4), &to, &tlen) < 0)
        luaL_argerror(L, 3, "Unix socket name expected");
    ssize_t n;
    do
        n = sendto(fd, data, len, MSG_NOSIGNAL, path ? (struct sockaddr *)&to : NULL, tlen);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return pm_fail_errno(L, errno, "sendto");
    lua_pushinteger(L, n);
    return 1;
}

/* ---- the socket object ---- */

static lsock *check_open(lua_State *L)
{
    lsock *s = luaL_checkudata(L, 1, SOCKET);
    if (s->fd < 0)
        luaL_error(L, "attempt to use a closed socket");
    return s;
}

static int m_fd(lua_State *L)
{
    lua_pushinteger(L, check_open(L)->fd);
    return 1;
}

/* Hands the fd over (to luv): the object no longer closes it. */
static int m_release(lua_State *L)
{
    lsock *s = check_open(L);
    lua_pushinteger(L, s->fd);
    s->fd = -1;
    return 1;
}

static int m_close(lua_State *L)
{
    lsock *s = luaL_checkudata(L, 1, SOCKET);
    if (s->fd >= 0) {
        int fd = s->fd;
        s->fd = -1; /* closed even if close() reports an error: the fd is gone */
        close(fd);
    }
    return 0;
}

static int m_getsockopt(lua_State *L) { return do_getsockopt(L, check_open(L)->fd, 2); }
static int m_setsockopt(lua_State *L) { return do_setsockopt(L, check_open(L)->fd, 2); }
static int m_info(lua_State *L) { return do_sockinfo(L, check_open(L)->fd); }

static int m_tostring(lua_State *L)
{
    lsock *s = luaL_checkudata(L, 1, SOCKET);
    if (s->fd < 0)
        lua_pushliteral(L, SOCKET " (closed)");
    else
        lua_pushfstring(L, SOCKET " (fd %d)", s->fd);
    return 1;
}

static const luaL_Reg methods[] = {
    {"fd", m_fd},
    {"release", m_release},
    {"close", m_close},
    {"getsockopt", m_getsockopt},
    {"setsockopt", m_setsockopt},
    {"info", m_info},
    {NULL, NULL},
};

static const luaL_Reg meta[] = {
    {"__gc", m_close},
    {"__close", m_close},
    {"__tostring", m_tostring},
    {NULL, NULL},
};

static const luaL_Reg functions[] = {
    {"socket_open", l_socket_open},
    {"listen", l_listen},
    {"tcp_open", l_tcp_open},
    {"close_fd", l_close_fd},
    {"socket_adopt", l_socket_adopt},
    {"sockopts", l_sockopts},
    {"ip_family", l_ip_family},
    {"getsockopt", l_getsockopt},
    {"setsockopt", l_setsockopt},
    {"sockinfo", l_sockinfo},
    {"unlink_socket", l_unlink_socket},
    {"dgram_recv", l_dgram_recv},
    {"dgram_send", l_dgram_send},
    {NULL, NULL},
};

int pm_open_listener(lua_State *L)
{
    pm_newclass(L, SOCKET, methods, meta);
    luaL_setfuncs(L, functions, 0);
    return 0;
}
