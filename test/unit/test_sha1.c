/*
 * test_sha1 - the FIPS 180 example vectors (and the empty string), fed
 * whole and in every split, and one million 'a's fed in odd chunks so
 * the block-straddling path of sha1_update is exercised.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "sha1.h"

static const struct {
    const char *label;
    const char *msg;
    const char *want;
} sha1_cases[] = {
    {"empty", "", "da39a3ee5e6b4b0d3255bfef95601890afd80709"},
    {"abc", "abc", "a9993e364706816aba3e25717850c26c9cd0d89d"},
    {"fips-448-bit", "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
     "84983e441c3bd26ebaae4aa1f95129e5e54670f1"},
    {"fips-896-bit",
     "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
     "a49b2446a02c645bf419f995b67091253a04a259"},
    {"fox", "The quick brown fox jumps over the lazy dog", "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"},
};

static void hex_of(const unsigned char d[SHA1_DIGEST_LEN], char out[SHA1_HEX_LEN + 1])
{
    for (int i = 0; i < SHA1_DIGEST_LEN; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void test_sha1_vectors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof sha1_cases / sizeof sha1_cases[0]; i++) {
        char hex[SHA1_HEX_LEN + 1];
        sha1_hex(sha1_cases[i].msg, strlen(sha1_cases[i].msg), hex);
        if (strcmp(hex, sha1_cases[i].want) != 0)
            fail_msg("%s: got %s, want %s", sha1_cases[i].label, hex, sha1_cases[i].want);
    }
}

static void test_sha1_split_updates(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof sha1_cases / sizeof sha1_cases[0]; i++) {
        const char *m = sha1_cases[i].msg;
        size_t len = strlen(m);
        for (size_t cut = 0; cut <= len; cut++) {
            struct sha1 s;
            unsigned char d[SHA1_DIGEST_LEN];
            char hex[SHA1_HEX_LEN + 1];
            sha1_init(&s);
            sha1_update(&s, m, cut);
            sha1_update(&s, m + cut, len - cut);
            sha1_final(&s, d);
            hex_of(d, hex);
            if (strcmp(hex, sha1_cases[i].want) != 0)
                fail_msg("%s cut at %zu: got %s, want %s", sha1_cases[i].label, cut, hex,
                         sha1_cases[i].want);
        }
    }
}

static void test_sha1_million_a(void **state)
{
    static const char want[] = "34aa973cd4c4daa4f61eeb2bdbad27316534016f";
    char chunk[997];
    struct sha1 s;
    unsigned char d[SHA1_DIGEST_LEN];
    char hex[SHA1_HEX_LEN + 1];
    size_t left = 1000000;

    (void)state;
    memset(chunk, 'a', sizeof chunk);
    sha1_init(&s);
    while (left) {
        size_t n = left < sizeof chunk ? left : sizeof chunk;
        sha1_update(&s, chunk, n);
        left -= n;
    }
    sha1_final(&s, d);
    hex_of(d, hex);
    if (strcmp(hex, want) != 0)
        fail_msg("million a: got %s, want %s", hex, want);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha1_vectors),
        cmocka_unit_test(test_sha1_split_updates),
        cmocka_unit_test(test_sha1_million_a),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
