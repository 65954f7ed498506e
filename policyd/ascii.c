/*
 * ascii - ASCII case folding for keys and list lookups. See ascii.h.
 */
#include "ascii.h"

#include <stdint.h>
#include <string.h>

/* Eight bytes at a time. For each byte's low seven bits, adding 0x3f
 * reaches its top bit when they are 'A' (0x41) or more, and adding 0x25
 * when they are past 'Z' (0x5b or more); neither sum carries into the
 * next byte. A byte of A-Z (and top bit clear) keeps the first mark and
 * not the second, and that mark shifted down two is its 0x20. The
 * counter keys fold a SASL user or a sender's domain per counter, the
 * lists every value they look up, and a byte-wise loop cost ~7
 * instructions a byte. */
#define ASCII_LOWER_HI 0x8080808080808080ULL
#define ASCII_LOWER_LO7 0x7f7f7f7f7f7f7f7fULL
#define ASCII_LOWER_GE_A 0x3f3f3f3f3f3f3f3fULL
#define ASCII_LOWER_GT_Z 0x2525252525252525ULL

void ascii_lower(char *dst, const char *src, size_t n)
{
    size_t i = 0;

    for (; i + 8 <= n; i += 8) {
        uint64_t w, low7;

        memcpy(&w, src + i, sizeof w);
        low7 = w & ASCII_LOWER_LO7;
        w |= ((low7 + ASCII_LOWER_GE_A) & ~(low7 + ASCII_LOWER_GT_Z) & ~w & ASCII_LOWER_HI) >> 2;
        memcpy(dst + i, &w, sizeof w);
    }
    for (; i < n; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[i] = (char)(ch >= 'A' && ch <= 'Z' ? ch + ('a' - 'A') : ch);
    }
}
