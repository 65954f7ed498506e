/*
 * xalloc - allocation wrappers that never return NULL.
 *
 * Out of memory is fatal (abort after a message on stderr). That is
 * acceptable only because every allocation driven by a peer is capped
 * elsewhere (line, request, connection and key limits), so running out
 * means the host is broken, not that a client was clever.
 * Leaks are caught by LeakSanitizer in the ASan build of the whole suite.
 */
#ifndef SMTPGUARD_XALLOC_H
#define SMTPGUARD_XALLOC_H

#include <stddef.h>

void *xmalloc(size_t size);
void *xcalloc(size_t nmemb, size_t size);
void *xrealloc(void *ptr, size_t size);
/* xreallocarray - xrealloc of nmemb * size with an overflow check. */
void *xreallocarray(void *ptr, size_t nmemb, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
/* xasprintf - printf into a fresh string the caller frees. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
