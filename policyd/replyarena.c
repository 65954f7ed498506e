/*
 * replyarena - hiredis reply objects in reusable chunks (see the header).
 */
#include "replyarena.h"

#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

#include "xalloc.h"

struct chunk {
    struct chunk *next;         /* in the arena's list */
    size_t cap;                 /* bytes in data */
    size_t used;                /* bytes handed out since the last reset */
    alignas(max_align_t) unsigned char data[]; /* the objects */
};

struct reply_arena {
    struct chunk *head;         /* first chunk; the list is kept across resets */
    struct chunk *cur;          /* the chunk being filled */
    void *root;                 /* the reply being built or handed out, or NULL */
    size_t chunks;              /* in the list */
    size_t allocated;           /* chunks ever allocated */
};

static struct chunk *chunk_new(struct reply_arena *a, size_t cap)
{
    struct chunk *c = xmalloc(sizeof *c + cap);

    c->next = NULL;
    c->cap = cap;
    c->used = 0;
    a->chunks++;
    a->allocated++;
    return c;
}

/* arena_alloc - size bytes, aligned for any object, zeroed. */
static void *arena_alloc(struct reply_arena *a, size_t size)
{
    size_t align = alignof(max_align_t);
    struct chunk *c = a->cur, *last = NULL;

    size = (size + align - 1) / align * align;
    if (size == 0)
        size = align;
    /* Later chunks are empty after a reset: move on until one fits. */
    while (c && c->cap - c->used < size) {
        last = c;
        c = c->next;
    }
    if (!c) {
        c = chunk_new(a, size > REPLY_ARENA_CHUNK ? size : REPLY_ARENA_CHUNK);
        if (last)
            last->next = c;
        else
            a->head = c;
    }
    a->cur = c;
    void *p = c->data + c->used;
    c->used += size;
    memset(p, 0, size);
    return p;
}

/* arena_reset - every object is gone: start over, give back what is over
 * REPLY_ARENA_KEEP. */
static void arena_reset(struct reply_arena *a)
{
    size_t kept = 0;
    struct chunk **pp = &a->head;

    while (*pp) {
        struct chunk *c = *pp;
        if (kept + c->cap > REPLY_ARENA_KEEP) {
            *pp = c->next;
            free(c);
            a->chunks--;
            continue;
        }
        kept += c->cap;
        c->used = 0;
        pp = &c->next;
    }
    a->cur = a->head;
    a->root = NULL;
}

/* Every object is preceded by the arena it lives in: freeObject gets
 * only the object, and this is how it finds its way back. */
struct object {
    struct reply_arena *arena;  /* owner */
    redisReply reply;           /* what hiredis and callers see */
};

/* new_object - a reply of type for task, linked into its parent array
 * as hiredis's own functions do. */
static redisReply *new_object(const redisReadTask *task, int type)
{
    struct reply_arena *a = task->privdata;
    struct object *o = arena_alloc(a, sizeof *o);
    redisReply *r = &o->reply;

    o->arena = a;
    r->type = type;
    if (task->parent) {
        redisReply *parent = task->parent->obj;
        if (parent && parent->type == REDIS_REPLY_ARRAY && task->idx >= 0 &&
            (size_t)task->idx < parent->elements)
            parent->element[task->idx] = r;
    } else {
        a->root = r;
    }
    return r;
}

static void *create_string(const redisReadTask *task, char *str, size_t len)
{
    struct reply_arena *a = task->privdata;
    redisReply *r = new_object(task, task->type);
    char *s = arena_alloc(a, len + 1);

    memcpy(s, str, len);
    s[len] = '\0';
    r->str = s;
    r->len = len;
    return r;
}

static void *create_array(const redisReadTask *task, int elements)
{
    struct reply_arena *a = task->privdata;

    if (elements > REPLY_ARENA_MAX_ELEMENTS)
        return NULL;    /* the reader reports "Out of memory" and stops */
    redisReply *r = new_object(task, REDIS_REPLY_ARRAY);

    if (elements > 0) {
        r->element = arena_alloc(a, (size_t)elements * sizeof *r->element);
        r->elements = (size_t)elements;
    }
    return r;
}

static void *create_integer(const redisReadTask *task, long long value)
{
    redisReply *r = new_object(task, REDIS_REPLY_INTEGER);

    r->integer = value;
    return r;
}

static void *create_nil(const redisReadTask *task)
{
    return new_object(task, REDIS_REPLY_NIL);
}

/* free_object - hiredis frees only roots (after the callback, or a reply
 * an error left half-built): the whole reply goes at once. */
static void free_object(void *obj)
{
    if (!obj)
        return;
    struct object *o = (struct object *)((char *)obj - offsetof(struct object, reply));
    if (o->arena->root == obj)
        arena_reset(o->arena);
}

static redisReplyObjectFunctions arena_functions = {
    .createString = create_string,
    .createArray = create_array,
    .createInteger = create_integer,
    .createNil = create_nil,
    .freeObject = free_object,
};

struct reply_arena *reply_arena_new(void)
{
    return xcalloc(1, sizeof(struct reply_arena));
}

void reply_arena_free(struct reply_arena *a)
{
    if (!a)
        return;
    while (a->head) {
        struct chunk *c = a->head;
        a->head = c->next;
        free(c);
    }
    free(a);
}

void reply_arena_attach(struct reply_arena *a, redisReader *reader)
{
    reader->fn = &arena_functions;
    reader->privdata = a;
    /* Keep the read buffer too: by default hiredis frees and remakes it
     * whenever it is empty with more than 16 KB unused. */
    reader->maxbuf = 0;
}

void reply_arena_stats(const struct reply_arena *a, size_t *chunks, size_t *allocated)
{
    *chunks = a->chunks;
    *allocated = a->allocated;
}
