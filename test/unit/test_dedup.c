/*
 * test_dedup - one alert per (rule, key) per interval: trips inside the
 * interval are suppressed and counted, the count is handed over with the
 * next alert, a question out suppresses like an interval, keys and rules
 * are apart, and the table stays under its cap.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "dedup.h"

#define ID(s) (s), sizeof(s) - 1

static void test_dedup_interval(void **state)
{
    (void)state;
    struct dedup *d = dedup_new(100);
    unsigned long h = 99;
    assert_int_equal(dedup_trip(d, ID("flood\0ip:1"), 100, &h), DEDUP_PROCEED);
    assert_int_equal(h, 0);
    /* A question is out: suppressed until settled. */
    assert_int_equal(dedup_trip(d, ID("flood\0ip:1"), 100.5, &h), DEDUP_SUPPRESS);
    dedup_settle(d, ID("flood\0ip:1"), 160);
    for (int i = 0; i < 4; i++)
        assert_int_equal(dedup_trip(d, ID("flood\0ip:1"), 120 + i, &h), DEDUP_SUPPRESS);
    /* The interval is over: 5 suppressed trips are handed over, once. */
    h = 0;
    assert_int_equal(dedup_trip(d, ID("flood\0ip:1"), 160, &h), DEDUP_PROCEED);
    assert_int_equal(h, 5);
    dedup_settle(d, ID("flood\0ip:1"), 220);
    assert_int_equal(dedup_trip(d, ID("flood\0ip:1"), 300, &h), DEDUP_PROCEED);
    assert_int_equal(h, 0);
    dedup_free(d);
}

static void test_dedup_keys_apart(void **state)
{
    (void)state;
    struct dedup *d = dedup_new(100);
    unsigned long h;
    static const struct {
        const char *label;
        const char *id;
        size_t len;
        enum dedup_result want;
    } cases[] = {
        {"first of flood/ip:1", ID("flood\0ip:1"), DEDUP_PROCEED},
        {"another key", ID("flood\0ip:2"), DEDUP_PROCEED},
        {"another rule, same key", ID("slow\0ip:1"), DEDUP_PROCEED},
        {"rule/key split elsewhere", ID("flood\0\0ip:1"), DEDUP_PROCEED},
        {"flood/ip:1 again", ID("flood\0ip:1"), DEDUP_SUPPRESS},
        {"flood/ip:2 again", ID("flood\0ip:2"), DEDUP_SUPPRESS},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        enum dedup_result got = dedup_trip(d, cases[i].id, cases[i].len, 100, &h);
        if (got == DEDUP_PROCEED)
            dedup_settle(d, cases[i].id, cases[i].len, 200);
        if (got != cases[i].want)
            fail_msg("%s: got %d, want %d", cases[i].label, got, cases[i].want);
    }
    assert_int_equal(dedup_count(d), 4);
    dedup_free(d);
}

static void test_dedup_cap(void **state)
{
    (void)state;
    struct dedup *d = dedup_new(10);
    unsigned long h;
    char id[32];
    for (int i = 0; i < 1000; i++) {
        int n = snprintf(id, sizeof id, "r%ck%d", '\0', i);
        assert_int_equal(dedup_trip(d, id, (size_t)n, 100, &h), DEDUP_PROCEED);
        dedup_settle(d, id, (size_t)n, 200);
        assert_true(dedup_count(d) <= 10);
    }
    /* Settling an id the cap dropped is harmless. */
    dedup_settle(d, ID("gone\0x"), 300);
    /* Expired entries with nothing pending are swept as trips come. */
    for (int i = 0; i < 5; i++) {
        int n = snprintf(id, sizeof id, "z%ck%d", '\0', i);
        dedup_trip(d, id, (size_t)n, 500, &h);
        dedup_settle(d, id, (size_t)n, 600);
    }
    assert_true(dedup_count(d) <= 10);
    dedup_free(d);
}

/* An expired entry with trips still to hand over must not stop the sweep
 * at the head of the list: the 1,000 expired entries behind it were kept
 * (none dropped in 200 trips). */
static void test_dedup_sweep_passes_pending(void **state)
{
    (void)state;
    struct dedup *d = dedup_new(100000);
    unsigned long h;
    char id[32];
    assert_int_equal(dedup_trip(d, ID("r\0held"), 100, &h), DEDUP_PROCEED);
    dedup_settle(d, ID("r\0held"), 200);
    assert_int_equal(dedup_trip(d, ID("r\0held"), 150, &h), DEDUP_SUPPRESS); /* 1 pending */
    for (int i = 0; i < 1000; i++) {
        int n = snprintf(id, sizeof id, "r%cold%d", '\0', i);
        dedup_trip(d, id, (size_t)n, 150, &h);
        dedup_settle(d, id, (size_t)n, 200);
    }
    assert_int_equal(dedup_count(d), 1001);
    /* An hour later, 200 trips of new keys: the sweep must get past the
     * pending entry and drop the expired ones (8 a trip). */
    for (int i = 0; i < 200; i++) {
        int n = snprintf(id, sizeof id, "r%cnew%d", '\0', i);
        dedup_trip(d, id, (size_t)n, 3800, &h);
        dedup_settle(d, id, (size_t)n, 3900);
    }
    if (dedup_count(d) != 1 + 200)
        fail_msg("%zu entries held, want 201: the expired ones swept", dedup_count(d));
    /* The pending trip is still there to hand over. */
    assert_int_equal(dedup_trip(d, ID("r\0held"), 3800, &h), DEDUP_PROCEED);
    assert_int_equal(h, 1);
    dedup_free(d);
}

struct drained {
    int calls;
    unsigned long total;
    char last[32];
};

static void on_drain(void *arg, const char *id, size_t len, unsigned long pending)
{
    struct drained *dr = arg;
    dr->calls++;
    dr->total += pending;
    snprintf(dr->last, sizeof dr->last, "%.*s", (int)len, id);
}

static void test_dedup_drain(void **state)
{
    (void)state;
    struct dedup *d = dedup_new(3);
    unsigned long h;
    struct drained dr = {0};
    dedup_trip(d, ID("a"), 100, &h);
    dedup_settle(d, ID("a"), 200);
    for (int i = 0; i < 3; i++)
        dedup_trip(d, ID("a"), 101, &h);
    assert_int_equal(dedup_drain(d, on_drain, &dr, 10), 1);
    assert_int_equal(dr.total, 3);
    assert_string_equal(dr.last, "a");
    /* Drained counts are not handed over again. */
    dedup_trip(d, ID("a"), 102, &h);
    assert_int_equal(dedup_trip(d, ID("a"), 300, &h), DEDUP_PROCEED);
    assert_int_equal(h, 1);
    assert_int_equal(dedup_drain(d, on_drain, &dr, 10), 0);
    /* Bounded; and an entry dropped at the cap leaves the dirty list. */
    dedup_settle(d, ID("a"), 400);
    dedup_trip(d, ID("a"), 301, &h);
    dedup_trip(d, ID("b"), 301, &h);
    dedup_settle(d, ID("b"), 400);
    dedup_trip(d, ID("b"), 302, &h);
    dedup_trip(d, ID("c"), 303, &h);
    dedup_trip(d, ID("d"), 304, &h); /* drops "a", the least recently used */
    dr.calls = 0;
    assert_int_equal(dedup_drain(d, on_drain, &dr, 10), 1);
    assert_string_equal(dr.last, "b");
    dedup_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dedup_interval),
        cmocka_unit_test(test_dedup_keys_apart),
        cmocka_unit_test(test_dedup_cap),
        cmocka_unit_test(test_dedup_sweep_passes_pending),
        cmocka_unit_test(test_dedup_drain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
