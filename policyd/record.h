/*
 * record - what happens to a decision after the answer is out, beyond
 * the log line: message tracking (track.h), the event sinks (the JSON
 * file through actions.c, the Redis stream) and alert mail (alert.h).
 *
 * The server starts it with the first config (record_start), hands it
 * every new config (record_reload) and stops it at shutdown
 * (record_stop: handles closed, pending alerts dropped). The engine
 * calls record_decision() from engine_finish() for every request; with
 * no tracking, no stream and no alerts configured it returns at once.
 *
 * The daemon runs one record, so this module keeps it in a static (the
 * engine has no other way to reach it); everything here runs on the
 * loop thread. Nothing here ever delays an answer: Redis writes are
 * fire and forget (a full or absent connection drops the event, counted
 * in a rate-limited warning), mail goes out from the loop.
 */
#ifndef SMTPGUARD_RECORD_H
#define SMTPGUARD_RECORD_H

#include <uv.h>

#include "actions.h"
#include "config.h"

/* record_start - returns 0 or a negative errno (logged). */
int record_start(uv_loop_t *loop, const struct config *cfg);
void record_reload(const struct config *cfg);
void record_stop(void);

/* record_decision - track the request, send what the event sinks want,
 * trip the alert of a `mail` rule. */
void record_decision(const struct config *cfg, const struct decision *d);

/* record_track_open - messages being followed now (tests, metrics). */
size_t record_track_open(void);

#endif
