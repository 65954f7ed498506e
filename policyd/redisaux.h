/*
 * redisaux - a second, small Redis connection for what happens after the
 * answer: the event stream (XADD) and the alerts' cross-host de-dup.
 *
 * It is separate from the counter store on purpose: the counters keep
 * their one EVALSHA per request on their own context, and a burst of
 * stream writes or a slow alert question never queues in front of them.
 * Same settings as the store (store.redis: address, db, password).
 *
 * redisaux_command() sends one command. It returns 0 and then the
 * callback runs exactly once, from the loop, with the reply or with NULL
 * (no connection, no answer within the timeout, closed); or it returns a
 * negative errno (-ENOTCONN while Redis is down, -EAGAIN when too many
 * commands are in flight) and the callback never runs. cb may be NULL
 * (fire and forget). A reply is valid only during the callback.
 *
 * The connection is opened at once and re-opened with backoff (100 ms
 * doubling to 5 s) when lost; hiredis 0.14.1 has no timeouts, so there is
 * a connect timer and one deadline timer for the oldest command.
 * redisaux_close() answers what is pending with NULL before it returns
 * (the one exception to "from the loop") and frees the object once its
 * handles are closed.
 */
#ifndef SMTPGUARD_REDISAUX_H
#define SMTPGUARD_REDISAUX_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "store.h"

struct redisReply;
struct redisaux;

typedef void (*redisaux_cb)(void *arg, const struct redisReply *reply);

/* redisaux_open - connect with sc's redis settings (backend ignored).
 * Returns NULL with err filled for a bad address. */
struct redisaux *redisaux_open(uv_loop_t *loop, const struct store_config *sc, char *err,
                               size_t errlen);
int redisaux_command(struct redisaux *ra, int argc, const char **argv, const size_t *lens,
                     redisaux_cb cb, void *arg);
bool redisaux_is_up(const struct redisaux *ra);
/* redisaux_matches - opened with these settings (reload keeps it). */
bool redisaux_matches(const struct redisaux *ra, const struct store_config *sc);
void redisaux_close(struct redisaux *ra);

#endif
