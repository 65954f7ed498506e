/*
 * listener - see listener.h.
 */
#include "listener.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cidr.h"
#include "conn.h"
#include "log.h"
#include "server.h"
#include "xalloc.h"

/* The peer's address as an ipaddr and as text; false if unknown. */
static bool listener_peer(struct conn *c, struct ipaddr *ip)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&c->h.tcp, (struct sockaddr *)&ss, &len) != 0)
        return false;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &sin->sin_addr, c->peer, sizeof c->peer);
    } else if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, c->peer, sizeof c->peer);
    } else {
        return false;
    }
    return ipaddr_parse(c->peer, strlen(c->peer), ip) == 0;
}

static void listener_on_connection(uv_stream_t *server_stream, int status)
{
    struct listener *l = server_stream->data;
    struct server *srv = l->srv;
    if (status < 0) {
        log_warn_every(&srv->limit_limiter, 60, "listener %s: accept failed: %s", l->address,
                       uv_strerror(status));
        return;
    }
    struct conn *c = conn_new(srv, l->is_pipe);
    if (uv_accept(server_stream, &c->h.stream) != 0) {
        conn_close(c);
        return;
    }
    if (srv->stopping) {
        conn_close(c);
        return;
    }
    if (!l->is_pipe) {
        struct ipaddr ip;
        if (!listener_peer(c, &ip)) {
            /* Gone before we looked (a reset right after connecting): not
             * a refusal, and it must not use up the once-a-minute line of
             * a real one. */
            log_debug("c=%lx peer gone before it was accepted", c->id);
            conn_close(c);
            return;
        }
        if (!cidr_set_contains(srv->cfg->clients, &ip)) {
            log_warn_every(&srv->refuse_limiter, 60,
                           "refused connection from %s to %s: not in clients", c->peer, l->address);
            conn_close(c);
            return;
        }
    }
    if (srv->n_conns > srv->cfg->limits.max_connections) {
        log_warn_every(&srv->limit_limiter, 60,
                       "refused connection from %s: %u connections open (limits.max_connections)",
                       c->peer, srv->n_conns - 1);
        conn_close(c);
        return;
    }
    log_debug("c=%lx connect from %s on %s", c->id, c->peer, l->address);
    conn_start(c);
}

/*
 * listener_bind_reuseport - with workers: N every worker binds the same
 * port with SO_REUSEPORT, and the kernel spreads new connections over
 * the workers' sockets. libuv 1.44 has no flag for that option, so the
 * socket is made here and handed to libuv (uv_tcp_open). Only with
 * workers > 1: a single process keeps "address in use" when another
 * daemon holds the port.
 */
static int listener_bind_reuseport(struct listener *l, const struct sockaddr *sa)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return uv_translate_sys_error(errno);
    int on = 1;
    socklen_t len = sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                              : sizeof(struct sockaddr_in);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0 ||
        (sa->sa_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on) < 0) ||
        bind(fd, sa, len) < 0) {
        int err = errno;
        close(fd);
        return uv_translate_sys_error(err);
    }
    int rc = uv_tcp_open(&l->h.tcp, fd);
    if (rc < 0)
        close(fd);
    return rc;
}

static int listener_bind_tcp(struct listener *l, const char *address)
{
    uv_tcp_init(l->srv->loop, &l->h.tcp);
    const char *colon = strrchr(address, ':');
    char host[INET6_ADDRSTRLEN + 2];
    size_t hlen = (size_t)(colon - address);
    if (address[0] == '[' && hlen >= 2 && address[hlen - 1] == ']') {
        address++;
        hlen -= 2;
    }
    if (hlen >= sizeof host)
        return UV_EINVAL;
    memcpy(host, address, hlen);
    host[hlen] = '\0';
    int port = atoi(colon + 1);
    struct sockaddr_storage ss;
    int rc;
    unsigned flags = 0;
    if (strchr(host, ':')) {
        rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
        flags = UV_TCP_IPV6ONLY;
    } else {
        rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
    }
    if (rc < 0)
        return rc;
    if (l->srv->cfg->workers > 1)
        rc = listener_bind_reuseport(l, (const struct sockaddr *)&ss);
    else
        rc = uv_tcp_bind(&l->h.tcp, (const struct sockaddr *)&ss, flags);
    if (rc == 0)
        uv_tcp_nodelay(&l->h.tcp, 1);
    return rc;
}

static int listener_bind_pipe(struct listener *l, const char *path)
{
    uv_pipe_init(l->srv->loop, &l->h.pipe, 0);
    int rc = unixsock_pipe_open(&l->h.pipe, path, &l->sock);
    if (rc == 0)
        chmod(path, 0666); /* access is controlled by the directory (Postfix private/) */
    return rc;
}

static void listener_on_close(uv_handle_t *h)
{
    struct listener *l = h->data;
    free(l->address);
    free(l);
}

int listener_open(struct server *srv, const char *address)
{
    struct listener *l = xcalloc(1, sizeof *l);
    l->srv = srv;
    l->address = xstrdup(address);
    l->is_pipe = strncmp(address, "unix:", 5) == 0;
    int rc = l->is_pipe ? listener_bind_pipe(l, address + 5) : listener_bind_tcp(l, address);
    l->h.handle.data = l;
    if (rc == 0)
        rc = uv_listen(&l->h.stream, 511, listener_on_connection);
    if (rc < 0) {
        log_error("cannot listen on %s: %s", address,
                  l->is_pipe && rc == UV_EADDRINUSE
                      ? "a running process listens on that socket (another smtpguard?): "
                        "stop it, or give this one another path"
                      : uv_strerror(rc));
        uv_close(&l->h.handle, listener_on_close);
        return rc;
    }
    l->next = srv->listeners;
    srv->listeners = l;
    log_info("listening on %s", address);
    return 0;
}

void listener_close_all(struct server *srv)
{
    struct listener *l = srv->listeners;
    srv->listeners = NULL;
    while (l) {
        struct listener *next = l->next;
        if (l->is_pipe)
            unixsock_remove(l->address + 5, &l->sock);
        uv_close(&l->h.handle, listener_on_close);
        l = next;
    }
}
