/*
 * test_store_memory_chains - the memory store with chains longer than its
 * per-apply budgets. Past MEM_BUCKETS_MAX keys (2^26) the bucket array
 * stops growing and chains lengthen; this file builds store_memory.c
 * itself with the array held at 16 buckets, so a few thousand keys give
 * that shape: chains of ~190 entries, where the sweep looks at no more
 * than MEM_SWEEP_ENTRIES (64) an apply. (The object defines every symbol
 * of store_memory.o, so the archive's copy is never linked in.)
 */
#define MEM_BUCKETS_MAX ((size_t)16)
#include "store_memory.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

static double fake_now = 1700000000.0;

static double fake_clock(void)
{
    return fake_now;
}

static void on_done(void *arg, int status, const double *scores, size_t n, double now)
{
    int *calls = arg;
    (void)scores;
    (void)n;
    (void)now;
    assert_int_equal(status, STORE_OK);
    (*calls)++;
}

static void apply_key(uv_loop_t *loop, struct store *st, const char *key, double rate,
                      double points)
{
    struct store_update u = {.key = key, .key_len = strlen(key), .points = points};
    int calls = 0;

    u.decay.kind = DECAY_LEAK;
    u.decay.param = rate;
    store_apply(st, &u, 1, on_done, &calls);
    uv_run(loop, UV_RUN_DEFAULT);
    assert_int_equal(calls, 1);
}

/* Expired keys behind more than 64 live ones in their chain are freed:
 * a sweep that stopped inside a chain went back to its head the next
 * time, and never got past the live entries at the front. */
static void test_store_memory_sweep_passes_long_chains(void **state)
{
    struct store_config cfg = {.backend = STORE_BACKEND_MEMORY, .memory_max_keys = 1000000};
    uv_loop_t loop;
    struct store *st;
    char err[256], key[32];
    size_t held = 0;
    int applies = 0;

    (void)state;
    store_memory_clock = fake_clock;
    assert_int_equal(uv_loop_init(&loop), 0);
    assert_int_equal(store_open(&st, &cfg, &loop, err, sizeof err), 0);
    assert_int_equal(store_memory_buckets(st), 16);
    /* Live keys, short-lived ones, live ones again: new entries go in at
     * a chain's head, so each chain holds ~125 live entries, then ~62
     * that will expire, then ~125 live ones: more live entries ahead of
     * the expired ones than a sweep step looks at. */
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof key, "live%d", i);
        apply_key(&loop, st, key, 1e-6, 5); /* ~2 months */
    }
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "short%d", i);
        apply_key(&loop, st, key, 1, 5); /* 5 s */
    }
    for (int i = 2000; i < 4000; i++) {
        snprintf(key, sizeof key, "live%d", i);
        apply_key(&loop, st, key, 1e-6, 5);
    }
    store_memory_stats(st, &held, NULL);
    assert_int_equal(held, 5000);
    assert_int_equal(store_memory_buckets(st), 16);

    fake_now += 10;
    /* Reads of a missing key create nothing and run a sweep step each:
     * 16 chains, at least one a step. */
    while (held > 4000 && applies < 1000) {
        apply_key(&loop, st, "missing", 1, 0);
        applies++;
        store_memory_stats(st, &held, NULL);
    }
    if (held != 4000)
        fail_msg("%zu keys held after %d sweep steps, want the 4,000 live ones", held, applies);
    assert_true(applies <= 32); /* twice round the array at most */

    store_close(st);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_memory_sweep_passes_long_chains),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
