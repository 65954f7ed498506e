/*
 * test_log - what reaches stderr: a peer's value quoted as one token
 * (log_quote_field), and a line longer than the buffer cut with a mark.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "log.h"

/* capture - run one log_write with stderr sent to a file; its text. */
static char captured[16384];

static const char *capture_long(size_t n)
{
    char path[] = "/tmp/test_log.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    char *big = malloc(n + 1);
    memset(big, 'x', n);
    big[n] = '\0';
    log_write(LOG_LEVEL_WARN, "start %s END", big);
    free(big);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    lseek(fd, 0, SEEK_SET);
    ssize_t got = read(fd, captured, sizeof captured - 1);
    captured[got > 0 ? got : 0] = '\0';
    close(fd);
    unlink(path);
    return captured;
}

/* A decision line (up to ~3 kB) fits whole; a longer one is cut with
 * "..." at its end (it was cut at 2,047 bytes without a word). */
static void test_log_long_lines(void **state)
{
    (void)state;
    assert_int_equal(log_open(NULL, true), 0);
    const char *s = capture_long(3000);
    assert_non_null(strstr(s, "xx END\n"));
    s = capture_long(5000);
    assert_null(strstr(s, "END"));
    assert_non_null(strstr(s, "xx...\n"));
    log_close();
}

/* A value is one token: no space, '<' or '>' of its own. */
static void test_log_quote_field(void **state)
{
    (void)state;
    char q[LOG_QUOTE_BUF];
    const char *v = "pc1> rule=trusted verdict=permit x=<y";
    assert_string_equal(log_quote_field(v, strlen(v), q, sizeof q),
                        "pc1\\x3e\\x20rule=trusted\\x20verdict=permit\\x20x=\\x3cy");
    assert_string_equal(log_quote(v, strlen(v), q, sizeof q), v);
    assert_string_equal(log_quote_field("a\"b\\c\x01", 6, q, sizeof q), "a\\\"b\\\\c\\x01");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_log_long_lines),
        cmocka_unit_test(test_log_quote_field),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
