/*
 * test_request - attribute names, derived attributes, the arena, client
 * prefixes and numbers (policyd/request.c).
 */
#include <setjmp.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include <cmocka.h>

#include "ascii.h"
#include "request.h"

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

/* show - printable form of a maybe-absent value for messages. */
static const char *show(const char *s)
{
    return s ? s : "(absent)";
}

/* check_value - got (with its length) equals want; NULL means absent. */
static void check_value(const char *label, const char *what, const char *got, size_t got_len,
                        const char *want)
{
    if (!want && !got)
        return;
    if (!want || !got || strcmp(got, want) != 0)
        fail_msg("%s: %s: got \"%s\", want \"%s\"", label, what, show(got), show(want));
    if (got_len != strlen(want))
        fail_msg("%s: %s: got length %zu, want %zu", label, what, got_len, strlen(want));
}

static void test_request_attr_lookup_roundtrip(void **state)
{
    (void)state;
    for (int a = 0; a < ATTR_COUNT; a++) {
        const char *name = attr_name((enum attr)a);
        int got = attr_lookup(name, strlen(name));
        if (got != a)
            fail_msg("%s: got %d, want %d", name, got, a);
    }
}

static void test_request_attr_lookup_unknown(void **state)
{
    static const struct {
        const char *label;
        const char *name;
    } cases[] = {
        {"empty", ""},
        {"prefix of sender", "sende"},
        {"sender plus one", "senderx"},
        {"names are case-sensitive", "Sender"},
        {"last byte differs", "client_addresS"},
        {"same length and test byte as sasl_method", "sasl_mxxxxx"},
        {"same length as server_port", "server_porx"},
        {"same length as etrn_domain", "xxxxxxxxxxx"},
        {"same test byte as reverse_client_name", "revxxxxxxxxxxxxxxxx"},
        {"length 24", "ccert_pubkey_fingerprinX"},
        {"longer than any", "ccert_pubkey_fingerprint_and_more"},
        {"policy_context lookalike", "po"},
        {"size with space", "size "},
    };
    (void)state;
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        int got = attr_lookup(cases[i].name, strlen(cases[i].name));
        if (got != -1)
            fail_msg("%s: got %d, want -1", cases[i].label, got);
    }
    /* The length decides, not a NUL: "sender" inside a longer buffer. */
    if (attr_lookup("sender=x", 6) != ATTR_SENDER)
        fail_msg("sender=x/6: got %d, want %d", attr_lookup("sender=x", 6), ATTR_SENDER);
}

static void test_request_attr_name(void **state)
{
    static const struct {
        enum attr a;
        const char *want;
    } cases[] = {
        {ATTR_REQUEST, "request"},
        {ATTR_CLIENT_ADDRESS, "client_address"},
        {ATTR_MAIL_VERSION, "mail_version"},
        {ATTR_SENDER_DOMAIN, "sender_domain"},
        {ATTR_SASL_DOMAIN, "sasl_domain"},
        {ATTR_COUNT, "unknown"},
        {(enum attr)-1, "unknown"},
    };
    (void)state;
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        const char *got = attr_name(cases[i].a);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("attr %d: got %s, want %s", (int)cases[i].a, got, cases[i].want);
    }
    for (int a = 0; a < ATTR_COUNT; a++)
        if (attr_name((enum attr)a) == NULL || strcmp(attr_name((enum attr)a), "unknown") == 0)
            fail_msg("attr %d: got no name, want one", a);
}

static void test_request_attr_is_case_insensitive(void **state)
{
    static const enum attr yes[] = {
        ATTR_SENDER, ATTR_RECIPIENT, ATTR_SASL_USERNAME, ATTR_SASL_SENDER,
        ATTR_HELO_NAME, ATTR_CLIENT_NAME, ATTR_REVERSE_CLIENT_NAME,
        ATTR_SENDER_DOMAIN, ATTR_SENDER_LOCALPART, ATTR_RECIPIENT_DOMAIN,
        ATTR_RECIPIENT_LOCALPART, ATTR_SASL_DOMAIN, ATTR_ETRN_DOMAIN,
    };
    (void)state;
    for (int a = 0; a < ATTR_COUNT; a++) {
        bool want = false;
        for (size_t i = 0; i < N_ELEMS(yes); i++)
            if (yes[i] == (enum attr)a)
                want = true;
        bool got = attr_is_case_insensitive((enum attr)a);
        if (got != want)
            fail_msg("%s: got %d, want %d", attr_name((enum attr)a), got, want);
    }
}

static void test_request_absent_and_empty(void **state)
{
    struct request req;
    size_t len = 99;
    (void)state;

    request_init(&req);
    if (request_get(&req, ATTR_SENDER, &len) != NULL || len != 0)
        fail_msg("absent sender: got \"%s\" (len %zu), want absent", show(req.val[ATTR_SENDER]), len);
    request_set(&req, ATTR_SENDER, "", 0);
    const char *v = request_get(&req, ATTR_SENDER, &len);
    check_value("null sender", "sender", v, len, "");
    /* Length pointer is optional. */
    if (request_get(&req, ATTR_SENDER, NULL) != v)
        fail_msg("len NULL: got a different pointer, want the same");
    if (request_get(&req, ATTR_COUNT, &len) != NULL || len != 0)
        fail_msg("ATTR_COUNT: got a value, want absent");
    request_reset(&req);
    if (request_get(&req, ATTR_SENDER, NULL) != NULL)
        fail_msg("after reset: got a sender, want absent");
    request_fini(&req);
}

/* Both sender and recipient split the same way; one table serves both. */
static const struct {
    const char *label;
    const char *addr;           /* NULL: attribute absent */
    const char *domain;         /* NULL: want absent */
    const char *localpart;      /* NULL: want absent */
} address_cases[] = {
    {"absent", NULL, NULL, NULL},
    {"null sender", "", NULL, NULL},
    {"plain", "user@example.com", "example.com", "user"},
    {"upper-case domain lower-cased", "User@EXAMPLE.Com", "example.com", "User"},
    {"last '@' splits", "a@b@c.example", "c.example", "a@b"},
    {"quoted localpart with '@'", "\"x@y\"@Example.ORG", "example.org", "\"x@y\""},
    {"angle brackets are not special", "<>", NULL, "<>"},
    {"no domain", "postmaster", NULL, "postmaster"},
    {"empty domain", "user@", "", "user"},
    {"empty localpart", "@example.com", "example.com", ""},
    {"only '@'", "@", "", ""},
    {"non-ASCII bytes kept", "j\xc3\xb6rg@\xc3\x84XAMPLE.de", "\xc3\x84xample.de", "j\xc3\xb6rg"},
};

static void test_request_derived_address(void **state)
{
    static const struct {
        enum attr src, domain, localpart;
    } srcs[] = {
        {ATTR_SENDER, ATTR_SENDER_DOMAIN, ATTR_SENDER_LOCALPART},
        {ATTR_RECIPIENT, ATTR_RECIPIENT_DOMAIN, ATTR_RECIPIENT_LOCALPART},
    };
    struct request req;
    char label[128];
    (void)state;

    request_init(&req);
    for (size_t s = 0; s < N_ELEMS(srcs); s++) {
        for (size_t i = 0; i < N_ELEMS(address_cases); i++) {
            size_t len;
            const char *v;

            snprintf(label, sizeof label, "%s: %s", attr_name(srcs[s].src), address_cases[i].label);
            request_reset(&req);
            if (address_cases[i].addr)
                request_set(&req, srcs[s].src, address_cases[i].addr, strlen(address_cases[i].addr));
            /* Ask for the localpart first half the time: order must not matter. */
            if (i % 2) {
                v = request_get(&req, srcs[s].localpart, &len);
                check_value(label, "localpart", v, len, address_cases[i].localpart);
                v = request_get(&req, srcs[s].domain, &len);
                check_value(label, "domain", v, len, address_cases[i].domain);
            } else {
                v = request_get(&req, srcs[s].domain, &len);
                check_value(label, "domain", v, len, address_cases[i].domain);
                v = request_get(&req, srcs[s].localpart, &len);
                check_value(label, "localpart", v, len, address_cases[i].localpart);
            }
            /* The second call returns the cached value. */
            if (request_get(&req, srcs[s].domain, NULL) != req.val[srcs[s].domain])
                fail_msg("%s: got a recomputed domain, want the cached one", label);
        }
    }
    request_fini(&req);
}

static void test_request_derived_sasl_domain(void **state)
{
    static const struct {
        const char *label;
        const char *user;
        const char *want;
    } cases[] = {
        {"absent", NULL, NULL},
        {"empty", "", NULL},
        {"bare user", "alice", NULL},
        {"user@domain", "alice@Example.NET", "example.net"},
        {"last '@'", "a@b@C.example", "c.example"},
    };
    struct request req;
    (void)state;

    request_init(&req);
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        size_t len;
        request_reset(&req);
        if (cases[i].user)
            request_set(&req, ATTR_SASL_USERNAME, cases[i].user, strlen(cases[i].user));
        const char *v = request_get(&req, ATTR_SASL_DOMAIN, &len);
        check_value(cases[i].label, "sasl_domain", v, len, cases[i].want);
    }
    request_fini(&req);
}

/* get - request_get into a len, as a statement (argument order is unspecified). */
static const char *get(struct request *req, enum attr a, size_t *len)
{
    return request_get(req, a, len);
}

static void test_request_set_invalidates_derived(void **state)
{
    struct request req;
    const char *v;
    size_t len;
    (void)state;

    request_init(&req);
    request_set(&req, ATTR_RECIPIENT, "a@one.example", 13);
    v = get(&req, ATTR_RECIPIENT_DOMAIN, &len);
    check_value("first", "recipient_domain", v, len, "one.example");
    request_set(&req, ATTR_RECIPIENT, "b@TWO.example", 13);
    v = get(&req, ATTR_RECIPIENT_DOMAIN, &len);
    check_value("after set", "recipient_domain", v, len, "two.example");
    v = get(&req, ATTR_RECIPIENT_LOCALPART, &len);
    check_value("after set", "recipient_localpart", v, len, "b");
    /* Setting an unrelated attribute keeps the cache. */
    const char *before = request_get(&req, ATTR_RECIPIENT_DOMAIN, NULL);
    request_set(&req, ATTR_SENDER, "x@y", 3);
    if (request_get(&req, ATTR_RECIPIENT_DOMAIN, NULL) != before)
        fail_msg("unrelated set: got a recomputed domain, want the cached one");
    /* A derived value set directly is kept, not recomputed. */
    request_set(&req, ATTR_SENDER_DOMAIN, "given.example", 13);
    v = get(&req, ATTR_SENDER_DOMAIN, &len);
    check_value("set derived", "sender_domain", v, len, "given.example");
    /* Out of range is ignored. */
    request_set(&req, ATTR_COUNT, "x", 1);
    request_fini(&req);
}

static void test_request_reset_clears_derived(void **state)
{
    struct request req;
    (void)state;

    request_init(&req);
    request_set(&req, ATTR_SENDER, "a@b.example", 11);
    (void)request_get(&req, ATTR_SENDER_DOMAIN, NULL);
    req.unknown_count = 3;
    request_reset(&req);
    if (request_get(&req, ATTR_SENDER_DOMAIN, NULL) != NULL)
        fail_msg("after reset: got sender_domain %s, want absent", req.val[ATTR_SENDER_DOMAIN]);
    if (req.unknown_count != 0)
        fail_msg("after reset: got unknown_count %u, want 0", req.unknown_count);
    request_fini(&req);
}

static void test_request_arena_strings(void **state)
{
    struct request req;
    (void)state;

    /* arena_* on the request's arena; request_fini frees it. */
    request_init(&req);
    char *d = arena_strndup(&req.arena, "Hello, World", 5);
    if (strcmp(d, "Hello") != 0)
        fail_msg("strndup: got \"%s\", want \"Hello\"", d);
    char *l = arena_lower(&req.arena, "MiXeD-123@EX.COM", 16);
    if (strcmp(l, "mixed-123@ex.com") != 0)
        fail_msg("lower: got \"%s\", want \"mixed-123@ex.com\"", l);
    char *e = arena_strndup(&req.arena, "", 0);
    if (e[0] != '\0')
        fail_msg("strndup of nothing: got \"%s\", want \"\"", e);
    if (strcmp(d, "Hello") != 0)
        fail_msg("earlier string: got \"%s\", want it unchanged", d);
    request_fini(&req);
}

static void test_request_arena_alignment(void **state)
{
    struct request req;
    (void)state;

    request_init(&req);
    for (size_t sz = 0; sz < 40; sz++) {
        (void)arena_strndup(&req.arena, "x", sz % 2);
        void *p = arena_alloc(&req.arena, sz);
        if ((uintptr_t)p % alignof(max_align_t) != 0)
            fail_msg("size %zu: got %p, want %zu-aligned", sz, p, (size_t)alignof(max_align_t));
        memset(p, 0xa5, sz);
    }
    request_fini(&req);
}

/*
 * The steady state must not allocate: after a reset the same sequence of
 * allocations gets the same addresses, including a huge one that needed
 * a chunk of its own the first time.
 */
static void test_request_arena_reset_reuses_memory(void **state)
{
    enum { ROUNDS = 3, SMALL = 200 };
    static const size_t sizes[] = {10, 100, 1000, 3000, 100000, 50, 5000, 7};
    void *first[N_ELEMS(sizes)];
    struct request req;
    (void)state;

    request_init(&req);
    for (int r = 0; r < ROUNDS; r++) {
        request_reset(&req);
        for (size_t i = 0; i < N_ELEMS(sizes); i++) {
            char *p = arena_alloc(&req.arena, sizes[i]);
            memset(p, (int)i, sizes[i]);
            if (r == 0)
                first[i] = p;
            else if (p != first[i])
                fail_msg("round %d alloc %zu: got %p, want %p (reused)", r, i, (void *)p, first[i]);
        }
        /* Earlier blocks were not overwritten by later ones. */
        for (size_t i = 0; i < N_ELEMS(sizes); i++) {
            const unsigned char *p = first[i];
            for (size_t k = 0; k < sizes[i]; k++)
                if (p[k] != (unsigned char)i)
                    fail_msg("round %d block %zu byte %zu: got %u, want %zu", r, i, k, p[k], i);
        }
    }
    /* After a reset the first small allocation comes from the first chunk. */
    request_reset(&req);
    void *p = arena_alloc(&req.arena, SMALL);
    if (p != first[0])
        fail_msg("after reset: got %p, want the first chunk %p", p, first[0]);
    request_fini(&req);
    request_fini(&req); /* idempotent */
}

static void test_request_client_prefix(void **state)
{
    static const struct {
        const char *label;
        const char *addr;       /* NULL: absent */
        int v4, v6;
        const char *want;       /* NULL: no prefix */
    } cases[] = {
        {"ipv4 /24", "192.0.2.77", 24, 64, "192.0.2.0/24"},
        {"ipv4 /32", "192.0.2.77", 32, 64, "192.0.2.77/32"},
        {"ipv4 /0", "192.0.2.77", 0, 64, "0.0.0.0/0"},
        {"ipv4 /20", "198.51.100.200", 20, 64, "198.51.96.0/20"},
        {"ipv6 /64", "2001:db8:1:2:3:4:5:6", 24, 64, "2001:db8:1:2::/64"},
        {"ipv6 /48", "2001:DB8:1:2:3:4:5:6", 24, 48, "2001:db8:1::/48"},
        {"ipv6 /128", "2001:db8::1", 24, 128, "2001:db8::1/128"},
        {"ipv6 /56 odd nibble", "2001:db8:abcd:12ff::1", 24, 56, "2001:db8:abcd:1200::/56"},
        {"ipv6 loopback", "::1", 24, 64, "::/64"},
        {"v4-mapped is ipv4", "::ffff:192.0.2.77", 24, 64, "192.0.2.0/24"},
        {"unknown", "unknown", 24, 64, NULL},
        {"absent", NULL, 24, 64, NULL},
        {"empty", "", 24, 64, NULL},
        {"hostname", "mail.example.com", 24, 64, NULL},
        {"v4 bits negative", "192.0.2.1", -1, 64, NULL},
        {"v4 bits too long", "192.0.2.1", 33, 64, NULL},
        {"v6 bits too long", "2001:db8::1", 24, 129, NULL},
    };
    struct request req;
    (void)state;

    request_init(&req);
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        size_t len = 99;
        request_reset(&req);
        if (cases[i].addr)
            request_set(&req, ATTR_CLIENT_ADDRESS, cases[i].addr, strlen(cases[i].addr));
        const char *got = request_client_prefix(&req, cases[i].v4, cases[i].v6, &len);
        check_value(cases[i].label, "prefix", got, len, cases[i].want);
        if (!got && len != 0)
            fail_msg("%s: got len %zu with no prefix, want 0", cases[i].label, len);
    }
    request_fini(&req);
}

static void test_request_client_ip_follows_set(void **state)
{
    (void)state;
    struct request req;
    request_init(&req);
    /* Parsed once and kept; a new client_address (a replay, a test)
     * or a reset must not see the old parse. */
    request_set(&req, ATTR_CLIENT_ADDRESS, "192.0.2.7", 9);
    const struct ipaddr *ip = request_client_ip(&req);
    if (!ip || ip->family != AF_INET || ip->bytes[3] != 7)
        fail_msg("192.0.2.7: got %s, want IPv4 ending in .7", ip ? "another address" : "NULL");
    request_set(&req, ATTR_CLIENT_ADDRESS, "2001:db8::1", 11);
    ip = request_client_ip(&req);
    if (!ip || ip->family != AF_INET6)
        fail_msg("after set 2001:db8::1: got %s, want IPv6", ip ? "IPv4" : "NULL");
    request_set(&req, ATTR_CLIENT_ADDRESS, "unknown", 7);
    if (request_client_ip(&req))
        fail_msg("after set unknown: got an address, want NULL");
    request_set(&req, ATTR_CLIENT_ADDRESS, "198.51.100.1", 12);
    if (!request_client_ip(&req))
        fail_msg("198.51.100.1: got NULL, want an address");
    request_reset(&req);
    if (request_client_ip(&req))
        fail_msg("after reset: got an address, want NULL");
    request_fini(&req);
}

static void test_request_number(void **state)
{
    static const struct {
        const char *label;
        const char *val;        /* NULL: absent */
        bool ok;
        double want;
    } cases[] = {
        {"zero", "0", true, 0},
        {"plain", "12345", true, 12345},
        {"leading zeros", "007", true, 7},
        {"uint64 max", "18446744073709551615", true, 18446744073709551615.0},
        {"uint64 max + 1", "18446744073709551616", false, 0},
        {"far too long", "99999999999999999999999999", false, 0},
        {"absent", NULL, false, 0},
        {"empty", "", false, 0},
        {"leading space", " 1", false, 0},
        {"trailing space", "1 ", false, 0},
        {"minus", "-1", false, 0},
        {"plus", "+1", false, 0},
        {"fraction", "1.5", false, 0},
        {"hex", "0x10", false, 0},
        {"exponent", "1e3", false, 0},
        {"letters", "abc", false, 0},
    };
    struct request req;
    (void)state;

    request_init(&req);
    for (size_t i = 0; i < N_ELEMS(cases); i++) {
        double got = -42;
        request_reset(&req);
        if (cases[i].val)
            request_set(&req, ATTR_SIZE, cases[i].val, strlen(cases[i].val));
        bool ok = request_number(&req, ATTR_SIZE, &got);
        if (ok != cases[i].ok)
            fail_msg("%s: got ok=%d, want %d", cases[i].label, ok, cases[i].ok);
        if (ok && got != cases[i].want)
            fail_msg("%s: got %.17g, want %.17g", cases[i].label, got, cases[i].want);
        if (!ok && got != -42)
            fail_msg("%s: got *out written (%g), want untouched", cases[i].label, got);
    }
    /* The length counts, not a NUL: "12" out of "123". */
    double got = 0;
    request_reset(&req);
    request_set(&req, ATTR_RECIPIENT_COUNT, "123", 2);
    if (!request_number(&req, ATTR_RECIPIENT_COUNT, &got) || got != 12)
        fail_msg("length 2 of \"123\": got %g, want 12", got);
    request_fini(&req);
}

/* ascii_lower against the byte-wise rule on every byte value, at every
 * length and offset around the 8-byte steps, in place and copied. */
static void test_request_ascii_lower(void **state)
{
    unsigned char src[64], dst[64], want[64];
    uint64_t x = 0x9e3779b97f4a7c15ULL;

    (void)state;
    for (int round = 0; round < 2000; round++) {
        for (size_t i = 0; i < sizeof src; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            /* Half the bytes near the letters' edges ('@' 'A' 'Z' '['
             * '`' 'a' 'z' '{' and their top-bit twins), half anything. */
            static const unsigned char edge[] = {0x40, 0x41, 0x5a, 0x5b, 0x60, 0x61, 0x7a, 0x7b,
                                                 0xc0, 0xc1, 0xda, 0xdb, 0x00, 0x7f, 0x80, 0xff};
            src[i] = (x & 1) ? edge[(x >> 8) % sizeof edge] : (unsigned char)(x >> 16);
        }
        size_t off = (size_t)(round % 8), n = (size_t)(round % 50);
        for (size_t i = 0; i < n; i++) {
            unsigned char ch = src[off + i];
            want[i] = (unsigned char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
        }
        memset(dst, 0xee, sizeof dst);
        ascii_lower((char *)dst, (const char *)src + off, n);
        assert_memory_equal(dst, want, n);
        assert_int_equal(dst[n], 0xee);     /* nothing written past n */
        ascii_lower((char *)src + off, (const char *)src + off, n);
        assert_memory_equal(src + off, want, n);
    }
    char s[] = "User@Example.COM-ÄÖ-[Z]`A`";
    ascii_lower(s, s, strlen(s));
    assert_string_equal(s, "user@example.com-ÄÖ-[z]`a`");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_attr_lookup_roundtrip),
        cmocka_unit_test(test_request_attr_lookup_unknown),
        cmocka_unit_test(test_request_attr_name),
        cmocka_unit_test(test_request_attr_is_case_insensitive),
        cmocka_unit_test(test_request_absent_and_empty),
        cmocka_unit_test(test_request_derived_address),
        cmocka_unit_test(test_request_derived_sasl_domain),
        cmocka_unit_test(test_request_set_invalidates_derived),
        cmocka_unit_test(test_request_reset_clears_derived),
        cmocka_unit_test(test_request_arena_strings),
        cmocka_unit_test(test_request_arena_alignment),
        cmocka_unit_test(test_request_arena_reset_reuses_memory),
        cmocka_unit_test(test_request_client_prefix),
        cmocka_unit_test(test_request_client_ip_follows_set),
        cmocka_unit_test(test_request_number),
        cmocka_unit_test(test_request_ascii_lower),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
