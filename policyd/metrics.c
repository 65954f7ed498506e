/*
 * metrics - see metrics.h.
 *
 * Histograms keep per-bucket counts and make them cumulative only when
 * formatted, so an observation is one comparison loop and two adds.
 * Verdict rows are found through a small open-addressed index on a hash
 * of (rule, verdict): a decision costs one hash and usually one compare.
 * Names are written as Prometheus label values: '\\', '"' and newlines
 * escaped.
 */
#include "metrics.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>

#include "alert.h"
#include "dns.h"
#include "textbuf.h"

static struct metrics metrics_single;
struct metrics *metrics_own = &metrics_single;

/* The slots shared by the workers (NULL with one process). */
static struct metrics *metrics_slots;
static size_t metrics_n_slots;

int metrics_share(size_t n)
{
    if (metrics_slots || n == 0)
        return 0;
    void *p = mmap(NULL, (n + 1) * sizeof *metrics_slots, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -errno;
    metrics_slots = p; /* anonymous maps come zeroed */
    metrics_n_slots = n + 1;
    metrics_own = &metrics_slots[n];
    return 0;
}

void metrics_use_slot(size_t i)
{
    if (!metrics_slots || i + 1 >= metrics_n_slots)
        return;
    metrics_own = &metrics_slots[i];
    metrics_own->connections_closed = metrics_own->connections_accepted;
}

size_t metrics_parts(const struct metrics **parts, size_t max)
{
    if (!metrics_slots) {
        if (max > 0)
            parts[0] = metrics_own;
        return max > 0;
    }
    size_t n = metrics_n_slots < max ? metrics_n_slots : max;
    for (size_t i = 0; i < n; i++)
        parts[i] = &metrics_slots[i];
    return n;
}

/* metrics_rows - rows of m published so far (see the top: release/acquire). */
static size_t metrics_rows(const struct metrics *m)
{
    return __atomic_load_n(&m->n_rows, __ATOMIC_ACQUIRE);
}

const double metrics_bounds[METRICS_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                0.05,   0.1,   0.25,   0.5,   1,    2.5};

static const char *const metrics_state_names[METRICS_STATE_COUNT] = {
    "CONNECT", "EHLO", "HELO", "MAIL", "RCPT", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN", "other"};

const char *metrics_state_name(enum metrics_state s)
{
    return s < METRICS_STATE_COUNT ? metrics_state_names[s] : "other";
}

enum metrics_state metrics_state_of(const char *s, size_t len)
{
    if (s)
        for (int i = 0; i < METRICS_STATE_OTHER; i++)
            if (strlen(metrics_state_names[i]) == len && !strncasecmp(s, metrics_state_names[i], len))
                return (enum metrics_state)i;
    return METRICS_STATE_OTHER;
}

void metrics_observe(struct metrics_histogram *h, double seconds)
{
    int b = 0;
    while (b < METRICS_BUCKETS && seconds > metrics_bounds[b])
        b++;
    h->buckets[b]++;
    h->sum += seconds;
    h->count++;
}

static uint32_t metrics_hash(const char *a, const char *b)
{
    uint32_t h = 2166136261u;
    for (; *a; a++)
        h = (h ^ (unsigned char)*a) * 16777619u;
    h = (h ^ 0xff) * 16777619u;
    for (; *b; b++)
        h = (h ^ (unsigned char)*b) * 16777619u;
    return h;
}

void metrics_verdict(struct metrics *m, const char *rule, const char *verdict)
{
    if (!rule)
        rule = "none";
    uint32_t h = metrics_hash(rule, verdict);
    for (size_t probe = 0; probe < METRICS_INDEX; probe++) {
        uint16_t *slot = &m->index[(h + probe) & (METRICS_INDEX - 1)];
        if (*slot) {
            struct metrics_verdict_row *r = &m->rows[*slot - 1];
            if (!strcmp(r->rule, rule) && !strcmp(r->verdict, verdict)) {
                r->count++;
                return;
            }
            continue;
        }
        if (m->n_rows == METRICS_MAX_RULES)
            break;
        struct metrics_verdict_row *r = &m->rows[m->n_rows];
        snprintf(r->rule, sizeof r->rule, "%s", rule);
        snprintf(r->verdict, sizeof r->verdict, "%s", verdict);
        r->count = 1;
        /* The row is whole before a reader in another worker counts it. */
        __atomic_store_n(&m->n_rows, m->n_rows + 1, __ATOMIC_RELEASE);
        *slot = (uint16_t)m->n_rows;
        return;
    }
    m->verdicts_other++;
}

/* ---- exposition ---- */

/* The whole scrape: bounded label sets keep it far below this. */
#define METRICS_MAX_TEXT (4u << 20)


/* mb_label - a label value, escaped as the text format wants. */
static void mb_label(struct textbuf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            textbuf_printf(b, "\\%c", *s);
        else if (*s == '\n')
            textbuf_printf(b, "\\n");
        else
            textbuf_printf(b, "%c", *s);
    }
}

static void mb_head(struct textbuf *b, const char *name, const char *type, const char *help)
{
    textbuf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void mb_histogram(struct textbuf *b, const char *name, const char *help,
                         const struct metrics *const *parts, size_t n, size_t offset)
{
    struct metrics_histogram sum = {{0}, 0, 0};
    for (size_t i = 0; i < n; i++) {
        const struct metrics_histogram *h =
            (const struct metrics_histogram *)(const void *)((const char *)parts[i] + offset);
        for (int k = 0; k <= METRICS_BUCKETS; k++)
            sum.buckets[k] += h->buckets[k];
        sum.sum += h->sum;
        sum.count += h->count;
    }
    mb_head(b, name, "histogram", help);
    uint64_t cum = 0;
    for (int k = 0; k < METRICS_BUCKETS; k++) {
        cum += sum.buckets[k];
        textbuf_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, metrics_bounds[k], (unsigned long long)cum);
    }
    cum += sum.buckets[METRICS_BUCKETS];
    textbuf_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    textbuf_printf(b, "%s_sum %.9g\n", name, sum.sum);
    textbuf_printf(b, "%s_count %llu\n", name, (unsigned long long)sum.count);
}

static unsigned long long metrics_sum(const struct metrics *const *parts, size_t n, size_t offset)
{
    unsigned long long s = 0;
    for (size_t i = 0; i < n; i++)
        s += *(const uint64_t *)(const void *)((const char *)parts[i] + offset);
    return s;
}

/* metrics_max - the largest of a field over the parts: for what every
 * worker counts alike (each reloads the same configuration). */
static unsigned long long metrics_max(const struct metrics *const *parts, size_t n, size_t offset)
{
    unsigned long long m = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t v = *(const uint64_t *)(const void *)((const char *)parts[i] + offset);
        if (v > m)
            m = v;
    }
    return m;
}

static void mb_counter(struct textbuf *b, const char *name, const char *help,
                       const struct metrics *const *parts, size_t n, size_t offset)
{
    mb_head(b, name, "counter", help);
    textbuf_printf(b, "%s %llu\n", name, metrics_sum(parts, n, offset));
}

static void mb_plain(struct textbuf *b, const char *name, const char *type, const char *help,
                     unsigned long long v)
{
    mb_head(b, name, type, help);
    textbuf_printf(b, "%s %llu\n", name, v);
}

/* DNS checks (dns.h): what the resolver did, and which zones listed. The
 * zone label is bounded: the resolver keeps at most DNS_MAX_ZONE_STATS. */
static void metrics_format_dns(struct textbuf *b, const struct dns_stats *s)
{
    mb_plain(b, "smtpguard_dns_queries_total", "counter", "DNS questions sent to servers.", s->queries);
    mb_plain(b, "smtpguard_dns_answers_total", "counter", "DNS questions answered (found or not).",
             s->answers);
    mb_plain(b, "smtpguard_dns_errors_total", "counter", "DNS questions failed (SERVFAIL, refused, timeout).",
             s->errors);
    mb_plain(b, "smtpguard_dns_cache_hits_total", "counter", "DNS questions answered from the cache.",
             s->cache_hits);
    mb_plain(b, "smtpguard_dns_coalesced_total", "counter",
             "DNS questions that joined an identical one in flight.", s->coalesced);
    mb_plain(b, "smtpguard_dns_timeouts_total", "counter",
             "DNS questions still unanswered when their request's deadline passed.", s->timeouts);
    mb_plain(b, "smtpguard_dns_dropped_total", "counter",
             "DNS questions not asked because max_inflight was reached.", s->dropped);
    mb_plain(b, "smtpguard_dns_inflight", "gauge", "DNS queries out now.", s->inflight);
    mb_plain(b, "smtpguard_dns_cache_entries", "gauge", "DNS answers cached now.", s->cached);
    mb_head(b, "smtpguard_dns_zone_hits_total", "counter", "Requests a DNS list zone listed, by zone.");
    for (size_t i = 0; i < s->n_zones; i++) {
        textbuf_printf(b, "smtpguard_dns_zone_hits_total{zone=\"");
        mb_label(b, s->zones[i].zone);
        textbuf_printf(b, "\"} %llu\n", s->zones[i].hits);
    }
}

static void metrics_format_alerts(struct textbuf *b, const struct alert_stats *s)
{
    mb_plain(b, "smtpguard_alerts_sent_total", "counter", "Alert mails the relay or sendmail took.",
             s->sent);
    mb_plain(b, "smtpguard_alerts_failed_total", "counter", "Alert mails given up after retries.",
             s->failed);
    mb_plain(b, "smtpguard_alerts_dropped_total", "counter", "Alert mails refused by a full queue.",
             s->dropped);
    mb_plain(b, "smtpguard_alerts_suppressed_total", "counter",
             "Alerts swallowed by the once-per-interval de-duplication.", s->suppressed);
}

char *metrics_format(const struct metrics *const *parts, size_t n, const struct metrics_gauges *g)
{
    struct textbuf b;
    textbuf_init(&b, METRICS_MAX_TEXT);

    mb_head(&b, "smtpguard_requests_total", "counter",
            "Policy requests answered, by SMTP protocol state.");
    for (int s = 0; s < METRICS_STATE_COUNT; s++) {
        unsigned long long v = 0;
        for (size_t i = 0; i < n; i++)
            v += parts[i]->requests[s];
        textbuf_printf(&b, "smtpguard_requests_total{protocol_state=\"%s\"} %llu\n",
                  metrics_state_name((enum metrics_state)s), v);
    }

    /* Verdict rows: summed by (rule, verdict) over the parts. */
    mb_head(&b, "smtpguard_verdicts_total", "counter",
            "Decisions, by the rule that gave them and their verdict.");
    unsigned long long other = 0;
    for (size_t i = 0; i < n; i++) {
        other += parts[i]->verdicts_other;
        for (size_t r = 0; r < metrics_rows(parts[i]); r++) {
            const struct metrics_verdict_row *row = &parts[i]->rows[r];
            bool seen = false;
            for (size_t j = 0; j < i && !seen; j++)
                for (size_t q = 0; q < metrics_rows(parts[j]) && !seen; q++)
                    seen = !strcmp(parts[j]->rows[q].rule, row->rule) &&
                           !strcmp(parts[j]->rows[q].verdict, row->verdict);
            if (seen)
                continue;
            unsigned long long v = row->count;
            for (size_t j = i + 1; j < n; j++)
                for (size_t q = 0; q < metrics_rows(parts[j]); q++)
                    if (!strcmp(parts[j]->rows[q].rule, row->rule) &&
                        !strcmp(parts[j]->rows[q].verdict, row->verdict))
                        v += parts[j]->rows[q].count;
            textbuf_printf(&b, "smtpguard_verdicts_total{rule=\"");
            mb_label(&b, row->rule);
            textbuf_printf(&b, "\",verdict=\"");
            mb_label(&b, row->verdict);
            textbuf_printf(&b, "\"} %llu\n", v);
        }
    }
    if (other)
        textbuf_printf(&b, "smtpguard_verdicts_total{rule=\"other\",verdict=\"other\"} %llu\n", other);

    mb_histogram(&b, "smtpguard_answer_duration_seconds",
                 "Time from a request parsed to its answer ready.", parts, n,
                 offsetof(struct metrics, answer));
    mb_histogram(&b, "smtpguard_store_duration_seconds",
                 "Round trip of one request's counter updates to the store.", parts, n,
                 offsetof(struct metrics, store));
    mb_counter(&b, "smtpguard_store_errors_total",
               "Store round trips that failed or timed out (answered with on_error).", parts, n,
               offsetof(struct metrics, store_errors));
    mb_counter(&b, "smtpguard_store_script_calls_total",
               "Redis script calls sent with counter updates (each carries the requests of one "
               "loop turn, or all that arrived while the call before it was out).",
               parts, n, offsetof(struct metrics, script_calls));
    mb_counter(&b, "smtpguard_store_script_requests_total",
               "Requests those calls carried; divided by the calls, the requests per call.", parts,
               n, offsetof(struct metrics, script_requests));
    /* Every worker reloads each configuration: one reload, not N. */
    mb_plain(&b, "smtpguard_config_reloads_total", "counter",
             "Configuration reloads that took effect.",
             metrics_max(parts, n, offsetof(struct metrics, reloads)));
    /* Likewise a reload every worker refused is one failure; one refused
     * before it reached the workers was counted once, where it was. */
    mb_plain(&b, "smtpguard_config_reload_failures_total", "counter",
             "Configuration reloads refused (the old configuration kept serving).",
             metrics_max(parts, n, offsetof(struct metrics, reload_failures)) +
                 metrics_sum(parts, n, offsetof(struct metrics, reload_refusals)));
    mb_counter(&b, "smtpguard_admin_requests_total", "HTTP requests to the admin listener.",
               parts, n, offsetof(struct metrics, admin_requests));

    unsigned long long accepted = metrics_sum(parts, n, offsetof(struct metrics, connections_accepted));
    unsigned long long closed = metrics_sum(parts, n, offsetof(struct metrics, connections_closed));
    mb_plain(&b, "smtpguard_connections", "gauge", "Policy connections open now.",
             accepted > closed ? accepted - closed : 0);
    mb_plain(&b, "smtpguard_connections_total", "counter", "Policy connections accepted.", accepted);
    mb_head(&b, "smtpguard_config_generation", "gauge",
            "Configuration generation serving now (1 + reloads that took effect).");
    textbuf_printf(&b, "smtpguard_config_generation %u\n", g->config_generation);
    mb_head(&b, "smtpguard_store_up", "gauge", "Whether the counter store can answer (1) or not (0).");
    textbuf_printf(&b, "smtpguard_store_up{backend=\"%s\"} %d\n",
              g->store_backend ? g->store_backend : "none", g->store_up ? 1 : 0);
    if (g->store_keys >= 0) {
        mb_head(&b, "smtpguard_store_keys", "gauge", "Keys held by the memory store.");
        textbuf_printf(&b, "smtpguard_store_keys %lld\n", g->store_keys);
    }
    if (g->store_evictions >= 0)
        mb_plain(&b, "smtpguard_store_evictions_total", "counter",
                 "Keys the memory store dropped before they expired, to stay within "
                 "store.memory.max_keys (raise it if this grows).",
                 (unsigned long long)g->store_evictions);
    if (g->dns)
        metrics_format_dns(&b, g->dns);
    if (g->alerts)
        metrics_format_alerts(&b, g->alerts);
    if (g->tracked_open >= 0) {
        mb_head(&b, "smtpguard_tracked_messages", "gauge",
                "Messages being tracked now (transactions not yet ended).");
        textbuf_printf(&b, "smtpguard_tracked_messages %lld\n", g->tracked_open);
    }
    mb_head(&b, "smtpguard_start_time_seconds", "gauge",
            "When the daemon started, in seconds since the epoch.");
    textbuf_printf(&b, "smtpguard_start_time_seconds %.3f\n", g->start_time);
    return textbuf_take(&b, NULL);
}
