/*
 * test_dnscache - the answer cache with a clock driven by the test: TTLs
 * with floor, ceiling and negative answers, failures not kept, questions
 * in flight coalesced, waiters cancelled, eviction, and stale handles.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "dnscache.h"

static const struct dnscache_ttl ttl = {.floor_s = 10, .ceiling_s = 3600, .negative_s = 60};

/* What the waiters saw. */
struct seen {
    int calls;                  /* callbacks run */
    enum dns_status status;     /* of the last one */
};

static void on_answer(struct dnscache_waiter *w, const struct dns_rrset *rr)
{
    struct seen *s = w->arg;
    s->calls++;
    s->status = rr->status;
}

static struct dns_rrset found(void)
{
    struct dns_rrset rr;
    memset(&rr, 0, sizeof rr);
    rr.status = DNS_FOUND;
    rr.n = 1;
    return rr;
}

static struct dns_rrset with_status(enum dns_status st)
{
    struct dns_rrset rr;
    memset(&rr, 0, sizeof rr);
    rr.status = st;
    return rr;
}

static void waiter(struct dnscache_waiter *w, struct seen *s)
{
    memset(w, 0, sizeof *w);
    w->cb = on_answer;
    w->arg = s;
}

/* ask - a lookup that must miss, completed at once. */
static void ask(struct dnscache *c, const char *name, struct dns_rrset rr, int64_t ttl_s,
                uint64_t now)
{
    struct dnscache_ref ref;
    const struct dns_rrset *got;
    assert_int_equal(dnscache_lookup(c, DNS_T_A, name, now, &ref, &got), DNSCACHE_MISS);
    assert_true(dnscache_complete(c, ref, &rr, ttl_s, now));
}

static enum dnscache_result peek(struct dnscache *c, const char *name, uint64_t now)
{
    struct dnscache_ref ref;
    const struct dns_rrset *got;
    return dnscache_lookup(c, DNS_T_A, name, now, &ref, &got);
}

static void test_dnscache_ttl_floor_ceiling_negative(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        enum dns_status status;
        int64_t ttl_s;          /* the answer's own, -1 = none */
        uint64_t kept_ms;       /* how long it must answer from the cache */
    } cases[] = {
        {"own TTL", DNS_FOUND, 300, 300000},
        {"below the floor", DNS_FOUND, 2, 10000},
        {"above the ceiling", DNS_FOUND, 86400, 3600000},
        {"negative with SOA", DNS_NOTFOUND, 120, 120000},
        {"negative without SOA", DNS_NOTFOUND, -1, 60000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct dnscache *c = dnscache_new(16, &ttl);
        uint64_t t0 = 1000000;
        ask(c, "q.example", with_status(cases[i].status), cases[i].ttl_s, t0);
        if (peek(c, "q.example", t0 + cases[i].kept_ms - 1) != DNSCACHE_HIT) {
            print_error("%s: got a miss %llu ms on, want a hit\n", cases[i].label,
                        (unsigned long long)cases[i].kept_ms - 1);
            fail();
        }
        if (peek(c, "q.example", t0 + cases[i].kept_ms) != DNSCACHE_MISS) {
            print_error("%s: got a hit %llu ms on, want it expired\n", cases[i].label,
                        (unsigned long long)cases[i].kept_ms);
            fail();
        }
        dnscache_free(c);
    }
}

static void test_dnscache_hit_returns_answer_and_types_differ(void **state)
{
    (void)state;
    struct dnscache *c = dnscache_new(16, &ttl);
    ask(c, "q.example", found(), 300, 0);
    struct dnscache_ref ref;
    const struct dns_rrset *got = NULL;
    assert_int_equal(dnscache_lookup(c, DNS_T_A, "q.example", 1, &ref, &got), DNSCACHE_HIT);
    assert_int_equal(got->status, DNS_FOUND);
    /* Same name, another type: another question. */
    assert_int_equal(dnscache_lookup(c, DNS_T_MX, "q.example", 1, &ref, &got), DNSCACHE_MISS);
    struct dnscache_stats st;
    dnscache_stats_get(c, &st);
    assert_int_equal(st.hits, 1);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.entries, 2);
    dnscache_free(c);
}

static void test_dnscache_failure_not_kept(void **state)
{
    (void)state;
    struct dnscache *c = dnscache_new(16, &ttl);
    struct dnscache_ref ref;
    const struct dns_rrset *got;
    assert_int_equal(dnscache_lookup(c, DNS_T_A, "q.example", 0, &ref, &got), DNSCACHE_MISS);
    struct dns_rrset fail_rr = with_status(DNS_TEMPFAIL);
    assert_true(dnscache_complete(c, ref, &fail_rr, 300, 0));
    /* The asker can still read it through its handle ... */
    const struct dns_rrset *now = dnscache_get(c, ref);
    assert_non_null(now);
    assert_int_equal(now->status, DNS_TEMPFAIL);
    /* ... but the next request asks again. */
    assert_int_equal(peek(c, "q.example", 0), DNSCACHE_MISS);
    dnscache_free(c);
}

static void test_dnscache_coalesces_waiters(void **state)
{
    (void)state;
    struct dnscache *c = dnscache_new(16, &ttl);
    struct dnscache_ref r1, r2, r3;
    const struct dns_rrset *got;
    struct seen s[3] = {{0}};
    struct dnscache_waiter w[3];
    assert_int_equal(dnscache_lookup(c, DNS_T_A, "q.example", 0, &r1, &got), DNSCACHE_MISS);
    assert_null(dnscache_get(c, r1)); /* pending */
    assert_int_equal(dnscache_lookup(c, DNS_T_A, "q.example", 5, &r2, &got), DNSCACHE_PENDING);
    assert_int_equal(dnscache_lookup(c, DNS_T_A, "q.example", 6, &r3, &got), DNSCACHE_PENDING);
    assert_memory_equal(&r1, &r2, sizeof r1);
    for (int i = 0; i < 3; i++) {
        waiter(&w[i], &s[i]);
        assert_int_equal(dnscache_wait(c, i == 0 ? r1 : i == 1 ? r2 : r3, &w[i]), 0);
    }
    /* One of them gives up (its deadline passed) before the answer. */
    dnscache_unwait(c, &w[1]);
    dnscache_unwait(c, &w[1]); /* twice is harmless */
    struct dns_rrset rr = found();
    assert_true(dnscache_complete(c, r1, &rr, 300, 10));
    assert_int_equal(s[0].calls, 1);
    assert_int_equal(s[1].calls, 0);
    assert_int_equal(s[2].calls, 1);
    assert_int_equal(s[2].status, DNS_FOUND);
    assert_false(w[0].linked || w[2].linked);
    /* A second answer to the same question (a duplicate) is ignored. */
    assert_false(dnscache_complete(c, r1, &rr, 300, 11));
    assert_int_equal(s[0].calls, 1);
    /* Waiting on a question that is answered already is refused. */
    struct seen late = {0};
    struct dnscache_waiter lw;
    waiter(&lw, &late);
    assert_int_equal(dnscache_wait(c, r1, &lw), -ESTALE);
    struct dnscache_stats st;
    dnscache_stats_get(c, &st);
    assert_int_equal(st.coalesced, 2);
    assert_int_equal(st.misses, 1);
    dnscache_free(c);
}

static void test_dnscache_eviction_and_stale_handles(void **state)
{
    (void)state;
    struct dnscache *c = dnscache_new(4, &ttl);
    char name[32];
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "q%d.example", i);
        ask(c, name, found(), 100 + i, 0); /* q0 expires first */
    }
    /* An abandoned question in flight: its slot must not be taken. */
    struct dnscache_ref late;
    const struct dns_rrset *got;
    assert_int_equal(peek(c, "q0.example", 200000), DNSCACHE_MISS); /* expired: pending again */
    assert_int_equal(dnscache_lookup(c, DNS_T_A, "q0.example", 200000, &late, &got), DNSCACHE_PENDING);
    /* A new name takes the slot of the entry that expires first (q1). */
    struct dnscache_ref ref;
    assert_int_equal(dnscache_lookup(c, DNS_T_A, "new.example", 50000, &ref, &got), DNSCACHE_MISS);
    assert_int_equal(peek(c, "q1.example", 50000), DNSCACHE_MISS);
    /* The late answer of q0 still lands in its own entry. */
    struct dns_rrset rr = found();
    assert_true(dnscache_complete(c, late, &rr, 300, 200001));
    assert_int_equal(peek(c, "q0.example", 200002), DNSCACHE_HIT);
    /* A handle from before a slot was reused is stale. */
    struct dnscache_ref old = ref;
    assert_true(dnscache_complete(c, ref, &rr, 300, 50001));
    old.gen--;
    assert_null(dnscache_get(c, old));
    assert_false(dnscache_complete(c, old, &rr, 300, 50002));
    struct dnscache_waiter w;
    struct seen s = {0};
    waiter(&w, &s);
    assert_int_equal(dnscache_wait(c, old, &w), -ESTALE);
    dnscache_free(c);
}

static void test_dnscache_full_of_pending(void **state)
{
    (void)state;
    struct dnscache *c = dnscache_new(2, &ttl);
    struct dnscache_ref ref;
    const struct dns_rrset *got;
    assert_int_equal(dnscache_lookup(c, DNS_T_A, "a.example", 0, &ref, &got), DNSCACHE_MISS);
    assert_int_equal(dnscache_lookup(c, DNS_T_A, "b.example", 0, &ref, &got), DNSCACHE_MISS);
    /* Questions in flight are never evicted: no room, a failure. */
    assert_int_equal(dnscache_lookup(c, DNS_T_A, "c.example", 0, &ref, &got), DNSCACHE_FULL);
    /* An over-long name is refused, not truncated. */
    char longname[300];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    assert_int_equal(dnscache_lookup(c, DNS_T_A, longname, 0, &ref, &got), DNSCACHE_FULL);
    dnscache_free(c);
}

/* A waiter whose callback asks the cache again (the next stage of a
 * check): the entry being answered stays put. */
struct chain {
    struct dnscache *c;
    enum dnscache_result next;  /* what the nested lookup got */
    int calls;
};

static void on_chain(struct dnscache_waiter *w, const struct dns_rrset *rr)
{
    (void)rr;
    struct chain *ch = w->arg;
    struct dnscache_ref ref;
    const struct dns_rrset *got;
    ch->calls++;
    ch->next = dnscache_lookup(ch->c, DNS_T_AAAA, "next.example", 0, &ref, &got);
}

static void test_dnscache_callback_may_look_up(void **state)
{
    (void)state;
    struct dnscache *c = dnscache_new(1, &ttl);
    struct dnscache_ref ref;
    const struct dns_rrset *got;
    assert_int_equal(dnscache_lookup(c, DNS_T_A, "first.example", 0, &ref, &got), DNSCACHE_MISS);
    struct chain ch = {c, DNSCACHE_HIT, 0};
    struct dnscache_waiter w;
    memset(&w, 0, sizeof w);
    w.cb = on_chain;
    w.arg = &ch;
    assert_int_equal(dnscache_wait(c, ref, &w), 0);
    struct dns_rrset rr = found();
    assert_true(dnscache_complete(c, ref, &rr, 300, 0));
    assert_int_equal(ch.calls, 1);
    /* One slot, pinned while its waiters run: the nested lookup cannot
     * evict it (and must not: rr points into it). */
    assert_int_equal(ch.next, DNSCACHE_FULL);
    assert_int_equal(peek(c, "first.example", 1), DNSCACHE_HIT);
    dnscache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dnscache_ttl_floor_ceiling_negative),
        cmocka_unit_test(test_dnscache_hit_returns_answer_and_types_differ),
        cmocka_unit_test(test_dnscache_failure_not_kept),
        cmocka_unit_test(test_dnscache_coalesces_waiters),
        cmocka_unit_test(test_dnscache_eviction_and_stale_handles),
        cmocka_unit_test(test_dnscache_full_of_pending),
        cmocka_unit_test(test_dnscache_callback_may_look_up),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
