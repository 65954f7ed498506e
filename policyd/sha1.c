/*
 * sha1 - see sha1.h. A straight transcription of FIPS 180-4 section 6.1:
 * 64-byte blocks, an 80-word schedule kept in a 16-word ring, big-endian
 * length in the last block. Speed does not matter (one script, hashed
 * once at open), clarity does.
 */
#include "sha1.h"

#include <string.h>

static uint32_t sha1_rol(uint32_t x, unsigned n)
{
    return (x << n) | (x >> (32 - n));
}

/* sha1_block - fold one 64-byte block into the chaining state. */
static void sha1_block(uint32_t h[5], const unsigned char *p)
{
    uint32_t w[16], a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];

    for (int t = 0; t < 16; t++)
        w[t] = (uint32_t)p[4 * t] << 24 | (uint32_t)p[4 * t + 1] << 16 |
               (uint32_t)p[4 * t + 2] << 8 | (uint32_t)p[4 * t + 3];
    for (int t = 0; t < 80; t++) {
        uint32_t f, k, tmp;
        if (t >= 16) {
            w[t & 15] = sha1_rol(w[(t + 13) & 15] ^ w[(t + 8) & 15] ^ w[(t + 2) & 15] ^ w[t & 15], 1);
        }
        if (t < 20) {
            f = (b & c) | (~b & d);
            k = 0x5a827999;
        } else if (t < 40) {
            f = b ^ c ^ d;
            k = 0x6ed9eba1;
        } else if (t < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8f1bbcdc;
        } else {
            f = b ^ c ^ d;
            k = 0xca62c1d6;
        }
        tmp = sha1_rol(a, 5) + f + e + k + w[t & 15];
        e = d;
        d = c;
        c = sha1_rol(b, 30);
        b = a;
        a = tmp;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

void sha1_init(struct sha1 *s)
{
    static const uint32_t iv[5] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0};

    memcpy(s->h, iv, sizeof iv);
    s->len = 0;
    s->used = 0;
}

void sha1_update(struct sha1 *s, const void *data, size_t len)
{
    const unsigned char *p = data;

    s->len += len;
    if (s->used) {
        size_t take = 64 - s->used < len ? 64 - s->used : len;
        memcpy(s->block + s->used, p, take);
        s->used += take;
        p += take;
        len -= take;
        if (s->used < 64)
            return;
        sha1_block(s->h, s->block);
        s->used = 0;
    }
    for (; len >= 64; p += 64, len -= 64)
        sha1_block(s->h, p);
    memcpy(s->block, p, len);
    s->used = len;
}

void sha1_final(struct sha1 *s, unsigned char digest[SHA1_DIGEST_LEN])
{
    uint64_t bits = s->len * 8;
    unsigned char tail[8];

    /* 0x80, zeros up to 56 mod 64, then the length in bits, big-endian. */
    s->block[s->used++] = 0x80;
    if (s->used > 56) {
        memset(s->block + s->used, 0, 64 - s->used);
        sha1_block(s->h, s->block);
        s->used = 0;
    }
    memset(s->block + s->used, 0, 56 - s->used);
    for (int i = 0; i < 8; i++)
        tail[i] = (unsigned char)(bits >> (56 - 8 * i));
    memcpy(s->block + 56, tail, 8);
    sha1_block(s->h, s->block);
    for (int i = 0; i < 5; i++) {
        digest[4 * i] = (unsigned char)(s->h[i] >> 24);
        digest[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
        digest[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
        digest[4 * i + 3] = (unsigned char)s->h[i];
    }
    memset(s, 0, sizeof *s);
}

char *sha1_hex(const void *data, size_t len, char hex[SHA1_HEX_LEN + 1])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char d[SHA1_DIGEST_LEN];
    struct sha1 s;

    sha1_init(&s);
    sha1_update(&s, data, len);
    sha1_final(&s, d);
    for (int i = 0; i < SHA1_DIGEST_LEN; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    hex[SHA1_HEX_LEN] = '\0';
    return hex;
}
