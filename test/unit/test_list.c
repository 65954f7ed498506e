/*
 * test_list - entry classification, matching (networks, domains,
 * subdomains, addresses, case), list files with bad lines, and
 * list_refresh() noticing a changed file.
 *
 * Files live in a mkdtemp() directory under $TMPDIR (default /tmp),
 * removed at the end of each test.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "list.h"
#include "xalloc.h"

/* ------------------------------------------------------------------ */
/* Helpers                                                            */

struct tmpdir {
    char path[256];             /* the directory */
    char file[300];             /* path/list, the file under test */
};

static void tmpdir_make(struct tmpdir *t)
{
    const char *base = getenv("TMPDIR");

    snprintf(t->path, sizeof(t->path), "%s/test_list.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(t->path))
        fail_msg("mkdtemp %s: %s", t->path, strerror(errno));
    snprintf(t->file, sizeof(t->file), "%s/list", t->path);
}

static void tmpdir_remove(struct tmpdir *t)
{
    unlink(t->file);
    rmdir(t->path);
}

static void write_file(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");

    if (!fp)
        fail_msg("fopen %s: %s", path, strerror(errno));
    fputs(text, fp);
    if (fclose(fp) != 0)
        fail_msg("write %s: %s", path, strerror(errno));
}

/* set_mtime - put the file's mtime at a fixed time, so a rewrite with
 * the same size is seen as a change even on a coarse-clock filesystem. */
static void set_mtime(const char *path, time_t sec)
{
    struct timespec ts[2] = {{sec, 0}, {sec, 0}};

    if (utimensat(AT_FDCWD, path, ts, 0) != 0)
        fail_msg("utimensat %s: %s", path, strerror(errno));
}

/* list_inline - a list built from entries, as config.c does for inline
 * lists. Fails the test on a rejected entry. */
static void list_inline(struct list *l, const char *const *entries, size_t n, bool subdomains)
{
    memset(l, 0, sizeof(*l));
    l->name = xstrdup("test");
    l->subdomains = subdomains;
    l->data = list_data_new();
    for (size_t i = 0; i < n; i++) {
        const char *why = NULL;
        if (list_data_add(l->data, entries[i], strlen(entries[i]), &why) != 0)
            fail_msg("entry \"%s\": got error \"%s\", want success", entries[i], why);
    }
    list_data_finish(l->data);
}

static const char *const match_entries[] = {
    "10.0.0.0/8",
    "2001:db8::/32",
    "192.0.2.7",
    "Example.COM",
    ".sub.example.net",
    "Joe@Example.org",
    "PlainString",
    "user@mixed.example",
};

struct match_case {
    const char *value;
    bool want;
};

static void check_matches(const struct list *l, const char *label, const struct match_case *c,
                          size_t n)
{
    for (size_t i = 0; i < n; i++) {
        bool got = list_match(l, c[i].value, strlen(c[i].value));
        if (got != c[i].want)
            fail_msg("%s: \"%s\" got %d, want %d", label, c[i].value, got, c[i].want);
    }
}

/* ------------------------------------------------------------------ */
/* Matching                                                           */

static void test_list_match(void **state)
{
    (void)state;
    static const struct match_case cases[] = {
        /* networks */
        {"10.1.2.3", true},
        {"11.0.0.1", false},
        {"::ffff:10.1.2.3", true},
        {"2001:DB8::5", true},
        {"2001:db9::5", false},
        {"192.0.2.7", true},
        {"[192.0.2.7]", true},
        {"IPV6:2001:db8::1", true},
        {"192.0.2.8", false},
        /* domains: exact, case-insensitive */
        {"example.com", true},
        {"EXAMPLE.com", true},
        {"a.example.com", false},
        {"notexample.com", false},
        {"com", false},
        /* one trailing dot is the same domain, as in DNS; two are not */
        {"example.com.", true},
        {"example.com..", false},
        {"a.sub.example.net.", true},
        {"bob@example.com.", true},
        {"joe@example.org.", true},
        {"plainstring.", true},
        /* ".sub.example.net": subdomains only */
        {"sub.example.net", false},
        {"a.sub.example.net", true},
        {"X.Y.SUB.EXAMPLE.NET", true},
        {"asub.example.net", false},
        {"example.net", false},
        /* addresses */
        {"joe@example.org", true},
        {"JOE@EXAMPLE.ORG", true},
        {"bob@example.org", false},
        {"example.org", false},
        {"joe@a.example.org", false},
        /* an address matches its domain */
        {"bob@example.com", true},
        {"Bob@Example.Com", true},
        {"bob@a.example.com", false},
        {"bob@a.sub.example.net", true},
        {"bob@sub.example.net", false},
        {"user@mixed.example", true},
        {"other@mixed.example", false},
        /* plain strings */
        {"plainstring", true},
        {"PLAINSTRING", true},
        {"plainstrin", false},
        /* odd values */
        {"", false},
        {"@", false},
        {"@example.com", true},     /* empty local part: its domain is listed */
        {".", false},
        {"..", false},
        {"example.com@", false},
    };
    struct list l;

    list_inline(&l, match_entries, sizeof(match_entries) / sizeof(match_entries[0]), false);
    check_matches(&l, "subdomains=false", cases, sizeof(cases) / sizeof(cases[0]));
    if (list_data_count(l.data) != sizeof(match_entries) / sizeof(match_entries[0]))
        fail_msg("count got %zu, want %zu", list_data_count(l.data),
                 sizeof(match_entries) / sizeof(match_entries[0]));
    list_free(&l);
}

static void test_list_match_subdomains(void **state)
{
    (void)state;
    static const struct match_case cases[] = {
        {"example.com", true},
        {"a.example.com", true},
        {"B.A.Example.Com", true},
        {"notexample.com", false},
        {"example.com.evil.test", false},
        {"bob@a.example.com", true},
        {"bob@example.com", true},
        {"sub.example.net", false},     /* a dotted entry stays subdomains-only */
        {"a.sub.example.net", true},
        {"joe@example.org", true},
        {"joe@a.example.org", false},   /* an address entry has no subdomains */
        {"x.plainstring", true},        /* a string is a domain to the list */
        {"10.1.2.3", true},
    };
    struct list l;

    list_inline(&l, match_entries, sizeof(match_entries) / sizeof(match_entries[0]), true);
    check_matches(&l, "subdomains=true", cases, sizeof(cases) / sizeof(cases[0]));
    list_free(&l);
}

/* Lists of one kind of entry skip the other kind's lookups (addresses
 * and names are kept apart): the answers stay those of a mixed list. */
static void test_list_match_one_kind(void **state)
{
    (void)state;
    static const char *const addrs[] = {"trap@honeypot.example", "Spam@Trap.Example"};
    static const struct match_case addr_cases[] = {
        {"trap@honeypot.example", true},
        {"TRAP@Honeypot.Example", true},
        {"spam@trap.example", true},
        {"honeypot.example", false},        /* the domain of an address entry */
        {"other@honeypot.example", false},
        {"trap@a.honeypot.example", false},
        {"trap", false},
        {"192.0.2.1", false},
    };
    static const char *const names[] = {"gmail.example", ".sub.example", "42"};
    static const struct match_case name_cases[] = {
        {"gmail.example", true},
        {"user@gmail.example", true},
        {"user@a.gmail.example", true},     /* subdomains=true */
        {"a.sub.example", true},
        {"user@a.sub.example", true},
        {"sub.example", false},
        {"42", true},
        {"10.0.0.42", false},               /* an address has no parent domains */
        {"gmail.example@x.example", false},
    };
    struct list l;

    list_inline(&l, addrs, sizeof addrs / sizeof addrs[0], true);
    check_matches(&l, "addresses only", addr_cases, sizeof addr_cases / sizeof addr_cases[0]);
    list_free(&l);
    list_inline(&l, names, sizeof names / sizeof names[0], true);
    check_matches(&l, "names only", name_cases, sizeof name_cases / sizeof name_cases[0]);
    list_free(&l);
}

/* long_value - "PREFIX" padded with 'a' to len bytes, then "SUFFIX". */
static size_t long_value(char *out, size_t len, const char *prefix, const char *suffix)
{
    size_t p = strlen(prefix), s = strlen(suffix);

    memcpy(out, prefix, p);
    memset(out + p, 'a', len - p - s);
    memcpy(out + len - s, suffix, s);
    return len;
}

/* Values longer than any entry (512 bytes) still match through the
 * domains in them: a sender must not get past a domain entry with a
 * 600-byte local part, nor a HELO name with a 600-byte first label. */
static void test_list_match_long_value(void **state)
{
    (void)state;
    static const struct {
        const char *prefix, *suffix;
        size_t len;
        bool sub, below; /* want: subdomains=true list of "example.com"; list of ".example.com" */
    } cases[] = {
        {"", ".example.com", 600, true, true},         /* a subdomain, 600 bytes */
        {"", ".Example.COM.", 600, true, true},        /* folded, trailing dot */
        {"", "@example.com", 600, true, false},        /* its domain is example.com itself */
        {"", "@mx.example.com", 600, true, true},      /* its domain is a subdomain */
        {"", "@EXAMPLE.com.", 600, true, false},
        {"x@", ".example.com", 600, true, true},       /* the domain alone is too long */
        {"", ".example.org", 600, false, false},
        {"", "@example.org", 600, false, false},
        {"", "example.com", 600, false, false},        /* no dot before it: one long label */
        {"", ".example.com", 2000, true, true},
        {"", ".example.com", 512, true, true},         /* the short path, for comparison */
        {"", "@example.com", 512, true, false},
    };
    char big[2000];
    struct list sub, below;
    const char *sub_entries[] = {"example.com"}, *below_entries[] = {".example.com"};

    list_inline(&sub, sub_entries, 1, true);
    list_inline(&below, below_entries, 1, false);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = long_value(big, cases[i].len, cases[i].prefix, cases[i].suffix);
        if (list_match(&sub, big, len) != cases[i].sub)
            fail_msg("%zu-byte \"%s...%s\" in [example.com] subdomains=true: got %d, want %d", len,
                     cases[i].prefix, cases[i].suffix, !cases[i].sub, cases[i].sub);
        if (list_match(&below, big, len) != cases[i].below)
            fail_msg("%zu-byte \"%s...%s\" in [.example.com]: got %d, want %d", len,
                     cases[i].prefix, cases[i].suffix, !cases[i].below, cases[i].below);
    }
    list_free(&sub);
    list_free(&below);
}

static void test_list_match_ip(void **state)
{
    (void)state;
    static const struct {
        const char *ip;
        bool want;
    } cases[] = {
        {"10.0.0.1", true},   {"9.255.255.255", false}, {"::ffff:10.0.0.1", true},
        {"2001:db8::1", true}, {"2001:db9::1", false},   {"192.0.2.7", true},
        {"192.0.2.6", false},
    };
    struct list l;

    list_inline(&l, match_entries, sizeof(match_entries) / sizeof(match_entries[0]), false);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ipaddr ip;
        if (ipaddr_parse(cases[i].ip, strlen(cases[i].ip), &ip) != 0)
            fail_msg("bad test address %s", cases[i].ip);
        bool got = list_match_ip(&l, &ip);
        if (got != cases[i].want)
            fail_msg("%s: got %d, want %d", cases[i].ip, got, cases[i].want);
    }
    list_free(&l);

    /* "::/0" is the IPv6 clients: an IPv4 client (mapped or not) is not
     * in it; an IPv4-mapped /96 or longer is an IPv4 network. */
    static const struct {
        const char *ip;
        bool want;
    } v6cases[] = {
        {"2001:db8::1", true}, {"10.0.0.1", false}, {"::ffff:10.0.0.1", false},
        {"192.0.2.5", true},   {"::ffff:192.0.2.5", true}, {"192.0.3.5", false},
    };
    const char *v6entries[] = {"::/0", "::ffff:192.0.2.0/120"};
    list_inline(&l, v6entries, 2, false);
    for (size_t i = 0; i < sizeof(v6cases) / sizeof(v6cases[0]); i++) {
        struct ipaddr ip;
        if (ipaddr_parse(v6cases[i].ip, strlen(v6cases[i].ip), &ip) != 0)
            fail_msg("bad test address %s", v6cases[i].ip);
        if (list_match_ip(&l, &ip) != v6cases[i].want)
            fail_msg("[::/0, ::ffff:192.0.2.0/120] %s: got %d, want %d", v6cases[i].ip,
                     !v6cases[i].want, v6cases[i].want);
    }
    list_free(&l);
}

static void test_list_match_ip_text(void **state)
{
    (void)state;
    static const char *const entries[] = {"3", "0.3.example", "192.0.2.0/24", "::1"};
    static const struct match_case cases[] = {
        {"10.1.2.3", false},        /* no parent "3" for an address */
        {"192.0.2.200", true},
        {"::1", true},
        {"[::1]", true},
        {"IPv6:0:0::1", true},
        {"a.3", true},
        {"x.0.3.example", true},
    };
    struct list l;

    list_inline(&l, entries, sizeof(entries) / sizeof(entries[0]), true);
    check_matches(&l, "ip text", cases, sizeof(cases) / sizeof(cases[0]));
    list_free(&l);
}

/* list_match_addr (the client address, parsed once per request) agrees
 * with list_match on the text, on a list of networks only (which skips
 * folding the address for its empty names) and on a mixed one. */
static void test_list_match_addr_agrees(void **state)
{
    (void)state;
    static const char *const nets[] = {"10.0.0.0/8", "2001:db8::/32", "192.0.2.7"};
    static const char *const mixed[] = {"3", "0.3.example", "192.0.2.0/24", "::1", "10.0.0.0/8"};
    static const char *const values[] = {"10.1.2.3", "11.1.2.3", "192.0.2.7", "192.0.2.8",
                                         "2001:DB8::1", "2001:db9::1", "::1", "::ffff:10.0.0.1"};
    const char *const *entries[] = {nets, mixed};
    const size_t n_entries[] = {sizeof nets / sizeof nets[0], sizeof mixed / sizeof mixed[0]};
    int matched = 0;

    for (int k = 0; k < 2; k++) {
        struct list l;
        list_inline(&l, entries[k], n_entries[k], k == 1);
        for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
            struct ipaddr ip;
            size_t len = strlen(values[i]);
            assert_int_equal(ipaddr_parse(values[i], len, &ip), 0);
            bool want = list_match(&l, values[i], len);
            if (list_match_addr(&l, values[i], len, &ip) != want)
                fail_msg("list %d, %s: list_match_addr differs from list_match (%d)", k,
                         values[i], want);
            matched += want;
        }
        list_free(&l);
    }
    assert_true(matched >= 6); /* both answers occur */
}

static void test_list_data_add(void **state)
{
    (void)state;
    char toolong[514];
    static const struct {
        const char *entry;
        const char *why;        /* NULL = accepted */
    } cases[] = {
        {"10.0.0.0/8", NULL},
        {"::1", NULL},
        {"a/b", NULL},                  /* a string with a slash */
        {"foo:bar", NULL},              /* a string with one colon */
        {"12345", NULL},
        {"4.3.2.1.in-addr.arpa", NULL},
        {"user@host@example.com", NULL},
        /* certificate fingerprints (ccert_fingerprint): more colons than
         * any IPv6 address has, so strings, not IPv6 typos */
        {"68:B3:29:DA:98:93:E3:40:99:C7:D8:AD:5C:B9:C9:40", NULL},
        {"1:2:3:4:5:6:7:8:9:10", NULL},
        {"example.com.", NULL},
        {".example.net.", NULL},
        {"joe@example.org.", NULL},
        {"", "empty entry"},
        {"1.2.3.4/33", "bad prefix length"},
        {"10.0.0.0/", "bad prefix length"},
        {"::/129", "bad prefix length"},
        {"1.2.3/24", "bad network address"},
        {"fe80:::1/64", "bad network address"},
        {"/24", "bad network address"},
        {"1.2.3", "bad IPv4 address"},
        {"256.0.0.1", "bad IPv4 address"},
        {"fe80:::1", "bad IPv6 address"},
        {"::abcdefab", "bad IPv6 address"},
        /* letters past 'f': strings (a policy_context), not IPv6 typos */
        {"relay:out:mx1", NULL},
        {"smtp:in:zz", NULL},
        {"::g", NULL},
        {"2001:db8::1::2", "bad IPv6 address"},
        {"1:2:3:4:5:6:7:8:9", "bad IPv6 address"}, /* 9 groups, 8 colons */
        {"..", "bad domain"},
        {"@example.com", "address without a local part (write the domain alone)"},
        {"joe@", "address without a domain"},
        {".", "bad domain"},
        {"..example.com", "bad domain"},
        {"a b", "entry contains a blank"},
        {"a\tb", "entry contains a blank"},
        {"a\x01", "entry contains a control character"},
        {"a\x7f", "entry contains a control character"},
    };
    struct list_data *d = list_data_new();
    size_t accepted = 0;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *why = NULL;
        int rc = list_data_add(d, cases[i].entry, strlen(cases[i].entry), &why);

        if (!cases[i].why) {
            if (rc != 0)
                fail_msg("\"%s\": got error \"%s\", want success", cases[i].entry, why);
            accepted++;
            continue;
        }
        if (rc != -EINVAL)
            fail_msg("\"%s\": rc got %d, want %d", cases[i].entry, rc, -EINVAL);
        if (!why || strcmp(why, cases[i].why) != 0)
            fail_msg("\"%s\": why got \"%s\", want \"%s\"", cases[i].entry, why ? why : "(null)",
                     cases[i].why);
    }

    memset(toolong, 'a', sizeof(toolong));
    const char *why = NULL;
    if (list_data_add(d, toolong, 513, &why) != -EINVAL ||
        strcmp(why, "entry longer than 512 bytes") != 0)
        fail_msg("513 bytes: got \"%s\", want \"entry longer than 512 bytes\"", why);
    if (list_data_add(d, toolong, 512, &why) != 0)
        fail_msg("512 bytes: got error \"%s\", want success", why);
    accepted++;

    list_data_finish(d);
    if (list_data_count(d) != accepted)
        fail_msg("count got %zu, want %zu", list_data_count(d), accepted);
    list_data_free(d);
    list_data_free(NULL);
}

/* test_list_many - 100k entries: the hash sets grow and keep them all. */
static void test_list_many(void **state)
{
    (void)state;
    enum { N = 100000 };
    struct list l = {0};
    char buf[64];
    const char *why;

    l.data = list_data_new();
    for (int i = 0; i < N; i++) {
        int n = snprintf(buf, sizeof(buf), "Host%d.Example", i);
        if (list_data_add(l.data, buf, (size_t)n, &why) != 0)
            fail_msg("%s: %s", buf, why);
        n = snprintf(buf, sizeof(buf), ".zone%d.example", i);
        if (list_data_add(l.data, buf, (size_t)n, &why) != 0)
            fail_msg("%s: %s", buf, why);
    }
    list_data_finish(l.data);
    assert_int_equal(list_data_count(l.data), 2 * N);
    for (int i = 0; i < N; i += 7) {
        int n = snprintf(buf, sizeof(buf), "host%d.example", i);
        if (!list_match(&l, buf, (size_t)n))
            fail_msg("%s: got no match, want match", buf);
        n = snprintf(buf, sizeof(buf), "host%d.example", i + N);
        if (list_match(&l, buf, (size_t)n))
            fail_msg("%s: got match, want none", buf);
        n = snprintf(buf, sizeof(buf), "mx.zone%d.example", i);
        if (!list_match(&l, buf, (size_t)n))
            fail_msg("%s: got no match, want match", buf);
        n = snprintf(buf, sizeof(buf), "zone%d.example", i);
        if (list_match(&l, buf, (size_t)n))
            fail_msg("%s: got match, want none", buf);
    }
    list_free(&l);
}

/* ------------------------------------------------------------------ */
/* Files                                                              */

static void test_list_load_file(void **state)
{
    (void)state;
    static const struct match_case cases[] = {
        {"10.9.8.7", true},     {"192.0.2.1", true},    {"192.0.2.2", false},
        {"2001:db8::77", true}, {"example.com", true},  {"a.example.net", true},
        {"example.net", false}, {"joe@example.org", true}, {"hash#tag", true},
        {"office", false},      {"tail", true},         {"hash", false},
    };
    struct tmpdir t;
    struct list l = {0};
    char err[512];
    int rc;

    tmpdir_make(&t);
    write_file(t.file, "# customers\n"
                       "\n"
                       "   \n"
                       "10.0.0.0/8   # office\n"
                       "\t192.0.2.1\t\n"
                       "2001:db8::/32\r\n"
                       "Example.com\n"
                       "   # indented comment\n"
                       ".example.net\n"
                       "joe@example.org\n"
                       "hash#tag\n"
                       "tail");
    err[0] = 'x';
    rc = list_load_file(t.file, &l.data, err, sizeof(err));
    if (rc != 0)
        fail_msg("load: got %d \"%s\", want 0", rc, err);
    if (err[0] != '\0')
        fail_msg("load: err got \"%s\", want empty", err);
    /* "hash#tag" is one entry: '#' only starts a comment at the start
     * of a line or after a blank. */
    assert_int_equal(list_data_count(l.data), 8);
    check_matches(&l, "file", cases, sizeof(cases) / sizeof(cases[0]));
    list_free(&l);
    tmpdir_remove(&t);
}

static void test_list_load_file_bad_lines(void **state)
{
    (void)state;
    struct tmpdir t;
    struct list_data *d = NULL;
    char err[2048], want[2048];
    int rc;

    tmpdir_make(&t);
    write_file(t.file, "10.0.0.0/8\n"          /* 1 */
                       "1.2.3.4/33\n"          /* 2 */
                       "example.com\n"         /* 3 */
                       "# fine\n"              /* 4 */
                       "1.2.3\n"               /* 5 */
                       "10.0.0.0/8 OK\n"       /* 6 */
                       "\n"                    /* 7 */
                       "fe80:::1\n"            /* 8 */
                       "@example.com\n");      /* 9 */
    rc = list_load_file(t.file, &d, err, sizeof(err));
    snprintf(want, sizeof(want),
             "%s:2: bad prefix length\n"
             "%s:5: bad IPv4 address\n"
             "%s:6: more than one entry on the line\n"
             "%s:8: bad IPv6 address\n"
             "%s:9: address without a local part (write the domain alone)",
             t.file, t.file, t.file, t.file, t.file);
    tmpdir_remove(&t);
    if (rc != -EINVAL)
        fail_msg("rc got %d, want %d", rc, -EINVAL);
    if (d != NULL)
        fail_msg("out got data, want untouched NULL");
    if (strcmp(err, want) != 0)
        fail_msg("err got\n%s\nwant\n%s", err, want);

    /* A short buffer holds a NUL-terminated prefix of the same text. */
    static const size_t caps[] = {1, 2, 10, 40, 41, 42, 100};
    for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
        char small[128];

        tmpdir_make(&t);
        write_file(t.file, "1.2.3.4/33\n1.2.3\n::1::\n");
        memset(small, 'Z', sizeof(small));
        rc = list_load_file(t.file, &d, small, caps[i]);
        snprintf(want, sizeof(want),
                 "%s:1: bad prefix length\n%s:2: bad IPv4 address\n%s:3: bad IPv6 address",
                 t.file, t.file, t.file);
        tmpdir_remove(&t);
        if (rc != -EINVAL)
            fail_msg("cap %zu: rc got %d, want %d", caps[i], rc, -EINVAL);
        size_t len = strnlen(small, caps[i]);
        if (len >= caps[i])
            fail_msg("cap %zu: err not NUL-terminated", caps[i]);
        if (strncmp(small, want, len) != 0)
            fail_msg("cap %zu: err got \"%s\", want a prefix of \"%s\"", caps[i], small, want);
        if (small[caps[i]] != 'Z')
            fail_msg("cap %zu: wrote past the buffer", caps[i]);
    }
    rc = list_load_file("/nonexistent/x", &d, NULL, 0);
    if (rc != -ENOENT)
        fail_msg("errlen 0: rc got %d, want %d", rc, -ENOENT);
}

static void test_list_load_file_missing(void **state)
{
    (void)state;
    struct tmpdir t;
    struct list_data *d = NULL;
    char err[512], want[512];
    int rc;

    tmpdir_make(&t);
    rc = list_load_file(t.file, &d, err, sizeof(err));
    snprintf(want, sizeof(want), "%s: %s", t.file, strerror(ENOENT));
    tmpdir_remove(&t);
    if (rc != -ENOENT)
        fail_msg("rc got %d, want %d", rc, -ENOENT);
    if (strcmp(err, want) != 0)
        fail_msg("err got \"%s\", want \"%s\"", err, want);
    assert_null(d);

    /* An empty file is an empty list, not an error. */
    tmpdir_make(&t);
    write_file(t.file, "");
    rc = list_load_file(t.file, &d, err, sizeof(err));
    tmpdir_remove(&t);
    if (rc != 0)
        fail_msg("empty file: got %d \"%s\", want 0", rc, err);
    assert_int_equal(list_data_count(d), 0);
    list_data_free(d);

    /* A directory is a read error, reported with its errno. */
    tmpdir_make(&t);
    d = NULL;
    rc = list_load_file(t.path, &d, err, sizeof(err));
    snprintf(want, sizeof(want), "%s: %s", t.path, strerror(EISDIR));
    tmpdir_remove(&t);
    if (rc != -EISDIR)
        fail_msg("directory: rc got %d, want %d", rc, -EISDIR);
    if (strcmp(err, want) != 0)
        fail_msg("directory: err got \"%s\", want \"%s\"", err, want);
    assert_null(d);
}

static void test_list_refresh(void **state)
{
    (void)state;
    struct tmpdir t;
    struct list l = {0};
    char err[512];
    int rc;

    tmpdir_make(&t);
    l.name = xstrdup("customers");
    l.file = xstrdup(t.file);

    /* First refresh with no data loads it. */
    write_file(t.file, "10.0.0.0/8\n");
    set_mtime(t.file, 1000000000);
    rc = list_refresh(&l, err, sizeof(err));
    if (rc != 1)
        fail_msg("initial: got %d \"%s\", want 1", rc, err);
    assert_true(list_match(&l, "10.1.1.1", 8));

    rc = list_refresh(&l, err, sizeof(err));
    if (rc != 0)
        fail_msg("unchanged: got %d, want 0", rc);

    /* New size. */
    write_file(t.file, "10.0.0.0/8\n192.0.2.0/24\n");
    set_mtime(t.file, 1000000000);
    rc = list_refresh(&l, err, sizeof(err));
    if (rc != 1)
        fail_msg("size change: got %d \"%s\", want 1", rc, err);
    assert_true(list_match(&l, "192.0.2.9", 9));

    /* Same size, new mtime. */
    write_file(t.file, "11.0.0.0/8\n192.0.2.0/24\n");
    set_mtime(t.file, 1000000100);
    rc = list_refresh(&l, err, sizeof(err));
    if (rc != 1)
        fail_msg("mtime change: got %d \"%s\", want 1", rc, err);
    assert_true(list_match(&l, "11.1.1.1", 8));
    assert_false(list_match(&l, "10.1.1.1", 8));

    /* Same size and mtime, new inode (rename over it, as editors and
     * deploy tools do). */
    {
        char tmp[320];
        snprintf(tmp, sizeof(tmp), "%s/new", t.path);
        write_file(tmp, "12.0.0.0/8\n192.0.2.0/24\n");
        set_mtime(tmp, 1000000100);
        if (rename(tmp, t.file) != 0)
            fail_msg("rename: %s", strerror(errno));
    }
    rc = list_refresh(&l, err, sizeof(err));
    if (rc != 1)
        fail_msg("inode change: got %d \"%s\", want 1", rc, err);
    assert_true(list_match(&l, "12.1.1.1", 8));

    /* A bad file keeps the old data. */
    write_file(t.file, "13.0.0.0/8\n1.2.3.4/33\n");
    set_mtime(t.file, 1000000200);
    rc = list_refresh(&l, err, sizeof(err));
    if (rc != -EINVAL)
        fail_msg("bad file: got %d, want %d", rc, -EINVAL);
    if (!strstr(err, ":2: bad prefix length"))
        fail_msg("bad file: err got \"%s\", want it to name line 2", err);
    assert_true(list_match(&l, "12.1.1.1", 8));
    assert_false(list_match(&l, "13.1.1.1", 8));

    /* Fixed again: picked up. */
    write_file(t.file, "13.0.0.0/8\n");
    set_mtime(t.file, 1000000300);
    rc = list_refresh(&l, err, sizeof(err));
    if (rc != 1)
        fail_msg("fixed file: got %d \"%s\", want 1", rc, err);
    assert_true(list_match(&l, "13.1.1.1", 8));

    /* A vanished file keeps the old data. */
    unlink(t.file);
    rc = list_refresh(&l, err, sizeof(err));
    if (rc != -ENOENT)
        fail_msg("vanished: got %d, want %d", rc, -ENOENT);
    assert_true(list_match(&l, "13.1.1.1", 8));

    list_free(&l);
    assert_null(l.data);
    tmpdir_remove(&t);

    /* Inline lists never reload. */
    struct list inl = {0};
    inl.data = list_data_new();
    list_data_finish(inl.data);
    assert_int_equal(list_refresh(&inl, err, sizeof(err)), 0);
    list_free(&inl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_list_match),
        cmocka_unit_test(test_list_match_subdomains),
        cmocka_unit_test(test_list_match_one_kind),
        cmocka_unit_test(test_list_match_long_value),
        cmocka_unit_test(test_list_match_ip),
        cmocka_unit_test(test_list_match_ip_text),
        cmocka_unit_test(test_list_match_addr_agrees),
        cmocka_unit_test(test_list_data_add),
        cmocka_unit_test(test_list_many),
        cmocka_unit_test(test_list_load_file),
        cmocka_unit_test(test_list_load_file_bad_lines),
        cmocka_unit_test(test_list_load_file_missing),
        cmocka_unit_test(test_list_refresh),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
