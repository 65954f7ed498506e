/*
 * test_alertmsg - alert templates (variables, sanitizing, one-line
 * subjects) and the RFC 5322 message around them: headers, the RFC 2047
 * subject for non-ASCII text, CRLF line ends, 7bit or quoted-printable
 * bodies within the line limits.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "alertmsg.h"
#include "textbuf.h"

static struct alert_info info(void)
{
    struct alert_info ai = {0};
    ai.rule = (char *)"flood";
    ai.verdict = (char *)"reject";
    ai.key = (char *)"ip:192.0.2.7";
    ai.client_address = (char *)"192.0.2.7";
    ai.sender = (char *)"bad\r\nBcc: x@evil.example";
    ai.evidence = (char *)"  line one\n  line two";
    ai.time = 1700000000;
    ai.suppressed = 42;
    return ai;
}

static void test_alertmsg_check(void **state)
{
    (void)state;
    char err[512];
    static const struct {
        const char *label;
        const char *tmpl;
        int want;
        const char *err_has;
    } cases[] = {
        {"plain", "hello", 0, NULL},
        {"known variables", "%{rule} %{key} %{evidence} %{suppressed} %{count}", 0, NULL},
        {"unknown", "x %{nope} y", -1, "unknown variable %{nope}"},
        {"unterminated", "x %{rule", -1, "unterminated"},
        {"request attribute not offered", "%{size}", -1, "unknown variable %{size}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        int rc = alertmsg_check(cases[i].tmpl, err, sizeof err);
        if ((rc < 0) != (cases[i].want < 0))
            fail_msg("%s: got %d, want %d", cases[i].label, rc, cases[i].want);
        if (cases[i].err_has && !strstr(err, cases[i].err_has))
            fail_msg("%s: error \"%s\" lacks \"%s\"", cases[i].label, err, cases[i].err_has);
    }
}

static void test_alertmsg_expand(void **state)
{
    (void)state;
    struct alert_info ai = info();
    struct textbuf b;
    textbuf_init(&b, 4096);
    alertmsg_expand("%{rule}/%{verdict} %{key} <%{sender}> n=%{suppressed} t=%{time} [%{helo_name}]%%",
                    &ai, 1, &b);
    /* CR, LF of a value are gone: no header can be injected. */
    assert_string_equal(textbuf_cstr(&b),
                        "flood/reject ip:192.0.2.7 <bad Bcc: x@evil.example> n=42 "
                        "t=2023-11-14 22:13:20 UTC []%");
    textbuf_reset(&b);
    alertmsg_expand("Evidence:\n%{evidence}\nend", &ai, 0, &b);
    assert_string_equal(textbuf_cstr(&b), "Evidence:\n  line one\n  line two\nend");
    textbuf_reset(&b);
    alertmsg_expand("%{evidence}", &ai, 1, &b);
    assert_string_equal(textbuf_cstr(&b), "  line one   line two");
    textbuf_reset(&b);
    ai.rule = (char *)"bad\x01\xff\tz";
    alertmsg_expand("50% %{rule}", &ai, 0, &b);
    assert_string_equal(textbuf_cstr(&b), "50% bad???z");
    textbuf_fini(&b);
}

/* Every line ends with CRLF and is at most max bytes. */
static void check_lines(const char *msg, size_t max)
{
    const char *p = msg;
    while (*p) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl);
        assert_true(nl > p || nl == p);
        if (nl == p || nl[-1] != '\r')
            fail_msg("bare LF at offset %zu", (size_t)(nl - msg));
        if ((size_t)(nl - 1 - p) > max)
            fail_msg("line of %zu bytes at offset %zu", (size_t)(nl - 1 - p), (size_t)(p - msg));
        p = nl + 1;
    }
}

static void test_alertmsg_format_ascii(void **state)
{
    (void)state;
    char *to[] = {(char *)"abuse@isp.example", (char *)"noc@isp.example"};
    struct alertmsg_head h = {
        .from = "smtpguard@isp.example", .to = to, .n_to = 2,
        .subject = "smtpguard: flood reject ip:192.0.2.7", .date = 1700000000,
        .message_id = "1.2.smtpguard@mx1",
    };
    const char body[] = "Rule: flood\n.leading dot\n\nend\n";
    struct textbuf b;
    textbuf_init(&b, 1 << 16);
    alertmsg_format(&h, body, sizeof body - 1, &b);
    const char *m = textbuf_cstr(&b);
    check_lines(m, 78);
    assert_non_null(strstr(m, "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"));
    assert_non_null(strstr(m, "From: <smtpguard@isp.example>\r\n"));
    assert_non_null(strstr(m, "To: <abuse@isp.example>,\r\n <noc@isp.example>\r\n"));
    assert_non_null(strstr(m, "Subject: smtpguard: flood reject ip:192.0.2.7\r\n"));
    assert_non_null(strstr(m, "Message-ID: <1.2.smtpguard@mx1>\r\n"));
    assert_non_null(strstr(m, "Content-Type: text/plain; charset=UTF-8\r\n"));
    assert_non_null(strstr(m, "Auto-Submitted: auto-generated\r\n"));
    assert_non_null(strstr(m, "Content-Transfer-Encoding: 7bit\r\n\r\nRule: flood\r\n.leading dot\r\n\r\nend\r\n"));
    textbuf_fini(&b);
}

static void test_alertmsg_format_utf8(void **state)
{
    (void)state;
    char *to[] = {(char *)"abuse@isp.example"};
    /* 40 two-byte characters: the subject needs more than one encoded
     * word, and none may split a character. */
    char subject[200] = "Zürich ";
    for (int i = 0; i < 40; i++)
        strcat(subject, "é");
    struct alertmsg_head h = {
        .from = "smtpguard@isp.example", .to = to, .n_to = 1, .subject = subject,
        .date = 0, .message_id = "x@y",
    };
    char body[400];
    snprintf(body, sizeof body, "Sender: jürgen@example.org\nFrom the start\nlong: ");
    for (int i = 0; i < 30; i++)
        strcat(body, "abcdefgh= ");
    strcat(body, "\ntrailing space \n");
    struct textbuf b;
    textbuf_init(&b, 1 << 16);
    alertmsg_format(&h, body, strlen(body), &b);
    const char *m = textbuf_cstr(&b);
    check_lines(m, 998);
    assert_non_null(strstr(m, "Date: Thu, 01 Jan 1970 00:00:00 +0000\r\n"));
    assert_non_null(strstr(m, "Subject: =?UTF-8?B?"));
    assert_non_null(strstr(m, "?=\r\n =?UTF-8?B?"));
    /* No 8-bit byte anywhere: it crosses any relay. */
    for (const char *p = m; *p; p++)
        if ((unsigned char)*p >= 0x80)
            fail_msg("8-bit byte at offset %zu", (size_t)(p - m));
    const char *bodyp = strstr(m, "Content-Transfer-Encoding: quoted-printable\r\n\r\n");
    assert_non_null(bodyp);
    check_lines(bodyp, 76);
    assert_non_null(strstr(bodyp, "Sender: j=C3=BCrgen@example.org\r\n"));
    assert_non_null(strstr(bodyp, "=46rom the start\r\n"));
    assert_non_null(strstr(bodyp, "abcdefgh=3D "));
    assert_non_null(strstr(bodyp, "trailing space=20\r\n"));
    /* Each encoded word decodes to whole characters: an encoded word
     * holds 45 bytes at most, so the first one ends before byte 45. */
    textbuf_fini(&b);
}

/* b64_decode - standard base64 of n characters into out; bytes written. */
static size_t b64_decode(const char *s, size_t n, unsigned char *out)
{
    static const char set[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    unsigned v = 0, bits = 0;
    for (size_t i = 0; i < n && s[i] != '='; i++) {
        const char *c = strchr(set, s[i]);
        assert_non_null(c);
        v = (v << 6) | (unsigned)(c - set);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(v >> bits);
        }
    }
    return o;
}

/* utf8_whole - s[0..n) is UTF-8 with no character cut. */
static bool utf8_whole(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t len = s[i] < 0x80 ? 1 : (s[i] & 0xe0) == 0xc0 ? 2 : (s[i] & 0xf0) == 0xe0 ? 3 : 4;
        if (i + len > n)
            return false;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
        i += len;
    }
    return true;
}

/* A subject cut at its 900 bytes stops between characters: "x" and 500
 * two-byte characters made a last encoded word holding half of one. */
static void test_alertmsg_long_subject_cut_between_characters(void **state)
{
    (void)state;
    char *to[] = {(char *)"abuse@isp.example"};
    char subject[1100] = "x";
    for (int i = 0; i < 500; i++)
        strcat(subject, "\xc3\xa9");
    struct alertmsg_head h = {
        .from = "smtpguard@isp.example", .to = to, .n_to = 1, .subject = subject,
        .date = 0, .message_id = "x@y",
    };
    struct textbuf b;
    textbuf_init(&b, 1 << 16);
    alertmsg_format(&h, "body\n", 5, &b);
    const char *m = textbuf_cstr(&b);
    size_t words = 0, total = 0;
    for (const char *p = strstr(m, "=?UTF-8?B?"); p; p = strstr(p, "=?UTF-8?B?")) {
        p += 10;
        const char *end = strstr(p, "?=");
        assert_non_null(end);
        unsigned char dec[128];
        size_t n = b64_decode(p, (size_t)(end - p), dec);
        if (!utf8_whole(dec, n))
            fail_msg("encoded word %zu decodes to a cut character", words + 1);
        words++;
        total += n;
        p = end;
    }
    assert_true(words > 10);
    assert_true(total <= 900 && total >= 898);
    /* RFC 2047: a header line with encoded words is at most 76
     * characters, the first ("Subject: ...") too. */
    const char *subj = strstr(m, "Subject:");
    const char *hend = strstr(subj, "\r\n\r\n");
    for (const char *l = subj; l && l < hend;) {
        const char *e = strstr(l, "\r\n");
        if ((size_t)(e - l) > 76)
            fail_msg("a Subject line of %zu characters", (size_t)(e - l));
        l = e + 2;
        if (*l != ' ')
            break; /* the next header */
    }
    textbuf_fini(&b);
}

/* A plain ASCII body with a line starting "From " goes quoted-printable,
 * its F encoded, as the comment always said (it went out 7bit). */
static void test_alertmsg_from_line_forces_qp(void **state)
{
    (void)state;
    char *to[] = {(char *)"abuse@isp.example"};
    struct alertmsg_head h = {
        .from = "smtpguard@isp.example", .to = to, .n_to = 1, .subject = "s",
        .date = 0, .message_id = "x@y",
    };
    struct textbuf b;
    textbuf_init(&b, 1 << 16);
    const char body[] = "Hello\nFrom the abuse robot\nFrom: not at the start\n";
    alertmsg_format(&h, body, sizeof body - 1, &b);
    const char *m = textbuf_cstr(&b);
    assert_non_null(strstr(m, "Content-Transfer-Encoding: quoted-printable\r\n"));
    assert_non_null(strstr(m, "\r\n=46rom the abuse robot\r\n"));
    assert_non_null(strstr(m, "\r\nFrom: not at the start\r\n"));
    textbuf_fini(&b);
}

static void test_alertmsg_date(void **state)
{
    (void)state;
    char d[64];
    alertmsg_date(951782400, d, sizeof d); /* leap day 2000 */
    assert_string_equal(d, "Tue, 29 Feb 2000 00:00:00 +0000");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alertmsg_check),
        cmocka_unit_test(test_alertmsg_expand),
        cmocka_unit_test(test_alertmsg_format_ascii),
        cmocka_unit_test(test_alertmsg_format_utf8),
        cmocka_unit_test(test_alertmsg_long_subject_cut_between_characters),
        cmocka_unit_test(test_alertmsg_from_line_forces_qp),
        cmocka_unit_test(test_alertmsg_date),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
