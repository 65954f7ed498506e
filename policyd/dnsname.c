/*
 * dnsname - see dnsname.h.
 *
 * Names are built into caller buffers and checked for length as they
 * grow, so nothing a client sends can overflow them. A check's steps are
 * a switch on (kind, stage): stage 0 is the first question; RDNS, MX and
 * RESOLVES may ask a second (and MX a third) before they know.
 */
#include "dnsname.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

const char *dns_status_name(enum dns_status s)
{
    switch (s) {
    case DNS_NOTASKED:
        return "notasked";
    case DNS_FOUND:
        return "found";
    case DNS_NOTFOUND:
        return "notfound";
    case DNS_TEMPFAIL:
        return "tempfail";
    }
    return "?";
}

const char *dnsq_kind_name(enum dnsq_kind k)
{
    switch (k) {
    case DNSQ_LIST_IP:
        return "list-ip";
    case DNSQ_LIST_NAME:
        return "list-name";
    case DNSQ_RDNS:
        return "rdns";
    case DNSQ_MX:
        return "mx";
    case DNSQ_RESOLVES:
        return "resolves";
    case DNSQ_COUNTRY_TXT:
        return "country-txt";
    case DNSQ_COUNTRY_A:
        return "country-a";
    }
    return "?";
}

int dns_rrset_add_name(struct dns_rrset *rr, const char *s, size_t len)
{
    size_t used = rr->n ? rr->off[rr->n - 1] + strlen(rr->text + rr->off[rr->n - 1]) + 1 : 0;
    if (rr->n >= DNS_RR_MAX || used + len + 1 > sizeof rr->text)
        return -ENOSPC;
    memcpy(rr->text + used, s, len);
    rr->text[used + len] = '\0';
    rr->off[rr->n++] = (uint16_t)used;
    return 0;
}

const char *dns_rrset_name(const struct dns_rrset *rr, unsigned i)
{
    return i < rr->n ? rr->text + rr->off[i] : NULL;
}

int dnsname_reverse(const struct ipaddr *ip, const char *zone, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    char buf[128];
    int n = 0;
    if (ip->family == AF_INET) {
        n = snprintf(buf, sizeof buf, "%u.%u.%u.%u", ip->bytes[3], ip->bytes[2], ip->bytes[1],
                     ip->bytes[0]);
        if (!*zone)
            zone = "in-addr.arpa";
    } else {
        for (int i = 15; i >= 0; i--) {
            buf[n++] = hex[ip->bytes[i] & 15];
            buf[n++] = '.';
            buf[n++] = hex[ip->bytes[i] >> 4];
            buf[n++] = '.';
        }
        n--; /* no dot after the last nibble */
        buf[n] = '\0';
        if (!*zone)
            zone = "ip6.arpa";
    }
    return dnsname_join(buf, (size_t)n, zone, out, cap);
}

int dnsname_normalize(const char *in, size_t len, char *out, size_t cap)
{
    if (len && in[len - 1] == '.')
        len--;
    if (len == 0 || len > DNSNAME_MAX || len + 1 > cap)
        return -EINVAL;
    size_t label = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch == '.') {
            if (label == 0) /* empty label: "a..b" or ".a" */
                return -EINVAL;
            label = 0;
            out[i] = '.';
            continue;
        }
        if (ch >= 'A' && ch <= 'Z')
            ch = (unsigned char)(ch - 'A' + 'a');
        /* Letters, digits, hyphen; '_' is common in real names (SRV,
         * DKIM, some HELOs). Anything else, raw UTF-8 included, is not a
         * name we can ask about. */
        if (!((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '_'))
            return -EINVAL;
        if (++label > 63)
            return -EINVAL;
        out[i] = (char)ch;
    }
    if (label == 0)
        return -EINVAL;
    out[len] = '\0';
    return (int)len;
}

int dnsname_join(const char *name, size_t len, const char *zone, char *out, size_t cap)
{
    size_t zlen = strlen(zone);
    size_t total = len + (zlen ? 1 + zlen : 0);
    if (total > DNSNAME_MAX || total + 1 > cap)
        return -ENAMETOOLONG;
    memmove(out, name, len);
    if (zlen) {
        out[len] = '.';
        memcpy(out + len + 1, zone, zlen);
    }
    out[total] = '\0';
    return (int)total;
}

/* An IPv4 address in host order, or -EINVAL. */
static int dnscode_addr(const char *s, size_t len, uint32_t *out)
{
    struct ipaddr ip;
    if (ipaddr_parse(s, len, &ip) < 0 || ip.family != AF_INET)
        return -EINVAL;
    *out = (uint32_t)ip.bytes[0] << 24 | (uint32_t)ip.bytes[1] << 16 |
           (uint32_t)ip.bytes[2] << 8 | ip.bytes[3];
    return 0;
}

int dnscode_parse(const char *s, struct dnscode *out, const char **why)
{
    memset(out, 0, sizeof *out);
    size_t len = strlen(s);
    if (s[0] == '&') {
        char *end;
        unsigned long m = strtoul(s + 1, &end, 0);
        if (s[1] == '\0' || *end || m == 0 || m > 0xffffffffUL) {
            *why = "a bit mask is &N with N from 1 to 0xffffffff, e.g. &4 or &0x08";
            return -EINVAL;
        }
        out->mask = (uint32_t)m;
        return 0;
    }
    const char *dash = memchr(s, '-', len);
    const char *slash = memchr(s, '/', len);
    if (dash) {
        if (dnscode_addr(s, (size_t)(dash - s), &out->lo) < 0 ||
            dnscode_addr(dash + 1, len - (size_t)(dash - s) - 1, &out->hi) < 0) {
            *why = "a range is FIRST-LAST with two IPv4 addresses, e.g. 127.0.0.2-127.0.0.11";
            return -EINVAL;
        }
        if (out->lo > out->hi) {
            *why = "the first address of a range must not be above the last";
            return -EINVAL;
        }
        return 0;
    }
    if (slash) {
        struct cidr net;
        if (cidr_parse(s, len, &net, NULL) < 0 || net.addr.family != AF_INET) {
            *why = "expected an IPv4 network such as 127.0.0.0/24";
            return -EINVAL;
        }
        uint32_t a = (uint32_t)net.addr.bytes[0] << 24 | (uint32_t)net.addr.bytes[1] << 16 |
                     (uint32_t)net.addr.bytes[2] << 8 | net.addr.bytes[3];
        uint32_t host = net.bits == 0 ? 0xffffffffu : (net.bits == 32 ? 0 : 0xffffffffu >> net.bits);
        out->lo = a;
        out->hi = a | host;
        return 0;
    }
    if (dnscode_addr(s, len, &out->lo) < 0) {
        *why = "expected an IPv4 address (127.0.0.2), a range (127.0.0.2-127.0.0.11), a network (127.0.0.0/24) or a bit mask (&4)";
        return -EINVAL;
    }
    out->hi = out->lo;
    return 0;
}

bool dnscode_match(const struct dnscode *codes, size_t n, uint32_t addr)
{
    if (n == 0)
        return (addr >> 24) == 127 && (addr >> 8) != 0x7fffffu;
    /* A bit mask tests the bits of a listing, which is a 127.x answer
     * other than 127.255.255.x (a list's "refused"); a range or address
     * says itself which answers it means. */
    bool listing = (addr >> 24) == 127 && (addr >> 8) != 0x7fffffu;
    for (size_t i = 0; i < n; i++) {
        if (codes[i].mask ? listing && (addr & codes[i].mask) != 0
                          : addr >= codes[i].lo && addr <= codes[i].hi)
            return true;
    }
    return false;
}

/* ---- raw messages ---- */

static uint32_t dnsname_get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Skip a (possibly compressed) name; returns the offset after it or -1. */
static long dnsname_skip(const unsigned char *msg, size_t len, size_t off)
{
    for (int labels = 0; labels < 128; labels++) {
        if (off >= len)
            return -1;
        unsigned char c = msg[off];
        if (c == 0)
            return (long)off + 1;
        if ((c & 0xc0) == 0xc0)
            return off + 2 <= len ? (long)off + 2 : -1;
        if (c & 0xc0)
            return -1;
        off += 1u + c;
    }
    return -1;
}

int dnsname_msg_ttl(const unsigned char *msg, size_t len, uint32_t *ttl)
{
    if (!msg || len < 12)
        return -EINVAL;
    unsigned qd = (unsigned)msg[4] << 8 | msg[5];
    unsigned an = (unsigned)msg[6] << 8 | msg[7];
    unsigned ns = (unsigned)msg[8] << 8 | msg[9];
    long off = 12;
    for (unsigned i = 0; i < qd; i++) {
        off = dnsname_skip(msg, len, (size_t)off);
        if (off < 0 || (size_t)off + 4 > len)
            return -EINVAL;
        off += 4;
    }
    bool have = false;
    uint32_t best = 0;
    for (unsigned i = 0; i < an + ns; i++) {
        off = dnsname_skip(msg, len, (size_t)off);
        if (off < 0 || (size_t)off + 10 > len)
            return -EINVAL;
        const unsigned char *rr = msg + off;
        unsigned type = (unsigned)rr[0] << 8 | rr[1];
        uint32_t t = dnsname_get32(rr + 4);
        unsigned rdlen = (unsigned)rr[8] << 8 | rr[9];
        if ((size_t)off + 10 + rdlen > len)
            return -EINVAL;
        if (i < an) {
            /* Answers: the smallest TTL rules (a CNAME may expire first). */
            if (!have || t < best)
                best = t;
            have = true;
        } else if (!have && type == 6 /* SOA */) {
            /* RFC 2308: a negative answer lives min(SOA TTL, MINIMUM). */
            long p = dnsname_skip(msg, len, (size_t)off + 10);         /* MNAME */
            p = p < 0 ? -1 : dnsname_skip(msg, len, (size_t)p);        /* RNAME */
            if (p < 0 || (size_t)p + 20 > (size_t)off + 10 + rdlen)
                return -EINVAL;
            uint32_t minimum = dnsname_get32(msg + p + 16);
            best = t < minimum ? t : minimum;
            have = true;
            break;
        }
        off += 10 + rdlen;
    }
    if (!have)
        return -ENOENT;
    /* RFC 2181: a TTL with the top bit set is 0. */
    *ttl = best > 0x7fffffffu ? 0 : best;
    return 0;
}

/* ---- checks ---- */

static uint32_t dnsname_v4(const struct ipaddr *ip)
{
    return (uint32_t)ip->bytes[0] << 24 | (uint32_t)ip->bytes[1] << 16 |
           (uint32_t)ip->bytes[2] << 8 | ip->bytes[3];
}

static int dnsq_ask(struct dnsq_query *q, uint16_t type, const char *name)
{
    q->type = type;
    snprintf(q->name, sizeof q->name, "%s", name);
    return 1;
}

static int dnsq_done(struct dnsq_answer *ans, enum dns_status status)
{
    ans->status = status;
    return 0;
}

int dnsq_first(enum dnsq_kind kind, const char *zone, const char *subject, size_t len,
               struct dnsq_step *st, struct dnsq_query *q, struct dnsq_answer *ans)
{
    memset(ans, 0, sizeof *ans);
    ans->mx = DNS_MX_NONE;
    st->stage = 0;
    st->name[0] = '\0';
    if (!subject || len == 0)
        return dnsq_done(ans, DNS_NOTASKED);
    char name[DNSNAME_MAX + 1];
    int n;
    switch (kind) {
    case DNSQ_LIST_IP:
    case DNSQ_RDNS:
    case DNSQ_COUNTRY_TXT:
    case DNSQ_COUNTRY_A:
        /* Postfix sends "unknown" when it has no address: nothing to ask. */
        if (ipaddr_parse(subject, len, &st->client) < 0)
            return dnsq_done(ans, DNS_NOTASKED);
        if (dnsname_reverse(&st->client, kind == DNSQ_RDNS ? "" : zone, q->name, sizeof q->name) < 0)
            return dnsq_done(ans, DNS_NOTASKED);
        q->type = kind == DNSQ_RDNS ? DNS_T_PTR : kind == DNSQ_COUNTRY_TXT ? DNS_T_TXT : DNS_T_A;
        return 1;
    case DNSQ_LIST_NAME:
        /* Postfix's placeholder for a client without a name
         * (client_name, reverse_client_name): nothing to ask. */
        if (len == 7 && strncasecmp(subject, "unknown", 7) == 0)
            return dnsq_done(ans, DNS_NOTASKED);
        n = dnsname_normalize(subject, len, name, sizeof name);
        if (n < 0 || dnsname_join(name, (size_t)n, zone, q->name, sizeof q->name) < 0)
            return dnsq_done(ans, DNS_NOTASKED);
        q->type = DNS_T_A;
        return 1;
    case DNSQ_MX:
        n = dnsname_normalize(subject, len, name, sizeof name);
        if (n < 0)
            return dnsq_done(ans, DNS_NOTASKED);
        snprintf(st->name, sizeof st->name, "%s", name);
        return dnsq_ask(q, DNS_T_MX, name);
    case DNSQ_RESOLVES:
        /* A HELO that is not a valid host name ("[192.0.2.1]", "my pc")
         * does not resolve: that is an answer, not a failure. */
        n = dnsname_normalize(subject, len, name, sizeof name);
        if (n < 0 || !strchr(name, '.')) {
            dnsq_done(ans, DNS_NOTFOUND);
            return 0;
        }
        snprintf(st->name, sizeof st->name, "%s", name);
        return dnsq_ask(q, DNS_T_A, name);
    }
    return dnsq_done(ans, DNS_NOTASKED);
}

/* The forward answer of RDNS: does an address equal the client? */
static bool dnsq_same_client(const struct dnsq_step *st, const struct dns_rrset *rr)
{
    for (unsigned i = 0; i < rr->n; i++)
        if (rr->addr[i].family == st->client.family &&
            memcmp(rr->addr[i].bytes, st->client.bytes, sizeof st->client.bytes) == 0)
            return true;
    return false;
}

int dnsq_next(enum dnsq_kind kind, const struct dnscode *codes, size_t n_codes,
              struct dnsq_step *st, const struct dns_rrset *rr, struct dnsq_query *q,
              struct dnsq_answer *ans)
{
    if (rr->status == DNS_TEMPFAIL)
        return dnsq_done(ans, DNS_TEMPFAIL);
    bool found = rr->status == DNS_FOUND && rr->n > 0;
    switch (kind) {
    case DNSQ_LIST_IP:
    case DNSQ_LIST_NAME:
        for (unsigned i = 0; found && i < rr->n; i++) {
            if (rr->addr[i].family != AF_INET)
                continue;
            uint32_t a = dnsname_v4(&rr->addr[i]);
            if (dnscode_match(codes, n_codes, a)) {
                ans->code = a;
                return dnsq_done(ans, DNS_FOUND);
            }
        }
        return dnsq_done(ans, DNS_NOTFOUND);
    case DNSQ_COUNTRY_TXT:
        if (!found)
            return dnsq_done(ans, DNS_NOTFOUND);
        {
            const char *t = dns_rrset_name(rr, 0);
            size_t k = 0;
            for (; t[k] && k < 3 && k + 1 < sizeof ans->text; k++)
                ans->text[k] = (t[k] >= 'a' && t[k] <= 'z') ? (char)(t[k] - 'a' + 'A') : t[k];
            ans->text[k] = '\0';
        }
        return dnsq_done(ans, ans->text[0] ? DNS_FOUND : DNS_NOTFOUND);
    case DNSQ_COUNTRY_A:
        if (!found || rr->addr[0].family != AF_INET)
            return dnsq_done(ans, DNS_NOTFOUND);
        /* Three digits, as ISO 3166 writes them (036 is Australia). */
        snprintf(ans->text, sizeof ans->text, "%03u",
                 (unsigned)rr->addr[0].bytes[2] << 8 | rr->addr[0].bytes[3]);
        return dnsq_done(ans, DNS_FOUND);
    case DNSQ_RDNS:
        if (st->stage == 0) {
            if (!found) {
                ans->has_ptr = false;
                return dnsq_done(ans, DNS_FOUND);
            }
            ans->has_ptr = true;
            /* XXX: only the first PTR name is confirmed; clients with
             * several PTR records are rare and Postfix's first pick is
             * as arbitrary. */
            char name[DNSNAME_MAX + 1];
            const char *p = dns_rrset_name(rr, 0);
            if (dnsname_normalize(p, strlen(p), name, sizeof name) < 0)
                return dnsq_done(ans, DNS_FOUND); /* a PTR that names nothing valid */
            st->stage = 1;
            snprintf(st->name, sizeof st->name, "%s", name);
            return dnsq_ask(q, st->client.family == AF_INET ? DNS_T_A : DNS_T_AAAA, name);
        }
        ans->fcrdns = found && dnsq_same_client(st, rr);
        return dnsq_done(ans, DNS_FOUND);
    case DNSQ_MX:
        if (st->stage == 0) {
            if (found) {
                ans->mx = rr->null_mx ? DNS_MX_NULL : DNS_MX_OK;
                return dnsq_done(ans, DNS_FOUND);
            }
            if (rr->nxdomain) {
                ans->mx = DNS_MX_NONE;
                return dnsq_done(ans, DNS_FOUND);
            }
            /* No MX: mail goes to the domain's address (RFC 5321 5.1). */
            st->stage = 1;
            return dnsq_ask(q, DNS_T_A, st->name);
        }
        if (found) {
            ans->mx = DNS_MX_OK;
            return dnsq_done(ans, DNS_FOUND);
        }
        if (st->stage == 1) {
            st->stage = 2;
            return dnsq_ask(q, DNS_T_AAAA, st->name);
        }
        ans->mx = DNS_MX_NONE;
        return dnsq_done(ans, DNS_FOUND);
    case DNSQ_RESOLVES:
        if (found)
            return dnsq_done(ans, DNS_FOUND);
        if (st->stage == 0 && !rr->nxdomain) {
            st->stage = 1;
            return dnsq_ask(q, DNS_T_AAAA, st->name);
        }
        return dnsq_done(ans, DNS_NOTFOUND);
    }
    return dnsq_done(ans, DNS_NOTFOUND);
}
