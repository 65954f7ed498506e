/*
 * test_store_memory - the memory backend on a real uv loop with an
 * injected clock: decay through the store equals decay_apply, reads do
 * not create keys, expiry frees keys, the cap evicts and counts, every
 * callback is deferred and runs exactly once, close fails what is
 * pending, and test/vectors/decay.tsv (under $SMTPGUARD_SRCDIR, default
 * ".") gives the same numbers through the store as through decay.c.
 * Every test ends with uv_loop_close() == 0: no handle left behind.
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
#include <uv.h>

#include "decay.h"
#include "log.h"
#include "store.h"

#define VECTOR_REL_TOL 1e-9

static double fake_now;

static double fake_clock(void)
{
    return fake_now;
}

/* The store's own clock, saved before any test swaps in fake_clock. */
static double (*real_clock)(void);

/* What one apply's callback saw. */
struct result {
    int calls;                  /* times the callback ran */
    int status;                 /* last status */
    size_t n;                   /* scores */
    double scores[STORE_MAX_UPDATES]; /* copied out of the callback */
    double now;                 /* the store's clock */
};

static void on_done(void *arg, int status, const double *scores, size_t n, double now)
{
    struct result *r = arg;
    r->calls++;
    r->status = status;
    r->n = n;
    r->now = now;
    if (status == STORE_OK)
        memcpy(r->scores, scores, n * sizeof *scores);
}

static void on_reset(void *arg, int status)
{
    struct result *r = arg;
    r->calls++;
    r->status = status;
}

struct fixture {
    uv_loop_t loop;             /* one per test */
    struct store *st;           /* memory store on it */
};

static struct store *fixture_open(struct fixture *f, size_t max_keys)
{
    struct store_config cfg = {.backend = STORE_BACKEND_MEMORY, .memory_max_keys = max_keys};
    char err[256];

    store_memory_clock = fake_clock;
    fake_now = 1700000000.0;
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(store_open(&f->st, &cfg, &f->loop, err, sizeof err), 0);
    assert_string_equal(store_name(f->st), "memory");
    return f->st;
}

static void fixture_close(struct fixture *f)
{
    store_close(f->st);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static struct store_update upd(const char *key, enum decay_kind kind, double param, double points)
{
    struct store_update u = {.key = key, .key_len = strlen(key), .points = points};
    u.decay.kind = kind;
    u.decay.param = param;
    return u;
}

/* apply_one - apply one update at the fake clock, run the loop, return
 * the score; fails the test unless the callback ran once with STORE_OK. */
static double apply_one(struct fixture *f, struct store_update u)
{
    struct result r = {0};

    store_apply(f->st, &u, 1, on_done, &r);
    assert_int_equal(r.calls, 0);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    if (r.calls != 1 || r.status != STORE_OK || r.n != 1)
        fail_msg("apply %s: got calls=%d status=%d n=%zu, want 1 OK 1", u.key, r.calls, r.status,
                 r.n);
    return r.scores[0];
}

static size_t keys_held(struct fixture *f)
{
    size_t keys;
    store_memory_stats(f->st, &keys, NULL);
    return keys;
}

/* sweep_round - reads of a missing key (they create nothing) until the
 * sweep, 8 buckets a read then, has gone round the whole array. */
static void sweep_round(struct fixture *f, struct decay d)
{
    size_t reads = store_memory_buckets(f->st) / 8 + 1;
    for (size_t i = 0; i < reads; i++)
        apply_one(f, upd("sweep", d.kind, d.param, 0));
}

static void test_store_memory_decay_matches_decay_apply(void **state)
{
    static const struct {
        const char *label;
        enum decay_kind kind;
        double param;
    } models[] = {
        {"half-life 10m", DECAY_HALF_LIFE, 600},
        {"half-life 90s", DECAY_HALF_LIFE, 90},
        {"leak 100/h", DECAY_LEAK, 100.0 / 3600},
        {"leak 2/s", DECAY_LEAK, 2},
    };
    static const double steps[][2] = {/* seconds later, points */
                                      {0, 5},   {0.5, 1},  {0.125, 1}, {30, 2.5}, {600, 0},
                                      {1, -1},  {3.25, 7}, {0, 0},     {90, 1},   {1e-3, 1}};
    struct fixture f;

    (void)state;
    fixture_open(&f, 0);
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++) {
        struct decay d = {models[m].kind, models[m].param};
        double want = 0, stored = 0, t_stored = 0, expires = 0;
        bool exists = false;
        for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
            fake_now += steps[s][0];
            double got = apply_one(&f, upd(models[m].label, d.kind, d.param, steps[s][1]));
            /* A key lives decay_ttl, at least a second (a negative score
             * has a TTL of 0). */
            if (exists && expires <= fake_now)
                exists = false;
            if (exists)
                want = decay_apply(&d, stored, fake_now - t_stored, steps[s][1]);
            else
                want = steps[s][1] != 0 ? decay_apply(&d, 0, 0, steps[s][1]) : 0;
            /* Mirror the store: a read leaves the stored pair alone. */
            if (steps[s][1] != 0) {
                stored = want;
                t_stored = fake_now;
                expires = fake_now + fmax(decay_ttl(&d, want), 1);
                exists = true;
            } else if (exists && !(want > DECAY_FLOOR)) {
                exists = false;
            }
            if (got != want)
                fail_msg("%s step %zu: got %.17g, want %.17g", models[m].label, s, got, want);
        }
    }
    fixture_close(&f);
}

static void test_store_memory_read_does_not_create(void **state)
{
    struct fixture f;

    (void)state;
    fixture_open(&f, 0);
    double got = apply_one(&f, upd("ip:192.0.2.7", DECAY_HALF_LIFE, 600, 0));
    assert_true(got == 0);
    assert_int_equal(keys_held(&f), 0);
    got = apply_one(&f, upd("ip:192.0.2.7", DECAY_HALF_LIFE, 600, 3));
    assert_true(got == 3);
    assert_int_equal(keys_held(&f), 1);
    /* A read of an existing key keeps it and returns the decayed score. */
    fake_now += 600;
    got = apply_one(&f, upd("ip:192.0.2.7", DECAY_HALF_LIFE, 600, 0));
    assert_true(got == 1.5);
    assert_int_equal(keys_held(&f), 1);
    fixture_close(&f);
}

static void test_store_memory_read_drops_decayed_key(void **state)
{
    struct fixture f;

    (void)state;
    fixture_open(&f, 0);
    apply_one(&f, upd("u:a", DECAY_LEAK, 1, 10));
    /* Ten seconds leak it all; the key outlives that by less than its
     * TTL rounding, so a read still finds it and drops it. */
    fake_now += 9.9995;
    double got = apply_one(&f, upd("u:a", DECAY_LEAK, 1, 0));
    if (!(got <= DECAY_FLOOR))
        fail_msg("got %.17g, want at most the floor", got);
    assert_int_equal(keys_held(&f), 0);
    fixture_close(&f);
}

static void test_store_memory_expiry_frees_keys(void **state)
{
    struct fixture f;
    struct decay hl = {DECAY_HALF_LIFE, 60};
    char key[32];

    (void)state;
    fixture_open(&f, 8);
    for (int i = 0; i < 6; i++) {
        snprintf(key, sizeof key, "k%d", i);
        apply_one(&f, upd(key, hl.kind, hl.param, 1 + i));
    }
    assert_int_equal(keys_held(&f), 6);
    /* k0 (1 point) lives decay_ttl(1) seconds, k5 (6 points) longest. */
    double ttl0 = decay_ttl(&hl, 1), ttl5 = decay_ttl(&hl, 6);
    fake_now += ttl0 - 0.5;
    sweep_round(&f, hl);
    assert_int_equal(keys_held(&f), 6);
    fake_now += 1;
    sweep_round(&f, hl);
    assert_int_equal(keys_held(&f), 5);
    fake_now += ttl5 - ttl0;
    sweep_round(&f, hl);
    assert_int_equal(keys_held(&f), 0);
    /* An expired key reads as missing, even before a sweep reached it. */
    apply_one(&f, upd("again", hl.kind, hl.param, 2));
    fake_now += decay_ttl(&hl, 2) + 1;
    assert_true(apply_one(&f, upd("again", hl.kind, hl.param, 0)) == 0);
    assert_int_equal(keys_held(&f), 0);
    fixture_close(&f);
}

/* The sweep skips a chain whose first expiry is still ahead; a key that
 * joins such a chain with an earlier expiry must bring it forward, or it
 * would outlive its TTL in memory until the chain's old second came. */
static void test_store_memory_sweep_sees_later_keys(void **state)
{
    struct fixture f;
    struct decay hl = {DECAY_HALF_LIFE, 60};
    char key[32];

    (void)state;
    fixture_open(&f, 32);
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof key, "long%d", i);
        apply_one(&f, upd(key, hl.kind, hl.param, 1e6));
    }
    fake_now += 1;
    sweep_round(&f, hl); /* every chain swept: due seconds set */
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof key, "short%d", i);
        apply_one(&f, upd(key, hl.kind, hl.param, 1));
    }
    assert_int_equal(keys_held(&f), 20);
    fake_now += decay_ttl(&hl, 1) + 1;
    sweep_round(&f, hl);
    assert_int_equal(keys_held(&f), 10);
    /* Negative points bring an expiry forward in a swept chain too. */
    double left = apply_one(&f, upd("long0", hl.kind, hl.param, 0));
    assert_true(apply_one(&f, upd("long0", hl.kind, hl.param, 1 - left)) == 1);
    fake_now += decay_ttl(&hl, 1) + 1;
    sweep_round(&f, hl);
    assert_int_equal(keys_held(&f), 9);
    fixture_close(&f);
}

/* The bucket array follows the keys: it doubles past one key a bucket,
 * every key reads right while the keys move (before, during and after),
 * and it halves back to its first size once most of them expired. */
static void test_store_memory_array_follows_keys(void **state)
{
    struct fixture f;
    char key[32];

    (void)state;
    fixture_open(&f, 100000);
    assert_int_equal(store_memory_buckets(f.st), 1024);
    /* Leak 1 point a second: 10-16 points live seconds, 100,000 a day. */
#define POINTS_OF(i) ((i) < 4900 ? 10.0 + (i) % 7 : 100000.0 + (i) % 7)
    for (int i = 0; i < 5000; i++) {
        snprintf(key, sizeof key, "k%d", i);
        assert_true(apply_one(&f, upd(key, DECAY_LEAK, 1, POINTS_OF(i))) == POINTS_OF(i));
        int j = (int)(((unsigned)i * 7919u) % (unsigned)(i + 1));
        snprintf(key, sizeof key, "k%d", j);
        if (apply_one(&f, upd(key, DECAY_LEAK, 1, 0)) != POINTS_OF(j))
            fail_msg("k%d read wrong after %d keys (%zu buckets)", j, i + 1,
                     store_memory_buckets(f.st));
    }
    assert_int_equal(keys_held(&f), 5000);
    assert_int_equal(store_memory_buckets(f.st), 8192);
    for (int j = 0; j < 5000; j++) {
        snprintf(key, sizeof key, "k%d", j);
        assert_true(apply_one(&f, upd(key, DECAY_LEAK, 1, 0)) == POINTS_OF(j));
    }

    /* All but the last 100 expire; reads alone sweep them and shrink. */
    fake_now += 100;
    for (int i = 0; i < 20000 && store_memory_buckets(f.st) > 1024; i++) {
        int j = 4900 + i % 100;
        snprintf(key, sizeof key, "k%d", j);
        if (apply_one(&f, upd(key, DECAY_LEAK, 1, 0)) != POINTS_OF(j) - 100)
            fail_msg("k%d read wrong while shrinking (%zu buckets)", j,
                     store_memory_buckets(f.st));
    }
    assert_int_equal(store_memory_buckets(f.st), 1024);
    sweep_round(&f, (struct decay){DECAY_LEAK, 1}); /* the last resize step */
    assert_int_equal(keys_held(&f), 100);
    for (int j = 0; j < 5000; j++) {
        snprintf(key, sizeof key, "k%d", j);
        double want = j < 4900 ? 0 : POINTS_OF(j) - 100;
        assert_true(apply_one(&f, upd(key, DECAY_LEAK, 1, 0)) == want);
    }
#undef POINTS_OF
    fixture_close(&f);
}

/*
 * A random walk against a model, across growth and shrink: keys created,
 * raised, read and reset, with the clock moving so that they expire in
 * waves, in batches of up to eight keys an apply, and one in sixteen a
 * full batch of STORE_MAX_UPDATES (duplicates included).
 * Every score the store answers must be the model's, whatever is being
 * resized, swept or moved at the time; the array must have grown and
 * shrunk on the way.
 */
static void test_store_memory_matches_model_through_resizes(void **state)
{
    enum { NKEYS = 6000, STEPS = 40000 };
    struct fixture f;
    static double score[NKEYS], at[NKEYS], until[NKEYS]; /* until 0: absent */
    uint64_t rng = 0x2545f4914f6cdd1dULL;
    size_t most = 0, least_after_most = (size_t)-1;
    struct decay lk = {DECAY_LEAK, 0.1};

    (void)state;
    fixture_open(&f, 100000);
    for (int step = 0; step < STEPS; step++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        /* Waves: a burst of new keys, then quiet stretches in which they
         * expire and reads of a few keys let the array shrink. */
        bool burst = (step / 5000) % 2 == 0;
        int span = burst ? NKEYS : 50;
        if (rng % 50 == 0) {
            /* Up to a second in a burst, up to 300 s when quiet. */
            fake_now += (double)(rng % 1000) / (burst ? 1000.0 : 3.3);
            continue;
        }
        size_t n = (rng >> 4) % 16 == 0 ? STORE_MAX_UPDATES : 1 + (rng >> 8) % 8;
        char keys[STORE_MAX_UPDATES][32];
        struct store_update u[STORE_MAX_UPDATES];
        double want[STORE_MAX_UPDATES];
        uint64_t pick = rng;
        for (size_t i = 0; i < n; i++) {
            pick = pick * 6364136223846793005ULL + 1442695040888963407ULL; /* one draw a key */
            int k = (int)((pick >> 33) % (uint64_t)span);
            double points = (rng >> 40) % 3 == 0 ? 0 : (double)(1 + (pick >> 20) % 40);
            snprintf(keys[i], sizeof keys[i], "m:%d", k);
            u[i] = upd(keys[i], lk.kind, lk.param, points);
            /* The model, in the store's order and arithmetic. */
            bool live = until[k] > fake_now;
            double s0 = live ? decay_apply(&lk, score[k], fake_now - at[k], 0) : 0;
            if (points == 0) {
                want[i] = s0;
                if (live && decay_ttl(&lk, s0) == 0)
                    until[k] = 0;
                continue;
            }
            double s1 = live ? decay_apply(&lk, score[k], fake_now - at[k], points)
                             : decay_apply(&lk, 0, 0, points);
            double ttl = decay_ttl(&lk, s1);
            score[k] = s1;
            at[k] = fake_now;
            until[k] = fake_now + (ttl < 1 ? 1 : ttl);
            want[i] = s1;
        }
        struct result r = {0};
        store_apply(f.st, u, n, on_done, &r);
        uv_run(&f.loop, UV_RUN_DEFAULT);
        assert_int_equal(r.calls, 1);
        assert_int_equal(r.status, STORE_OK);
        for (size_t i = 0; i < n; i++)
            if (r.scores[i] != want[i])
                fail_msg("step %d, %s: store %.17g, model %.17g (%zu buckets)", step, keys[i],
                         r.scores[i], want[i], store_memory_buckets(f.st));
        size_t b = store_memory_buckets(f.st);
        if (b > most) {
            most = b;
            least_after_most = b;
        } else if (b < least_after_most) {
            least_after_most = b;
        }
    }
    if (!(most >= 8192 && least_after_most <= most / 4))
        fail_msg("the array went up to %zu buckets and back down to %zu: want growth and shrink",
                 most, least_after_most);
    fixture_close(&f);
}

/*
 * Full batches of new keys (a burst of new clients) while the array
 * grows: every key already made must read back, through peek and
 * through an update, after every apply. 64 new keys an apply put more
 * than 64 entries into the 32 buckets a resize step moves; a step that
 * stopped inside a chain left its moved entries where no lookup saw
 * them until the next apply: a peek read 0, and an update started the
 * counter over beside its old copy.
 */
static void test_store_memory_batches_of_new_keys_stay_visible(void **state)
{
    enum { NKEYS = 8192, BATCH = STORE_MAX_UPDATES };
    static char keys[NKEYS][16];
    struct fixture f;
    size_t grew = 0;

    (void)state;
    fixture_open(&f, 1 << 20);
    for (int made = 0; made < NKEYS;) {
        struct store_update u[BATCH];
        struct result r = {0};
        for (int i = 0; i < BATCH; i++, made++) {
            snprintf(keys[made], sizeof keys[made], "k%d", made);
            u[i] = upd(keys[made], DECAY_LEAK, 0.001, 1);
        }
        size_t before = store_memory_buckets(f.st);
        store_apply(f.st, u, BATCH, on_done, &r);
        uv_run(&f.loop, UV_RUN_DEFAULT);
        assert_int_equal(r.status, STORE_OK);
        if (store_memory_buckets(f.st) != before)
            grew++;
        for (int k = 0; k < made; k += BATCH) {
            struct result p = {0};
            for (int i = 0; i < BATCH; i++)
                u[i] = upd(keys[k + i], DECAY_LEAK, 0.001, 0);
            store_peek(f.st, u, BATCH, on_done, &p);
            uv_run(&f.loop, UV_RUN_DEFAULT);
            for (int i = 0; i < BATCH; i++)
                if (p.scores[i] != 1)
                    fail_msg("%s peeked %g after %d keys (%zu buckets), want 1", keys[k + i],
                             p.scores[i], made, store_memory_buckets(f.st));
        }
    }
    if (grew < 2 || store_memory_buckets(f.st) < 4096)
        fail_msg("the array grew %zu times, to %zu buckets: want at least twice", grew,
                 store_memory_buckets(f.st));
    /* A second point to every key, in full batches: each must see its first. */
    for (int k = 0; k < NKEYS; k += BATCH) {
        struct store_update u[BATCH];
        struct result r = {0};
        for (int i = 0; i < BATCH; i++)
            u[i] = upd(keys[k + i], DECAY_LEAK, 0.001, 1);
        store_apply(f.st, u, BATCH, on_done, &r);
        uv_run(&f.loop, UV_RUN_DEFAULT);
        for (int i = 0; i < BATCH; i++)
            if (r.scores[i] != 2)
                fail_msg("%s scored %g, want 2", keys[k + i], r.scores[i]);
    }
    assert_int_equal(keys_held(&f), NKEYS);
    fixture_close(&f);
}

/* Keys that come and go (1,000 a second, each living a second): the
 * sweep keeps pace with the new keys, so the array is sized for the keys
 * alive and expired keys waiting for the sweep stay under an eighth of
 * it, however many keys have been seen. */
static void test_store_memory_churn_stays_small(void **state)
{
    struct fixture f;

    (void)state;
    fixture_open(&f, 1000000);
    for (int i = 0; i < 40000; i += 4) {
        /* Four new keys an apply, as a request with four counters. */
        char keys[4][32];
        struct store_update u[4];
        struct result r = {0};
        for (int k = 0; k < 4; k++) {
            snprintf(keys[k], sizeof keys[k], "c%d", i + k);
            u[k] = upd(keys[k], DECAY_LEAK, 1, 1);
        }
        store_apply(f.st, u, 4, on_done, &r);
        uv_run(&f.loop, UV_RUN_DEFAULT);
        assert_int_equal(r.calls, 1);
        fake_now += 0.004;
        size_t held = keys_held(&f), buckets = store_memory_buckets(f.st);
        if (held > 1004 + buckets / 8 + 4 || buckets > 2048)
            fail_msg("after %d keys: %zu held in %zu buckets", i + 4, held, buckets);
    }
    fixture_close(&f);
}

/* With its own clock the store reads the event loop's time: on the
 * wall clock, and moving on from one loop turn to the next (a 40 ms
 * timer later, a leak of 1,000 points a second took 40 or more). */
struct clock_probe {
    struct store *st;           /* the store */
    struct result later;        /* the read from the timer */
};

static void on_clock_timer(uv_timer_t *t)
{
    struct clock_probe *p = t->data;
    struct store_update u = upd("leaky", DECAY_LEAK, 1000, 0);
    store_apply(p->st, &u, 1, on_done, &p->later);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_store_memory_real_clock_follows_loop(void **state)
{
    struct fixture f;
    struct clock_probe p = {0};
    struct result first = {0};
    uv_timer_t timer;

    (void)state;
    fixture_open(&f, 100);
    store_memory_clock = real_clock;
    p.st = f.st;
    struct store_update u = upd("leaky", DECAY_LEAK, 1000, 100);
    store_apply(f.st, &u, 1, on_done, &first);
    uv_timer_init(&f.loop, &timer);
    timer.data = &p;
    uv_timer_start(&timer, on_clock_timer, 40, 0);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    assert_int_equal(first.calls, 1);
    assert_int_equal(p.later.calls, 1);
    assert_true(first.scores[0] == 100);
    double wall = real_clock();
    if (!(fabs(first.now - wall) < 2))
        fail_msg("store clock %.3f, wall clock %.3f", first.now, wall);
    if (!(p.later.now - first.now >= 0.039))
        fail_msg("40 ms later the store clock moved %.4f s", p.later.now - first.now);
    if (!(p.later.scores[0] <= 61 && p.later.scores[0] >= 0))
        fail_msg("40 ms of a 1000/s leak left %.3f of 100", p.later.scores[0]);
    store_memory_clock = fake_clock;
    fixture_close(&f);
}

static void test_store_memory_cap_evicts(void **state)
{
    struct fixture f;
    unsigned long long evictions;
    size_t keys;
    char key[32];

    (void)state;
    fixture_open(&f, 4);
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof key, "k%d", i);
        apply_one(&f, upd(key, DECAY_LEAK, 1, 100 + i));
    }
    apply_one(&f, upd("k4", DECAY_LEAK, 1, 50));
    store_memory_stats(f.st, &keys, &evictions);
    assert_int_equal(keys, 4);
    assert_int_equal(evictions, 1);
    /* The newcomer is held. */
    fake_now += 1;
    assert_true(apply_one(&f, upd("k4", DECAY_LEAK, 1, 0)) == 49);

    /* Let all but the newest expire: making room then costs no
     * eviction. */
    apply_one(&f, upd("long", DECAY_LEAK, 1, 100000));
    fake_now += 1000;
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof key, "n%d", i);
        apply_one(&f, upd(key, DECAY_LEAK, 1, 10));
    }
    store_memory_stats(f.st, &keys, &evictions);
    assert_int_equal(keys, 4);
    assert_int_equal(evictions, 2);

    /* Many more keys than the cap: the count never passes it. */
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "m%d", i);
        struct store_update u = upd(key, DECAY_LEAK, 1, 5);
        struct result r = {0};
        store_apply(f.st, &u, 1, on_done, &r);
        uv_run(&f.loop, UV_RUN_DEFAULT);
        assert_int_equal(r.calls, 1);
        assert_true(keys_held(&f) <= 4);
    }
    store_memory_stats(f.st, &keys, &evictions);
    assert_int_equal(keys, 4);
    assert_int_equal(evictions, 2 + 1000);
    fixture_close(&f);
}

static void test_store_memory_callbacks_deferred(void **state)
{
    struct fixture f;
    struct store_update u[2];
    struct result r1 = {0}, r2 = {0};

    (void)state;
    fixture_open(&f, 0);
    u[0] = upd("a", DECAY_HALF_LIFE, 600, 1);
    u[1] = upd("b", DECAY_LEAK, 1, 2);
    store_apply(f.st, u, 2, on_done, &r1);
    store_apply(f.st, u, 2, on_done, &r2);
    assert_int_equal(r1.calls, 0);
    assert_int_equal(r2.calls, 0);
    assert_int_equal(uv_run(&f.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(r1.calls, 1);
    assert_int_equal(r2.calls, 1);
    assert_int_equal(r1.n, 2);
    assert_true(r1.scores[0] == 1 && r1.scores[1] == 2);
    assert_true(r2.scores[0] == 2 && r2.scores[1] == 4);
    assert_true(r1.now == fake_now);

    /* reset is deferred too. */
    const char *keys[] = {"a", "b"};
    const size_t lens[] = {1, 1};
    struct result rr = {0};
    store_reset(f.st, keys, lens, 2, on_reset, &rr);
    assert_int_equal(rr.calls, 0);
    assert_int_equal(keys_held(&f), 0);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    assert_int_equal(rr.calls, 1);
    assert_int_equal(rr.status, STORE_OK);
    store_reset(f.st, keys, lens, 2, NULL, NULL);
    fixture_close(&f);
}

/* A callback that applies again: answered on a later turn, not from
 * inside the callback's own apply. */
struct chain {
    struct store *st;           /* the store */
    int depth;                  /* applies still to start */
    int calls;                  /* callbacks seen */
    bool in_cb;                 /* inside on_chain */
};

static void on_chain(void *arg, int status, const double *scores, size_t n, double now)
{
    struct chain *c = arg;
    struct store_update u = upd("chain", DECAY_LEAK, 1, 1);

    (void)scores, (void)n, (void)now;
    assert_false(c->in_cb);
    assert_int_equal(status, STORE_OK);
    c->calls++;
    c->in_cb = true;
    if (c->depth-- > 0)
        store_apply(c->st, &u, 1, on_chain, c);
    c->in_cb = false;
}

static void test_store_memory_callback_applies_again(void **state)
{
    struct fixture f;
    struct chain c = {.depth = 5};
    struct store_update u = upd("chain", DECAY_LEAK, 1, 1);

    (void)state;
    c.st = fixture_open(&f, 0);
    store_apply(f.st, &u, 1, on_chain, &c);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    assert_int_equal(c.calls, 6);
    fixture_close(&f);
}

/* apply from a timer callback (before poll): the loop must not block in
 * poll waiting for an unrelated event before the check runs. */
struct from_timer {
    struct store *st;           /* the store */
    struct result r;            /* what the apply saw */
};

static void on_timer(uv_timer_t *t)
{
    struct from_timer *ft = t->data;
    struct store_update u = upd("t", DECAY_LEAK, 1, 1);
    store_apply(ft->st, &u, 1, on_done, &ft->r);
    uv_close((uv_handle_t *)t, NULL);
}

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
}

static void test_store_memory_apply_from_timer_does_not_block(void **state)
{
    struct fixture f;
    struct from_timer ft = {0};
    uv_timer_t timer, watchdog;

    (void)state;
    ft.st = fixture_open(&f, 0);
    uv_timer_init(&f.loop, &timer);
    timer.data = &ft;
    uv_timer_start(&timer, on_timer, 1, 0);
    /* An unreferenced timer far away: without the idle handle, poll
     * would sleep until it fires. */
    uv_timer_init(&f.loop, &watchdog);
    uv_timer_start(&watchdog, on_watchdog, 3000, 0);
    uv_unref((uv_handle_t *)&watchdog);
    uint64_t t0 = uv_hrtime();
    uv_run(&f.loop, UV_RUN_DEFAULT);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(ft.r.calls, 1);
    if (ms > 1000)
        fail_msg("apply from a timer took %llu ms, want well under 1000",
                 (unsigned long long)ms);
    uv_close((uv_handle_t *)&watchdog, NULL);
    fixture_close(&f);
}

static void test_store_memory_close_with_pending(void **state)
{
    struct fixture f;
    struct result r[3] = {{0}};
    struct result rr = {0};
    struct store_update u = upd("x", DECAY_HALF_LIFE, 600, 1);
    const char *key = "x";
    size_t len = 1;

    (void)state;
    fixture_open(&f, 0);
    for (int i = 0; i < 3; i++)
        store_apply(f.st, &u, 1, on_done, &r[i]);
    store_reset(f.st, &key, &len, 1, on_reset, &rr);
    store_close(f.st);
    for (int i = 0; i < 3; i++)
        assert_int_equal(r[i].calls, 0);
    assert_int_equal(rr.calls, 0);
    assert_int_equal(uv_run(&f.loop, UV_RUN_DEFAULT), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, STORE_TEMPFAIL);
    }
    assert_int_equal(rr.calls, 1);
    assert_int_equal(rr.status, STORE_TEMPFAIL);
    assert_int_equal(uv_loop_close(&f.loop), 0);
}

/* Closing from inside a callback: the rest fail, deferred, once. */
struct closer {
    struct store *st;           /* the store */
    int calls;                  /* callbacks seen */
    int fails;                  /* of them TEMPFAIL */
};

static void on_close_in_cb(void *arg, int status, const double *scores, size_t n, double now)
{
    struct closer *c = arg;

    (void)scores, (void)n, (void)now;
    c->calls++;
    if (status == STORE_TEMPFAIL)
        c->fails++;
    if (c->calls == 1)
        store_close(c->st);
}

static void test_store_memory_close_from_callback(void **state)
{
    struct fixture f;
    struct closer c = {0};
    struct store_update u = upd("x", DECAY_HALF_LIFE, 600, 1);

    (void)state;
    c.st = fixture_open(&f, 0);
    for (int i = 0; i < 4; i++)
        store_apply(f.st, &u, 1, on_close_in_cb, &c);
    assert_int_equal(uv_run(&f.loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(c.calls, 4);
    assert_int_equal(c.fails, 3);
    assert_int_equal(uv_loop_close(&f.loop), 0);
}

static void test_store_memory_same_key_twice(void **state)
{
    struct fixture f;
    struct store_update u[2];
    struct result r = {0};

    (void)state;
    fixture_open(&f, 0);
    u[0] = upd("dup", DECAY_LEAK, 1, 2);
    u[1] = upd("dup", DECAY_LEAK, 1, 3);
    store_apply(f.st, u, 2, on_done, &r);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    assert_int_equal(r.calls, 1);
    assert_true(r.scores[0] == 2 && r.scores[1] == 5);
    assert_int_equal(keys_held(&f), 1);
    fixture_close(&f);
}

static void test_store_memory_too_many_updates(void **state)
{
    struct fixture f;
    struct store_update u[STORE_MAX_UPDATES + 1];
    struct result r = {0};

    (void)state;
    fixture_open(&f, 0);
    for (size_t i = 0; i < STORE_MAX_UPDATES + 1; i++)
        u[i] = upd("k", DECAY_LEAK, 1, 1);
    store_apply(f.st, u, STORE_MAX_UPDATES + 1, on_done, &r);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, STORE_TEMPFAIL);
    assert_int_equal(keys_held(&f), 0);
    fixture_close(&f);
}

static double parse_double(const char *s, const char *what, unsigned long lineno)
{
    char *end;
    double v = strtod(s, &end);

    if (end == s || *end != '\0')
        fail_msg("decay.tsv:%lu: bad %s \"%s\"", lineno, what, s);
    return v;
}

static bool close_enough(double got, double want)
{
    return got == want || fabs(got - want) <= VECTOR_REL_TOL * fabs(want);
}

/*
 * Each row: seed score_before at T0 (an apply of that many points on a
 * fresh key), apply points at T0 + dt, compare the score; then check the
 * key lives as long as want_ttl says (at least a second) and no longer.
 * A negative seed cannot outlive its one second (its TTL is 0), so for
 * rows that start below zero and wait a second or more the store must
 * read the key as missing: the score is just the points.
 */
static void test_store_memory_vectors(void **state)
{
    const char *srcdir = getenv("SMTPGUARD_SRCDIR");
    char path[4096], line[1024];
    unsigned long lineno = 0, rows = 0;
    FILE *fp;

    (void)state;
    snprintf(path, sizeof path, "%s/test/vectors/decay.tsv", srcdir ? srcdir : ".");
    fp = fopen(path, "r");
    if (!fp)
        fail_msg("%s: %s (set SMTPGUARD_SRCDIR to the source tree)", path, strerror(errno));
    while (fgets(line, sizeof line, fp)) {
        char *field[9], *save = NULL;
        size_t nf = 0;
        struct fixture f;

        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '#' || line[0] == '\0')
            continue;
        for (char *tok = strtok_r(line, "\t", &save); tok && nf < 9; tok = strtok_r(NULL, "\t", &save))
            field[nf++] = tok;
        if (nf != 8)
            fail_msg("decay.tsv:%lu: got %zu fields, want 8", lineno, nf);
        enum decay_kind kind;
        if (strcmp(field[1], "half_life") == 0)
            kind = DECAY_HALF_LIFE;
        else if (strcmp(field[1], "leak") == 0)
            kind = DECAY_LEAK;
        else {
            fail_msg("decay.tsv:%lu: bad kind \"%s\"", lineno, field[1]);
            return;
        }
        double param = parse_double(field[2], "param", lineno);
        double before = parse_double(field[3], "score_before", lineno);
        double dt = parse_double(field[4], "dt_seconds", lineno);
        double points = parse_double(field[5], "points", lineno);
        double want = parse_double(field[6], "want_score", lineno);
        double want_ttl = parse_double(field[7], "want_ttl", lineno);

        fixture_open(&f, 8);
        double t0 = fake_now;
        if (before != 0)
            apply_one(&f, upd(field[0], kind, param, before));
        if (before < 0 && dt >= 1 && kind == DECAY_LEAK) /* clamped to 0 */
            want = points;
        fake_now = t0 + dt;
        double got = apply_one(&f, upd(field[0], kind, param, points));
        if (!close_enough(got, want))
            fail_msg("%s (line %lu): score got %.17g, want %.17g", field[0], lineno, got, want);
        if (points != 0) {
            /* The write happened at the clock of the second apply (for
             * dt < 0, the earlier one). */
            double t = fake_now, life = want_ttl < 1 ? 1 : want_ttl;
            assert_int_equal(keys_held(&f), 1);
            struct decay d = {kind, param};
            fake_now = t + life - 0.25;
            sweep_round(&f, d);
            if (keys_held(&f) != 1)
                fail_msg("%s (line %lu): key gone before its ttl %.17g", field[0], lineno, life);
            fake_now = t + life + 0.25;
            sweep_round(&f, d);
            if (keys_held(&f) != 0)
                fail_msg("%s (line %lu): key still there after its ttl %.17g", field[0], lineno,
                         life);
        } else if (want_ttl == 0) {
            assert_int_equal(keys_held(&f), 0);
        }
        fixture_close(&f);
        rows++;
    }
    fclose(fp);
    if (rows < 20)
        fail_msg("decay.tsv: got %lu rows, want at least 20", rows);
}

/* ---- peek and the top set ---- */

static struct store *fixture_open_top(struct fixture *f, size_t max_keys, double floor,
                                      unsigned size)
{
    struct store_config cfg = {.backend = STORE_BACKEND_MEMORY, .memory_max_keys = max_keys,
                               .top_floor = floor, .top_size = size};
    char err[256];

    store_memory_clock = fake_clock;
    fake_now = 1700000000.0;
    assert_int_equal(uv_loop_init(&f->loop), 0);
    assert_int_equal(store_open(&f->st, &cfg, &f->loop, err, sizeof err), 0);
    return f->st;
}

struct top_result {
    int calls;                  /* times the callback ran */
    int status;                 /* last status */
    size_t n;                   /* entries */
    char keys[16][32];          /* copied out */
    double scores[16];          /* points */
};

static void on_top(void *arg, int status, const struct store_top_entry *e, size_t n)
{
    struct top_result *r = arg;
    r->calls++;
    r->status = status;
    r->n = n;
    for (size_t i = 0; i < n && i < 16; i++) {
        snprintf(r->keys[i], sizeof r->keys[i], "%.*s", (int)e[i].key_len, e[i].key);
        r->scores[i] = e[i].score;
    }
}

static struct top_result top_of(struct fixture *f, const char *counter, const struct decay *d,
                                size_t n)
{
    struct top_result r = {0};
    store_top(f->st, counter, d, n, on_top, &r);
    assert_int_equal(r.calls, 0); /* deferred */
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, STORE_OK);
    return r;
}

static void test_store_memory_peek_writes_nothing(void **state)
{
    struct fixture f;
    struct decay hl = {DECAY_HALF_LIFE, 600};
    struct result r = {0};

    (void)state;
    fixture_open(&f, 0);
    apply_one(&f, upd("ip:a", hl.kind, hl.param, 4));
    fake_now += 600;
    struct store_update u[2] = {upd("ip:a", hl.kind, hl.param, 9), upd("ip:none", hl.kind, hl.param, 9)};
    store_peek(f.st, u, 2, on_done, &r);
    assert_int_equal(r.calls, 0);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, STORE_OK);
    /* One half-life later: 2, and the points asked for were not added. */
    if (r.scores[0] != 2 || r.scores[1] != 0)
        fail_msg("peek got %g %g, want 2 0", r.scores[0], r.scores[1]);
    assert_int_equal(keys_held(&f), 1);
    /* The stored pair is unchanged: a real update decays from t0. */
    fake_now += 600;
    double got = apply_one(&f, upd("ip:a", hl.kind, hl.param, 1));
    if (got != 2)
        fail_msg("after peek, apply got %g, want 2 (1 decayed from 4 over two half-lives, + 1)", got);
    fixture_close(&f);
}

static void test_store_memory_top_set(void **state)
{
    struct fixture f;
    struct decay hl = {DECAY_HALF_LIFE, 600};

    (void)state;
    fixture_open_top(&f, 0, 3, 2);
    apply_one(&f, upd("ip:a", hl.kind, hl.param, 5));
    apply_one(&f, upd("ip:b", hl.kind, hl.param, 4));
    apply_one(&f, upd("ip:c", hl.kind, hl.param, 2)); /* below the floor */
    apply_one(&f, upd("ip:d", hl.kind, hl.param, 6));
    apply_one(&f, upd("ipx:e", hl.kind, hl.param, 50)); /* another counter, same prefix letters */
    struct top_result t = top_of(&f, "ip", &hl, 10);
    assert_int_equal(t.n, 3);
    assert_string_equal(t.keys[0], "ip:d");
    assert_string_equal(t.keys[1], "ip:a");
    assert_string_equal(t.keys[2], "ip:b");
    assert_true(t.scores[0] == 6 && t.scores[1] == 5 && t.scores[2] == 4);
    t = top_of(&f, "ip", &hl, 1);
    assert_int_equal(t.n, 1);
    assert_string_equal(t.keys[0], "ip:d");
    /* c crosses the floor later and enters. */
    apply_one(&f, upd("ip:c", hl.kind, hl.param, 5));
    t = top_of(&f, "ip", &hl, 10);
    assert_int_equal(t.n, 4);
    assert_string_equal(t.keys[0], "ip:c");
    /* Reset keys leave the set; scores decay to now, and those now
     * under the floor (a: 2.5, b: 2) are not listed. */
    const char *keys[] = {"ip:c"};
    const size_t lens[] = {4};
    store_reset(f.st, keys, lens, 1, NULL, NULL);
    fake_now += 600;
    t = top_of(&f, "ip", &hl, 10);
    assert_int_equal(t.n, 1);
    assert_string_equal(t.keys[0], "ip:d");
    if (t.scores[0] != 3)
        fail_msg("decayed top score got %g, want 3", t.scores[0]);
    fixture_close(&f);
}

static void test_store_memory_top_pool_bounded(void **state)
{
    struct fixture f;
    struct decay hl = {DECAY_HALF_LIFE, 600};
    char key[32];

    (void)state;
    /* top_size 1: a pool of STORE_TOP_POOL_FACTOR keys for all counters. */
    fixture_open_top(&f, 0, 1, 1);
    for (int i = 1; i <= 3 * STORE_TOP_POOL_FACTOR; i++) {
        snprintf(key, sizeof key, "ip:%03d", i);
        apply_one(&f, upd(key, hl.kind, hl.param, i));
    }
    struct top_result t = top_of(&f, "ip", &hl, 16);
    assert_int_equal(t.n, STORE_TOP_POOL_FACTOR);
    /* The lowest were pushed out: the highest remain, in order. */
    snprintf(key, sizeof key, "ip:%03d", 3 * STORE_TOP_POOL_FACTOR);
    assert_string_equal(t.keys[0], key);
    snprintf(key, sizeof key, "ip:%03d", 2 * STORE_TOP_POOL_FACTOR + 1);
    assert_string_equal(t.keys[STORE_TOP_POOL_FACTOR - 1], key);
    /* Expired members are not listed, and their memory goes with them. */
    fake_now += 600 * 40;
    t = top_of(&f, "ip", &hl, 16);
    assert_int_equal(t.n, 0);
    fixture_close(&f);
}

/* The pool against a plain model of its rule (a member stays; a newcomer
 * at or above the floor gets in, in place of the lowest member when the
 * pool is full and it beats it): random updates, negative points that
 * lower members, resets that take them out. The pool is a heap; the model
 * scans, so both must name the same members whatever the order of events. */
static void test_store_memory_top_pool_matches_model(void **state)
{
    enum { NKEYS = 200, CAP = STORE_TOP_POOL_FACTOR, STEPS = 4000 };
    struct fixture f;
    struct decay hl = {DECAY_HALF_LIFE, 600};
    double score[NKEYS] = {0};
    bool member[NKEYS] = {false};
    size_t n_members = 0;
    uint64_t rng = 0x9e3779b97f4a7c15ULL;
    char key[32];

    (void)state;
    fixture_open_top(&f, 0, 10, 1); /* floor 10, a pool of CAP */
    for (int step = 1; step <= STEPS; step++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        int k = (int)(rng % NKEYS);
        snprintf(key, sizeof key, "ip:%d", k);
        if (rng % 97 == 0) {
            const char *keys[] = {key};
            const size_t lens[] = {strlen(key)};
            store_reset(f.st, keys, lens, 1, NULL, NULL);
            score[k] = 0;
            if (member[k])
                n_members--;
            member[k] = false;
            continue;
        }
        /* Distinct fractions, so no two scores tie; some are negative. */
        double points = (double)(rng % 3500) / 100.0 - 5.0 + (double)k / 1024.0;
        apply_one(&f, upd(key, hl.kind, hl.param, points));
        score[k] += points;
        if (!member[k] && score[k] >= 10) {
            int low = -1;
            if (n_members == CAP)
                for (int i = 0; i < NKEYS; i++)
                    if (member[i] && (low < 0 || score[i] < score[low]))
                        low = i;
            if (low < 0 || score[low] < score[k]) {
                if (low >= 0) {
                    member[low] = false;
                    n_members--;
                }
                member[k] = true;
                n_members++;
            }
        }
        if (step % 250)
            continue;
        /* Listed: the members at or above the floor, highest first. */
        struct top_result t = top_of(&f, "ip", &hl, CAP);
        size_t want = 0;
        for (int i = 0; i < NKEYS; i++)
            if (member[i] && score[i] >= 10)
                want++;
        if (t.n != want)
            fail_msg("step %d: %zu listed, the model has %zu", step, t.n, want);
        for (size_t i = 0; i < t.n; i++) {
            int got = atoi(t.keys[i] + 3);
            if (!member[got])
                fail_msg("step %d: %s listed, not a member in the model", step, t.keys[i]);
            if (i > 0 && t.scores[i] > t.scores[i - 1])
                fail_msg("step %d: not sorted at %zu", step, i);
        }
    }
    fixture_close(&f);
}

static void test_store_memory_top_off(void **state)
{
    struct fixture f;
    struct decay hl = {DECAY_HALF_LIFE, 600};

    (void)state;
    fixture_open_top(&f, 0, 0, 10); /* floor 0: no top set */
    apply_one(&f, upd("ip:a", hl.kind, hl.param, 50));
    struct top_result t = top_of(&f, "ip", &hl, 10);
    assert_int_equal(t.n, 0);
    fixture_close(&f);
}

int main(void)
{
    /* The refusals tested here warn; keep the output to test results. */
    log_threshold = LOG_LEVEL_ERROR;
    real_clock = store_memory_clock;

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_memory_decay_matches_decay_apply),
        cmocka_unit_test(test_store_memory_read_does_not_create),
        cmocka_unit_test(test_store_memory_read_drops_decayed_key),
        cmocka_unit_test(test_store_memory_expiry_frees_keys),
        cmocka_unit_test(test_store_memory_sweep_sees_later_keys),
        cmocka_unit_test(test_store_memory_array_follows_keys),
        cmocka_unit_test(test_store_memory_churn_stays_small),
        cmocka_unit_test(test_store_memory_matches_model_through_resizes),
        cmocka_unit_test(test_store_memory_batches_of_new_keys_stay_visible),
        cmocka_unit_test(test_store_memory_real_clock_follows_loop),
        cmocka_unit_test(test_store_memory_cap_evicts),
        cmocka_unit_test(test_store_memory_callbacks_deferred),
        cmocka_unit_test(test_store_memory_callback_applies_again),
        cmocka_unit_test(test_store_memory_apply_from_timer_does_not_block),
        cmocka_unit_test(test_store_memory_close_with_pending),
        cmocka_unit_test(test_store_memory_close_from_callback),
        cmocka_unit_test(test_store_memory_same_key_twice),
        cmocka_unit_test(test_store_memory_too_many_updates),
        cmocka_unit_test(test_store_memory_vectors),
        cmocka_unit_test(test_store_memory_peek_writes_nothing),
        cmocka_unit_test(test_store_memory_top_set),
        cmocka_unit_test(test_store_memory_top_pool_bounded),
        cmocka_unit_test(test_store_memory_top_pool_matches_model),
        cmocka_unit_test(test_store_memory_top_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
