/*
 * dnsname - the pure side of DNS checks: query names, return codes,
 * TTLs read from a raw answer, and the steps of each kind of check.
 *
 *   dnsname_reverse()     192.0.2.7 + zone -> "7.2.0.192.zone"; IPv6 by
 *                         reversed nibbles (32 labels)
 *   dnsname_normalize()   a host or domain name as the client sent it ->
 *                         lower case, one trailing dot dropped, letters,
 *                         digits, '-' and '_' only (raw UTF-8 "IDNA-looking"
 *                         input is refused, A-labels "xn--" are fine)
 *   dnscode_parse/match   "127.0.0.2", "127.0.0.2-127.0.0.11",
 *                         "127.0.0.0/24", "&4" (bit mask, multi-lists)
 *   dnsname_msg_ttl()     smallest TTL of the answer records, or for a
 *                         negative answer min(SOA TTL, SOA minimum), from
 *                         the raw message (c-ares 1.18's parsers drop TTLs
 *                         of MX, TXT and PTR)
 *   dnsq_first/dnsq_next  one check as a small state machine: which
 *                         question to ask first, and given an answer,
 *                         which to ask next or what the check says
 *
 * Pure: no I/O, no allocation. The caller owns every struct here; a
 * struct dns_rrset passed in is only read during the call.
 * Errors are negative errno values (-EINVAL bad input, -ENAMETOOLONG).
 */
#ifndef SMTPGUARD_DNSNAME_H
#define SMTPGUARD_DNSNAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cidr.h"

#define DNSNAME_MAX 253             /* characters of a name, no final dot */
#define DNS_RR_MAX 8                /* records of one answer kept */
#define DNS_TEXT_MAX 256            /* bytes of names/strings of one answer */

/* Query types, as on the wire. */
#define DNS_T_A 1
#define DNS_T_PTR 12
#define DNS_T_MX 15
#define DNS_T_TXT 16
#define DNS_T_AAAA 28

/* What a question or a check came to. Like Postfix's dict results: a
 * failure is TEMPFAIL, never read as "not listed" by accident. */
enum dns_status {
    DNS_NOTASKED = 0,           /* nothing to ask (attribute absent) */
    DNS_FOUND,                  /* records that answer the question */
    DNS_NOTFOUND,               /* NXDOMAIN or no records of the type */
    DNS_TEMPFAIL                /* timeout, SERVFAIL, refused, cap */
};

const char *dns_status_name(enum dns_status s);

/* The records of one answer, as the cache keeps them. */
struct dns_rrset {
    enum dns_status status;
    bool nxdomain;              /* NOTFOUND because the name does not exist */
    bool null_mx;               /* MX: a single "0 ." record (RFC 7505) */
    uint8_t n;                  /* records kept, at most DNS_RR_MAX */
    struct ipaddr addr[DNS_RR_MAX]; /* A/AAAA records */
    uint16_t off[DNS_RR_MAX];   /* MX/PTR/TXT: offset of record i in text */
    char text[DNS_TEXT_MAX];    /* NUL-terminated strings, back to back */
};

/* dns_rrset_add_name - append a name/string record (MX target, PTR
 * name, TXT string); returns 0, or -ENOSPC when full (the rest is
 * dropped: a check needs the first few only). */
int dns_rrset_add_name(struct dns_rrset *rr, const char *s, size_t len);
const char *dns_rrset_name(const struct dns_rrset *rr, unsigned i);

/* dnsname_reverse - the reversed address under zone (zone "" gives
 * in-addr.arpa / ip6.arpa). Returns the length or -ENAMETOOLONG. */
int dnsname_reverse(const struct ipaddr *ip, const char *zone, char *out, size_t cap);

/* dnsname_normalize - see above. Returns the length (> 0) or -EINVAL. */
int dnsname_normalize(const char *in, size_t len, char *out, size_t cap);

/* dnsname_join - "name.zone" (name already normalized). Returns the
 * length or -ENAMETOOLONG. */
int dnsname_join(const char *name, size_t len, const char *zone, char *out, size_t cap);

/* One accepted return code: a range, or a bit mask when mask != 0. */
struct dnscode {
    uint32_t lo, hi;            /* host order, inclusive */
    uint32_t mask;              /* != 0: matches when (addr & mask) != 0 */
};

/* dnscode_parse - one code; *why says what is wrong on -EINVAL. */
int dnscode_parse(const char *s, struct dnscode *out, const char **why);

/* dnscode_match - n == 0 takes the default: any 127.0.0.0/8 answer
 * except 127.255.255.0/24 (the "you may not query" codes of big lists). */
bool dnscode_match(const struct dnscode *codes, size_t n, uint32_t addr);

/* dnsname_msg_ttl - see above. Returns 0, -ENOENT (no TTL in it) or
 * -EINVAL (malformed). */
int dnsname_msg_ttl(const unsigned char *msg, size_t len, uint32_t *ttl);

/* ---- checks ---- */

enum dnsq_kind {
    DNSQ_LIST_IP,               /* DNSBL/DNSWL: A of reversed client IP in zone */
    DNSQ_LIST_NAME,             /* RHSBL/domain DNSWL: A of name.zone */
    DNSQ_RDNS,                  /* PTR of the client, then A/AAAA of that name */
    DNSQ_MX,                    /* MX of the domain, A/AAAA when it has none */
    DNSQ_RESOLVES,              /* A, then AAAA, of a host name */
    DNSQ_COUNTRY_TXT,           /* TXT of reversed client IP: "US" */
    DNSQ_COUNTRY_A              /* A of reversed client IP: 127.0.x.y, ISO 3166 numeric x*256+y */
};

const char *dnsq_kind_name(enum dnsq_kind k);

enum dns_mx {
    DNS_MX_OK,                  /* MX, or no MX but an address (RFC 5321 5.1) */
    DNS_MX_NONE,                /* no such domain, or neither MX nor address */
    DNS_MX_NULL                 /* null MX: the domain accepts no mail */
};

/* What one check found, for the rules to read. */
struct dnsq_answer {
    enum dns_status status;     /* lists: FOUND = listed (a code matched) */
    uint32_t code;              /* lists: the first matching return code */
    bool has_ptr;               /* RDNS */
    bool fcrdns;                /* RDNS: the PTR name resolves back to the client */
    enum dns_mx mx;             /* MX */
    char text[8];               /* COUNTRY: "US", or "840" for A zones */
};

/* A check's progress; lives with the request while it is asked. */
struct dnsq_step {
    int stage;                  /* which question is out */
    struct ipaddr client;       /* RDNS: to compare the forward answer with */
    char name[DNSNAME_MAX + 1]; /* the name of the next stage */
};

struct dnsq_query {
    uint16_t type;              /* DNS_T_* */
    char name[DNSNAME_MAX + 1];
};

/* dnsq_first - start a check on subject (the attribute's value). Returns
 * 1 with *q to ask, or 0 with *ans final (subject absent, not an IP, not
 * a valid name). codes/n_codes filter list answers. */
int dnsq_first(enum dnsq_kind kind, const char *zone, const char *subject, size_t len,
               struct dnsq_step *st, struct dnsq_query *q, struct dnsq_answer *ans);

/* dnsq_next - the answer to the question out. Returns 1 with *q to ask
 * next, or 0 with *ans final. */
int dnsq_next(enum dnsq_kind kind, const struct dnscode *codes, size_t n_codes,
              struct dnsq_step *st, const struct dns_rrset *rr, struct dnsq_query *q,
              struct dnsq_answer *ans);

#endif
