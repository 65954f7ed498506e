/*
 * textbuf - a growable text buffer with a hard cap, for the records and
 * mails built off the answer path (tracking records, alert mails).
 *
 * The buffer owns its memory (textbuf_fini frees it) and is always
 * NUL-terminated. Appending past max bytes drops the excess and sets
 * truncated: a record built from peer data can never grow without bound.
 * textbuf_json_str() writes a JSON string: peer bytes are sanitized
 * (invalid UTF-8 and controls other than those escaped become '?') and
 * quote, backslash and controls are escaped.
 * Pure: no I/O.
 */
#ifndef SMTPGUARD_TEXTBUF_H
#define SMTPGUARD_TEXTBUF_H

#include <stdbool.h>
#include <stddef.h>

struct textbuf {
    char *p;                    /* NUL-terminated text, or NULL before the first append */
    size_t len;                 /* bytes of text */
    size_t cap;                 /* bytes allocated */
    size_t max;                 /* bytes of text at most */
    bool truncated;             /* something was dropped at the cap */
};

void textbuf_init(struct textbuf *b, size_t max);
void textbuf_fini(struct textbuf *b);
/* textbuf_reset - empty, keeping the memory. */
void textbuf_reset(struct textbuf *b);
void textbuf_add(struct textbuf *b, const char *s, size_t n);
void textbuf_str(struct textbuf *b, const char *s);
void textbuf_printf(struct textbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* textbuf_json_str - "s" as a JSON string (sanitized, escaped); NULL is null. */
void textbuf_json_str(struct textbuf *b, const char *s, size_t n);
/* textbuf_cstr - the text ("" when empty). */
const char *textbuf_cstr(const struct textbuf *b);
/* textbuf_take - hand the text over to the caller (free() it); b is empty after. */
char *textbuf_take(struct textbuf *b, size_t *len);

#endif
