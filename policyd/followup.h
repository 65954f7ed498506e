/*
 * followup - what happens to a decision after the answer is out, beyond
 * the log line: message tracking (track.h), the event sinks (the JSON
 * file through actions.c, the Redis stream) and alert mail (alert.h).
 *
 * The server starts it with the first config (followup_start), hands it
 * every new config (followup_reload) and stops it at shutdown
 * (followup_stop: handles closed, pending alerts dropped). The engine
 * calls followup_decision() from engine_finish() for every request; with
 * no tracking, no stream and no alerts configured it returns at once.
 *
 * The daemon runs one of these, so this module keeps it in a static (the
 * engine has no other way to reach it); everything here runs on the
 * loop thread. Nothing here ever delays an answer: Redis writes are
 * fire and forget (a full or absent connection drops the event, counted
 * in a rate-limited warning), mail goes out from the loop.
 */
#ifndef SMTPGUARD_FOLLOWUP_H
#define SMTPGUARD_FOLLOWUP_H

#include <uv.h>

#include "actions.h"
#include "config.h"

/* followup_start - returns 0 or a negative errno (logged). */
int followup_start(uv_loop_t *loop, const struct config *cfg);
void followup_reload(const struct config *cfg);
void followup_stop(void);

/* followup_decision - track the request, send what the event sinks want,
 * trip the alert of a `mail` rule. */
void followup_decision(const struct config *cfg, const struct decision *d);

/* followup_track_open - messages being followed now (tests, metrics). */
size_t followup_track_open(void);
/* followup_alert_stats - the alert counters; false when alerts are off. */
struct alert_stats;
bool followup_alert_stats(struct alert_stats *out);

#endif
