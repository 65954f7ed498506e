/*
 * test_admin - the admin API's query decoding (the HTTP exchange itself is
 * tested against a running daemon in test/integration/test_admin.py).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "admin.h"

static void test_admin_query_get(void **state)
{
    static const struct {
        const char *label;
        const char *query;
        const char *name;
        int want_len;               /* -1: absent; -2: malformed or too long */
        const char *want;
    } cases[] = {
        {"plain", "counter=ip&key=192.0.2.7", "key", 9, "192.0.2.7"},
        {"first", "counter=ip&key=x", "counter", 2, "ip"},
        {"percent", "key=alice%7Cexample.org", "key", 17, "alice|example.org"},
        {"plus is space", "key=a+b", "key", 3, "a b"},
        {"empty value", "key=&n=1", "key", 0, ""},
        {"absent", "counter=ip", "key", -1, NULL},
        {"name is a prefix", "keys=1", "key", -1, NULL},
        {"bad percent", "key=%zz", "key", -2, NULL},
        {"short percent", "key=a%4", "key", -2, NULL},
        {"NUL refused", "key=a%00b", "key", -2, NULL},
        {"too long", "key=0123456789abcdef0123456789", "key", -2, NULL},
        {"body after &", "x=1&&key=v", "key", 1, "v"},
    };
    (void)state;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[24];
        int got = admin_query_get(cases[i].query, strlen(cases[i].query), cases[i].name, out,
                                  sizeof out);
        if (got != cases[i].want_len)
            fail_msg("%s: got length %d, want %d", cases[i].label, got, cases[i].want_len);
        if (got >= 0 && strcmp(out, cases[i].want) != 0)
            fail_msg("%s: got \"%s\", want \"%s\"", cases[i].label, out, cases[i].want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admin_query_get),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
