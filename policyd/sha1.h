/*
 * sha1 - SHA-1 (FIPS 180-4) of a byte string, for naming the Redis
 * script: EVALSHA needs the script's SHA-1 in hex, and computing it here
 * saves a SCRIPT LOAD round trip at every connect.
 *
 * Not for anything where collisions matter: Redis picked the hash, we
 * only have to agree with it.
 * Pure: no I/O, no allocation. The caller owns struct sha1 (embed it or
 * put it on the stack); sha1_final leaves it wiped.
 */
#ifndef SMTPGUARD_SHA1_H
#define SMTPGUARD_SHA1_H

#include <stddef.h>
#include <stdint.h>

#define SHA1_DIGEST_LEN 20      /* bytes */
#define SHA1_HEX_LEN 40         /* characters, without the NUL */

struct sha1 {
    uint32_t h[5];              /* chaining state */
    uint64_t len;               /* bytes hashed so far */
    unsigned char block[64];    /* partial input block */
    size_t used;                /* bytes of block in use */
};

void sha1_init(struct sha1 *s);
void sha1_update(struct sha1 *s, const void *data, size_t len);
void sha1_final(struct sha1 *s, unsigned char digest[SHA1_DIGEST_LEN]);

/* sha1_hex - one-shot: lower-case hex digest of data into hex (41 bytes
 * with the NUL). Returns hex. */
char *sha1_hex(const void *data, size_t len, char hex[SHA1_HEX_LEN + 1]);

#endif
