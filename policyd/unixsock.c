/*
 * unixsock - see unixsock.h.
 */
#include "unixsock.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

int unixsock_clear(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0 || !S_ISSOCK(st.st_mode))
        return 0;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof sa.sun_path)
        return 0; /* bind will refuse the path itself */
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    /* A unix connect answers at once: refused when nobody listens; a
     * listener whose backlog is full says EAGAIN, which is in use too. */
    int rc = connect(fd, (const struct sockaddr *)&sa, sizeof sa);
    int err = rc == 0 ? 0 : errno;
    close(fd);
    if (rc == 0 || err == EAGAIN || err == EINPROGRESS)
        return -EADDRINUSE;
    if (err == ECONNREFUSED || err == ENOENT)
        unlink(path);
    return 0;
}

int unixsock_bind(const char *path, struct unixsock_id *id)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    id->set = false;
    if (strlen(path) >= sizeof sa.sun_path)
        return -ENAMETOOLONG;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int rc = unixsock_clear(path);
    if (rc < 0)
        return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (bind(fd, (const struct sockaddr *)&sa, sizeof sa) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    struct stat st;
    if (lstat(path, &st) == 0) {
        id->dev = st.st_dev;
        id->ino = st.st_ino;
        id->set = true;
    }
    return fd;
}

int unixsock_pipe_open(uv_pipe_t *pipe, const char *path, struct unixsock_id *id)
{
    int fd = unixsock_bind(path, id);
    if (fd < 0)
        return fd;
    int rc = uv_pipe_open(pipe, fd);
    if (rc < 0) {
        close(fd);
        unixsock_remove(path, id);
    }
    return rc;
}

void unixsock_remove(const char *path, const struct unixsock_id *id)
{
    struct stat st;
    if (id->set && lstat(path, &st) == 0 && st.st_dev == id->dev && st.st_ino == id->ino)
        unlink(path);
}
