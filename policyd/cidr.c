/*
 * cidr - addresses, networks and sets of networks. See cidr.h.
 *
 * Parsing leans on inet_pton(), which is strict (no leading zeros in
 * IPv4 octets, no zone ids, no short forms like "10.1"), after peeling
 * off the decorations Postfix and SMTP put around addresses: "[...]"
 * (address literals) and "IPv6:" (XCLIENT ADDR, address literals).
 * An IPv4-mapped IPv6 address (::ffff:a.b.c.d) becomes IPv4, because
 * that is how a dual-stack listener reports an IPv4 client and operators
 * write their lists in IPv4.
 *
 * A set keeps IPv4 networks as [lo, hi] uint32 ranges and IPv6 networks
 * as [lo, hi] ranges of 128-bit numbers held as two uint64 halves (no
 * __int128: it is not C11 and not on every target). cidr_set_finish()
 * sorts each array by lo and merges overlapping and adjacent ranges, so
 * the ranges are disjoint and a lookup is one binary search for the last
 * range starting at or below the address.
 */
#include "cidr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "xalloc.h"

/* Longest text inet_pton() may have to see: INET6_ADDRSTRLEN counts the
 * NUL and covers "ffff:...:255.255.255.255". */
#define CIDR_ADDR_MAX INET6_ADDRSTRLEN

static const uint8_t cidr_v4mapped_prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/*
 * cidr_parse_raw - parse one address without mapping ::ffff:a.b.c.d, so
 * that cidr_parse() can still tell a mapped prefix shorter than /96
 * (which is an IPv6 network) from a mapped address.
 */
/* cidr_parse_dotted_quad - "a.b.c.d" as inet_pton(AF_INET) reads it:
 * four decimal octets of at most 255, no leading zeros, nothing else.
 * Every request's client_address goes through here, and the copy to a
 * NUL-terminated buffer plus inet_pton cost five times as much; anything
 * this refuses still goes to inet_pton, so it only has to be right for
 * what it accepts. */
static bool cidr_parse_dotted_quad(const char *s, size_t len, uint8_t out[4])
{
    size_t i = 0;

    for (int part = 0; part < 4; part++) {
        unsigned v = 0, digits = 0;
        if (part > 0) {
            if (i >= len || s[i] != '.')
                return false;
            i++;
        }
        while (i < len && s[i] >= '0' && s[i] <= '9' && digits < 4) {
            v = v * 10 + (unsigned)(s[i] - '0');
            digits++;
            i++;
        }
        if (digits == 0 || digits > 3 || v > 255 || (digits > 1 && s[i - digits] == '0'))
            return false;
        out[part] = (uint8_t)v;
    }
    return i == len;
}

static int cidr_parse_raw(const char *s, size_t len, struct ipaddr *out)
{
    char buf[CIDR_ADDR_MAX];
    bool want_v6 = false;
    uint8_t quad[4];

    if (len >= 7 && len <= 15 && cidr_parse_dotted_quad(s, len, quad)) {
        memset(out, 0, sizeof(*out));
        memcpy(out->bytes, quad, 4);
        out->family = AF_INET;
        return 0;
    }

    if (len >= 2 && s[0] == '[' && s[len - 1] == ']') {
        s++;
        len -= 2;
    }
    if (len >= 5 && strncasecmp(s, "ipv6:", 5) == 0) {
        s += 5;
        len -= 5;
        want_v6 = true;
    }
    if (len == 0 || len >= sizeof(buf))
        return -EINVAL;
    /* inet_pton() needs a NUL-terminated string; an embedded NUL would
     * silently cut the text short, so refuse it. */
    if (memchr(s, '\0', len) != NULL)
        return -EINVAL;
    memcpy(buf, s, len);
    buf[len] = '\0';

    memset(out, 0, sizeof(*out));
    if (!want_v6 && inet_pton(AF_INET, buf, out->bytes) == 1) {
        out->family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, buf, out->bytes) == 1) {
        out->family = AF_INET6;
        return 0;
    }
    return -EINVAL;
}

static bool cidr_is_v4mapped(const struct ipaddr *ip)
{
    return ip->family == AF_INET6 &&
           memcmp(ip->bytes, cidr_v4mapped_prefix, sizeof(cidr_v4mapped_prefix)) == 0;
}

/* cidr_unmap - turn ::ffff:a.b.c.d into a.b.c.d in place. */
static void cidr_unmap(struct ipaddr *ip)
{
    uint8_t v4[4];

    memcpy(v4, ip->bytes + 12, 4);
    memset(ip->bytes, 0, sizeof(ip->bytes));
    memcpy(ip->bytes, v4, 4);
    ip->family = AF_INET;
}

int ipaddr_parse(const char *s, size_t len, struct ipaddr *out)
{
    int rc = cidr_parse_raw(s, len, out);

    if (rc < 0)
        return rc;
    if (cidr_is_v4mapped(out))
        cidr_unmap(out);
    return 0;
}

static unsigned cidr_family_bits(int family)
{
    return family == AF_INET ? 32 : 128;
}

/* cidr_clear_host_bits - zero everything below the prefix; returns
 * whether any of those bits was set. */
static bool cidr_clear_host_bits(struct ipaddr *ip, unsigned bits)
{
    unsigned nbytes = cidr_family_bits(ip->family) / 8;
    bool was_set = false;

    for (unsigned i = 0; i < nbytes; i++) {
        uint8_t keep;

        if (bits >= (i + 1) * 8)
            keep = 0xff;
        else if (bits <= i * 8)
            keep = 0;
        else
            keep = (uint8_t)(0xff << (8 - (bits - i * 8)));
        if (ip->bytes[i] & (uint8_t)~keep)
            was_set = true;
        ip->bytes[i] &= keep;
    }
    return was_set;
}

int cidr_parse(const char *s, size_t len, struct cidr *out, bool *host_bits_set)
{
    const char *slash = memchr(s, '/', len);
    size_t addr_len = slash ? (size_t)(slash - s) : len;
    struct ipaddr ip;
    unsigned bits;
    bool had_host_bits;

    if (cidr_parse_raw(s, addr_len, &ip) < 0)
        return -EINVAL;
    if (slash) {
        const char *p = slash + 1;
        size_t n = len - addr_len - 1;

        /* Plain decimal only: no sign, no space, at most 3 digits (so
         * no overflow); "10.0.0.0/" is an error, not /0. */
        if (n == 0 || n > 3)
            return -EINVAL;
        bits = 0;
        for (size_t i = 0; i < n; i++) {
            if (p[i] < '0' || p[i] > '9')
                return -EINVAL;
            bits = bits * 10 + (unsigned)(p[i] - '0');
        }
        if (bits > cidr_family_bits(ip.family))
            return -EINVAL;
    } else {
        bits = cidr_family_bits(ip.family);
    }

    /* A mapped address with a prefix of /96 or longer is an IPv4 network
     * in disguise; a shorter one reaches beyond ::ffff:0:0/96 and stays
     * an IPv6 network. */
    if (cidr_is_v4mapped(&ip) && bits >= 96) {
        cidr_unmap(&ip);
        bits -= 96;
    }
    had_host_bits = cidr_clear_host_bits(&ip, bits);
    if (host_bits_set)
        *host_bits_set = had_host_bits;
    out->addr = ip;
    out->bits = bits;
    return 0;
}

bool cidr_contains(const struct cidr *net, const struct ipaddr *ip)
{
    unsigned full, rest;

    if (net->addr.family != ip->family)
        return false;
    full = net->bits / 8;
    rest = net->bits % 8;
    if (memcmp(net->addr.bytes, ip->bytes, full) != 0)
        return false;
    if (rest) {
        uint8_t mask = (uint8_t)(0xff << (8 - rest));
        if ((ip->bytes[full] & mask) != net->addr.bytes[full])
            return false;
    }
    return true;
}

size_t ipaddr_format_prefix(const struct ipaddr *ip, unsigned v4_bits, unsigned v6_bits,
                            char *out, size_t cap)
{
    struct ipaddr net;
    unsigned bits = ip->family == AF_INET ? v4_bits : v6_bits;
    char text[INET6_ADDRSTRLEN];
    int n;

    if (ip->family != AF_INET && ip->family != AF_INET6)
        return 0;
    /* Too long a prefix means "the whole address", not an error: it can
     * only come from a config value the loader already range-checked. */
    if (bits > cidr_family_bits(ip->family))
        bits = cidr_family_bits(ip->family);
    if (ip->family == AF_INET) {
        /* By hand: counter keys are built from this for every request,
         * and inet_ntop + snprintf cost ten times as much. The host bits
         * go with one 32-bit mask. */
        uint32_t a = (uint32_t)ip->bytes[0] << 24 | (uint32_t)ip->bytes[1] << 16 |
                     (uint32_t)ip->bytes[2] << 8 | ip->bytes[3];
        if (bits < 32)
            a &= bits ? ~UINT32_C(0) << (32 - bits) : 0;
        char *o = text;
        for (int i = 0; i < 4; i++) {
            unsigned b = (a >> (24 - 8 * i)) & 0xff;
            if (b >= 100)
                *o++ = (char)('0' + b / 100);
            if (b >= 10)
                *o++ = (char)('0' + b / 10 % 10);
            *o++ = (char)('0' + b % 10);
            *o++ = i < 3 ? '.' : '/';
        }
        if (bits >= 10)
            *o++ = (char)('0' + bits / 10);
        *o++ = (char)('0' + bits % 10);
        size_t tlen = (size_t)(o - text);
        if (tlen >= cap) {
            if (cap > 0)
                out[0] = '\0';
            return 0;
        }
        memcpy(out, text, tlen);
        out[tlen] = '\0';
        return tlen;
    }
    net = *ip;
    cidr_clear_host_bits(&net, bits);
    if (bits <= 64) {
        /* By hand too (a /64 per IPv6 client): inet_ntop's text, which
         * is RFC 5952's, so keys stay the same. The longest run of two or
         * more zero groups (the first of equals) becomes "::"; groups are
         * lower-case hex without leading zeros. With the low 64 bits
         * clear, inet_ntop's dotted IPv4 tail (::a.b.c.d, ::ffff:a.b.c.d)
         * cannot occur. */
        static const char hex[] = "0123456789abcdef";
        unsigned w[8];
        int best = -1, best_len = 0;
        for (int i = 0; i < 8; i++)
            w[i] = (unsigned)net.bytes[2 * i] << 8 | net.bytes[2 * i + 1];
        for (int i = 0; i < 8;) {
            int j = i;
            while (j < 8 && w[j] == 0)
                j++;
            if (j - i > best_len && j - i >= 2) {
                best = i;
                best_len = j - i;
            }
            i = j > i ? j : i + 1;
        }
        char *o = text;
        for (int i = 0; i < 8; i++) {
            if (i == best) {
                *o++ = ':';
                *o++ = ':';
                i += best_len - 1;
                continue;
            }
            if (i > 0 && i != best + best_len)
                *o++ = ':';
            bool lead = true;
            for (int shift = 12; shift >= 0; shift -= 4) {
                unsigned nib = w[i] >> shift & 15;
                if (lead && nib == 0 && shift > 0)
                    continue;
                lead = false;
                *o++ = hex[nib];
            }
        }
        *o = '\0';
    } else if (inet_ntop(ip->family, net.bytes, text, sizeof(text)) == NULL) {
        return 0;
    }
    size_t tlen = strlen(text);
    n = (int)tlen + 2 + (bits >= 10) + (bits >= 100);
    if ((size_t)n >= cap) {
        if (cap > 0)
            out[0] = '\0';
        return 0;
    }
    memcpy(out, text, tlen);
    char *o = out + tlen;
    *o++ = '/';
    if (bits >= 100)
        *o++ = (char)('0' + bits / 100);
    if (bits >= 10)
        *o++ = (char)('0' + bits / 10 % 10);
    *o++ = (char)('0' + bits % 10);
    *o = '\0';
    return (size_t)n;
}

/* ------------------------------------------------------------------ */
/* Sets                                                               */

struct cidr_v4range {
    uint32_t lo;                /* first address, host order */
    uint32_t hi;                /* last address, host order, inclusive */
};

struct cidr_u128 {
    uint64_t hi;                /* upper 64 bits, host order */
    uint64_t lo;                /* lower 64 bits, host order */
};

struct cidr_v6range {
    struct cidr_u128 lo;        /* first address */
    struct cidr_u128 hi;        /* last address, inclusive */
};

struct cidr_set {
    struct cidr_v4range *v4;    /* sorted and disjoint once finished */
    size_t v4_len;              /* ranges in use */
    size_t v4_cap;              /* ranges allocated */
    struct cidr_v6range *v6;    /* sorted and disjoint once finished */
    size_t v6_len;              /* ranges in use */
    size_t v6_cap;              /* ranges allocated */
    bool finished;              /* sorted and merged since the last add */
};

static uint32_t cidr_v4_num(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | (uint32_t)b[3];
}

static struct cidr_u128 cidr_v6_num(const uint8_t *b)
{
    struct cidr_u128 n = {0, 0};

    for (int i = 0; i < 8; i++) {
        n.hi = n.hi << 8 | b[i];
        n.lo = n.lo << 8 | b[i + 8];
    }
    return n;
}

static int cidr_u128_cmp(struct cidr_u128 a, struct cidr_u128 b)
{
    if (a.hi != b.hi)
        return a.hi < b.hi ? -1 : 1;
    if (a.lo != b.lo)
        return a.lo < b.lo ? -1 : 1;
    return 0;
}

/* cidr_u128_hostmask - the low (128 - bits) bits set. */
static struct cidr_u128 cidr_u128_hostmask(unsigned bits)
{
    struct cidr_u128 m;

    if (bits >= 64) {
        m.hi = 0;
        m.lo = bits == 128 ? 0 : UINT64_MAX >> (bits - 64);
    } else {
        m.hi = bits == 0 ? UINT64_MAX : UINT64_MAX >> bits;
        m.lo = UINT64_MAX;
    }
    return m;
}

/* cidr_u128_adjacent - is b == a + 1 (no wrap)? */
static bool cidr_u128_adjacent(struct cidr_u128 a, struct cidr_u128 b)
{
    if (a.lo == UINT64_MAX)
        return a.hi != UINT64_MAX && b.hi == a.hi + 1 && b.lo == 0;
    return b.hi == a.hi && b.lo == a.lo + 1;
}

struct cidr_set *cidr_set_new(void)
{
    struct cidr_set *set = xcalloc(1, sizeof(*set));

    set->finished = true;
    return set;
}

void cidr_set_add(struct cidr_set *set, const struct cidr *net)
{
    if (net->addr.family == AF_INET) {
        uint32_t lo = cidr_v4_num(net->addr.bytes);
        /* Host mask; a shift by 32 would be undefined, so /32 is spelled out. */
        uint32_t mask = net->bits >= 32 ? 0 : (uint32_t)(UINT32_MAX >> net->bits);

        if (set->v4_len == set->v4_cap) {
            set->v4_cap = set->v4_cap ? set->v4_cap * 2 : 16;
            set->v4 = xreallocarray(set->v4, set->v4_cap, sizeof(*set->v4));
        }
        /* Clear host bits again: a struct cidr built by hand may have
         * them, and a range must start on its network address. */
        lo &= ~mask;
        set->v4[set->v4_len++] = (struct cidr_v4range){lo, lo | mask};
    } else if (net->addr.family == AF_INET6) {
        struct cidr_u128 lo = cidr_v6_num(net->addr.bytes);
        struct cidr_u128 mask = cidr_u128_hostmask(net->bits > 128 ? 128 : net->bits);
        struct cidr_v6range r;

        if (set->v6_len == set->v6_cap) {
            set->v6_cap = set->v6_cap ? set->v6_cap * 2 : 16;
            set->v6 = xreallocarray(set->v6, set->v6_cap, sizeof(*set->v6));
        }
        r.lo.hi = lo.hi & ~mask.hi;
        r.lo.lo = lo.lo & ~mask.lo;
        r.hi.hi = lo.hi | mask.hi;
        r.hi.lo = lo.lo | mask.lo;
        set->v6[set->v6_len++] = r;
    } else {
        return;
    }
    set->finished = false;
}

static int cidr_v4range_cmp(const void *a, const void *b)
{
    const struct cidr_v4range *x = a, *y = b;

    if (x->lo != y->lo)
        return x->lo < y->lo ? -1 : 1;
    /* Wider first, so merging keeps the widest range's end. */
    if (x->hi != y->hi)
        return x->hi > y->hi ? -1 : 1;
    return 0;
}

static int cidr_v6range_cmp(const void *a, const void *b)
{
    const struct cidr_v6range *x = a, *y = b;
    int c = cidr_u128_cmp(x->lo, y->lo);

    return c ? c : -cidr_u128_cmp(x->hi, y->hi);
}

void cidr_set_finish(struct cidr_set *set)
{
    size_t out;

    if (set->finished)
        return;

    if (set->v4_len > 1) {
        qsort(set->v4, set->v4_len, sizeof(*set->v4), cidr_v4range_cmp);
        out = 0;
        for (size_t i = 1; i < set->v4_len; i++) {
            struct cidr_v4range *cur = &set->v4[out];
            const struct cidr_v4range *next = &set->v4[i];

            /* Overlapping or adjacent (hi + 1 == lo, unless hi is the
             * last address, where hi + 1 would wrap to 0). */
            if (next->lo <= cur->hi || (cur->hi != UINT32_MAX && next->lo == cur->hi + 1)) {
                if (next->hi > cur->hi)
                    cur->hi = next->hi;
            } else {
                set->v4[++out] = *next;
            }
        }
        set->v4_len = out + 1;
    }

    if (set->v6_len > 1) {
        qsort(set->v6, set->v6_len, sizeof(*set->v6), cidr_v6range_cmp);
        out = 0;
        for (size_t i = 1; i < set->v6_len; i++) {
            struct cidr_v6range *cur = &set->v6[out];
            const struct cidr_v6range *next = &set->v6[i];

            if (cidr_u128_cmp(next->lo, cur->hi) <= 0 || cidr_u128_adjacent(cur->hi, next->lo)) {
                if (cidr_u128_cmp(next->hi, cur->hi) > 0)
                    cur->hi = next->hi;
            } else {
                set->v6[++out] = *next;
            }
        }
        set->v6_len = out + 1;
    }
    set->finished = true;
}

bool cidr_set_contains(const struct cidr_set *set, const struct ipaddr *ip)
{
    if (ip->family == AF_INET) {
        uint32_t x = cidr_v4_num(ip->bytes);

        if (!set->finished) {
            /* XXX: a lookup before cidr_set_finish() is a caller bug, but
             * a slow correct answer beats a wrong one or an abort. */
            for (size_t i = 0; i < set->v4_len; i++)
                if (set->v4[i].lo <= x && x <= set->v4[i].hi)
                    return true;
            return false;
        }
        /* Find the last range with lo <= x. */
        size_t lo = 0, hi = set->v4_len;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (set->v4[mid].lo <= x)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo > 0 && x <= set->v4[lo - 1].hi;
    }
    if (ip->family == AF_INET6) {
        struct cidr_u128 x = cidr_v6_num(ip->bytes);

        if (!set->finished) {
            for (size_t i = 0; i < set->v6_len; i++)
                if (cidr_u128_cmp(set->v6[i].lo, x) <= 0 && cidr_u128_cmp(x, set->v6[i].hi) <= 0)
                    return true;
            return false;
        }
        size_t lo = 0, hi = set->v6_len;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (cidr_u128_cmp(set->v6[mid].lo, x) <= 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        return lo > 0 && cidr_u128_cmp(x, set->v6[lo - 1].hi) <= 0;
    }
    return false;
}

size_t cidr_set_count(const struct cidr_set *set)
{
    return set->v4_len + set->v6_len;
}

void cidr_set_free(struct cidr_set *set)
{
    if (!set)
        return;
    free(set->v4);
    free(set->v6);
    free(set);
}
