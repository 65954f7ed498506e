/*
 * store - dispatch to the backend named in the config. See store.h.
 */
#include "store.h"

#include <stdlib.h>
#include <string.h>

static const struct store_ops *store_ops_of(const struct store *st)
{
    return ((const struct store_base *)(const void *)st)->ops;
}

int store_open(struct store **out, const struct store_config *cfg, uv_loop_t *loop,
               char *err, size_t errlen)
{
    const struct store_ops *ops = cfg->backend == STORE_BACKEND_REDIS ? &store_redis_ops
                                                                       : &store_memory_ops;
    return ops->open(out, cfg, loop, err, errlen);
}

void store_apply(struct store *st, const struct store_update *u, size_t n,
                 store_done_cb cb, void *arg)
{
    store_ops_of(st)->apply(st, u, n, cb, arg);
}

void store_reset(struct store *st, const char *const *keys, const size_t *key_lens, size_t n,
                 store_reset_cb cb, void *arg)
{
    store_ops_of(st)->reset(st, keys, key_lens, n, cb, arg);
}

void store_peek(struct store *st, const struct store_update *u, size_t n,
                store_done_cb cb, void *arg)
{
    store_ops_of(st)->peek(st, u, n, cb, arg);
}

void store_top(struct store *st, const char *counter, const struct decay *d, size_t n,
               store_top_cb cb, void *arg)
{
    store_ops_of(st)->top(st, counter, d, n, cb, arg);
}

bool store_is_up(const struct store *st)
{
    return store_ops_of(st)->is_up(st);
}

void store_close(struct store *st)
{
    store_ops_of(st)->close(st);
}

const char *store_name(const struct store *st)
{
    return store_ops_of(st)->name;
}

static bool str_equal(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

bool store_config_equal(const struct store_config *a, const struct store_config *b)
{
    return a->backend == b->backend && str_equal(a->redis_address, b->redis_address) &&
           a->redis_db == b->redis_db && str_equal(a->redis_password, b->redis_password) &&
           str_equal(a->prefix, b->prefix) && a->timeout_ms == b->timeout_ms &&
           a->memory_max_keys == b->memory_max_keys && a->top_floor == b->top_floor &&
           a->top_size == b->top_size;
}

void store_config_fini(struct store_config *cfg)
{
    free(cfg->redis_address);
    if (cfg->redis_password) {
        /* Do not leave the secret lying in freed memory. */
        memset(cfg->redis_password, 0, strlen(cfg->redis_password));
        free(cfg->redis_password);
    }
    free(cfg->prefix);
    memset(cfg, 0, sizeof *cfg);
}
