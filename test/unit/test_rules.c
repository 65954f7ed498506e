/*
 * test_rules - conditions, points, keys, decisions and answer texts, on
 * rules compiled from YAML and requests built by hand (no store, no I/O).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actions.h"
#include "config.h"
#include "config_yaml.h"
#include "rules.h"

static const char *rules_yaml =
    "counters:\n"
    "  ip:   { key: client_address, half_life: 10m }\n"
    "  net:  { key: client_address/24/48, half_life: 10m }\n"
    "  user: { key: sasl_username, leak: 100/h }\n"
    "  pair: { key: [sasl_username, sender_domain], leak: 10/m }\n"
    "  mb:   { key: sasl_username, leak: 500/d, precision: 1 }\n"
    "lists:\n"
    "  trusted: [\"10.0.0.0/8\", \"2001:db8:ffff::/48\"]\n"
    "  bad_domains: { entries: [\"spam.example\"], subdomains: true }\n"
    "points:\n"
    "  - { name: trusted, when: { client_address: { in: trusted } }, then: ok }\n"
    "  - { name: vip, when: { sasl_username: boss }, then: permit }\n"
    "  - { name: rcpt, when: { protocol_state: RCPT }, add: { ip: 1, net: 1, user: 1, pair: 2 } }\n"
    "  - { name: eom, when: { protocol_state: END-OF-MESSAGE }, add: { mb: size/1000000 } }\n"
    "  - { name: bad, when: { sender_domain: { in: bad_domains } }, add: { ip: 50 } }\n"
    "  - { name: watch, mode: log, when: { helo_name: { re: \"^ylmf\" } }, add: { ip: 100 } }\n"
    "  - { name: fromto, when: { sender: { same_as: recipient } }, add: { ip: 7 } }\n"
    "  - { name: nullsender, when: { sender: \"\", protocol_state: RCPT }, add: { user: 3 } }\n"
    "  - { name: big, when: { size: \"> 10000000\" }, add: { ip: 5 } }\n"
    "actions:\n"
    "  - { name: would-block, mode: log, when: { ip: \">= 3\" }, do: reject }\n"
    "  - { name: flood, when: { ip: \">= 5\" }, do: [reject, log], message: \"550 5.7.1 %{client_address} score %{score.ip} rule %{rule}\" }\n"
    "  - { name: slow, when: { any: [ { user: \">= 4\" }, { net: \">= 10\" } ] }, do: defer, message: \"try later %{sasl_username}\" }\n"
    "  - { name: plain, when: { mb: \">= 0.5\" }, do: reject }\n"
    "  - { name: tag, when: { not: { helo_name: { re: \"\\\\.\" } }, protocol_state: RCPT }, do: \"prepend X-Helo: %{helo_name}\" }\n"
    "  - { name: quiet-user, when: { user: { not: \">= 1\" } }, do: warn }\n"
    "  - { name: quiet-user-outer, when: { not: { user: \">= 1\" } }, do: warn }\n"
    "  - { name: show, when: { protocol_state: DATA }, do: defer, message: \"%{sasl_username} sent %{score.pair} to %{key.pair}\" }\n";

static struct config *cfg;

static int setup(void **state)
{
    (void)state;
    struct config_errors errs = {0};
    cfg = config_load_string("rules.yaml", rules_yaml, strlen(rules_yaml), &errs);
    for (size_t i = 0; i < errs.n; i++)
        print_error("unexpected: %s\n", errs.msgs[i]);
    config_errors_fini(&errs);
    return cfg ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    config_unref(cfg);
    return 0;
}

static void set(struct request *req, enum attr a, const char *v)
{
    request_set(req, a, v, strlen(v));
}

static void rcpt_request(struct request *req, const char *client, const char *user)
{
    request_reset(req);
    set(req, ATTR_REQUEST, "smtpd_access_policy");
    set(req, ATTR_PROTOCOL_STATE, "RCPT");
    set(req, ATTR_CLIENT_ADDRESS, client);
    set(req, ATTR_HELO_NAME, "pc.customer.example");
    set(req, ATTR_SENDER, "Alice@Customer.Example");
    set(req, ATTR_RECIPIENT, "bob@dest.example");
    if (user)
        set(req, ATTR_SASL_USERNAME, user);
}

static int counter(const char *name)
{
    return rules_find_counter(cfg->rules, name, strlen(name));
}

/* The update of a counter in ev, or NULL. */
static const struct store_update *update_of(const struct eval *ev, const char *name)
{
    int ci = counter(name);
    return ev->slot[ci] >= 0 ? &ev->updates[ev->slot[ci]] : NULL;
}

static void assert_update(const struct eval *ev, const char *name, const char *key, double points)
{
    const struct store_update *u = update_of(ev, name);
    if (!u) {
        print_error("counter %s: got no update, want key %s\n", name, key);
        fail();
    }
    if (strlen(key) != u->key_len || memcmp(key, u->key, u->key_len) != 0) {
        print_error("counter %s: got key %.*s, want %s\n", name, (int)u->key_len, u->key, key);
        fail();
    }
    if (u->points != points) {
        print_error("counter %s: got %g points, want %g\n", name, u->points, points);
        fail();
    }
}

static void test_rules_points_build_keys_and_add(void **state)
{
    (void)state;
    struct request req;
    struct eval ev;
    request_init(&req);
    rcpt_request(&req, "192.0.2.77", "Carol");
    assert_false(rules_eval_points(cfg->rules, &req, &ev));
    assert_update(&ev, "ip", "ip:192.0.2.77", 1);
    assert_update(&ev, "net", "net:192.0.2.0/24", 1);
    assert_update(&ev, "user", "user:carol", 1); /* SASL names fold case */
    assert_update(&ev, "pair", "pair:carol|customer.example", 2);
    /* mb is read by an action, so it is fetched with 0 points. */
    assert_update(&ev, "mb", "mb:carol", 0);
    assert_int_equal(ev.n_matched, 1);
    assert_string_equal(ev.matched[0]->name, "rcpt");

    /* IPv6 network key uses the configured /48. */
    rcpt_request(&req, "2001:db8:1:2::25", NULL);
    rules_eval_points(cfg->rules, &req, &ev);
    assert_update(&ev, "net", "net:2001:db8:1::/48", 1);
    /* No SASL user: user counters are not counted at all. */
    assert_null(update_of(&ev, "user"));
    assert_null(update_of(&ev, "pair"));
    request_fini(&req);
}

static void test_rules_whitelist_stops_counting(void **state)
{
    (void)state;
    struct request req;
    struct eval ev;
    request_init(&req);
    rcpt_request(&req, "10.1.2.3", "carol");
    assert_true(rules_eval_points(cfg->rules, &req, &ev));
    assert_string_equal(ev.stopped_by->name, "trusted");
    assert_int_equal(ev.stopped_by->then, VERDICT_DUNNO);
    assert_int_equal(ev.n_updates, 0);
    rcpt_request(&req, "192.0.2.1", "boss");
    assert_true(rules_eval_points(cfg->rules, &req, &ev));
    assert_int_equal(ev.stopped_by->then, VERDICT_PERMIT);
    request_fini(&req);
}

static void test_rules_conditions(void **state)
{
    (void)state;
    struct request req;
    struct eval ev;
    request_init(&req);

    /* Domain list with subdomains, case-insensitive. */
    rcpt_request(&req, "192.0.2.1", NULL);
    set(&req, ATTR_SENDER, "x@Mail.SPAM.example");
    rules_eval_points(cfg->rules, &req, &ev);
    assert_update(&ev, "ip", "ip:192.0.2.1", 51);

    /* Log-only points rule: noted, adds nothing. */
    rcpt_request(&req, "192.0.2.1", NULL);
    set(&req, ATTR_HELO_NAME, "ylmf-pc");
    rules_eval_points(cfg->rules, &req, &ev);
    assert_update(&ev, "ip", "ip:192.0.2.1", 1);
    assert_int_equal(ev.n_would_points, 1);

    /* from = to, case-insensitively. */
    rcpt_request(&req, "192.0.2.1", NULL);
    set(&req, ATTR_RECIPIENT, "alice@customer.example");
    rules_eval_points(cfg->rules, &req, &ev);
    assert_update(&ev, "ip", "ip:192.0.2.1", 8);
    /* Only letters fold: '@' and '`' differ by the same bit as 'A' and
     * 'a', and are not the same character. */
    rcpt_request(&req, "192.0.2.1", NULL);
    set(&req, ATTR_RECIPIENT, "alice`customer.example");
    rules_eval_points(cfg->rules, &req, &ev);
    assert_update(&ev, "ip", "ip:192.0.2.1", 1);
    /* protocol_state compares folded too: "Rcpt" is RCPT, "RCPU" is not. */
    rcpt_request(&req, "192.0.2.1", NULL);
    set(&req, ATTR_PROTOCOL_STATE, "Rcpt");
    rules_eval_points(cfg->rules, &req, &ev);
    assert_update(&ev, "ip", "ip:192.0.2.1", 1);
    rcpt_request(&req, "192.0.2.1", NULL);
    set(&req, ATTR_PROTOCOL_STATE, "RCPU");
    rules_eval_points(cfg->rules, &req, &ev);
    assert_update(&ev, "ip", "ip:192.0.2.1", 0);   /* read by the actions only */

    /* Null sender: present and empty. */
    rcpt_request(&req, "192.0.2.1", "carol");
    set(&req, ATTR_SENDER, "");
    rules_eval_points(cfg->rules, &req, &ev);
    assert_update(&ev, "user", "user:carol", 4);
    /* ... and the sender_domain key part is missing, so no pair. */
    assert_null(update_of(&ev, "pair"));

    /* Numeric comparison and points from an attribute. */
    request_reset(&req);
    set(&req, ATTR_PROTOCOL_STATE, "END-OF-MESSAGE");
    set(&req, ATTR_CLIENT_ADDRESS, "192.0.2.1");
    set(&req, ATTR_SASL_USERNAME, "carol");
    set(&req, ATTR_SIZE, "25000000");
    rules_eval_points(cfg->rules, &req, &ev);
    assert_update(&ev, "mb", "mb:carol", 25);
    assert_update(&ev, "ip", "ip:192.0.2.1", 5);
    request_fini(&req);
}

static void decide_with(struct request *req, struct eval *ev, const double *scores_by_counter)
{
    double scores[RULES_MAX_COUNTERS];
    for (size_t u = 0; u < ev->n_updates; u++)
        scores[u] = scores_by_counter[ev->update_counter[u]];
    rules_set_scores(cfg->rules, ev, scores, ev->n_updates);
    rules_decide(cfg->rules, req, ev);
}

static void test_rules_decide_first_match_and_answers(void **state)
{
    (void)state;
    struct request req;
    struct eval ev;
    char answer[ACTIONS_MAX_ANSWER];
    double scores[RULES_MAX_COUNTERS] = {0};
    request_init(&req);

    /* 4.9998 rounds to 5: the 5th recipient trips ">= 5". */
    rcpt_request(&req, "192.0.2.9", "carol");
    rules_eval_points(cfg->rules, &req, &ev);
    scores[counter("ip")] = 4.9998;
    decide_with(&req, &ev, scores);
    assert_non_null(ev.decided);
    assert_string_equal(ev.decided->name, "flood");
    assert_int_equal(ev.n_would, 1); /* the log-only rule before it */
    actions_format(cfg->rules, ev.decided, &req, &ev, answer, sizeof answer);
    assert_string_equal(answer, "550 5.7.1 192.0.2.9 score 5 rule flood");

    /* Below: the next rule, any-of on two counters, text without code. */
    scores[counter("ip")] = 4.4;
    scores[counter("user")] = 4;
    decide_with(&req, &ev, scores);
    assert_string_equal(ev.decided->name, "slow");
    actions_format(cfg->rules, ev.decided, &req, &ev, answer, sizeof answer);
    assert_string_equal(answer, "DEFER try later carol");

    /* Precision 1: 0.46 rounds to 0.5; no message: the default text. */
    scores[counter("user")] = 0;
    scores[counter("mb")] = 0.46;
    decide_with(&req, &ev, scores);
    assert_string_equal(ev.decided->name, "plain");
    actions_format(cfg->rules, ev.decided, &req, &ev, answer, sizeof answer);
    assert_string_equal(answer, "REJECT 5.7.1 Message rejected by policy");

    /* Nothing over: a HELO without a dot gets a header. CR/LF from the
     * client never reach Postfix. */
    scores[counter("mb")] = 0;
    set(&req, ATTR_HELO_NAME, "evil\r\naction=OK");
    decide_with(&req, &ev, scores);
    assert_non_null(ev.decided);
    assert_string_equal(ev.decided->name, "tag");
    actions_format(cfg->rules, ev.decided, &req, &ev, answer, sizeof answer);
    assert_null(strchr(answer, '\r'));
    assert_null(strchr(answer, '\n'));
    assert_int_equal(strncmp(answer, "PREPEND X-Helo: evil", 20), 0);

    /* Nothing at all matches: DUNNO. */
    set(&req, ATTR_HELO_NAME, "pc.example");
    scores[counter("user")] = 2; /* neither "slow" (>= 4) nor "quiet-user" (< 1) */
    decide_with(&req, &ev, scores);
    assert_null(ev.decided);
    actions_format(cfg->rules, NULL, &req, &ev, answer, sizeof answer);
    assert_string_equal(answer, "DUNNO");
    request_fini(&req);
}

/* A counter whose score is unknown (key missing) never matches. */
static void test_rules_unknown_score_does_not_match(void **state)
{
    (void)state;
    struct request req;
    struct eval ev;
    double scores[RULES_MAX_COUNTERS] = {0};
    request_init(&req);
    rcpt_request(&req, "192.0.2.9", NULL);
    rules_eval_points(cfg->rules, &req, &ev);
    scores[counter("user")] = 100; /* would match "slow" if it applied */
    decide_with(&req, &ev, scores);
    assert_true(ev.decided == NULL || strcmp(ev.decided->name, "slow") != 0);
    request_fini(&req);
}

/* A message that starts with a variable never takes its SMTP code from
 * the client: "550 ..." as a SASL name must not turn a defer into a
 * reject. Counters a message shows are fetched with the request. */
static void test_rules_message_code_only_from_the_config(void **state)
{
    (void)state;
    struct request req;
    struct eval ev;
    char answer[ACTIONS_MAX_ANSWER];
    double scores[RULES_MAX_COUNTERS] = {0};
    request_init(&req);
    rcpt_request(&req, "192.0.2.9", "550 5.7.1 gotcha");
    set(&req, ATTR_PROTOCOL_STATE, "DATA");
    set(&req, ATTR_HELO_NAME, "pc.example");
    rules_eval_points(cfg->rules, &req, &ev);
    assert_non_null(update_of(&ev, "pair")); /* read because the message shows it */
    scores[counter("pair")] = 7;
    scores[counter("user")] = 2; /* keeps quiet-user from matching */
    decide_with(&req, &ev, scores);
    assert_non_null(ev.decided);
    assert_string_equal(ev.decided->name, "show");
    actions_format(cfg->rules, ev.decided, &req, &ev, answer, sizeof answer);
    assert_string_equal(answer, "DEFER 550 5.7.1 gotcha sent 7 to 550 5.7.1 gotcha|customer.example");
    request_fini(&req);
}

/* not: on a counter the request has no key for matches nothing. */
static void test_rules_not_on_missing_counter(void **state)
{
    (void)state;
    struct request req;
    struct eval ev;
    double scores[RULES_MAX_COUNTERS] = {0};
    request_init(&req);
    rcpt_request(&req, "192.0.2.9", NULL); /* no SASL user: no "user" score */
    set(&req, ATTR_HELO_NAME, "pc.example");
    rules_eval_points(cfg->rules, &req, &ev);
    decide_with(&req, &ev, scores);
    assert_null(ev.decided);
    rcpt_request(&req, "192.0.2.9", "carol"); /* score 0: "not >= 1" holds */
    set(&req, ATTR_HELO_NAME, "pc.example");
    rules_eval_points(cfg->rules, &req, &ev);
    decide_with(&req, &ev, scores);
    assert_non_null(ev.decided);
    assert_string_equal(ev.decided->name, "quiet-user");
    request_fini(&req);
}

/* utf8_valid - s[0..n) is well-formed UTF-8 (no overlong forms checked:
 * the template writes none). */
static bool utf8_valid(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
                                 : (c & 0xf8) == 0xf0 ? 4 : 0;
        if (len == 0 || i + len > n)
            return false;
        for (size_t k = 1; k < len; k++)
            if (((unsigned char)s[i + k] & 0xc0) != 0x80)
                return false;
        i += len;
    }
    return true;
}

/* An answer cut to ACTIONS_MAX_ANSWER ends between characters: a HELO
 * name of 600 two-byte characters in a reject text made 1,032 bytes
 * ending in half a character. */
static void test_rules_long_answer_stays_utf8(void **state)
{
    (void)state;
    static const char *yaml =
        "counters:\n"
        "  ip: { key: client_address, half_life: 10m }\n"
        "actions:\n"
        "  - { name: r, do: reject, message: \"over limit %{helo_name}\" }\n";
    struct config *c = config_from_yaml("utf8.yaml", yaml);
    struct request req;
    struct eval ev;
    char helo[1201], answer[ACTIONS_MAX_ANSWER];
    for (int i = 0; i < 600; i++)
        memcpy(helo + 2 * i, "\xc3\xa9", 2); /* é */
    helo[1200] = '\0';
    request_init(&req);
    for (int shift = 0; shift < 2; shift++) {
        /* Both parities of the cut: "over limit " is 11 bytes, and one
         * more ASCII byte moves every character by one. */
        rcpt_request(&req, "192.0.2.9", NULL);
        char name[1202];
        snprintf(name, sizeof name, "%s%s", shift ? "x" : "", helo);
        set(&req, ATTR_HELO_NAME, name);
        rules_eval_points(c->rules, &req, &ev);
        const struct action_rule *ar = rules_decide(c->rules, &req, &ev);
        assert_non_null(ar);
        size_t n = actions_format(c->rules, ar, &req, &ev, answer, sizeof answer);
        assert_true(n < sizeof answer);
        assert_int_equal(n, strlen(answer));
        assert_true(n >= sizeof answer - 4); /* cut, not emptied */
        if (!utf8_valid(answer, n))
            fail_msg("shift %d: %zu-byte answer is not valid UTF-8 (ends %02x %02x)", shift, n,
                     (unsigned char)answer[n - 2], (unsigned char)answer[n - 1]);
    }
    request_fini(&req);
    config_unref(c);
}

/* key_of - the key of counter name for a RCPT from user with sender, as
 * text ("" if the request has no update of it). */
static void key_of(const char *name, const char *user, const char *sender, char *out, size_t cap)
{
    struct request req;
    struct eval ev;
    request_init(&req);
    rcpt_request(&req, "192.0.2.9", user);
    set(&req, ATTR_SENDER, sender);
    rules_eval_points(cfg->rules, &req, &ev);
    const struct store_update *u = update_of(&ev, name);
    snprintf(out, cap, "%.*s", u ? (int)u->key_len : 0, u ? u->key : "");
    request_fini(&req);
}

/* No two values share a key: "a|b" + "c" and "a" + "b|c" wrote the same
 * "pair:a|b|c", and a SASL name "#" + 40 hex digits wrote the hashed key
 * of some long name. Such values are hashed with their parts apart;
 * every other key is as it was. */
static void test_rules_keys_unambiguous(void **state)
{
    (void)state;
    char k1[128], k2[128], k3[128];

    key_of("pair", "carol", "x@Customer.Example", k1, sizeof k1);
    assert_string_equal(k1, "pair:carol|customer.example");
    key_of("pair", "a|b", "x@c.example", k1, sizeof k1);
    key_of("pair", "a", "x@b|c.example", k2, sizeof k2);
    assert_memory_equal(k1, "pair:#", 6);
    assert_memory_equal(k2, "pair:#", 6);
    if (strcmp(k1, k2) == 0)
        fail_msg("(a|b, c.example) and (a, b|c.example) share the key %s", k1);
    key_of("pair", "a", "x@b.c.example", k3, sizeof k3);
    assert_string_equal(k3, "pair:a|b.c.example");
    /* A one-part key may hold '|' as it is; one starting with '#' may not. */
    key_of("user", "a|b", "x@c.example", k1, sizeof k1);
    assert_string_equal(k1, "user:a|b");
    key_of("user", "#f75e07320ca7f7306dad8a3fdda837ffa0e002f4", "x@c.example", k1, sizeof k1);
    assert_memory_equal(k1, "user:#", 6);
    assert_int_equal(strlen(k1), 6 + 40);
    if (strcmp(k1, "user:#f75e07320ca7f7306dad8a3fdda837ffa0e002f4") == 0)
        fail_msg("a name of '#' and hex digits took the hashed key of a long name");
}

/* A very long key value is hashed, not skipped: a sender cannot escape
 * counting with a long address, and equal values give equal keys. */
static void test_rules_long_keys_are_hashed(void **state)
{
    (void)state;
    struct request req;
    struct eval ev;
    char user[700];
    request_init(&req);
    memset(user, 'A', sizeof user - 1);
    user[sizeof user - 1] = '\0';
    rcpt_request(&req, "192.0.2.9", user);
    rules_eval_points(cfg->rules, &req, &ev);
    const struct store_update *u = update_of(&ev, "user");
    assert_non_null(u);
    assert_int_equal(u->key_len, strlen("user:#") + 40);
    assert_memory_equal(u->key, "user:#", 6);
    char first[64];
    memcpy(first, u->key, u->key_len);
    /* The digest is SHA-1 of the folded value: keys already in a shared
     * Redis keep their names across versions. */
    assert_memory_equal(u->key + 6, "f75e07320ca7f7306dad8a3fdda837ffa0e002f4", 40);
    /* Case-folded like any SASL name: the same key for lower case. */
    for (size_t i = 0; i < sizeof user - 1; i++)
        user[i] = 'a';
    rcpt_request(&req, "192.0.2.9", user);
    rules_eval_points(cfg->rules, &req, &ev);
    u = update_of(&ev, "user");
    assert_memory_equal(u->key, first, u->key_len);
    /* Two parts: their values joined by '|' are hashed. */
    u = update_of(&ev, "pair");
    assert_non_null(u);
    assert_int_equal(u->key_len, strlen("pair:#") + 40);
    assert_memory_equal(u->key, "pair:#97ae6255397c14eecc11ea76426be6d82f7c6b99", u->key_len);
    /* A different value, a different key. */
    user[0] = 'b';
    rcpt_request(&req, "192.0.2.9", user);
    rules_eval_points(cfg->rules, &req, &ev);
    u = update_of(&ev, "user");
    assert_true(memcmp(u->key, first, u->key_len) != 0);
    request_fini(&req);
}

/* all: and any: are tested cheapest first: a comparison before a CIDR
 * test before a list before a regex; the written order (children, what
 * explain shows) is kept, and the answer is the one of the written order
 * for every request tried. */
static void test_rules_cond_plan(void **state)
{
    (void)state;
    static const char yaml[] =
        "lists:\n"
        "  doms: { entries: [customer.example], subdomains: true }\n"
        "points:\n"
        "  - name: p\n"
        "    then: ok\n"
        "    when:\n"
        "      helo_name: { re: \"^pc[0-9]+\\\\.\" }\n"
        "      sender_domain: { in: doms }\n"
        "      client_address: \"192.0.2.0/24\"\n"
        "      any: [ { helo_name: { re: \"x\" } }, { sasl_username: \"\" } ]\n"
        "      sasl_username: \"\"\n";
    struct config *c2 = config_from_yaml("plan.yaml", yaml);
    struct cond *w = c2->rules->points[0].when;
    assert_int_equal(w->kind, COND_ALL);
    assert_int_equal(w->n_children, 5);
    /* As written. */
    assert_int_equal(w->children[0]->kind, COND_REGEX);
    assert_int_equal(w->children[1]->kind, COND_IN_LIST);
    assert_int_equal(w->children[2]->kind, COND_CIDR);
    assert_int_equal(w->children[3]->kind, COND_ANY);
    /* As tested: the comparison, the CIDR, the list, the regex (cost 8),
     * then the any: of a comparison and a regex (1 + 8). */
    assert_non_null(w->by_cost);
    assert_ptr_equal(w->by_cost[0], w->children[4]);
    assert_int_equal(w->by_cost[1]->kind, COND_CIDR);
    assert_int_equal(w->by_cost[2]->kind, COND_IN_LIST);
    assert_int_equal(w->by_cost[3]->kind, COND_REGEX);
    assert_int_equal(w->by_cost[4]->kind, COND_ANY);
    /* The nested any: its comparison first, its regex after. */
    struct cond *any = w->children[3];
    assert_non_null(any->by_cost);
    assert_ptr_equal(any->by_cost[0], any->children[1]);
    assert_ptr_equal(any->by_cost[1], any->children[0]);

    /* Same answers as the written order, for each combination. */
    static const char *const helos[] = {"pc12.customer.example", "mail.example", "x"};
    static const char *const clients[] = {"192.0.2.7", "198.51.100.1"};
    static const char *const users[] = {"", "alice"};
    static const char *const senders[] = {"a@mx.customer.example", "a@example.com"};
    struct request req;
    request_init(&req);
    int matched = 0;
    for (size_t h = 0; h < 3; h++)
        for (size_t cl = 0; cl < 2; cl++)
            for (size_t u = 0; u < 2; u++)
                for (size_t sd = 0; sd < 2; sd++) {
                    rcpt_request(&req, clients[cl], users[u]);
                    set(&req, ATTR_HELO_NAME, helos[h]);
                    set(&req, ATTR_SENDER, senders[sd]);
                    set(&req, ATTR_SENDER_DOMAIN, strchr(senders[sd], '@') + 1);
                    bool planned = rules_cond_match(c2->rules, w, &req, NULL);
                    struct cond **w_plan = w->by_cost, **any_plan = any->by_cost;
                    w->by_cost = any->by_cost = NULL; /* tested as written */
                    bool written = rules_cond_match(c2->rules, w, &req, NULL);
                    w->by_cost = w_plan;
                    any->by_cost = any_plan;
                    assert_int_equal(planned, written);
                    matched += planned;
                }
    /* Both answers occur: the comparison above is not of two constants. */
    assert_true(matched > 0 && matched < 24);
    request_fini(&req);
    config_unref(c2);
}

/* Answers Postfix would not act on: a coded message whose text came
 * out empty ("550 " is read as a restriction named "550": a 451 and a
 * configuration error in Postfix's log) gets a default text; a
 * redirect, filter or prepend whose argument came out unusable answers
 * DUNNO, what Postfix would do with it, so the log says so. */
static void test_rules_answers_postfix_acts_on(void **state)
{
    (void)state;
    static const char yaml[] =
        "actions:\n"
        "  - { name: rej, when: { recipient: rej@x.example }, do: reject, message: \"550 %{sasl_username}\" }\n"
        "  - { name: rej2, when: { recipient: rej2@x.example }, do: reject, message: \"550 5.7.1 %{sasl_username}\" }\n"
        "  - { name: def, when: { recipient: def@x.example }, do: defer, message: \"450 %{sasl_username}\" }\n"
        "  - { name: red, when: { recipient: red@x.example }, do: \"redirect %{sasl_username}\" }\n"
        "  - { name: pre, when: { recipient: pre@x.example }, do: prepend, message: \"%{sasl_username}\" }\n"
        "  - { name: pre2, when: { recipient: pre2@x.example }, do: \"prepend X-User: %{sasl_username}\" }\n"
        "  - { name: etrn, when: { etrn_domain: example.com }, do: reject }\n";
    struct config *c = config_from_yaml("answers.yaml", yaml);
    static const struct {
        const char *rcpt, *user, *want;
    } cases[] = {
        {"rej@x.example", "", "550 rejected by policy"},
        {"rej@x.example", "carol", "550 carol"},
        {"rej2@x.example", "", "550 5.7.1 rejected by policy"},
        {"def@x.example", "", "450 try again later"},
        {"red@x.example", "", "DUNNO"},
        {"red@x.example", "carol", "DUNNO"}, /* no '@' */
        {"red@x.example", "carol@example.net", "REDIRECT carol@example.net"},
        {"pre@x.example", "", "DUNNO"},
        {"pre@x.example", "carol", "DUNNO"}, /* no "Name:" */
        {"pre2@x.example", "", "PREPEND X-User: "},
    };
    struct request req;
    struct eval ev;
    char answer[ACTIONS_MAX_ANSWER];
    request_init(&req);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rcpt_request(&req, "192.0.2.9", cases[i].user);
        set(&req, ATTR_RECIPIENT, cases[i].rcpt);
        rules_eval_points(c->rules, &req, &ev);
        rules_set_scores(c->rules, &ev, NULL, 0);
        rules_decide(c->rules, &req, &ev);
        assert_non_null(ev.decided);
        actions_format(c->rules, ev.decided, &req, &ev, answer, sizeof answer);
        if (strcmp(answer, cases[i].want) != 0)
            fail_msg("%s with user \"%s\": got \"%s\", want \"%s\"", cases[i].rcpt,
                     cases[i].user, answer, cases[i].want);
    }
    /* etrn_domain is a domain: compared without regard to case. */
    request_reset(&req);
    set(&req, ATTR_PROTOCOL_STATE, "ETRN");
    set(&req, ATTR_ETRN_DOMAIN, "EXAMPLE.COM");
    rules_eval_points(c->rules, &req, &ev);
    rules_set_scores(c->rules, &ev, NULL, 0);
    rules_decide(c->rules, &req, &ev);
    assert_non_null(ev.decided);
    assert_string_equal(ev.decided->name, "etrn");
    request_fini(&req);
    config_unref(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules_points_build_keys_and_add),
        cmocka_unit_test(test_rules_whitelist_stops_counting),
        cmocka_unit_test(test_rules_conditions),
        cmocka_unit_test(test_rules_decide_first_match_and_answers),
        cmocka_unit_test(test_rules_unknown_score_does_not_match),
        cmocka_unit_test(test_rules_message_code_only_from_the_config),
        cmocka_unit_test(test_rules_not_on_missing_counter),
        cmocka_unit_test(test_rules_long_answer_stays_utf8),
        cmocka_unit_test(test_rules_keys_unambiguous),
        cmocka_unit_test(test_rules_long_keys_are_hashed),
        cmocka_unit_test(test_rules_cond_plan),
        cmocka_unit_test(test_rules_answers_postfix_acts_on),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
