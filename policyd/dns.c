/*
 * dns - see dns.h.
 *
 * How it works: c-ares owns the sockets and the retry logic; we only
 * watch what it asks us to watch (sock_state_cb -> one uv_poll per
 * socket) and call ares_process_fd when a socket is ready or when
 * ares_timeout() says a retry is due (one uv_timer). Each query carries
 * a small heap record with the cache handle (slot, generation) of its
 * question, never a pointer to a request: the answer goes into the
 * cache, and the cache calls whoever still waits. A request that gave
 * up has already unlinked its waiter; the answer then only fills the
 * cache.
 *
 * c-ares's per-try timeout doubles with each try; the first try gets
 * 1.5 * timeout / (2^tries - 1), so a retry happens within the deadline
 * the requests wait for, and a slow answer that comes after it still
 * fills the cache for the next request.
 */
#include "dns.h"

#include <ares.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "xalloc.h"

struct dns_poll {
    uv_poll_t h;                /* watches fd for c-ares */
    struct dns *d;
    ares_socket_t fd;
    struct dns_poll *next;      /* in d->polls (open ones only) */
};

struct dns_query {
    struct dns *d;
    struct dnscache_ref ref;    /* the question's cache entry */
    uint16_t type;              /* DNS_T_* */
    char name[DNSNAME_MAX + 1]; /* for the log */
};

struct dns {
    uv_loop_t *loop;
    ares_channel channel;
    bool channel_ok;            /* channel initialised and not destroyed */
    struct dnscache *cache;
    struct dns_config cfg;      /* copy of what matters: timeout, caps */
    uv_timer_t ares_timer;      /* follows ares_timeout() */
    uv_timer_t job_timer;       /* the first job's deadline */
    struct dns_poll *polls;
    struct dns_job *jobs_head, *jobs_tail; /* FIFO = deadline order */
    unsigned handles;           /* open uv handles; freed when 0 after close */
    bool closing;
    bool retiring;              /* replaced by a reload: closes once its jobs are done */
    struct dns *retired_next;   /* in dns_retired, while retiring */
    struct dns_stats stats;
    char *zone_names[DNS_MAX_ZONE_STATS]; /* owned copies for stats */
    struct log_limiter error_limiter;     /* "SERVFAIL ..." */
    struct log_limiter cap_limiter;       /* "queries in flight, not asking": its own, so
                                           * that neither kind hides the other */
    struct log_limiter timeout_limiter;   /* "no answer within ..." */
};

static uint64_t dns_clock_real(uv_loop_t *loop)
{
    return uv_now(loop);
}

uint64_t (*dns_clock_ms)(uv_loop_t *loop) = dns_clock_real;

void dns_config_defaults(struct dns_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->timeout_ms = 500;
    cfg->tries = 2;
    cfg->ttl_floor_s = 10;
    cfg->ttl_ceiling_s = 3600;
    cfg->negative_ttl_s = 300;
    cfg->cache_size = 10000;
    cfg->max_inflight = 1000;
}

void dns_config_fini(struct dns_config *cfg)
{
    for (size_t i = 0; i < cfg->n_servers; i++)
        free(cfg->servers[i]);
    cfg->n_servers = 0;
    free(cfg->country_zone);
    cfg->country_zone = NULL;
}

bool dns_config_equal(const struct dns_config *a, const struct dns_config *b)
{
    if (a->n_servers != b->n_servers || a->timeout_ms != b->timeout_ms || a->tries != b->tries ||
        a->ttl_floor_s != b->ttl_floor_s || a->ttl_ceiling_s != b->ttl_ceiling_s ||
        a->negative_ttl_s != b->negative_ttl_s || a->cache_size != b->cache_size ||
        a->max_inflight != b->max_inflight)
        return false;
    for (size_t i = 0; i < a->n_servers; i++)
        if (strcmp(a->servers[i], b->servers[i]) != 0)
            return false;
    /* country_zone is read by the rules only: no new resolver for it. */
    return true;
}

static const char *dns_type_name(uint16_t type)
{
    switch (type) {
    case DNS_T_A:
        return "A";
    case DNS_T_AAAA:
        return "AAAA";
    case DNS_T_MX:
        return "MX";
    case DNS_T_TXT:
        return "TXT";
    case DNS_T_PTR:
        return "PTR";
    default:
        return "?";
    }
}

/* ---- handles ---- */

static void dns_maybe_free(struct dns *d)
{
    if (!d->closing || d->handles > 0)
        return;
    dnscache_free(d->cache);
    for (size_t i = 0; i < d->stats.n_zones; i++)
        free(d->zone_names[i]);
    dns_config_fini(&d->cfg);
    free(d);
}

static void dns_on_timer_closed(uv_handle_t *h)
{
    struct dns *d = h->data;
    d->handles--;
    dns_maybe_free(d);
}

static void dns_on_poll_closed(uv_handle_t *h)
{
    struct dns_poll *p = h->data;
    struct dns *d = p->d;
    free(p);
    d->handles--;
    dns_maybe_free(d);
}

static void dns_poll_close(struct dns *d, struct dns_poll *p)
{
    for (struct dns_poll **pp = &d->polls; *pp; pp = &(*pp)->next) {
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    }
    uv_poll_stop(&p->h);
    uv_close((uv_handle_t *)&p->h, dns_on_poll_closed);
}

static void dns_ares_timer_update(struct dns *d);

static void dns_on_poll(uv_poll_t *h, int status, int events)
{
    struct dns_poll *p = h->data;
    struct dns *d = p->d;
    ares_socket_t rfd = ARES_SOCKET_BAD, wfd = ARES_SOCKET_BAD;
    /* On an error let c-ares find it out by reading and writing. */
    if (status < 0 || (events & UV_READABLE))
        rfd = p->fd;
    if (status < 0 || (events & UV_WRITABLE))
        wfd = p->fd;
    ares_process_fd(d->channel, rfd, wfd);
    dns_ares_timer_update(d);
}

/* dns_on_sock_state - c-ares wants fd watched for reading/writing, or
 * not at all any more. */
static void dns_on_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    struct dns *d = data;
    struct dns_poll *p = d->polls;
    while (p && p->fd != fd)
        p = p->next;
    if (!readable && !writable) {
        if (p)
            dns_poll_close(d, p);
        return;
    }
    if (!p) {
        p = xcalloc(1, sizeof *p);
        p->d = d;
        p->fd = fd;
        if (uv_poll_init_socket(d->loop, &p->h, fd) < 0) {
            /* c-ares will time the query out: a failure, not a hang. */
            log_warn_every(&d->error_limiter, 60, "dns: cannot watch socket %d", (int)fd);
            free(p);
            return;
        }
        p->h.data = p;
        p->next = d->polls;
        d->polls = p;
        d->handles++;
    }
    uv_poll_start(&p->h, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0), dns_on_poll);
}

static void dns_on_ares_timer(uv_timer_t *t)
{
    struct dns *d = t->data;
    ares_process_fd(d->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    dns_ares_timer_update(d);
}

static void dns_ares_timer_update(struct dns *d)
{
    if (!d->channel_ok)
        return;
    struct timeval tv, *tvp = ares_timeout(d->channel, NULL, &tv);
    if (!tvp) {
        uv_timer_stop(&d->ares_timer);
        return;
    }
    uint64_t ms = (uint64_t)tvp->tv_sec * 1000u + (uint64_t)(tvp->tv_usec + 999) / 1000u;
    uv_timer_start(&d->ares_timer, dns_on_ares_timer, ms, 0);
}

/* ---- answers ---- */

static void dns_parse(uint16_t type, const unsigned char *abuf, int alen, struct dns_rrset *rr)
{
    int rc = ARES_SUCCESS;
    rr->status = DNS_FOUND;
    switch (type) {
    case DNS_T_A: {
        struct ares_addrttl a[DNS_RR_MAX];
        int n = DNS_RR_MAX;
        rc = ares_parse_a_reply(abuf, alen, NULL, a, &n);
        for (int i = 0; rc == ARES_SUCCESS && i < n && i < DNS_RR_MAX; i++) {
            rr->addr[rr->n].family = AF_INET;
            memset(rr->addr[rr->n].bytes, 0, sizeof rr->addr[rr->n].bytes);
            memcpy(rr->addr[rr->n].bytes, &a[i].ipaddr, 4);
            rr->n++;
        }
        break;
    }
    case DNS_T_AAAA: {
        struct ares_addr6ttl a[DNS_RR_MAX];
        int n = DNS_RR_MAX;
        rc = ares_parse_aaaa_reply(abuf, alen, NULL, a, &n);
        for (int i = 0; rc == ARES_SUCCESS && i < n && i < DNS_RR_MAX; i++) {
            rr->addr[rr->n].family = AF_INET6;
            memcpy(rr->addr[rr->n].bytes, &a[i].ip6addr, 16);
            rr->n++;
        }
        break;
    }
    case DNS_T_MX: {
        struct ares_mx_reply *mx = NULL;
        rc = ares_parse_mx_reply(abuf, alen, &mx);
        bool null_seen = false;
        for (struct ares_mx_reply *m = mx; rc == ARES_SUCCESS && m; m = m->next) {
            /* RFC 7505: "MX 0 ." says the domain accepts no mail. */
            if (m->host[0] == '\0' || strcmp(m->host, ".") == 0) {
                null_seen = true;
                continue;
            }
            dns_rrset_add_name(rr, m->host, strlen(m->host));
        }
        if (mx)
            ares_free_data(mx);
        if (rc == ARES_SUCCESS && null_seen && rr->n == 0) {
            rr->null_mx = true;
            dns_rrset_add_name(rr, "", 0);
        }
        break;
    }
    case DNS_T_TXT: {
        struct ares_txt_reply *txt = NULL;
        rc = ares_parse_txt_reply(abuf, alen, &txt);
        for (struct ares_txt_reply *t = txt; rc == ARES_SUCCESS && t; t = t->next)
            dns_rrset_add_name(rr, (const char *)t->txt, strnlen((const char *)t->txt, t->length));
        if (txt)
            ares_free_data(txt);
        break;
    }
    case DNS_T_PTR: {
        struct hostent *h = NULL;
        unsigned char dummy[4] = {0}; /* c-ares copies an address into the hostent */
        rc = ares_parse_ptr_reply(abuf, alen, dummy, sizeof dummy, AF_INET, &h);
        if (rc == ARES_SUCCESS && h) {
            dns_rrset_add_name(rr, h->h_name, strlen(h->h_name));
            for (char **a = h->h_aliases; a && *a; a++)
                dns_rrset_add_name(rr, *a, strlen(*a));
        }
        if (h)
            ares_free_hostent(h);
        break;
    }
    default:
        rc = ARES_ENODATA;
        break;
    }
    if (rc == ARES_ENODATA || (rc == ARES_SUCCESS && rr->n == 0))
        rr->status = DNS_NOTFOUND;
    else if (rc != ARES_SUCCESS)
        rr->status = DNS_TEMPFAIL; /* a reply we cannot read */
}

static void dns_on_answer(void *arg, int status, int timeouts, unsigned char *abuf, int alen)
{
    (void)timeouts;
    struct dns_query *q = arg;
    struct dns *d = q->d;
    struct dns_rrset rr;
    memset(&rr, 0, sizeof rr);
    int64_t ttl_s = -1;
    if (status == ARES_SUCCESS) {
        dns_parse(q->type, abuf, alen, &rr);
    } else if (status == ARES_ENOTFOUND || status == ARES_ENODATA) {
        rr.status = DNS_NOTFOUND;
        rr.nxdomain = status == ARES_ENOTFOUND;
    } else {
        rr.status = DNS_TEMPFAIL;
    }
    uint32_t ttl;
    if (rr.status != DNS_TEMPFAIL && abuf && alen > 0 &&
        dnsname_msg_ttl(abuf, (size_t)alen, &ttl) == 0)
        ttl_s = ttl;
    if (rr.status == DNS_TEMPFAIL) {
        if (status != ARES_EDESTRUCTION) {
            d->stats.errors++;
            log_warn_every(&d->error_limiter, 60, "dns: %s %s: %s (counted as not listed)",
                           dns_type_name(q->type), q->name, ares_strerror(status));
        }
    } else {
        d->stats.answers++;
    }
    log_debug("dns: %s %s -> %s n=%u ttl=%lld", dns_type_name(q->type), q->name,
              dns_status_name(rr.status), rr.n, (long long)ttl_s);
    d->stats.inflight--;
    struct dnscache_ref ref = q->ref;
    free(q);
    dnscache_complete(d->cache, ref, &rr, ttl_s, dns_clock_ms(d->loop));
}

static const struct dns_rrset dns_tempfail = {.status = DNS_TEMPFAIL};

enum dns_ask_result dns_ask(struct dns *d, struct dnscache_waiter *w, uint16_t type,
                            const char *name, const struct dns_rrset **rr)
{
    w->linked = false;
    if (d->closing) {
        *rr = &dns_tempfail;
        return DNS_ASK_DONE;
    }
    struct dnscache_ref ref;
    switch (dnscache_lookup(d->cache, type, name, dns_clock_ms(d->loop), &ref, rr)) {
    case DNSCACHE_HIT:
        d->stats.cache_hits++;
        return DNS_ASK_DONE;
    case DNSCACHE_FULL:
        d->stats.dropped++;
        *rr = &dns_tempfail;
        return DNS_ASK_DONE;
    case DNSCACHE_PENDING:
        d->stats.coalesced++;
        dnscache_wait(d->cache, ref, w);
        return DNS_ASK_PENDING;
    case DNSCACHE_MISS:
        break;
    }
    if (d->stats.inflight >= d->cfg.max_inflight) {
        d->stats.dropped++;
        log_warn_every(&d->cap_limiter, 60, "dns: %u queries in flight, not asking %s %s",
                       d->stats.inflight, dns_type_name(type), name);
        dnscache_complete(d->cache, ref, &dns_tempfail, -1, dns_clock_ms(d->loop));
        *rr = &dns_tempfail;
        return DNS_ASK_DONE;
    }
    struct dns_query *q = xmalloc(sizeof *q);
    q->d = d;
    q->ref = ref;
    q->type = type;
    snprintf(q->name, sizeof q->name, "%s", name);
    d->stats.queries++;
    d->stats.inflight++;
    ares_query(d->channel, name, 1 /* C_IN */, type, dns_on_answer, q);
    dns_ares_timer_update(d);
    /* c-ares may have answered at once (a local failure): the answer is
     * in the cache already, and nobody was waiting. */
    const struct dns_rrset *now = dnscache_get(d->cache, ref);
    if (now) {
        *rr = now;
        return DNS_ASK_DONE;
    }
    dnscache_wait(d->cache, ref, w);
    return DNS_ASK_PENDING;
}

void dns_cancel(struct dns *d, struct dnscache_waiter *w)
{
    dnscache_unwait(d->cache, w);
}

/* ---- jobs (request deadlines) ---- */

static void dns_on_job_timer(uv_timer_t *t);

static void dns_on_retired_idle(uv_timer_t *t)
{
    struct dns *d = t->data;
    if (d->retiring && !d->jobs_head && !d->closing)
        dns_close(d);
}

static void dns_job_timer_arm(struct dns *d)
{
    if (!d->jobs_head) {
        /* A retired resolver goes once its last request is done: from
         * the loop, not from inside the answer that ended it. */
        if (d->retiring && !d->closing)
            uv_timer_start(&d->job_timer, dns_on_retired_idle, 0, 0);
        else
            uv_timer_stop(&d->job_timer);
        return;
    }
    uint64_t now = uv_now(d->loop);
    uint64_t dl = d->jobs_head->deadline_ms;
    uv_timer_start(&d->job_timer, dns_on_job_timer, dl > now ? dl - now : 0, 0);
}

static void dns_job_unlink(struct dns *d, struct dns_job *job)
{
    if (job->prev)
        job->prev->next = job->next;
    else
        d->jobs_head = job->next;
    if (job->next)
        job->next->prev = job->prev;
    else
        d->jobs_tail = job->prev;
    job->prev = job->next = NULL;
    job->active = false;
}

static void dns_on_job_timer(uv_timer_t *t)
{
    struct dns *d = t->data;
    uint64_t now = uv_now(d->loop);
    /* Jobs started by a callback have later deadlines: bounded. */
    while (d->jobs_head && d->jobs_head->deadline_ms <= now) {
        struct dns_job *job = d->jobs_head;
        dns_job_unlink(d, job);
        job->cb(job, job->arg);
    }
    dns_job_timer_arm(d);
}

void dns_job_start(struct dns *d, struct dns_job *job, dns_job_cb cb, void *arg)
{
    job->cb = cb;
    job->arg = arg;
    job->deadline_ms = uv_now(d->loop) + d->cfg.timeout_ms;
    job->active = true;
    job->next = NULL;
    job->prev = d->jobs_tail;
    if (d->jobs_tail)
        d->jobs_tail->next = job;
    else
        d->jobs_head = job;
    d->jobs_tail = job;
    if (d->jobs_head == job)
        dns_job_timer_arm(d);
}

void dns_job_stop(struct dns *d, struct dns_job *job)
{
    if (!job->active)
        return;
    bool was_head = d->jobs_head == job;
    dns_job_unlink(d, job);
    if (was_head)
        dns_job_timer_arm(d);
}

/* ---- stats ---- */

/* dns_zone_stat - zone's entry, made (0 hits) if there is room; or NULL. */
static struct dns_zone_stat *dns_zone_stat(struct dns *d, const char *zone)
{
    for (size_t i = 0; i < d->stats.n_zones; i++)
        if (strcmp(d->stats.zones[i].zone, zone) == 0)
            return &d->stats.zones[i];
    if (d->stats.n_zones >= DNS_MAX_ZONE_STATS)
        return NULL;
    size_t i = d->stats.n_zones++;
    d->zone_names[i] = xstrdup(zone);
    d->stats.zones[i].zone = d->zone_names[i];
    d->stats.zones[i].hits = 0;
    return &d->stats.zones[i];
}

void dns_zone_hit(struct dns *d, const char *zone)
{
    struct dns_zone_stat *z = dns_zone_stat(d, zone);
    if (z)
        z->hits++;
}

void dns_stats_carry(struct dns *into, const struct dns *from)
{
    const struct dns_stats *f = &from->stats;
    struct dns_stats *t = &into->stats;
    t->queries += f->queries;
    t->answers += f->answers;
    t->errors += f->errors;
    t->cache_hits += f->cache_hits;
    t->coalesced += f->coalesced;
    t->timeouts += f->timeouts;
    t->dropped += f->dropped;
    for (size_t i = 0; i < f->n_zones; i++) {
        struct dns_zone_stat *z = dns_zone_stat(into, f->zones[i].zone);
        if (z)
            z->hits += f->zones[i].hits;
    }
}

void dns_timeout_note(struct dns *d, const char *what)
{
    d->stats.timeouts++;
    log_warn_every(&d->timeout_limiter, 60,
                   "dns: no answer within %ums for %s: counted as not listed", d->cfg.timeout_ms,
                   what);
}

void dns_stats_get(const struct dns *d, struct dns_stats *out)
{
    *out = d->stats;
    struct dnscache_stats cs;
    dnscache_stats_get(d->cache, &cs);
    out->cached = cs.entries;
}

void dns_stats_log(const struct dns *d)
{
    struct dns_stats s;
    dns_stats_get(d, &s);
    char zones[512] = "";
    size_t o = 0;
    for (size_t i = 0; i < s.n_zones && o < sizeof zones; i++) {
        int n = snprintf(zones + o, sizeof zones - o, " hits.%s=%llu", s.zones[i].zone,
                         s.zones[i].hits);
        if (n < 0)
            break;
        o += (size_t)n;
    }
    log_info("dns stats: queries=%llu answers=%llu errors=%llu cache_hits=%llu coalesced=%llu "
             "timeouts=%llu dropped=%llu cached=%zu%s",
             s.queries, s.answers, s.errors, s.cache_hits, s.coalesced, s.timeouts, s.dropped,
             s.cached, zones);
}

/* ---- open / close ---- */

int dns_open(struct dns **out, const struct dns_config *cfg, uv_loop_t *loop, char *err,
             size_t errlen)
{
    static bool lib_ready;
    if (!lib_ready) {
        int rc = ares_library_init(ARES_LIB_INIT_ALL);
        if (rc != ARES_SUCCESS) {
            snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
            return -EIO;
        }
        lib_ready = true;
    }
    struct dns *d = xcalloc(1, sizeof *d);
    d->loop = loop;
    d->cfg = *cfg;
    /* Our own copies: the config may go away on reload. */
    for (size_t i = 0; i < cfg->n_servers; i++)
        d->cfg.servers[i] = xstrdup(cfg->servers[i]);
    d->cfg.country_zone = cfg->country_zone ? xstrdup(cfg->country_zone) : NULL;
    struct dnscache_ttl ttl = {cfg->ttl_floor_s, cfg->ttl_ceiling_s, cfg->negative_ttl_s};
    d->cache = dnscache_new(cfg->cache_size, &ttl);

    struct ares_options o;
    memset(&o, 0, sizeof o);
    unsigned tries = cfg->tries ? cfg->tries : 1;
    unsigned spread = (1u << tries) - 1;
    unsigned first = cfg->timeout_ms * 3 / 2 / spread;
    o.timeout = (int)(first > 10 ? first : 10);
    o.tries = (int)tries;
    /* SERVFAIL and REFUSED are answers to pass on, not reasons to wait
     * for another try. */
    o.flags = ARES_FLAG_NOCHECKRESP | ARES_FLAG_NOSEARCH;
    o.sock_state_cb = dns_on_sock_state;
    o.sock_state_cb_data = d;
    int mask = ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_FLAGS | ARES_OPT_SOCK_STATE_CB;
    int rc = ares_init_options(&d->channel, &o, mask);
    if (rc != ARES_SUCCESS) {
        snprintf(err, errlen, "c-ares: %s", ares_strerror(rc));
        dnscache_free(d->cache);
        dns_config_fini(&d->cfg);
        free(d);
        return -EIO;
    }
    d->channel_ok = true;
    if (cfg->n_servers) {
        char csv[DNS_MAX_SERVERS * 64];
        size_t off = 0;
        for (size_t i = 0; i < cfg->n_servers; i++)
            off += (size_t)snprintf(csv + off, sizeof csv - off, "%s%s", i ? "," : "",
                                    cfg->servers[i]);
        rc = ares_set_servers_ports_csv(d->channel, csv);
        if (rc != ARES_SUCCESS) {
            snprintf(err, errlen, "dns.servers \"%s\": %s", csv, ares_strerror(rc));
            ares_destroy(d->channel);
            dnscache_free(d->cache);
            dns_config_fini(&d->cfg);
            free(d);
            return -EINVAL;
        }
    }
    uv_timer_init(loop, &d->ares_timer);
    uv_timer_init(loop, &d->job_timer);
    d->ares_timer.data = d;
    d->job_timer.data = d;
    d->handles = 2;
    *out = d;
    return 0;
}

/* The resolvers retiring (a process has few: one per reload that
 * changed dns: within a timeout), so that a stop can close them too. */
static struct dns *dns_retired;

void dns_retire(struct dns *d)
{
    if (!d || d->closing)
        return;
    if (!d->jobs_head) {
        dns_close(d);
        return;
    }
    d->retiring = true;
    d->retired_next = dns_retired;
    dns_retired = d;
}

void dns_close_retired(void)
{
    while (dns_retired)
        dns_close(dns_retired); /* unlinks it */
}

void dns_close(struct dns *d)
{
    if (!d || d->closing)
        return;
    d->closing = true;
    if (d->retiring) {
        struct dns **p = &dns_retired;
        while (*p && *p != d)
            p = &(*p)->retired_next;
        if (*p)
            *p = d->retired_next;
    }
    /* Requests still waiting are answered now, as if their deadline had
     * passed; they cancel their waiters in the callback. */
    while (d->jobs_head) {
        struct dns_job *job = d->jobs_head;
        dns_job_unlink(d, job);
        job->cb(job, job->arg);
    }
    dns_stats_log(d);
    /* Pending queries come back with ARES_EDESTRUCTION and only fill the
     * cache; c-ares closes its sockets (sock_state_cb closes the polls). */
    ares_destroy(d->channel);
    d->channel_ok = false;
    while (d->polls)
        dns_poll_close(d, d->polls);
    uv_close((uv_handle_t *)&d->ares_timer, dns_on_timer_closed);
    uv_close((uv_handle_t *)&d->job_timer, dns_on_timer_closed);
}
