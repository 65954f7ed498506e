/*
 * counter_wire - the binary numbers policyd/store_redis.lua and smtpguard
 * exchange: an IEEE-754 double as 8 bytes, little-endian, whatever the
 * host's byte order (Lua's struct.pack('<d')), and the 17-byte value a
 * counter key holds (format byte 1, then the score and the time it was
 * at, as two such doubles).
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
#define COUNTER_WIRE_PAIR_LEN 17    /* bytes of a stored counter value */
#define COUNTER_WIRE_PAIR_FORMAT 1  /* its first byte */

/* counter_wire_double - the double in p[0..7]. */
double counter_wire_double(const void *p);

/* counter_wire_put_double - x into p[0..7]. */
void counter_wire_put_double(void *p, double x);

/* counter_wire_pair - a stored counter value of len bytes into its score
 * and time. False (outputs untouched) if it is not one. */
bool counter_wire_pair(const void *v, size_t len, double *score, double *at);

#endif
