/*
 * test_config - loading YAML into a config: the letter of the settings,
 * includes, and the file:line:col diagnostics operators rely on.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"

static struct config *load(const char *text, struct config_errors *errs)
{
    return config_load_string("t.yaml", text, strlen(text), errs);
}

/* The issue's example config, to the letter, loads. */
static void test_config_letter_of_the_issue(void **state)
{
    (void)state;
    const char *text =
        "listen: [\"127.0.0.1:10040\", \"unix:/var/spool/postfix/private/smtpguard\"]\n"
        "clients: [\"127.0.0.0/8\", \"::1\"]\n"
        "store:\n"
        "  backend: memory\n"
        "  redis: { address: \"127.0.0.1:6379\", db: 0, prefix: \"sg:\", timeout: 100ms }\n"
        "  on_error: dunno\n"
        "log: { syslog: mail }\n"
        "counters: { ip: { key: client_address, half_life: 10m }, user: { key: sasl_username, leak: 100/h } }\n"
        "lists: { trusted: [\"10.0.0.0/8\"] }\n"
        "points:\n"
        "  - { name: trusted, when: { client_address: { in: trusted } }, then: ok }\n"
        "  - { name: per-rcpt, when: { protocol_state: RCPT, sasl_username: { not: \"\" } }, add: { user: 1 } }\n"
        "actions:\n"
        "  - { name: flood, when: { user: \">= 500\" }, do: [reject, log], message: \"550 5.7.1 %{sasl_username} over limit\" }\n";
    struct config_errors errs = {0};
    struct config *cfg = load(text, &errs);
    for (size_t i = 0; i < errs.n; i++)
        print_error("unexpected: %s\n", errs.msgs[i]);
    assert_non_null(cfg);
    assert_int_equal(cfg->n_listen, 2);
    assert_string_equal(cfg->listen[1], "unix:/var/spool/postfix/private/smtpguard");
    assert_int_equal(cfg->store.backend, STORE_BACKEND_MEMORY);
    assert_int_equal(cfg->store.timeout_ms, 100);
    assert_string_equal(cfg->store.prefix, "sg:");
    assert_string_equal(cfg->on_error, "DUNNO");
    assert_string_equal(cfg->log.syslog, "mail");
    const struct rules *r = cfg->rules;
    assert_int_equal(r->n_counters, 2);
    assert_int_equal(r->counters[0].decay.kind, DECAY_HALF_LIFE);
    assert_true(r->counters[0].decay.param == 600.0);
    assert_int_equal(r->counters[1].decay.kind, DECAY_LEAK);
    assert_true(r->counters[1].decay.param > 0.0277 && r->counters[1].decay.param < 0.0278);
    assert_int_equal(r->n_points, 2);
    assert_true(r->points[0].then_set);
    assert_int_equal(r->n_actions, 1);
    assert_int_equal(r->actions[0].verdict, VERDICT_REJECT);
    assert_true(r->actions[0].side_log);
    assert_true(r->counter_read[1]); /* the action reads "user" */
    assert_false(r->counter_read[0]);
    config_unref(cfg);
}

struct error_case {
    const char *label;
    const char *text;
    const char *want;           /* substring of one diagnostic */
};

static const struct error_case error_cases[] = {
    {"unknown top-level key", "lisen: [\"127.0.0.1:1\"]\n", "t.yaml:1:1: unknown setting \"lisen\""},
    {"bad listen", "listen: [\"localhost\"]\n", "t.yaml:1:10: listen[0]: expected \"IP:PORT\""},
    {"bad duration", "counters: { ip: { key: client_address, half_life: 10x } }\n",
     "t.yaml:1:51: counters.ip.half_life: expected a duration"},
    {"bad rate", "counters:\n  ip: { key: client_address, leak: fast }\n",
     "t.yaml:2:36: counters.ip.leak: expected a rate"},
    {"both decays", "counters:\n  ip: { key: client_address, leak: 1/s, half_life: 1m }\n",
     "give either half_life or leak"},
    {"no decay", "counters:\n  ip: { key: client_address }\n", "t.yaml:2:7: counters.ip: a counter needs half_life"},
    {"bad key attr", "counters:\n  ip: { key: client_adress, half_life: 1m }\n",
     "t.yaml:2:14: counters.ip.key: unknown attribute \"client_adress\""},
    {"bad prefix", "counters:\n  ip: { key: client_address/40, half_life: 1m }\n", "from 0 to 32"},
    {"prefix on wrong attr", "counters:\n  ip: { key: sender/24, half_life: 1m }\n",
     "only client_address can be cut"},
    {"counter twice across files is caught as a name clash",
     "counters:\n  sender: { key: sender, half_life: 1m }\n", "is an attribute or keyword"},
    {"unknown list", "points:\n  - { name: a, when: { sender: { in: nope } }, add: {} }\n",
     "t.yaml:2:38: points[0].when.sender.in: no list named \"nope\""},
    {"unknown counter in add", "points:\n  - { name: a, add: { ipp: 1 } }\n",
     "points[0].add.ipp: no counter named \"ipp\""},
    {"counter in points when",
     "counters: { ip: { key: client_address, half_life: 1m } }\npoints:\n  - { name: a, when: { ip: \">= 1\" }, add: { ip: 1 } }\n",
     "counter scores can be tested in actions only"},
    {"bad comparison", "counters: { ip: { key: client_address, half_life: 1m } }\nactions:\n  - { name: a, when: { ip: \"lots\" }, do: reject }\n",
     "compare a counter with"},
    {"bad regex", "actions:\n  - { name: a, when: { sender: { re: \"(\" } }, do: reject }\n",
     "bad regular expression"},
    {"unknown verdict", "actions:\n  - { name: a, do: bounce }\n", "unknown action \"bounce\""},
    {"two verdicts", "actions:\n  - { name: a, do: [reject, defer] }\n", "only one verdict per rule"},
    {"defer with 5xx", "actions:\n  - { name: a, do: defer, message: \"550 no\" }\n",
     "a defer message must start with a 4xx code"},
    {"reject with 4xx", "actions:\n  - { name: a, do: reject, message: \"450 no\" }\n",
     "a reject message must start with a 5xx code"},
    {"unknown template var", "actions:\n  - { name: a, do: reject, message: \"%{nope}\" }\n",
     "unknown variable"},
    {"rule without name", "actions:\n  - { do: reject }\n", "a rule needs a name"},
    {"unknown rule key", "actions:\n  - { name: a, do: reject, mesage: x }\n",
     "unknown setting \"mesage\""},
    {"bad protocol_state", "points:\n  - { name: a, when: { protocol_state: RCTP }, then: ok }\n",
     "unknown protocol_state \"RCTP\""},
    {"bad cidr", "points:\n  - { name: a, when: { client_address: 10.0.0.0/33 }, then: ok }\n",
     "expected an IP address or network"},
    {"yaml syntax", "listen: [\"a\"\n", "YAML syntax error"},
    {"missing include", "include: [\"/nonexistent/smtpguard.yaml\"]\n", "cannot read /nonexistent/smtpguard.yaml"},
    {"on_error", "store: { on_error: maybe }\n", "expected dunno, defer, permit"},
    {"redis without address ok? no: bad address", "store: { backend: redis, redis: { address: \"nowhere\" } }\n",
     "expected \"host:port\" or \"unix:/path\""},
    {"limit out of range", "limits: { max_attrs: 3 }\n", "expected a whole number from 8 to 10000"},
    {"then", "points:\n  - { name: a, then: reject }\n", "expected ok (stop counting"},
    {"wait too long", "actions:\n  - { name: a, do: [\"wait 1h\"] }\n", "wait needs a duration up to 90s"},
    {"duplicate key", "counters:\n  ip: { key: client_address, half_life: 1m, key: sender }\n",
     "t.yaml:2:45: \"key\" is given twice in this mapping (first at line 2)"},
    {"duplicate rule key", "actions:\n  - name: a\n    do: reject\n    do: defer\n",
     "t.yaml:4:5: \"do\" is given twice"},
    {"empty any", "points:\n  - { name: t, when: { any: [] }, then: permit }\n",
     "points[0].when.any: an empty list matches nothing"},
    {"second document", "listen: [\"127.0.0.1:1\"]\n---\nactions: []\n", "t.yaml:3:1: a second YAML document"},
    {"empty file", "", "t.yaml:1:1: the file is empty"},
    {"comments only", "# nothing here\n", "the file is empty"},
    {"redirect without address", "actions:\n  - { name: a, do: redirect }\n", "redirect needs an argument"},
    {"broken second document", "listen: [\"127.0.0.1:1\"]\n---\nactions: [ { name: x, do: reject\n",
     "YAML syntax error"},
    {"a zone twice in one check",
     "actions:\n  - { name: a, when: { dnsbl: { zones: [bl.example.org, BL.example.org.], min: 2 } }, do: reject }\n",
     "zone \"bl.example.org\" is listed twice in this check"},
    {"a comparison mistyped on an attribute",
     "points:\n  - { name: a, when: { size: \">= 10M\" }, then: ok }\n", "\">= 10M\" is no comparison"},
    {"=> for >=", "points:\n  - { name: a, when: { recipient_count: \"=> 5\" }, then: ok }\n",
     "is no comparison"},
    {"a hex number in a comparison",
     "counters: { ip: { key: client_address, half_life: 1m } }\nactions:\n  - { name: a, when: { ip: \">= 0x10\" }, do: reject }\n",
     "compare a counter with"},
    {"a hex number in add",
     "counters: { ip: { key: client_address, half_life: 1m } }\npoints:\n  - { name: a, add: { ip: 0x10 } }\n",
     "expected a number"},
    {"an exponent in a size unit",
     "counters: { mb: { key: sasl_username, half_life: 1m } }\npoints:\n  - { name: a, add: { mb: size/1e6 } }\n",
     "the unit after '/' must be a positive number"},
    {"a signed prefix length",
     "counters: { net: { key: \"client_address/+24\", half_life: 1m } }\n", "expected client_address/N"},
    {"prepend without a header", "actions:\n  - { name: a, do: prepend }\n", "prepend needs a header"},
    {"prepend of no header", "actions:\n  - { name: a, do: \"prepend no colon here\" }\n",
     "prepend needs a header"},
    {"prepend message of no header", "actions:\n  - { name: a, do: prepend, message: \"just text\" }\n",
     "prepend needs a header"},
    {"prepend template after a blank", "actions:\n  - { name: a, do: \"prepend X Bad %{sender}\" }\n",
     "prepend needs a header"},
    {"redirect without @", "actions:\n  - { name: a, do: \"redirect abuse\" }\n",
     "redirect needs an address"},
    {"filter without :", "actions:\n  - { name: a, do: \"filter smtp\" }\n",
     "filter needs transport:destination"},
    {"sleep of a fraction", "actions:\n  - { name: a, do: \"sleep 1.9s\" }\n",
     "sleep needs whole seconds"},
    {"bracketed IPv4 DNS server", "dns: { servers: [\"[127.0.0.1]:5353\"] }\n", "expected \"IP\""},
    {"a key with a NUL", "dns: { timeout: 500ms, \"timeout\\0x\": 20s }\n", "a key with a NUL byte"},
    {"aliases expanding to a million nodes",
     "x0: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
     "x1: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "x2: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
     "x3: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     "x4: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
     "x5: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
     "too large once its aliases are expanded"},
};

static void test_config_errors_name_file_line_col(void **state)
{
    (void)state;
    int failures = 0;
    for (size_t i = 0; i < sizeof error_cases / sizeof error_cases[0]; i++) {
        const struct error_case *tc = &error_cases[i];
        struct config_errors errs = {0};
        struct config *cfg = load(tc->text, &errs);
        bool found = false;
        for (size_t k = 0; k < errs.n; k++)
            if (strstr(errs.msgs[k], tc->want))
                found = true;
        if (cfg || !found) {
            print_error("case \"%s\": got %s with %zu errors, want an error containing \"%s\"\n",
                        tc->label, cfg ? "a config" : "no config", errs.n, tc->want);
            for (size_t k = 0; k < errs.n; k++)
                print_error("  got: %s\n", errs.msgs[k]);
        }
        if (cfg)
            config_unref(cfg);
        failures += cfg || !found;
        config_errors_fini(&errs);
    }
    assert_int_equal(failures, 0);
}

/* Settings that came out wrong: dns.servers after dns.country_zone
 * dropped the zone; TTLs under a second became 0 (no caching); a few
 * aliases still load (only multiplying ones are refused). */
static void test_config_dns_settings_kept(void **state)
{
    (void)state;
    static const char *text =
        "dns: { country_zone: cc.example.org, servers: [\"127.0.0.1:5353\", \"[::1]:5353\"],\n"
        "       ttl_floor: 500ms, ttl_ceiling: 900ms, negative_ttl: 1500ms }\n"
        "lists:\n"
        "  a: &nets [\"10.0.0.0/8\"]\n"
        "  b: *nets\n"
        "actions:\n"
        "  - { name: c, when: { country: [CN] }, do: reject }\n";
    struct config_errors errs = {0};
    struct config *cfg = load(text, &errs);
    for (size_t k = 0; k < errs.n; k++)
        print_error("unexpected: %s\n", errs.msgs[k]);
    assert_non_null(cfg);
    assert_string_equal(cfg->dns.country_zone, "cc.example.org");
    assert_int_equal(cfg->dns.n_servers, 2);
    assert_int_equal(cfg->dns.ttl_floor_s, 1);
    assert_int_equal(cfg->dns.ttl_ceiling_s, 1);
    assert_int_equal(cfg->dns.negative_ttl_s, 2);
    config_unref(cfg);
    config_errors_fini(&errs);
}

/* Every error is reported, not only the first. */
static void test_config_errors_are_all_collected(void **state)
{
    (void)state;
    const char *text = "lisen: 1\n"
                       "counters: { ip: { key: nope, half_life: 1m } }\n"
                       "actions:\n  - { name: a, do: bounce }\n";
    struct config_errors errs = {0};
    struct config *cfg = load(text, &errs);
    assert_null(cfg);
    assert_int_equal(errs.n, 3);
    assert_non_null(strstr(errs.msgs[0], "t.yaml:1:1:"));
    config_errors_fini(&errs);
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

/* Includes: relative to the main file, sorted, counters shared, and an
 * error in an included file names that file. */
static void test_config_includes(void **state)
{
    (void)state;
    char dir[] = "/tmp/sgcfgXXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[512], rd[128], f1[256], f2[256], mainf[256];
    snprintf(rd, sizeof rd, "%s/rules.d", dir);
    mkdir(rd, 0755);
    snprintf(f1, sizeof f1, "%s/10-b.yaml", rd);
    snprintf(f2, sizeof f2, "%s/05-a.yaml", rd);
    snprintf(mainf, sizeof mainf, "%s/main.yaml", dir);
    write_file(f2, "counters: { ip: { key: client_address, half_life: 1m } }\n"
                   "actions:\n  - { name: first, when: { ip: \">= 9\" }, do: reject }\n");
    write_file(f1, "points:\n  - { name: p, add: { ip: 1 } }\n"
                   "actions:\n  - { name: second, when: { ip: \">= 5\" }, do: defer }\n");
    write_file(mainf, "include: [\"rules.d/*.yaml\"]\n"
                      "actions:\n  - { name: zeroth, when: { ip: \">= 100\" }, do: reject }\n");
    struct config_errors errs = {0};
    struct config *cfg = config_load(mainf, &errs);
    for (size_t k = 0; k < errs.n; k++)
        print_error("unexpected: %s\n", errs.msgs[k]);
    assert_non_null(cfg);
    assert_int_equal(cfg->rules->n_actions, 3);
    assert_string_equal(cfg->rules->actions[0].name, "zeroth");
    assert_string_equal(cfg->rules->actions[1].name, "first");
    assert_string_equal(cfg->rules->actions[2].name, "second");
    config_unref(cfg);

    /* A broken included file is named in the diagnostic. */
    write_file(f1, "points:\n  - { name: p, add: { nope: 1 } }\n");
    cfg = config_load(mainf, &errs);
    assert_null(cfg);
    assert_int_equal(errs.n, 1);
    snprintf(path, sizeof path, "%s:2:", f1);
    assert_non_null(strstr(errs.msgs[0], path));
    config_errors_fini(&errs);

    /* An included file may not hold main settings. */
    write_file(f1, "listen: [\"127.0.0.1:1\"]\n");
    cfg = config_load(mainf, &errs);
    assert_null(cfg);
    assert_non_null(strstr(errs.msgs[0], "an included file may hold only"));
    config_errors_fini(&errs);

    /* An included file that is empty, or only comments, would drop its
     * rules silently (a truncated copy): refused, naming it. */
    static const char *const empties[] = {"", "# truncated\n"};
    for (size_t e = 0; e < 2; e++) {
        write_file(f1, empties[e]);
        cfg = config_load(mainf, &errs);
        assert_null(cfg);
        assert_int_equal(errs.n, 1);
        snprintf(path, sizeof path, "%s:1:1: the file is empty", f1);
        assert_non_null(strstr(errs.msgs[0], path));
        config_errors_fini(&errs);
    }

    unlink(f1);
    unlink(f2);
    unlink(mainf);
    rmdir(rd);
    rmdir(dir);
}

/* A password file others can read is refused; a private one is read
 * without its trailing newline. */
static void test_config_password_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/sgpwXXXXXX";
    assert_non_null(mkdtemp(dir));
    char pw[256], mainf[256];
    snprintf(pw, sizeof pw, "%s/redis.pass", dir);
    snprintf(mainf, sizeof mainf, "%s/main.yaml", dir);
    write_file(pw, "s3cret\n");
    write_file(mainf, "store: { backend: redis, redis: { address: \"127.0.0.1:6379\", password_file: redis.pass } }\n");
    chmod(pw, 0644);
    struct config_errors errs = {0};
    struct config *cfg = config_load(mainf, &errs);
    assert_null(cfg);
    assert_non_null(strstr(errs.msgs[0], "accessible to other users"));
    assert_null(strstr(errs.msgs[0], "s3cret"));
    config_errors_fini(&errs);
    chmod(pw, 0600);
    cfg = config_load(mainf, &errs);
    assert_non_null(cfg);
    assert_string_equal(cfg->store.redis_password, "s3cret");
    config_unref(cfg);
    unlink(pw);
    unlink(mainf);
    rmdir(dir);
}

/* The shipped example and rules.d load as they are. */
static void test_config_shipped_example_loads(void **state)
{
    (void)state;
    const char *src = getenv("SMTPGUARD_SRCDIR");
    char path[512];
    snprintf(path, sizeof path, "%s/smtpguard.yaml.example", src ? src : ".");
    struct config_errors errs = {0};
    struct config *cfg = config_load(path, &errs);
    for (size_t k = 0; k < errs.n; k++)
        print_error("unexpected: %s\n", errs.msgs[k]);
    assert_non_null(cfg);
    assert_true(cfg->rules->n_counters >= 5);
    assert_true(cfg->rules->n_actions >= 5);
    config_unref(cfg);
}

/* A list file with bad lines: one error per line, each with the
 * config's file:line:col and path, and no second error at every rule
 * that uses the list. */
static void test_config_bad_list_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/sglistXXXXXX";
    assert_non_null(mkdtemp(dir));
    char lf[256], mainf[256];
    snprintf(lf, sizeof lf, "%s/bad.list", dir);
    snprintf(mainf, sizeof mainf, "%s/main.yaml", dir);
    write_file(lf, "example.com\n192.168.1\n10.0.0.0/8 OK\n");
    write_file(mainf, "lists: { L: { file: bad.list } }\n"
                      "points:\n  - { name: p, when: { sender_domain: { in: L } }, then: ok }\n");
    struct config_errors errs = {0};
    struct config *cfg = config_load(mainf, &errs);
    assert_null(cfg);
    assert_int_equal(errs.n, 2);
    for (size_t k = 0; k < errs.n; k++) {
        assert_non_null(strstr(errs.msgs[k], "main.yaml:1:21: lists.L.file: "));
        assert_null(strchr(errs.msgs[k], '\n'));
    }
    assert_non_null(strstr(errs.msgs[0], "bad.list:2: bad IPv4 address"));
    assert_non_null(strstr(errs.msgs[1], "bad.list:3: more than one entry on the line"));
    config_errors_fini(&errs);
    unlink(lf);
    unlink(mainf);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_letter_of_the_issue),
        cmocka_unit_test(test_config_errors_name_file_line_col),
        cmocka_unit_test(test_config_dns_settings_kept),
        cmocka_unit_test(test_config_errors_are_all_collected),
        cmocka_unit_test(test_config_includes),
        cmocka_unit_test(test_config_password_file),
        cmocka_unit_test(test_config_shipped_example_loads),
        cmocka_unit_test(test_config_bad_list_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
