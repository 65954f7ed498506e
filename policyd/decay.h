/*
 * decay - the arithmetic of decaying counters, shared by the memory store
 * and mirrored line for line by store_redis.lua (test/vectors/decay.tsv
 * checks both against one table).
 *
 *   half-life:   score' = score * 2^(-dt / half_life) + points
 *   leak:        score' = max(0, score - rate * dt) + points
 *
 * dt is in seconds (real numbers), computed from the store's clock.
 * Thresholds compare the score rounded to the counter's precision
 * (decimal places, default 0, half up), so five points added over half a
 * second with a 10-minute half-life (4.9998) trip ">= 5".
 * A key's time to live is the time its score needs to decay to
 * DECAY_FLOOR, after which it is worth nothing and can be dropped.
 * Pure: no I/O.
 */
#ifndef SMTPGUARD_DECAY_H
#define SMTPGUARD_DECAY_H

enum decay_kind {
    DECAY_HALF_LIFE,            /* exponential, param = half-life in seconds */
    DECAY_LEAK                  /* leaky bucket, param = points per second */
};

struct decay {
    enum decay_kind kind;
    double param;               /* seconds (half-life) or points/second (leak); > 0 */
};

#define DECAY_FLOOR 0.001       /* points; below this a score is gone */

const char *decay_kind_name(enum decay_kind k);  /* "half_life" / "leak" */

/* decay_apply - the score after dt seconds (dt < 0 counts as 0: clocks of
 * several hosts may disagree slightly), plus points. */
double decay_apply(const struct decay *d, double score, double dt, double points);

/* decay_ttl - seconds until score decays to DECAY_FLOOR (its magnitude,
 * under a half-life); 0 if it already is there. Always a whole number of
 * seconds, rounded up. */
double decay_ttl(const struct decay *d, double score);

/* decay_round - round half up to precision decimal places (0-6). */
double decay_round(double score, int precision);

/* decay_parse_duration - "10m", "90s", "1h", "2d", "500ms", "1.5h", or a
 * bare number of seconds. Returns 0 and *seconds, or -EINVAL. */
int decay_parse_duration(const char *s, double *seconds);

/* decay_parse_rate - "100/h", "5/m", "2/s", "1000/d", "100/10m":
 * points per second. Returns 0 or -EINVAL. */
int decay_parse_rate(const char *s, double *per_second);

#endif
