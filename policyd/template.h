/*
 * template - "%{name}" message templates ("550 5.7.1 %{client_address}
 * sent too much, score %{score.ip}").
 *
 * Compiled once at config load: the text is split into literal runs and
 * variables, and each variable name is resolved to a small integer by a
 * caller-supplied resolver, so an unknown name is a config error and
 * expansion does no string lookups. "%%" is a literal '%'; a '%' not
 * followed by '{' is literal too.
 *
 * Expansion writes into a caller buffer and never overflows it. Values
 * are sanitized on the way out: CR, LF, other control characters and
 * bytes that are not valid UTF-8 become '?', so nothing a client sent
 * can break the policy protocol or forge a log line.
 * Pure: no I/O.
 */
#ifndef SMTPGUARD_TEMPLATE_H
#define SMTPGUARD_TEMPLATE_H

#include <stddef.h>

struct template;

/* Resolve a variable name to an id >= 0, or -1 if unknown. */
typedef int (*template_resolve_fn)(void *ctx, const char *name, size_t len);
/* Produce a variable's value (NULL = empty) and its length. */
typedef const char *(*template_value_fn)(void *ctx, int id, size_t *len);

/* template_compile - returns 0, or -EINVAL with err filled ("unknown
 * variable %{foo} at offset 12", "unterminated %{ at offset 3"). */
int template_compile(const char *src, template_resolve_fn resolve, void *ctx,
                     struct template **out, char *err, size_t errlen);

/* template_expand - expand into out (always NUL-terminated if cap > 0);
 * returns the length written, truncated to cap - 1. */
size_t template_expand(const struct template *t, template_value_fn value, void *ctx,
                       char *out, size_t cap);

/* template_source - the text it was compiled from. */
const char *template_source(const struct template *t);

/* template_sanitize - copy src to out with the same replacement rules as
 * expansion (for log fields and verdict texts built elsewhere). Returns
 * the length written (< cap). */
size_t template_sanitize(const char *src, size_t len, char *out, size_t cap);

void template_free(struct template *t);

#endif
