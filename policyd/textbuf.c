/*
 * textbuf - see textbuf.h. Grows by doubling up to the cap.
 */
#include "textbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "template.h"
#include "xalloc.h"

void textbuf_init(struct textbuf *b, size_t max)
{
    memset(b, 0, sizeof *b);
    b->max = max;
}

void textbuf_fini(struct textbuf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

void textbuf_reset(struct textbuf *b)
{
    b->len = 0;
    b->truncated = false;
    if (b->p)
        b->p[0] = '\0';
}

/* textbuf_room - make room for n more bytes (and the NUL); returns how
 * many of them fit under the cap. */
static size_t textbuf_room(struct textbuf *b, size_t n)
{
    if (b->len + n > b->max) {
        n = b->max - b->len;
        b->truncated = true;
    }
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        if (cap > b->max + 1)
            cap = b->max + 1;
        b->p = xrealloc(b->p, cap);
        b->cap = cap;
    }
    return n;
}

void textbuf_add(struct textbuf *b, const char *s, size_t n)
{
    n = textbuf_room(b, n);
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    if (b->p)
        b->p[b->len] = '\0';
}

void textbuf_str(struct textbuf *b, const char *s)
{
    textbuf_add(b, s, strlen(s));
}

void textbuf_printf(struct textbuf *b, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof small) {
        textbuf_add(b, small, (size_t)n);
        return;
    }
    char *big = xmalloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    textbuf_add(b, big, (size_t)n);
    free(big);
}

void textbuf_json_str(struct textbuf *b, const char *s, size_t n)
{
    if (!s) {
        textbuf_str(b, "null");
        return;
    }
    char clean[2048];
    size_t len = template_sanitize(s, n, clean, sizeof clean);
    textbuf_add(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)clean[i];
        if (ch != '"' && ch != '\\' && ch >= 0x20)
            continue;
        textbuf_add(b, clean + run, i - run);
        if (ch == '"' || ch == '\\') {
            char esc[2] = {'\\', (char)ch};
            textbuf_add(b, esc, 2);
        } else {
            textbuf_printf(b, "\\u%04x", ch);
        }
        run = i + 1;
    }
    textbuf_add(b, clean + run, len - run);
    textbuf_add(b, "\"", 1);
}

const char *textbuf_cstr(const struct textbuf *b)
{
    return b->p ? b->p : "";
}

char *textbuf_take(struct textbuf *b, size_t *len)
{
    char *p = b->p ? b->p : xstrdup("");
    if (len)
        *len = b->len;
    b->p = NULL;
    b->len = b->cap = 0;
    b->truncated = false;
    return p;
}
