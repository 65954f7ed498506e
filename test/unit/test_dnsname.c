/*
 * test_dnsname - query names (IPv4, IPv6 nibbles, domains, trailing dots,
 * raw UTF-8 refused), return codes, TTLs read from raw answers, and the
 * steps of each check driven with hand-made answers.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "dnsname.h"

static struct ipaddr ip(const char *s)
{
    struct ipaddr a;
    assert_int_equal(ipaddr_parse(s, strlen(s), &a), 0);
    return a;
}

static void test_dnsname_reverse(void **state)
{
    (void)state;
    static const struct {
        const char *label, *ip, *zone, *want;
    } cases[] = {
        {"v4 in a zone", "192.0.2.7", "zen.example.org", "7.2.0.192.zen.example.org"},
        {"v4 ptr", "198.51.100.30", "", "30.100.51.198.in-addr.arpa"},
        {"v6 nibbles", "2001:db8::1", "bl.example",
         "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example"},
        {"v6 ptr", "2001:db8::abcd", "",
         "d.c.b.a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"},
        {"v4-mapped is v4", "::ffff:192.0.2.9", "bl.example", "9.2.0.192.bl.example"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[DNSNAME_MAX + 1];
        struct ipaddr a = ip(cases[i].ip);
        int n = dnsname_reverse(&a, cases[i].zone, out, sizeof out);
        if (n < 0 || strcmp(out, cases[i].want) != 0) {
            print_error("%s: got %s (%d), want %s\n", cases[i].label, n < 0 ? "error" : out, n,
                        cases[i].want);
            fail();
        }
        assert_int_equal((size_t)n, strlen(cases[i].want));
    }
    /* A zone that leaves no room for 64 characters of nibbles. */
    char zone[200];
    memset(zone, 'a', sizeof zone - 1);
    zone[sizeof zone - 1] = '\0';
    for (size_t i = 60; i < sizeof zone - 1; i += 61)
        zone[i] = '.';
    char out[DNSNAME_MAX + 1];
    struct ipaddr a = ip("2001:db8::1");
    assert_int_equal(dnsname_reverse(&a, zone, out, sizeof out), -ENAMETOOLONG);
    /* A small buffer is refused, not overrun. */
    a = ip("192.0.2.7");
    assert_int_equal(dnsname_reverse(&a, "bl.example", out, 8), -ENAMETOOLONG);
}

static void test_dnsname_normalize(void **state)
{
    (void)state;
    char long_label[80], long_name[300];
    memset(long_label, 'a', 64);
    strcpy(long_label + 64, ".example");
    /* 254 characters: 4 labels of 62 + 3 dots + 3 */
    memset(long_name, 0, sizeof long_name);
    for (int i = 0; i < 4; i++) {
        memset(long_name + i * 63, 'b', 62);
        long_name[i * 63 + 62] = '.';
    }
    memcpy(long_name + 252, "cd", 2);
    const struct {
        const char *label, *in, *want; /* want NULL: refused */
    } cases[] = {
        {"lower-cased", "Mail.Example.COM", "mail.example.com"},
        {"one trailing dot dropped", "example.org.", "example.org"},
        {"underscore allowed", "_dmarc.example.org", "_dmarc.example.org"},
        {"A-label allowed", "xn--bcher-kva.example", "xn--bcher-kva.example"},
        {"raw UTF-8 refused", "b\xc3\xbc" "cher.example", NULL},
        {"empty label", "a..example", NULL},
        {"leading dot", ".example", NULL},
        {"two trailing dots", "example..", NULL},
        {"just a dot", ".", NULL},
        {"empty", "", NULL},
        {"space", "my pc", NULL},
        {"address literal", "[192.0.2.1]", NULL},
        {"label over 63", long_label, NULL},
        {"name over 253", long_name, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[DNSNAME_MAX + 1];
        int n = dnsname_normalize(cases[i].in, strlen(cases[i].in), out, sizeof out);
        bool ok = cases[i].want ? n > 0 && strcmp(out, cases[i].want) == 0 : n == -EINVAL;
        if (!ok) {
            print_error("%s: got %d \"%s\", want %s\n", cases[i].label, n, n > 0 ? out : "",
                        cases[i].want ? cases[i].want : "-EINVAL");
            fail();
        }
    }
}

static void test_dnsname_codes(void **state)
{
    (void)state;
    static const struct {
        const char *label, *code;
        uint32_t addr;
        bool want;
    } cases[] = {
        {"single hit", "127.0.0.2", 0x7f000002, true},
        {"single miss", "127.0.0.2", 0x7f000003, false},
        {"range low end", "127.0.0.2-127.0.0.11", 0x7f000002, true},
        {"range high end", "127.0.0.2-127.0.0.11", 0x7f00000b, true},
        {"above range", "127.0.0.2-127.0.0.11", 0x7f00000c, false},
        {"network", "127.0.1.0/24", 0x7f0001fe, true},
        {"outside network", "127.0.1.0/24", 0x7f000201, false},
        {"mask bit set", "&4", 0x7f000006, true},
        {"mask bit clear", "&4", 0x7f000002, false},
        {"hex mask", "&0x08", 0x7f00000a, true},
        /* A mask tests listings only: not the lists' "refused" answer
         * 127.255.255.x, nor what a resolver that rewrites NXDOMAIN gives. */
        {"mask on refused", "&2", 0x7ffffffe, false},
        {"mask on a non-127 answer", "&2", 0xc6336406, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct dnscode c;
        const char *why = NULL;
        assert_int_equal(dnscode_parse(cases[i].code, &c, &why), 0);
        if (dnscode_match(&c, 1, cases[i].addr) != cases[i].want) {
            print_error("%s: %s vs %08x: got %d, want %d\n", cases[i].label, cases[i].code,
                        cases[i].addr, !cases[i].want, cases[i].want);
            fail();
        }
    }
    /* The default: 127/8 but not the lists' error codes 127.255.255.x. */
    assert_true(dnscode_match(NULL, 0, 0x7f000002));
    assert_false(dnscode_match(NULL, 0, 0x7ffffffe));
    assert_false(dnscode_match(NULL, 0, 0xc0000201));
    static const char *const bad[] = {"127.0.0.9-127.0.0.2", "&0", "&", "&x", "127.0.0",
                                      "2001:db8::1", "::/0", "127.0.0.1-", "banana"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct dnscode c;
        const char *why = NULL;
        if (dnscode_parse(bad[i], &c, &why) != -EINVAL || !why) {
            print_error("code \"%s\": got accepted, want -EINVAL with a reason\n", bad[i]);
            fail();
        }
    }
}

/* A DNS message builder for the TTL reader. */
struct msg {
    unsigned char b[512];
    size_t n;
};

static void put16(struct msg *m, unsigned v)
{
    m->b[m->n++] = (unsigned char)(v >> 8);
    m->b[m->n++] = (unsigned char)v;
}

static void put32(struct msg *m, uint32_t v)
{
    put16(m, v >> 16);
    put16(m, v & 0xffff);
}

static void put_name(struct msg *m, const char *name)
{
    while (*name) {
        const char *dot = strchr(name, '.');
        size_t len = dot ? (size_t)(dot - name) : strlen(name);
        m->b[m->n++] = (unsigned char)len;
        memcpy(m->b + m->n, name, len);
        m->n += len;
        name += len + (dot ? 1 : 0);
    }
    m->b[m->n++] = 0;
}

static void msg_start(struct msg *m, unsigned an, unsigned ns)
{
    m->n = 0;
    put16(m, 0x1234);
    put16(m, 0x8180);
    put16(m, 1);
    put16(m, an);
    put16(m, ns);
    put16(m, 0);
    put_name(m, "2.0.0.127.bl.example");
    put16(m, 1);
    put16(m, 1);
}

static void put_a(struct msg *m, uint32_t ttl)
{
    put16(m, 0xc00c); /* compressed: the question's name */
    put16(m, 1);
    put16(m, 1);
    put32(m, ttl);
    put16(m, 4);
    put32(m, 0x7f000002);
}

static void test_dnsname_msg_ttl(void **state)
{
    (void)state;
    struct msg m;
    uint32_t ttl = 0;
    msg_start(&m, 2, 0);
    put_a(&m, 300);
    put_a(&m, 60);
    assert_int_equal(dnsname_msg_ttl(m.b, m.n, &ttl), 0);
    assert_int_equal(ttl, 60); /* the smallest answer TTL */

    /* Negative answer: min(SOA TTL, SOA MINIMUM), RFC 2308. */
    msg_start(&m, 0, 1);
    put_name(&m, "example");
    put16(&m, 6);
    put16(&m, 1);
    put32(&m, 100);
    size_t rdlen_at = m.n;
    put16(&m, 0);
    size_t rd = m.n;
    put_name(&m, "ns.example");
    put_name(&m, "hostmaster.example");
    put32(&m, 1);
    put32(&m, 3600);
    put32(&m, 600);
    put32(&m, 86400);
    put32(&m, 30);
    m.b[rdlen_at] = (unsigned char)((m.n - rd) >> 8);
    m.b[rdlen_at + 1] = (unsigned char)(m.n - rd);
    assert_int_equal(dnsname_msg_ttl(m.b, m.n, &ttl), 0);
    assert_int_equal(ttl, 30);

    /* Nothing to read a TTL from; malformed and truncated messages. */
    msg_start(&m, 0, 0);
    assert_int_equal(dnsname_msg_ttl(m.b, m.n, &ttl), -ENOENT);
    msg_start(&m, 1, 0);
    put_a(&m, 60);
    assert_int_equal(dnsname_msg_ttl(m.b, m.n - 3, &ttl), -EINVAL);
    assert_int_equal(dnsname_msg_ttl(m.b, 5, &ttl), -EINVAL);
    m.b[12] = 0xc0; /* a pointer where the question's first label was */
    m.b[13] = 0x0c; /* ... pointing at itself: skipped as one name, no loop */
    assert_true(dnsname_msg_ttl(m.b, m.n, &ttl) <= 0);
    /* RFC 2181: a TTL with the top bit set counts as 0. */
    msg_start(&m, 1, 0);
    put_a(&m, 0x80000000u);
    assert_int_equal(dnsname_msg_ttl(m.b, m.n, &ttl), 0);
    assert_int_equal(ttl, 0);
}

/* ---- checks ---- */

static struct dns_rrset rr_status(enum dns_status st, bool nx)
{
    struct dns_rrset rr;
    memset(&rr, 0, sizeof rr);
    rr.status = st;
    rr.nxdomain = nx;
    return rr;
}

static struct dns_rrset rr_addr(const char *a)
{
    struct dns_rrset rr = rr_status(DNS_FOUND, false);
    rr.addr[0] = ip(a);
    rr.n = 1;
    return rr;
}

static void test_dnsname_check_lists(void **state)
{
    (void)state;
    struct dnsq_step st;
    struct dnsq_query q;
    struct dnsq_answer ans;
    assert_int_equal(dnsq_first(DNSQ_LIST_IP, "bl.example", "192.0.2.7", 9, &st, &q, &ans), 1);
    assert_string_equal(q.name, "7.2.0.192.bl.example");
    assert_int_equal(q.type, DNS_T_A);
    struct dnscode c;
    const char *why;
    dnscode_parse("127.0.0.2-127.0.0.3", &c, &why);
    struct dns_rrset rr = rr_addr("127.0.0.4");
    assert_int_equal(dnsq_next(DNSQ_LIST_IP, &c, 1, &st, &rr, &q, &ans), 0);
    assert_int_equal(ans.status, DNS_NOTFOUND); /* answered, but not with an accepted code */
    rr = rr_addr("127.0.0.3");
    assert_int_equal(dnsq_next(DNSQ_LIST_IP, &c, 1, &st, &rr, &q, &ans), 0);
    assert_int_equal(ans.status, DNS_FOUND);
    assert_int_equal(ans.code, 0x7f000003);
    rr = rr_status(DNS_TEMPFAIL, false);
    assert_int_equal(dnsq_next(DNSQ_LIST_IP, NULL, 0, &st, &rr, &q, &ans), 0);
    assert_int_equal(ans.status, DNS_TEMPFAIL);
    /* Nothing to ask: Postfix's "unknown", no sender domain, bad names. */
    assert_int_equal(dnsq_first(DNSQ_LIST_IP, "bl.example", "unknown", 7, &st, &q, &ans), 0);
    assert_int_equal(ans.status, DNS_NOTASKED);
    assert_int_equal(dnsq_first(DNSQ_LIST_NAME, "rhs.example", NULL, 0, &st, &q, &ans), 0);
    assert_int_equal(ans.status, DNS_NOTASKED);
    /* of: client_name: Postfix's "unknown" is no name to ask about. */
    assert_int_equal(dnsq_first(DNSQ_LIST_NAME, "rhs.example", "unknown", 7, &st, &q, &ans), 0);
    assert_int_equal(ans.status, DNS_NOTASKED);
    assert_int_equal(dnsq_first(DNSQ_LIST_NAME, "rhs.example", "b\xc3\xbc.example", 10, &st, &q, &ans), 0);
    assert_int_equal(ans.status, DNS_NOTASKED);
    assert_int_equal(dnsq_first(DNSQ_LIST_NAME, "rhs.example", "Spam.Example.", 13, &st, &q, &ans), 1);
    assert_string_equal(q.name, "spam.example.rhs.example");
}

static void test_dnsname_check_rdns(void **state)
{
    (void)state;
    struct dnsq_step st;
    struct dnsq_query q;
    struct dnsq_answer ans;
    /* PTR, then the name's A record, which names the client. */
    assert_int_equal(dnsq_first(DNSQ_RDNS, NULL, "192.0.2.7", 9, &st, &q, &ans), 1);
    assert_string_equal(q.name, "7.2.0.192.in-addr.arpa");
    assert_int_equal(q.type, DNS_T_PTR);
    struct dns_rrset rr = rr_status(DNS_FOUND, false);
    dns_rrset_add_name(&rr, "Host.Example", 12);
    assert_int_equal(dnsq_next(DNSQ_RDNS, NULL, 0, &st, &rr, &q, &ans), 1);
    assert_string_equal(q.name, "host.example");
    assert_int_equal(q.type, DNS_T_A);
    rr = rr_addr("192.0.2.7");
    assert_int_equal(dnsq_next(DNSQ_RDNS, NULL, 0, &st, &rr, &q, &ans), 0);
    assert_true(ans.has_ptr && ans.fcrdns);
    assert_int_equal(ans.status, DNS_FOUND);
    /* The name points elsewhere: a PTR, not confirmed. */
    dnsq_first(DNSQ_RDNS, NULL, "192.0.2.7", 9, &st, &q, &ans);
    rr = rr_status(DNS_FOUND, false);
    dns_rrset_add_name(&rr, "host.example", 12);
    dnsq_next(DNSQ_RDNS, NULL, 0, &st, &rr, &q, &ans);
    rr = rr_addr("192.0.2.8");
    assert_int_equal(dnsq_next(DNSQ_RDNS, NULL, 0, &st, &rr, &q, &ans), 0);
    assert_true(ans.has_ptr && !ans.fcrdns);
    /* IPv6 clients are confirmed with AAAA. */
    dnsq_first(DNSQ_RDNS, NULL, "2001:db8::7", 11, &st, &q, &ans);
    rr = rr_status(DNS_FOUND, false);
    dns_rrset_add_name(&rr, "v6.example", 10);
    dnsq_next(DNSQ_RDNS, NULL, 0, &st, &rr, &q, &ans);
    assert_int_equal(q.type, DNS_T_AAAA);
    /* No PTR at all. */
    dnsq_first(DNSQ_RDNS, NULL, "192.0.2.7", 9, &st, &q, &ans);
    rr = rr_status(DNS_NOTFOUND, true);
    assert_int_equal(dnsq_next(DNSQ_RDNS, NULL, 0, &st, &rr, &q, &ans), 0);
    assert_true(ans.status == DNS_FOUND && !ans.has_ptr && !ans.fcrdns);
}

static void test_dnsname_check_mx(void **state)
{
    (void)state;
    struct dnsq_step st;
    struct dnsq_query q;
    struct dnsq_answer ans;
    struct dns_rrset rr;
    /* MX present. */
    dnsq_first(DNSQ_MX, NULL, "Example.ORG", 11, &st, &q, &ans);
    assert_string_equal(q.name, "example.org");
    assert_int_equal(q.type, DNS_T_MX);
    rr = rr_status(DNS_FOUND, false);
    dns_rrset_add_name(&rr, "mx.example.org", 14);
    assert_int_equal(dnsq_next(DNSQ_MX, NULL, 0, &st, &rr, &q, &ans), 0);
    assert_int_equal(ans.mx, DNS_MX_OK);
    /* Null MX. */
    dnsq_first(DNSQ_MX, NULL, "example.org", 11, &st, &q, &ans);
    rr = rr_status(DNS_FOUND, false);
    rr.null_mx = true;
    dns_rrset_add_name(&rr, "", 0);
    dnsq_next(DNSQ_MX, NULL, 0, &st, &rr, &q, &ans);
    assert_int_equal(ans.mx, DNS_MX_NULL);
    /* No such domain: no fallback. */
    dnsq_first(DNSQ_MX, NULL, "example.org", 11, &st, &q, &ans);
    rr = rr_status(DNS_NOTFOUND, true);
    assert_int_equal(dnsq_next(DNSQ_MX, NULL, 0, &st, &rr, &q, &ans), 0);
    assert_int_equal(ans.mx, DNS_MX_NONE);
    /* No MX: A, then AAAA. */
    dnsq_first(DNSQ_MX, NULL, "example.org", 11, &st, &q, &ans);
    rr = rr_status(DNS_NOTFOUND, false);
    assert_int_equal(dnsq_next(DNSQ_MX, NULL, 0, &st, &rr, &q, &ans), 1);
    assert_int_equal(q.type, DNS_T_A);
    assert_int_equal(dnsq_next(DNSQ_MX, NULL, 0, &st, &rr, &q, &ans), 1);
    assert_int_equal(q.type, DNS_T_AAAA);
    assert_string_equal(q.name, "example.org");
    assert_int_equal(dnsq_next(DNSQ_MX, NULL, 0, &st, &rr, &q, &ans), 0);
    assert_int_equal(ans.mx, DNS_MX_NONE);
    assert_int_equal(ans.status, DNS_FOUND);
    dnsq_first(DNSQ_MX, NULL, "example.org", 11, &st, &q, &ans);
    dnsq_next(DNSQ_MX, NULL, 0, &st, &rr, &q, &ans);
    rr = rr_addr("192.0.2.1");
    assert_int_equal(dnsq_next(DNSQ_MX, NULL, 0, &st, &rr, &q, &ans), 0);
    assert_int_equal(ans.mx, DNS_MX_OK);
}

static void test_dnsname_check_helo_and_country(void **state)
{
    (void)state;
    struct dnsq_step st;
    struct dnsq_query q;
    struct dnsq_answer ans;
    assert_int_equal(dnsq_first(DNSQ_RESOLVES, NULL, "[192.0.2.1]", 11, &st, &q, &ans), 0);
    assert_int_equal(ans.status, DNS_NOTFOUND);
    assert_int_equal(dnsq_first(DNSQ_RESOLVES, NULL, "localhost", 9, &st, &q, &ans), 0);
    assert_int_equal(ans.status, DNS_NOTFOUND); /* a dotless HELO names no host */
    assert_int_equal(dnsq_first(DNSQ_RESOLVES, NULL, "mx.example", 10, &st, &q, &ans), 1);
    struct dns_rrset rr = rr_status(DNS_NOTFOUND, false);
    assert_int_equal(dnsq_next(DNSQ_RESOLVES, NULL, 0, &st, &rr, &q, &ans), 1);
    assert_int_equal(q.type, DNS_T_AAAA);
    rr = rr_addr("2001:db8::1");
    assert_int_equal(dnsq_next(DNSQ_RESOLVES, NULL, 0, &st, &rr, &q, &ans), 0);
    assert_int_equal(ans.status, DNS_FOUND);

    dnsq_first(DNSQ_COUNTRY_TXT, "cc.example", "192.0.2.7", 9, &st, &q, &ans);
    assert_int_equal(q.type, DNS_T_TXT);
    rr = rr_status(DNS_FOUND, false);
    dns_rrset_add_name(&rr, "cn", 2);
    dnsq_next(DNSQ_COUNTRY_TXT, NULL, 0, &st, &rr, &q, &ans);
    assert_string_equal(ans.text, "CN");
    dnsq_first(DNSQ_COUNTRY_A, "cc.example", "192.0.2.7", 9, &st, &q, &ans);
    rr = rr_addr("127.0.3.72"); /* 3 * 256 + 72 = 840, the USA */
    dnsq_next(DNSQ_COUNTRY_A, NULL, 0, &st, &rr, &q, &ans);
    assert_string_equal(ans.text, "840");
    /* Three digits, as ISO 3166 writes them: 036 is Australia. */
    dnsq_first(DNSQ_COUNTRY_A, "cc.example", "192.0.2.7", 9, &st, &q, &ans);
    rr = rr_addr("127.0.0.36");
    dnsq_next(DNSQ_COUNTRY_A, NULL, 0, &st, &rr, &q, &ans);
    assert_string_equal(ans.text, "036");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dnsname_reverse),
        cmocka_unit_test(test_dnsname_normalize),
        cmocka_unit_test(test_dnsname_codes),
        cmocka_unit_test(test_dnsname_msg_ttl),
        cmocka_unit_test(test_dnsname_check_lists),
        cmocka_unit_test(test_dnsname_check_rdns),
        cmocka_unit_test(test_dnsname_check_mx),
        cmocka_unit_test(test_dnsname_check_helo_and_country),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
