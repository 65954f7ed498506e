/*
 * test_rules_dns - the DNS side of the rules, without DNS: which
 * questions a request needs (laziness), DNS conditions read from answers
 * filled in by hand, weights, min:, and the DNS template variables.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "actions.h"
#include "config.h"
#include "config_yaml.h"
#include "rules.h"

static const char *rules_yaml =
    "dns: { servers: [\"127.0.0.1:5353\"], timeout: 500ms, country_zone: cc.example }\n"
    "counters:\n"
    "  ip: { key: client_address, half_life: 10m, precision: 1 }\n"
    "lists:\n"
    "  trusted: [\"10.0.0.0/8\"]\n"
    "points:\n"
    "  - { name: trusted, when: { client_address: { in: trusted } }, then: ok }\n"
    "  - { name: wl, when: { dnswl: [wl.example] }, then: ok }\n"
    "  - name: bl\n"
    "    when: { protocol_state: RCPT, dnsbl: { zones: { a.example: 3, b.example: { weight: 1.5, codes: \"127.0.0.2\" } } } }\n"
    "    add: { ip: weight }\n"
    "actions:\n"
    "  - { name: vip, when: { sasl_username: boss }, do: permit }\n"
    "  - { name: two, when: { dnsbl: { zones: [a.example, b.example], min: 2 } }, do: reject, message: \"550 5.7.1 %{dnsbl.hits} %{dnsbl.zones} %{dnsbl.codes}\" }\n"
    "  - { name: score, when: { ip: \">= 3\" }, do: defer }\n"
    "  - { name: mx, when: { protocol_state: MAIL, sender_mx: null_mx }, do: reject, message: \"550 5.7.1 null\" }\n"
    "  - { name: cc, when: { protocol_state: DATA, country: [CN] }, do: reject, message: \"550 5.7.1 %{country}\" }\n";

static struct config *cfg;

static int setup(void **state)
{
    (void)state;
    struct config_errors errs = {0};
    cfg = config_load_string("dns.yaml", rules_yaml, strlen(rules_yaml), &errs);
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

static void request(struct request *req, const char *state_name, const char *client,
                    const char *user)
{
    request_reset(req);
    request_set(req, ATTR_PROTOCOL_STATE, state_name, strlen(state_name));
    request_set(req, ATTR_CLIENT_ADDRESS, client, strlen(client));
    request_set(req, ATTR_SENDER, "a@example.org", 13);
    if (user)
        request_set(req, ATTR_SASL_USERNAME, user, strlen(user));
}

/* The index of the question of kind/zone. */
static int question(enum dnsq_kind kind, const char *zone)
{
    for (size_t i = 0; i < cfg->rules->n_dnsqs; i++) {
        const struct dnsq *q = &cfg->rules->dnsqs[i];
        if (q->kind == kind && (!zone || (q->zone && strcmp(q->zone, zone) == 0)))
            return (int)i;
    }
    print_error("no question %s %s\n", dnsq_kind_name(kind), zone ? zone : "");
    fail();
    return -1;
}

/* A comma list of the zones/kinds a request needs, for messages. */
static void needed(const struct eval *ev, char *out, size_t cap)
{
    size_t o = 0;
    out[0] = '\0';
    for (size_t i = 0; i < cfg->rules->n_dnsqs; i++) {
        if (!ev->dns_need[i])
            continue;
        const struct dnsq *q = &cfg->rules->dnsqs[i];
        o += (size_t)snprintf(out + o, cap - o, "%s%s", o ? "," : "",
                              q->zone ? q->zone : dnsq_kind_name(q->kind));
    }
}

static void test_rules_dns_needed_is_lazy(void **state)
{
    (void)state;
    static const struct {
        const char *label, *state, *client, *user, *want;
    } cases[] = {
        {"whitelisted by address: nothing", "RCPT", "10.1.2.3", NULL, ""},
        /* a.example/b.example appear twice: the points rule and the min: 2
         * action share questions where the codes agree. */
        {"RCPT: allow-list and block-lists", "RCPT", "192.0.2.7", NULL,
         "wl.example,a.example,b.example,b.example"},
        {"decided by an earlier action: only the points' questions", "CONNECT", "192.0.2.7",
         "boss", "wl.example"},
        {"MAIL asks the MX too", "MAIL", "192.0.2.7", NULL,
         "wl.example,a.example,b.example,mx"},
        {"DATA asks the country", "DATA", "192.0.2.7", NULL,
         "wl.example,a.example,b.example,cc.example"},
    };
    struct request req;
    struct eval ev;
    request_init(&req);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        request(&req, cases[i].state, cases[i].client, cases[i].user);
        rules_dns_needed(cfg->rules, &req, &ev);
        char got[256];
        needed(&ev, got, sizeof got);
        if (strcmp(got, cases[i].want) != 0) {
            print_error("%s: got \"%s\", want \"%s\"\n", cases[i].label, got, cases[i].want);
            fail();
        }
    }
    request_fini(&req);
}

static void listed(struct eval *ev, int q, uint32_t code)
{
    ev->dns[q].status = DNS_FOUND;
    ev->dns[q].code = code;
}

static void test_rules_dns_weights_min_and_templates(void **state)
{
    (void)state;
    struct request req;
    struct eval ev;
    char answer[ACTIONS_MAX_ANSWER];
    request_init(&req);
    const struct rules *r = cfg->rules;
    int qa = question(DNSQ_LIST_IP, "a.example");

    /* Listed in a.example only: weight 3, min: 2 not reached. */
    request(&req, "RCPT", "192.0.2.7", NULL);
    rules_dns_needed(r, &req, &ev);
    for (size_t i = 0; i < r->n_dnsqs; i++)
        if (ev.dns_need[i])
            ev.dns[i].status = DNS_NOTFOUND;
    listed(&ev, qa, 0x7f000002);
    assert_false(rules_eval_points_dns(r, &req, &ev));
    assert_true(ev.dns_ready); /* counting keeps the answers */
    assert_int_equal(ev.n_updates, 1);
    assert_true(ev.updates[0].points == 3.0);
    double score = 3;
    rules_set_scores(r, &ev, &score, 1);
    const struct action_rule *ar = rules_decide(r, &req, &ev);
    assert_non_null(ar);
    assert_string_equal(ar->name, "score");

    /* Listed in both (b.example with the code its weight wants). */
    rules_dns_needed(r, &req, &ev);
    for (size_t i = 0; i < r->n_dnsqs; i++)
        if (ev.dns_need[i] && r->dnsqs[i].zone && strcmp(r->dnsqs[i].zone, "wl.example") != 0)
            listed(&ev, (int)i, 0x7f000002);
    rules_eval_points_dns(r, &req, &ev);
    assert_true(ev.updates[0].points == 4.5);
    score = 4.5;
    rules_set_scores(r, &ev, &score, 1);
    ar = rules_decide(r, &req, &ev);
    assert_non_null(ar);
    assert_string_equal(ar->name, "two");
    actions_format(r, ar, &req, &ev, answer, sizeof answer);
    assert_string_equal(answer, "550 5.7.1 2 a.example,b.example 127.0.0.2,127.0.0.2");

    /* Allow-listed: counting stops there. */
    rules_dns_needed(r, &req, &ev);
    listed(&ev, question(DNSQ_LIST_IP, "wl.example"), 0x7f000a01);
    listed(&ev, qa, 0x7f000002);
    assert_true(rules_eval_points_dns(r, &req, &ev));
    assert_string_equal(ev.stopped_by->name, "wl");

    /* A failed check matches nothing: not listed. */
    rules_dns_needed(r, &req, &ev);
    for (size_t i = 0; i < r->n_dnsqs; i++)
        if (ev.dns_need[i])
            ev.dns[i].status = DNS_TEMPFAIL;
    assert_false(rules_eval_points_dns(r, &req, &ev));
    assert_true(ev.n_updates == 0 || ev.updates[0].points == 0);

    /* Sender MX and country read their answers. */
    request(&req, "MAIL", "192.0.2.7", NULL);
    rules_dns_needed(r, &req, &ev);
    int qmx = question(DNSQ_MX, NULL);
    ev.dns[qmx].status = DNS_FOUND;
    ev.dns[qmx].mx = DNS_MX_NULL;
    rules_eval_points_dns(r, &req, &ev);
    ar = rules_decide(r, &req, &ev);
    assert_non_null(ar);
    assert_string_equal(ar->name, "mx");
    request(&req, "DATA", "192.0.2.7", NULL);
    rules_dns_needed(r, &req, &ev);
    int qcc = question(DNSQ_COUNTRY_TXT, "cc.example");
    ev.dns[qcc].status = DNS_FOUND;
    strcpy(ev.dns[qcc].text, "CN");
    rules_eval_points_dns(r, &req, &ev);
    ar = rules_decide(r, &req, &ev);
    assert_non_null(ar);
    actions_format(r, ar, &req, &ev, answer, sizeof answer);
    assert_string_equal(answer, "550 5.7.1 CN");
    /* Without DNS answers (an offline tool), nothing DNS matches. */
    rules_eval_points(r, &req, &ev);
    assert_null(rules_decide(r, &req, &ev));
    request_fini(&req);
}

/* "add: weight" sums the weights of every listing zone of its rule, so
 * each is asked even when the rule's condition is decided without it
 * ("any" with a branch already true): the weight must not depend on
 * whether another rule happened to ask the same zone. */
static void test_rules_dns_weight_asks_every_zone(void **state)
{
    (void)state;
    static const char *yaml =
        "dns: { servers: [\"127.0.0.1:5353\"], timeout: 500ms }\n"
        "counters:\n"
        "  ip: { key: client_address, half_life: 10m }\n"
        "points:\n"
        "  - name: helo-or-bl\n"
        "    when: { any: [ { helo_name: localhost }, { dnsbl: { zones: { c.example: 4 } } } ] }\n"
        "    add: { ip: weight }\n"
        "  - name: rcpt-only\n"
        "    when: { protocol_state: RCPT, any: [ { helo_name: localhost }, { dnsbl: { zones: { d.example: 2 } } } ] }\n"
        "    add: { ip: weight }\n";
    struct config *c = config_from_yaml("weight.yaml", yaml);
    const struct rules *r = c->rules;
    struct request req;
    struct eval ev;
    request_init(&req);

    /* RCPT from a "localhost" HELO: both rules match without DNS, and
     * both zones must still be asked for their weights. */
    request(&req, "RCPT", "192.0.2.7", NULL);
    request_set(&req, ATTR_HELO_NAME, "localhost", 9);
    size_t n = rules_dns_needed(r, &req, &ev);
    assert_int_equal(n, 2);
    for (size_t i = 0; i < r->n_dnsqs; i++) {
        assert_true(ev.dns_need[i]);
        listed(&ev, (int)i, 0x7f000002);
    }
    rules_eval_points_dns(r, &req, &ev);
    assert_int_equal(ev.n_updates, 1);
    if (ev.updates[0].points != 6.0)
        fail_msg("weights got %g points, want 4 + 2", ev.updates[0].points);

    /* MAIL: the second rule cannot match, so only the first's zone. */
    request(&req, "MAIL", "192.0.2.7", NULL);
    request_set(&req, ATTR_HELO_NAME, "localhost", 9);
    n = rules_dns_needed(r, &req, &ev);
    assert_int_equal(n, 1);
    request_fini(&req);
    config_unref(c);
}

/* A zone named in two conditions of one rule adds its weight once: the
 * weights are those of the zones that list the client. */
static void test_rules_dns_weight_of_a_zone_once(void **state)
{
    (void)state;
    static const char *yaml =
        "dns: { servers: [\"127.0.0.1:5353\"], timeout: 500ms }\n"
        "counters:\n"
        "  s: { key: client_address, half_life: 10m }\n"
        "points:\n"
        "  - name: twice\n"
        "    when: { dnsbl: { zones: { c.example: 3 } }, any: [ { dnsbl: { zones: { c.example: 3 } } }, { dnsbl: d.example } ] }\n"
        "    add: { s: weight }\n";
    struct config *c = config_from_yaml("once.yaml", yaml);
    const struct rules *r = c->rules;
    struct request req;
    struct eval ev;
    request_init(&req);
    request(&req, "RCPT", "192.0.2.7", NULL);
    rules_dns_needed(r, &req, &ev);
    for (size_t i = 0; i < r->n_dnsqs; i++)
        listed(&ev, (int)i, 0x7f000002);
    rules_eval_points_dns(r, &req, &ev);
    assert_int_equal(ev.n_updates, 1);
    if (ev.updates[0].points != 4.0)
        fail_msg("weights got %g points, want 3 + 1", ev.updates[0].points);
    request_fini(&req);
    config_unref(c);
}

/* A failed question with on_error: defer defers only when its answer
 * could change the verdict: not behind an allow-list that matched (then:
 * ok), nor behind an action rule that decided first. */
static void test_rules_dns_failure_matters(void **state)
{
    (void)state;
    static const char *yaml =
        "dns: { servers: [\"127.0.0.1:5353\"], timeout: 500ms }\n"
        "counters:\n"
        "  ip: { key: client_address, half_life: 10m }\n"
        "points:\n"
        "  - { name: allow, when: { dnswl: [wl.example] }, then: ok }\n"
        "  - { name: bl, when: { dnsbl: { zones: [bl.example], on_error: defer } }, add: { ip: 5 } }\n"
        "actions:\n"
        "  - { name: first, when: { dnsbl: [bl0.example] }, do: reject }\n"
        "  - { name: late, when: { dnsbl: { zones: [bl2.example], on_error: defer } }, do: reject }\n";
    struct config *c = config_from_yaml("fail.yaml", yaml);
    const struct rules *r = c->rules;
    int wl = -1, bl = -1, bl0 = -1, bl2 = -1;
    for (size_t i = 0; i < r->n_dnsqs; i++) {
        const char *z = r->dnsqs[i].zone;
        if (!strcmp(z, "wl.example")) wl = (int)i;
        if (!strcmp(z, "bl.example")) bl = (int)i;
        if (!strcmp(z, "bl0.example")) bl0 = (int)i;
        if (!strcmp(z, "bl2.example")) bl2 = (int)i;
    }
    assert_true(wl >= 0 && bl >= 0 && bl0 >= 0 && bl2 >= 0);
    struct request req;
    struct eval ev;
    request_init(&req);
    static const struct {
        const char *label;
        uint32_t wl, bl0;   /* 0: not listed */
        int failed;         /* 0: bl, 1: bl2 */
        bool matters;
    } cases[] = {
        {"bl failed, not allow-listed", 0, 0, 0, true},
        {"bl failed, allow-listed", 0x7f000a01, 0, 0, false},
        {"bl2 failed, nothing decided before it", 0, 0, 1, true},
        {"bl2 failed, the first action decided", 0, 0x7f000002, 1, false},
        {"bl2 failed, allow-listed", 0x7f000a01, 0, 1, false},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        request(&req, "RCPT", "192.0.2.7", NULL);
        rules_dns_needed(r, &req, &ev);
        ev.dns[wl].status = cases[k].wl ? DNS_FOUND : DNS_NOTFOUND;
        ev.dns[wl].code = cases[k].wl;
        ev.dns[bl0].status = cases[k].bl0 ? DNS_FOUND : DNS_NOTFOUND;
        ev.dns[bl0].code = cases[k].bl0;
        ev.dns[bl].status = cases[k].failed == 0 ? DNS_TEMPFAIL : DNS_NOTFOUND;
        ev.dns[bl2].status = cases[k].failed == 1 ? DNS_TEMPFAIL : DNS_NOTFOUND;
        int q = cases[k].failed == 0 ? bl : bl2;
        if (rules_dns_failure_matters(r, &req, &ev, (size_t)q) != cases[k].matters)
            fail_msg("%s: got %d, want %d", cases[k].label, !cases[k].matters, cases[k].matters);
    }
    request_fini(&req);
    config_unref(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules_dns_needed_is_lazy),
        cmocka_unit_test(test_rules_dns_weights_min_and_templates),
        cmocka_unit_test(test_rules_dns_weight_asks_every_zone),
        cmocka_unit_test(test_rules_dns_failure_matters),
        cmocka_unit_test(test_rules_dns_weight_of_a_zone_once),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
