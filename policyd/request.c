/*
 * request - see request.h.
 *
 * Attribute names are mapped to the enum by attr_lookup(), which runs for
 * every line of every request: it switches on the name's length, then on
 * one distinguishing byte, so a lookup costs at most one memcmp() (two for
 * the rare length/byte collisions). attr_lookup() also knows the derived
 * names, because the config compiles rules with it; protocol_parse() is
 * the one that refuses derived names from the wire.
 *
 * Derived attributes are computed on the first request_get() and cached
 * in val[]/len[] with a bit in derived_done; request_set() on a source
 * attribute clears the bits that depend on it, so "last wins" holds even
 * after a derived value was read.
 *
 * The arena is a list of chunks, each with a small header in front of the
 * memory ar->base points to. request_reset() walks back to the first chunk
 * and keeps every chunk, so a connection allocates only for its first
 * request (and for the rare request that needs more than ever before).
 */
#include "request.h"

#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ascii.h"
#include "cidr.h"
#include "xalloc.h"

static const char *const attr_names[ATTR_COUNT] = {
    [ATTR_REQUEST] = "request",
    [ATTR_PROTOCOL_STATE] = "protocol_state",
    [ATTR_PROTOCOL_NAME] = "protocol_name",
    [ATTR_HELO_NAME] = "helo_name",
    [ATTR_QUEUE_ID] = "queue_id",
    [ATTR_SENDER] = "sender",
    [ATTR_RECIPIENT] = "recipient",
    [ATTR_RECIPIENT_COUNT] = "recipient_count",
    [ATTR_CLIENT_ADDRESS] = "client_address",
    [ATTR_CLIENT_NAME] = "client_name",
    [ATTR_REVERSE_CLIENT_NAME] = "reverse_client_name",
    [ATTR_INSTANCE] = "instance",
    [ATTR_SASL_METHOD] = "sasl_method",
    [ATTR_SASL_USERNAME] = "sasl_username",
    [ATTR_SASL_SENDER] = "sasl_sender",
    [ATTR_SIZE] = "size",
    [ATTR_CCERT_SUBJECT] = "ccert_subject",
    [ATTR_CCERT_ISSUER] = "ccert_issuer",
    [ATTR_CCERT_FINGERPRINT] = "ccert_fingerprint",
    [ATTR_CCERT_PUBKEY_FINGERPRINT] = "ccert_pubkey_fingerprint",
    [ATTR_ENCRYPTION_PROTOCOL] = "encryption_protocol",
    [ATTR_ENCRYPTION_CIPHER] = "encryption_cipher",
    [ATTR_ENCRYPTION_KEYSIZE] = "encryption_keysize",
    [ATTR_ETRN_DOMAIN] = "etrn_domain",
    [ATTR_STRESS] = "stress",
    [ATTR_CLIENT_PORT] = "client_port",
    [ATTR_POLICY_CONTEXT] = "policy_context",
    [ATTR_SERVER_ADDRESS] = "server_address",
    [ATTR_SERVER_PORT] = "server_port",
    [ATTR_COMPATIBILITY_LEVEL] = "compatibility_level",
    [ATTR_MAIL_VERSION] = "mail_version",
    [ATTR_SENDER_DOMAIN] = "sender_domain",
    [ATTR_SENDER_LOCALPART] = "sender_localpart",
    [ATTR_RECIPIENT_DOMAIN] = "recipient_domain",
    [ATTR_RECIPIENT_LOCALPART] = "recipient_localpart",
    [ATTR_SASL_DOMAIN] = "sasl_domain",
};

/* derived_done is an unsigned bitmask indexed from ATTR_WIRE_COUNT. */
_Static_assert(ATTR_COUNT - ATTR_WIRE_COUNT <= 16, "derived_done has too few bits");

#define DERIVED_BIT(a) (1u << ((unsigned)(a) - (unsigned)ATTR_WIRE_COUNT))

const char *attr_name(enum attr a)
{
    if ((unsigned)a >= ATTR_COUNT)
        return "unknown";
    return attr_names[a];
}

/* attr_match - name equals attr_names[a]; the caller checked the length. */
static int attr_match(const char *name, size_t len, enum attr a)
{
    return memcmp(name, attr_names[a], len) == 0 ? (int)a : -1;
}

int attr_lookup(const char *name, size_t len)
{
    /*
     * The byte tested after the length is the first one that tells the
     * candidates of that length apart; keep it in step with attr_names
     * (test_request_attr_lookup_roundtrip checks every name).
     */
    switch (len) {
    case 4:
        return attr_match(name, len, ATTR_SIZE);
    case 6:
        return attr_match(name, len, name[1] == 'e' ? ATTR_SENDER : ATTR_STRESS);
    case 7:
        return attr_match(name, len, ATTR_REQUEST);
    case 8:
        return attr_match(name, len, name[0] == 'q' ? ATTR_QUEUE_ID : ATTR_INSTANCE);
    case 9:
        return attr_match(name, len, name[0] == 'h' ? ATTR_HELO_NAME : ATTR_RECIPIENT);
    case 11:
        switch (name[0]) {
        case 'c':
            return attr_match(name, len, name[7] == 'n' ? ATTR_CLIENT_NAME : ATTR_CLIENT_PORT);
        case 's':
            switch (name[5]) {
            case 'm':
                return attr_match(name, len, ATTR_SASL_METHOD);
            case 's':
                return attr_match(name, len, ATTR_SASL_SENDER);
            case 'd':
                return attr_match(name, len, ATTR_SASL_DOMAIN);
            default:
                return attr_match(name, len, ATTR_SERVER_PORT);
            }
        default:
            return attr_match(name, len, ATTR_ETRN_DOMAIN);
        }
    case 12:
        return attr_match(name, len, name[0] == 'c' ? ATTR_CCERT_ISSUER : ATTR_MAIL_VERSION);
    case 13:
        switch (name[0]) {
        case 'p':
            return attr_match(name, len, ATTR_PROTOCOL_NAME);
        case 'c':
            return attr_match(name, len, ATTR_CCERT_SUBJECT);
        default:
            return attr_match(name, len, name[1] == 'a' ? ATTR_SASL_USERNAME : ATTR_SENDER_DOMAIN);
        }
    case 14:
        switch (name[0]) {
        case 'c':
            return attr_match(name, len, ATTR_CLIENT_ADDRESS);
        case 's':
            return attr_match(name, len, ATTR_SERVER_ADDRESS);
        default:
            return attr_match(name, len, name[1] == 'r' ? ATTR_PROTOCOL_STATE : ATTR_POLICY_CONTEXT);
        }
    case 15:
        return attr_match(name, len, ATTR_RECIPIENT_COUNT);
    case 16:
        return attr_match(name, len, name[0] == 's' ? ATTR_SENDER_LOCALPART : ATTR_RECIPIENT_DOMAIN);
    case 17:
        return attr_match(name, len, name[0] == 'c' ? ATTR_CCERT_FINGERPRINT : ATTR_ENCRYPTION_CIPHER);
    case 18:
        return attr_match(name, len, ATTR_ENCRYPTION_KEYSIZE);
    case 19:
        switch (name[0]) {
        case 'r':
            return attr_match(name, len, name[2] == 'v' ? ATTR_REVERSE_CLIENT_NAME
                                                        : ATTR_RECIPIENT_LOCALPART);
        case 'e':
            return attr_match(name, len, ATTR_ENCRYPTION_PROTOCOL);
        default:
            return attr_match(name, len, ATTR_COMPATIBILITY_LEVEL);
        }
    case 24:
        return attr_match(name, len, ATTR_CCERT_PUBKEY_FINGERPRINT);
    default:
        return -1;
    }
}

bool attr_is_case_insensitive(enum attr a)
{
    switch (a) {
    case ATTR_SENDER:
    case ATTR_RECIPIENT:
    case ATTR_SASL_USERNAME:
    case ATTR_SASL_SENDER:
    case ATTR_HELO_NAME:
    case ATTR_CLIENT_NAME:
    case ATTR_REVERSE_CLIENT_NAME:
    case ATTR_SENDER_DOMAIN:
    case ATTR_SENDER_LOCALPART:
    case ATTR_RECIPIENT_DOMAIN:
    case ATTR_RECIPIENT_LOCALPART:
    case ATTR_SASL_DOMAIN:
    case ATTR_ETRN_DOMAIN:
        return true;
    case ATTR_REQUEST:
    case ATTR_PROTOCOL_STATE:
    case ATTR_PROTOCOL_NAME:
    case ATTR_QUEUE_ID:
    case ATTR_RECIPIENT_COUNT:
    case ATTR_CLIENT_ADDRESS:
    case ATTR_INSTANCE:
    case ATTR_SASL_METHOD:
    case ATTR_SIZE:
    case ATTR_CCERT_SUBJECT:
    case ATTR_CCERT_ISSUER:
    case ATTR_CCERT_FINGERPRINT:
    case ATTR_CCERT_PUBKEY_FINGERPRINT:
    case ATTR_ENCRYPTION_PROTOCOL:
    case ATTR_ENCRYPTION_CIPHER:
    case ATTR_ENCRYPTION_KEYSIZE:
    case ATTR_STRESS:
    case ATTR_CLIENT_PORT:
    case ATTR_POLICY_CONTEXT:
    case ATTR_SERVER_ADDRESS:
    case ATTR_SERVER_PORT:
    case ATTR_COMPATIBILITY_LEVEL:
    case ATTR_MAIL_VERSION:
    case ATTR_COUNT:
        return false;
    }
    return false;
}

/* ---- arena ---------------------------------------------------------- */

/*
 * One chunk: the header, then cap bytes of memory. data[] is max_align_t
 * so that the memory behind the header suits any type.
 */
struct arena_chunk {
    struct arena_chunk *prev;   /* towards the first chunk */
    struct arena_chunk *next;   /* kept across resets */
    size_t cap;                 /* bytes of data[] */
    max_align_t data[];         /* the memory handed out */
};

/* 4 KiB with the header covers the derived strings of any normal request. */
#define ARENA_FIRST_CHUNK (4096 - sizeof(struct arena_chunk))
/* Later chunks double, up to this, unless one allocation needs more. */
#define ARENA_MAX_CHUNK ((size_t)256 * 1024)

static struct arena_chunk *arena_chunk_of(const struct arena *ar)
{
    return (struct arena_chunk *)(void *)(ar->base - offsetof(struct arena_chunk, data));
}

static void arena_use(struct arena *ar, struct arena_chunk *c)
{
    ar->base = (char *)c->data;
    ar->cap = c->cap;
    ar->used = 0;
}

/* arena_grow - make the current chunk one with at least need free bytes. */
static void arena_grow(struct arena *ar, size_t need)
{
    struct arena_chunk *cur = ar->base ? arena_chunk_of(ar) : NULL;
    struct arena_chunk *tail = cur;

    /* A chunk kept from an earlier, bigger request is reused first. */
    for (struct arena_chunk *c = cur ? cur->next : NULL; c; c = c->next) {
        if (c->cap >= need) {
            arena_use(ar, c);
            return;
        }
        tail = c;
    }

    size_t cap = tail ? tail->cap * 2 : ARENA_FIRST_CHUNK;
    if (cap > ARENA_MAX_CHUNK)
        cap = ARENA_MAX_CHUNK;
    if (cap < need)
        cap = need;
    if (cap > SIZE_MAX - sizeof(struct arena_chunk))
        cap = SIZE_MAX - sizeof(struct arena_chunk); /* xmalloc dies on it */
    struct arena_chunk *c = xmalloc(sizeof(struct arena_chunk) + cap);
    c->prev = tail;
    c->next = NULL;
    c->cap = cap;
    if (tail)
        tail->next = c;
    arena_use(ar, c);
}

/* arena_take - size bytes aligned to align (a power of two). */
static void *arena_take(struct arena *ar, size_t size, size_t align)
{
    if (ar->base) {
        size_t off = (ar->used + align - 1) & ~(align - 1);
        if (off >= ar->used && off <= ar->cap && size <= ar->cap - off) {
            ar->used = off + size;
            return ar->base + off;
        }
    }
    arena_grow(ar, size);
    ar->used = size;
    return ar->base;
}

static void arena_rewind(struct arena *ar)
{
    if (!ar->base)
        return;
    struct arena_chunk *c = arena_chunk_of(ar);
    while (c->prev)
        c = c->prev;
    arena_use(ar, c);
}

static void arena_free(struct arena *ar)
{
    if (!ar->base)
        return;
    arena_rewind(ar);
    struct arena_chunk *c = arena_chunk_of(ar);
    while (c) {
        struct arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    ar->base = NULL;
    ar->used = ar->cap = 0;
}

void *arena_alloc(struct arena *ar, size_t size)
{
    return arena_take(ar, size, alignof(max_align_t));
}

char *arena_strndup(struct arena *ar, const char *s, size_t len)
{
    char *p = arena_take(ar, len + 1, 1);
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

char *arena_lower(struct arena *ar, const char *s, size_t len)
{
    char *p = arena_take(ar, len + 1, 1);
    ascii_lower(p, s, len);
    p[len] = '\0';
    return p;
}

/* ---- request -------------------------------------------------------- */

void request_init(struct request *req)
{
    memset(req, 0, sizeof *req);
}

void request_reset(struct request *req)
{
    memset(req->val, 0, sizeof req->val);
    memset(req->len, 0, sizeof req->len);
    req->derived_done = 0;
    req->unknown_count = 0;
    req->client_ip_state = 0;
    arena_rewind(&req->arena);
}

void request_fini(struct request *req)
{
    arena_free(&req->arena);
    memset(req, 0, sizeof *req);
}

/* request_dependents - the derived attributes computed from a. */
static unsigned request_dependents(enum attr a)
{
    switch (a) {
    case ATTR_SENDER:
        return DERIVED_BIT(ATTR_SENDER_DOMAIN) | DERIVED_BIT(ATTR_SENDER_LOCALPART);
    case ATTR_RECIPIENT:
        return DERIVED_BIT(ATTR_RECIPIENT_DOMAIN) | DERIVED_BIT(ATTR_RECIPIENT_LOCALPART);
    case ATTR_SASL_USERNAME:
        return DERIVED_BIT(ATTR_SASL_DOMAIN);
    default:
        return 0;
    }
}

void request_set(struct request *req, enum attr a, const char *val, size_t len)
{
    if ((unsigned)a >= ATTR_COUNT)
        return;
    req->val[a] = val;
    req->len[a] = len;
    if (a == ATTR_CLIENT_ADDRESS)
        req->client_ip_state = 0;
    if (a >= ATTR_WIRE_COUNT)
        /* A test or a replay tool set a derived value: keep it. */
        req->derived_done |= DERIVED_BIT(a);
    else
        req->derived_done &= ~request_dependents(a);
}

/* last_at - the last '@' in s[0..len), or NULL. */
static const char *last_at(const char *s, size_t len)
{
    while (len > 0)
        if (s[--len] == '@')
            return s + len;
    return NULL;
}

static void request_put(struct request *req, enum attr a, const char *val, size_t len)
{
    req->val[a] = val;
    req->len[a] = len;
    req->derived_done |= DERIVED_BIT(a);
}

/*
 * request_split_address - domain and localpart of src.
 *
 * The last '@' splits, because a quoted localpart may hold '@'
 * ("a@b"@example.com) while a domain never does. The null sender and an
 * absent attribute have neither part; an address without '@' (Postfix
 * never sends one unqualified, but "<>" or "postmaster" from a non-Postfix
 * client could arrive) is all localpart and has no domain. "user@" has an
 * empty domain: present, "".
 */
static void request_split_address(struct request *req, enum attr src, enum attr dom, enum attr lp)
{
    const char *v = req->val[src];
    size_t n = req->len[src];
    const char *dval = NULL, *lval = NULL;
    size_t dlen = 0, llen = 0;

    if (v && n > 0) {
        const char *at = last_at(v, n);
        if (at) {
            llen = (size_t)(at - v);
            dlen = n - llen - 1;
            lval = arena_strndup(&req->arena, v, llen);
            dval = arena_lower(&req->arena, at + 1, dlen);
        } else {
            lval = v;           /* NUL-terminated in the read buffer */
            llen = n;
        }
    }
    if (dom != ATTR_COUNT)
        request_put(req, dom, dval, dlen);
    if (lp != ATTR_COUNT)
        request_put(req, lp, lval, llen);
}

static void request_derive(struct request *req, enum attr a)
{
    switch (a) {
    case ATTR_SENDER_DOMAIN:
    case ATTR_SENDER_LOCALPART:
        request_split_address(req, ATTR_SENDER, ATTR_SENDER_DOMAIN, ATTR_SENDER_LOCALPART);
        break;
    case ATTR_RECIPIENT_DOMAIN:
    case ATTR_RECIPIENT_LOCALPART:
        request_split_address(req, ATTR_RECIPIENT, ATTR_RECIPIENT_DOMAIN,
                              ATTR_RECIPIENT_LOCALPART);
        break;
    case ATTR_SASL_DOMAIN:
        request_split_address(req, ATTR_SASL_USERNAME, ATTR_SASL_DOMAIN, ATTR_COUNT);
        break;
    default:
        break;
    }
}

const char *request_get(struct request *req, enum attr a, size_t *len)
{
    if ((unsigned)a >= ATTR_COUNT) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (a >= ATTR_WIRE_COUNT && !(req->derived_done & DERIVED_BIT(a)))
        request_derive(req, a);
    if (len)
        *len = req->len[a];
    return req->val[a];
}

const struct ipaddr *request_client_ip(struct request *req)
{
    const char *addr = req->val[ATTR_CLIENT_ADDRESS];

    if (req->client_ip_state == 0)
        req->client_ip_state =
            addr && ipaddr_parse(addr, req->len[ATTR_CLIENT_ADDRESS], &req->client_ip) == 0 ? 1
                                                                                            : -1;
    return req->client_ip_state > 0 ? &req->client_ip : NULL;
}

const char *request_client_prefix(struct request *req, int v4_bits, int v6_bits, size_t *len)
{
    const struct ipaddr *ip;
    /* "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128" is 43 bytes. */
    char tmp[64];
    size_t n;

    if (len)
        *len = 0;
    if (v4_bits < 0 || v4_bits > 32 || v6_bits < 0 || v6_bits > 128)
        return NULL;
    ip = request_client_ip(req);
    if (!ip)
        return NULL;
    n = ipaddr_format_prefix(ip, (unsigned)v4_bits, (unsigned)v6_bits, tmp, sizeof tmp);
    if (n == 0 || n >= sizeof tmp)
        return NULL;
    if (len)
        *len = n;
    return arena_strndup(&req->arena, tmp, n);
}

bool request_number(struct request *req, enum attr a, double *out)
{
    size_t n;
    const char *v = request_get(req, a, &n);
    uint64_t x = 0;

    if (!v || n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(unsigned char)v[i] - '0';
        if (d > 9)
            return false;
        if (x > (UINT64_MAX - d) / 10)
            return false;
        x = x * 10 + d;
    }
    *out = (double)x;
    return true;
}
