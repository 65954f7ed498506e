/*
 * replyarena - hiredis reply objects built in memory that is kept and
 * reused, so that reading Redis's answers allocates nothing once warm.
 *
 * hiredis 0.14's default reader mallocs one redisReply per element of a
 * reply (and a string for each), then frees them after the callback: for
 * the counter script that is a dozen allocations per call. Attached to a
 * reader, an arena gives the reader its own object functions: the same
 * redisReply structs, laid out by a bump pointer in chunks that are kept,
 * and released all at once when hiredis frees the reply. Code reading the
 * replies does not change.
 *
 * Rules (they hold for hiredis's async API): one reader per arena; the
 * reader has at most one reply (being built or handed out) at a time, and
 * frees it (freeObject on the root) before it starts the next. The arena
 * must outlive the reader. A reply larger than the chunks gets a chunk of
 * its own; memory beyond REPLY_ARENA_KEEP is given back at the reset that
 * follows it, so one huge reply does not stay resident.
 * Pure: no I/O.
 */
#ifndef SMTPGUARD_REPLYARENA_H
#define SMTPGUARD_REPLYARENA_H

#include <stddef.h>

#include <hiredis/read.h>

#define REPLY_ARENA_CHUNK 16384         /* bytes per chunk */
#define REPLY_ARENA_KEEP (256 * 1024)   /* bytes kept across resets, at most */
/* Elements one array may announce, at most: "*2000000000" from a broken
 * or hostile server is a reader error (the connection is dropped), not
 * 16 GB asked of malloc. Our largest reply, a top query, has 2,001. */
#define REPLY_ARENA_MAX_ELEMENTS 65536

struct reply_arena;

struct reply_arena *reply_arena_new(void);
void reply_arena_free(struct reply_arena *a);

/* reply_arena_attach - reader builds its replies in a from now on (it
 * must not hold a reply at this moment). */
void reply_arena_attach(struct reply_arena *a, redisReader *reader);

/* reply_arena_stats - for tests: chunks held, and chunks allocated since
 * the arena was made. */
void reply_arena_stats(const struct reply_arena *a, size_t *chunks, size_t *allocated);

#endif
