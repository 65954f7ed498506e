/*
 * decay - decaying counter arithmetic and the parsers for its settings.
 * See decay.h.
 *
 * The formulas are written exactly as store_redis.lua writes them
 * (pow(2, -dt / half_life), not exp(-dt * ln2 / half_life), which can
 * differ in the last bit), because the memory store and the Redis script
 * must agree on every digit that test/vectors/decay.tsv checks.
 *
 * The parsers take the number apart by hand instead of trusting strtod()
 * alone, which would also accept " 5", "+5", "0x10", "1e3", "inf" and
 * "nan": a config value is either plainly a duration or an error.
 */
#include "decay.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* Longest duration or rate count we accept: about 31.7 years. Anything
 * longer is a typo, and would push TTL arithmetic past what a store can
 * represent. */
#define DECAY_DURATION_MAX 1e9
#define DECAY_NUMBER_MAX 1e12

/* Longest number text we parse ("123456789.123456789"). */
#define DECAY_NUMBER_LEN 40

const char *decay_kind_name(enum decay_kind k)
{
    switch (k) {
    case DECAY_HALF_LIFE:
        return "half_life";
    case DECAY_LEAK:
        return "leak";
    }
    return "?";
}

double decay_apply(const struct decay *d, double score, double dt, double points)
{
    /* Clocks of several hosts may disagree slightly; time never runs
     * backwards for a score. */
    if (!(dt > 0))
        dt = 0;
    switch (d->kind) {
    case DECAY_HALF_LIFE:
        return score * pow(2.0, -dt / d->param) + points;
    case DECAY_LEAK: {
        double left = score - d->param * dt;
        return (left > 0 ? left : 0) + points;
    }
    }
    return score + points;
}

double decay_ttl(const struct decay *d, double score)
{
    double t;

    /* A negative score (a rule that subtracts) decays toward 0 under a
     * half-life just as a positive one does, so it lives as long as its
     * magnitude says; under a leak it is clamped to 0 at the next update. */
    if (d->kind == DECAY_HALF_LIFE)
        score = fabs(score);
    /* !(score > floor) also catches NaN. */
    if (!(score > DECAY_FLOOR))
        return 0;
    switch (d->kind) {
    case DECAY_HALF_LIFE:
        t = d->param * log2(score / DECAY_FLOOR);
        return ceil(t);
    case DECAY_LEAK:
        t = (score - DECAY_FLOOR) / d->param;
        return ceil(t);
    }
    return 0;
}

/*
 * decay_round - half up, i.e. floor(x * 10^p + 0.5) / 10^p, plus a
 * nudge of 1e-12 of the magnitude (at most a thousandth of a unit)
 * before flooring. Why the nudge: 0.145 is stored as
 * 0.14499999999999999, 0.145 * 100 + 0.5 is 14.999999999999998, and that
 * would floor to 0.14. A double carries about 16 significant digits, so
 * a relative nudge of 1e-12 absorbs that representation noise (and a
 * few operations' worth of it) and nothing an operator could mean: a
 * value within 1e-12 (relative) below a half rounds up. The cap keeps
 * large values honest: a nudge of 1e-9, as it was, reached half a unit
 * at 5e8 units and rounded 500,000,000 bytes up to 500,000,001.
 */
double decay_round(double score, int precision)
{
    static const double scales[] = {1, 10, 100, 1000, 10000, 100000, 1000000};
    double scale, v;

    if (precision < 0)
        precision = 0;
    if (precision > 6)
        precision = 6;
    scale = scales[precision];
    v = score * scale;
    if (!isfinite(v))
        return score;
    return floor(v + 0.5 + fmin(fabs(v) * 1e-12, 1e-3)) / scale;
}

/*
 * decay_parse_number - "12", "1.5": digits, optionally '.' and digits.
 * Sets *end past the number. Returns 0 or -EINVAL.
 */
static int decay_parse_number(const char *s, const char **end, double *out)
{
    char buf[DECAY_NUMBER_LEN + 1];
    const char *p = s;
    size_t n;

    while (*p >= '0' && *p <= '9')
        p++;
    if (p == s)
        return -EINVAL;
    if (*p == '.') {
        const char *frac = ++p;
        while (*p >= '0' && *p <= '9')
            p++;
        if (p == frac)
            return -EINVAL;
    }
    n = (size_t)(p - s);
    if (n > DECAY_NUMBER_LEN)
        return -EINVAL;
    memcpy(buf, s, n);
    buf[n] = '\0';
    /* The text is now known to be plain decimal, so strtod() only does
     * the correctly rounded conversion. */
    *out = strtod(buf, NULL);
    if (!isfinite(*out) || *out > DECAY_NUMBER_MAX)
        return -EINVAL;
    *end = p;
    return 0;
}

/* decay_unit_seconds - the length of one unit ("" means seconds), or a
 * negative value if the unit is unknown. */
static double decay_unit_seconds(const char *u)
{
    static const struct {
        const char *name;
        double seconds;
    } units[] = {
        {"", 1}, {"ms", 0.001}, {"s", 1}, {"m", 60}, {"h", 3600}, {"d", 86400},
    };

    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (strcmp(u, units[i].name) == 0)
            return units[i].seconds;
    return -1;
}

int decay_parse_duration(const char *s, double *seconds)
{
    const char *unit;
    double n, mult, v;

    if (!s || decay_parse_number(s, &unit, &n) < 0)
        return -EINVAL;
    mult = decay_unit_seconds(unit);
    if (mult < 0)
        return -EINVAL;
    v = n * mult;
    if (v > DECAY_DURATION_MAX)
        return -EINVAL;
    *seconds = v;
    return 0;
}

int decay_parse_rate(const char *s, double *per_second)
{
    const char *slash, *per;
    double count, seconds;

    if (!s || decay_parse_number(s, &slash, &count) < 0 || *slash != '/')
        return -EINVAL;
    per = slash + 1;
    if (*per >= '0' && *per <= '9') {
        if (decay_parse_duration(per, &seconds) < 0)
            return -EINVAL;
    } else {
        /* "100/h": a bare unit means one of it; "" (as in "100/") or an
         * unknown unit is an error. */
        if (*per == '\0')
            return -EINVAL;
        seconds = decay_unit_seconds(per);
        if (seconds < 0)
            return -EINVAL;
    }
    /* "5/0s" would be an infinite rate. */
    if (!(seconds > 0))
        return -EINVAL;
    *per_second = count / seconds;
    return 0;
}
