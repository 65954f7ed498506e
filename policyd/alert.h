/*
 * alert - mail to the abuse desk when an action rule with `mail` fires.
 *
 * One alert per (rule, key) per interval (alerts.every):
 *   alert_check()   the local de-dup (dedup.h): false = suppressed and
 *                   counted, nothing else to do. Cheap: a flood calls it
 *                   for every request.
 *   alert_submit()  the caller built the alert's facts (with evidence);
 *                   with a shared Redis one host wins the interval
 *                   (SET NX EX in one EVAL, which also hands over and
 *                   collects the counts of suppressed alerts of every
 *                   host); with the memory store, or when Redis does not
 *                   answer, this process decides alone (a duplicate is
 *                   better than a lost alert). The winner composes the
 *                   mail and queues it, or adds it to the digest.
 *
 * Delivery runs on the loop, one mail at a time, never in a policy
 * answer's path: SMTP to a relay (smtpc.h) or a sendmail program (its
 * standard input, with a timeout after which it is killed). A mail that
 * fails for now is retried after retry_delay, doubling, up to retries
 * more times; a permanent failure (5xx, sendmail exit other than 75) is
 * logged and dropped. The queue holds at most alerts.queue mails; more
 * are dropped and counted in the log.
 *
 * Ownership: alert_submit() takes the alert_info. alert_configure() copies
 * the settings (a reload may change them; mails already queued keep their
 * sender and recipients, and go to the relay configured at the time they
 * are tried). The redisaux passed in must outlive its use: close it
 * before alert_close() (its pending answers are then dropped).
 */
#ifndef SMTPGUARD_ALERT_H
#define SMTPGUARD_ALERT_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "alertmsg.h"
#include "config.h"
#include "redisaux.h"

struct alert;

struct alert *alert_new(uv_loop_t *loop);
/* alert_configure - settings from cfg; aux (may be NULL) decides across
 * hosts, with keys under prefix. */
void alert_configure(struct alert *a, const struct config_alerts *cfg, struct redisaux *aux,
                     const char *prefix);
/* alert_check - whether this trip of (rule, key) may alert; if so,
 * *handover trips were suppressed locally since the last one. */
bool alert_check(struct alert *a, const char *rule, const char *key, double now,
                 unsigned long *handover);
void alert_submit(struct alert *a, struct alert_info *ai, unsigned long handover);
/* alert_hostname - this host's name, as the mails show it. */
const char *alert_hostname(const struct alert *a);
/* alert_close - cancel delivery in progress, drop the queue, free once
 * every handle is closed. */
void alert_close(struct alert *a);

/* Counters for tests and logs. */
struct alert_stats {
    unsigned long sent;         /* mails the relay/sendmail took */
    unsigned long failed;       /* mails given up */
    unsigned long dropped;      /* mails refused by a full queue */
    unsigned long suppressed;   /* trips swallowed by the de-dup */
};
void alert_get_stats(const struct alert *a, struct alert_stats *out);

#endif
