/*
 * fuzz_reply - libFuzzer target for the reply arena (policyd/replyarena.c)
 * under hiredis's reply reader: the bytes a Redis server (or something
 * posing as one) sends on the counter store's connection.
 *
 * The input is fed in pieces whose sizes come from the input itself (so a
 * crash replays exactly), every complete reply is walked (every string
 * read to its end, every element visited) and freed as the connection
 * does, and the same bytes are fed again in one piece. Invariants, checked
 * by aborting so that libFuzzer reports a crash:
 *   - both feeds give the same replies (type and size of each, in order)
 *     and end in the same state (error or not): how reads fall must not
 *     matter;
 *   - a string's byte at its length is NUL; an array's elements are all
 *     set.
 * The sanitizers catch what the arena gets wrong in memory.
 *
 * Built with -DFUZZ_LIBFUZZER by clang for fuzzing; without it (gcc) a
 * main() replays the files or directories named on the command line.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <hiredis/read.h>

#include "replyarena.h"

#define MAX_REPLIES 256     /* replies compared per input */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* walk - a digest of one reply: its type and sizes, everything touched. */
static uint64_t walk(const redisReply *r, int depth)
{
    uint64_t h = (uint64_t)r->type * 1000003u;

    if (depth > 16)
        abort();    /* the reader nests 7 deep at most */
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        if (!r->str || r->str[r->len] != '\0')
            abort();
        for (size_t i = 0; i < r->len; i++)
            h = h * 31 + (unsigned char)r->str[i];
        h += r->len;
        break;
    case REDIS_REPLY_INTEGER:
        h ^= (uint64_t)r->integer;
        break;
    case REDIS_REPLY_ARRAY:
        h += r->elements * 7;
        for (size_t i = 0; i < r->elements; i++) {
            if (!r->element[i])
                abort();
            h = h * 131 + walk(r->element[i], depth + 1);
        }
        break;
    case REDIS_REPLY_NIL:
        break;
    default:
        abort();
    }
    return h;
}

/* run - feed data in pieces of the given sizes (0: all at once); store
 * the digests of the replies; return the count, negative on a reader
 * error (its count of good replies before it, minus one). */
static int run(const uint8_t *data, size_t size, const uint8_t *sizes, size_t nsizes,
               uint64_t *digests)
{
    struct reply_arena *a = reply_arena_new();
    redisReader *r = redisReaderCreate();
    size_t off = 0, k = 0;
    int n = 0;
    bool failed = false;

    if (!r)
        abort();
    reply_arena_attach(a, r);
    while (off < size && !failed) {
        size_t piece = nsizes ? (size_t)sizes[k++ % nsizes] % 64 + 1 : size;
        if (piece > size - off)
            piece = size - off;
        if (redisReaderFeed(r, (const char *)data + off, piece) != REDIS_OK)
            abort();
        off += piece;
        for (;;) {
            void *rep = NULL;
            if (redisReaderGetReply(r, &rep) != REDIS_OK) {
                failed = true;
                break;
            }
            if (!rep)
                break;
            if (n < MAX_REPLIES)
                digests[n] = walk(rep, 0);
            n++;
            r->fn->freeObject(rep);
        }
    }
    redisReaderFree(r);
    reply_arena_free(a);
    return failed ? -n - 1 : n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint64_t whole[MAX_REPLIES], pieces[MAX_REPLIES];
    size_t nsizes = size < 8 ? size : 8;

    int a = run(data, size, NULL, 0, whole);
    int b = run(data, size, data, nsizes, pieces);
    if (a != b)
        abort();
    int n = a < 0 ? -a - 1 : a;
    if (n > MAX_REPLIES)
        n = MAX_REPLIES;
    if (memcmp(whole, pieces, (size_t)n * sizeof *whole) != 0)
        abort();
    return 0;
}
