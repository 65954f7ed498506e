/*
 * store_memory - the embedded counter store: a hash in this process.
 *
 * How it works:
 * - A chained hash of key -> {score, updated_at, expires_at}. Each entry
 *   is ONE allocation with the key bytes inline after the doubles (about
 *   40 bytes plus the key); a bucket costs 8 bytes, plus 4 for the
 *   sweep's due second, so a million keys cost about 100 bytes each, all
 *   included (a million-key fill: 95 MB of daemon for ~870,000 keys).
 * - The bucket array follows the keys held: it doubles when there are
 *   more keys than buckets (up to the cap's size) and halves when fewer
 *   than an eighth are used. Its size is the point: every lookup reads
 *   one bucket at random, and an array sized for the million-key cap
 *   (8 MB) made that read a cache and TLB miss on every key of every
 *   request, the largest single cost of the memory path. A resize is
 *   incremental, as Redis's is: the new array is filled a few buckets
 *   per apply, a key lives in the old array until its bucket has moved,
 *   and no apply waits for a whole rehash.
 * - The hash is SipHash-1-3 with a random key: counter keys come from
 *   peers (addresses, senders), and a fixed hash would let them pile
 *   every key into one chain.
 * - apply decays each score from its stored time to now (decay_apply,
 *   the same arithmetic as store_redis.lua), adds the points and sets the
 *   expiry to now + decay_ttl (at least a second, as the script does).
 *   A read (points == 0) of a missing key returns 0 and creates nothing;
 *   a read writes nothing either (decay composes, so the stored pair
 *   stays right), except that a score decayed to the floor is dropped.
 * - Memory follows the active keys: every apply sweeps a bounded number
 *   of buckets for expired entries (Redis's active expiry, in small
 *   steps; each chain keeps the whole second its first entry expires, so
 *   chains with nothing due are skipped without touching their entries),
 *   and a key that has expired reads as missing. At the cap, a
 *   new key first takes an expired one's place; failing that, the entry
 *   expiring first among a small random sample is evicted (Redis's
 *   approximated LRU, applied to expiry) and counted.
 * - Callbacks are deferred, never run from inside apply: completions
 *   queue up and a uv_check runs them right after the poll phase of the
 *   loop iteration in which they were queued. A uv_check alone would let
 *   the loop block in poll when apply was called from a timer or before
 *   uv_run, so an idle handle with an empty callback runs while the
 *   queue is non-empty: it makes libuv poll with a zero timeout. Both
 *   are stopped when the queue is empty, so an idle store costs nothing.
 * - Completion slots (with room for STORE_MAX_UPDATES scores) are kept
 *   on a free list and reused: no allocation per apply once warm.
 * - cfg->prefix is not used: these keys never leave the process.
 * - A score at or below the floor has a TTL of 0, so a key pushed below
 *   zero by negative points lives one second, here as in Redis.
 * - The top set is a pool of pointers to entries, a min-heap on (a lower
 *   bound of) the stored score (each entry knows its slot, so freeing it
 *   leaves the pool in O(log n)); an update that leaves a key at or above
 *   top_floor puts it in, replacing the member with the lowest stored
 *   score when the pool is full and the key beats it. A top query decays the
 *   members of one counter to now, leaves out those now below the floor
 *   and sorts the rest: O(pool), not O(keys).
 * - peek computes what a read would return and touches nothing.
 */
#include "store.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "decay.h"
#include "log.h"
#include "xalloc.h"

#define MEM_DEFAULT_MAX_KEYS 1000000
#define MEM_SWEEP_BUCKETS 32    /* buckets looked at to make room at the cap */
#define MEM_SWEEP_BASE 8        /* buckets looked at per apply */
#define MEM_SWEEP_PER_NEW 8     /* more per key created since the last apply */
#define MEM_SWEEP_MAX 256       /* buckets looked at per apply, at most */
#define MEM_MOVE_BUCKETS 32     /* buckets moved per apply while resizing */
#define MEM_MOVE_ENTRIES 64     /* no new chain moved in an apply past this many entries */
#define MEM_BUCKETS_MIN 1024    /* the array never shrinks below this (8 kB) */
#define MEM_SWEEP_ENTRIES 64    /* no new chain swept in an apply past this many entries */
#define MEM_IDLE_MS 1000        /* a second without applies: housekeeping on its own */
#define MEM_IDLE_STEPS 64       /* housekeeping steps per idle second */
#define MEM_EVICT_SAMPLE 5      /* entries compared to pick a victim */
#define MEM_EVICT_PROBES 64     /* buckets tried to fill the sample */
#define MEM_KEY_MAX 0xffffu     /* bytes; longer keys are refused */
#ifndef MEM_BUCKETS_MAX /* a unit test lowers it, for chains longer than the budgets above */
#define MEM_BUCKETS_MAX ((size_t)1 << 26) /* 512 MB of chains; past it chains grow */
#endif
/* (e->hash keeps 32 bits of the hash: enough for any array up to MEM_BUCKETS_MAX.) */
#define MEM_TOP_MAX 0xfffeu     /* entries in the top pool at most (top_slot is 16 bits) */

struct mem_entry {
    struct mem_entry *next;     /* bucket chain */
    double score;               /* points, as of updated_at */
    double updated_at;          /* seconds since the epoch */
    double expires_at;          /* seconds since the epoch */
    uint32_t hash;              /* low 32 bits of the key's hash */
    uint16_t key_len;           /* bytes in key[] (MEM_KEY_MAX at most) */
    uint16_t top_slot;          /* index in the top pool + 1; 0 = not in it */
    char key[];                 /* the key, not NUL-terminated */
};

/* A member of the top pool: the score it is ordered by is a lower bound
 * of e->score (see mem_top_offer). */
struct mem_top_slot {
    struct mem_entry *e;
    double score;
};

enum mem_done_kind {
    MEM_DONE_APPLY,
    MEM_DONE_RESET,
    MEM_DONE_TOP
};

/* A queued completion; reused through the free list. */
struct mem_done {
    struct mem_done *next;      /* queue or free list */
    enum mem_done_kind kind;    /* which callback */
    store_done_cb apply_cb;     /* MEM_DONE_APPLY */
    store_reset_cb reset_cb;    /* MEM_DONE_RESET */
    store_top_cb top_cb;        /* MEM_DONE_TOP */
    struct store_top_entry *top; /* MEM_DONE_TOP: n entries, keys inline after them; freed after */
    void *arg;                  /* the caller's */
    int status;                 /* STORE_OK or STORE_TEMPFAIL */
    size_t n;                   /* scores */
    double now;                 /* seconds since the epoch */
    double scores[STORE_MAX_UPDATES]; /* points */
};

/* A bucket array and its chains' due seconds. */
struct mem_table {
    struct mem_entry **buckets; /* chains; NULL = no table */
    uint32_t *due;              /* per chain: at most the whole second its first entry expires */
    size_t n;                   /* buckets, a power of two */
};

struct store {
    struct store_base base;     /* must come first */
    uv_loop_t *loop;            /* not owned */
    double loop_epoch;          /* wall-clock seconds at loop time 0 (see mem_now) */
    uv_check_t check;           /* runs the completions */
    uv_idle_t idle;             /* keeps poll from blocking while some are queued */
    uv_timer_t idle_timer;      /* housekeeping while no request comes */
    bool applied;               /* an apply since the last idle tick */
    int handles_open;           /* handles not yet closed */
    bool closing;               /* close() was called */
    struct mem_table tab;       /* the table; while resizing, the one being emptied */
    struct mem_table next;      /* while resizing, the one being filled; else empty */
    size_t move_cursor;         /* while resizing: tab's buckets below it have moved */
    size_t min_buckets;         /* the array's size at open, and at least after a shrink */
    size_t max_buckets;         /* the array's size at the cap, at most */
    size_t count;               /* entries held */
    size_t max_keys;            /* cap on count */
    size_t sweep_cursor;        /* next bucket the sweep looks at */
    size_t created;             /* keys created since the last sweep step */
    unsigned long long evictions; /* entries dropped by the cap before they expired */
    uint64_t sip_k0, sip_k1;    /* hash key */
    uint64_t rng;               /* xorshift state for eviction samples */
    struct mem_done *queue_head, *queue_tail; /* completions to run */
    struct mem_done *free_slots; /* reusable completion slots */
    struct log_limiter lim;     /* for refused applies */
    struct mem_top_slot *top;   /* the top pool, a min-heap (see mem_top_fix) */
    size_t top_n;               /* members */
    size_t top_cap;             /* members at most; 0 = no top set */
    double top_floor;           /* points to enter the pool */
};

static double store_memory_clock_real(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double (*store_memory_clock)(void) = store_memory_clock_real;

/*
 * mem_now - the store's clock, seconds since the epoch. With the real
 * clock: the event loop's time of this turn, placed on the wall clock by
 * the offset taken at open. libuv keeps that time, so reading it costs
 * no clock_gettime (one of three clock reads a memory-store request
 * made, ~45 ns each on this kind of virtual machine); a millisecond's
 * resolution is plenty for decay, and a clock that never steps keeps
 * every dt right. An injected clock (tests, explain, replay) is read.
 */
static double mem_now(const struct store *st)
{
    if (store_memory_clock != store_memory_clock_real)
        return store_memory_clock();
    return st->loop_epoch + (double)uv_now(st->loop) / 1e3;
}

/* mem_siphash - SipHash-1-3 of the key: one round per 8 bytes and three
 * to finish, as Rust's and CPython's hash tables use it. The rounds of
 * SipHash-2-4 were a twentieth of a memory-store request's instructions;
 * a hash table keyed at random needs no more than 1-3 (the key, not the
 * rounds, is what keeps peers from aiming collisions at one bucket). */
static uint64_t mem_siphash(const struct store *st, const char *key, size_t len)
{
    uint64_t v0 = st->sip_k0 ^ 0x736f6d6570736575ULL, v1 = st->sip_k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = st->sip_k0 ^ 0x6c7967656e657261ULL, v3 = st->sip_k1 ^ 0x7465646279746573ULL;
    const unsigned char *p = (const unsigned char *)key;
    uint64_t m, b = (uint64_t)len << 56;
    size_t i;

#define ROTL(x, s) (((x) << (s)) | ((x) >> (64 - (s))))
#define SIPROUND                                                                                   \
    do {                                                                                           \
        v0 += v1;                                                                                  \
        v1 = ROTL(v1, 13);                                                                         \
        v1 ^= v0;                                                                                  \
        v0 = ROTL(v0, 32);                                                                         \
        v2 += v3;                                                                                  \
        v3 = ROTL(v3, 16);                                                                         \
        v3 ^= v2;                                                                                  \
        v0 += v3;                                                                                  \
        v3 = ROTL(v3, 21);                                                                         \
        v3 ^= v0;                                                                                  \
        v2 += v1;                                                                                  \
        v1 = ROTL(v1, 17);                                                                         \
        v1 ^= v2;                                                                                  \
        v2 = ROTL(v2, 32);                                                                         \
    } while (0)

    for (i = 0; i + 8 <= len; i += 8) {
        /* Host byte order: on a big-endian host the value differs from
         * reference SipHash, which a private table does not care about. */
        memcpy(&m, p + i, 8);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t j = 0; i + j < len; j++)
        b |= (uint64_t)p[i + j] << (8 * j);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
#undef SIPROUND
#undef ROTL
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t mem_random(struct store *st)
{
    /* xorshift64: eviction samples need spread, not secrecy. */
    uint64_t x = st->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    st->rng = x;
    return x;
}

/* mem_chain - the table and bucket that hold (or would hold) a key of
 * hash h: while resizing, the new table once h's old bucket has moved. */
static struct mem_table *mem_chain(struct store *st, uint64_t h, size_t *b)
{
    size_t old = h & (st->tab.n - 1);

    if (st->next.buckets && old < st->move_cursor) {
        *b = h & (st->next.n - 1);
        return &st->next;
    }
    *b = old;
    return &st->tab;
}

/* mem_find_in - the entry for key in the chain at head and the link
 * that points to it, or NULL. */
static struct mem_entry *mem_find_in(struct mem_entry **head, const char *key, size_t len,
                                     uint64_t h, struct mem_entry ***linkp)
{
    struct mem_entry **link = head;

    for (struct mem_entry *e = *link; e; link = &e->next, e = e->next)
        if (e->hash == (uint32_t)h && e->key_len == len && memcmp(e->key, key, len) == 0) {
            *linkp = link;
            return e;
        }
    *linkp = link;
    return NULL;
}

/* mem_find - the entry for key and the link that points to it, or NULL. */
static struct mem_entry *mem_find(struct store *st, const char *key, size_t len, uint64_t h,
                                  struct mem_entry ***linkp)
{
    size_t b;
    struct mem_table *t = mem_chain(st, h, &b);
    return mem_find_in(&t->buckets[b], key, len, h, linkp);
}

/*
 * The top pool is a binary min-heap of (entry, score) slots: the member
 * with the lowest score, the one a newcomer must beat, is top[0]. A full
 * pool that scanned all its members to find it paid a cold cache miss
 * per member on every update of a key above the floor but below them all
 * (1,600 misses a request once a million-key fill had filled the pool
 * with its /24 counters). The heap orders by the score a slot holds,
 * which lags the entry's: a member's update that raises its score (the
 * usual one) leaves the heap alone, so the slot's score stays a lower
 * bound of the entry's; one that lowers it is put in at once. The root is
 * brought up to date only when a newcomer beats its slot's score, so
 * "does it get in?" reads one slot, and sifting reads only the array.
 */
static void mem_top_put(struct store *st, size_t i, struct mem_entry *e, double score)
{
    st->top[i].e = e;
    st->top[i].score = score;
    e->top_slot = (uint16_t)(i + 1);
}

/* mem_top_fix - restore the heap order around slot i after its score changed. */
static void mem_top_fix(struct store *st, size_t i)
{
    struct mem_top_slot t = st->top[i];

    while (i > 0 && st->top[(i - 1) / 2].score > t.score) {
        mem_top_put(st, i, st->top[(i - 1) / 2].e, st->top[(i - 1) / 2].score);
        i = (i - 1) / 2;
    }
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= st->top_n)
            break;
        if (c + 1 < st->top_n && st->top[c + 1].score < st->top[c].score)
            c++;
        if (st->top[c].score >= t.score)
            break;
        mem_top_put(st, i, st->top[c].e, st->top[c].score);
        i = c;
    }
    mem_top_put(st, i, t.e, t.score);
}

/* mem_top_remove - take e out of the top pool (the last member takes its slot). */
static void mem_top_remove(struct store *st, struct mem_entry *e)
{
    size_t i = (size_t)e->top_slot - 1;
    struct mem_top_slot last = st->top[--st->top_n];

    e->top_slot = 0;
    if (i < st->top_n) {
        mem_top_put(st, i, last.e, last.score);
        mem_top_fix(st, i);
    }
}

/* mem_top_offer - e was just updated: for a member, keep its slot a lower
 * bound of its score; else put e in if it made the floor, in place of the
 * lowest member if the pool is full and e beats it. Stored scores are
 * compared, as Redis's sorted set does. */
static void mem_top_offer(struct store *st, struct mem_entry *e)
{
    if (!st->top_cap)
        return;
    if (e->top_slot) {
        size_t i = (size_t)e->top_slot - 1;
        if (e->score < st->top[i].score) {
            st->top[i].score = e->score;
            mem_top_fix(st, i);
        }
        return;
    }
    if (e->score < st->top_floor)
        return;
    if (st->top_n == st->top_cap) {
        if (st->top[0].score >= e->score)
            return;
        /* The root's slot may lag its entry: bring it up to date until
         * the root is the true lowest, then compare again. */
        while (st->top[0].score < st->top[0].e->score) {
            st->top[0].score = st->top[0].e->score;
            mem_top_fix(st, 0);
        }
        if (st->top[0].score >= e->score)
            return;
        mem_top_remove(st, st->top[0].e);
    }
    mem_top_put(st, st->top_n++, e, e->score);
    mem_top_fix(st, st->top_n - 1);
}

/* mem_unlink_free - drop the entry *link points to. */
static void mem_unlink_free(struct store *st, struct mem_entry **link)
{
    struct mem_entry *e = *link;
    if (e->top_slot)
        mem_top_remove(st, e);
    *link = e->next;
    free(e);
    st->count--;
}

/* mem_due - an expiry time as the whole second at or before it. */
static uint32_t mem_due(double expires_at)
{
    if (!(expires_at > 0))
        return 0;
    return expires_at >= (double)UINT32_MAX ? UINT32_MAX - 1 : (uint32_t)expires_at;
}

/* mem_due_lower - an entry of t's bucket b now expires at expires_at:
 * keep t->due[b] at or below every entry's second. */
static void mem_due_lower(struct mem_table *t, size_t b, double expires_at)
{
    uint32_t due = mem_due(expires_at);
    if (due < t->due[b])
        t->due[b] = due;
}

/*
 * mem_pages - bytes of zeroed memory straight from the kernel, given
 * back by mem_pages_free. The arrays come and go as the table resizes,
 * and a shrink should give memory back; from malloc, glibc serves a
 * large block from its heap once its mmap threshold has risen past that
 * size (each large free raises it), and a block freed inside the heap
 * stays in the process.
 */
static void *mem_pages(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        fprintf(stderr, "smtpguard: out of memory mapping %zu bytes\n", bytes);
        abort();
    }
    return p;
}

static void mem_pages_free(void *p, size_t bytes)
{
    if (p)
        munmap(p, bytes);
}

/* mem_table_alloc - n empty buckets; an empty chain has nothing due. */
static void mem_table_alloc(struct mem_table *t, size_t n)
{
    t->n = n;
    t->buckets = mem_pages(n * sizeof *t->buckets);
    t->due = mem_pages(n * sizeof *t->due);
    memset(t->due, 0xff, n * sizeof *t->due);
}

static void mem_table_free(struct mem_table *t)
{
    mem_pages_free(t->buckets, t->n * sizeof *t->buckets);
    mem_pages_free(t->due, t->n * sizeof *t->due);
    *t = (struct mem_table){0};
}

/* mem_resize_start - begin moving every key to an array of n buckets. */
static void mem_resize_start(struct store *st, size_t n)
{
    mem_table_alloc(&st->next, n);
    st->move_cursor = 0;
}

/*
 * mem_resize_step - move a bounded stretch of the old array's chains to
 * the new one (expired entries are freed on the way: while resizing,
 * this is the sweep); the last step frees the old array.
 * A chain moves whole: mem_chain looks a key up in the old array until
 * the cursor has passed its bucket, so an entry moved from a bucket the
 * cursor is still on would be out of sight (an update would create the
 * key anew, a reset would miss it). The entry budget only decides
 * whether to start another chain.
 */
static void mem_resize_step(struct store *st, double now)
{
    struct mem_table *to = &st->next;
    size_t moved = 0;

    for (size_t k = 0;
         k < MEM_MOVE_BUCKETS && moved < MEM_MOVE_ENTRIES && st->move_cursor < st->tab.n; k++) {
        struct mem_entry **link = &st->tab.buckets[st->move_cursor];
        while (*link) {
            struct mem_entry *e = *link;
            moved++;
            if (e->expires_at <= now) {
                mem_unlink_free(st, link);
                continue;
            }
            size_t b = e->hash & (to->n - 1);
            *link = e->next;
            e->next = to->buckets[b];
            to->buckets[b] = e;
            mem_due_lower(to, b, e->expires_at);
        }
        st->move_cursor++;
    }
    if (st->move_cursor == st->tab.n) {
        mem_table_free(&st->tab);
        st->tab = *to;
        *to = (struct mem_table){0};
        st->sweep_cursor = 0;
    }
}

/*
 * mem_sweep - free expired entries from a bounded stretch of buckets.
 * A bucket whose due second is still ahead holds nothing expired, so the
 * sweep skips it after reading two arrays in order, without touching its
 * entries: with a million keys those are cold, and walking them was the
 * larger part of the cache misses a request (cachegrind: 47 of 138).
 * A chain is walked to its end and gets its due second anew; the entry
 * budget only decides whether to start another. (A sweep that stopped
 * inside a chain would start it from its head again next time: a chain
 * longer than the budget, as past MEM_BUCKETS_MAX keys, held the sweep
 * on that bucket for good.)
 */
static void mem_sweep(struct store *st, double now, size_t max_buckets)
{
    struct mem_entry **buckets = st->tab.buckets;
    uint32_t *bucket_due = st->tab.due;
    size_t mask = st->tab.n - 1, cur = st->sweep_cursor, looked = 0;

    if (st->count == 0)
        return;
    for (size_t b = 0; b < max_buckets && looked < MEM_SWEEP_ENTRIES; b++) {
        struct mem_entry **link = &buckets[cur];
        if (*link && (double)bucket_due[cur] <= now) {
            uint32_t due = UINT32_MAX;
            while (*link) {
                looked++;
                if ((*link)->expires_at <= now) {
                    mem_unlink_free(st, link);
                } else {
                    uint32_t d = mem_due((*link)->expires_at);
                    if (d < due)
                        due = d;
                    link = &(*link)->next;
                }
            }
            bucket_due[cur] = due;
        }
        cur = (cur + 1) & mask;
    }
    st->sweep_cursor = cur;
}

/*
 * mem_housekeep_step - a resize step while resizing, else a sweep step,
 * then a shrink if the array is 8 times the keys held. mem_housekeep runs
 * one per apply (the idle timer runs them between requests, below).
 * The sweep looks at 8 more buckets for every key created since the last
 * step, so while applies create up to 31 keys each it goes round an
 * array of n buckets before n/8 keys are created: the expired keys still
 * waiting for it stay under an eighth of the array and cannot make it
 * grow. Past that the caps hold it (MEM_SWEEP_MAX buckets a step, and
 * no chain started past MEM_SWEEP_ENTRIES entries): batches of new
 * clients that large outrun it, the array may then grow with expired
 * keys in it, and its resize steps free them as they move the chains.
 * With no new keys it looks at 8 a step (it was 32 for any apply): still
 * round a 32,768-bucket array every 4,096 applies, and a quarter of the
 * sequential reads.
 */
static void mem_housekeep_step(struct store *st, double now, size_t sweep_buckets)
{
    if (st->next.buckets) {
        mem_resize_step(st, now);
        return;
    }
    mem_sweep(st, now, sweep_buckets);
    if (st->tab.n > st->min_buckets && st->count < st->tab.n / 8)
        mem_resize_start(st, st->tab.n / 2);
}

static void mem_housekeep(struct store *st, double now)
{
    size_t budget = MEM_SWEEP_BASE + MEM_SWEEP_PER_NEW * st->created;
    st->created = 0;
    mem_housekeep_step(st, now, budget < MEM_SWEEP_MAX ? budget : MEM_SWEEP_MAX);
}

/* mem_evict - make room for one key: drop the entry expiring first among
 * a small random sample (an expired one if the sample holds any). */
static void mem_evict(struct store *st, double now)
{
    struct mem_entry **victim = NULL;
    size_t seen = 0;

    for (int probe = 0; probe < MEM_EVICT_PROBES && seen < MEM_EVICT_SAMPLE; probe++) {
        size_t b;
        struct mem_table *t = mem_chain(st, mem_random(st), &b);
        for (struct mem_entry **link = &t->buckets[b]; *link && seen < MEM_EVICT_SAMPLE;
             link = &(*link)->next) {
            seen++;
            if (!victim || (*link)->expires_at < (*victim)->expires_at)
                victim = link;
        }
    }
    if (!victim) {
        /* Every probe hit an empty bucket: with the table at least as
         * big as the cap that takes bad luck; walk to the next entry. */
        struct mem_table *tabs[] = {&st->tab, &st->next}; /* next: empty unless resizing */
        for (size_t k = 0; k < 2 && !victim; k++)
            for (size_t b = 0; b < tabs[k]->n && !victim; b++)
                if (tabs[k]->buckets[b])
                    victim = &tabs[k]->buckets[b];
        if (!victim)
            return;
    }
    if ((*victim)->expires_at > now)
        st->evictions++;
    mem_unlink_free(st, victim);
}

/* mem_expiry - when a score written now stops counting: decay_ttl, but
 * at least a second, as store_redis.lua does with PX. */
static double mem_expiry(const struct decay *d, double score, double now)
{
    double ttl = decay_ttl(d, score);
    return now + (ttl < 1 ? 1 : ttl);
}

/*
 * Each lookup reads a bucket and then an entry, both likely cold (keys
 * are many and asked for at random), so looking an apply's keys up one
 * after the other waits for two cache misses per key in a row. Instead
 * mem_hash_all hashes every key and asks for its bucket at once, the
 * sweep step runs while those load, mem_prefetch_entries asks for each
 * chain's first entry (and where the key would end, in case it runs
 * into the next cache line), and only then are the keys looked up: the
 * misses of one request's keys overlap each other and other work.
 * Prefetches are only hints: nothing here may change what a lookup finds.
 */
static void mem_hash_all(struct store *st, const struct store_update *u, size_t n, uint64_t *h)
{
    size_t b;

    for (size_t i = 0; i < n; i++) {
        h[i] = mem_siphash(st, u[i].key, u[i].key_len);
        struct mem_table *t = mem_chain(st, h[i], &b);
        __builtin_prefetch(&t->buckets[b]);
    }
}

static void mem_prefetch_entries(struct store *st, const struct store_update *u,
                                 const uint64_t *h, size_t n)
{
    size_t b;

    for (size_t i = 0; i < n; i++) {
        struct mem_table *t = mem_chain(st, h[i], &b);
        const struct mem_entry *e = t->buckets[b];
        if (e) {
            __builtin_prefetch(e);
            /* As an address: the entry's key may be shorter than this one. */
            if (u[i].key_len > 0)
                __builtin_prefetch((const void *)((uintptr_t)e->key + u[i].key_len - 1));
        }
    }
}

/* mem_update - apply one update of key hash h at now; returns the new score. */
static double mem_update(struct store *st, const struct store_update *u, uint64_t h, double now)
{
    size_t b;
    struct mem_table *t = mem_chain(st, h, &b);
    struct mem_entry **link;
    struct mem_entry *e = mem_find_in(&t->buckets[b], u->key, u->key_len, h, &link);
    double score;

    if (e && e->expires_at <= now) {
        /* Expired but not swept yet: as good as missing. */
        mem_unlink_free(st, link);
        e = NULL;
    }
    if (e && link != &t->buckets[b]) {
        /* Move to front: a key that is asked for again is found first
         * next time, so a lookup of a busy key does not touch the other
         * (likely cold) entries of its chain. */
        struct mem_entry **head = &t->buckets[b];
        *link = e->next;
        e->next = *head;
        *head = e;
        link = head;
    }
    if (u->points == 0) {
        if (!e)
            return 0;
        score = decay_apply(&u->decay, e->score, now - e->updated_at, 0);
        if (decay_ttl(&u->decay, score) == 0)
            mem_unlink_free(st, link);
        return score;
    }
    if (e) {
        score = decay_apply(&u->decay, e->score, now - e->updated_at, u->points);
    } else {
        score = decay_apply(&u->decay, 0, 0, u->points);
        if (st->count >= st->max_keys) {
            if (!st->next.buckets)
                mem_sweep(st, now, MEM_SWEEP_BUCKETS);
            while (st->count >= st->max_keys)
                mem_evict(st, now);
            /* Eviction may have unlinked entries of our chain. */
            link = &t->buckets[b];
        }
        e = xmalloc(sizeof *e + u->key_len);
        e->hash = (uint32_t)h;
        e->key_len = (uint16_t)u->key_len;
        e->top_slot = 0;
        e->expires_at = INFINITY; /* set below, with its chain's due second */
        memcpy(e->key, u->key, u->key_len);
        e->next = *link;
        *link = e;
        st->count++;
        st->created++;
        if (st->count > st->tab.n && st->tab.n < st->max_buckets && !st->next.buckets)
            mem_resize_start(st, st->tab.n * 2); /* e stays where it is until its bucket moves */
    }
    e->score = score;
    e->updated_at = now;
    double expires_at = mem_expiry(&u->decay, score, now);
    /* The chain's due second moves only when this entry's expiry comes
     * earlier than before (a new entry, negative points): a score raised
     * lives longer, and skipping the due array spares a cache line. */
    if (expires_at < e->expires_at)
        mem_due_lower(t, b, expires_at);
    e->expires_at = expires_at;
    mem_top_offer(st, e);
    return score;
}

/* mem_read - what a read of u->key returns at now, changing nothing. */
static double mem_read(struct store *st, const struct store_update *u, double now)
{
    uint64_t h = mem_siphash(st, u->key, u->key_len);
    struct mem_entry **link;
    struct mem_entry *e = mem_find(st, u->key, u->key_len, h, &link);

    if (!e || e->expires_at <= now)
        return 0;
    return decay_apply(&u->decay, e->score, now - e->updated_at, 0);
}

static struct mem_done *mem_done_get(struct store *st)
{
    struct mem_done *d = st->free_slots;

    if (d)
        st->free_slots = d->next;
    else
        d = xmalloc(sizeof *d);
    d->next = NULL;
    d->apply_cb = NULL;
    d->reset_cb = NULL;
    d->top_cb = NULL;
    d->top = NULL;
    d->n = 0;
    d->now = 0;
    d->status = STORE_OK;
    return d;
}

static void mem_check_cb(uv_check_t *h);

static void mem_idle_cb(uv_idle_t *h)
{
    /* Nothing: being active is the point (poll does not block). */
    (void)h;
}

/* mem_done_queue - append d; the check handle runs it after this call. */
static void mem_done_queue(struct store *st, struct mem_done *d)
{
    if (st->queue_tail)
        st->queue_tail->next = d;
    else
        st->queue_head = d;
    st->queue_tail = d;
    if (!st->closing && !uv_is_active((uv_handle_t *)&st->check)) {
        uv_check_start(&st->check, mem_check_cb);
        uv_idle_start(&st->idle, mem_idle_cb);
    }
}

/* mem_done_run - pop the head, run its callback, recycle the slot. */
static void mem_done_run(struct store *st)
{
    struct mem_done *d = st->queue_head;

    st->queue_head = d->next;
    if (!st->queue_head)
        st->queue_tail = NULL;
    if (st->closing)
        d->status = STORE_TEMPFAIL;
    if (d->kind == MEM_DONE_APPLY)
        d->apply_cb(d->arg, d->status, d->status == STORE_OK ? d->scores : NULL,
                    d->status == STORE_OK ? d->n : 0, d->now);
    else if (d->kind == MEM_DONE_TOP)
        d->top_cb(d->arg, d->status, d->status == STORE_OK ? d->top : NULL,
                  d->status == STORE_OK ? d->n : 0);
    else if (d->reset_cb)
        d->reset_cb(d->arg, d->status);
    free(d->top);
    d->top = NULL;
    d->next = st->free_slots;
    st->free_slots = d;
}

static void mem_check_cb(uv_check_t *h)
{
    struct store *st = h->data;
    size_t todo = 0;

    /* Only what was queued before this turn: a callback that applies
     * again is answered on the next turn, so it cannot starve the loop. */
    for (struct mem_done *d = st->queue_head; d; d = d->next)
        todo++;
    while (todo-- > 0 && st->queue_head && !st->closing)
        mem_done_run(st);
    if (!st->queue_head && !st->closing) {
        uv_check_stop(&st->check);
        uv_idle_stop(&st->idle);
    }
}

/*
 * The sweep and the shrink run inside applies; with no traffic they would
 * never run, and a burst's expired keys would hold their memory (and the
 * keys gauge) until requests came back. A timer does the same steps in
 * a second without applies: MEM_IDLE_STEPS of them, each a resize step or
 * a sweep of MEM_SWEEP_MAX buckets, so an idle store of a million keys is
 * swept in under a minute, in small slices of the loop.
 */
static void mem_on_idle_timer(uv_timer_t *t)
{
    struct store *st = t->data;
    if (st->applied) {
        st->applied = false;
        return;
    }
    double now = mem_now(st);
    for (int i = 0; i < MEM_IDLE_STEPS; i++)
        mem_housekeep_step(st, now, MEM_SWEEP_MAX);
}

static int mem_open(struct store **out, const struct store_config *cfg, uv_loop_t *loop, char *err,
                    size_t errlen)
{
    struct store *st = xcalloc(1, sizeof *st);
    uint64_t seed[3];
    int rc;

    st->base.ops = &store_memory_ops;
    st->loop = loop;
    uv_update_time(loop);
    st->loop_epoch = store_memory_clock_real() - (double)uv_now(loop) / 1e3;
    st->max_keys = cfg->memory_max_keys ? cfg->memory_max_keys : MEM_DEFAULT_MAX_KEYS;
    /* Load factor at most 1 at the cap; below it the array follows the
     * keys held (see the top). */
    st->max_buckets = 16;
    while (st->max_buckets < st->max_keys && st->max_buckets < MEM_BUCKETS_MAX)
        st->max_buckets <<= 1;
    st->min_buckets = st->max_buckets < MEM_BUCKETS_MIN ? st->max_buckets : MEM_BUCKETS_MIN;
    rc = uv_random(NULL, NULL, seed, sizeof seed, 0, NULL);
    if (rc < 0) {
        snprintf(err, errlen, "memory store: no random seed: %s", uv_strerror(rc));
        free(st);
        return rc;
    }
    st->sip_k0 = seed[0];
    st->sip_k1 = seed[1];
    st->rng = seed[2] | 1;
    mem_table_alloc(&st->tab, st->min_buckets);
    if (cfg->top_floor > 0 && cfg->top_size > 0) {
        size_t cap = (size_t)cfg->top_size * STORE_TOP_POOL_FACTOR;
        st->top_cap = cap > MEM_TOP_MAX ? MEM_TOP_MAX : cap;
        st->top_floor = cfg->top_floor;
        st->top = xcalloc(st->top_cap, sizeof *st->top);
    }
    uv_check_init(loop, &st->check);
    uv_idle_init(loop, &st->idle);
    uv_timer_init(loop, &st->idle_timer);
    st->check.data = st;
    st->idle.data = st;
    st->idle_timer.data = st;
    uv_timer_start(&st->idle_timer, mem_on_idle_timer, MEM_IDLE_MS, MEM_IDLE_MS);
    uv_unref((uv_handle_t *)&st->idle_timer);
    st->handles_open = 3;
    *out = st;
    return 0;
}

static void mem_apply(struct store *st, const struct store_update *u, size_t n, store_done_cb cb,
                      void *arg)
{
    struct mem_done *d = mem_done_get(st);

    d->kind = MEM_DONE_APPLY;
    d->apply_cb = cb;
    d->arg = arg;
    if (st->closing) {
        d->status = STORE_TEMPFAIL;
    } else if (n > STORE_MAX_UPDATES) {
        log_warn_every(&st->lim, 60, "memory store: %zu updates in one apply, at most %d", n,
                       STORE_MAX_UPDATES);
        d->status = STORE_TEMPFAIL;
    } else {
        double now = mem_now(st);
        for (size_t i = 0; i < n; i++)
            if (u[i].key_len > MEM_KEY_MAX) {
                log_warn_every(&st->lim, 60, "memory store: key of %zu bytes refused",
                               u[i].key_len);
                d->status = STORE_TEMPFAIL;
            }
        if (d->status == STORE_OK) {
            uint64_t h[STORE_MAX_UPDATES];
            mem_hash_all(st, u, n, h);
            mem_housekeep(st, now);
            st->applied = true;
            mem_prefetch_entries(st, u, h, n);
            for (size_t i = 0; i < n; i++)
                d->scores[i] = mem_update(st, &u[i], h[i], now);
            d->n = n;
            d->now = now;
        }
    }
    mem_done_queue(st, d);
}

static void mem_peek(struct store *st, const struct store_update *u, size_t n, store_done_cb cb,
                     void *arg)
{
    struct mem_done *d = mem_done_get(st);

    d->kind = MEM_DONE_APPLY;
    d->apply_cb = cb;
    d->arg = arg;
    if (st->closing || n > STORE_MAX_UPDATES) {
        d->status = STORE_TEMPFAIL;
    } else {
        double now = mem_now(st);
        for (size_t i = 0; i < n; i++)
            d->scores[i] = mem_read(st, &u[i], now);
        d->n = n;
        d->now = now;
    }
    mem_done_queue(st, d);
}

static int mem_top_cmp(const void *a, const void *b)
{
    const struct store_top_entry *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    if (x->key_len != y->key_len)
        return x->key_len < y->key_len ? -1 : 1;
    return memcmp(x->key, y->key, x->key_len);
}

static void mem_top(struct store *st, const char *counter, const struct decay *dc, size_t n,
                    store_top_cb cb, void *arg)
{
    struct mem_done *d = mem_done_get(st);
    size_t clen = strlen(counter), found = 0, bytes = 0;
    double now = mem_now(st);

    d->kind = MEM_DONE_TOP;
    d->top_cb = cb;
    d->arg = arg;
    if (st->closing) {
        d->status = STORE_TEMPFAIL;
        mem_done_queue(st, d);
        return;
    }
    if (n > STORE_MAX_TOP)
        n = STORE_MAX_TOP;
    /* Members of this counter: "NAME:" starts their keys. */
    for (size_t i = 0; i < st->top_n; i++) {
        const struct mem_entry *e = st->top[i].e;
        if (e->key_len > clen && e->key[clen] == ':' && memcmp(e->key, counter, clen) == 0 &&
            e->expires_at > now) {
            found++;
            bytes += e->key_len;
        }
    }
    struct store_top_entry *t = xmalloc(found * sizeof *t + bytes + 1);
    char *kp = (char *)(t + found);
    size_t k = 0;
    for (size_t i = 0; i < st->top_n && k < found; i++) {
        const struct mem_entry *e = st->top[i].e;
        if (!(e->key_len > clen && e->key[clen] == ':' && memcmp(e->key, counter, clen) == 0 &&
              e->expires_at > now))
            continue;
        memcpy(kp, e->key, e->key_len);
        t[k].key = kp;
        t[k].key_len = e->key_len;
        t[k].score = decay_apply(dc, e->score, now - e->updated_at, 0);
        if (t[k].score < st->top_floor)
            continue; /* decayed below the floor since it entered */
        kp += e->key_len;
        k++;
    }
    qsort(t, k, sizeof *t, mem_top_cmp);
    d->top = t;
    d->n = k < n ? k : n;
    d->now = now;
    mem_done_queue(st, d);
}

static void mem_reset(struct store *st, const char *const *keys, const size_t *key_lens, size_t n,
                      store_reset_cb cb, void *arg)
{
    if (!st->closing) {
        for (size_t i = 0; i < n; i++) {
            struct mem_entry **link;
            uint64_t h = mem_siphash(st, keys[i], key_lens[i]);
            if (mem_find(st, keys[i], key_lens[i], h, &link))
                mem_unlink_free(st, link);
        }
    }
    if (cb) {
        struct mem_done *d = mem_done_get(st);
        d->kind = MEM_DONE_RESET;
        d->reset_cb = cb;
        d->arg = arg;
        d->status = st->closing ? STORE_TEMPFAIL : STORE_OK;
        mem_done_queue(st, d);
    }
}

static bool mem_is_up(const struct store *st)
{
    return !st->closing;
}

/* mem_free - everything, once the handles are closed and the queue ran. */
static void mem_free(struct store *st)
{
    struct mem_table *tabs[] = {&st->tab, &st->next}; /* next: empty unless resizing */
    for (size_t k = 0; k < 2; k++) {
        for (size_t b = 0; b < tabs[k]->n; b++)
            while (tabs[k]->buckets[b])
                mem_unlink_free(st, &tabs[k]->buckets[b]);
        mem_table_free(tabs[k]);
    }
    free(st->top);
    while (st->free_slots) {
        struct mem_done *d = st->free_slots;
        st->free_slots = d->next;
        free(d);
    }
    free(st);
}

static void mem_close_cb(uv_handle_t *h)
{
    struct store *st = h->data;

    if (--st->handles_open > 0)
        return;
    /* Deferred failures of what was pending; a callback that applies
     * again is answered TEMPFAIL here too, until nothing is left. */
    while (st->queue_head)
        mem_done_run(st);
    mem_free(st);
}

static void mem_close(struct store *st)
{
    if (st->closing)
        return;
    st->closing = true;
    uv_close((uv_handle_t *)&st->check, mem_close_cb);
    uv_close((uv_handle_t *)&st->idle, mem_close_cb);
    uv_close((uv_handle_t *)&st->idle_timer, mem_close_cb);
}

void store_memory_stats(const struct store *st, size_t *keys, unsigned long long *evictions)
{
    if (keys)
        *keys = st->count;
    if (evictions)
        *evictions = st->evictions;
}

size_t store_memory_buckets(const struct store *st)
{
    return st->next.buckets ? st->next.n : st->tab.n;
}

const struct store_ops store_memory_ops = {
    .name = "memory",
    .open = mem_open,
    .apply = mem_apply,
    .reset = mem_reset,
    .peek = mem_peek,
    .top = mem_top,
    .is_up = mem_is_up,
    .close = mem_close,
};
