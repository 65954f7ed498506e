/*
 * test_cidr - address and network parsing, prefix formatting, and sets
 * (merging, binary search, checked against a linear scan at 100k
 * entries); the hand-written IPv4 parser and IPv6 formatter checked
 * against inet_pton and inet_ntop on random input.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "cidr.h"

/* fmt_ip - an address as inet_ntop() text, for messages and checks. */
static const char *fmt_ip(const struct ipaddr *ip, char *buf, size_t cap)
{
    if (ip->family != AF_INET && ip->family != AF_INET6)
        snprintf(buf, cap, "(family %d)", ip->family);
    else if (!inet_ntop(ip->family, ip->bytes, buf, (socklen_t)cap))
        snprintf(buf, cap, "(unprintable)");
    return buf;
}

static const char *family_name(int family)
{
    return family == AF_INET ? "inet" : family == AF_INET6 ? "inet6" : "?";
}

static struct ipaddr must_ip(const char *s)
{
    struct ipaddr ip;

    if (ipaddr_parse(s, strlen(s), &ip) != 0)
        fail_msg("ipaddr_parse(\"%s\"): got error, want an address", s);
    return ip;
}

static struct cidr must_cidr(const char *s)
{
    struct cidr c;

    if (cidr_parse(s, strlen(s), &c, NULL) != 0)
        fail_msg("cidr_parse(\"%s\"): got error, want a network", s);
    return c;
}

static void test_cidr_ipaddr_parse(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int rc;
        int family;
        const char *want;       /* inet_ntop() text */
    } cases[] = {
        {"192.0.2.1", 0, AF_INET, "192.0.2.1"},
        {"0.0.0.0", 0, AF_INET, "0.0.0.0"},
        {"255.255.255.255", 0, AF_INET, "255.255.255.255"},
        {"[192.0.2.1]", 0, AF_INET, "192.0.2.1"},
        {"2001:db8::1", 0, AF_INET6, "2001:db8::1"},
        {"2001:DB8::1", 0, AF_INET6, "2001:db8::1"},
        {"[2001:db8::1]", 0, AF_INET6, "2001:db8::1"},
        {"IPV6:2001:db8::1", 0, AF_INET6, "2001:db8::1"},
        {"ipv6:2001:db8::1", 0, AF_INET6, "2001:db8::1"},
        {"[IPv6:2001:db8::1]", 0, AF_INET6, "2001:db8::1"},
        {"::", 0, AF_INET6, "::"},
        {"::1", 0, AF_INET6, "::1"},
        {"::ffff:192.0.2.1", 0, AF_INET, "192.0.2.1"},
        {"::FFFF:c000:201", 0, AF_INET, "192.0.2.1"},
        {"[::ffff:192.0.2.1]", 0, AF_INET, "192.0.2.1"},
        {"IPV6:::ffff:192.0.2.1", 0, AF_INET, "192.0.2.1"},
        {"::ffff:0:0", 0, AF_INET, "0.0.0.0"},
        {"::fffe:192.0.2.1", 0, AF_INET6, "::fffe:c000:201"},  /* not mapped */
        {"::192.0.2.1", 0, AF_INET6, "::192.0.2.1"},           /* compatible, not mapped */
        {"", -EINVAL, 0, NULL},
        {"1.2.3", -EINVAL, 0, NULL},
        {"1.2.3.4.5", -EINVAL, 0, NULL},
        {"256.1.1.1", -EINVAL, 0, NULL},
        {"01.2.3.4", -EINVAL, 0, NULL},
        {" 1.2.3.4", -EINVAL, 0, NULL},
        {"1.2.3.4 ", -EINVAL, 0, NULL},
        {"1.2.3.4/24", -EINVAL, 0, NULL},
        {"::g", -EINVAL, 0, NULL},
        {"2001:db8::1::2", -EINVAL, 0, NULL},
        {"2001:db8:0:0:0:0:0:0:1", -EINVAL, 0, NULL},
        {"fe80::1%eth0", -EINVAL, 0, NULL},
        {"[1.2.3.4", -EINVAL, 0, NULL},
        {"1.2.3.4]", -EINVAL, 0, NULL},
        {"[]", -EINVAL, 0, NULL},
        {"IPV6:", -EINVAL, 0, NULL},
        {"IPV6:1.2.3.4", -EINVAL, 0, NULL},
        {"unknown", -EINVAL, 0, NULL},
        {"1111:2222:3333:4444:5555:6666:7777:8888:9999:aaaa", -EINVAL, 0, NULL},
    };
    char buf[INET6_ADDRSTRLEN + 16];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ipaddr ip;
        int rc = ipaddr_parse(cases[i].in, strlen(cases[i].in), &ip);

        if (rc != cases[i].rc)
            fail_msg("\"%s\": rc got %d, want %d", cases[i].in, rc, cases[i].rc);
        if (rc != 0)
            continue;
        if (ip.family != cases[i].family)
            fail_msg("\"%s\": family got %s, want %s", cases[i].in, family_name(ip.family),
                     family_name(cases[i].family));
        fmt_ip(&ip, buf, sizeof(buf));
        if (strcmp(buf, cases[i].want) != 0)
            fail_msg("\"%s\": got %s, want %s", cases[i].in, buf, cases[i].want);
    }
}

static void test_cidr_ipaddr_parse_uses_len(void **state)
{
    (void)state;
    static const char text[] = "192.0.2.10xyz";
    static const char nul[] = "192.0.2.1\0.5";
    struct ipaddr ip;
    char buf[INET6_ADDRSTRLEN];
    int rc;

    rc = ipaddr_parse(text, 10, &ip);
    if (rc != 0 || strcmp(fmt_ip(&ip, buf, sizeof(buf)), "192.0.2.10") != 0)
        fail_msg("prefix of a longer buffer: got rc %d %s, want 0 192.0.2.10", rc, buf);
    rc = ipaddr_parse(text, 9, &ip);
    if (rc != 0 || strcmp(fmt_ip(&ip, buf, sizeof(buf)), "192.0.2.1") != 0)
        fail_msg("shorter prefix: got rc %d %s, want 0 192.0.2.1", rc, buf);
    rc = ipaddr_parse(nul, sizeof(nul) - 1, &ip);
    if (rc != -EINVAL)
        fail_msg("embedded NUL: rc got %d, want %d", rc, -EINVAL);
    rc = ipaddr_parse("", 0, &ip);
    if (rc != -EINVAL)
        fail_msg("empty: rc got %d, want %d", rc, -EINVAL);
}

static void test_cidr_parse(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int rc;
        const char *want;       /* ipaddr_format_prefix() text */
        bool host_bits;         /* bits below the prefix were set */
    } cases[] = {
        {"10.0.0.0/8", 0, "10.0.0.0/8", false},
        {"10.1.2.3/8", 0, "10.0.0.0/8", true},
        {"192.0.2.1", 0, "192.0.2.1/32", false},
        {"192.0.2.1/32", 0, "192.0.2.1/32", false},
        {"192.0.2.255/31", 0, "192.0.2.254/31", true},
        {"0.0.0.0/0", 0, "0.0.0.0/0", false},
        {"1.2.3.4/0", 0, "0.0.0.0/0", true},
        {"172.16.0.0/12", 0, "172.16.0.0/12", false},
        {"172.31.255.255/12", 0, "172.16.0.0/12", true},
        {"[192.0.2.0]/24", 0, "192.0.2.0/24", false},
        {"10.0.0.0/08", 0, "10.0.0.0/8", false},
        {"2001:db8::/32", 0, "2001:db8::/32", false},
        {"[2001:db8::]/32", 0, "2001:db8::/32", false},
        {"IPV6:2001:db8::/32", 0, "2001:db8::/32", false},
        {"2001:db8:1:2:3:4:5:6/64", 0, "2001:db8:1:2::/64", true},
        {"2001:db8:ffff::/36", 0, "2001:db8:f000::/36", true},   /* nibble */
        {"2001:db8:f000::/36", 0, "2001:db8:f000::/36", false},
        {"2001:db8:1234::/44", 0, "2001:db8:1230::/44", true},   /* nibble */
        {"2001:db8:1234::/45", 0, "2001:db8:1230::/45", true},   /* mid-nibble */
        {"2001:db8:1238::/45", 0, "2001:db8:1238::/45", false},
        {"2001:db8::1/127", 0, "2001:db8::/127", true},
        {"2001:db8::1/128", 0, "2001:db8::1/128", false},
        {"::/0", 0, "::/0", false},
        {"ffff::1/0", 0, "::/0", true},
        {"::1", 0, "::1/128", false},
        {"::ffff:10.1.2.3/104", 0, "10.0.0.0/8", true},
        {"::ffff:192.0.2.1", 0, "192.0.2.1/32", false},
        {"::ffff:192.0.2.1/128", 0, "192.0.2.1/32", false},
        {"::ffff:10.0.0.0/96", 0, "0.0.0.0/0", true},
        {"::ffff:0:0/96", 0, "0.0.0.0/0", false},
        {"::ffff:0:0/80", 0, "::/80", true},                     /* wider than mapped */
        {"1.2.3.4/33", -EINVAL, NULL, false},
        {"::/129", -EINVAL, NULL, false},
        {"1.2.3", -EINVAL, NULL, false},
        {"1.2.3/24", -EINVAL, NULL, false},
        {"::g", -EINVAL, NULL, false},
        {"::g/64", -EINVAL, NULL, false},
        {"", -EINVAL, NULL, false},
        {"/8", -EINVAL, NULL, false},
        {"10.0.0.0/", -EINVAL, NULL, false},
        {"10.0.0.0/8/8", -EINVAL, NULL, false},
        {"10.0.0.0/-1", -EINVAL, NULL, false},
        {"10.0.0.0/+8", -EINVAL, NULL, false},
        {"10.0.0.0/ 8", -EINVAL, NULL, false},
        {"10.0.0.0/8 ", -EINVAL, NULL, false},
        {"10.0.0.0/0008", -EINVAL, NULL, false},
        {"10.0.0.0/4294967304", -EINVAL, NULL, false},            /* 2^32 + 8 */
        {"[2001:db8::/32]", -EINVAL, NULL, false},
        {"example.com", -EINVAL, NULL, false},
    };
    char buf[64];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct cidr c;
        bool host_bits = !cases[i].host_bits;
        int rc = cidr_parse(cases[i].in, strlen(cases[i].in), &c, &host_bits);

        if (rc != cases[i].rc)
            fail_msg("\"%s\": rc got %d, want %d", cases[i].in, rc, cases[i].rc);
        if (rc != 0)
            continue;
        if (ipaddr_format_prefix(&c.addr, c.bits, c.bits, buf, sizeof(buf)) == 0)
            fail_msg("\"%s\": format failed", cases[i].in);
        if (strcmp(buf, cases[i].want) != 0)
            fail_msg("\"%s\": got %s, want %s", cases[i].in, buf, cases[i].want);
        if (host_bits != cases[i].host_bits)
            fail_msg("\"%s\": host_bits_set got %d, want %d", cases[i].in, host_bits,
                     cases[i].host_bits);
        /* NULL host_bits_set is allowed. */
        if (cidr_parse(cases[i].in, strlen(cases[i].in), &c, NULL) != 0)
            fail_msg("\"%s\": with NULL host_bits_set: got error, want 0", cases[i].in);
    }
}

static void test_cidr_contains(void **state)
{
    (void)state;
    static const struct {
        const char *net;
        const char *ip;
        bool want;
    } cases[] = {
        {"10.0.0.0/8", "10.255.255.255", true},
        {"10.0.0.0/8", "11.0.0.0", false},
        {"10.0.0.0/8", "9.255.255.255", false},
        {"0.0.0.0/0", "203.0.113.9", true},
        {"0.0.0.0/0", "2001:db8::1", false},
        {"::/0", "2001:db8::1", true},
        {"::/0", "192.0.2.1", false},            /* IPv4 is not in ::/0 */
        {"::/0", "::ffff:192.0.2.1", false},     /* nor is a mapped address */
        {"192.0.2.1/32", "192.0.2.1", true},
        {"192.0.2.1/32", "192.0.2.2", false},
        {"192.0.2.0/25", "192.0.2.127", true},
        {"192.0.2.0/25", "192.0.2.128", false},
        {"192.0.2.0/24", "::ffff:192.0.2.77", true},
        {"::ffff:192.0.2.0/120", "192.0.2.77", true},
        {"2001:db8::/32", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", true},
        {"2001:db8::/32", "2001:db9::", false},
        {"2001:db8:f000::/36", "2001:db8:ffff::1", true},
        {"2001:db8:f000::/36", "2001:db8:efff::1", false},
        {"2001:db8:1230::/45", "2001:db8:1237:ffff::", true},
        {"2001:db8:1230::/45", "2001:db8:1238::", false},
        {"2001:db8::/127", "2001:db8::1", true},
        {"2001:db8::/127", "2001:db8::2", false},
        {"2001:db8::1/128", "2001:db8::1", true},
        {"2001:db8::1/128", "2001:db8::", false},
    };
    char buf[INET6_ADDRSTRLEN];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct cidr net = must_cidr(cases[i].net);
        struct ipaddr ip = must_ip(cases[i].ip);
        bool got = cidr_contains(&net, &ip);

        if (got != cases[i].want)
            fail_msg("%s in %s (%s): got %d, want %d", cases[i].ip, cases[i].net,
                     fmt_ip(&ip, buf, sizeof(buf)), got, cases[i].want);
    }
}

static void test_cidr_format_prefix(void **state)
{
    (void)state;
    static const struct {
        const char *ip;
        unsigned v4, v6;
        const char *want;
    } cases[] = {
        {"192.0.2.77", 24, 64, "192.0.2.0/24"},
        {"192.0.2.77", 32, 64, "192.0.2.77/32"},
        {"192.0.2.77", 0, 64, "0.0.0.0/0"},
        {"192.0.2.77", 40, 64, "192.0.2.77/32"},        /* clamped */
        {"192.0.2.77", 20, 64, "192.0.0.0/20"},
        {"255.255.255.255", 1, 64, "128.0.0.0/1"},
        {"203.0.113.201", 31, 64, "203.0.113.200/31"},
        {"10.255.7.9", 9, 64, "10.128.0.0/9"},
        {"::ffff:192.0.2.77", 24, 64, "192.0.2.0/24"},  /* mapped is IPv4 */
        {"2001:db8:1:2:3:4:5:6", 24, 64, "2001:db8:1:2::/64"},
        {"2001:db8:1:2:3:4:5:6", 24, 48, "2001:db8:1::/48"},
        {"2001:db8:1:2:3:4:5:6", 24, 56, "2001:db8:1::/56"},
        {"2001:db8:1:2ff:3:4:5:6", 24, 56, "2001:db8:1:200::/56"},
        {"2001:db8:1:2:3:4:5:6", 24, 128, "2001:db8:1:2:3:4:5:6/128"},
        {"2001:db8:1:2:3:4:5:6", 24, 0, "::/0"},
        {"2001:db8:1:2:3:4:5:6", 24, 200, "2001:db8:1:2:3:4:5:6/128"},
    };
    char buf[64];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ipaddr ip = must_ip(cases[i].ip);
        size_t n = ipaddr_format_prefix(&ip, cases[i].v4, cases[i].v6, buf, sizeof(buf));

        if (strcmp(buf, cases[i].want) != 0)
            fail_msg("%s /%u /%u: got %s, want %s", cases[i].ip, cases[i].v4, cases[i].v6, buf,
                     cases[i].want);
        if (n != strlen(cases[i].want))
            fail_msg("%s: length got %zu, want %zu", cases[i].ip, n, strlen(cases[i].want));
    }
}

static void test_cidr_format_prefix_cap(void **state)
{
    (void)state;
    struct ipaddr ip = must_ip("192.0.2.77");
    const char *want = "192.0.2.0/24";
    size_t wlen = strlen(want);
    char buf[32];
    size_t n;

    n = ipaddr_format_prefix(&ip, 24, 64, buf, wlen + 1);
    if (n != wlen || strcmp(buf, want) != 0)
        fail_msg("exact cap: got %zu \"%s\", want %zu \"%s\"", n, buf, wlen, want);
    memset(buf, 'x', sizeof(buf));
    n = ipaddr_format_prefix(&ip, 24, 64, buf, wlen);
    if (n != 0 || buf[0] != '\0')
        fail_msg("cap one short: got %zu \"%.*s\", want 0 \"\"", n, (int)wlen, buf);
    if (buf[wlen] != 'x')
        fail_msg("cap one short: wrote past cap");
    n = ipaddr_format_prefix(&ip, 24, 64, buf, 0);
    if (n != 0)
        fail_msg("cap 0: got %zu, want 0", n);
}

/* ------------------------------------------------------------------ */
/* Sets                                                               */

#define MAX_NETS 6
#define MAX_PROBES 8

static void test_cidr_set_merge(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        const char *nets[MAX_NETS];
        size_t want_count;
        struct {
            const char *ip;
            bool want;
        } probes[MAX_PROBES];
    } cases[] = {
        {"empty", {NULL}, 0, {{"10.0.0.1", false}, {"::1", false}}},
        {"one /8", {"10.0.0.0/8"}, 1,
         {{"10.0.0.0", true}, {"10.255.255.255", true}, {"9.255.255.255", false},
          {"11.0.0.0", false}}},
        {"inner swallowed", {"10.1.0.0/16", "10.0.0.0/8", "10.1.2.0/24"}, 1,
         {{"10.200.0.1", true}, {"10.1.2.3", true}}},
        {"overlap extends", {"10.0.0.0/24", "10.0.0.0/23", "10.0.1.0/24"}, 1,
         {{"10.0.1.255", true}, {"10.0.2.0", false}}},
        {"adjacent merge", {"10.0.0.128/25", "10.0.0.0/25"}, 1,
         {{"10.0.0.127", true}, {"10.0.0.128", true}, {"10.0.1.0", false}}},
        {"adjacent chain", {"10.0.0.3/32", "10.0.0.0/31", "10.0.0.2/32", "10.0.0.4/30"}, 1,
         {{"10.0.0.7", true}, {"10.0.0.8", false}}},
        {"gap kept", {"10.0.0.0/25", "10.0.1.0/25"}, 2,
         {{"10.0.0.127", true}, {"10.0.0.128", false}, {"10.0.0.255", false},
          {"10.0.1.0", true}, {"10.0.1.128", false}}},
        {"duplicates", {"192.0.2.0/24", "192.0.2.0/24", "192.0.2.1/24"}, 1,
         {{"192.0.2.9", true}}},
        {"top of v4 no wrap", {"255.255.255.255/32", "0.0.0.0/32", "255.255.255.254/32"}, 2,
         {{"255.255.255.255", true}, {"255.255.255.254", true}, {"0.0.0.0", true},
          {"0.0.0.1", false}, {"255.255.255.253", false}}},
        {"v4 all", {"192.0.2.0/24", "0.0.0.0/0"}, 1,
         {{"0.0.0.0", true}, {"255.255.255.255", true}, {"2001:db8::1", false}}},
        {"families apart", {"10.0.0.0/8", "2001:db8::/32"}, 2,
         {{"10.1.1.1", true}, {"2001:db8::1", true}, {"::a00:1", false},
          {"2001:db9::", false}}},
        {"mapped lookup is v4", {"192.0.2.0/24"}, 1,
         {{"::ffff:192.0.2.5", true}, {"::ffff:192.0.3.5", false}}},
        {"v6 all is not v4", {"::/0"}, 1,
         {{"::", true}, {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true},
          {"192.0.2.1", false}}},
        {"v6 adjacent over 64-bit carry", {"0:0:0:1:ffff:ffff:ffff:ffff/128", "0:0:0:2::/128"}, 1,
         {{"0:0:0:1:ffff:ffff:ffff:ffff", true}, {"0:0:0:2::", true}, {"0:0:0:2::1", false},
          {"0:0:0:1:ffff:ffff:ffff:fffe", false}}},
        {"v6 adjacent /64s", {"2001:db8:0:1::/64", "2001:db8::/64"}, 1,
         {{"2001:db8:0:1:ffff::", true}, {"2001:db8:0:2::", false}}},
        {"v6 nibble gap", {"2001:db8:1230::/45", "2001:db8:1240::/44"}, 2,
         {{"2001:db8:1237::", true}, {"2001:db8:1238::", false}, {"2001:db8:124f::", true},
          {"2001:db8:1250::", false}}},
        {"v6 top no wrap", {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", "::/128"}, 2,
         {{"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true}, {"::", true}, {"::1", false}}},
        {"v6 wide over narrow", {"2001:db8:1::/48", "2001:db8::/32", "2001:db8:ffff::/48"}, 1,
         {{"2001:db8:8000::", true}, {"2001:db9::", false}}},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct cidr_set *set = cidr_set_new();

        for (size_t j = 0; j < MAX_NETS && cases[i].nets[j]; j++) {
            struct cidr c = must_cidr(cases[i].nets[j]);
            cidr_set_add(set, &c);
        }
        cidr_set_finish(set);
        if (cidr_set_count(set) != cases[i].want_count) {
            size_t got = cidr_set_count(set);
            cidr_set_free(set);
            fail_msg("%s: count got %zu, want %zu", cases[i].label, got, cases[i].want_count);
        }
        for (size_t j = 0; j < MAX_PROBES && cases[i].probes[j].ip; j++) {
            struct ipaddr ip = must_ip(cases[i].probes[j].ip);
            bool got = cidr_set_contains(set, &ip);
            if (got != cases[i].probes[j].want) {
                cidr_set_free(set);
                fail_msg("%s: %s got %d, want %d", cases[i].label, cases[i].probes[j].ip, got,
                         cases[i].probes[j].want);
            }
        }
        /* finish is idempotent */
        cidr_set_finish(set);
        if (cidr_set_count(set) != cases[i].want_count) {
            cidr_set_free(set);
            fail_msg("%s: count after second finish changed", cases[i].label);
        }
        cidr_set_free(set);
    }
}

static void test_cidr_set_add_after_finish(void **state)
{
    (void)state;
    struct cidr_set *set = cidr_set_new();
    struct cidr a = must_cidr("10.0.0.0/8");
    struct cidr b = must_cidr("2001:db8::/32");
    struct ipaddr in_a = must_ip("10.9.9.9");
    struct ipaddr in_b = must_ip("2001:db8::9");

    cidr_set_add(set, &a);
    cidr_set_finish(set);
    cidr_set_add(set, &b);
    /* Lookups before finish are a caller bug, but still answer right. */
    assert_true(cidr_set_contains(set, &in_a));
    assert_true(cidr_set_contains(set, &in_b));
    cidr_set_finish(set);
    assert_true(cidr_set_contains(set, &in_a));
    assert_true(cidr_set_contains(set, &in_b));
    assert_int_equal(cidr_set_count(set), 2);
    cidr_set_free(set);
    cidr_set_free(NULL);
}

/* xorshift64 - a fixed pseudo-random sequence, so failures reproduce. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

#define LARGE_N 100000
#define LARGE_PROBES 500

/*
 * test_cidr_set_large - 100k random v4 and v6 networks of mixed sizes,
 * clustered so that many overlap and touch: the binary search must
 * agree with a linear scan of cidr_contains() over every network.
 */
static void test_cidr_set_large(void **state)
{
    (void)state;
    struct cidr *nets = calloc(LARGE_N, sizeof(*nets));
    struct cidr_set *set = cidr_set_new();
    uint64_t seed = 0x9e3779b97f4a7c15ULL;

    assert_non_null(nets);
    for (size_t i = 0; i < LARGE_N; i++) {
        uint64_t r = rng_next(&seed);
        struct cidr *c = &nets[i];

        memset(c, 0, sizeof(*c));
        if (i % 2 == 0) {
            /* Within 10.0.0.0/8 so that ranges collide. */
            uint32_t a = 0x0a000000u | (uint32_t)(r & 0x00ffffffu);
            c->addr.family = AF_INET;
            c->addr.bytes[0] = (uint8_t)(a >> 24);
            c->addr.bytes[1] = (uint8_t)(a >> 16);
            c->addr.bytes[2] = (uint8_t)(a >> 8);
            c->addr.bytes[3] = (uint8_t)a;
            c->bits = 24 + (unsigned)((r >> 32) % 9);   /* /24 - /32 */
        } else {
            c->addr.family = AF_INET6;
            c->addr.bytes[0] = 0x20;
            c->addr.bytes[1] = 0x01;
            c->addr.bytes[2] = 0x0d;
            c->addr.bytes[3] = 0xb8;
            c->addr.bytes[4] = (uint8_t)(r >> 8);
            c->addr.bytes[5] = (uint8_t)(r >> 16);
            c->addr.bytes[6] = (uint8_t)(r >> 24);
            c->addr.bytes[7] = (uint8_t)(r >> 40);
            c->addr.bytes[15] = (uint8_t)r;
            c->bits = 48 + (unsigned)((r >> 48) % 81);  /* /48 - /128 */
        }
        /* Clear host bits through the public parser's rules. */
        char text[64];
        if (ipaddr_format_prefix(&c->addr, c->bits, c->bits, text, sizeof(text)) == 0 ||
            cidr_parse(text, strlen(text), c, NULL) != 0)
            fail_msg("could not round-trip network %zu", i);
        cidr_set_add(set, c);
    }
    cidr_set_finish(set);
    if (cidr_set_count(set) == 0 || cidr_set_count(set) >= LARGE_N)
        fail_msg("count got %zu, want merging to leave 1..%d", cidr_set_count(set), LARGE_N - 1);

    for (size_t p = 0; p < LARGE_PROBES; p++) {
        struct ipaddr ip;
        bool want = false, got;
        uint64_t r = rng_next(&seed);

        /* Half the probes start from a member network's address, nudged. */
        ip = nets[r % LARGE_N].addr;
        if (p % 2) {
            ip.bytes[ip.family == AF_INET ? 3 : 15] ^= (uint8_t)(r >> 24);
            ip.bytes[ip.family == AF_INET ? 2 : 6] ^= (uint8_t)((r >> 32) & 0x3);
        }
        for (size_t i = 0; i < LARGE_N && !want; i++)
            want = cidr_contains(&nets[i], &ip);
        got = cidr_set_contains(set, &ip);
        if (got != want) {
            char buf[INET6_ADDRSTRLEN];
            fail_msg("probe %zu %s: got %d, want %d", p, fmt_ip(&ip, buf, sizeof(buf)), got,
                     want);
        }
    }
    free(nets);
    cidr_set_free(set);
}

static uint64_t test_rng = 0x243f6a8885a308d3ULL;

static uint64_t next_random(void)
{
    test_rng ^= test_rng << 13;
    test_rng ^= test_rng >> 7;
    test_rng ^= test_rng << 17;
    return test_rng;
}

/* The dotted-quad fast path reads what inet_pton(AF_INET) reads, and
 * refuses what it refuses: random strings of digits and dots (the only
 * characters it looks at), and mangled valid addresses. */
static void test_cidr_ipv4_parse_matches_inet_pton(void **state)
{
    (void)state;
    static const char alphabet[] = "0123456789.";
    char buf[32];
    unsigned accepted = 0;

    for (int round = 0; round < 300000; round++) {
        size_t len;
        if (round % 2) {
            len = 1 + next_random() % 16;
            for (size_t i = 0; i < len; i++)
                buf[i] = alphabet[next_random() % (sizeof alphabet - 1)];
            buf[len] = '\0';
        } else {
            uint64_t r = next_random();
            /* Octets near the edges: 0, 9/10, 99/100, 255/256, and leading zeros. */
            static const char *const oct[] = {"0", "1", "9", "10", "99", "100", "199", "249",
                                              "250", "255", "256", "300", "00", "01", "010", "999",
                                              "1000", ""};
            int n = snprintf(buf, sizeof buf, "%s.%s.%s.%s", oct[r % 18], oct[(r >> 8) % 18],
                             oct[(r >> 16) % 18], oct[(r >> 24) % 18]);
            len = (size_t)n;
        }
        struct ipaddr got;
        uint8_t want[16];
        int rc = ipaddr_parse(buf, len, &got);
        int ref = inet_pton(AF_INET, buf, want);
        if ((rc == 0) != (ref == 1))
            fail_msg("\"%s\": ipaddr_parse %d, inet_pton %d", buf, rc, ref);
        if (ref == 1) {
            accepted++;
            assert_int_equal(got.family, AF_INET);
            assert_memory_equal(got.bytes, want, 4);
        }
    }
    assert_true(accepted > 10000); /* the valid cases were really tried */
}

/* IPv6 prefixes up to /64 are formatted by hand: the text must be
 * inet_ntop's, or counter keys would change name. Random groups, half of
 * them zero, so runs of zeros of every length and position come up. */
static void test_cidr_ipv6_prefix_matches_inet_ntop(void **state)
{
    (void)state;
    for (int round = 0; round < 200000; round++) {
        struct ipaddr ip = {.family = AF_INET6};
        for (int g = 0; g < 8; g++) {
            uint64_t r = next_random();
            unsigned v = r % 2 ? 0 : (unsigned)(r >> 8) & (r % 3 ? 0xffff : 0xf);
            ip.bytes[2 * g] = (uint8_t)(v >> 8);
            ip.bytes[2 * g + 1] = (uint8_t)v;
        }
        unsigned bits = (unsigned)(next_random() % 65);
        struct ipaddr net = ip;
        for (unsigned b = bits; b < 128; b++)
            net.bytes[b / 8] &= (uint8_t)~(0x80u >> (b % 8));
        char text[INET6_ADDRSTRLEN], want[64], got[64];
        assert_non_null(inet_ntop(AF_INET6, net.bytes, text, sizeof text));
        snprintf(want, sizeof want, "%s/%u", text, bits);
        size_t n = ipaddr_format_prefix(&ip, 32, bits, got, sizeof got);
        if (n != strlen(want) || strcmp(got, want) != 0)
            fail_msg("/%u: got \"%s\", inet_ntop gives \"%s\"", bits, got, want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cidr_ipaddr_parse),
        cmocka_unit_test(test_cidr_ipaddr_parse_uses_len),
        cmocka_unit_test(test_cidr_ipv4_parse_matches_inet_pton),
        cmocka_unit_test(test_cidr_ipv6_prefix_matches_inet_ntop),
        cmocka_unit_test(test_cidr_parse),
        cmocka_unit_test(test_cidr_contains),
        cmocka_unit_test(test_cidr_format_prefix),
        cmocka_unit_test(test_cidr_format_prefix_cap),
        cmocka_unit_test(test_cidr_set_merge),
        cmocka_unit_test(test_cidr_set_add_after_finish),
        cmocka_unit_test(test_cidr_set_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
