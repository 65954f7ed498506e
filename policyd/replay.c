/*
 * replay - see replay.h.
 *
 * One pass over the recording. For every line: parse it in place
 * (record_parse), set the simulated clock, start the engine on each rule
 * set, run the loop until each has decided (the memory store answers on
 * the next loop turn), take the statistics out of the evaluation state,
 * and let engine_finish run the side effects (a `delete` resets counters
 * here as in the daemon). Decision log lines are not wanted here: the log
 * threshold is raised to errors.
 *
 * Statistics live in small open-addressed tables of strings; a table
 * stops growing at REPLAY_MAX_KEYS entries.
 */
#include "replay.h"

#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "config.h"
#include "engine.h"
#include "log.h"
#include "record.h"
#include "rules.h"
#include "store.h"
#include "xalloc.h"

#define REPLAY_MAX_BAD_SHOWN 10     /* bad lines reported one by one */

/* ---- string tables ---- */

struct rentry {
    char *name;                 /* the table's key */
    uint64_t count;             /* requests */
    double first_t;             /* simulated seconds since the epoch */
    double first_score;         /* score when first seen (key tables) */
    int group;                  /* rule index or transition, by table */
};

struct rtable {
    struct rentry **slot;       /* open addressing */
    size_t cap;                 /* slots, a power of two */
    size_t n;                   /* entries */
    uint64_t untracked;         /* requests whose key did not fit */
};

static uint64_t rt_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* rt_get - the entry for name (created with count 0), or NULL when full. */
static struct rentry *rt_get(struct rtable *t, const char *name, int group)
{
    if (t->cap == 0 || (t->n + 1) * 2 > t->cap) {
        if (t->n >= REPLAY_MAX_KEYS) {
            /* Full: only existing entries are found. */
        } else {
            size_t ncap = t->cap ? t->cap * 2 : 64;
            struct rentry **ns = xcalloc(ncap, sizeof *ns);
            for (size_t i = 0; i < t->cap; i++)
                if (t->slot[i]) {
                    size_t j = (size_t)rt_hash(t->slot[i]->name) & (ncap - 1);
                    while (ns[j])
                        j = (j + 1) & (ncap - 1);
                    ns[j] = t->slot[i];
                }
            free(t->slot);
            t->slot = ns;
            t->cap = ncap;
        }
    }
    size_t j = (size_t)rt_hash(name) & (t->cap - 1);
    for (size_t probe = 0; probe < t->cap; probe++, j = (j + 1) & (t->cap - 1)) {
        struct rentry *e = t->slot[j];
        if (!e) {
            if (t->n >= REPLAY_MAX_KEYS || (t->n + 1) * 2 > t->cap)
                return NULL;
            e = xcalloc(1, sizeof *e);
            e->name = xstrdup(name);
            e->group = group;
            t->slot[j] = e;
            t->n++;
            return e;
        }
        if (e->group == group && !strcmp(e->name, name))
            return e;
    }
    return NULL;
}

static void rt_free(struct rtable *t)
{
    for (size_t i = 0; i < t->cap; i++)
        if (t->slot[i]) {
            free(t->slot[i]->name);
            free(t->slot[i]);
        }
    free(t->slot);
    memset(t, 0, sizeof *t);
}

/* rt_sorted - the entries of group (or all, group < 0), most requests
 * first, then earliest; *n their number. The caller frees the array. */
static int rt_cmp(const void *a, const void *b)
{
    const struct rentry *x = *(const struct rentry *const *)a, *y = *(const struct rentry *const *)b;
    if (x->count != y->count)
        return x->count < y->count ? 1 : -1;
    if (x->first_t != y->first_t)
        return x->first_t < y->first_t ? -1 : 1;
    return strcmp(x->name, y->name);
}

static struct rentry **rt_sorted(const struct rtable *t, int group, size_t *n)
{
    struct rentry **v = xmalloc((t->n + 1) * sizeof *v);
    size_t k = 0;
    for (size_t i = 0; i < t->cap; i++)
        if (t->slot[i] && (group < 0 || t->slot[i]->group == group))
            v[k++] = t->slot[i];
    qsort(v, k, sizeof *v, rt_cmp);
    *n = k;
    return v;
}

/* ---- one rule set ---- */

struct peak {
    double score;               /* highest seen, unrounded */
    double t;                   /* when */
    char key[RULES_MAX_KEY];    /* whose */
};

struct side {
    const char *path;           /* config file */
    struct config *cfg;
    struct store *st;           /* memory, private */
    struct engine_req er;
    bool done;                  /* the engine called back */
    struct rtable verdicts;     /* "rule verdict" -> requests; group 0 */
    struct rtable keys;         /* key -> requests, first crossing; group = action rule index */
    struct peak *peaks;         /* [n_counters] */
    /* This request's outcome, for --compare. */
    char verdict[32];           /* verdict word */
    char key[RULES_MAX_KEY + 64]; /* the decision's key, or "" */
};

static double replay_now;       /* the simulated clock */

/* A `delete` held back with its answer by `wait`: the daemon runs it
 * when the answer goes out, so requests counted meanwhile still see the
 * scores it resets. Replay runs it at the same simulated moment. */
struct replay_delete {
    struct replay_delete *next;
    double due;                 /* decision time + wait */
    struct store *st;           /* the side's */
    size_t n;
    char *keys[RULES_MAX_COUNTERS];
    size_t lens[RULES_MAX_COUNTERS];
};

static struct replay_delete *replay_deletes; /* by due, earliest first */

static void replay_ignore_reset(void *arg, int status)
{
    (void)arg;
    (void)status;
}

/* replay_delete_later - s's decision has a delete that the daemon would
 * run after its wait: queue it, and keep engine_finish from running it. */
static void replay_delete_later(struct side *s, double t)
{
    const char *keys[RULES_MAX_COUNTERS];
    size_t lens[RULES_MAX_COUNTERS];
    if (!(s->er.wait > 0))
        return;
    size_t n = engine_delete_keys(&s->er, keys, lens);
    if (n == 0)
        return;
    struct replay_delete *d = xcalloc(1, sizeof *d);
    d->due = t + s->er.wait;
    d->st = s->st;
    d->n = n;
    for (size_t i = 0; i < n; i++) {
        d->keys[i] = xstrndup(keys[i], lens[i]);
        d->lens[i] = lens[i];
    }
    struct replay_delete **p = &replay_deletes;
    while (*p && (*p)->due <= d->due)
        p = &(*p)->next;
    d->next = *p;
    *p = d;
    s->er.delete_later = true;
}

/* replay_run_deletes - those due by t (all with t < 0), in order. */
static void replay_run_deletes(double t, uv_loop_t *loop)
{
    while (replay_deletes && (t < 0 || replay_deletes->due <= t)) {
        struct replay_delete *d = replay_deletes;
        replay_deletes = d->next;
        if (t >= 0) {
            double saved = replay_now;
            replay_now = d->due;
            store_reset(d->st, (const char *const *)d->keys, d->lens, d->n, replay_ignore_reset,
                        NULL);
            uv_run(loop, UV_RUN_NOWAIT);
            replay_now = saved;
        }
        for (size_t i = 0; i < d->n; i++)
            free(d->keys[i]);
        free(d);
    }
}

static double replay_clock(void)
{
    return replay_now;
}

static void replay_on_done(struct engine_req *er, void *arg)
{
    (void)er;
    struct side *s = arg;
    s->done = true;
}

/* replay_rule_counter - the first counter a condition reads, or -1. */
static int replay_rule_counter(const struct cond *c)
{
    if (!c)
        return -1;
    if (c->subject.is_counter && c->kind == COND_CMP)
        return c->subject.index;
    for (size_t i = 0; i < c->n_children; i++) {
        int ci = replay_rule_counter(c->children[i]);
        if (ci >= 0)
            return ci;
    }
    return -1;
}

/* replay_decision_key - what a decision hit: the key of the first
 * counter the rule reads, else the client address. */
static void replay_decision_key(struct side *s, const struct action_rule *ar, double *score)
{
    const struct eval *ev = &s->er.ev;
    int ci = replay_rule_counter(ar->when);
    *score = 0;
    if (ci >= 0 && ev->slot[ci] >= 0) {
        const struct store_update *u = &ev->updates[ev->slot[ci]];
        snprintf(s->key, sizeof s->key, "%.*s", (int)u->key_len, u->key);
        *score = ev->score[ci];
        return;
    }
    size_t len;
    const char *ip = request_get(&s->er.req, ATTR_CLIENT_ADDRESS, &len);
    snprintf(s->key, sizeof s->key, "client_address:%.*s", ip ? (int)len : 1, ip ? ip : "-");
}

/* replay_account - take this request's decision into the statistics. */
static void replay_account(struct side *s, double t)
{
    const struct rules *r = s->cfg->rules;
    const struct eval *ev = &s->er.ev;
    const char *rule = "(none)";
    s->key[0] = '\0';
    if (s->er.store_failed) {
        snprintf(s->verdict, sizeof s->verdict, "on_error");
    } else if (ev->stopped_by) {
        rule = ev->stopped_by->name;
        snprintf(s->verdict, sizeof s->verdict, "%s",
                 ev->stopped_by->then == VERDICT_PERMIT ? "permit" : "dunno");
    } else if (ev->decided) {
        rule = ev->decided->name;
        snprintf(s->verdict, sizeof s->verdict, "%s", verdict_name(ev->decided->verdict));
        double score;
        replay_decision_key(s, ev->decided, &score);
        struct rentry *e = rt_get(&s->keys, s->key, (int)(ev->decided - r->actions));
        if (!e) {
            s->keys.untracked++;
        } else {
            if (e->count++ == 0) {
                e->first_t = t;
                e->first_score = score;
            }
        }
    } else {
        snprintf(s->verdict, sizeof s->verdict, "dunno");
    }
    char label[RULES_MAX_KEY];
    snprintf(label, sizeof label, "%s\t%s", rule, s->verdict);
    struct rentry *v = rt_get(&s->verdicts, label, 0);
    if (v)
        v->count++;
    else
        s->verdicts.untracked++;
    for (size_t u = 0; u < ev->n_updates; u++) {
        int ci = ev->update_counter[u];
        if (!ev->have_score[ci] || ev->score[ci] <= s->peaks[ci].score)
            continue;
        s->peaks[ci].score = ev->score[ci];
        s->peaks[ci].t = t;
        snprintf(s->peaks[ci].key, sizeof s->peaks[ci].key, "%.*s", (int)ev->updates[u].key_len,
                 ev->updates[u].key);
    }
}

static int replay_side_open(struct side *s, const char *path, uv_loop_t *loop)
{
    struct config_errors errs = {0};
    s->path = path;
    s->cfg = config_load(path, &errs);
    if (!s->cfg) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.msgs[i]);
        fprintf(stderr, "smtpguard replay: %s: %zu error%s\n", path, errs.n, errs.n == 1 ? "" : "s");
        config_errors_fini(&errs);
        return -EINVAL;
    }
    struct store_config sc = {.backend = STORE_BACKEND_MEMORY,
                              .memory_max_keys = s->cfg->store.memory_max_keys};
    char err[256] = "";
    if (store_open(&s->st, &sc, loop, err, sizeof err) < 0) {
        fprintf(stderr, "smtpguard replay: memory store: %s\n", err);
        return -EINVAL;
    }
    engine_req_init(&s->er);
    s->peaks = xcalloc(s->cfg->rules->n_counters + 1, sizeof *s->peaks);
    return 0;
}

static void replay_side_close(struct side *s)
{
    if (s->st)
        store_close(s->st);
    engine_req_fini(&s->er);
    rt_free(&s->verdicts);
    rt_free(&s->keys);
    free(s->peaks);
    if (s->cfg)
        config_unref(s->cfg);
}

/* replay_fmt_time - "2023-11-14T22:13:20.000Z (+12.500s)". */
static const char *replay_fmt_time(double t, double t0, char *buf, size_t cap)
{
    time_t sec = (time_t)t;
    struct tm tm;
    gmtime_r(&sec, &tm);
    char day[40];
    strftime(day, sizeof day, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, cap, "%s.%03dZ (+%.3fs)", day, (int)((t - (double)sec) * 1000 + 0.5) % 1000,
             t - t0);
    return buf;
}

static void replay_report_side(struct side *s, double t0, size_t max_keys)
{
    const struct rules *r = s->cfg->rules;
    char tb[96];
    printf("\n## rules %s\n\nverdicts by rule:\n", s->path);
    printf("  %-24s %-10s %12s\n", "rule", "verdict", "requests");
    size_t n;
    struct rentry **v = rt_sorted(&s->verdicts, -1, &n);
    for (size_t i = 0; i < n; i++) {
        const char *tab = strchr(v[i]->name, '\t');
        printf("  %-24.*s %-10s %12llu\n", (int)(tab - v[i]->name), v[i]->name, tab + 1,
               (unsigned long long)v[i]->count);
    }
    free(v);

    printf("\nkeys hit by each rule (first crossing, requests decided):\n");
    bool any = false;
    for (size_t a = 0; a < r->n_actions; a++) {
        const struct action_rule *ar = &r->actions[a];
        struct rentry **k = rt_sorted(&s->keys, (int)a, &n);
        if (n) {
            any = true;
            printf("  %s (%s): %zu key%s\n", ar->name, verdict_name(ar->verdict), n, n == 1 ? "" : "s");
            for (size_t i = 0; i < n && i < max_keys; i++)
                printf("    %-40s first %s score %g, %llu requests\n", k[i]->name,
                       replay_fmt_time(k[i]->first_t, t0, tb, sizeof tb), k[i]->first_score,
                       (unsigned long long)k[i]->count);
            if (n > max_keys)
                printf("    ... %zu more (--keys N)\n", n - max_keys);
        }
        free(k);
    }
    if (!any)
        printf("  (none)\n");
    if (s->keys.untracked)
        printf("  (%llu requests of keys past the table cap of %d not listed)\n",
               (unsigned long long)s->keys.untracked, REPLAY_MAX_KEYS);

    printf("\npeak scores:\n");
    for (size_t ci = 0; ci < r->n_counters; ci++) {
        const struct peak *p = &s->peaks[ci];
        if (p->key[0])
            printf("  %-16s %12.*f  %-40s at %s\n", r->counters[ci].name, r->counters[ci].precision,
                   p->score, p->key, replay_fmt_time(p->t, t0, tb, sizeof tb));
        else
            printf("  %-16s %12s\n", r->counters[ci].name, "-");
    }
}

static void replay_usage(FILE *fp)
{
    fprintf(fp, "usage: smtpguard replay -c FILE RECORDING [--compare OTHER] [--keys N]\n"
                "\n"
                "Runs a recording (record: { file: ... }) through the rules of FILE offline,\n"
                "in simulated time, and reports verdicts per rule, the keys each rule hit\n"
                "and when they first crossed it, and peak scores. --compare OTHER runs the\n"
                "same requests through OTHER too and shows which requests and keys change\n"
                "verdict. RECORDING may be - for stdin.\n");
}

/* replay_run_side - start the engine on s for the current request and
 * wait for its decision. */
static void replay_decide(struct side *s, uv_loop_t *loop, unsigned long lineno, double t)
{
    s->done = false;
    engine_start(&s->er, s->cfg, &s->st, replay_on_done, s);
    for (int turns = 0; !s->done && turns < 1000; turns++)
        uv_run(loop, UV_RUN_NOWAIT);
    if (!s->done)
        log_panic("replay: line %lu: the memory store did not answer", lineno);
    replay_account(s, t);
}

/* replay_read_line - the next line of in into buf (cap bytes), its
 * length in *len; a line that does not fit is read to its end and
 * dropped, *too_long set. False at the end of the input. */
static bool replay_read_line(FILE *in, char *buf, size_t cap, size_t *len, bool *too_long)
{
    *len = 0;
    *too_long = false;
    int ch;
    while ((ch = getc_unlocked(in)) != EOF) {
        if (*len + 1 < cap)
            buf[(*len)++] = (char)ch;
        else
            *too_long = true;
        if (ch == '\n')
            break;
    }
    buf[*len] = '\0';
    return ch != EOF || *len > 0 || *too_long;
}

int replay_main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"compare", required_argument, NULL, 'C'},
        {"keys", required_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *path = "/etc/smtpguard/smtpguard.yaml", *other = NULL;
    size_t max_keys = REPLAY_DEFAULT_KEYS;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:k:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            path = optarg;
            break;
        case 'C':
            other = optarg;
            break;
        case 'k': {
            char *end;
            unsigned long v = strtoul(optarg, &end, 10);
            if (!*optarg || *end || v < 1 || v > REPLAY_MAX_KEYS) {
                fprintf(stderr, "smtpguard replay: --keys wants a number from 1 to %d\n",
                        REPLAY_MAX_KEYS);
                return 2;
            }
            max_keys = v;
            break;
        }
        case 'h':
            replay_usage(stdout);
            return 0;
        default:
            replay_usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 1) {
        fprintf(stderr, "smtpguard replay: want exactly one RECORDING\n");
        replay_usage(stderr);
        return 2;
    }
    const char *recpath = argv[optind];
    FILE *in = strcmp(recpath, "-") == 0 ? stdin : fopen(recpath, "r");
    if (!in) {
        fprintf(stderr, "smtpguard replay: %s: %s\n", recpath, strerror(errno));
        return 1;
    }
    log_threshold = LOG_LEVEL_ERROR;
    store_memory_clock = replay_clock;

    uv_loop_t loop;
    uv_loop_init(&loop);
    struct side sides[2];
    memset(sides, 0, sizeof sides);
    size_t n_sides = other ? 2 : 1;
    int status = 0;
    for (size_t i = 0; i < n_sides && status == 0; i++)
        if (replay_side_open(&sides[i], i == 0 ? path : other, &loop) < 0)
            status = 1;

    struct rtable transitions = {0}, changed_keys = {0};
    uint64_t requests = 0, bad = 0, changed = 0;
    double t0 = 0, t_last = 0;
    /* A line longer than any the daemon writes is skipped as it is read,
     * not held: memory stays bounded whatever the file holds. */
    char *line = xmalloc(RECORD_MAX_LINE + 2);
    unsigned long lineno = 0;
    size_t len;
    bool too_long;
    while (status == 0 && replay_read_line(in, line, RECORD_MAX_LINE + 2, &len, &too_long)) {
        lineno++;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            len--;
        if (len == 0 && !too_long)
            continue;
        double t;
        const char *why = NULL;
        if (too_long)
            why = "line too long";
        else if (record_parse(line, len, &t, &sides[0].er.req, &why) < 0)
            ;
        else if (!(t > 0) || t > 1e11)
            why = "time out of range";
        if (why) {
            if (bad++ < REPLAY_MAX_BAD_SHOWN)
                fprintf(stderr, "%s:%lu: %s, line skipped\n", recpath, lineno, why);
            request_reset(&sides[0].er.req);
            continue;
        }
        if (requests++ == 0)
            t0 = t;
        t_last = t;
        replay_run_deletes(t, &loop);
        replay_now = t;
        if (n_sides == 2) {
            /* Same request for the other rule set: the values point into
             * line, which stays until both have finished. */
            for (int a = 0; a < ATTR_WIRE_COUNT; a++) {
                size_t vlen;
                const char *v = request_get(&sides[0].er.req, (enum attr)a, &vlen);
                if (v)
                    request_set(&sides[1].er.req, (enum attr)a, v, vlen);
            }
        }
        for (size_t i = 0; i < n_sides; i++)
            replay_decide(&sides[i], &loop, lineno, t);
        if (n_sides == 2 && strcmp(sides[0].verdict, sides[1].verdict) != 0) {
            changed++;
            char label[80];
            snprintf(label, sizeof label, "%s -> %s", sides[0].verdict, sides[1].verdict);
            struct rentry *e = rt_get(&transitions, label, 0);
            if (e)
                e->count++;
            const char *key = sides[1].key[0] ? sides[1].key : sides[0].key;
            if (!key[0]) {
                size_t ilen;
                const char *ip = request_get(&sides[0].er.req, ATTR_CLIENT_ADDRESS, &ilen);
                snprintf(sides[0].key, sizeof sides[0].key, "client_address:%.*s",
                         ip ? (int)ilen : 1, ip ? ip : "-");
                key = sides[0].key;
            }
            e = rt_get(&changed_keys, key, 0);
            if (!e)
                changed_keys.untracked++;
            else if (e->count++ == 0)
                e->first_t = t;
        }
        for (size_t i = 0; i < n_sides; i++) {
            replay_delete_later(&sides[i], t);
            engine_finish(&sides[i].er, sides[i].st, 0, lineno);
        }
    }
    replay_run_deletes(-1, &loop); /* the rest never came due: freed */
    if (status == 0 && ferror(in)) {
        fprintf(stderr, "smtpguard replay: %s: read error: %s\n", recpath, strerror(errno));
        status = 1;
    }
    if (status == 0) {
        char tb[96], tb2[96];
        printf("# smtpguard replay: %s: %llu requests", recpath, (unsigned long long)requests);
        if (requests)
            printf(", %s to %s", replay_fmt_time(t0, t0, tb, sizeof tb),
                   replay_fmt_time(t_last, t0, tb2, sizeof tb2));
        printf("\n");
        if (bad)
            printf("# %llu bad line%s skipped (see stderr)\n", (unsigned long long)bad,
                   bad == 1 ? "" : "s");
        for (size_t i = 0; i < n_sides; i++)
            replay_report_side(&sides[i], t0, max_keys);
        if (n_sides == 2) {
            printf("\n## compare %s -> %s\n\n", path, other);
            printf("requests with another verdict: %llu of %llu\n", (unsigned long long)changed,
                   (unsigned long long)requests);
            size_t n;
            struct rentry **v = rt_sorted(&transitions, -1, &n);
            if (n)
                printf("\nby verdict:\n");
            for (size_t i = 0; i < n; i++)
                printf("  %-30s %12llu\n", v[i]->name, (unsigned long long)v[i]->count);
            free(v);
            v = rt_sorted(&changed_keys, -1, &n);
            printf("\nkeys whose requests change verdict: %zu\n", n);
            for (size_t i = 0; i < n && i < max_keys; i++)
                printf("  %-40s %8llu requests, first %s\n", v[i]->name,
                       (unsigned long long)v[i]->count,
                       replay_fmt_time(v[i]->first_t, t0, tb, sizeof tb));
            if (n > max_keys)
                printf("  ... %zu more (--keys N)\n", n - max_keys);
            free(v);
        }
        if (requests == 0) {
            fprintf(stderr, "smtpguard replay: %s: no request in the recording\n", recpath);
            status = 1;
        }
    }
    free(line);
    if (in != stdin)
        fclose(in);
    rt_free(&transitions);
    rt_free(&changed_keys);
    for (size_t i = 0; i < n_sides; i++)
        replay_side_close(&sides[i]);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        fprintf(stderr, "smtpguard replay: handles left open\n");
    fflush(stdout);
    return status;
}
