/* The state file's C side (docs/design.md, "The state file"):
 * core.atomic_write(path, data) replaces it durably, core.read_file(path,
 * cap) reads it back. The directory may be shared, so neither follows a
 * symlink: the temporary file is made new (O_EXCL | O_NOFOLLOW), and the
 * read opens only a regular file, without blocking on a FIFO planted there. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lua_util.h"
#include "visibility.h" /* last: see there */

static int write_all(int fd, const char *p, size_t len)
{
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static int fsync_dir_of(const char *path)
{
    char copy[4096];
    if (strlen(path) >= sizeof(copy)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    strcpy(copy, path);
    int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -1;
    int rc = fsync(dfd);
    int saved = errno;
    close(dfd);
    errno = saved;
    return rc;
}

/* A new file at tmp, never an existing one and never through a symlink.
 * What holds the name (a file a killed run of the same pid left, or a
 * planted symlink) is unlinked, which removes the link and not its
 * target, and the create is tried once more. */
static int create_new(const char *tmp)
{
    int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    int fd = open(tmp, flags, 0600);
    if (fd < 0 && errno == EEXIST && unlink(tmp) == 0)
        fd = open(tmp, flags, 0600);
    return fd;
}

static int l_atomic_write(lua_State *L)
{
    size_t len;
    const char *path = luaL_checkstring(L, 1);
    const char *data = luaL_checklstring(L, 2, &len);
    const char *tmp = lua_pushfstring(L, "%s.tmp.%d", path, (int)getpid());
    int fd = create_new(tmp);
    if (fd < 0)
        return pm_fail_errno(L, errno, tmp);
    if (write_all(fd, data, len) < 0 || fsync(fd) < 0) {
        int saved = errno;
        close(fd);
        unlink(tmp);
        return pm_fail_errno(L, saved, tmp);
    }
    if (close(fd) < 0 || rename(tmp, path) < 0) {
        int saved = errno;
        unlink(tmp);
        return pm_fail_errno(L, saved, path);
    }
    if (fsync_dir_of(path) < 0)
        return pm_fail_errno(L, errno, path);
    lua_pushboolean(L, 1);
    return 1;
}

/* Reads up to cap bytes of fd into a string on the stack; -1 (errno) or
 * 1 when the file holds more than cap. */
static int read_capped(lua_State *L, int fd, size_t cap)
{
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    size_t total = 0;
    for (;;) {
        char *p = luaL_prepbuffer(&b);
        ssize_t n = read(fd, p, LUAL_BUFFERSIZE);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        total += (size_t)n;
        if (total > cap)
            return 1;
        luaL_addsize(&b, (size_t)n);
    }
    luaL_pushresult(&b);
    return 0;
}

/* core.read_file(path, cap) -> text, owner uid | nil, msg, code. Refuses
 * a symlink (ELOOP), anything but a regular file and more than cap bytes
 * (protocol). */
static int l_read_file(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    lua_Integer cap = luaL_checkinteger(L, 2);
    luaL_argcheck(L, cap >= 0, 2, "cap must be >= 0");
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return pm_fail_errno(L, errno, path);
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int saved = errno;
        close(fd);
        return pm_fail_errno(L, saved, path);
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return pm_fail(L, "protocol", "%s is not a regular file", path);
    }
    if ((unsigned long long)st.st_size > (unsigned long long)cap) {
        close(fd);
        return pm_fail(L, "protocol", "%s is %I bytes, more than %I", path, (lua_Integer)st.st_size, cap);
    }
    int rc = read_capped(L, fd, (size_t)cap);
    int saved = errno;
    close(fd);
    if (rc < 0)
        return pm_fail_errno(L, saved, path);
    if (rc > 0)
        return pm_fail(L, "protocol", "%s grew past %I bytes while read", path, cap);
    lua_pushinteger(L, (lua_Integer)st.st_uid);
    return 2;
}

int pm_open_state(lua_State *L)
{
    lua_pushcfunction(L, l_atomic_write);
    lua_setfield(L, -2, "atomic_write");
    lua_pushcfunction(L, l_read_file);
    lua_setfield(L, -2, "read_file");
    return 0;
}
