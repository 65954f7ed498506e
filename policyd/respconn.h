/*
 * respconn - one pipelined connection to a Redis server, on the libuv
 * loop, that allocates nothing per command once warm.
 *
 * Commands are written in RESP straight from their argv into an output
 * buffer that is kept (no formatted copy, no callback record per command:
 * a ring of (callback, argument) pairs that grows only when more commands
 * are in flight than ever before). Replies are parsed by hiredis's reader
 * into a reply arena (replyarena.h) and handed, in order, to the callback
 * of the command they answer. What this replaces, hiredis 0.14's async API
 * with its libuv adapter, allocates per command (a formatted sds, a
 * callback record), per write (a new output sds) and per reply element;
 * its adapter also misses socket errors (POLLERR) and it resolves host
 * names with a blocking getaddrinfo(); here a name is resolved with
 * uv_getaddrinfo and a socket error ends the connection at once.
 *
 * Contract:
 * - Commands may be sent as soon as respconn_open returns: they wait for
 *   the connection and go out in order (AUTH and SELECT first, say).
 * - Every command's callback runs exactly once: with its reply, or with
 *   NULL when the connection fails or is closed first. Never from inside
 *   respconn_send. The reply is valid only during the callback.
 * - on_event runs once with status 0 when the connection is made, and once
 *   with a negative status when it fails or is lost (after the pending
 *   callbacks got NULL); not after respconn_close. After a failure event
 *   or respconn_close the caller forgets the pointer: the connection frees
 *   itself once libuv has closed its handle.
 * - respconn_close may be called from any callback of the connection.
 * Timeouts are the caller's (store_redis.c has its connect and request
 * timers): a connection that stops answering is the caller's to close.
 */
#ifndef SMTPGUARD_RESPCONN_H
#define SMTPGUARD_RESPCONN_H

#include <stddef.h>

#include <hiredis/read.h>
#include <stdint.h>
#include <uv.h>

struct respconn;

/* reply NULL: the connection ended before the reply came. */
struct redisReply;
typedef void (*respconn_reply_cb)(struct respconn *rc, const struct redisReply *reply, void *arg);
/* status 0: connected; negative: failed or lost, why says how. */
typedef void (*respconn_event_cb)(struct respconn *rc, int status, const char *why, void *arg);

/* respconn_open - start connecting to host:port (an IP address or a name)
 * or, when unix_path is set, to that socket. Of the addresses a name
 * resolves to, the one at pick (modulo their count) is tried: a caller
 * moves pick on after a failed attempt, so that a name with an address
 * nobody listens on (localhost as ::1 first, Redis on 127.0.0.1 only)
 * still reaches the one that works. Never NULL. */
struct respconn *respconn_open(uv_loop_t *loop, const char *host, int port, const char *unix_path,
                               unsigned pick, respconn_event_cb on_event, void *arg);

/* respconn_connect_started - uv_now() when connecting to an address
 * began, or 0 while a name is still being resolved: a caller's connect
 * timeout does not count the resolver's time. */
uint64_t respconn_connect_started(const struct respconn *rc);

/* respconn_send - queue one command. Returns 0, or -EIO when the
 * connection is closed or has failed (cb is then not called). */
int respconn_send(struct respconn *rc, int argc, const char *const *argv, const size_t *argvlen,
                  respconn_reply_cb cb, void *arg);

/* respconn_close - end it: pending callbacks get NULL (now, or when the
 * callback running now returns), no event follows. */
void respconn_close(struct respconn *rc);

/* respconn_pending - commands sent and not yet answered. */
size_t respconn_pending(const struct respconn *rc);

#endif
