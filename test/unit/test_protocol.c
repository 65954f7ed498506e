/*
 * test_protocol - the incremental scanner, the in-place parser and the
 * answer writer (policyd/protocol.c), on requests as Postfix 2.1 - 3.8
 * send them and on everything a broken or hostile client could send.
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

#include "protocol.h"
#include "request.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

static const struct protocol_limits default_limits = {
    .max_line = PROTOCOL_DEFAULT_MAX_LINE,
    .max_request = PROTOCOL_DEFAULT_MAX_REQUEST,
    .max_attrs = PROTOCOL_DEFAULT_MAX_ATTRS,
};

/* Every attribute of SMTPD_POLICY_README up to Postfix 3.8, in its order. */
static const struct {
    enum attr a;
    const char *value;
} full_attrs[] = {
    {ATTR_REQUEST, "smtpd_access_policy"},
    {ATTR_PROTOCOL_STATE, "RCPT"},
    {ATTR_PROTOCOL_NAME, "ESMTP"},
    {ATTR_HELO_NAME, "some.domain.tld"},
    {ATTR_QUEUE_ID, "8045F2AB23"},
    {ATTR_SENDER, "foo@Bar.TLD"},
    {ATTR_RECIPIENT, "bar@foo.tld"},
    {ATTR_RECIPIENT_COUNT, "0"},
    {ATTR_CLIENT_ADDRESS, "2001:db8:1:2::77"},
    {ATTR_CLIENT_NAME, "another.domain.tld"},
    {ATTR_REVERSE_CLIENT_NAME, "another.domain.tld"},
    {ATTR_INSTANCE, "123.456.7"},
    {ATTR_SASL_METHOD, "plain"},
    {ATTR_SASL_USERNAME, "you@Example.ORG"},
    {ATTR_SASL_SENDER, ""},
    {ATTR_SIZE, "12345"},
    {ATTR_CCERT_SUBJECT, "solaris9.porcupine.org"},
    {ATTR_CCERT_ISSUER, "Wietse+20Venema"},
    {ATTR_CCERT_FINGERPRINT, "C2:9D:F4:87:71:73:73:D9:18:E7:C2:F3:C1:DA:6E:04"},
    {ATTR_ENCRYPTION_PROTOCOL, "TLSv1/SSLv3"},
    {ATTR_ENCRYPTION_CIPHER, "DHE-RSA-AES256-SHA"},
    {ATTR_ENCRYPTION_KEYSIZE, "256"},
    {ATTR_ETRN_DOMAIN, ""},
    {ATTR_STRESS, ""},
    {ATTR_CCERT_PUBKEY_FINGERPRINT, "68:B3:29:DA:98:93:E3:40:99:C7:D8:AD:5C:B9:C9:40"},
    {ATTR_CLIENT_PORT, "1234"},
    {ATTR_POLICY_CONTEXT, "submission"},
    {ATTR_SERVER_ADDRESS, "10.3.2.1"},
    {ATTR_SERVER_PORT, "54321"},
    {ATTR_COMPATIBILITY_LEVEL, "3.6"},
    {ATTR_MAIL_VERSION, "3.8.0"},
};

/* The example of the Postfix 2.1 SMTPD_POLICY_README: no SASL, no TLS. */
static const char postfix21_request[] =
    "request=smtpd_access_policy\n"
    "protocol_state=RCPT\n"
    "protocol_name=SMTP\n"
    "helo_name=some.domain.tld\n"
    "queue_id=8045F2AB23\n"
    "sender=foo@bar.tld\n"
    "recipient=bar@foo.tld\n"
    "client_address=1.2.3.4\n"
    "client_name=another.domain.tld\n"
    "instance=123.456.7\n"
    "\n";

static const char *show(const char *s)
{
    return s ? s : "(absent)";
}

/* full_request - the Postfix 3.8 request as text, with the given line end. */
static char *full_request(const char *eol, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *s = malloc(cap);
    assert_non_null(s);
    for (size_t i = 0; i < N_ELEMS(full_attrs); i++)
        n += (size_t)snprintf(s + n, cap - n, "%s=%s%s", attr_name(full_attrs[i].a),
                              full_attrs[i].value, eol);
    n += (size_t)snprintf(s + n, cap - n, "%s", eol);
    assert_true(n < cap);
    *len = n;
    return s;
}

/* check_full - req holds exactly the attributes of full_attrs. */
static void check_full(const char *label, struct request *req)
{
    for (int a = 0; a < ATTR_WIRE_COUNT; a++) {
        const char *want = NULL;
        for (size_t i = 0; i < N_ELEMS(full_attrs); i++)
            if (full_attrs[i].a == (enum attr)a)
                want = full_attrs[i].value;
        size_t len;
        const char *got = request_get(req, (enum attr)a, &len);
        if (!want || !got || strcmp(got, want) != 0 || len != strlen(want))
            fail_msg("%s: %s: got \"%s\" (len %zu), want \"%s\"", label, attr_name((enum attr)a),
                     show(got), got ? len : 0, show(want));
    }
    if (req->unknown_count != 0)
        fail_msg("%s: got unknown_count %u, want 0", label, req->unknown_count);
}

/* scan_all - one protocol_scan() over all of buf with fresh state. */
static enum protocol_status scan_all(const struct protocol_limits *lim, const char *buf, size_t len,
                                     size_t *req_len, const char **why)
{
    struct protocol_scan scan;
    protocol_scan_reset(&scan);
    *req_len = 0;
    *why = NULL;
    return protocol_scan(&scan, lim, buf, len, req_len, why);
}

static const char *status_name(enum protocol_status st)
{
    switch (st) {
    case PROTOCOL_NEED_MORE:
        return "NEED_MORE";
    case PROTOCOL_READY:
        return "READY";
    case PROTOCOL_ERROR:
        return "ERROR";
    }
    return "?";
}

static void test_protocol_full_postfix3_request(void **state)
{
    static const char *const eols[] = {"\n", "\r\n"};
    struct request req;
    (void)state;

    request_init(&req);
    for (size_t e = 0; e < N_ELEMS(eols); e++) {
        size_t len, req_len;
        const char *why;
        char *buf = full_request(eols[e], &len);
        const char *label = e ? "CRLF" : "LF";

        enum protocol_status st = scan_all(&default_limits, buf, len, &req_len, &why);
        if (st != PROTOCOL_READY || req_len != len)
            fail_msg("%s: got %s len %zu (%s), want READY len %zu", label, status_name(st), req_len,
                     show(why), len);
        if (protocol_parse(buf, req_len, &req, &why) != 0)
            fail_msg("%s: parse got error %s, want 0", label, why);
        check_full(label, &req);

        /* Derived attributes of a real request. */
        static const struct {
            enum attr a;
            const char *want;
        } derived[] = {
            {ATTR_SENDER_DOMAIN, "bar.tld"},
            {ATTR_SENDER_LOCALPART, "foo"},
            {ATTR_RECIPIENT_DOMAIN, "foo.tld"},
            {ATTR_RECIPIENT_LOCALPART, "bar"},
            {ATTR_SASL_DOMAIN, "example.org"},
        };
        for (size_t i = 0; i < N_ELEMS(derived); i++) {
            const char *got = request_get(&req, derived[i].a, NULL);
            if (!got || strcmp(got, derived[i].want) != 0)
                fail_msg("%s: %s: got %s, want %s", label, attr_name(derived[i].a), show(got),
                         derived[i].want);
        }
        double n;
        if (!request_number(&req, ATTR_SIZE, &n) || n != 12345)
            fail_msg("%s: size: got %g, want 12345", label, n);
        const char *prefix = request_client_prefix(&req, 24, 64, NULL);
        if (!prefix || strcmp(prefix, "2001:db8:1:2::/64") != 0)
            fail_msg("%s: client prefix: got %s, want 2001:db8:1:2::/64", label, show(prefix));
        free(buf);
    }
    request_fini(&req);
}

static void test_protocol_postfix21_request(void **state)
{
    static const struct {
        enum attr a;
        const char *want;       /* NULL: absent */
    } cases[] = {
        {ATTR_REQUEST, "smtpd_access_policy"},
        {ATTR_PROTOCOL_NAME, "SMTP"},
        {ATTR_SENDER, "foo@bar.tld"},
        {ATTR_INSTANCE, "123.456.7"},
        {ATTR_CLIENT_ADDRESS, "1.2.3.4"},
        {ATTR_SASL_USERNAME, NULL},
        {ATTR_SIZE, NULL},
        {ATTR_RECIPIENT_COUNT, NULL},
        {ATTR_CLIENT_PORT, NULL},
        {ATTR_REVERSE_CLIENT_NAME, NULL},
        {ATTR_SASL_DOMAIN, NULL},
        {ATTR_SENDER_DOMAIN, "bar.tld"},
    };
    char buf[sizeof postfix21_request];
    struct request req;
    size_t req_len;
    const char *why;
    (void)state;

    memcpy(buf, postfix21_request, sizeof buf);
    request_init(&req);
    enum protocol_status st = scan_all(&default_limits, buf, sizeof buf - 1, &req_len, &why);
    if (st != PROTOCOL_READY || req_len != sizeof buf - 1)
        fail_msg("got %s len %zu, want READY len %zu", status_name(st), req_len, sizeof buf - 1);
    if (protocol_parse(buf, req_len, &req, &why) != 0)
        fail_msg("parse: got error %s, want 0", why);
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        const char *got = request_get(&req, cases[i].a, NULL);
        if ((got == NULL) != (cases[i].want == NULL) || (got && strcmp(got, cases[i].want) != 0))
            fail_msg("%s: got %s, want %s", attr_name(cases[i].a), show(got), show(cases[i].want));
    }
    double n = -1;
    if (request_number(&req, ATTR_SIZE, &n))
        fail_msg("absent size: got %g, want no number", n);
    const char *prefix = request_client_prefix(&req, 24, 64, NULL);
    if (!prefix || strcmp(prefix, "1.2.3.0/24") != 0)
        fail_msg("client prefix: got %s, want 1.2.3.0/24", show(prefix));
    request_fini(&req);
}

/*
 * However the bytes arrive, the scanner must say NEED_MORE until the
 * last one and then READY with the whole length, and it must resume
 * where it stopped (scan.pos follows the data: no rescan from the start).
 * Split once at every boundary, and feed one byte at a time.
 */
static void test_protocol_split_every_boundary(void **state)
{
    static const char *const eols[] = {"\n", "\r\n"};
    struct request req;
    (void)state;

    request_init(&req);
    for (size_t e = 0; e < N_ELEMS(eols); e++) {
        size_t len, req_len;
        const char *why;
        char *text = full_request(eols[e], &len);
        char *buf = malloc(len);
        assert_non_null(buf);

        for (size_t k = 0; k <= len; k++) {
            struct protocol_scan scan;
            enum protocol_status st;

            memcpy(buf, text, len);
            protocol_scan_reset(&scan);
            st = protocol_scan(&scan, &default_limits, buf, k, &req_len, &why);
            if (k < len && st != PROTOCOL_NEED_MORE)
                fail_msg("split %zu: first part got %s, want NEED_MORE", k,
                         status_name(st));
            if (k < len && scan.pos != k)
                fail_msg("split %zu: got pos %zu, want %zu", k, scan.pos, k);
            if (k < len)
                st = protocol_scan(&scan, &default_limits, buf, len, &req_len, &why);
            if (st != PROTOCOL_READY || req_len != len)
                fail_msg("split %zu: got %s len %zu, want READY len %zu", k, status_name(st),
                         req_len, len);
            if (protocol_parse(buf, req_len, &req, &why) != 0)
                fail_msg("split %zu: parse got %s, want 0", k, why);
            check_full("split", &req);
        }

        /* One byte per read. */
        struct protocol_scan scan;
        protocol_scan_reset(&scan);
        memcpy(buf, text, len);
        for (size_t k = 1; k <= len; k++) {
            enum protocol_status st = protocol_scan(&scan, &default_limits, buf, k, &req_len, &why);
            enum protocol_status want = k == len ? PROTOCOL_READY : PROTOCOL_NEED_MORE;
            if (st != want)
                fail_msg("byte %zu of %zu: got %s, want %s", k, len, status_name(st),
                         status_name(want));
        }
        if (req_len != len)
            fail_msg("bytewise: got len %zu, want %zu", req_len, len);
        if (protocol_parse(buf, req_len, &req, &why) != 0)
            fail_msg("bytewise: parse got %s, want 0", why);
        check_full("bytewise", &req);
        free(buf);
        free(text);
    }
    request_fini(&req);
}

/*
 * A client that pipelines: one read holds two requests and the start of
 * a third. The scan stops at the first; the rest is for the next calls.
 * The scanner resets itself after READY, so the caller just passes the
 * buffer from the next request on.
 */
static void test_protocol_coalesced_requests(void **state)
{
    char buf[] = "request=smtpd_access_policy\nsender=one@a.example\n\n"
                 "request=smtpd_access_policy\r\nsender=two@b.example\r\n\r\n"
                 "request=smtpd_acc";
    const size_t len1 = strlen("request=smtpd_access_policy\nsender=one@a.example\n\n");
    const size_t len2 = strlen("request=smtpd_access_policy\r\nsender=two@b.example\r\n\r\n");
    struct protocol_scan scan;
    struct request req;
    size_t req_len, off = 0;
    const char *why;
    enum protocol_status st;
    (void)state;

    request_init(&req);
    protocol_scan_reset(&scan);

    st = protocol_scan(&scan, &default_limits, buf, sizeof buf - 1, &req_len, &why);
    if (st != PROTOCOL_READY || req_len != len1)
        fail_msg("first: got %s len %zu, want READY len %zu", status_name(st), req_len, len1);
    assert_int_equal(protocol_parse(buf, req_len, &req, &why), 0);
    if (strcmp(show(request_get(&req, ATTR_SENDER, NULL)), "one@a.example") != 0)
        fail_msg("first: got sender %s, want one@a.example", show(req.val[ATTR_SENDER]));
    off += req_len;

    st = protocol_scan(&scan, &default_limits, buf + off, sizeof buf - 1 - off, &req_len, &why);
    if (st != PROTOCOL_READY || req_len != len2)
        fail_msg("second: got %s len %zu, want READY len %zu", status_name(st), req_len, len2);
    assert_int_equal(protocol_parse(buf + off, req_len, &req, &why), 0);
    if (strcmp(show(request_get(&req, ATTR_SENDER, NULL)), "two@b.example") != 0)
        fail_msg("second: got sender %s, want two@b.example", show(req.val[ATTR_SENDER]));
    if (strcmp(show(request_get(&req, ATTR_SENDER_DOMAIN, NULL)), "b.example") != 0)
        fail_msg("second: got sender_domain %s, want b.example", show(req.val[ATTR_SENDER_DOMAIN]));
    off += req_len;

    st = protocol_scan(&scan, &default_limits, buf + off, sizeof buf - 1 - off, &req_len, &why);
    if (st != PROTOCOL_NEED_MORE)
        fail_msg("third: got %s, want NEED_MORE", status_name(st));

    /* A request within the limits followed by junk beyond them is fine. */
    char big[300];
    memset(big, 'x', sizeof big);
    memcpy(big, "a=b\n\n", 5);
    struct protocol_limits lim = {.max_line = 10, .max_request = 5, .max_attrs = 1};
    st = scan_all(&lim, big, sizeof big, &req_len, &why);
    if (st != PROTOCOL_READY || req_len != 5)
        fail_msg("junk after: got %s len %zu (%s), want READY len 5", status_name(st), req_len,
                 show(why));
    request_fini(&req);
}

/* fill - n bytes of 'v' at p. */
static char *fill(char *p, size_t n)
{
    memset(p, 'v', n);
    return p + n;
}

/*
 * line - "a=vvv...<eol>" with the line (without eol) exactly n bytes long.
 * Returns the end of what it wrote.
 */
static char *line(char *p, size_t n, const char *eol)
{
    *p++ = 'a';
    *p++ = '=';
    p = fill(p, n - 2);
    memcpy(p, eol, strlen(eol));
    return p + strlen(eol);
}

/*
 * lines - "a=vvv\n" lines of at most max_line bytes, exactly total bytes
 * in all (total >= 4). No line is shorter than "a=v".
 */
static char *lines(char *p, size_t total, size_t max_line)
{
    size_t left = total;
    while (left > 0) {
        size_t k = left - 1 < max_line ? left - 1 : max_line;
        if (left - (k + 1) > 0 && left - (k + 1) < 4)
            k = left - 5;       /* leave room for one more valid line */
        p = line(p, k, "\n");
        left -= k + 1;
    }
    return p;
}

enum limit_shape {
    SHAPE_LINE,                 /* one line of n bytes, then the empty line */
    SHAPE_PARTIAL,              /* one line of n bytes, no line end yet */
    SHAPE_PARTIAL_CR,           /* one line of n bytes and a '\r', nothing more */
    SHAPE_ATTRS,                /* n short lines, then the empty line */
    SHAPE_REQUEST,              /* whole request n bytes, incl. the final "\n" */
    SHAPE_REQUEST_PARTIAL,      /* n bytes of a request without its end */
};

/* Each limit exactly at and one over, with LF and CRLF, complete and not. */
static void test_protocol_limits(void **state)
{
    static const struct protocol_limits small = {.max_line = 16, .max_request = 64, .max_attrs = 4};
    static const struct {
        const char *label;
        const struct protocol_limits *lim;
        enum limit_shape shape;
        size_t n;
        const char *eol;
        enum protocol_status want;
        const char *why;
    } cases[] = {
        {"line at max", &small, SHAPE_LINE, 16, "\n", PROTOCOL_READY, NULL},
        {"line one over", &small, SHAPE_LINE, 17, "\n", PROTOCOL_ERROR, "line longer than 16 bytes"},
        {"CRLF line at max", &small, SHAPE_LINE, 16, "\r\n", PROTOCOL_READY, NULL},
        {"CRLF line one over", &small, SHAPE_LINE, 17, "\r\n", PROTOCOL_ERROR,
         "line longer than 16 bytes"},
        {"partial line at max", &small, SHAPE_PARTIAL, 16, "", PROTOCOL_NEED_MORE, NULL},
        {"partial line one over", &small, SHAPE_PARTIAL, 17, "", PROTOCOL_ERROR,
         "line longer than 16 bytes"},
        {"partial line at max and CR", &small, SHAPE_PARTIAL_CR, 16, "", PROTOCOL_NEED_MORE, NULL},
        {"partial line one over and CR", &small, SHAPE_PARTIAL_CR, 17, "", PROTOCOL_ERROR,
         "line longer than 16 bytes"},
        {"attrs at max", &small, SHAPE_ATTRS, 4, "\n", PROTOCOL_READY, NULL},
        {"attrs one over", &small, SHAPE_ATTRS, 5, "\n", PROTOCOL_ERROR, "more than 4 attributes"},
        {"CRLF attrs one over", &small, SHAPE_ATTRS, 5, "\r\n", PROTOCOL_ERROR,
         "more than 4 attributes"},
        {"request at max", &small, SHAPE_REQUEST, 64, "\n", PROTOCOL_READY, NULL},
        {"request one over", &small, SHAPE_REQUEST, 65, "\n", PROTOCOL_ERROR,
         "request larger than 64 bytes"},
        {"partial request at max", &small, SHAPE_REQUEST_PARTIAL, 64, "\n", PROTOCOL_NEED_MORE, NULL},
        {"partial request one over", &small, SHAPE_REQUEST_PARTIAL, 65, "\n", PROTOCOL_ERROR,
         "request larger than 64 bytes"},
        {"default line at max", &default_limits, SHAPE_LINE, 4096, "\n", PROTOCOL_READY, NULL},
        {"default line one over", &default_limits, SHAPE_LINE, 4097, "\n", PROTOCOL_ERROR,
         "line longer than 4096 bytes"},
        {"default attrs at max", &default_limits, SHAPE_ATTRS, 128, "\n", PROTOCOL_READY, NULL},
        {"default attrs one over", &default_limits, SHAPE_ATTRS, 129, "\n", PROTOCOL_ERROR,
         "more than 128 attributes"},
        {"default request at max", &default_limits, SHAPE_REQUEST, 65536, "\n", PROTOCOL_READY, NULL},
        {"default request one over", &default_limits, SHAPE_REQUEST, 65537, "\n", PROTOCOL_ERROR,
         "request larger than 65536 bytes"},
    };
    /* Room for the largest request: 128 lines of 4096 with CRLF. */
    const size_t cap = 2 * PROTOCOL_DEFAULT_MAX_REQUEST + 8;
    char *buf = malloc(cap);
    struct request req;
    (void)state;

    assert_non_null(buf);
    request_init(&req);
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        const struct protocol_limits *lim = cases[i].lim;
        size_t n = cases[i].n, req_len, len;
        const char *why;
        char *p = buf;

        switch (cases[i].shape) {
        case SHAPE_LINE:
            p = line(p, n, cases[i].eol);
            memcpy(p, cases[i].eol, strlen(cases[i].eol));
            p += strlen(cases[i].eol);
            break;
        case SHAPE_PARTIAL:
            p = line(p, n, "");
            break;
        case SHAPE_PARTIAL_CR:
            p = line(p, n, "\r");
            break;
        case SHAPE_ATTRS:
            for (size_t k = 0; k < n; k++)
                p = line(p, 3, cases[i].eol);
            memcpy(p, cases[i].eol, strlen(cases[i].eol));
            p += strlen(cases[i].eol);
            break;
        case SHAPE_REQUEST:
            p = lines(p, n - 1, lim->max_line);
            *p++ = '\n';
            break;
        case SHAPE_REQUEST_PARTIAL:
            /* A request one byte longer, without that byte: its end. */
            p = lines(p, n, lim->max_line);
            break;
        }
        len = (size_t)(p - buf);
        assert_true(len <= cap);
        if ((cases[i].shape == SHAPE_REQUEST || cases[i].shape == SHAPE_REQUEST_PARTIAL) && len != n)
            fail_msg("%s: test built %zu bytes, want %zu", cases[i].label, len, n);

        enum protocol_status st = scan_all(lim, buf, len, &req_len, &why);
        if (st != cases[i].want)
            fail_msg("%s: got %s (%s), want %s", cases[i].label, status_name(st), show(why),
                     status_name(cases[i].want));
        if (st == PROTOCOL_ERROR && strcmp(why, cases[i].why) != 0)
            fail_msg("%s: got why \"%s\", want \"%s\"", cases[i].label, why, cases[i].why);

        /* Byte by byte the verdict is the same: limits hold on partial data. */
        struct protocol_scan scan;
        size_t req_len2 = 0;
        protocol_scan_reset(&scan);
        enum protocol_status st2 = PROTOCOL_NEED_MORE;
        for (size_t k = 1; k <= len && st2 == PROTOCOL_NEED_MORE; k++)
            st2 = protocol_scan(&scan, lim, buf, k, &req_len2, &why);
        if (st2 != st)
            fail_msg("%s bytewise: got %s, want %s", cases[i].label, status_name(st2),
                     status_name(st));

        if (st == PROTOCOL_READY) {
            if (req_len != len || req_len2 != len)
                fail_msg("%s: got len %zu/%zu, want %zu", cases[i].label, req_len, req_len2, len);
            if (protocol_parse(buf, req_len, &req, &why) != 0)
                fail_msg("%s: parse got %s, want 0", cases[i].label, why);
        }
    }
    free(buf);
    request_fini(&req);
}

/*
 * The over-long partial line is refused as soon as it is one byte over,
 * long before max_request: a peer cannot make us buffer a huge line.
 */
static void test_protocol_limit_checked_early(void **state)
{
    static const struct protocol_limits lim = {.max_line = 100, .max_request = 100000, .max_attrs = 10};
    char buf[200];
    struct protocol_scan scan;
    size_t req_len;
    const char *why = NULL;
    (void)state;

    memset(buf, 'v', sizeof buf);
    protocol_scan_reset(&scan);
    for (size_t k = 1; k <= sizeof buf; k++) {
        enum protocol_status st = protocol_scan(&scan, &lim, buf, k, &req_len, &why);
        enum protocol_status want = k <= 100 ? PROTOCOL_NEED_MORE : PROTOCOL_ERROR;
        if (st != want)
            fail_msg("byte %zu: got %s, want %s", k, status_name(st), status_name(want));
        if (st == PROTOCOL_ERROR)
            break;
    }
    if (!why || strcmp(why, "line longer than 100 bytes") != 0)
        fail_msg("got why %s, want \"line longer than 100 bytes\"", show(why));
}

static void test_protocol_malformed(void **state)
{
    static const struct {
        const char *label;
        const char *text;
        size_t len;             /* 0: strlen(text) */
        enum protocol_status scan;
        int parse;              /* for READY: protocol_parse's result */
        const char *why;
    } cases[] = {
        {"line without '='", "request=x\nnovalue\n\n", 0, PROTOCOL_READY, -EINVAL,
         "line without '='"},
        {"empty name", "=value\n\n", 0, PROTOCOL_READY, -EINVAL, "empty attribute name"},
        {"empty name and value", "=\n\n", 0, PROTOCOL_READY, -EINVAL, "empty attribute name"},
        {"CR only line is empty", "\r\n", 0, PROTOCOL_READY, 0, NULL},
        {"empty request", "\n", 0, PROTOCOL_READY, 0, NULL},
        {"NUL in value", "sender=a\0b\n\n", 12, PROTOCOL_ERROR, 0, "NUL byte in request"},
        {"NUL in partial line", "sender=a\0", 9, PROTOCOL_ERROR, 0, "NUL byte in request"},
        {"NUL after the end is not ours", "a=b\n\n\0", 6, PROTOCOL_READY, 0, NULL},
        {"space-only line", " \n\n", 0, PROTOCOL_READY, -EINVAL, "line without '='"},
        {"lone CR mid-line", "a=x\ry\n\n", 0, PROTOCOL_READY, 0, NULL},
        {"binary garbage", "\x01\x02\xff\xfe\n\n", 0, PROTOCOL_READY, -EINVAL, "line without '='"},
    };
    struct request req;
    char buf[64];
    (void)state;

    request_init(&req);
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].text), req_len;
        const char *why;
        memcpy(buf, cases[i].text, len);
        enum protocol_status st = scan_all(&default_limits, buf, len, &req_len, &why);
        if (st != cases[i].scan)
            fail_msg("%s: got %s (%s), want %s", cases[i].label, status_name(st), show(why),
                     status_name(cases[i].scan));
        if (st == PROTOCOL_ERROR) {
            if (strcmp(why, cases[i].why) != 0)
                fail_msg("%s: got why \"%s\", want \"%s\"", cases[i].label, why, cases[i].why);
            continue;
        }
        why = NULL;
        int rc = protocol_parse(buf, req_len, &req, &why);
        if (rc != cases[i].parse)
            fail_msg("%s: parse got %d (%s), want %d", cases[i].label, rc, show(why), cases[i].parse);
        if (rc != 0 && strcmp(why, cases[i].why) != 0)
            fail_msg("%s: got why \"%s\", want \"%s\"", cases[i].label, why, cases[i].why);
    }

    /* protocol_parse on a buffer without its empty line refuses it. */
    const char *why = NULL;
    strcpy(buf, "a=b\n");
    if (protocol_parse(buf, 4, &req, &why) != -EINVAL || !why)
        fail_msg("no final empty line: got success, want -EINVAL");
    strcpy(buf, "a=b");
    if (protocol_parse(buf, 3, &req, &why) != -EINVAL)
        fail_msg("no line end: got success, want -EINVAL");
    request_fini(&req);
}

/* How values come out: empty, '=' inside, CRLF, duplicates, unknowns. */
static void test_protocol_values(void **state)
{
    static const struct {
        const char *label;
        const char *text;
        enum attr a;
        const char *want;       /* NULL: absent */
        unsigned unknown;
    } cases[] = {
        {"null sender is present and empty", "sender=\n\n", ATTR_SENDER, "", 0},
        {"absent sender", "recipient=a@b\n\n", ATTR_SENDER, NULL, 0},
        {"first '=' splits", "recipient=a=b@c=d\n\n", ATTR_RECIPIENT, "a=b@c=d", 0},
        {"value of only '='", "helo_name==\n\n", ATTR_HELO_NAME, "=", 0},
        {"CRLF stripped", "sender=a@b\r\n\r\n", ATTR_SENDER, "a@b", 0},
        {"only one CR stripped", "sender=a@b\r\r\n\n", ATTR_SENDER, "a@b\r", 0},
        {"mixed line ends", "helo_name=h\r\nsender=s\n\r\n", ATTR_SENDER, "s", 0},
        {"duplicate: last wins", "sender=a\nsender=b\n\n", ATTR_SENDER, "b", 0},
        {"duplicate empty last wins", "sender=a\nsender=\n\n", ATTR_SENDER, "", 0},
        {"spaces kept", "helo_name= h \n\n", ATTR_HELO_NAME, " h ", 0},
        {"unknown counted", "future_attr=1\nsender=x\nother=\n\n", ATTR_SENDER, "x", 2},
        {"name is case-sensitive", "SENDER=x\n\n", ATTR_SENDER, NULL, 1},
        {"derived from the wire is refused", "sender_domain=evil.example\nsender=u@good.example\n\n",
         ATTR_SENDER_DOMAIN, "good.example", 1},
        {"derived from the wire without source", "sasl_domain=evil\n\n", ATTR_SASL_DOMAIN, NULL, 1},
        {"space in name is another name", "sender =x\n\n", ATTR_SENDER, NULL, 1},
        {"8-bit value", "sender=j\xc3\xb6rg@example.com\n\n", ATTR_SENDER, "j\xc3\xb6rg@example.com", 0},
    };
    struct request req;
    char buf[128];
    (void)state;

    request_init(&req);
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        size_t len = strlen(cases[i].text), req_len, got_len;
        const char *why;
        memcpy(buf, cases[i].text, len);
        enum protocol_status st = scan_all(&default_limits, buf, len, &req_len, &why);
        if (st != PROTOCOL_READY || req_len != len)
            fail_msg("%s: got %s len %zu, want READY len %zu", cases[i].label, status_name(st),
                     req_len, len);
        if (protocol_parse(buf, req_len, &req, &why) != 0)
            fail_msg("%s: parse got %s, want 0", cases[i].label, why);
        const char *got = request_get(&req, cases[i].a, &got_len);
        if ((got == NULL) != (cases[i].want == NULL) || (got && strcmp(got, cases[i].want) != 0))
            fail_msg("%s: got \"%s\", want \"%s\"", cases[i].label, show(got), show(cases[i].want));
        if (got && got_len != strlen(cases[i].want))
            fail_msg("%s: got len %zu, want %zu", cases[i].label, got_len, strlen(cases[i].want));
        if (req.unknown_count != cases[i].unknown)
            fail_msg("%s: got unknown_count %u, want %u", cases[i].label, req.unknown_count,
                     cases[i].unknown);
    }
    request_fini(&req);
}

/* protocol_parse resets the request: nothing leaks from the previous one. */
static void test_protocol_parse_resets_request(void **state)
{
    char a[] = "sender=a@one.example\nsize=10\n\n";
    char b[] = "recipient=r@two.example\n\n";
    struct request req;
    const char *why;
    (void)state;

    request_init(&req);
    assert_int_equal(protocol_parse(a, sizeof a - 1, &req, &why), 0);
    (void)request_get(&req, ATTR_SENDER_DOMAIN, NULL);
    assert_int_equal(protocol_parse(b, sizeof b - 1, &req, &why), 0);
    if (request_get(&req, ATTR_SENDER, NULL) || request_get(&req, ATTR_SENDER_DOMAIN, NULL) ||
        request_get(&req, ATTR_SIZE, NULL))
        fail_msg("second request: got attributes of the first, want them absent");
    request_fini(&req);
}

static void test_protocol_format_answer(void **state)
{
    static const struct {
        const char *label;
        const char *action;
        size_t cap;
        const char *want;       /* NULL: does not fit / refused */
    } cases[] = {
        {"dunno", "DUNNO", 64, "action=DUNNO\n\n"},
        {"reject text", "450 4.7.1 Try again later", 64, "action=450 4.7.1 Try again later\n\n"},
        {"exactly fits", "OK", 11, "action=OK\n\n"},
        {"one short", "OK", 10, NULL},
        {"tiny cap", "OK", 3, NULL},
        {"zero cap", "OK", 0, NULL},
        {"LF refused", "DUNNO\naction=OK", 64, NULL},
        {"CR refused", "DUNNO\r", 64, NULL},
        {"empty refused", "", 64, NULL},
    };
    (void)state;

    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        char out[64];
        memset(out, '#', sizeof out);
        size_t n = protocol_format_answer(out, cases[i].cap, cases[i].action, strlen(cases[i].action));
        if (!cases[i].want) {
            if (n != 0)
                fail_msg("%s: got %zu bytes, want 0", cases[i].label, n);
            continue;
        }
        if (n != strlen(cases[i].want) || memcmp(out, cases[i].want, n) != 0)
            fail_msg("%s: got \"%.*s\", want \"%s\"", cases[i].label, (int)n, out, cases[i].want);
        if (n < sizeof out && out[n] != '#')
            fail_msg("%s: got a byte written past the answer, want none", cases[i].label);
    }
    /* NUL inside the action is refused too (length, not strlen, counts). */
    char out[64];
    if (protocol_format_answer(out, sizeof out, "OK\0x", 4) != 0)
        fail_msg("NUL in action: got an answer, want 0");
}

/*
 * Steady state is O(n): a 64 KiB request fed one byte at a time must be
 * scanned in a number of memchr steps proportional to its size. A
 * rescanning scanner would take ~2 * 10^9 byte steps here; the time bound
 * is generous for ASan and slow machines but catches quadratic behaviour.
 */
static void test_protocol_bytewise_is_linear(void **state)
{
    static const struct protocol_limits lim = {.max_line = 4096, .max_request = 65536, .max_attrs = 128};
    const size_t len = 65536;
    char *buf = malloc(len);
    struct protocol_scan scan;
    size_t req_len = 0;
    const char *why;
    (void)state;

    assert_non_null(buf);
    char *p = buf;
    size_t left = len - 1;
    while (left > 0) {              /* 127 lines of 512 + one shorter */
        size_t k = left - 1 < 511 ? left - 1 : 511;
        p = line(p, k, "\n");
        left -= k + 1;
    }
    *p++ = '\n';
    assert_int_equal((size_t)(p - buf), len);

    protocol_scan_reset(&scan);
    enum protocol_status st = PROTOCOL_NEED_MORE;
    for (size_t k = 1; k <= len && st == PROTOCOL_NEED_MORE; k++) {
        st = protocol_scan(&scan, &lim, buf, k, &req_len, &why);
        if (st == PROTOCOL_NEED_MORE && scan.pos != k)
            fail_msg("byte %zu: got pos %zu, want %zu (resumed, not rescanned)", k, scan.pos, k);
    }
    if (st != PROTOCOL_READY || req_len != len)
        fail_msg("got %s len %zu, want READY len %zu", status_name(st), req_len, len);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_protocol_full_postfix3_request),
        cmocka_unit_test(test_protocol_postfix21_request),
        cmocka_unit_test(test_protocol_split_every_boundary),
        cmocka_unit_test(test_protocol_coalesced_requests),
        cmocka_unit_test(test_protocol_limits),
        cmocka_unit_test(test_protocol_limit_checked_early),
        cmocka_unit_test(test_protocol_malformed),
        cmocka_unit_test(test_protocol_values),
        cmocka_unit_test(test_protocol_parse_resets_request),
        cmocka_unit_test(test_protocol_format_answer),
        cmocka_unit_test(test_protocol_bytewise_is_linear),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
