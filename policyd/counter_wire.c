/* counter_wire - see counter_wire.h. */
#include "counter_wire.h"

#include <stdint.h>
#include <string.h>

_Static_assert(sizeof(double) == COUNTER_WIRE_DOUBLE_LEN && sizeof(uint64_t) == sizeof(double),
               "a double is not 8 bytes");

double counter_wire_double(const void *p)
{
    const unsigned char *b = p;
    uint64_t bits = 0;
    double x;

    for (int i = COUNTER_WIRE_DOUBLE_LEN - 1; i >= 0; i--)
        bits = bits << 8 | b[i];
    memcpy(&x, &bits, sizeof x);
    return x;
}

void counter_wire_put_double(void *p, double x)
{
    unsigned char *b = p;
    uint64_t bits;

    memcpy(&bits, &x, sizeof bits);
    for (int i = 0; i < COUNTER_WIRE_DOUBLE_LEN; i++, bits >>= 8)
        b[i] = (unsigned char)(bits & 0xff);
}

bool counter_wire_value(const void *v, size_t len, double *score, double *at, double *expires)
{
    const unsigned char *b = v;

    if (!((len == COUNTER_WIRE_VALUE_LEN && b[0] == COUNTER_WIRE_VALUE_FORMAT) ||
          (len == COUNTER_WIRE_PAIR_LEN && b[0] == COUNTER_WIRE_PAIR_FORMAT)))
        return false;
    *score = counter_wire_double(b + 1);
    *at = counter_wire_double(b + 1 + COUNTER_WIRE_DOUBLE_LEN);
    *expires = len == COUNTER_WIRE_VALUE_LEN ? counter_wire_double(b + 1 + 2 * COUNTER_WIRE_DOUBLE_LEN)
                                             : 0;
    return true;
}
