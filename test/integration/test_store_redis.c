/*
 * test_store_redis - the redis backend and store_redis.lua against a
 * REAL redis-server, started by scripts/with-redis, which exports
 *   SMTPGUARD_TEST_REDIS       "127.0.0.1:PORT"
 *   SMTPGUARD_TEST_REDIS_UNIX  "unix:/path" (optional)
 *   SMTPGUARD_TEST_REDIS_PID   the server's PID, for the SIGSTOP test
 *   SMTPGUARD_TEST_REDIS6      "[::1]:PORT" (optional)
 * and test/vectors/decay.tsv under $SMTPGUARD_SRCDIR (default ".").
 *
 * The script's arithmetic is checked row by row with an injected "now"
 * over a synchronous hiredis connection (same embedded script text as the
 * daemon); everything else goes through the store on a real uv loop, and
 * every test ends with uv_loop_close() == 0.
 *
 * Build and run: see scripts/with-redis.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/types.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>
#include <uv.h>

#include "counter_wire.h"
#include "decay.h"
#include "log.h"
#include "metrics.h"
#include "respconn.h"
#include "sha1.h"
#include "store.h"
#include "store_redis_lua.h"

#define VECTOR_REL_TOL 1e-9
#define TEST_TIMEOUT_MS 300     /* store timeout used by most tests */

static char redis_host[256];
static int redis_port;

/* --- helpers ---------------------------------------------------------- */

static redisContext *sync_connect(void)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout(redis_host, redis_port, tv);

    if (!c || c->err)
        fail_msg("connect %s:%d: %s", redis_host, redis_port, c ? c->errstr : "out of memory");
    return c;
}

/* sync_cmd - run a command; fails the test on an error reply. */
static redisReply *sync_cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!r)
        fail_msg("redis: %s", c->errstr);
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("redis: %s", r->str);
    return r;
}

static long long sync_int(redisContext *c, const char *fmt, const char *arg)
{
    redisReply *r = sync_cmd(c, fmt, arg);
    long long v = r->integer;
    if (r->type != REDIS_REPLY_INTEGER)
        fail_msg("redis %s: got reply type %d, want integer", fmt, r->type);
    freeReplyObject(r);
    return v;
}

struct result {
    int calls;                  /* times the callback ran */
    int status;                 /* last status */
    size_t n;                   /* scores */
    double scores[STORE_MAX_UPDATES]; /* copied out */
    double now;                 /* store clock */
    uint64_t script_calls;      /* metrics_own->script_calls when it ran */
};

static void on_done(void *arg, int status, const double *scores, size_t n, double now)
{
    struct result *r = arg;
    r->calls++;
    r->script_calls = metrics_own->script_calls;
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
    uv_timer_t tick;            /* wakes the loop while we wait */
};

static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static void fixture_init(struct fixture *f)
{
    assert_int_equal(uv_loop_init(&f->loop), 0);
    uv_timer_init(&f->loop, &f->tick);
}

static void fixture_fini(struct fixture *f)
{
    uv_close((uv_handle_t *)&f->tick, NULL);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

static struct store *open_store(struct fixture *f, const char *address, const char *password,
                                const char *prefix, unsigned timeout_ms)
{
    struct store_config cfg = {
        .backend = STORE_BACKEND_REDIS,
        .redis_address = (char *)address,
        .redis_password = (char *)password,
        .prefix = (char *)prefix,
        .timeout_ms = timeout_ms,
    };
    struct store *st;
    char err[256];

    if (store_open(&st, &cfg, &f->loop, err, sizeof err) != 0)
        fail_msg("store_open %s: %s", address, err);
    assert_string_equal(store_name(st), "redis");
    return st;
}

/* run_until - run the loop until *flag or ms pass; returns *flag. */
static bool run_until(struct fixture *f, const int *flag, bool (*up)(const struct store *),
                      const struct store *st, unsigned ms)
{
    uint64_t end = uv_hrtime() + (uint64_t)ms * 1000000;

    uv_timer_start(&f->tick, on_tick, 5, 5);
    while (uv_hrtime() < end) {
        if (flag && *flag)
            break;
        if (up && up(st))
            break;
        uv_run(&f->loop, UV_RUN_ONCE);
    }
    uv_timer_stop(&f->tick);
    return flag ? *flag != 0 : up(st);
}

static void wait_up(struct fixture *f, struct store *st)
{
    if (!run_until(f, NULL, store_is_up, st, 3000))
        fail_msg("store did not come up within 3 s");
}

static struct store_update upd(const char *key, enum decay_kind kind, double param, double points)
{
    struct store_update u = {.key = key, .key_len = strlen(key), .points = points};
    u.decay.kind = kind;
    u.decay.param = param;
    return u;
}

/* apply_wait - apply, check the callback is deferred, wait for it. */
static void apply_wait(struct fixture *f, struct store *st, const struct store_update *u, size_t n,
                       struct result *r)
{
    memset(r, 0, sizeof *r);
    store_apply(st, u, n, on_done, r);
    if (r->calls != 0)
        fail_msg("callback ran inside store_apply");
    if (!run_until(f, &r->calls, NULL, NULL, 5000))
        fail_msg("no callback within 5 s");
    assert_int_equal(r->calls, 1);
}

static void close_store(struct fixture *f, struct store *st)
{
    store_close(st);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    (void)f;
}

static bool close_enough(double got, double want, double tol)
{
    return got == want || fabs(got - want) <= tol * fabs(want);
}

/* --- the script against the vectors ----------------------------------- */

static double parse_double(const char *s, const char *what, unsigned long lineno)
{
    char *end;
    double v = strtod(s, &end);

    if (end == s || *end != '\0')
        fail_msg("decay.tsv:%lu: bad %s \"%s\"", lineno, what, s);
    return v;
}

/* stored_value - the score, time and expiry bound key holds
 * (counter_wire.h), or a failure naming what it holds instead. */
static void stored_value(redisContext *c, const char *key, double *score, double *at,
                         double *expires)
{
    redisReply *v = sync_cmd(c, "GET %s", key);
    if (v->type != REDIS_REPLY_STRING)
        fail_msg("%s: no value (reply type %d)", key, v->type);
    if (v->len != COUNTER_WIRE_VALUE_LEN || !counter_wire_value(v->str, v->len, score, at, expires))
        fail_msg("%s: %zu bytes starting 0x%02x are not a counter value of the current form",
                 key, v->len, v->len ? (unsigned char)v->str[0] : 0);
    freeReplyObject(v);
}

/* The expiry the script gives a counter key, store_redis.lua's rule: the
 * seconds its score needs (decay_ttl, at least 1), times EXPIRY_SLACK
 * when the key was there already. */
#define EXPIRY_SLACK 1.125
static long long want_expiry_ms(double ttl, bool existed)
{
    double secs = ttl < 1 ? 1 : ttl;
    return (long long)(existed ? ceil(secs * EXPIRY_SLACK) : secs) * 1000;
}

/* check_pttl - key's PTTL is want_ms, less the few ms since it was set. */
static void check_pttl(redisContext *c, const char *key, long long want_ms, const char *what)
{
    long long pttl = sync_int(c, "PTTL %s", key);
    if (pttl > want_ms || pttl < want_ms - 1000)
        fail_msg("%s: PTTL of %s got %lld ms, want %lld ms (just under)", what, key, pttl,
                 want_ms);
}

/* reply_num - number i of a script reply: one string of 8-byte numbers. */
static double reply_num(const redisReply *r, size_t i)
{
    if (r->type != REDIS_REPLY_STRING || r->len % COUNTER_WIRE_DOUBLE_LEN != 0 ||
        i >= r->len / COUNTER_WIRE_DOUBLE_LEN)
        fail_msg("script reply has no 8-byte number %zu", i);
    return counter_wire_double(r->str + i * COUNTER_WIRE_DOUBLE_LEN);
}

/* script_call - EVALSHA (EVAL on NOSCRIPT) of one key with injected now. */
static redisReply *script_call(redisContext *c, const char *sha, const char *key, double now,
                               const char *kind, double param, double points)
{
    char nows[40], update[90];
    const char *argv[6] = {"EVALSHA", sha, "1", key, nows, update};
    size_t len[6];

    snprintf(nows, sizeof nows, "%.17g", now);
    snprintf(update, sizeof update, "%s %.17g %.17g", kind, param, points);
    for (int i = 0; i < 6; i++)
        len[i] = strlen(argv[i]);
    redisReply *r = redisCommandArgv(c, 6, argv, len);
    if (r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
        freeReplyObject(r);
        argv[0] = "EVAL";
        argv[1] = store_redis_lua;
        len[0] = 4;
        len[1] = strlen(store_redis_lua);
        r = redisCommandArgv(c, 6, argv, len);
    }
    if (!r)
        fail_msg("redis: %s", c->errstr);
    if (r->type == REDIS_REPLY_ERROR)
        fail_msg("script: %s", r->str);
    return r;
}

static void test_store_redis_script_vectors(void **state)
{
    const char *srcdir = getenv("SMTPGUARD_SRCDIR");
    char path[4096], line[1024], sha[SHA1_HEX_LEN + 1];
    unsigned long lineno = 0, rows = 0;
    redisContext *c = sync_connect();
    FILE *fp;

    (void)state;
    sha1_hex(store_redis_lua, strlen(store_redis_lua), sha);
    snprintf(path, sizeof path, "%s/test/vectors/decay.tsv", srcdir ? srcdir : ".");
    fp = fopen(path, "r");
    if (!fp)
        fail_msg("%s: %s (set SMTPGUARD_SRCDIR to the source tree)", path, strerror(errno));
    while (fgets(line, sizeof line, fp)) {
        char *field[9], *save = NULL, key[200];
        size_t nf = 0;

        lineno++;
        line[strcspn(line, "\r\n")] = '\0';
        if (line[0] == '#' || line[0] == '\0')
            continue;
        for (char *tok = strtok_r(line, "\t", &save); tok && nf < 9;
             tok = strtok_r(NULL, "\t", &save))
            field[nf++] = tok;
        if (nf != 8)
            fail_msg("decay.tsv:%lu: got %zu fields, want 8", lineno, nf);
        const char *kind = strcmp(field[1], "half_life") == 0 ? "h"
                           : strcmp(field[1], "leak") == 0    ? "l"
                                                              : NULL;
        if (!kind)
            fail_msg("decay.tsv:%lu: bad kind \"%s\"", lineno, field[1]);
        double param = parse_double(field[2], "param", lineno);
        double before = parse_double(field[3], "score_before", lineno);
        double dt = parse_double(field[4], "dt_seconds", lineno);
        double points = parse_double(field[5], "points", lineno);
        double want = parse_double(field[6], "want_score", lineno);
        double want_ttl = parse_double(field[7], "want_ttl", lineno);
        double t0 = 1700000000.25, now = t0 + dt;

        snprintf(key, sizeof key, "sgtest:vec:%s", field[0]);
        freeReplyObject(sync_cmd(c, "DEL %s", key));
        /* A score of 0 is a missing key (what the stores hold for it). */
        if (before != 0) {
            char seed[80];
            snprintf(seed, sizeof seed, "%.17g %.17g", before, t0);
            freeReplyObject(sync_cmd(c, "SET %s %s", key, seed));
        }
        redisReply *r = script_call(c, sha, key, now, kind, param, points);
        if (r->type != REDIS_REPLY_STRING || r->len != 2 * COUNTER_WIRE_DOUBLE_LEN)
            fail_msg("%s: want one string of 2 numbers", field[0]);
        double got_now = reply_num(r, 0);
        double got = reply_num(r, 1);
        freeReplyObject(r);
        if (got_now != now)
            fail_msg("%s (line %lu): now got %.17g, want %.17g", field[0], lineno, got_now, now);
        if (!close_enough(got, want, VECTOR_REL_TOL))
            fail_msg("%s (line %lu): score got %.17g, want %.17g", field[0], lineno, got, want);

        long long exists = sync_int(c, "EXISTS %s", key);
        if (points != 0) {
            long long want_ms = want_expiry_ms(want_ttl, before != 0);
            check_pttl(c, key, want_ms, field[0]);
            /* The stored value is the new score at now, bit for bit (the
             * seed above was the older text form: read, then rewritten),
             * and the expiry bound a second short of the PX. */
            double s_score, s_at, s_exp;
            stored_value(c, key, &s_score, &s_at, &s_exp);
            if (s_score != got || s_at != now)
                fail_msg("%s: stored %.17g at %.17g, want %.17g at %.17g", field[0], s_score,
                         s_at, got, now);
            if (s_exp != now + (double)want_ms / 1000 - 1)
                fail_msg("%s: stored expiry %.17g, want %.17g", field[0], s_exp,
                         now + (double)want_ms / 1000 - 1);
        } else if (want_ttl == 0) {
            if (exists)
                fail_msg("%s (line %lu): a read down to the floor left the key", field[0], lineno);
        } else if (exists != (before != 0)) {
            fail_msg("%s (line %lu): a read changed whether the key exists", field[0], lineno);
        }
        freeReplyObject(sync_cmd(c, "DEL %s", key));
        rows++;
    }
    fclose(fp);
    redisFree(c);
    if (rows < 20)
        fail_msg("decay.tsv: got %lu rows, want at least 20", rows);
}

/* script_points - one update of key at now by the script, its new score. */
static double script_points(redisContext *c, const char *sha, const char *key, double now,
                            double points)
{
    redisReply *r = script_call(c, sha, key, now, "h", 600, points);
    double score = reply_num(r, 1);
    freeReplyObject(r);
    return score;
}

/* A key's expiry is set exactly when it is made, with slack when it is
 * updated again, and then kept (SET ... KEEPTTL) while the stored bound
 * still covers what the score needs: a TTL the test plants in between
 * survives such an update and is replaced by the next one that needs
 * more. A key in the older 17-byte form has no bound and gets a PX. */
static void test_store_redis_script_expiry_kept(void **state)
{
    const char *key = "sgtest:expiry:k";
    char sha[SHA1_HEX_LEN + 1];
    struct decay hl = {DECAY_HALF_LIFE, 600};
    double t0 = 1700000000.25, score, s_at, s_exp;
    const long long planted_ms = 100000000;
    redisContext *c = sync_connect();

    (void)state;
    sha1_hex(store_redis_lua, strlen(store_redis_lua), sha);
    freeReplyObject(sync_cmd(c, "DEL %s", key));

    score = script_points(c, sha, key, t0, 4);
    long long ms = want_expiry_ms(decay_ttl(&hl, score), false);
    check_pttl(c, key, ms, "new key");
    stored_value(c, key, &score, &s_at, &s_exp);
    if (s_exp != t0 + (double)ms / 1000 - 1)
        fail_msg("new key: stored expiry %.17g, want %.17g", s_exp, t0 + (double)ms / 1000 - 1);

    /* 4 -> 5 needs more than the exact expiry: a PX, with slack. */
    score = script_points(c, sha, key, t0, 1);
    ms = want_expiry_ms(decay_ttl(&hl, score), true);
    assert_true(ms > want_expiry_ms(decay_ttl(&hl, score), false));
    check_pttl(c, key, ms, "updated key");
    double bound = t0 + (double)ms / 1000 - 1;

    /* 5 -> 6 fits under the bound: the TTL is kept, planted or not. */
    redisReply *pe = sync_cmd(c, "PEXPIRE %s %lld", key, planted_ms);
    assert_true(pe->type == REDIS_REPLY_INTEGER && pe->integer == 1);
    freeReplyObject(pe);
    score = script_points(c, sha, key, t0 + 1, 1);
    assert_true(t0 + 1 + decay_ttl(&hl, score) <= bound);
    check_pttl(c, key, planted_ms, "kept");
    stored_value(c, key, &score, &s_at, &s_exp);
    if (s_at != t0 + 1 || s_exp != bound)
        fail_msg("kept: stored time %.17g and expiry %.17g, want %.17g and %.17g", s_at, s_exp,
                 t0 + 1, bound);

    /* 6 -> 56 outgrows it: a new PX replaces the planted TTL. */
    score = script_points(c, sha, key, t0 + 2, 50);
    ms = want_expiry_ms(decay_ttl(&hl, score), true);
    assert_true(t0 + 2 + decay_ttl(&hl, score) > bound);
    check_pttl(c, key, ms, "outgrown");

    /* The older form (score 5 at t0, no bound): read, given a PX with
     * slack and rewritten in the new form. */
    unsigned char old[COUNTER_WIRE_PAIR_LEN];
    old[0] = COUNTER_WIRE_PAIR_FORMAT;
    counter_wire_put_double(old + 1, 5);
    counter_wire_put_double(old + 1 + COUNTER_WIRE_DOUBLE_LEN, t0);
    freeReplyObject(sync_cmd(c, "SET %s %b PX %lld", key, old, sizeof old, planted_ms));
    score = script_points(c, sha, key, t0, 0.01);
    assert_true(score == 5.01);
    ms = want_expiry_ms(decay_ttl(&hl, score), true);
    check_pttl(c, key, ms, "older form");
    stored_value(c, key, &score, &s_at, &s_exp);
    if (s_exp != t0 + (double)ms / 1000 - 1)
        fail_msg("older form: stored expiry %.17g, want %.17g", s_exp,
                 t0 + (double)ms / 1000 - 1);

    freeReplyObject(sync_cmd(c, "DEL %s", key));
    redisFree(c);
}

/* The script with now = "" takes TIME; it also must refuse bad input
 * without writing. */
static void test_store_redis_script_time_and_bad_args(void **state)
{
    redisContext *c = sync_connect();
    redisReply *r;
    struct timeval tv;

    (void)state;
    gettimeofday(&tv, NULL);
    r = sync_cmd(c, "EVAL %s 1 sgtest:time:k %s %s", store_redis_lua, "", "h 600 1");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    double now = reply_num(r, 0);
    freeReplyObject(r);
    if (fabs(now - ((double)tv.tv_sec + tv.tv_usec / 1e6)) > 5)
        fail_msg("Redis TIME %.6f is far from ours", now);
    freeReplyObject(sync_cmd(c, "DEL sgtest:time:k"));

    /* A bad kind, a missing number, the three-argument form of earlier
     * versions, a number that is not one: refused, nothing written. */
    static const char *const bad[][2] = {
        {"x 600 1", NULL}, {"h 600", NULL}, {"h", "600 1"}, {"h 600 one", NULL}, {"h 600 1 2", NULL},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (bad[i][1])
            r = redisCommand(c, "EVAL %s 1 sgtest:bad:k 1000 %s %s", store_redis_lua, bad[i][0],
                             bad[i][1]);
        else
            r = redisCommand(c, "EVAL %s 1 sgtest:bad:k 1000 %s", store_redis_lua, bad[i][0]);
        assert_non_null(r);
        if (r->type != REDIS_REPLY_ERROR)
            fail_msg("update \"%s\" was not refused (reply type %d)", bad[i][0], r->type);
        freeReplyObject(r);
    }
    assert_int_equal(sync_int(c, "EXISTS %s", "sgtest:bad:k"), 0);
    redisFree(c);
}

/* --- the store -------------------------------------------------------- */

static void test_store_redis_apply_and_decay(void **state)
{
    struct fixture f;
    struct result r1, r2;
    struct store_update u[2];
    struct decay hl = {DECAY_HALF_LIFE, 600}, lk = {DECAY_LEAK, 100.0 / 3600};

    (void)state;
    fixture_init(&f);
    struct store *st = open_store(&f, getenv("SMTPGUARD_TEST_REDIS"), NULL, "sgtest:decay:",
                                  TEST_TIMEOUT_MS);
    wait_up(&f, st);
    const char *keys[] = {"ip", "user"};
    const size_t lens[] = {2, 4};
    struct result rr;
    memset(&rr, 0, sizeof rr);
    store_reset(st, keys, lens, 2, on_reset, &rr);
    assert_int_equal(rr.calls, 0);
    run_until(&f, &rr.calls, NULL, NULL, 2000);
    assert_int_equal(rr.status, STORE_OK);

    u[0] = upd("ip", hl.kind, hl.param, 4);
    u[1] = upd("user", lk.kind, lk.param, 6);
    apply_wait(&f, st, u, 2, &r1);
    assert_int_equal(r1.status, STORE_OK);
    assert_int_equal(r1.n, 2);
    assert_true(r1.scores[0] == 4 && r1.scores[1] == 6);
    usleep(200000);
    u[0].points = 1;
    u[1].points = 1;
    apply_wait(&f, st, u, 2, &r2);
    assert_int_equal(r2.status, STORE_OK);
    /* Same numbers as decay_apply over Redis's own dt. */
    double dt = r2.now - r1.now;
    if (!(dt > 0.15 && dt < 2))
        fail_msg("dt got %.6f, want about 0.2", dt);
    double want0 = decay_apply(&hl, 4, dt, 1), want1 = decay_apply(&lk, 6, dt, 1);
    if (!close_enough(r2.scores[0], want0, 1e-12) || !close_enough(r2.scores[1], want1, 1e-12))
        fail_msg("got %.17g %.17g, want %.17g %.17g", r2.scores[0], r2.scores[1], want0, want1);

    /* TTL as decay_ttl says, with the slack of a key updated again. */
    redisContext *c = sync_connect();
    check_pttl(c, "sgtest:decay:ip", want_expiry_ms(decay_ttl(&hl, r2.scores[0]), true),
               "second update");
    redisFree(c);

    memset(&rr, 0, sizeof rr);
    store_reset(st, keys, lens, 2, on_reset, &rr);
    run_until(&f, &rr.calls, NULL, NULL, 2000);
    assert_int_equal(rr.status, STORE_OK);
    c = sync_connect();
    assert_int_equal(sync_int(c, "EXISTS %s", "sgtest:decay:ip"), 0);
    assert_int_equal(sync_int(c, "EXISTS %s", "sgtest:decay:user"), 0);
    redisFree(c);
    close_store(&f, st);
    fixture_fini(&f);
}

static void test_store_redis_read_does_not_create(void **state)
{
    struct fixture f;
    struct result r;
    struct store_update u = upd("nobody", DECAY_HALF_LIFE, 600, 0);

    (void)state;
    fixture_init(&f);
    struct store *st = open_store(&f, getenv("SMTPGUARD_TEST_REDIS"), NULL, "sgtest:ro:",
                                  TEST_TIMEOUT_MS);
    wait_up(&f, st);
    apply_wait(&f, st, &u, 1, &r);
    assert_int_equal(r.status, STORE_OK);
    assert_true(r.scores[0] == 0);
    redisContext *c = sync_connect();
    assert_int_equal(sync_int(c, "EXISTS %s", "sgtest:ro:nobody"), 0);
    redisFree(c);
    close_store(&f, st);
    fixture_fini(&f);
}

static void test_store_redis_shared_between_stores(void **state)
{
    struct fixture f;
    struct result r;
    struct store_update u = upd("shared", DECAY_HALF_LIFE, 3600, 1);

    (void)state;
    fixture_init(&f);
    struct store *a = open_store(&f, getenv("SMTPGUARD_TEST_REDIS"), NULL, "sgtest:two:",
                                 TEST_TIMEOUT_MS);
    const char *unix_addr = getenv("SMTPGUARD_TEST_REDIS_UNIX");
    /* The second one over the unix socket when there is one. */
    struct store *b = open_store(&f, unix_addr ? unix_addr : getenv("SMTPGUARD_TEST_REDIS"), NULL,
                                 "sgtest:two:", TEST_TIMEOUT_MS);
    wait_up(&f, a);
    wait_up(&f, b);
    const char *key = "shared";
    size_t len = 6;
    struct result rr;
    memset(&rr, 0, sizeof rr);
    store_reset(a, &key, &len, 1, on_reset, &rr);
    run_until(&f, &rr.calls, NULL, NULL, 2000);

    apply_wait(&f, a, &u, 1, &r);
    assert_int_equal(r.status, STORE_OK);
    u.points = 2;
    apply_wait(&f, b, &u, 1, &r);
    assert_int_equal(r.status, STORE_OK);
    if (!(r.scores[0] > 2.999 && r.scores[0] <= 3))
        fail_msg("b sees %.17g, want just under 3", r.scores[0]);
    u.points = 0;
    apply_wait(&f, a, &u, 1, &r);
    if (!(r.scores[0] > 2.999 && r.scores[0] <= 3))
        fail_msg("a sees %.17g, want just under 3", r.scores[0]);
    store_reset(b, &key, &len, 1, NULL, NULL);
    close_store(&f, a);
    close_store(&f, b);
    fixture_fini(&f);
}

/* The server drops us (a restart, CLIENT KILL, a proxy): logged once,
 * reconnected after the first backoff step, and working again. */
static void test_store_redis_reconnects_after_kill(void **state)
{
    struct fixture f;
    struct result r;
    struct store_update u = upd("kill", DECAY_LEAK, 1, 1);

    (void)state;
    fixture_init(&f);
    struct store *st = open_store(&f, getenv("SMTPGUARD_TEST_REDIS"), NULL, "sgtest:kill:",
                                  TEST_TIMEOUT_MS);
    wait_up(&f, st);
    for (int round = 0; round < 3; round++) {
        apply_wait(&f, st, &u, 1, &r);
        assert_int_equal(r.status, STORE_OK);
        redisContext *c = sync_connect();
        freeReplyObject(sync_cmd(c, "CLIENT KILL TYPE normal"));
        redisFree(c);
        /* An apply racing the kill may go either way, but answers. */
        apply_wait(&f, st, &u, 1, &r);
        uint64_t t0 = uv_hrtime();
        run_until(&f, NULL, store_is_up, st, 50);
        if (!run_until(&f, NULL, store_is_up, st, 2000))
            fail_msg("round %d: not up again within 2 s", round);
        apply_wait(&f, st, &u, 1, &r);
        assert_int_equal(r.status, STORE_OK);
        if (round == 0)
            print_message("reconnected %llu ms after CLIENT KILL\n",
                          (unsigned long long)((uv_hrtime() - t0) / 1000000));
    }
    const char *key = "kill";
    size_t len = 4;
    store_reset(st, &key, &len, 1, NULL, NULL);
    close_store(&f, st);
    fixture_fini(&f);
}

static void test_store_redis_ipv6(void **state)
{
    const char *addr = getenv("SMTPGUARD_TEST_REDIS6");
    struct fixture f;
    struct result r;
    struct store_update u = upd("v6", DECAY_LEAK, 1, 0);

    (void)state;
    if (!addr) {
        print_message("no IPv6 loopback: skipped\n");
        skip();
    }
    fixture_init(&f);
    struct store *st = open_store(&f, addr, NULL, "sgtest:v6:", TEST_TIMEOUT_MS);
    wait_up(&f, st);
    apply_wait(&f, st, &u, 1, &r);
    assert_int_equal(r.status, STORE_OK);
    close_store(&f, st);
    fixture_fini(&f);
}

static void test_store_redis_noscript(void **state)
{
    struct fixture f;
    struct result r;
    struct store_update u = upd("ns", DECAY_LEAK, 1, 1);
    char sha[SHA1_HEX_LEN + 1];

    (void)state;
    sha1_hex(store_redis_lua, strlen(store_redis_lua), sha);
    fixture_init(&f);
    struct store *st = open_store(&f, getenv("SMTPGUARD_TEST_REDIS"), NULL, "sgtest:ns:",
                                  TEST_TIMEOUT_MS);
    wait_up(&f, st);
    redisContext *c = sync_connect();
    for (int round = 0; round < 3; round++) {
        freeReplyObject(sync_cmd(c, "SCRIPT FLUSH"));
        apply_wait(&f, st, &u, 1, &r);
        if (r.status != STORE_OK)
            fail_msg("round %d: apply after SCRIPT FLUSH failed", round);
        /* Loaded again by the EVAL, under the SHA-1 we computed. */
        redisReply *e = sync_cmd(c, "SCRIPT EXISTS %s", sha);
        assert_int_equal(e->type, REDIS_REPLY_ARRAY);
        assert_int_equal(e->element[0]->integer, 1);
        freeReplyObject(e);
        apply_wait(&f, st, &u, 1, &r);
        assert_int_equal(r.status, STORE_OK);
    }
    freeReplyObject(sync_cmd(c, "DEL sgtest:ns:ns"));
    redisFree(c);
    close_store(&f, st);
    fixture_fini(&f);
}

static void test_store_redis_deferred_and_close_pending(void **state)
{
    struct fixture f;
    struct result r[4];
    struct store_update u = upd("cp", DECAY_LEAK, 1, 1);

    (void)state;
    fixture_init(&f);
    struct store *st = open_store(&f, getenv("SMTPGUARD_TEST_REDIS"), NULL, "sgtest:cp:",
                                  TEST_TIMEOUT_MS);
    wait_up(&f, st);
    memset(r, 0, sizeof r);
    for (int i = 0; i < 4; i++)
        store_apply(st, &u, 1, on_done, &r[i]);
    store_close(st);
    for (int i = 0; i < 4; i++)
        assert_int_equal(r[i].calls, 0);
    uv_close((uv_handle_t *)&f.tick, NULL);
    assert_int_equal(uv_run(&f.loop, UV_RUN_DEFAULT), 0);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, STORE_TEMPFAIL);
    }
    assert_int_equal(uv_loop_close(&f.loop), 0);
}

static void test_store_redis_down_fails_fast(void **state)
{
    struct fixture f;
    struct result r;
    struct store_update u = upd("down", DECAY_LEAK, 1, 1);

    (void)state;
    fixture_init(&f);
    /* Port 1 on loopback: nothing listens there. */
    struct store *st = open_store(&f, "127.0.0.1:1", NULL, "sgtest:", 200);
    assert_false(store_is_up(st));
    /* During the first attempt a request waits for it, within its
     * deadline; once the attempt has failed, requests fail at once. */
    uint64_t t0 = uv_hrtime();
    apply_wait(&f, st, &u, 1, &r);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(r.status, STORE_TEMPFAIL);
    if (ms > 200 + 100)
        fail_msg("failing during the first attempt took %llu ms, want within the 200 ms timeout",
                 (unsigned long long)ms);
    run_until(&f, NULL, store_is_up, st, 150);
    t0 = uv_hrtime();
    apply_wait(&f, st, &u, 1, &r);
    ms = (uv_hrtime() - t0) / 1000000;
    assert_int_equal(r.status, STORE_TEMPFAIL);
    if (ms > 100)
        fail_msg("failing while down took %llu ms, want at once", (unsigned long long)ms);
    /* Let it try and back off a few times, then close in the middle. */
    run_until(&f, NULL, store_is_up, st, 700);
    assert_false(store_is_up(st));
    close_store(&f, st);
    fixture_fini(&f);
}

static void test_store_redis_bad_addresses(void **state)
{
    static const char *const bad[] = {"", "[::1", "[::1]x", "::1:6379", "host:0", "host:65536",
                                      "host:x", "unix:relative", ":6379"};
    struct fixture f;
    char err[256];

    (void)state;
    fixture_init(&f);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct store_config cfg = {.backend = STORE_BACKEND_REDIS, .redis_address = (char *)bad[i]};
        struct store *st = NULL;
        err[0] = '\0';
        if (store_open(&st, &cfg, &f.loop, err, sizeof err) != -EINVAL)
            fail_msg("address \"%s\": got success, want -EINVAL", bad[i]);
        if (!err[0])
            fail_msg("address \"%s\": no message", bad[i]);
    }
    fixture_fini(&f);
}

static void sigstop_cleanup(pid_t pid)
{
    if (pid > 0)
        kill(pid, SIGCONT);
}

/* Never leave Redis stopped behind a failed assertion. */
static int sigstop_teardown(void **state)
{
    const char *pid_s = getenv("SMTPGUARD_TEST_REDIS_PID");

    (void)state;
    if (pid_s && atol(pid_s) > 1)
        sigstop_cleanup((pid_t)atol(pid_s));
    return 0;
}

/* redis_pid - the test server's PID, or skip the test. */
static pid_t redis_pid(void)
{
    const char *pid_s = getenv("SMTPGUARD_TEST_REDIS_PID");
    pid_t pid = pid_s ? (pid_t)atol(pid_s) : 0;

    if (pid <= 1) {
        print_message("SMTPGUARD_TEST_REDIS_PID not set: skipped\n");
        skip();
    }
    return pid;
}

/* open_working - a store under prefix, up and answering u. */
static struct store *open_working(struct fixture *f, const char *prefix,
                                  const struct store_update *u)
{
    struct result r;
    struct store *st = open_store(f, getenv("SMTPGUARD_TEST_REDIS"), NULL, prefix, TEST_TIMEOUT_MS);
    wait_up(f, st);
    apply_wait(f, st, u, 1, &r);
    assert_int_equal(r.status, STORE_OK);
    return st;
}

static void test_store_redis_sigstop(void **state)
{
    struct fixture f;
    struct result r;
    struct store_update u = upd("stop", DECAY_LEAK, 1, 1);

    (void)state;
    pid_t pid = redis_pid();
    fixture_init(&f);
    struct store *st = open_working(&f, "sgtest:stop:", &u);

    assert_int_equal(kill(pid, SIGSTOP), 0);
    uint64_t t0 = uv_hrtime();
    memset(&r, 0, sizeof r);
    store_apply(st, &u, 1, on_done, &r);
    run_until(&f, &r.calls, NULL, NULL, 3000);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    sigstop_cleanup(pid);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, STORE_TEMPFAIL);
    if (ms < TEST_TIMEOUT_MS - 5 || ms > TEST_TIMEOUT_MS + 150)
        fail_msg("TEMPFAIL after %llu ms, want %u ms + a little", (unsigned long long)ms,
                 TEST_TIMEOUT_MS);
    print_message("redis paused: TEMPFAIL after %llu ms (timeout %u ms)\n",
                  (unsigned long long)ms, TEST_TIMEOUT_MS);

    /* Back: works again (possibly after a reconnect). */
    uint64_t t1 = uv_hrtime();
    for (;;) {
        apply_wait(&f, st, &u, 1, &r);
        if (r.status == STORE_OK)
            break;
        if ((uv_hrtime() - t1) / 1000000 > 3000)
            fail_msg("still failing 3 s after SIGCONT");
        run_until(&f, NULL, store_is_up, st, 100);
    }

    /* Paused long enough to be dropped: it reconnects after SIGCONT. */
    assert_int_equal(kill(pid, SIGSTOP), 0);
    for (int i = 0; i < 3; i++) {
        apply_wait(&f, st, &u, 1, &r);
        assert_int_equal(r.status, STORE_TEMPFAIL);
    }
    sigstop_cleanup(pid);
    t1 = uv_hrtime();
    run_until(&f, NULL, store_is_up, st, 3000);
    for (;;) {
        apply_wait(&f, st, &u, 1, &r);
        if (r.status == STORE_OK)
            break;
        if ((uv_hrtime() - t1) / 1000000 > 6000)
            fail_msg("still failing 6 s after SIGCONT");
        run_until(&f, NULL, store_is_up, st, 100);
    }
    print_message("redis resumed: OK again after %llu ms\n",
                  (unsigned long long)((uv_hrtime() - t1) / 1000000));
    const char *key = "stop";
    size_t len = 4;
    store_reset(st, &key, &len, 1, NULL, NULL);
    close_store(&f, st);
    fixture_fini(&f);
}

struct tally {
    int calls;                  /* callbacks run */
    int ok, tempfail;           /* by status */
};

static void on_tally(void *arg, int status, const double *scores, size_t n, double now)
{
    struct tally *t = arg;
    (void)scores;
    (void)n;
    (void)now;
    t->calls++;
    if (status == STORE_OK)
        t->ok++;
    else if (status == STORE_TEMPFAIL)
        t->tempfail++;
}

/* Redis stops under load: more requests than REDIS_MAX_INFLIGHT (1024)
 * go out within one timeout, so the later ones are refused before they
 * get a deadline. The connection must still be dropped once it has owed
 * replies for two timeouts (it was held "up", failing everything fast,
 * for as long as TCP kept the socket), and come back after SIGCONT. */
static void test_store_redis_stopped_under_load_is_dropped(void **state)
{
    enum { BURST = 1100 };
    struct fixture f;
    struct result r;
    struct tally t = {0};
    struct store_update u = upd("load", DECAY_LEAK, 1, 1);

    (void)state;
    pid_t pid = redis_pid();
    fixture_init(&f);
    struct store *st = open_working(&f, "sgtest:load:", &u);

    assert_int_equal(kill(pid, SIGSTOP), 0);
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < BURST; i++)
        store_apply(st, &u, 1, on_tally, &t);
    /* One more request every 20 ms: each is refused while the records
     * are held; the store must go down within 2 timeouts and a little. */
    uint64_t down_ms = 0;
    int sent = BURST;
    for (int i = 0; i < 150 && !down_ms; i++) {
        int never = 0;
        run_until(&f, &never, NULL, NULL, 20);
        store_apply(st, &u, 1, on_tally, &t);
        sent++;
        if (!store_is_up(st))
            down_ms = (uv_hrtime() - t0) / 1000000;
    }
    if (!down_ms) {
        sigstop_cleanup(pid);
        fail_msg("still up 3 s after Redis stopped under %d requests", BURST);
    }
    print_message("redis stopped under load: dropped after %llu ms (timeout %u ms)\n",
                  (unsigned long long)down_ms, TEST_TIMEOUT_MS);
    if (down_ms > 2 * TEST_TIMEOUT_MS + 400) {
        sigstop_cleanup(pid);
        fail_msg("dropped after %llu ms, want about %u", (unsigned long long)down_ms,
                 2 * TEST_TIMEOUT_MS);
    }
    sigstop_cleanup(pid);
    if (!run_until(&f, NULL, store_is_up, st, 8000))
        fail_msg("not up again 8 s after SIGCONT");
    int never = 0;
    run_until(&f, &never, NULL, NULL, 100); /* the last refusals are reported */
    /* Every request answered once, TEMPFAIL: none reached Redis in time. */
    assert_int_equal(t.calls, sent);
    assert_int_equal(t.tempfail, sent);
    apply_wait(&f, st, &u, 1, &r);
    assert_int_equal(r.status, STORE_OK);
    const char *key = "load";
    size_t len = 4;
    store_reset(st, &key, &len, 1, NULL, NULL);
    close_store(&f, st);
    fixture_fini(&f);
}

/* The log goes to a file during the password test, to check the secret
 * never shows. */
static int saved_stderr = -1;
static char log_path[] = "/tmp/test_store_redis_log.XXXXXX";

static void capture_stderr(void)
{
    int fd = mkstemp(log_path);
    assert_true(fd >= 0);
    fflush(stderr);
    saved_stderr = dup(2);
    dup2(fd, 2);
    close(fd);
}

static char *release_stderr(void)
{
    static char text[65536];
    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    FILE *fp = fopen(log_path, "r");
    size_t n = fp ? fread(text, 1, sizeof text - 1, fp) : 0;
    text[n] = '\0';
    if (fp)
        fclose(fp);
    unlink(log_path);
    return text;
}

static int password_teardown(void **state)
{
    redisContext *c = sync_connect();
    redisReply *r;

    (void)state;
    r = redisCommand(c, "AUTH %s", "s3cret-Pa55");
    freeReplyObject(r);
    r = redisCommand(c, "CONFIG SET requirepass %s", "");
    freeReplyObject(r);
    redisFree(c);
    return 0;
}

static void test_store_redis_password(void **state)
{
    struct fixture f;
    struct result r;
    struct store_update u = upd("pw", DECAY_LEAK, 1, 1);
    const char *addr = getenv("SMTPGUARD_TEST_REDIS");

    (void)state;
    redisContext *c = sync_connect();
    freeReplyObject(sync_cmd(c, "CONFIG SET requirepass %s", "s3cret-Pa55"));
    redisFree(c);

    capture_stderr();
    fixture_init(&f);
    struct store *good = open_store(&f, addr, "s3cret-Pa55", "sgtest:pw:", TEST_TIMEOUT_MS);
    struct store *bad = open_store(&f, addr, "wr0ng-Pa55", "sgtest:pw:", TEST_TIMEOUT_MS);
    struct store *none = open_store(&f, addr, NULL, "sgtest:pw:", TEST_TIMEOUT_MS);
    wait_up(&f, good);
    apply_wait(&f, good, &u, 1, &r);
    int good_status = r.status;
    run_until(&f, NULL, store_is_up, bad, 800);
    bool bad_up = store_is_up(bad), none_up = store_is_up(none);
    apply_wait(&f, bad, &u, 1, &r);
    int bad_status = r.status;
    apply_wait(&f, none, &u, 1, &r);
    int none_status = r.status;
    close_store(&f, good);
    close_store(&f, bad);
    close_store(&f, none);
    fixture_fini(&f);
    char *log = release_stderr();

    assert_int_equal(good_status, STORE_OK);
    assert_false(bad_up);
    assert_false(none_up);
    assert_int_equal(bad_status, STORE_TEMPFAIL);
    assert_int_equal(none_status, STORE_TEMPFAIL);
    if (strstr(log, "Pa55"))
        fail_msg("a password reached the log:\n%s", log);
    if (!strstr(log, "authentication failed"))
        fail_msg("want an authentication failure in the log, got:\n%s", log);
    /* Connect failures are rate-limited: one line per store here. */
    const char *p = log;
    int lines = 0;
    while ((p = strstr(p, "cannot connect")) != NULL) {
        lines++;
        p++;
    }
    if (lines > 2)
        fail_msg("got %d connect-failure lines, want at most 2 (rate-limited):\n%s", lines, log);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Not a pass/fail test: prints the round trip of a 3-counter apply. */
static void test_store_redis_latency(void **state)
{
    enum { ROUNDS = 2000 };
    static uint64_t ns[ROUNDS];
    struct fixture f;
    struct result r;
    struct store_update u[3];

    (void)state;
    fixture_init(&f);
    struct store *st = open_store(&f, getenv("SMTPGUARD_TEST_REDIS"), NULL, "sgtest:lat:",
                                  TEST_TIMEOUT_MS);
    wait_up(&f, st);
    u[0] = upd("ip:192.0.2.7", DECAY_HALF_LIFE, 600, 1);
    u[1] = upd("net:192.0.2.0/24", DECAY_HALF_LIFE, 600, 1);
    u[2] = upd("user:alice@example.org", DECAY_LEAK, 100.0 / 3600, 1);
    for (int i = 0; i < ROUNDS; i++) {
        uint64_t t0 = uv_hrtime();
        apply_wait(&f, st, u, 3, &r);
        ns[i] = uv_hrtime() - t0;
        assert_int_equal(r.status, STORE_OK);
    }
    qsort(ns, ROUNDS, sizeof ns[0], cmp_u64);
    print_message("redis apply of 3 counters, %d rounds: median %.1f us, p99 %.1f us\n", ROUNDS,
                  ns[ROUNDS / 2] / 1e3, ns[ROUNDS * 99 / 100] / 1e3);
    const char *keys[] = {u[0].key, u[1].key, u[2].key};
    const size_t lens[] = {u[0].key_len, u[1].key_len, u[2].key_len};
    store_reset(st, keys, lens, 3, NULL, NULL);
    close_store(&f, st);
    fixture_fini(&f);
}


/* --- peek and the top set ---------------------------------------------- */

/* open_top_store - a store under prefix with a top set (floor 3, size
 * keys a counter), up. */
static struct store *open_top_store(struct fixture *f, const char *prefix, unsigned size)
{
    struct store_config cfg = {
        .backend = STORE_BACKEND_REDIS,
        .redis_address = getenv("SMTPGUARD_TEST_REDIS"),
        .prefix = (char *)prefix,
        .timeout_ms = TEST_TIMEOUT_MS,
        .top_floor = 3,
        .top_size = size,
    };
    struct store *st;
    char err[256];
    if (store_open(&st, &cfg, &f->loop, err, sizeof err) != 0)
        fail_msg("store_open: %s", err);
    wait_up(f, st);
    return st;
}

struct top_result {
    int calls;                  /* times the callback ran */
    int status;                 /* last status */
    size_t n;                   /* entries */
    char keys[8][64];           /* copied out */
    double scores[8];           /* points */
};

static void on_top(void *arg, int status, const struct store_top_entry *e, size_t n)
{
    struct top_result *r = arg;
    r->calls++;
    r->status = status;
    r->n = n;
    for (size_t i = 0; i < n && i < 8; i++) {
        snprintf(r->keys[i], sizeof r->keys[i], "%.*s", (int)e[i].key_len, e[i].key);
        r->scores[i] = e[i].score;
    }
}

/* evalsha_calls - EVALSHA calls Redis has run since its start (or the
 * last CONFIG RESETSTAT). */
static long long evalsha_calls(redisContext *c)
{
    redisReply *r = sync_cmd(c, "INFO commandstats");
    const char *p = strstr(r->str, "cmdstat_evalsha:calls=");
    long long n = p ? strtoll(p + strlen("cmdstat_evalsha:calls="), NULL, 10) : 0;
    freeReplyObject(r);
    return n;
}

#define BATCH_REQUESTS 70   /* more than one EVALSHA carries (REDIS_BATCH_MAX_CMDS) */

/* The applies of one loop turn go out as one script call, and the
 * updates of a key shared by several of them are counted in order, as if
 * each request had come on its own. */
static void test_store_redis_batch(void **state)
{
    struct fixture f;
    static struct result r[BATCH_REQUESTS];
    struct decay hl = {DECAY_HALF_LIFE, 600}, lk = {DECAY_LEAK, 1};
    char own[BATCH_REQUESTS][32];

    (void)state;
    fixture_init(&f);
    redisContext *c = sync_connect();
    freeReplyObject(sync_cmd(c, "DEL sgtest:batch:shared sgtest:batch:leak sgtest:batch:@top:own "
                                "sgtest:batch:read"));
    struct store_config cfg = {
        .backend = STORE_BACKEND_REDIS,
        .redis_address = getenv("SMTPGUARD_TEST_REDIS"),
        .prefix = (char *)"sgtest:batch:",
        .timeout_ms = 2000,
        .top_floor = 3,
        .top_size = 100,
    };
    struct store *st;
    char err[256];
    if (store_open(&st, &cfg, &f.loop, err, sizeof err) != 0)
        fail_msg("store_open: %s", err);
    wait_up(&f, st);

    /* Five requests in one turn: "shared" gets 1 point from each; "leak"
     * (leaky bucket) -3 then +1 each: a negative score is read as 0
     * before the next points, as it is between calls; "read" is only read
     * by the last one, after the others have written it. */
    long long calls0 = evalsha_calls(c);
    for (int i = 0; i < 5; i++) {
        struct store_update u[3] = {upd("shared", hl.kind, hl.param, 1),
                                    upd("leak", lk.kind, lk.param, i == 0 ? -3 : 1),
                                    upd("read", hl.kind, hl.param, i == 4 ? 0 : 2)};
        memset(&r[i], 0, sizeof r[i]);
        store_apply(st, u, 3, on_done, &r[i]);
    }
    assert_int_equal(r[0].calls, 0);
    if (!run_until(&f, &r[4].calls, NULL, NULL, 3000))
        fail_msg("no answer to the batch within 3 s");
    assert_int_equal(evalsha_calls(c) - calls0, 1);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, STORE_OK);
        assert_int_equal(r[i].n, 3);
        /* One call, one clock: no decay between them. */
        if (r[i].scores[0] != i + 1 || r[i].scores[1] != (i == 0 ? -3 : i) ||
            r[i].scores[2] != (i == 4 ? 8 : 2 * (i + 1)) || r[i].now != r[0].now)
            fail_msg("request %d got %.17g %.17g %.17g, want %d %d %d", i, r[i].scores[0],
                     r[i].scores[1], r[i].scores[2], i + 1, i == 0 ? -3 : i,
                     i == 4 ? 8 : 2 * (i + 1));
    }
    /* Stored once, with the last score and that call's time. */
    double s_score, s_at, s_exp;
    stored_value(c, "sgtest:batch:shared", &s_score, &s_at, &s_exp);
    if (s_score != 5 || s_at != r[0].now)
        fail_msg("shared key stored %.17g at %.17g, want 5 at %.17g", s_score, s_at, r[0].now);

    /* More requests than one call carries: two calls, every answer right,
     * and the top set holds each key once, ranked by whole points. */
    calls0 = evalsha_calls(c);
    for (int i = 0; i < BATCH_REQUESTS; i++) {
        snprintf(own[i], sizeof own[i], "own:%d", i);
        struct store_update u[2] = {upd(own[i], hl.kind, hl.param, 3.5 + i),
                                    upd("shared", hl.kind, hl.param, 1)};
        memset(&r[i], 0, sizeof r[i]);
        store_apply(st, u, 2, on_done, &r[i]);
    }
    if (!run_until(&f, &r[BATCH_REQUESTS - 1].calls, NULL, NULL, 3000))
        fail_msg("no answer to the big batch within 3 s");
    assert_int_equal(evalsha_calls(c) - calls0, 2);
    for (int i = 0; i < BATCH_REQUESTS; i++) {
        assert_int_equal(r[i].status, STORE_OK);
        if (r[i].scores[0] != 3.5 + i)
            fail_msg("request %d: own key got %.17g, want %.17g", i, r[i].scores[0], 3.5 + i);
        /* "shared" was 5; the second call starts from the first's last
         * score, decayed over the moment between the two calls. */
        if (!(r[i].scores[1] > 5 + i + 1 - 1e-3 && r[i].scores[1] <= 5 + i + 1))
            fail_msg("request %d: shared key got %.17g, want about %d", i, r[i].scores[1], 6 + i);
    }
    assert_int_equal(sync_int(c, "ZCARD %s", "sgtest:batch:@top:own"), BATCH_REQUESTS);
    redisReply *z = sync_cmd(c, "ZSCORE %s %s", "sgtest:batch:@top:own", "sgtest:batch:own:69");
    assert_int_equal(z->type, REDIS_REPLY_STRING);
    assert_string_equal(z->str, "72");   /* 72.5 ranked as 72 */
    freeReplyObject(z);
    redisFree(c);
    close_store(&f, st);
    fixture_fini(&f);
}

static void test_store_redis_peek_and_top(void **state)
{
    struct fixture f;
    struct result r;
    struct decay hl = {DECAY_HALF_LIFE, 600};

    (void)state;
    fixture_init(&f);
    redisContext *c = sync_connect();
    freeReplyObject(sync_cmd(c, "DEL sgtest:top:@top:ip sgtest:top:ip:a sgtest:top:ip:b "
                                "sgtest:top:ip:c sgtest:top:ip:d sgtest:top:user:x"));
    for (int i = 0; i < 128; i++)
        freeReplyObject(sync_cmd(c, "DEL sgtest:top:ip:f%d", i));
    struct store *st = open_top_store(&f, "sgtest:top:", 2);

    /* a: 5, b: 4, c: 2 (below the floor), d: 6, user x: 9 */
    struct store_update u[5] = {upd("ip:a", hl.kind, hl.param, 5), upd("ip:b", hl.kind, hl.param, 4),
                                upd("ip:c", hl.kind, hl.param, 2), upd("ip:d", hl.kind, hl.param, 6),
                                upd("user:x", hl.kind, hl.param, 9)};
    apply_wait(&f, st, u, 5, &r);
    assert_int_equal(r.status, STORE_OK);
    /* The set is per counter, floor respected (c stays out), and holds up
     * to its size plus the script's TOP_SLACK (128) before a trim. */
    assert_int_equal(sync_int(c, "ZCARD %s", "sgtest:top:@top:ip"), 3);
    assert_int_equal(sync_int(c, "ZCARD %s", "sgtest:top:@top:user"), 1);
    /* 128 more keys above the floor (3.5, below a and b) take it to 131,
     * past 2 + 128: the call that crosses trims it to the 2 highest. */
    enum { FILL = 128, FILL_CHUNK = 16 };
    char fill[FILL][16];
    for (int i = 0; i < FILL; i += FILL_CHUNK) {
        struct store_update fu[FILL_CHUNK];
        for (int j = 0; j < FILL_CHUNK; j++) {
            snprintf(fill[i + j], sizeof fill[i + j], "ip:f%d", i + j);
            fu[j] = upd(fill[i + j], hl.kind, hl.param, 3.5);
        }
        memset(&r, 0, sizeof r);
        apply_wait(&f, st, fu, FILL_CHUNK, &r);
        assert_int_equal(r.status, STORE_OK);
        long long want = i + FILL_CHUNK < FILL ? 3 + i + FILL_CHUNK : 2;
        assert_int_equal(sync_int(c, "ZCARD %s", "sgtest:top:@top:ip"), want);
    }
    redisReply *kept = sync_cmd(c, "ZRANGE %s 0 -1", "sgtest:top:@top:ip");
    assert_int_equal(kept->elements, 2);
    assert_string_equal(kept->element[0]->str, "sgtest:top:ip:a");
    assert_string_equal(kept->element[1]->str, "sgtest:top:ip:d");
    freeReplyObject(kept);
    long long pttl = sync_int(c, "PTTL %s", "sgtest:top:@top:ip");
    if (pttl <= 0)
        fail_msg("top set PTTL got %lld, want > 0", pttl);

    struct top_result t = {0};
    store_top(st, "ip", &hl, 10, on_top, &t);
    assert_int_equal(t.calls, 0);
    run_until(&f, &t.calls, NULL, NULL, 2000);
    assert_int_equal(t.status, STORE_OK);
    assert_int_equal(t.n, 2);
    assert_string_equal(t.keys[0], "ip:d");
    assert_string_equal(t.keys[1], "ip:a");
    if (!(t.scores[0] > 5.99 && t.scores[0] <= 6) || !(t.scores[1] > 4.99 && t.scores[1] <= 5))
        fail_msg("top scores got %g %g, want about 6 and 5", t.scores[0], t.scores[1]);

    /* Peek reads without writing: the stored pair and its TTL stay. */
    redisReply *before = sync_cmd(c, "GET %s", "sgtest:top:ip:a");
    char saved[128];
    size_t saved_len = before->len;
    assert_int_equal(before->type, REDIS_REPLY_STRING);
    assert_true(saved_len <= sizeof saved);
    memcpy(saved, before->str, saved_len);
    freeReplyObject(before);
    struct store_update pk[2] = {upd("ip:a", hl.kind, hl.param, 7), upd("ip:none", hl.kind, hl.param, 1)};
    memset(&r, 0, sizeof r);
    store_peek(st, pk, 2, on_done, &r);
    assert_int_equal(r.calls, 0);
    run_until(&f, &r.calls, NULL, NULL, 2000);
    assert_int_equal(r.status, STORE_OK);
    if (!(r.scores[0] > 4.99 && r.scores[0] <= 5) || r.scores[1] != 0)
        fail_msg("peek got %g %g, want about 5 and 0", r.scores[0], r.scores[1]);
    redisReply *after = sync_cmd(c, "GET %s", "sgtest:top:ip:a");
    assert_int_equal(after->type, REDIS_REPLY_STRING);
    assert_int_equal(after->len, saved_len);
    assert_memory_equal(after->str, saved, saved_len);
    freeReplyObject(after);
    assert_int_equal(sync_int(c, "EXISTS %s", "sgtest:top:ip:none"), 0);

    /* A member whose key is gone leaves the set at the next query. */
    freeReplyObject(sync_cmd(c, "DEL sgtest:top:ip:d"));
    memset(&t, 0, sizeof t);
    store_top(st, "ip", &hl, 10, on_top, &t);
    run_until(&f, &t.calls, NULL, NULL, 2000);
    assert_int_equal(t.status, STORE_OK);
    assert_int_equal(t.n, 1);
    assert_string_equal(t.keys[0], "ip:a");
    assert_int_equal(sync_int(c, "ZCARD %s", "sgtest:top:@top:ip"), 1);

    /* A member whose key holds a list: the script's GET fails, and the
     * query is still answered, TEMPFAIL (it was left unanswered, and the
     * admin connection that asked held for good). */
    freeReplyObject(sync_cmd(c, "RPUSH %s x", "sgtest:top:ip:w"));
    freeReplyObject(sync_cmd(c, "ZADD %s 100 %s", "sgtest:top:@top:ip", "sgtest:top:ip:w"));
    memset(&t, 0, sizeof t);
    store_top(st, "ip", &hl, 10, on_top, &t);
    run_until(&f, &t.calls, NULL, NULL, 2000);
    assert_int_equal(t.calls, 1);
    assert_int_equal(t.status, STORE_TEMPFAIL);
    freeReplyObject(sync_cmd(c, "DEL %s %s", "sgtest:top:ip:w", "sgtest:top:@top:ip"));
    redisFree(c);
    close_store(&f, st);
    fixture_fini(&f);
}

/* zscore - the whole points the top set z gives member m, or -1 if absent. */
static long long zscore(redisContext *c, const char *z, const char *m)
{
    redisReply *r = sync_cmd(c, "ZSCORE %s %s", z, m);
    long long v = r->type == REDIS_REPLY_STRING ? atoll(r->str) : -1;
    freeReplyObject(r);
    return v;
}

#define TOP_REFRESH_S 10    /* TOP_REFRESH in store_redis.lua */

/* A member already in its top set is written there again only past a
 * power of two or in a new TOP_REFRESH window: a ZADD for every update of
 * every hot key was a third of the script's time. */
static void test_store_redis_top_refresh(void **state)
{
    struct fixture f;
    struct result r;
    struct decay hl = {DECAY_HALF_LIFE, 600};
    const char *z = "sgtest:tref:@top:ip", *m = "sgtest:tref:ip:a";

    (void)state;
    fixture_init(&f);
    redisContext *c = sync_connect();
    struct store *st = open_top_store(&f, "sgtest:tref:", 100);

    /* The steps below must fall in one window: start over (at most
     * twice) if a window began between the first and the last. */
    double w0 = 0;
    int attempt;
    for (attempt = 0; attempt < 3; attempt++) {
        freeReplyObject(sync_cmd(c, "DEL %s %s", z, m));
        struct store_update u = upd("ip:a", hl.kind, hl.param, 5);
        apply_wait(&f, st, &u, 1, &r);
        assert_int_equal(r.status, STORE_OK);
        w0 = floor(r.now / TOP_REFRESH_S);
        /* Crossing the floor: in, at 5. */
        assert_int_equal(zscore(c, z, m), 5);
        /* 6: the same octave (4..8), the same window: left at 5. */
        u.points = 1;
        apply_wait(&f, st, &u, 1, &r);
        double w1 = floor(r.now / TOP_REFRESH_S);
        long long at6 = zscore(c, z, m);
        /* 9: past 8, written again (ranked by whole points: 8.99... is 8). */
        u.points = 3;
        apply_wait(&f, st, &u, 1, &r);
        long long at9 = zscore(c, z, m);
        /* Trimmed (here: removed) while above the floor, it stays out
         * for the rest of the window at 10 ... */
        freeReplyObject(sync_cmd(c, "ZREM %s %s", z, m));
        u.points = 1;
        apply_wait(&f, st, &u, 1, &r);
        long long removed = zscore(c, z, m);
        if (floor(r.now / TOP_REFRESH_S) != w0 || w1 != w0)
            continue;
        assert_int_equal(at6, 5);
        assert_int_equal(at9, 8);
        assert_int_equal(removed, -1);
        break;
    }
    if (attempt == 3)
        fail_msg("no three calls within one %d s window", TOP_REFRESH_S);
    /* ... and comes back with the first update of the next one (a
     * thousandth of a point each: the score stays between 8 and 16). */
    struct store_update u = upd("ip:a", hl.kind, hl.param, 0.001);
    for (int i = 0; i < 2 * TOP_REFRESH_S * 10; i++) {
        apply_wait(&f, st, &u, 1, &r);
        if (floor(r.now / TOP_REFRESH_S) != w0)
            break;
        assert_int_equal(zscore(c, z, m), -1);
        usleep(100 * 1000);
    }
    if (floor(r.now / TOP_REFRESH_S) == w0)
        fail_msg("Redis TIME stayed in one window for %d s", 2 * TOP_REFRESH_S);
    long long back = zscore(c, z, m);
    if (back < 9)
        fail_msg("member not back in the next window: ZSCORE %lld, want >= 9", back);
    freeReplyObject(sync_cmd(c, "DEL %s %s", z, m));
    redisFree(c);
    close_store(&f, st);
    fixture_fini(&f);
}

/* A member that lives less than a TOP_REFRESH window (leaking 2 points a
 * second from 12: 6 s) and is kept hot within one: each update renews its
 * expiry without a ZADD, and the set's expiry must follow it, or the set
 * vanishes while its member is still above the floor (the top query then
 * answers nothing until the next window). */
static void test_store_redis_top_set_follows_short_members(void **state)
{
    struct fixture f;
    struct result r;
    const char *z = "sgtest:tshort:@top:ip", *m = "sgtest:tshort:ip:s";

    (void)state;
    fixture_init(&f);
    redisContext *c = sync_connect();
    freeReplyObject(sync_cmd(c, "DEL %s %s", z, m));
    struct store *st = open_top_store(&f, "sgtest:tshort:", 100);

    struct store_update u = upd("ip:s", DECAY_LEAK, 2, 12);
    apply_wait(&f, st, &u, 1, &r);
    assert_int_equal(r.status, STORE_OK);
    assert_int_equal(zscore(c, z, m), 12);
    /* Three more, back to back: at most one can be the first of a new
     * window (which writes the member again anyway). */
    u.points = 0.6;
    for (int i = 0; i < 3; i++) {
        apply_wait(&f, st, &u, 1, &r);
        assert_int_equal(r.status, STORE_OK);
        long long key_ms = sync_int(c, "PTTL %s", m), set_ms = sync_int(c, "PTTL %s", z);
        if (key_ms <= 0 || set_ms < key_ms - 100)
            fail_msg("update %d: the member expires in %lld ms, its set in %lld ms", i + 1,
                     key_ms, set_ms);
    }
    freeReplyObject(sync_cmd(c, "DEL %s %s", z, m));
    redisFree(c);
    close_store(&f, st);
    fixture_fini(&f);
}

/* While a batch is out, the applies of later loop turns wait and go out
 * together when its reply comes (REDIS_BATCH_MAX_OUT): four requests in
 * four turns make two calls, not four. Redis is held busy by a script on
 * another connection so that the first call is surely still out. */
static void test_store_redis_hold_while_out(void **state)
{
    struct fixture f;
    struct result r[4];
    struct decay hl = {DECAY_HALF_LIFE, 600};
    static const char busy[] = "local function ms() local t = redis.call('TIME') "
                               "return t[1] * 1000 + t[2] / 1000 end "
                               "local t0 = ms() while ms() - t0 < 300 do end return 1";

    (void)state;
    fixture_init(&f);
    redisContext *c = sync_connect(), *sleeper = sync_connect();
    freeReplyObject(sync_cmd(c, "DEL sgtest:hold:k"));
    struct store *st = open_store(&f, getenv("SMTPGUARD_TEST_REDIS"), NULL, "sgtest:hold:", 3000);
    wait_up(&f, st);
    /* Loaded, so that no NOSCRIPT retry blurs the count. */
    memset(&r[0], 0, sizeof r[0]);
    struct store_update warm = upd("k", hl.kind, hl.param, 0);
    apply_wait(&f, st, &warm, 1, &r[0]);

    int done = 0;
    if (redisAppendCommand(sleeper, "EVAL %s 0", busy) != REDIS_OK)
        fail_msg("cannot queue the busy script");
    while (!done)
        if (redisBufferWrite(sleeper, &done) != REDIS_OK)
            fail_msg("cannot send the busy script: %s", sleeper->errstr);
    usleep(50 * 1000);  /* Redis is inside it now */

    uint64_t calls0 = metrics_own->script_calls, reqs0 = metrics_own->script_requests;
    for (int i = 0; i < 4; i++) {
        struct store_update u = upd("k", hl.kind, hl.param, 1);
        memset(&r[i], 0, sizeof r[i]);
        store_apply(st, &u, 1, on_done, &r[i]);
        /* Its own loop turns: the prepare that sends a batch runs. */
        for (int turn = 0; turn < 3; turn++)
            uv_run(&f.loop, UV_RUN_NOWAIT);
        assert_int_equal(r[i].calls, 0);
    }
    /* The first went out alone, the other three wait. */
    assert_int_equal(metrics_own->script_calls - calls0, 1);
    if (!run_until(&f, &r[3].calls, NULL, NULL, 3000))
        fail_msg("no answer to the held requests within 3 s");
    assert_int_equal(metrics_own->script_calls - calls0, 2);
    assert_int_equal(metrics_own->script_requests - reqs0, 4);
    /* The held three went out before the first was answered, so Redis
     * ran them while the first answer was being written. */
    assert_int_equal(r[0].script_calls - calls0, 2);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_int_equal(r[i].status, STORE_OK);
        /* In order: 1, 2, 3, 4 points (decay over well under a second). */
        if (!(r[i].scores[0] > i + 1 - 1e-3 && r[i].scores[0] <= i + 1))
            fail_msg("request %d got %.17g, want about %d", i, r[i].scores[0], i + 1);
    }
    redisReply *br = NULL;
    if (redisGetReply(sleeper, (void **)&br) != REDIS_OK || !br || br->type != REDIS_REPLY_INTEGER)
        fail_msg("the busy script did not finish");
    freeReplyObject(br);
    freeReplyObject(sync_cmd(c, "DEL sgtest:hold:k"));
    redisFree(sleeper);
    redisFree(c);
    close_store(&f, st);
    fixture_fini(&f);
}

/* --- respconn: the connection under the store ------------------------- */

struct rc_log {
    int replies;                /* callbacks with a reply */
    int nulls;                  /* callbacks with NULL */
    int order_errors;           /* replies not in the order sent */
    int events;                 /* on_event calls */
    int last_status;            /* of the last event */
    char why[128];              /* of the last event */
    long long next;             /* the ECHO value expected next */
    int events_before_nulls;    /* events seen before a NULL callback */
    struct respconn *close_in;  /* close this connection from the first reply */
    size_t big;                 /* length of the big value expected, or 0 */
};

static void rc_event(struct respconn *rc, int status, const char *why, void *arg)
{
    struct rc_log *l = arg;
    (void)rc;
    l->events++;
    l->last_status = status;
    snprintf(l->why, sizeof l->why, "%s", why);
}

static void rc_echo_reply(struct respconn *rc, const struct redisReply *reply, void *arg)
{
    struct rc_log *l = arg;
    (void)rc;
    if (!reply) {
        l->nulls++;
        if (l->events)
            l->events_before_nulls++;
        return;
    }
    l->replies++;
    if (l->big) {
        if (reply->type != REDIS_REPLY_STRING || (size_t)reply->len != l->big ||
            reply->str[0] != 'v' || reply->str[l->big - 1] != 'v')
            l->order_errors++;
        return;
    }
    char want[32];
    snprintf(want, sizeof want, "%lld", l->next++);
    if (reply->type != REDIS_REPLY_STRING || strcmp(reply->str, want) != 0)
        l->order_errors++;
    if (l->close_in) {
        struct respconn *c = l->close_in;
        l->close_in = NULL;
        respconn_close(c);
        /* Closed: sending again is refused, not queued. */
        const char *argv[1] = {"PING"};
        size_t len[1] = {4};
        if (respconn_send(c, 1, argv, len, rc_echo_reply, l) != -EIO)
            l->order_errors++;
    }
}

static void rc_send_echo(struct respconn *rc, struct rc_log *l, long long v)
{
    char num[32];
    const char *argv[2] = {"ECHO", num};
    size_t len[2] = {4, (size_t)snprintf(num, sizeof num, "%lld", v)};
    assert_int_equal(respconn_send(rc, 2, argv, len, rc_echo_reply, l), 0);
}

/* run_until_count - run the loop until *count reaches want or ms pass. */
static void run_until_count(struct fixture *f, const int *count, int want, unsigned ms)
{
    uint64_t end = uv_hrtime() + (uint64_t)ms * 1000000;

    uv_timer_start(&f->tick, on_tick, 5, 5);
    while (*count < want && uv_hrtime() < end)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_timer_stop(&f->tick);
}

/* Thousands of commands pipelined before the connection is even up come
 * back in order; a reply larger than the read buffer and the arena's
 * chunks comes back whole; a host name is resolved. */
static void test_respconn_pipeline(void **state)
{
    struct fixture f;
    struct rc_log l = {0};
    enum { N = 5000, BIG = 300000 };
    (void)state;
    fixture_init(&f);

    struct respconn *rc = respconn_open(&f.loop, "localhost", redis_port, NULL, 0, rc_event, &l);
    for (long long i = 0; i < N; i++)
        rc_send_echo(rc, &l, i);
    assert_int_equal(l.replies, 0);     /* never from inside send */
    assert_int_equal(respconn_pending(rc), N);
    run_until_count(&f, &l.replies, N, 5000);
    assert_int_equal(l.events, 1);
    assert_int_equal(l.last_status, 0);
    assert_int_equal(l.replies, N);
    assert_int_equal(l.order_errors, 0);
    assert_int_equal(respconn_pending(rc), 0);

    char *v = malloc(BIG);
    assert_non_null(v);
    memset(v, 'v', BIG);
    const char *set[3] = {"SET", "sgtest:rc:big", v};
    size_t setlen[3] = {3, 13, BIG};
    const char *get[2] = {"GET", "sgtest:rc:big"};
    size_t getlen[2] = {3, 13};
    struct rc_log lb = {0};
    lb.big = BIG;
    assert_int_equal(respconn_send(rc, 3, set, setlen, rc_echo_reply, &l), 0);
    assert_int_equal(respconn_send(rc, 2, get, getlen, rc_echo_reply, &lb), 0);
    free(v);
    if (!run_until(&f, &lb.replies, NULL, NULL, 5000))
        fail_msg("no reply to GET of the big value");
    assert_int_equal(lb.order_errors, 0);
    assert_int_equal(l.replies, N + 1);
    respconn_close(rc);
    assert_int_equal(l.events, 1);      /* none after close */
    fixture_fini(&f);
}

/* Closing from inside a reply callback: the commands after it get NULL,
 * no event comes, a send is refused. */
static void test_respconn_close_in_callback(void **state)
{
    struct fixture f;
    struct rc_log l = {0};
    (void)state;
    fixture_init(&f);

    struct respconn *rc = respconn_open(&f.loop, redis_host, redis_port, NULL, 0, rc_event, &l);
    l.close_in = rc;
    for (long long i = 0; i < 10; i++)
        rc_send_echo(rc, &l, i);
    run_until(&f, &l.replies, NULL, NULL, 3000);
    uv_run(&f.loop, UV_RUN_NOWAIT);
    assert_int_equal(l.replies, 1);
    assert_int_equal(l.nulls, 9);
    assert_int_equal(l.order_errors, 0);
    assert_int_equal(l.events, 1);      /* the connect, nothing after the close */
    fixture_fini(&f);
}

/* A refused connection: the queued command gets NULL, then one event
 * says why; nothing is left on the loop. */
static void test_respconn_refused(void **state)
{
    struct fixture f;
    struct rc_log l = {0};
    (void)state;
    fixture_init(&f);

    struct respconn *rc = respconn_open(&f.loop, "127.0.0.1", 1, NULL, 0, rc_event, &l);
    rc_send_echo(rc, &l, 0);
    assert_int_equal(l.nulls, 0);
    if (!run_until(&f, &l.events, NULL, NULL, 3000))
        fail_msg("no event for a refused connection");
    assert_int_equal(l.nulls, 1);
    assert_int_equal(l.events_before_nulls, 0);
    assert_true(l.last_status < 0);
    if (!strstr(l.why, "connect"))
        fail_msg("why got \"%s\", want a connect error", l.why);
    fixture_fini(&f);
}

int main(void)
{
    const char *addr = getenv("SMTPGUARD_TEST_REDIS");
    const char *colon;

    if (!addr || !(colon = strrchr(addr, ':')) || (size_t)(colon - addr) >= sizeof redis_host) {
        fprintf(stderr, "test_store_redis: set SMTPGUARD_TEST_REDIS=host:port "
                        "(scripts/with-redis does)\n");
        return 77;
    }
    memcpy(redis_host, addr, (size_t)(colon - addr));
    redis_port = atoi(colon + 1);
    log_threshold = LOG_LEVEL_WARN;
    /* hiredis write()s: a socket the server closed must give EPIPE, not
     * kill us (the daemon ignores SIGPIPE too). */
    signal(SIGPIPE, SIG_IGN);

    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_redis_script_vectors),
        cmocka_unit_test(test_store_redis_script_expiry_kept),
        cmocka_unit_test(test_store_redis_script_time_and_bad_args),
        cmocka_unit_test(test_store_redis_apply_and_decay),
        cmocka_unit_test(test_store_redis_read_does_not_create),
        cmocka_unit_test(test_store_redis_shared_between_stores),
        cmocka_unit_test(test_store_redis_noscript),
        cmocka_unit_test(test_store_redis_reconnects_after_kill),
        cmocka_unit_test(test_store_redis_ipv6),
        cmocka_unit_test(test_store_redis_deferred_and_close_pending),
        cmocka_unit_test(test_store_redis_down_fails_fast),
        cmocka_unit_test(test_store_redis_bad_addresses),
        cmocka_unit_test_teardown(test_store_redis_sigstop, sigstop_teardown),
        cmocka_unit_test_teardown(test_store_redis_stopped_under_load_is_dropped,
                                  sigstop_teardown),
        cmocka_unit_test_teardown(test_store_redis_password, password_teardown),
        cmocka_unit_test(test_store_redis_latency),
        cmocka_unit_test(test_store_redis_peek_and_top),
        cmocka_unit_test(test_store_redis_batch),
        cmocka_unit_test(test_store_redis_top_refresh),
        cmocka_unit_test(test_store_redis_top_set_follows_short_members),
        cmocka_unit_test(test_store_redis_hold_while_out),
        cmocka_unit_test(test_respconn_pipeline),
        cmocka_unit_test(test_respconn_close_in_callback),
        cmocka_unit_test(test_respconn_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
