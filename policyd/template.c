/*
 * template - "%{name}" templates. See template.h.
 *
 * A compiled template is an array of segments: a literal run (offset and
 * length into one buffer holding all literal text, with "%%" already
 * turned into '%') or a variable id from the resolver.
 *
 * Everything written out goes through one sanitizer, literal text too:
 * the config is trusted to mean what it says, not to be free of stray
 * control characters or broken UTF-8, and the output ends up in an SMTP
 * reply and in log lines. The sanitizer replaces, with one '?' each:
 *   - C0 controls (U+0000-U+001F, so CR, LF and TAB too), DEL (U+007F)
 *     and C1 controls (U+0080-U+009F, which some terminals obey);
 *   - every maximal ill-formed subsequence of UTF-8 (the Unicode
 *     "maximal subpart" practice): a byte that cannot start a sequence,
 *     or a valid start followed by too few valid continuation bytes.
 *     Overlong forms, surrogates (U+D800-U+DFFF) and code points above
 *     U+10FFFF are ill-formed by the table in Unicode 3.9, Table 3-7.
 * Each segment is sanitized on its own, so a broken sequence at the end
 * of one value can never combine with the start of the next.
 *
 * Output is cut at the buffer, never inside a UTF-8 character: once a
 * character does not fit, nothing more is written (a later, shorter
 * character must not slip in after a dropped one).
 */
#include "template.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

/* Longest variable name echoed in an error message. */
#define TEMPLATE_ERR_NAME_MAX 64

struct template_seg {
    int id;                     /* variable id, or -1 for literal text */
    size_t off;                 /* literal: offset into lit, bytes */
    size_t len;                 /* literal: length, bytes */
};

struct template {
    char *src;                  /* the source text, NUL-terminated */
    char *lit;                  /* all literal runs, back to back */
    struct template_seg *segs;  /* in output order */
    size_t nsegs;               /* entries in segs */
};

/*
 * template_utf8_len - the length of the well-formed character at s
 * (1-4), or 0 if the bytes there are ill-formed; *skip is then the
 * length of the maximal ill-formed subpart to replace with one '?'.
 */
static size_t template_utf8_len(const unsigned char *s, size_t len, size_t *skip)
{
    unsigned char c = s[0];
    unsigned char lo = 0x80, hi = 0xbf;  /* range of the second byte */
    size_t need;

    *skip = 1;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        need = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        need = 3;
        if (c == 0xe0)
            lo = 0xa0;          /* no overlongs */
        else if (c == 0xed)
            hi = 0x9f;          /* no surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        need = 4;
        if (c == 0xf0)
            lo = 0x90;          /* no overlongs */
        else if (c == 0xf4)
            hi = 0x8f;          /* nothing above U+10FFFF */
    } else {
        return 0;               /* 0x80-0xc1 and 0xf5-0xff never start one */
    }

    for (size_t i = 1; i < need; i++) {
        unsigned char min = i == 1 ? lo : 0x80;
        unsigned char max = i == 1 ? hi : 0xbf;

        if (i >= len || s[i] < min || s[i] > max) {
            *skip = i;
            return 0;
        }
    }
    return need;
}

/* template_is_control - C0, DEL or C1 (U+0080-U+009F = C2 80-C2 9F). */
static bool template_is_control(const unsigned char *s, size_t n)
{
    if (n == 1)
        return s[0] < 0x20 || s[0] == 0x7f;
    return n == 2 && s[0] == 0xc2 && s[1] < 0xa0;
}

/*
 * template_put - append src, sanitized, to out[*pos..cap-1). Returns
 * false once something did not fit (the caller stops writing then).
 * Does not NUL-terminate.
 */
static bool template_put(const char *src, size_t len, char *out, size_t cap, size_t *pos)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t i = 0;

    while (i < len) {
        size_t skip;
        size_t n = template_utf8_len(s + i, len - i, &skip);

        if (n == 0 || template_is_control(s + i, n)) {
            if (*pos + 1 >= cap)
                return false;
            out[(*pos)++] = '?';
            i += n ? n : skip;
            continue;
        }
        if (*pos + n >= cap)
            return false;
        memcpy(out + *pos, s + i, n);
        *pos += n;
        i += n;
    }
    return true;
}

size_t template_sanitize(const char *src, size_t len, char *out, size_t cap)
{
    size_t pos = 0;

    if (cap == 0)
        return 0;
    if (src)
        template_put(src, len, out, cap, &pos);
    out[pos] = '\0';
    return pos;
}

static void template_add_seg(struct template *t, size_t *cap, int id, size_t off, size_t len)
{
    if (t->nsegs == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        t->segs = xreallocarray(t->segs, *cap, sizeof(*t->segs));
    }
    t->segs[t->nsegs++] = (struct template_seg){id, off, len};
}

int template_compile(const char *src, template_resolve_fn resolve, void *ctx,
                     struct template **out, char *err, size_t errlen)
{
    size_t srclen = strlen(src);
    struct template *t = xcalloc(1, sizeof(*t));
    size_t segcap = 0;
    size_t litlen = 0;          /* bytes used in t->lit */
    size_t run = 0;             /* where the current literal run began */
    size_t i = 0;

    t->src = xstrndup(src, srclen);
    /* Literal text never exceeds the source. */
    t->lit = xmalloc(srclen + 1);

    while (i < srclen) {
        if (src[i] != '%' || i + 1 >= srclen || (src[i + 1] != '%' && src[i + 1] != '{')) {
            t->lit[litlen++] = src[i++];
            continue;
        }
        if (src[i + 1] == '%') {
            t->lit[litlen++] = '%';
            i += 2;
            continue;
        }

        /* "%{name}" */
        const char *name = src + i + 2;
        const char *close = strchr(name, '}');
        size_t namelen;
        int id;

        if (!close) {
            snprintf(err, errlen, "unterminated %%{ at offset %zu", i);
            goto fail;
        }
        namelen = (size_t)(close - name);
        if (namelen == 0) {
            snprintf(err, errlen, "empty variable name at offset %zu", i);
            goto fail;
        }
        id = resolve(ctx, name, namelen);
        if (id < 0) {
            char shown[TEMPLATE_ERR_NAME_MAX + 1];

            /* The name is config text; keep the message one clean line. */
            template_sanitize(name, namelen > TEMPLATE_ERR_NAME_MAX ? TEMPLATE_ERR_NAME_MAX
                                                                     : namelen,
                              shown, sizeof(shown));
            snprintf(err, errlen, "unknown variable %%{%s%s} at offset %zu", shown,
                     namelen > TEMPLATE_ERR_NAME_MAX ? "..." : "", i);
            goto fail;
        }
        if (litlen > run)
            template_add_seg(t, &segcap, -1, run, litlen - run);
        template_add_seg(t, &segcap, id, 0, 0);
        run = litlen;
        i = (size_t)(close - src) + 1;
    }
    if (litlen > run)
        template_add_seg(t, &segcap, -1, run, litlen - run);
    t->lit[litlen] = '\0';
    *out = t;
    return 0;

fail:
    template_free(t);
    return -EINVAL;
}

size_t template_expand(const struct template *t, template_value_fn value, void *ctx,
                       char *out, size_t cap)
{
    size_t pos = 0;

    if (cap == 0)
        return 0;
    for (size_t i = 0; i < t->nsegs; i++) {
        const struct template_seg *seg = &t->segs[i];
        const char *s;
        size_t len;

        if (seg->id < 0) {
            s = t->lit + seg->off;
            len = seg->len;
        } else {
            len = 0;
            s = value(ctx, seg->id, &len);
            if (!s)
                len = 0;
        }
        if (!template_put(s, len, out, cap, &pos))
            break;
    }
    out[pos] = '\0';
    return pos;
}

const char *template_source(const struct template *t)
{
    return t->src;
}

void template_free(struct template *t)
{
    if (!t)
        return;
    free(t->src);
    free(t->lit);
    free(t->segs);
    free(t);
}
