/* A time budget for Lua code the daemon did not write (portman.sandbox).
 *
 *   core.sandbox_arm(co, ms[, fd]) sets a count hook on coroutine co: every
 *     few thousand instructions it looks at the monotonic clock and, with
 *     fd, whether the client on fd has sent an interrupt (a line starting
 *     {"interrupt", peeked: the bytes stay for the loop to read);
 *   core.sandbox_why(co) -> nil | "timeout" | "interrupted" after a resume.
 *
 * When either fires, the hook yields the coroutine from inside the hook:
 * a pcall in the chunk cannot catch a yield, so `while true do pcall(f)
 * end` ends too. The caller then drops the coroutine. */
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "lua_util.h"
#include "visibility.h" /* last: see there */

#define EVERY 10000 /* instructions between looks */
#define MARK "{\"interrupt\""

typedef struct {
    long long deadline_ns;
    int fd;
    const char *why;
} budget;

static const char key = 'b'; /* registry[&key][co] = budget userdata */

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* The budget of thread L, or NULL; leaves the stack as it was. */
static budget *budget_of(lua_State *L, lua_State *co)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key);
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        return NULL;
    }
    lua_pushthread(co);
    if (co != L)
        lua_xmove(co, L, 1);
    lua_rawget(L, -2);
    budget *b = lua_touserdata(L, -1);
    lua_pop(L, 2);
    return b;
}

static int interrupt_sent(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) != 1 || !(p.revents & POLLIN))
        return 0;
    char buf[sizeof(MARK) - 1];
    ssize_t n = recv(fd, buf, sizeof(buf), MSG_PEEK | MSG_DONTWAIT);
    return n == (ssize_t)sizeof(buf) && memcmp(buf, MARK, sizeof(buf)) == 0;
}

static void hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    budget *b = budget_of(L, L);
    if (!b)
        return;
    if (b->fd >= 0 && interrupt_sent(b->fd))
        b->why = "interrupted";
    else if (now_ns() > b->deadline_ns)
        b->why = "timeout";
    if (!b->why)
        return;
    /* A count hook may yield, and no pcall catches a yield. Inside a C
     * function (a table.sort comparator) the chunk cannot yield: raise
     * instead, and yield at the next look once it is back in Lua. */
    if (lua_isyieldable(L)) {
        lua_yield(L, 0); /* takes effect when the hook returns */
        return;
    }
    lua_sethook(L, hook, LUA_MASKCOUNT, 1); /* from now on, every instruction */
    luaL_error(L, "%s", b->why);
}

static int l_arm(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    luaL_argcheck(L, co != NULL && co != L, 1, "coroutine expected");
    lua_Integer ms = luaL_checkinteger(L, 2);
    luaL_argcheck(L, ms > 0, 2, "positive ms expected");
    int fd = (int)luaL_optinteger(L, 3, -1);
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &key) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_newtable(L);
        lua_createtable(L, 0, 1);
        lua_pushliteral(L, "k");
        lua_setfield(L, -2, "__mode"); /* a dropped coroutine takes its budget along */
        lua_setmetatable(L, -2);
        lua_pushvalue(L, -1);
        lua_rawsetp(L, LUA_REGISTRYINDEX, &key);
    }
    lua_pushvalue(L, 1);
    budget *b = lua_newuserdatauv(L, sizeof(budget), 0);
    b->deadline_ns = now_ns() + (long long)ms * 1000000LL;
    b->fd = fd;
    b->why = NULL;
    lua_rawset(L, -3);
    lua_pop(L, 1);
    lua_sethook(co, hook, LUA_MASKCOUNT, EVERY);
    return 0;
}

static int l_why(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    luaL_argcheck(L, co != NULL, 1, "coroutine expected");
    budget *b = budget_of(L, co);
    if (b && b->why)
        lua_pushstring(L, b->why);
    else
        lua_pushnil(L);
    return 1;
}

int pm_open_sandbox(lua_State *L)
{
    static const luaL_Reg fns[] = {{"sandbox_arm", l_arm}, {"sandbox_why", l_why}, {NULL, NULL}};
    luaL_setfuncs(L, fns, 0);
    return 0;
}
