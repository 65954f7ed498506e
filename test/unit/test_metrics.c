/*
 * test_metrics - histogram buckets, the bounded (rule, verdict) table,
 * protocol_state labels, and the exposition text: cumulative buckets,
 * sums of several parts, escaped label values; slots shared with forked
 * workers.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "metrics.h"

static void assert_contains(const char *text, const char *want)
{
    if (!strstr(text, want))
        fail_msg("exposition lacks \"%s\"; got:\n%s", want, text);
}

static void test_metrics_state_labels(void **state)
{
    static const struct {
        const char *label;
        const char *value;
        enum metrics_state want;
    } cases[] = {
        {"rcpt", "RCPT", METRICS_STATE_RCPT},
        {"lower case", "rcpt", METRICS_STATE_RCPT},
        {"end of message", "END-OF-MESSAGE", METRICS_STATE_END_OF_MESSAGE},
        {"unknown", "BDAT", METRICS_STATE_OTHER},
        {"prefix only", "RCP", METRICS_STATE_OTHER},
        {"absent", NULL, METRICS_STATE_OTHER},
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        enum metrics_state got =
            metrics_state_of(cases[i].value, cases[i].value ? strlen(cases[i].value) : 0);
        if (got != cases[i].want)
            fail_msg("%s: got %s, want %s", cases[i].label, metrics_state_name(got),
                     metrics_state_name(cases[i].want));
    }
}

static void test_metrics_histogram_buckets(void **state)
{
    struct metrics_histogram h;
    (void)state;
    memset(&h, 0, sizeof h);
    metrics_observe(&h, 0.0001);  /* first bucket */
    metrics_observe(&h, 0.0005);  /* le is inclusive: first bucket */
    metrics_observe(&h, 0.003);   /* 0.005 */
    metrics_observe(&h, 100);     /* +Inf */
    assert_int_equal(h.buckets[0], 2);
    assert_int_equal(h.buckets[3], 1);
    assert_int_equal(h.buckets[METRICS_BUCKETS], 1);
    assert_int_equal(h.count, 4);
    if (h.sum < 100.0035 || h.sum > 100.0037)
        fail_msg("sum got %g, want 100.0036", h.sum);
}

static void test_metrics_verdict_rows_bounded(void **state)
{
    struct metrics *m = calloc(1, sizeof *m);
    char name[32];
    (void)state;
    metrics_verdict(m, "flood", "reject");
    metrics_verdict(m, "flood", "reject");
    metrics_verdict(m, "flood", "defer");
    metrics_verdict(m, NULL, "dunno");
    assert_int_equal(m->n_rows, 3);
    assert_string_equal(m->rows[0].rule, "flood");
    assert_int_equal(m->rows[0].count, 2);
    assert_string_equal(m->rows[2].rule, "none");
    for (int i = 0; i < METRICS_MAX_RULES + 10; i++) {
        snprintf(name, sizeof name, "rule%d", i);
        metrics_verdict(m, name, "reject");
    }
    assert_int_equal(m->n_rows, METRICS_MAX_RULES);
    assert_int_equal(m->verdicts_other, 13);
    /* Rows already there keep counting after the table is full. */
    metrics_verdict(m, "flood", "reject");
    assert_int_equal(m->rows[0].count, 3);
    free(m);
}

static void test_metrics_format(void **state)
{
    struct metrics *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    (void)state;
    a->requests[METRICS_STATE_RCPT] = 5;
    b->requests[METRICS_STATE_RCPT] = 2;
    metrics_observe(&a->answer, 0.0002);
    metrics_observe(&b->answer, 0.2);
    metrics_verdict(a, "flood", "reject");
    metrics_verdict(b, "flood", "reject");
    metrics_verdict(b, "we\"ird\\", "defer");
    /* Each worker reloads the same configuration: the most, not the sum. */
    a->reloads = 2;
    b->reloads = 1;
    a->connections_accepted = 7;
    a->connections_closed = 5;
    b->connections_accepted = 2;
    b->connections_closed = 1;
    b->store_errors = 4;
    a->script_calls = 3;
    b->script_calls = 2;
    a->script_requests = 10;
    b->script_requests = 7;
    struct metrics_gauges g = {.start_time = 1700000000.5, .config_generation = 2,
                               .store_up = true, .store_backend = "redis", .store_keys = -1,
                               .store_evictions = -1};
    const struct metrics *parts[] = {a, b};
    char *text = metrics_format(parts, 2, &g);
    assert_contains(text, "# TYPE smtpguard_requests_total counter\n");
    assert_contains(text, "smtpguard_requests_total{protocol_state=\"RCPT\"} 7\n");
    assert_contains(text, "smtpguard_requests_total{protocol_state=\"other\"} 0\n");
    assert_contains(text, "smtpguard_verdicts_total{rule=\"flood\",verdict=\"reject\"} 2\n");
    assert_contains(text, "smtpguard_verdicts_total{rule=\"we\\\"ird\\\\\",verdict=\"defer\"} 1\n");
    assert_contains(text, "# TYPE smtpguard_answer_duration_seconds histogram\n");
    assert_contains(text, "smtpguard_answer_duration_seconds_bucket{le=\"0.0005\"} 1\n");
    assert_contains(text, "smtpguard_answer_duration_seconds_bucket{le=\"0.1\"} 1\n");
    assert_contains(text, "smtpguard_answer_duration_seconds_bucket{le=\"0.25\"} 2\n");
    assert_contains(text, "smtpguard_answer_duration_seconds_bucket{le=\"+Inf\"} 2\n");
    assert_contains(text, "smtpguard_answer_duration_seconds_count 2\n");
    assert_contains(text, "smtpguard_store_errors_total 4\n");
    assert_contains(text, "# TYPE smtpguard_store_script_calls_total counter\n");
    assert_contains(text, "smtpguard_store_script_calls_total 5\n");
    assert_contains(text, "smtpguard_store_script_requests_total 17\n");
    assert_contains(text, "smtpguard_config_reloads_total 2\n");
    assert_contains(text, "smtpguard_connections 3\n");
    assert_contains(text, "smtpguard_connections_total 9\n");
    assert_contains(text, "smtpguard_store_up{backend=\"redis\"} 1\n");
    if (strstr(text, "smtpguard_store_keys") || strstr(text, "smtpguard_store_evictions"))
        fail_msg("store_keys or evictions shown for a store that does not know them");
    /* The flood row appears once, summed. */
    const char *first = strstr(text, "rule=\"flood\"");
    if (strstr(first + 1, "rule=\"flood\""))
        fail_msg("a row of two parts was written twice");
    free(text);
    free(a);
    free(b);
}

/* Slots shared with forked children: what a child counts, the parent's
 * metrics_parts sees (as worker 0's scrape sees the other workers'), and
 * the parent (the supervisor) counts into a slot of its own. */
static void test_metrics_shared_slots(void **state)
{
    (void)state;
    const struct metrics *parts[4];
    assert_int_equal(metrics_parts(parts, 4), 1);
    assert_ptr_equal(parts[0], metrics_own);
    const struct metrics *single = metrics_own;
    assert_int_equal(metrics_share(3), 0);
    assert_ptr_not_equal(metrics_own, single);
    /* The supervisor refused one reload before any worker saw it. */
    metrics_own->reload_refusals++;
    for (size_t i = 0; i < 3; i++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            metrics_use_slot(i);
            metrics_own->requests[METRICS_STATE_RCPT] += 10 * (i + 1);
            metrics_own->connections_accepted += 2;
            metrics_verdict(metrics_own, "flood", "defer");
            metrics_own->reload_failures++; /* all three refused the same one */
            _exit(0);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    assert_int_equal(metrics_parts(parts, 4), 4);
    assert_ptr_equal(parts[3], metrics_own);
    struct metrics_gauges g = {.config_generation = 1, .store_backend = "memory", .store_keys = 4,
                               .store_evictions = 2};
    char *text = metrics_format(parts, 4, &g);
    /* The workers' one failure, and the supervisor's refusal. */
    assert_contains(text, "\nsmtpguard_config_reload_failures_total 2\n");
    assert_contains(text, "smtpguard_requests_total{protocol_state=\"RCPT\"} 60\n");
    assert_contains(text, "smtpguard_verdicts_total{rule=\"flood\",verdict=\"defer\"} 3\n");
    assert_contains(text, "smtpguard_connections 6\n");
    assert_contains(text, "smtpguard_store_keys 4\n");
    assert_contains(text, "# TYPE smtpguard_store_evictions_total counter\nsmtpguard_store_evictions_total 2\n");
    free(text);
    /* A worker restarted in slot 1: the connections the dead one had
     * open are gone; what it counted stays, so the sums never fall. */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        metrics_use_slot(1);
        metrics_own->connections_accepted++;
        _exit(0);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    text = metrics_format(parts, 4, &g);
    assert_contains(text, "smtpguard_requests_total{protocol_state=\"RCPT\"} 60\n");
    assert_contains(text, "smtpguard_connections 5\n");
    assert_contains(text, "smtpguard_connections_total 7\n");
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_state_labels),
        cmocka_unit_test(test_metrics_histogram_buckets),
        cmocka_unit_test(test_metrics_verdict_rows_bounded),
        cmocka_unit_test(test_metrics_format),
        cmocka_unit_test(test_metrics_shared_slots),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
