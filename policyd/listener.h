/*
 * listener - the sockets Postfix connects to: TCP (IPv4/IPv6) and unix.
 *
 * A TCP peer outside the config's clients: list is refused (closed at
 * once, logged at most once a minute); beyond max_connections new
 * connections are closed the same way. Unix sockets are guarded by file
 * permissions instead (Postfix's private/ directory).
 */
#ifndef SMTPGUARD_LISTENER_H
#define SMTPGUARD_LISTENER_H

#include <stdbool.h>
#include <uv.h>

#include "unixsock.h"

struct server;

struct listener {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    struct server *srv;
    struct listener *next;
    char *address;              /* as configured */
    bool is_pipe;
    struct unixsock_id sock;    /* the socket file made (is_pipe) */
};

/* listener_open - bind and listen on address ("IP:PORT", "[v6]:PORT",
 * "unix:/path"). Returns 0 or a negative libuv error (logged). */
int listener_open(struct server *srv, const char *address);
/* listener_close_all - close every listener (unix socket files removed). */
void listener_close_all(struct server *srv);

#endif
