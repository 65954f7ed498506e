/*
 * test_replyarena - hiredis's own reader, with the arena's object
 * functions: replies come out as hiredis builds them (types, strings,
 * nesting), fed whole or a byte at a time; a warm arena allocates
 * nothing more; a reply larger than a chunk works and its memory is given
 * back; a protocol error mid-reply loses nothing (LeakSanitizer in the
 * ASan build).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <hiredis/read.h>

#include "replyarena.h"

/* The counter script's answer, then one of each kind of reply. */
static const char NESTED[] =
    "*4\r\n$17\r\n1795622354.084123\r\n:42\r\n$-1\r\n*3\r\n+OK\r\n-ERR no\r\n*0\r\n";

static redisReader *reader_with(struct reply_arena *a)
{
    redisReader *r = redisReaderCreate();
    assert_non_null(r);
    reply_arena_attach(a, r);
    return r;
}

static void check_nested(const redisReply *rep)
{
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->elements, 4);
    assert_int_equal(rep->element[0]->type, REDIS_REPLY_STRING);
    assert_int_equal(rep->element[0]->len, 17);
    assert_string_equal(rep->element[0]->str, "1795622354.084123");
    assert_int_equal(rep->element[1]->type, REDIS_REPLY_INTEGER);
    assert_int_equal(rep->element[1]->integer, 42);
    assert_int_equal(rep->element[2]->type, REDIS_REPLY_NIL);
    const redisReply *in = rep->element[3];
    assert_int_equal(in->type, REDIS_REPLY_ARRAY);
    assert_int_equal(in->elements, 3);
    assert_int_equal(in->element[0]->type, REDIS_REPLY_STATUS);
    assert_string_equal(in->element[0]->str, "OK");
    assert_int_equal(in->element[1]->type, REDIS_REPLY_ERROR);
    assert_string_equal(in->element[1]->str, "ERR no");
    assert_int_equal(in->element[2]->type, REDIS_REPLY_ARRAY);
    assert_int_equal(in->element[2]->elements, 0);
}

/* get_one - the next complete reply (fails the test on none or error). */
static redisReply *get_one(redisReader *r)
{
    void *rep = NULL;
    if (redisReaderGetReply(r, &rep) != REDIS_OK)
        fail_msg("reader error: %s", r->errstr);
    if (!rep)
        fail_msg("no complete reply");
    return rep;
}

static void test_replyarena_shapes(void **state)
{
    struct reply_arena *a = reply_arena_new();
    redisReader *r = reader_with(a);
    (void)state;

    assert_int_equal(redisReaderFeed(r, NESTED, sizeof NESTED - 1), REDIS_OK);
    redisReply *rep = get_one(r);
    check_nested(rep);
    r->fn->freeObject(rep);

    /* A byte at a time: the half-built reply survives between feeds. */
    void *none = NULL;
    for (size_t i = 0; i + 1 < sizeof NESTED - 1; i++) {
        assert_int_equal(redisReaderFeed(r, NESTED + i, 1), REDIS_OK);
        assert_int_equal(redisReaderGetReply(r, &none), REDIS_OK);
        assert_null(none);
    }
    assert_int_equal(redisReaderFeed(r, NESTED + sizeof NESTED - 2, 1), REDIS_OK);
    rep = get_one(r);
    check_nested(rep);
    r->fn->freeObject(rep);

    /* A plain status reply, as AUTH and SELECT get. */
    assert_int_equal(redisReaderFeed(r, "+OK\r\n", 5), REDIS_OK);
    rep = get_one(r);
    assert_int_equal(rep->type, REDIS_REPLY_STATUS);
    assert_string_equal(rep->str, "OK");
    r->fn->freeObject(rep);
    redisReaderFree(r);
    reply_arena_free(a);
}

static void test_replyarena_warm_allocates_nothing(void **state)
{
    struct reply_arena *a = reply_arena_new();
    redisReader *r = reader_with(a);
    size_t chunks, first, later;
    (void)state;

    /* Several replies in one feed, as a pipelined read brings them. */
    for (int round = 0; round < 1000; round++) {
        for (int k = 0; k < 3; k++)
            assert_int_equal(redisReaderFeed(r, NESTED, sizeof NESTED - 1), REDIS_OK);
        for (int k = 0; k < 3; k++) {
            redisReply *rep = get_one(r);
            check_nested(rep);
            r->fn->freeObject(rep);
        }
        if (round == 0)
            reply_arena_stats(a, &chunks, &first);
    }
    reply_arena_stats(a, &chunks, &later);
    assert_int_equal(first, 1);
    assert_int_equal(later, first);
    assert_int_equal(chunks, 1);
    redisReaderFree(r);
    reply_arena_free(a);
}

static void test_replyarena_large_reply(void **state)
{
    struct reply_arena *a = reply_arena_new();
    redisReader *r = reader_with(a);
    enum { N = 5000, BIG = 100000 };
    char hdr[64];
    size_t chunks, allocated;
    (void)state;

    /* N short strings and one string larger than a chunk. */
    snprintf(hdr, sizeof hdr, "*%d\r\n", N + 1);
    assert_int_equal(redisReaderFeed(r, hdr, strlen(hdr)), REDIS_OK);
    for (int i = 0; i < N; i++) {
        char e[32];
        int len = snprintf(e, sizeof e, "%d", i);
        snprintf(hdr, sizeof hdr, "$%d\r\n%s\r\n", len, e);
        assert_int_equal(redisReaderFeed(r, hdr, strlen(hdr)), REDIS_OK);
    }
    char *big = malloc(BIG + 64);
    assert_non_null(big);
    int off = snprintf(big, 64, "$%d\r\n", BIG);
    memset(big + off, 'x', BIG);
    memcpy(big + off + BIG, "\r\n", 2);
    assert_int_equal(redisReaderFeed(r, big, (size_t)off + BIG + 2), REDIS_OK);
    free(big);

    redisReply *rep = get_one(r);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->elements, N + 1);
    for (int i = 0; i < N; i++) {
        char e[32];
        snprintf(e, sizeof e, "%d", i);
        assert_string_equal(rep->element[i]->str, e);
    }
    assert_int_equal(rep->element[N]->len, BIG);
    assert_int_equal(rep->element[N]->str[0], 'x');
    assert_int_equal(rep->element[N]->str[BIG - 1], 'x');
    assert_int_equal(rep->element[N]->str[BIG], '\0');
    reply_arena_stats(a, &chunks, &allocated);
    assert_true(chunks > 2);
    r->fn->freeObject(rep);
    /* Given back down to what the arena keeps. */
    reply_arena_stats(a, &chunks, &allocated);
    assert_true(chunks * REPLY_ARENA_CHUNK <= REPLY_ARENA_KEEP);

    /* And it still works after. */
    assert_int_equal(redisReaderFeed(r, NESTED, sizeof NESTED - 1), REDIS_OK);
    rep = get_one(r);
    check_nested(rep);
    r->fn->freeObject(rep);
    redisReaderFree(r);
    reply_arena_free(a);
}

static void test_replyarena_protocol_error(void **state)
{
    struct reply_arena *a = reply_arena_new();
    redisReader *r = reader_with(a);
    void *rep = NULL;
    (void)state;

    /* Half a reply, then a byte that starts no RESP type. */
    const char bad[] = "*3\r\n$1\r\na\r\n:7\r\n?\r\n";
    assert_int_equal(redisReaderFeed(r, bad, sizeof bad - 1), REDIS_OK);
    assert_int_equal(redisReaderGetReply(r, &rep), REDIS_ERR);
    assert_null(rep);
    assert_true(r->err != 0);
    /* The half-built reply is freed with the reader; a new reader on the
     * same arena starts clean. */
    redisReaderFree(r);
    r = reader_with(a);

    /* An array that announces more elements than any reply has is an
     * error, not a huge allocation. */
    const char huge[] = "*2000000000\r\n";
    assert_int_equal(redisReaderFeed(r, huge, sizeof huge - 1), REDIS_OK);
    rep = NULL;
    assert_int_equal(redisReaderGetReply(r, &rep), REDIS_ERR);
    assert_null(rep);
    redisReaderFree(r);
    r = reader_with(a);
    assert_int_equal(redisReaderFeed(r, NESTED, sizeof NESTED - 1), REDIS_OK);
    rep = get_one(r);
    check_nested(rep);
    r->fn->freeObject(rep);
    redisReaderFree(r);
    reply_arena_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replyarena_shapes),
        cmocka_unit_test(test_replyarena_warm_allocates_nothing),
        cmocka_unit_test(test_replyarena_large_reply),
        cmocka_unit_test(test_replyarena_protocol_error),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
