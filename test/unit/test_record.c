/*
 * test_record - a recorded request reads back as it was written (empty
 * and absent kept apart, quotes, backslashes and control characters),
 * redaction of local parts and hashing, lines written by other JSON tools,
 * and clear refusals of lines that are not requests.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "record.h"
#include "request.h"

static void test_record_round_trip(void **state)
{
    struct request in, out;
    char line[4096];
    (void)state;
    request_init(&in);
    request_init(&out);
    request_set(&in, ATTR_PROTOCOL_STATE, "RCPT", 4);
    request_set(&in, ATTR_SENDER, "", 0);
    request_set(&in, ATTR_RECIPIENT, "\"odd\\\"@example.net", 18);
    request_set(&in, ATTR_HELO_NAME, "a\x01" "b\tc", 5);
    request_set(&in, ATTR_CLIENT_ADDRESS, "192.0.2.7", 9);
    size_t n = record_format(&in, 1700000000.25, RECORD_REDACT_NONE, line, sizeof line);
    assert_true(n > 0 && line[n - 1] == '\n');
    line[n - 1] = '\0';
    if (!strstr(line, "{\"t\":1700000000.250000,\"a\":{"))
        fail_msg("got %s", line);
    double t = 0;
    const char *why = NULL;
    if (record_parse(line, n - 1, &t, &out, &why) != 0)
        fail_msg("parse: %s", why);
    assert_true(t == 1700000000.25);
    static const enum attr attrs[] = {ATTR_PROTOCOL_STATE, ATTR_SENDER, ATTR_RECIPIENT,
                                      ATTR_HELO_NAME, ATTR_CLIENT_ADDRESS};
    for (size_t i = 0; i < sizeof attrs / sizeof attrs[0]; i++) {
        size_t a, b;
        const char *va = request_get(&in, attrs[i], &a), *vb = request_get(&out, attrs[i], &b);
        if (!vb || a != b || memcmp(va, vb, a) != 0)
            fail_msg("%s: got %.*s, want %.*s", attr_name(attrs[i]), vb ? (int)b : 6,
                     vb ? vb : "(null)", (int)a, va);
    }
    /* Absent stays absent. */
    size_t len;
    assert_null(request_get(&out, ATTR_SASL_USERNAME, &len));
    request_fini(&in);
    request_fini(&out);
}

static void test_record_redaction(void **state)
{
    static const struct {
        const char *label;
        enum record_redact redact;
        const char *sender;
        const char *want;           /* substring of the line */
        const char *absent;         /* must not appear */
    } cases[] = {
        {"none", RECORD_REDACT_NONE, "Alice@Example.org", "\"sender\":\"Alice@Example.org\"", NULL},
        {"localpart", RECORD_REDACT_LOCALPART, "alice@example.org", "\"sender\":\"*@example.org\"", "alice"},
        {"null sender stays", RECORD_REDACT_LOCALPART, "", "\"sender\":\"\"", NULL},
        {"hash", RECORD_REDACT_HASH, "alice@example.org", "@example.org\"", "alice"},
        {"hash ignores case", RECORD_REDACT_HASH, "ALICE@example.org", "@example.org\"", "ALICE"},
        {"sasl user without domain", RECORD_REDACT_LOCALPART, "bob", "\"sasl_username\":\"*\"", "bob"},
    };
    char line[4096], hashed[2][4096];
    int nh = 0;
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct request r;
        request_init(&r);
        request_set(&r, ATTR_SENDER, cases[i].sender, strlen(cases[i].sender));
        request_set(&r, ATTR_SASL_USERNAME, cases[i].sender, strlen(cases[i].sender));
        request_set(&r, ATTR_CLIENT_ADDRESS, "192.0.2.7", 9);
        size_t n = record_format(&r, 1, cases[i].redact, line, sizeof line);
        assert_true(n > 0);
        line[n] = '\0';
        if (!strstr(line, cases[i].want))
            fail_msg("%s: got %s, want it to hold %s", cases[i].label, line, cases[i].want);
        if (cases[i].absent && strstr(line, cases[i].absent))
            fail_msg("%s: got %s, which still holds %s", cases[i].label, line, cases[i].absent);
        if (!strstr(line, "\"client_address\":\"192.0.2.7\""))
            fail_msg("%s: the client address must stay: %s", cases[i].label, line);
        if (cases[i].redact == RECORD_REDACT_HASH)
            snprintf(hashed[nh++], sizeof hashed[0], "%s", line);
        request_fini(&r);
    }
    /* The hash folds case, so one mailbox stays one key in a replay. */
    assert_string_equal(hashed[0], hashed[1]);
    /* Local parts that differ only past their first 512 bytes stay two
     * (they were cut there before hashing: one key in a replay). */
    char longs[2][700], lines[2][4096];
    for (int k = 0; k < 2; k++) {
        memset(longs[k], 'a', 600);
        snprintf(longs[k] + 600, sizeof longs[k] - 600, "%d@x.example", k);
        struct request r;
        request_init(&r);
        request_set(&r, ATTR_SENDER, longs[k], strlen(longs[k]));
        size_t n = record_format(&r, 1, RECORD_REDACT_HASH, lines[k], sizeof lines[k]);
        lines[k][n] = '\0';
        request_fini(&r);
    }
    if (strcmp(lines[0], lines[1]) == 0)
        fail_msg("two local parts hashed the same: %s", lines[0]);
}

static void test_record_foreign_lines(void **state)
{
    struct request r;
    double t;
    const char *why = NULL;
    (void)state;
    request_init(&r);
    char line[] = " { \"a\" : { \"sender\" : \"x\\u0041\\/y\\u00e9\", \"nonsense\":\"1\" } ,"
                  " \"host\":\"mx1\", \"seq\": 12, \"ok\": true, \"t\" : 1.5e9 } ";
    if (record_parse(line, strlen(line), &t, &r, &why) != 0)
        fail_msg("parse: %s", why);
    assert_true(t == 1.5e9);
    size_t len;
    const char *s = request_get(&r, ATTR_SENDER, &len);
    assert_non_null(s);
    assert_int_equal(len, 6);
    assert_memory_equal(s, "xA/y\xc3\xa9", 6);

    /* A surrogate pair, as JSON tools write characters past U+FFFF, is
     * one 4-byte character (it came back as two 3-byte halves); a lone
     * surrogate is kept as it came. */
    char pair[] = "{\"a\":{\"sender\":\"\\ud83d\\ude00@example.org\",\"helo_name\":\"\\ud83dx\"},\"t\":1}";
    if (record_parse(pair, strlen(pair), &t, &r, &why) != 0)
        fail_msg("parse: %s", why);
    s = request_get(&r, ATTR_SENDER, &len);
    assert_non_null(s);
    assert_int_equal(len, 4 + 12);
    assert_memory_equal(s, "\xf0\x9f\x98\x80@example.org", 16);
    s = request_get(&r, ATTR_HELO_NAME, &len);
    assert_non_null(s);
    assert_int_equal(len, 4);
    assert_memory_equal(s, "\xed\xa0\xbdx", 4);
    request_fini(&r);
}

static void test_record_bad_lines(void **state)
{
    static const struct {
        const char *label;
        const char *line;
        const char *why;
    } cases[] = {
        {"not json", "hello", "not a JSON object"},
        {"no time", "{\"a\":{}}", "no \"t\" (time)"},
        {"no attributes", "{\"t\":1}", "no \"a\" (attributes)"},
        {"unterminated", "{\"t\":1,\"a\":{\"sender\":\"x}}", "unterminated string"},
        {"number value", "{\"t\":1,\"a\":{\"size\":12}}", "attribute values must be strings"},
        {"trailing text", "{\"t\":1,\"a\":{}} x", "text after the object"},
        {"bad escape", "{\"t\":1,\"a\":{\"sender\":\"\\q\"}}", "bad escape in a string"},
        {"nested", "{\"t\":1,\"a\":{},\"x\":[1]}", "unexpected object or list"},
        {"truncated", "{\"t\":1,\"a\":{\"sender\":\"x\"", "expected ',' or '}' in \"a\""},
        {"bad time", "{\"t\":\"now\",\"a\":{}}", "expected a number"},
    };
    struct request r;
    char buf[256];
    (void)state;
    request_init(&r);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        double t;
        const char *why = NULL;
        snprintf(buf, sizeof buf, "%s", cases[i].line);
        int rc = record_parse(buf, strlen(buf), &t, &r, &why);
        if (rc != -EINVAL || !why || strcmp(why, cases[i].why) != 0)
            fail_msg("%s: got rc=%d why=%s, want -EINVAL why=%s", cases[i].label, rc,
                     why ? why : "(null)", cases[i].why);
    }
    request_fini(&r);
}

static void test_record_too_long(void **state)
{
    struct request r;
    char small[32];
    (void)state;
    request_init(&r);
    request_set(&r, ATTR_SENDER, "someone@example.org", 19);
    assert_int_equal(record_format(&r, 1, RECORD_REDACT_NONE, small, sizeof small), 0);
    request_fini(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_record_round_trip),
        cmocka_unit_test(test_record_redaction),
        cmocka_unit_test(test_record_foreign_lines),
        cmocka_unit_test(test_record_bad_lines),
        cmocka_unit_test(test_record_too_long),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
