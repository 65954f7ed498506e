/*
 * counter_wire - the binary numbers policyd/store_redis.lua and smtpguard
 * exchange: an IEEE-754 double as 8 bytes, little-endian, whatever the
 * host's byte order (Lua's struct.pack('<d')), and the value a counter
 * key holds: the format byte 2, then the score, the time it was at and a
 * time before which Redis will not expire the key (25 bytes), or the
 * older form without that time (format byte 1, 17 bytes).
 *
 * Binary, not %.17g text: formatting and parsing 17 digits was a sixth
 * of the script's time in Redis's one thread, and strtod a share of ours
 * (docs/performance.md). Both survive bit for bit, as the text did.
 * Pure: no I/O, no allocation.
 */
#ifndef SMTPGUARD_COUNTER_WIRE_H
#define SMTPGUARD_COUNTER_WIRE_H

#include <stdbool.h>
#include <stddef.h>

#define COUNTER_WIRE_DOUBLE_LEN 8   /* bytes of one number */
#define COUNTER_WIRE_VALUE_LEN 25   /* bytes of a stored counter value */
#define COUNTER_WIRE_VALUE_FORMAT 2 /* its first byte */
#define COUNTER_WIRE_PAIR_LEN 17    /* the older form: score and time only */
#define COUNTER_WIRE_PAIR_FORMAT 1

/* counter_wire_double - the double in p[0..7]. */
double counter_wire_double(const void *p);

/* counter_wire_put_double - x into p[0..7]. */
void counter_wire_put_double(void *p, double x);

/* counter_wire_value - a stored counter value of len bytes, in either
 * form, into its score, time and expiry bound (0 for the older form,
 * which holds none). False (outputs untouched) if it is neither. */
bool counter_wire_value(const void *v, size_t len, double *score, double *at, double *expires);

#endif
