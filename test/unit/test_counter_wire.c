/*
 * test_counter_wire - the byte layout store_redis.lua's struct.pack('<d')
 * and '<Bdd' give (vectors checked against Python's struct.pack("<d")), round
 * trips bit for bit, and stored values that are not ours refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "counter_wire.h"

static const struct {
    double x;
    unsigned char le[8];
} wire_cases[] = {
    {1.0, {0, 0, 0, 0, 0, 0, 0xf0, 0x3f}},
    {-2.5, {0, 0, 0, 0, 0, 0, 0x04, 0xc0}},
    {0.1, {0x9a, 0x99, 0x99, 0x99, 0x99, 0x99, 0xb9, 0x3f}},
    {1700000000.25, {0, 0, 0x10, 0x40, 0xfc, 0x54, 0xd9, 0x41}},
    {0.0, {0, 0, 0, 0, 0, 0, 0, 0}},
};

static void test_counter_wire_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof wire_cases / sizeof wire_cases[0]; i++) {
        unsigned char out[8];
        assert_true(counter_wire_double(wire_cases[i].le) == wire_cases[i].x);
        counter_wire_put_double(out, wire_cases[i].x);
        assert_memory_equal(out, wire_cases[i].le, 8);
    }
}

static void test_counter_wire_round_trip(void **state)
{
    const double xs[] = {-0.0, DBL_MIN / 4, DBL_MAX, -DBL_MAX, INFINITY, 12.374829734104612,
                         1e-300, 3.0 / 7.0};
    (void)state;
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++) {
        unsigned char b[8];
        counter_wire_put_double(b, xs[i]);
        double back = counter_wire_double(b);
        /* Bit for bit: -0.0 keeps its sign, a subnormal its last bit. */
        assert_memory_equal(&back, &xs[i], sizeof back);
    }
}

static void test_counter_wire_value(void **state)
{
    unsigned char v[COUNTER_WIRE_VALUE_LEN + 1];
    double score = -1, at = -1, expires = -1;

    (void)state;
    v[0] = COUNTER_WIRE_VALUE_FORMAT;
    counter_wire_put_double(v + 1, 42.5);
    counter_wire_put_double(v + 9, 1700000000.25);
    counter_wire_put_double(v + 17, 1700007372.25);
    assert_true(counter_wire_value(v, COUNTER_WIRE_VALUE_LEN, &score, &at, &expires));
    assert_true(score == 42.5 && at == 1700000000.25 && expires == 1700007372.25);

    /* The older form: the same first two numbers, no expiry (0). */
    v[0] = COUNTER_WIRE_PAIR_FORMAT;
    score = at = expires = -1;
    assert_true(counter_wire_value(v, COUNTER_WIRE_PAIR_LEN, &score, &at, &expires));
    assert_true(score == 42.5 && at == 1700000000.25 && expires == 0);

    /* Not ours: each form's length with the other's format byte, lengths
     * off by one, an unknown format byte, and the text form. Nothing is
     * written to the outputs. */
    score = at = expires = -1;
    assert_false(counter_wire_value(v, COUNTER_WIRE_VALUE_LEN, &score, &at, &expires));
    v[0] = COUNTER_WIRE_VALUE_FORMAT;
    assert_false(counter_wire_value(v, COUNTER_WIRE_PAIR_LEN, &score, &at, &expires));
    assert_false(counter_wire_value(v, COUNTER_WIRE_VALUE_LEN - 1, &score, &at, &expires));
    assert_false(counter_wire_value(v, COUNTER_WIRE_VALUE_LEN + 1, &score, &at, &expires));
    v[0] = 3;
    assert_false(counter_wire_value(v, COUNTER_WIRE_VALUE_LEN, &score, &at, &expires));
    const char *text = "42.5 1700000000.25";
    assert_false(counter_wire_value(text, strlen(text), &score, &at, &expires));
    assert_false(counter_wire_value(text, COUNTER_WIRE_PAIR_LEN, &score, &at, &expires));
    assert_true(score == -1 && at == -1 && expires == -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_wire_vectors),
        cmocka_unit_test(test_counter_wire_round_trip),
        cmocka_unit_test(test_counter_wire_value),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
