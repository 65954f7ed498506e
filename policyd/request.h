/*
 * request - one Postfix policy request: its attributes indexed by enum,
 * and derived attributes computed on demand.
 *
 * Wire attribute values point into the connection's read buffer (the
 * protocol parser NUL-terminates them in place), so a request is valid
 * only until that buffer is compacted, i.e. until the answer is written.
 * Derived values (sender_domain, client network, lower-cased forms ...)
 * live in the request's arena, which request_reset() rewinds without
 * freeing: steady state allocates nothing.
 *
 * Absent and empty differ: request_get() returns NULL for an attribute
 * Postfix did not send and "" for one it sent empty (the null sender).
 * Pure: no I/O.
 */
#ifndef SMTPGUARD_REQUEST_H
#define SMTPGUARD_REQUEST_H

#include <stdbool.h>
#include <stddef.h>

#include "cidr.h"

/* Every attribute of the Postfix 2.1 - 3.8 policy protocol, then derived. */
enum attr {
    ATTR_REQUEST,
    ATTR_PROTOCOL_STATE,
    ATTR_PROTOCOL_NAME,
    ATTR_HELO_NAME,
    ATTR_QUEUE_ID,
    ATTR_SENDER,
    ATTR_RECIPIENT,
    ATTR_RECIPIENT_COUNT,
    ATTR_CLIENT_ADDRESS,
    ATTR_CLIENT_NAME,
    ATTR_REVERSE_CLIENT_NAME,
    ATTR_INSTANCE,
    ATTR_SASL_METHOD,
    ATTR_SASL_USERNAME,
    ATTR_SASL_SENDER,
    ATTR_SIZE,
    ATTR_CCERT_SUBJECT,
    ATTR_CCERT_ISSUER,
    ATTR_CCERT_FINGERPRINT,
    ATTR_CCERT_PUBKEY_FINGERPRINT,
    ATTR_ENCRYPTION_PROTOCOL,
    ATTR_ENCRYPTION_CIPHER,
    ATTR_ENCRYPTION_KEYSIZE,
    ATTR_ETRN_DOMAIN,
    ATTR_STRESS,
    ATTR_CLIENT_PORT,
    ATTR_POLICY_CONTEXT,
    ATTR_SERVER_ADDRESS,
    ATTR_SERVER_PORT,
    ATTR_COMPATIBILITY_LEVEL,
    ATTR_MAIL_VERSION,
    ATTR_WIRE_COUNT,            /* end of what Postfix sends */
    /* Derived on demand. */
    ATTR_SENDER_DOMAIN = ATTR_WIRE_COUNT, /* lower-cased part after the last '@' */
    ATTR_SENDER_LOCALPART,      /* part before the last '@' */
    ATTR_RECIPIENT_DOMAIN,
    ATTR_RECIPIENT_LOCALPART,
    ATTR_SASL_DOMAIN,           /* part after '@' of sasl_username, if any */
    ATTR_COUNT
};

/* attr_name - the attribute's protocol name ("client_address"). */
const char *attr_name(enum attr a);
/* attr_lookup - name to enum; returns -1 for an unknown name. */
int attr_lookup(const char *name, size_t len);
/* attr_is_address - sender/recipient-like: compared case-insensitively. */
bool attr_is_case_insensitive(enum attr a);

/* A bump allocator for derived strings; reset rewinds, never frees. */
struct arena {
    char *base;                 /* current chunk */
    size_t used;                /* bytes used in the current chunk */
    size_t cap;                 /* bytes in the current chunk */
};

struct request {
    const char *val[ATTR_COUNT];   /* NULL = absent */
    size_t len[ATTR_COUNT];        /* bytes, without the NUL */
    unsigned derived_done;         /* bitmask of derived attrs computed (bit = a - ATTR_WIRE_COUNT) */
    unsigned unknown_count;        /* attributes we did not know (ignored) */
    struct arena arena;            /* derived strings */
    int client_ip_state;           /* client_ip: 0 not parsed yet, 1 valid, -1 not an address */
    struct ipaddr client_ip;       /* client_address parsed, once per request */
};

void request_init(struct request *req);
/* request_reset - forget all attributes, rewind the arena (keeps memory). */
void request_reset(struct request *req);
void request_fini(struct request *req);

/* request_set - store a wire attribute (value must outlive the request). */
void request_set(struct request *req, enum attr a, const char *val, size_t len);

/* request_get - the value, computing derived attributes on first use. */
const char *request_get(struct request *req, enum attr a, size_t *len);

/*
 * request_client_prefix - client_address cut to a network prefix, as
 * "192.0.2.0/24" or "2001:db8:1:2::/64", in the arena. v4_bits/v6_bits
 * are the prefix lengths. NULL when client_address is absent or not an
 * IP address (Postfix sends "unknown" in some cases).
 */
const char *request_client_prefix(struct request *req, int v4_bits, int v6_bits, size_t *len);

/* request_client_ip - client_address as an address, parsed on first use
 * and kept for the request (lists, CIDR conditions and network keys all
 * ask for it); NULL when absent or not an IP address. */
const struct ipaddr *request_client_ip(struct request *req);

/* request_number - parse a numeric attribute (size, recipient_count);
 * false when absent or not a non-negative decimal number. */
bool request_number(struct request *req, enum attr a, double *out);

/* arena_alloc / arena_strndup - memory valid until the next reset. */
void *arena_alloc(struct arena *ar, size_t size);
char *arena_strndup(struct arena *ar, const char *s, size_t len);
/* arena_lower - lower-cased ASCII copy. */
char *arena_lower(struct arena *ar, const char *s, size_t len);

#endif
