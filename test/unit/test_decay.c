/*
 * test_decay - decay arithmetic against test/vectors/decay.tsv (the
 * table store_redis.lua is tested against too), rounding, and the
 * duration and rate parsers.
 *
 * The vector file is found under $SMTPGUARD_SRCDIR (default ".", since
 * tests run from the top of the tree).
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "decay.h"

/* How close a computed score must be to the table's: the table was
 * computed with the same formulas in double precision, so only the last
 * bits of pow()/log2() may differ between libms. */
#define VECTOR_REL_TOL 1e-9

static bool close_enough(double got, double want)
{
    if (got == want)
        return true;
    return fabs(got - want) <= VECTOR_REL_TOL * fabs(want);
}

static int parse_kind(const char *s, enum decay_kind *out)
{
    if (strcmp(s, "half_life") == 0)
        *out = DECAY_HALF_LIFE;
    else if (strcmp(s, "leak") == 0)
        *out = DECAY_LEAK;
    else
        return -EINVAL;
    return 0;
}

static double parse_double(const char *s, const char *what, unsigned long lineno)
{
    char *end;
    double v = strtod(s, &end);

    if (end == s || *end != '\0')
        fail_msg("decay.tsv:%lu: bad %s \"%s\"", lineno, what, s);
    return v;
}

static void test_decay_vectors(void **state)
{
    (void)state;
    const char *srcdir = getenv("SMTPGUARD_SRCDIR");
    char path[4096];
    char line[1024];
    unsigned long lineno = 0, rows = 0;
    FILE *fp;

    snprintf(path, sizeof(path), "%s/test/vectors/decay.tsv", srcdir ? srcdir : ".");
    fp = fopen(path, "r");
    if (!fp)
        fail_msg("%s: %s (set SMTPGUARD_SRCDIR to the source tree)", path, strerror(errno));

    while (fgets(line, sizeof(line), fp)) {
        char *field[9];
        size_t nfields = 0;
        char *save = NULL;

        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '#' || line[0] == '\0')
            continue;
        for (char *tok = strtok_r(line, "\t", &save); tok && nfields < 9;
             tok = strtok_r(NULL, "\t", &save))
            field[nfields++] = tok;
        if (nfields != 8)
            fail_msg("decay.tsv:%lu: got %zu fields, want 8", lineno, nfields);

        struct decay d;
        if (parse_kind(field[1], &d.kind) < 0)
            fail_msg("decay.tsv:%lu: bad kind \"%s\"", lineno, field[1]);
        d.param = parse_double(field[2], "param", lineno);
        double before = parse_double(field[3], "score_before", lineno);
        double dt = parse_double(field[4], "dt_seconds", lineno);
        double points = parse_double(field[5], "points", lineno);
        double want = parse_double(field[6], "want_score", lineno);
        double want_ttl = parse_double(field[7], "want_ttl", lineno);

        double got = decay_apply(&d, before, dt, points);
        if (!close_enough(got, want))
            fail_msg("%s (line %lu): score got %.17g, want %.17g", field[0], lineno, got, want);
        double got_ttl = decay_ttl(&d, want);
        if (got_ttl != want_ttl)
            fail_msg("%s (line %lu): ttl got %.17g, want %.17g", field[0], lineno, got_ttl,
                     want_ttl);
        rows++;
    }
    fclose(fp);
    if (rows < 20)
        fail_msg("decay.tsv: got %lu rows, want at least 20", rows);
}

static void test_decay_design_thresholds(void **state)
{
    (void)state;
    /* DESIGN.md: five points over half a second with a 10-minute
     * half-life trip ">= 5"; seven with leak 100/h over a second make
     * 6.97, which shows as 7. */
    struct decay hl = {DECAY_HALF_LIFE, 600};
    struct decay leak = {DECAY_LEAK, 100.0 / 3600};
    double s = 0;

    for (int i = 0; i < 5; i++)
        s = decay_apply(&hl, s, i ? 0.125 : 0, 1);
    if (!(s < 5))
        fail_msg("half-life raw score got %.17g, want < 5", s);
    if (decay_round(s, 0) != 5)
        fail_msg("half-life rounded got %g, want 5", decay_round(s, 0));

    s = 0;
    for (int i = 0; i < 7; i++)
        s = decay_apply(&leak, s, i ? 1.0 / 6 : 0, 1);
    if (decay_round(s, 2) != 6.97)
        fail_msg("leak rounded to 2 places got %.17g, want 6.97", decay_round(s, 2));
    if (decay_round(s, 0) != 7)
        fail_msg("leak rounded got %g, want 7", decay_round(s, 0));
}

static void test_decay_apply_edges(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        enum decay_kind kind;
        double param, score, dt, points, want;
    } cases[] = {
        {"hl NaN dt counts as 0", DECAY_HALF_LIFE, 600, 3, NAN, 1, 4},
        {"hl -inf dt counts as 0", DECAY_HALF_LIFE, 600, 3, -INFINITY, 1, 4},
        {"hl +inf dt forgets", DECAY_HALF_LIFE, 600, 3, INFINITY, 1, 1},
        {"leak NaN dt counts as 0", DECAY_LEAK, 1, 3, NAN, 1, 4},
        {"leak +inf dt forgets", DECAY_LEAK, 1, 3, INFINITY, 1, 1},
        {"leak exact", DECAY_LEAK, 0.5, 3, 2, 0, 2},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct decay d = {cases[i].kind, cases[i].param};
        double got = decay_apply(&d, cases[i].score, cases[i].dt, cases[i].points);
        if (got != cases[i].want)
            fail_msg("%s: got %.17g, want %.17g", cases[i].label, got, cases[i].want);
    }
}

static void test_decay_ttl(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        enum decay_kind kind;
        double param, score, want;
    } cases[] = {
        {"hl zero", DECAY_HALF_LIFE, 600, 0, 0},
        {"hl negative", DECAY_HALF_LIFE, 600, -3, 6931}, /* magnitude: 600*log2(3000)=6930.6 */
        {"hl at floor", DECAY_HALF_LIFE, 600, DECAY_FLOOR, 0},
        {"hl NaN", DECAY_HALF_LIFE, 600, NAN, 0},
        {"hl one point", DECAY_HALF_LIFE, 600, 1, 5980},     /* 600*log2(1000)=5979.45 */
        {"hl 1.5 points", DECAY_HALF_LIFE, 10, 1.5, 106},    /* 10*log2(1500)=105.5 */
        {"leak at floor", DECAY_LEAK, 1, DECAY_FLOOR, 0},
        {"leak one point", DECAY_LEAK, 1, 1, 1},             /* 0.999 s, rounded up */
        {"leak 2/s", DECAY_LEAK, 2, 10.001, 5},
        {"leak slow", DECAY_LEAK, 100.0 / 3600, 7, 252},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct decay d = {cases[i].kind, cases[i].param};
        double got = decay_ttl(&d, cases[i].score);
        if (got != cases[i].want)
            fail_msg("%s: got %.17g, want %.17g", cases[i].label, got, cases[i].want);
    }
}

static void test_decay_round(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        double x;
        int precision;
        double want;
    } cases[] = {
        {"burst just under 5", 4.9998, 0, 5},
        {"half rounds up", 2.5, 0, 3},
        {"below half", 2.4999, 0, 2},
        {"zero", 0, 0, 0},
        {"negative half up", -2.5, 0, -2},
        {"negative", -2.6, 0, -3},
        {"2.675 at 2", 2.675, 2, 2.68},
        {"0.145 at 2 (binary 0.14499..)", 0.145, 2, 0.15},
        {"1.005 at 2", 1.005, 2, 1.01},
        {"0.5005 at 3", 0.5005, 3, 0.501},
        {"6.9722 at 2", 6.972222222, 2, 6.97},
        {"precision 6", 1.23456749, 6, 1.234567},
        {"precision 6 half", 1.2345675, 6, 1.234568},
        {"precision above 6 clamps", 1.2345675, 9, 1.234568},
        {"precision below 0 clamps", 2.5, -1, 3},
        {"large", 123456789.5, 0, 123456790},
        {"already whole", 7, 0, 7},
        /* The nudge stays far below half a unit at any size. */
        {"500 at 6 (5e8 units)", 500, 6, 500},
        {"1e9 bytes", 1e9, 0, 1e9},
        {"1e8 + 0.45", 1e8 + 0.45, 0, 1e8},
        {"1e8 + 0.5", 1e8 + 0.5, 0, 1e8 + 1},
        {"1e12 + 0.25", 1e12 + 0.25, 0, 1e12},
        {"500.0000004 at 6", 500.0000004, 6, 500},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        double got = decay_round(cases[i].x, cases[i].precision);
        if (got != cases[i].want)
            fail_msg("%s: decay_round(%.17g, %d) got %.17g, want %.17g", cases[i].label,
                     cases[i].x, cases[i].precision, got, cases[i].want);
    }
    if (!isnan(decay_round(NAN, 0)))
        fail_msg("NaN: got a number, want NaN");
    if (decay_round(INFINITY, 2) != INFINITY)
        fail_msg("inf: got %g, want inf", decay_round(INFINITY, 2));
}

static void test_decay_parse_duration(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int rc;
        double want;
    } cases[] = {
        {"500ms", 0, 0.5},
        {"90s", 0, 90},
        {"10m", 0, 600},
        {"1h", 0, 3600},
        {"2d", 0, 172800},
        {"1.5h", 0, 5400},
        {"600", 0, 600},
        {"0.25", 0, 0.25},
        {"0", 0, 0},
        {"0s", 0, 0},
        {"1ms", 0, 0.001},
        {"11574d", 0, 999993600},
        {"", -EINVAL, 0},
        {"-5m", -EINVAL, 0},
        {"+5m", -EINVAL, 0},
        {" 5m", -EINVAL, 0},
        {"5m ", -EINVAL, 0},
        {"5 m", -EINVAL, 0},
        {"m", -EINVAL, 0},
        {"5x", -EINVAL, 0},
        {"5mm", -EINVAL, 0},
        {"5M", -EINVAL, 0},
        {".5h", -EINVAL, 0},
        {"5.h", -EINVAL, 0},
        {"1e3", -EINVAL, 0},
        {"0x10", -EINVAL, 0},
        {"inf", -EINVAL, 0},
        {"nan", -EINVAL, 0},
        {"1.2.3s", -EINVAL, 0},
        {"11575d", -EINVAL, 0},               /* over the ~31-year cap */
        {"99999999999999999999999999d", -EINVAL, 0},
        {"100000000000000000000000000000000000000000000000000000000", -EINVAL, 0},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        double got = -1;
        int rc = decay_parse_duration(cases[i].in, &got);
        if (rc != cases[i].rc)
            fail_msg("\"%s\": rc got %d, want %d", cases[i].in, rc, cases[i].rc);
        if (rc == 0 && fabs(got - cases[i].want) > 1e-12 * cases[i].want)
            fail_msg("\"%s\": got %.17g s, want %.17g s", cases[i].in, got, cases[i].want);
    }
}

static void test_decay_parse_rate(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int rc;
        double want;
    } cases[] = {
        {"100/h", 0, 100.0 / 3600},
        {"5/m", 0, 5.0 / 60},
        {"2/s", 0, 2},
        {"1000/d", 0, 1000.0 / 86400},
        {"100/10m", 0, 100.0 / 600},
        {"1.5/s", 0, 1.5},
        {"100/1.5h", 0, 100.0 / 5400},
        {"3/500ms", 0, 6},
        {"30/60", 0, 0.5},
        {"0/h", 0, 0},
        {"100", -EINVAL, 0},
        {"100/", -EINVAL, 0},
        {"/h", -EINVAL, 0},
        {"100/0s", -EINVAL, 0},
        {"100/0", -EINVAL, 0},
        {"-100/h", -EINVAL, 0},
        {"100/-1h", -EINVAL, 0},
        {"100/hour", -EINVAL, 0},
        {"100 /h", -EINVAL, 0},
        {"100/h/h", -EINVAL, 0},
        {"abc/h", -EINVAL, 0},
        {"", -EINVAL, 0},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        double got = -1;
        int rc = decay_parse_rate(cases[i].in, &got);
        if (rc != cases[i].rc)
            fail_msg("\"%s\": rc got %d, want %d", cases[i].in, rc, cases[i].rc);
        if (rc == 0 && fabs(got - cases[i].want) > 1e-12 * cases[i].want)
            fail_msg("\"%s\": got %.17g/s, want %.17g/s", cases[i].in, got, cases[i].want);
    }
}

static void test_decay_kind_name(void **state)
{
    (void)state;
    assert_string_equal(decay_kind_name(DECAY_HALF_LIFE), "half_life");
    assert_string_equal(decay_kind_name(DECAY_LEAK), "leak");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decay_vectors),
        cmocka_unit_test(test_decay_design_thresholds),
        cmocka_unit_test(test_decay_apply_edges),
        cmocka_unit_test(test_decay_ttl),
        cmocka_unit_test(test_decay_round),
        cmocka_unit_test(test_decay_parse_duration),
        cmocka_unit_test(test_decay_parse_rate),
        cmocka_unit_test(test_decay_kind_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
