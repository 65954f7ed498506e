/*
 * conn - one Postfix connection: read buffer, the request being answered,
 * limits and the idle timer.
 *
 * Postfix sends one request and waits for its answer, on a connection it
 * keeps open for many requests. A connection therefore has at most one
 * request in flight; bytes that arrive meanwhile wait in the buffer.
 * The request is decided by the engine against the config current when
 * it was parsed (the engine holds a reference until the answer is out).
 *
 * Lifetime: conn_close() stops reading and closes the handles; the conn
 * is freed when the last close callback has run and no store callback is
 * outstanding (refs). A store callback that arrives for a closed conn only
 * drops its reference.
 */
#ifndef SMTPGUARD_CONN_H
#define SMTPGUARD_CONN_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "actions.h"
#include "engine.h"
#include "protocol.h"

struct server;

struct conn {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;                        /* the client socket */
    uv_timer_t idle_timer;      /* closes a silent connection */
    uv_timer_t wait_timer;      /* holds an answer back (wait), or resumes parsing */
    struct server *srv;
    struct conn *prev, *next;   /* in srv->conns */
    unsigned long id;           /* for log lines (c=%lx) */
    unsigned long req_no;       /* requests seen on this connection */
    char peer[64];              /* "192.0.2.1" or "unix" for logs */
    unsigned refs;              /* open handles + outstanding store calls */
    bool closing;
    bool busy;                  /* a request is being answered */
    bool in_process;            /* conn_process is on the stack */
    bool close_when_idle;       /* shutdown: close after this answer */
    bool read_paused;           /* reading stopped: no room in the buffer now */
    bool holding;               /* the answer is held back by `wait` */
    bool eof;                   /* the client half-closed: answer what it sent, then close */
    char *rbuf;                 /* read buffer, grown up to max_request + 1 bytes */
    size_t rlen;                /* bytes in rbuf */
    size_t rcap;                /* bytes allocated */
    size_t req_len;             /* bytes of rbuf the current request uses */
    struct protocol_scan scan;
    struct engine_req *er;      /* the request being answered; made at the first request */
    char wbuf[ACTIONS_MAX_ANSWER + 16]; /* "action=...\n\n" */
    uv_write_t write_req;       /* used only when a write would block */
    bool writing;
};

/* conn_new - a connection object for srv, handles initialised; the
 * listener accepts into conn->h and then calls conn_start. */
struct conn *conn_new(struct server *srv, bool is_pipe);
/* conn_start - begin reading. */
void conn_start(struct conn *c);
/* conn_close - stop, close handles, free when the last callback ran. */
void conn_close(struct conn *c);
/* conn_shutdown - close now if idle, else after the current answer. */
void conn_shutdown(struct conn *c);

#endif
