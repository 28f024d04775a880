/* core.atomic_write(path, data): the state file's durable replace. Writes a
 * temporary file beside path, fsyncs it, renames it over path and fsyncs the
 * directory, so a crash leaves either the old file or the new one whole. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
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

static int l_atomic_write(lua_State *L)
{
    size_t len;
    const char *path = luaL_checkstring(L, 1);
    const char *data = luaL_checklstring(L, 2, &len);
    const char *tmp = lua_pushfstring(L, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
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

int pm_open_state(lua_State *L)
{
    lua_pushcfunction(L, l_atomic_write);
    lua_setfield(L, -2, "atomic_write");
    return 0;
}
