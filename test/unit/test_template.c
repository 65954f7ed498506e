/*
 * test_template - compiling "%{name}" templates, expanding them into
 * capped buffers, and the sanitizer (controls and ill-formed UTF-8).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "template.h"

/* The variables the tests know, and the ids the resolver hands out. */
static const char *const var_names[] = {"client_address", "sender", "score.ip", "rule",
                                        "empty", "null"};

enum { VAR_CLIENT, VAR_SENDER, VAR_SCORE, VAR_RULE, VAR_EMPTY, VAR_NULL, VAR_COUNT };

/* One expansion's values; len SIZE_MAX means strlen(). */
struct values {
    const char *s[VAR_COUNT];   /* value text, NULL = no value */
    size_t len[VAR_COUNT];      /* bytes, or SIZE_MAX for strlen() */
};

static int resolve(void *ctx, const char *name, size_t len)
{
    int *calls = ctx;

    if (calls)
        (*calls)++;
    for (int i = 0; i < VAR_COUNT; i++)
        if (strlen(var_names[i]) == len && memcmp(var_names[i], name, len) == 0)
            return i;
    return -1;
}

static const char *value(void *ctx, int id, size_t *len)
{
    const struct values *v = ctx;

    if (id < 0 || id >= VAR_COUNT || !v->s[id])
        return NULL;
    *len = v->len[id] == SIZE_MAX ? strlen(v->s[id]) : v->len[id];
    return v->s[id];
}

static struct values default_values(void)
{
    struct values v;

    for (int i = 0; i < VAR_COUNT; i++)
        v.len[i] = SIZE_MAX;
    v.s[VAR_CLIENT] = "192.0.2.7";
    v.s[VAR_SENDER] = "joe@example.com";
    v.s[VAR_SCORE] = "512.4";
    v.s[VAR_RULE] = "flood";
    v.s[VAR_EMPTY] = "";
    v.s[VAR_NULL] = NULL;
    return v;
}

static struct template *must_compile(const char *src)
{
    struct template *t = NULL;
    char err[256];

    if (template_compile(src, resolve, NULL, &t, err, sizeof(err)) != 0)
        fail_msg("compile \"%s\": got error \"%s\", want success", src, err);
    return t;
}

static void test_template_expand(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        const char *src;
        const char *want;
    } cases[] = {
        {"design message", "550 5.7.1 %{client_address} sent too much mail, contact abuse@isp",
         "550 5.7.1 192.0.2.7 sent too much mail, contact abuse@isp"},
        {"several", "%{rule}: %{sender} from %{client_address} score %{score.ip}",
         "flood: joe@example.com from 192.0.2.7 score 512.4"},
        {"back to back", "%{rule}%{rule}", "floodflood"},
        {"only a variable", "%{rule}", "flood"},
        {"empty template", "", ""},
        {"no variables", "plain text", "plain text"},
        {"percent percent", "100%% sure", "100% sure"},
        {"lone percent", "50% off", "50% off"},
        {"trailing percent", "100%", "100%"},
        {"only percent", "%", "%"},
        {"percent x", "%x%y", "%x%y"},
        {"escaped brace", "%%{rule}", "%{rule}"},
        {"escape then var", "%%%{rule}", "%flood"},
        {"four percents", "%%%%", "%%"},
        {"three percents", "%%%", "%%"},
        {"brace alone", "{rule} }", "{rule} }"},
        {"empty value", "[%{empty}]", "[]"},
        {"NULL value", "[%{null}]", "[]"},
        {"literal CR LF", "line1\r\nline2 %{rule}", "line1??line2 flood"},
        {"literal tab", "a\tb", "a?b"},
        {"literal bad UTF-8", "caf\xc3 %{rule}", "caf? flood"},
        {"literal good UTF-8", "caf\xc3\xa9 \xe2\x82\xac %{rule}", "caf\xc3\xa9 \xe2\x82\xac flood"},
        {"literal broken before var", "x\xe2\x82%{rule}", "x?flood"},
    };
    struct values v = default_values();
    char out[256];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct template *t = must_compile(cases[i].src);
        size_t n = template_expand(t, value, &v, out, sizeof(out));

        if (strcmp(out, cases[i].want) != 0 || n != strlen(cases[i].want)) {
            template_free(t);
            fail_msg("%s: got \"%s\" (%zu), want \"%s\" (%zu)", cases[i].label, out, n,
                     cases[i].want, strlen(cases[i].want));
        }
        if (strcmp(template_source(t), cases[i].src) != 0) {
            template_free(t);
            fail_msg("%s: source got \"%s\", want \"%s\"", cases[i].label, template_source(t),
                     cases[i].src);
        }
        template_free(t);
    }
}

static void test_template_values_sanitized(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        const char *val;
        size_t len;
        const char *want;
    } cases[] = {
        {"CRLF injection", "x\r\naction=OK", SIZE_MAX, "<x??action=OK>"},
        {"embedded NUL", "a\0b", 3, "<a?b>"},
        {"escape sequence", "\x1b[31mred", SIZE_MAX, "<?[31mred>"},
        {"DEL", "a\x7f", SIZE_MAX, "<a?>"},
        {"UTF-8 kept", "J\xc3\xbcrgen", SIZE_MAX, "<J\xc3\xbcrgen>"},
        {"truncated at end of value", "ab\xf0\x9f\x98", SIZE_MAX, "<ab?>"},
        {"latin-1", "M\xfcller", SIZE_MAX, "<M?ller>"},
    };
    char out[128];

    struct template *t = must_compile("<%{sender}>");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct values v = default_values();

        v.s[VAR_SENDER] = cases[i].val;
        v.len[VAR_SENDER] = cases[i].len;
        template_expand(t, value, &v, out, sizeof(out));
        if (strcmp(out, cases[i].want) != 0) {
            template_free(t);
            fail_msg("%s: got \"%s\", want \"%s\"", cases[i].label, out, cases[i].want);
        }
    }
    template_free(t);
}

static void test_template_compile_errors(void **state)
{
    (void)state;
    static const struct {
        const char *src;
        const char *want;
    } cases[] = {
        {"abc %{foo} x", "unknown variable %{foo} at offset 4"},
        {"%{rule} %{nope}", "unknown variable %{nope} at offset 8"},
        {"abc%{", "unterminated %{ at offset 3"},
        {"%{rule", "unterminated %{ at offset 0"},
        {"%{rule} and %{sender", "unterminated %{ at offset 12"},
        {"x%{}", "empty variable name at offset 1"},
        {"%{%{rule}}", "unknown variable %{%{rule} at offset 0"},
        {"%{Rule}", "unknown variable %{Rule} at offset 0"},
        {"%{ rule}", "unknown variable %{ rule} at offset 0"},
        {"%{a\nb}", "unknown variable %{a?b} at offset 0"},
        {"%%%{x}", "unknown variable %{x} at offset 2"},
        {"%{aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}",
         "unknown variable %{aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...}"
         " at offset 0"},
    };
    char err[256];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct template *t = NULL;
        int rc = template_compile(cases[i].src, resolve, NULL, &t, err, sizeof(err));

        if (rc != -EINVAL) {
            template_free(t);
            fail_msg("\"%s\": rc got %d, want %d", cases[i].src, rc, -EINVAL);
        }
        if (strcmp(err, cases[i].want) != 0)
            fail_msg("\"%s\": err got \"%s\", want \"%s\"", cases[i].src, err, cases[i].want);
    }
}

static void test_template_compile_error_buffer(void **state)
{
    (void)state;
    struct template *t = NULL;
    char err[10];

    memset(err, 'x', sizeof(err));
    assert_int_equal(template_compile("%{foo}", resolve, NULL, &t, err, sizeof(err)), -EINVAL);
    if (strcmp(err, "unknown v") != 0)
        fail_msg("small err buffer: got \"%s\", want \"unknown v\"", err);
    assert_int_equal(template_compile("%{foo}", resolve, NULL, &t, err, 0), -EINVAL);
}

static void test_template_resolves_once(void **state)
{
    (void)state;
    struct template *t = NULL;
    struct values v = default_values();
    char err[64], out[64];
    int calls = 0;

    assert_int_equal(template_compile("%{rule} %{sender} %{rule}", resolve, &calls, &t, err,
                                      sizeof(err)),
                     0);
    if (calls != 3)
        fail_msg("resolver calls got %d, want 3", calls);
    template_expand(t, value, &v, out, sizeof(out));
    template_expand(t, value, &v, out, sizeof(out));
    if (calls != 3)
        fail_msg("resolver calls after expansion got %d, want 3 (no lookups at run time)", calls);
    template_free(t);
    template_free(NULL);
}

static void test_template_truncation(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        const char *src;
        const char *sender;     /* value of %{sender} */
        size_t cap;
        const char *want;
    } cases[] = {
        {"fits exactly", "ab%{sender}", "cd", 5, "abcd"},
        {"one short", "ab%{sender}", "cd", 4, "abc"},
        {"cut in literal", "abcdef%{sender}", "x", 4, "abc"},
        {"cap 1", "ab%{sender}", "cd", 1, ""},
        {"cut before 2-byte char", "a%{sender}", "\xc3\xa9", 3, "a"},
        {"2-byte char fits", "a%{sender}", "\xc3\xa9", 4, "a\xc3\xa9"},
        {"cut before 4-byte char", "%{sender}", "\xf0\x9f\x98\x80", 4, ""},
        {"4-byte char fits", "%{sender}", "\xf0\x9f\x98\x80", 5, "\xf0\x9f\x98\x80"},
        {"nothing after a dropped char", "%{sender}x", "\xe2\x82\xac", 3, ""},
        {"nothing after a dropped char in a value", "%{sender}", "\xe2\x82\xac" "a", 3, ""},
        {"literal UTF-8 cut", "\xe2\x82\xac\xe2\x82\xac%{sender}", "", 6, "\xe2\x82\xac"},
        {"replacement fits", "%{sender}", "a\r\n", 4, "a??"},
        {"replacement cut", "%{sender}", "a\r\n", 3, "a?"},
    };
    char out[64];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct template *t = must_compile(cases[i].src);
        struct values v = default_values();
        size_t n;

        v.s[VAR_SENDER] = cases[i].sender;
        memset(out, 'Z', sizeof(out));
        n = template_expand(t, value, &v, out, cases[i].cap);
        template_free(t);
        if (strcmp(out, cases[i].want) != 0 || n != strlen(cases[i].want))
            fail_msg("%s: got \"%s\" (%zu), want \"%s\" (%zu)", cases[i].label, out, n,
                     cases[i].want, strlen(cases[i].want));
        for (size_t j = cases[i].cap; j < sizeof(out); j++)
            if (out[j] != 'Z')
                fail_msg("%s: wrote byte %zu with cap %zu", cases[i].label, j, cases[i].cap);
    }

    /* cap 0 writes nothing at all */
    struct template *t = must_compile("abc");
    struct values v = default_values();
    out[0] = 'Z';
    assert_int_equal(template_expand(t, value, &v, out, 0), 0);
    assert_int_equal(out[0], 'Z');
    template_free(t);
}

static void test_template_sanitize(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        const char *in;
        size_t len;             /* SIZE_MAX = strlen */
        const char *want;
    } cases[] = {
        {"plain", "hello", SIZE_MAX, "hello"},
        {"empty", "", SIZE_MAX, ""},
        {"CR LF", "a\r\nb", SIZE_MAX, "a??b"},
        {"tab", "\t", SIZE_MAX, "?"},
        {"all C0 ends", "\x01\x1f", SIZE_MAX, "??"},
        {"DEL", "\x7f", SIZE_MAX, "?"},
        {"NUL inside", "a\0b", 3, "a?b"},
        {"space and tilde kept", " ~", SIZE_MAX, " ~"},
        {"2-byte", "\xc3\xa9", SIZE_MAX, "\xc3\xa9"},
        {"3-byte", "\xe2\x82\xac", SIZE_MAX, "\xe2\x82\xac"},
        {"4-byte", "\xf0\x9f\x98\x80", SIZE_MAX, "\xf0\x9f\x98\x80"},
        {"U+0800 lowest 3-byte", "\xe0\xa0\x80", SIZE_MAX, "\xe0\xa0\x80"},
        {"U+10000 lowest 4-byte", "\xf0\x90\x80\x80", SIZE_MAX, "\xf0\x90\x80\x80"},
        {"U+10FFFF highest", "\xf4\x8f\xbf\xbf", SIZE_MAX, "\xf4\x8f\xbf\xbf"},
        {"U+D7FF before surrogates", "\xed\x9f\xbf", SIZE_MAX, "\xed\x9f\xbf"},
        {"U+E000 after surrogates", "\xee\x80\x80", SIZE_MAX, "\xee\x80\x80"},
        {"U+FFFD", "\xef\xbf\xbd", SIZE_MAX, "\xef\xbf\xbd"},
        {"NBSP U+00A0 kept", "\xc2\xa0", SIZE_MAX, "\xc2\xa0"},
        {"C1 U+0080", "\xc2\x80", SIZE_MAX, "?"},
        {"C1 U+009B (CSI)", "\xc2\x9b", SIZE_MAX, "?"},
        {"overlong C0 AF", "\xc0\xaf", SIZE_MAX, "??"},
        {"overlong C1 BF", "\xc1\xbf", SIZE_MAX, "??"},
        {"overlong 3-byte", "\xe0\x80\xaf", SIZE_MAX, "???"},
        {"overlong 3-byte top", "\xe0\x9f\xbf", SIZE_MAX, "???"},
        {"overlong 4-byte", "\xf0\x80\x80\xaf", SIZE_MAX, "????"},
        {"overlong 4-byte top", "\xf0\x8f\xbf\xbf", SIZE_MAX, "????"},
        {"surrogate D800", "\xed\xa0\x80", SIZE_MAX, "???"},
        {"surrogate DFFF", "\xed\xbf\xbf", SIZE_MAX, "???"},
        {"above U+10FFFF", "\xf4\x90\x80\x80", SIZE_MAX, "????"},
        {"F5 lead", "\xf5\x80\x80\x80", SIZE_MAX, "????"},
        {"FF FE", "\xff\xfe", SIZE_MAX, "??"},
        {"lone continuation", "a\x80z", SIZE_MAX, "a?z"},
        {"truncated 2 at end", "ok\xc3", SIZE_MAX, "ok?"},
        {"truncated 3 at end", "\xe2\x82", SIZE_MAX, "?"},
        {"truncated 4 at end", "\xf0\x9f\x98", SIZE_MAX, "?"},
        {"truncated 3 then ASCII", "\xe2\x82x", SIZE_MAX, "?x"},
        {"truncated 4 then ASCII", "\xf0\x9f\x98" "A", SIZE_MAX, "?A"},
        {"truncated then valid", "\xe2\xc3\xa9", SIZE_MAX, "?\xc3\xa9"},
        {"lead then lead", "\xc3\xc3", SIZE_MAX, "??"},
        {"len stops early", "abc\r\n", 3, "abc"},
    };
    char out[64];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = cases[i].len == SIZE_MAX ? strlen(cases[i].in) : cases[i].len;
        size_t n = template_sanitize(cases[i].in, len, out, sizeof(out));

        if (strcmp(out, cases[i].want) != 0 || n != strlen(cases[i].want))
            fail_msg("%s: got \"%s\" (%zu), want \"%s\" (%zu)", cases[i].label, out, n,
                     cases[i].want, strlen(cases[i].want));
    }
}

static void test_template_sanitize_cap(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        const char *in;
        size_t cap;
        const char *want;
    } cases[] = {
        {"cap 1", "abc", 1, ""},
        {"cap 3", "abc", 3, "ab"},
        {"cap 4", "abc", 4, "abc"},
        {"2-byte does not fit", "a\xc3\xa9", 3, "a"},
        {"2-byte fits", "a\xc3\xa9", 4, "a\xc3\xa9"},
        {"3-byte does not fit", "\xe2\x82\xac", 3, ""},
        {"stop, not skip", "\xe2\x82\xac" "abc", 3, ""},
        {"replacement counts 1", "\xff\xff", 2, "?"},
    };
    char out[16];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n;

        memset(out, 'Z', sizeof(out));
        n = template_sanitize(cases[i].in, strlen(cases[i].in), out, cases[i].cap);
        if (strcmp(out, cases[i].want) != 0 || n != strlen(cases[i].want))
            fail_msg("%s: got \"%s\" (%zu), want \"%s\" (%zu)", cases[i].label, out, n,
                     cases[i].want, strlen(cases[i].want));
        for (size_t j = cases[i].cap; j < sizeof(out); j++)
            if (out[j] != 'Z')
                fail_msg("%s: wrote byte %zu with cap %zu", cases[i].label, j, cases[i].cap);
    }
    out[0] = 'Z';
    assert_int_equal(template_sanitize("abc", 3, out, 0), 0);
    assert_int_equal(out[0], 'Z');
}

/*
 * test_template_sanitize_all_bytes - every 1- and 2-byte input and a
 * sweep of 3- and 4-byte ones: the output is always well-formed UTF-8
 * without controls, and never longer than the input.
 */
static bool well_formed(const unsigned char *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        uint32_t cp;

        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f)
                return false;
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            n = 2;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 3;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + n > len)
            return false;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp <= 0x9f))
            return false;
        i += n;
    }
    return true;
}

static void test_template_sanitize_all_bytes(void **state)
{
    (void)state;
    unsigned char in[4];
    char out[16];

    for (unsigned a = 0; a < 256; a++) {
        for (unsigned b = 0; b < 256; b++) {
            in[0] = (unsigned char)a;
            in[1] = (unsigned char)b;
            for (size_t len = 1; len <= 2; len++) {
                size_t n = template_sanitize((const char *)in, len, out, sizeof(out));
                if (n > len || !well_formed((const unsigned char *)out, n))
                    fail_msg("%02x %02x (len %zu): got bad output of %zu bytes", a, b, len, n);
            }
        }
    }
    /* Leads that start longer sequences, with interesting continuations. */
    static const unsigned char conts[] = {0x00, 0x41, 0x7f, 0x80, 0x8f, 0x90, 0x9f,
                                          0xa0, 0xbf, 0xc0, 0xc2, 0xf4, 0xff};
    for (unsigned a = 0xe0; a < 256; a++) {
        for (size_t x = 0; x < sizeof(conts); x++) {
            for (size_t y = 0; y < sizeof(conts); y++) {
                for (size_t z = 0; z < sizeof(conts); z++) {
                    in[0] = (unsigned char)a;
                    in[1] = conts[x];
                    in[2] = conts[y];
                    in[3] = conts[z];
                    size_t n = template_sanitize((const char *)in, 4, out, sizeof(out));
                    if (n > 4 || !well_formed((const unsigned char *)out, n))
                        fail_msg("%02x %02x %02x %02x: got bad output of %zu bytes", in[0],
                                 in[1], in[2], in[3], n);
                }
            }
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_template_expand),
        cmocka_unit_test(test_template_values_sanitized),
        cmocka_unit_test(test_template_compile_errors),
        cmocka_unit_test(test_template_compile_error_buffer),
        cmocka_unit_test(test_template_resolves_once),
        cmocka_unit_test(test_template_truncation),
        cmocka_unit_test(test_template_sanitize),
        cmocka_unit_test(test_template_sanitize_cap),
        cmocka_unit_test(test_template_sanitize_all_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
