/*
 * list - operator lists of networks, domains, addresses and strings.
 * See list.h.
 *
 * A list_data holds four things:
 *   - nets: a cidr_set of every entry cidr_parse() accepts;
 *   - addrs: a hash set of the mail addresses (entries with an '@'),
 *     lower-cased;
 *   - names: a hash set of the other entries (domains, plain strings),
 *     lower-cased;
 *   - below: a hash set of the domains written ".example.com", stored
 *     without the dot; they match strict subdomains only.
 * Matching a domain value looks it up in names, then walks its parent
 * domains ("a.b.example.com" -> "b.example.com" -> "example.com" ->
 * "com") and looks each up in below (and in names if the list has
 * subdomains=true): one probe per label, no allocation. A mail address
 * is looked up whole in addrs and its domain as above. Addresses and
 * names are kept apart because neither can match the other's lookups,
 * and a list of one kind (honeypot addresses, freemail domains) then
 * skips the other kind's lookups at the cost of a count test.
 *
 * The hash sets are open addressing with linear probing over one string
 * pool (one allocation for all the text, not one per entry), kept at
 * most half full. Values are lower-cased into a stack buffer before a
 * lookup. A value longer than LIST_VALUE_MAX cannot match an entry
 * whole (none that long is accepted), but its domain can: an address's
 * domain, or a domain's parents, are looked up as long as they fit
 * (a 600-byte local part must not take a sender past a domain entry).
 * One trailing dot of an entry or a value is dropped ("example.com." is
 * example.com, as in DNS).
 *
 * File syntax: one entry per line; leading and trailing blanks are
 * ignored; '#' at the start of a line or after a blank starts a comment
 * (so "10.0.0.0/8  # office" works). A second word on a line is an
 * error rather than ignored: it usually means a Postfix table
 * ("10.0.0.0/8 OK") was given where a list was expected.
 */
#include "list.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ascii.h"
#include "xalloc.h"

/* Longest entry or value, bytes. Longer values never match. */
#define LIST_VALUE_MAX 512

struct list_slot {
    uint64_t hash;              /* full hash of the string */
    size_t off;                 /* into the pool; SIZE_MAX = empty slot */
    size_t len;                 /* bytes, without a NUL */
};

struct list_strset {
    struct list_slot *slots;    /* table, power-of-two size */
    size_t nslots;              /* table size; 0 until the first insert */
    size_t used;                /* distinct strings stored */
    char *pool;                 /* the strings, back to back, no NULs */
    size_t pool_len;            /* bytes used in pool */
    size_t pool_cap;            /* bytes allocated for pool */
};

struct list_data {
    struct cidr_set *nets;      /* network entries */
    struct list_strset addrs;   /* mail addresses, lower-case */
    struct list_strset names;   /* domains and other strings, lower-case */
    struct list_strset below;   /* ".example.com" entries, without the dot */
    size_t count;               /* entries added (duplicates included) */
};

/* ------------------------------------------------------------------ */
/* String set                                                         */

/* Eight bytes a step, each mixed in by a multiply, and MurmurHash3's
 * 64-bit finalizer over the whole: no attacker-chosen inserts (entries
 * come from the operator), so a simple hash is enough, but it must
 * spread well for linear probing. FNV-1a, byte by byte, cost ~5
 * instructions a byte, and every request hashes a recipient and its
 * parent domains. Host byte order: the sets live in this process only. */
static uint64_t list_hash(const char *s, size_t len)
{
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ len, w;

    for (; len >= 8; s += 8, len -= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    if (len > 0) {
        w = 0;
        memcpy(&w, s, len);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

static void list_strset_fini(struct list_strset *set)
{
    free(set->slots);
    free(set->pool);
    memset(set, 0, sizeof(*set));
}

static void list_strset_grow(struct list_strset *set)
{
    size_t n = set->nslots ? set->nslots * 2 : 64;
    struct list_slot *slots = xreallocarray(NULL, n, sizeof(*slots));

    for (size_t i = 0; i < n; i++)
        slots[i].off = SIZE_MAX;
    for (size_t i = 0; i < set->nslots; i++) {
        const struct list_slot *old = &set->slots[i];
        size_t j;

        if (old->off == SIZE_MAX)
            continue;
        for (j = old->hash & (n - 1); slots[j].off != SIZE_MAX; j = (j + 1) & (n - 1))
            ;
        slots[j] = *old;
    }
    free(set->slots);
    set->slots = slots;
    set->nslots = n;
}

static bool list_strset_has(const struct list_strset *set, const char *s, size_t len)
{
    uint64_t h;

    if (set->used == 0)
        return false;
    h = list_hash(s, len);
    for (size_t j = h & (set->nslots - 1);; j = (j + 1) & (set->nslots - 1)) {
        const struct list_slot *slot = &set->slots[j];

        if (slot->off == SIZE_MAX)
            return false;
        if (slot->hash == h && slot->len == len && memcmp(set->pool + slot->off, s, len) == 0)
            return true;
    }
}

/* list_strset_add - insert s (already lower-cased) unless present. */
static void list_strset_add(struct list_strset *set, const char *s, size_t len)
{
    uint64_t h;
    size_t j;

    if (list_strset_has(set, s, len))
        return;
    /* Keep the table at most half full, so probe runs stay short. */
    if ((set->used + 1) * 2 > set->nslots)
        list_strset_grow(set);
    if (set->pool_len + len > set->pool_cap) {
        size_t cap = set->pool_cap ? set->pool_cap : 1024;
        while (cap < set->pool_len + len)
            cap *= 2;
        set->pool = xrealloc(set->pool, cap);
        set->pool_cap = cap;
    }
    memcpy(set->pool + set->pool_len, s, len);
    h = list_hash(s, len);
    for (j = h & (set->nslots - 1); set->slots[j].off != SIZE_MAX; j = (j + 1) & (set->nslots - 1))
        ;
    set->slots[j] = (struct list_slot){h, set->pool_len, len};
    set->pool_len += len;
    set->used++;
}

/* ------------------------------------------------------------------ */
/* Data                                                               */

/* list_lower - ASCII lower-case copy into out (LIST_VALUE_MAX bytes);
 * false if it does not fit. Locale-independent on purpose. */
static bool list_lower(const char *s, size_t len, char *out)
{
    if (len > LIST_VALUE_MAX)
        return false;
    ascii_lower(out, s, len);
    return true;
}

struct list_data *list_data_new(void)
{
    struct list_data *d = xcalloc(1, sizeof(*d));

    d->nets = cidr_set_new();
    return d;
}

/* list_trim_dot - len without one trailing dot (a lone "." stays). */
static size_t list_trim_dot(const char *s, size_t len)
{
    return len > 1 && s[len - 1] == '.' ? len - 1 : len;
}

/* list_memrchr - the last c in s[0..len), or NULL (memrchr() is a GNU
 * extension). */
static const char *list_memrchr(const char *s, int c, size_t len)
{
    while (len > 0) {
        if (s[--len] == (char)c)
            return s + len;
    }
    return NULL;
}

/*
 * list_check_numeric - why an entry that looks like an address or a
 * network but did not parse as one is wrong, or NULL if it does not look
 * like one. "1.2.3", "10.0.0.0/33" and "fe80:::1" are typos, and silently
 * storing them as strings would hide the mistake ("192.168.1", a /24 in
 * a Postfix access table, would never match). Text with more than 8
 * colons is no IPv6 address, typo or not: certificate fingerprints
 * ("68:B3:29:...", ccert_fingerprint) are strings; so is text with a
 * letter past 'f' ("relay:out:mx1", a policy_context).
 */
static const char *list_check_numeric(const char *s, size_t len)
{
    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t)(slash - s) : len;
    bool v4ish = alen > 0, v6ish = alen > 0;
    unsigned dots = 0, colons = 0, digits = 0;
    struct ipaddr ip;

    for (size_t i = 0; i < alen; i++) {
        char c = s[i];
        bool digit = c >= '0' && c <= '9';
        bool hex = digit || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');

        dots += c == '.';
        digits += digit;
        colons += c == ':';
        if (!digit && c != '.')
            v4ish = false;
        if (!hex && c != ':' && c != '.' && c != '[' && c != ']')
            v6ish = false;
    }
    v4ish = v4ish && dots > 0 && digits > 0;
    v6ish = v6ish && colons >= 2 && colons <= 8;
    if (slash) {
        if (ipaddr_parse(s, alen, &ip) == 0)
            return "bad prefix length";
        if (alen == 0 || v4ish || v6ish)
            return "bad network address";
        return NULL;
    }
    if (v6ish)
        return "bad IPv6 address";
    if (v4ish)
        return "bad IPv4 address";
    return NULL;
}

int list_data_add(struct list_data *d, const char *entry, size_t len, const char **why)
{
    char buf[LIST_VALUE_MAX];
    const char *at;
    const char *problem;
    struct cidr net;

    if (len == 0) {
        *why = "empty entry";
        return -EINVAL;
    }
    if (len > LIST_VALUE_MAX) {
        *why = "entry longer than 512 bytes";
        return -EINVAL;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)entry[i];
        if (c == ' ' || c == '\t') {
            *why = "entry contains a blank";
            return -EINVAL;
        }
        if (c < 0x20 || c == 0x7f) {
            *why = "entry contains a control character";
            return -EINVAL;
        }
    }

    if (cidr_parse(entry, len, &net, NULL) == 0) {
        cidr_set_add(d->nets, &net);
        d->count++;
        return 0;
    }
    problem = list_check_numeric(entry, len);
    if (problem) {
        *why = problem;
        return -EINVAL;
    }

    list_lower(entry, len, buf);
    len = list_trim_dot(buf, len);
    at = list_memrchr(buf, '@', len);
    if (at) {
        if (at == buf) {
            *why = "address without a local part (write the domain alone)";
            return -EINVAL;
        }
        if ((size_t)(at - buf) == len - 1) {
            *why = "address without a domain";
            return -EINVAL;
        }
        list_strset_add(&d->addrs, buf, len);
    } else if (buf[0] == '.') {
        if (len == 1 || buf[1] == '.') {
            *why = "bad domain";
            return -EINVAL;
        }
        list_strset_add(&d->below, buf + 1, len - 1);
    } else {
        list_strset_add(&d->names, buf, len);
    }
    d->count++;
    return 0;
}

void list_data_finish(struct list_data *d)
{
    cidr_set_finish(d->nets);
}

void list_data_free(struct list_data *d)
{
    if (!d)
        return;
    cidr_set_free(d->nets);
    list_strset_fini(&d->addrs);
    list_strset_fini(&d->names);
    list_strset_fini(&d->below);
    free(d);
}

size_t list_data_count(const struct list_data *d)
{
    return d->count;
}

/* ------------------------------------------------------------------ */
/* Files                                                              */

/* list_err_append - add one line to a newline-separated error text,
 * truncating at errlen (snprintf semantics: always NUL-terminated). */
static void list_err_append(char *err, size_t errlen, size_t *used, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void list_err_append(char *err, size_t errlen, size_t *used, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (errlen == 0 || *used >= errlen - 1)
        return;
    if (*used > 0)
        err[(*used)++] = '\n';
    err[*used] = '\0';
    if (*used >= errlen - 1)
        return;
    va_start(ap, fmt);
    n = vsnprintf(err + *used, errlen - *used, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    *used += (size_t)n;
    if (*used > errlen - 1)
        *used = errlen - 1;
}

static bool list_is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

int list_load_file(const char *path, struct list_data **out, char *err, size_t errlen)
{
    struct list_data *d;
    FILE *fp;
    char *line = NULL;
    size_t linecap = 0;
    ssize_t n;
    unsigned long lineno = 0;
    unsigned long bad = 0;
    size_t used = 0;
    int rc;

    if (errlen > 0)
        err[0] = '\0';
    fp = fopen(path, "re");
    if (!fp) {
        rc = -errno;
        list_err_append(err, errlen, &used, "%s: %s", path, strerror(-rc));
        return rc;
    }
    d = list_data_new();
    errno = 0;
    while ((n = getline(&line, &linecap, fp)) >= 0) {
        size_t len = (size_t)n;
        size_t start = 0, end;
        const char *why = NULL;

        lineno++;
        /* Cut the comment: '#' at the start or after a blank. */
        for (size_t i = 0; i < len; i++) {
            if (line[i] == '#' && (i == 0 || list_is_blank(line[i - 1]))) {
                len = i;
                break;
            }
        }
        while (start < len && list_is_blank(line[start]))
            start++;
        while (len > start && list_is_blank(line[len - 1]))
            len--;
        if (start == len)
            continue;
        for (end = start; end < len && !list_is_blank(line[end]); end++)
            ;
        if (end < len)
            why = "more than one entry on the line";
        else if (list_data_add(d, line + start, len - start, &why) == 0)
            why = NULL;
        if (why) {
            bad++;
            list_err_append(err, errlen, &used, "%s:%lu: %s", path, lineno, why);
        }
    }
    if (ferror(fp)) {
        /* getline() set errno (EISDIR for a directory, EIO ...). */
        rc = errno ? -errno : -EIO;
        list_err_append(err, errlen, &used, "%s: %s", path, strerror(-rc));
        goto fail;
    }
    if (bad > 0) {
        rc = -EINVAL;
        goto fail;
    }
    free(line);
    fclose(fp);
    list_data_finish(d);
    *out = d;
    return 0;

fail:
    free(line);
    fclose(fp);
    list_data_free(d);
    return rc;
}

int list_refresh(struct list *l, char *err, size_t errlen)
{
    struct stat st;
    struct list_data *d;
    int rc;

    if (!l->file)
        return 0;
    /* stat() before reading: if the file changes while we read it, the
     * next refresh sees a newer stat than the one recorded and reloads
     * again, which is the safe direction. */
    if (stat(l->file, &st) < 0) {
        rc = -errno;
        snprintf(err, errlen, "%s: %s", l->file, strerror(-rc));
        return rc;
    }
    if (l->data && st.st_mtim.tv_sec == l->mtime.tv_sec &&
        st.st_mtim.tv_nsec == l->mtime.tv_nsec && st.st_size == l->size && st.st_ino == l->ino)
        return 0;
    rc = list_load_file(l->file, &d, err, errlen);
    if (rc < 0)
        return rc;
    list_data_free(l->data);
    l->data = d;
    l->mtime = st.st_mtim;
    l->size = st.st_size;
    l->ino = st.st_ino;
    return 1;
}

/* ------------------------------------------------------------------ */
/* Matching                                                           */

bool list_match_ip(const struct list *l, const struct ipaddr *ip)
{
    return l->data && cidr_set_contains(l->data->nets, ip);
}

/* list_match_as_parent - p (lower-case), a parent domain of the value,
 * matches: a ".p" entry, or "p" in a subdomains=true list. */
static bool list_match_as_parent(const struct list *l, const char *p, size_t plen)
{
    const struct list_data *d = l->data;

    return list_strset_has(&d->below, p, plen) ||
           (l->subdomains && list_strset_has(&d->names, p, plen));
}

/* list_match_parents - a parent domain of dom (lower-case) matches. */
static bool list_match_parents(const struct list *l, const char *dom, size_t len)
{
    for (size_t i = 0; i + 1 < len; i++)
        if (dom[i] == '.' && list_match_as_parent(l, dom + i + 1, len - i - 1))
            return true;
    return false;
}

/* list_has_domains - the list holds entries a domain can match. */
static bool list_has_domains(const struct list *l)
{
    return l->data->names.used > 0 || l->data->below.used > 0;
}

/* list_match_domain - dom (lower-case) itself, or a parent domain that
 * matches its subdomains. */
static bool list_match_domain(const struct list *l, const char *dom, size_t len)
{
    if (len == 0 || !list_has_domains(l))
        return false;
    return list_strset_has(&l->data->names, dom, len) || list_match_parents(l, dom, len);
}

/*
 * list_match_long - a value longer than any entry (LIST_VALUE_MAX): only
 * a domain inside it can match, an address's domain or a domain's
 * parents, whichever fit in buf: the longest parent that fits is folded
 * and looked up as a parent, then its own parents.
 */
static bool list_match_long(const struct list *l, const char *value, size_t len, char *buf)
{
    const char *at = list_memrchr(value, '@', len);

    if (!list_has_domains(l))
        return false;
    if (at) {
        size_t dlen = len - (size_t)(at - value) - 1;

        if (list_lower(at + 1, dlen, buf))
            return list_match_domain(l, buf, list_trim_dot(buf, dlen));
        value = at + 1; /* the domain alone is too long: its parents */
        len = dlen;
    }
    for (size_t i = 0; i + 1 < len; i++) {
        size_t plen = len - i - 1;

        if (value[i] != '.' || plen > LIST_VALUE_MAX)
            continue;
        list_lower(value + i + 1, plen, buf);
        plen = list_trim_dot(buf, plen);
        return list_match_as_parent(l, buf, plen) || list_match_parents(l, buf, plen);
    }
    return false;
}

bool list_match(const struct list *l, const char *value, size_t len)
{
    char buf[LIST_VALUE_MAX];
    struct ipaddr ip;
    const char *at;

    if (!l->data || len == 0)
        return false;
    if (!list_lower(value, len, buf))
        return list_match_long(l, value, len, buf);
    /* A mail address (most values) is never an IP address: look for the
     * '@' first and parse an address only without one. */
    at = list_memrchr(buf, '@', len);
    if (!at && ipaddr_parse(value, len, &ip) == 0) {
        /* An address has no parent domains: "10.1.2.3" must not match
         * a string entry "3" of a subdomains=true list. */
        return cidr_set_contains(l->data->nets, &ip) ||
               list_strset_has(&l->data->names, buf, len);
    }
    len = list_trim_dot(buf, len);
    if (at) {
        size_t dlen = len > (size_t)(at - buf) ? len - (size_t)(at - buf) - 1 : 0;

        return list_strset_has(&l->data->addrs, buf, len) ||
               list_match_domain(l, at + 1, dlen);
    }
    return list_match_domain(l, buf, len);
}

bool list_match_addr(const struct list *l, const char *value, size_t len,
                     const struct ipaddr *ip)
{
    char buf[LIST_VALUE_MAX];

    if (!ip)
        return list_match(l, value, len);
    if (!l->data || len == 0)
        return false;
    if (cidr_set_contains(l->data->nets, ip))
        return true;
    /* A list of networks only (the usual client list) has no names to
     * fold the address for. */
    return l->data->names.used > 0 && list_lower(value, len, buf) &&
           list_strset_has(&l->data->names, buf, len);
}

void list_free(struct list *l)
{
    free(l->name);
    free(l->file);
    list_data_free(l->data);
    l->name = NULL;
    l->file = NULL;
    l->data = NULL;
}
