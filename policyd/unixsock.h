/*
 * unixsock - the socket file of a unix-socket listener (policy or admin):
 * take the path over only from a dead process, and at stop remove only
 * the file this process made.
 *
 * A socket file left by a process that died would make bind() fail, so a
 * listener removes it first; but a file another smtpguard still listens
 * on must not be removed: the running daemon would keep running while
 * nobody could reach it any more (Postfix's default_action, fail-open,
 * without a word), and the file would vanish again when either stopped.
 */
#ifndef SMTPGUARD_UNIXSOCK_H
#define SMTPGUARD_UNIXSOCK_H

#include <stdbool.h>
#include <sys/types.h>
#include <uv.h>

/* Which file a listener made: device and inode, taken after bind. */
struct unixsock_id {
    dev_t dev;
    ino_t ino;
    bool set;
};

/* unixsock_clear - before bind: remove a socket file nobody listens on.
 * 0 (the path is free, or held by something that is no socket: bind
 * will say so), or -EADDRINUSE when a process accepts connections on it. */
int unixsock_clear(const char *path);

/* unixsock_bind - unixsock_clear, then a stream socket bound to path
 * (non-blocking, close-on-exec; its file's mode follows the umask), and
 * id noted. The fd for uv_pipe_open, or -errno. Bound here rather than
 * by uv_pipe_bind, because libuv unlinks a path it bound when the handle
 * closes, whoever's file is there by then. */
int unixsock_bind(const char *path, struct unixsock_id *id);

/* unixsock_pipe_open - pipe (uv_pipe_init'ed by the caller) on a socket
 * bound to path by unixsock_bind, ready for uv_listen. 0, or -errno with
 * nothing left behind (no fd, no file). */
int unixsock_pipe_open(uv_pipe_t *pipe, const char *path, struct unixsock_id *id);

/* unixsock_remove - at stop: unlink path if it is still the file noted. */
void unixsock_remove(const char *path, const struct unixsock_id *id);

#endif
