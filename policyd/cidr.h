/*
 * cidr - IPv4/IPv6 addresses, networks and sets of networks.
 *
 * A set is built by adding networks, then frozen by cidr_set_finish(),
 * which sorts and merges them into disjoint ranges; a lookup is then a
 * binary search (O(log n), no allocation), so a 100,000-entry customer
 * list costs ~17 comparisons. IPv4 and IPv6 ranges are kept apart;
 * an IPv4-mapped IPv6 address (::ffff:a.b.c.d) is looked up as IPv4.
 * Pure: no I/O.
 */
#ifndef SMTPGUARD_CIDR_H
#define SMTPGUARD_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ipaddr {
    int family;                 /* AF_INET or AF_INET6 */
    uint8_t bytes[16];          /* network order; IPv4 uses the first 4 */
};

struct cidr {
    struct ipaddr addr;         /* host bits already cleared */
    unsigned bits;              /* prefix length: 0-32 or 0-128 */
};

/* ipaddr_parse - "192.0.2.1", "2001:db8::1", "[2001:db8::1]", "IPV6:..."
 * prefix tolerated. Maps ::ffff:a.b.c.d to IPv4. Returns 0 or -EINVAL. */
int ipaddr_parse(const char *s, size_t len, struct ipaddr *out);

/* cidr_parse - an address or "addr/bits" ("10.0.0.0/8", "::1",
 * "[2001:db8::]/32"). Host bits set below the prefix are cleared (and
 * *host_bits_set, if not NULL, says so, for a config warning).
 * Returns 0 or -EINVAL. */
int cidr_parse(const char *s, size_t len, struct cidr *out, bool *host_bits_set);

bool cidr_contains(const struct cidr *net, const struct ipaddr *ip);

/* ipaddr_format_prefix - "192.0.2.0/24", "2001:db8::/64" for ip cut to
 * bits (v4_bits or v6_bits by family). Returns the length or 0 if cap is
 * too small. */
size_t ipaddr_format_prefix(const struct ipaddr *ip, unsigned v4_bits, unsigned v6_bits,
                            char *out, size_t cap);

struct cidr_set;

struct cidr_set *cidr_set_new(void);
void cidr_set_add(struct cidr_set *set, const struct cidr *net);
/* cidr_set_finish - sort and merge; required before lookups. */
void cidr_set_finish(struct cidr_set *set);
bool cidr_set_contains(const struct cidr_set *set, const struct ipaddr *ip);
size_t cidr_set_count(const struct cidr_set *set); /* ranges after merging */
void cidr_set_free(struct cidr_set *set);

#endif
