/*
 * sgload - a load generator that talks to a policy server as Postfix does.
 *
 *   sgload -t TARGET [-c CONNS] [-d SECONDS] [-n COUNT] [-r RATE] [-w WARMUP]
 *          [-s SEED] [--clients N] [--senders N] [--users N] [--eom PCT]
 *          [--ipv6 PCT] [--sasl PCT] [--timeout SECONDS] [--check] [-q]
 *
 * TARGET is 127.0.0.1:PORT (any 127/8 address), [::1]:PORT, localhost:PORT
 * or unix:/path. Anything else is refused: this tool sends traffic only to
 * this host.
 *
 * How it works:
 * - CONNS connections, each with at most one request in flight: it sends
 *   a whole request and waits for the whole answer ("action=...\n\n")
 *   before it sends the next, as smtpd does. Latency is measured from the
 *   write to the end of the answer, with uv_hrtime.
 * - The requests are built before the run (a pool of --pool requests,
 *   taken in turn), so the generator spends its CPU time on the sockets,
 *   not on snprintf: it shares the machine with the server it measures.
 * - The mix is seeded and skewed like real traffic: client addresses,
 *   senders, SASL users and recipients are drawn from Zipf-Mandelbrot
 *   distributions (s = 1, q = 5) over --clients/--senders/--users values, so a
 *   few are very busy and most are rare; --ipv6 percent of the clients
 *   are IPv6; --eom percent of the requests are END-OF-MESSAGE (with a
 *   recipient_count and a size), the rest RCPT; --sasl percent of them
 *   carry a sasl_username. Same seed, same requests.
 * - Bounded: the run stops at -d seconds (after -w seconds of warm-up
 *   that are not counted) or after -n answers, whichever comes first;
 *   answers still due then get --timeout more seconds at most, and any
 *   answer that takes longer than --timeout is an error.
 * - -r RATE paces the requests (a 1 ms token tick hands tokens to idle
 *   connections) to measure latency at a given load; without it every
 *   connection sends its next request as soon as it has its answer.
 * - Latencies go into a log-linear histogram (64 steps per power of two,
 *   so a percentile is within 1.6 %), not into an array: memory does not
 *   grow with the run.
 *
 * - --idle opens the connections and sends nothing (what an idle
 *   connection costs the server); --fill N sends N requests, each from a
 *   new client address and a new SASL user (to grow the server's state),
 *   and stops.
 *
 * Output: a human summary on stdout, then one "RESULT key=value ..." line
 * for scripts (scripts/bench). Exit status: 0; 1 with --check when any
 * error happened, any answer was not a valid Postfix action, or nothing
 * was answered; 2 for a usage error or a refused target.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define LOAD_MAX_CONNS 20000
#define LOAD_MAX_SECONDS 3600.0
#define LOAD_RBUF 4096          /* bytes; an answer is at most ~1 KB */
#define LOAD_HIST_SUB 64        /* histogram steps per power of two */
#define LOAD_HIST_SIZE (LOAD_HIST_SUB * 64)
#define LOAD_MAX_VERDICTS 24
#define LOAD_TICK_MS 1

struct lconn {
    union {
        uv_handle_t handle;
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;                        /* the socket */
    uv_connect_t connect_req;   /* connect in progress */
    uv_write_t write_req;       /* a write that would block */
    struct lconn *next_idle;    /* idle stack (rate mode) */
    unsigned id;                /* index in load.conns */
    bool connected;             /* connect succeeded, handle open */
    bool busy;                  /* a request is out */
    bool closing;               /* uv_close called */
    bool idle_listed;           /* on the idle stack */
    bool dead;                  /* connect failed: not tried again */
    uint64_t sent_ns;           /* uv_hrtime at the write */
    char wbuf[1024];            /* --fill: the request being sent */
    size_t rlen;                /* bytes in rbuf */
    char rbuf[LOAD_RBUF];       /* the answer being read */
};

struct verdict_count {
    char name[32];              /* "DUNNO", "4xx" ...: a word of an answer, cut */
    uint64_t n;                 /* answers */
};

static struct load {
    uv_loop_t *loop;
    /* target */
    bool is_pipe;
    char *pipe_path;
    struct sockaddr_storage addr;
    char target[256];
    /* settings */
    unsigned n_conns;
    double duration;            /* seconds measured */
    double warmup;              /* seconds not measured */
    uint64_t max_count;         /* answers at most (measured ones) */
    double rate;                /* requests/s in total; 0 = as fast as possible */
    double timeout;             /* seconds per answer */
    uint64_t seed;
    unsigned n_clients, n_senders, n_users;
    unsigned pct_eom, pct_ipv6, pct_sasl;
    unsigned pool_size;
    bool check;
    bool quiet;
    bool idle_mode;             /* --idle: connect, send nothing */
    uint64_t fill;              /* --fill N: N requests, each a new client and user */
    /* the request pool */
    char *pool;                 /* all requests, back to back */
    size_t *pool_off;           /* start of request i; pool_off[pool_size] = end */
    unsigned next_req;          /* next pool index to send */
    /* run */
    struct lconn *conns;
    unsigned open_conns;        /* handles not yet closed */
    struct lconn *idle;         /* idle connections (rate mode) */
    uv_timer_t tick;            /* rate tokens, timeouts, the end */
    uv_signal_t sigint;
    uint64_t t0_ns;             /* start */
    uint64_t measure_from_ns;   /* end of warm-up */
    uint64_t stop_at_ns;        /* no new requests from then on */
    uint64_t measure_end_ns;    /* when the measured window closed */
    uint64_t last_tick_ns;
    double tokens;              /* rate mode */
    bool stopping;              /* no new requests */
    bool closed_all;
    /* results (measured window only, except errors) */
    uint64_t answered;
    uint64_t reconnects;        /* connections replaced (bounded) */
    uint64_t sent_total;
    uint64_t errors;
    uint64_t err_connect, err_closed, err_invalid, err_timeout;
    uint64_t hist[LOAD_HIST_SIZE];
    uint64_t max_ns;
    struct verdict_count verdicts[LOAD_MAX_VERDICTS];
    size_t n_verdicts;
} L;

/* ---- random numbers and the request pool ---- */

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    /* xorshift64*: reproducible from the seed, good enough for a mix. */
    uint64_t x = rng_state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static double rng_unit(void)
{
    return (double)(rng_next() >> 11) / 9007199254740992.0;
}

static unsigned rng_below(unsigned n)
{
    return (unsigned)(rng_unit() * n);
}

/* A Zipf-Mandelbrot distribution over n values, p(k) ~ 1 / (k + q)^s
 * with s = 1 and q = LOAD_ZIPF_Q, as a cumulative table: heavily skewed
 * (the top 1 % of the values make about a third of the traffic), but no
 * single value makes more than 2-3 % of it, as at an ISP's relays. */
#define LOAD_ZIPF_Q 5.0
struct zipf {
    double *cdf;
    unsigned n;
};

static void zipf_init(struct zipf *z, unsigned n)
{
    double sum = 0;
    z->n = n;
    z->cdf = malloc(n * sizeof *z->cdf);
    if (!z->cdf) {
        fprintf(stderr, "sgload: out of memory\n");
        exit(2);
    }
    for (unsigned i = 0; i < n; i++) {
        sum += 1.0 / (i + 1 + LOAD_ZIPF_Q);
        z->cdf[i] = sum;
    }
    for (unsigned i = 0; i < n; i++)
        z->cdf[i] /= sum;
}

/* zipf_draw - rank 0 is the busiest. The rank is scrambled afterwards by
 * the caller so that busy values are not all neighbours. */
static unsigned zipf_draw(const struct zipf *z)
{
    double u = rng_unit();
    unsigned lo = 0, hi = z->n - 1;
    while (lo < hi) {
        unsigned mid = lo + (hi - lo) / 2;
        if (z->cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static uint32_t scramble(uint32_t x)
{
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

static const char *const load_domains[] = {
    "gmail.example", "yahoo.example", "outlook.example", "example.org",   "example.net",
    "shop.example",  "news.example",  "bank.example",    "school.example", "club.example",
};
#define LOAD_N_DOMAINS (sizeof load_domains / sizeof load_domains[0])

/* load_client - client address i: IPv4 in 100.64.0.0/10 (carrier-grade
 * NAT space: many customers) or, for pct_ipv6 of them, IPv6 in
 * 2001:db8::/32, several per /64 so that network counters see groups. */
static void load_client(unsigned i, char *out, size_t cap)
{
    uint32_t h = scramble(i * 2654435761U + 17);
    if (h % 100 < L.pct_ipv6)
        snprintf(out, cap, "2001:db8:%x:%x::%x", (h >> 8) & 0xff, (i / 4) & 0xffff, i % 4 + 1);
    else
        snprintf(out, cap, "100.%u.%u.%u", 64 + ((i >> 16) & 63), (i >> 8) & 255, i & 255);
}

/* load_build_pool - the requests, in the order they will be sent. */
static void load_build_pool(void)
{
    struct zipf zc, zs, zu, zr;
    size_t cap = (size_t)L.pool_size * 1024, used = 0;

    rng_state = L.seed * 0x9E3779B97F4A7C15ULL + 1;
    zipf_init(&zc, L.n_clients);
    zipf_init(&zs, L.n_senders);
    zipf_init(&zu, L.n_users);
    zipf_init(&zr, 50000);
    L.pool = malloc(cap);
    L.pool_off = malloc(((size_t)L.pool_size + 1) * sizeof *L.pool_off);
    if (!L.pool || !L.pool_off) {
        fprintf(stderr, "sgload: out of memory\n");
        exit(2);
    }
    for (unsigned k = 0; k < L.pool_size; k++) {
        char client[64], sender[128], rcpt[128], user[64];
        unsigned crank = zipf_draw(&zc);
        unsigned ci = scramble(crank) % (L.n_clients * 4u);
        unsigned si = zipf_draw(&zs);
        unsigned ri = zipf_draw(&zr);
        bool eom = rng_below(100) < L.pct_eom;
        bool sasl = rng_below(100) < L.pct_sasl;
        load_client(ci, client, sizeof client);
        /* An authenticated user mostly sends as himself. */
        unsigned ui = zipf_draw(&zu);
        snprintf(user, sizeof user, "user%u@isp.example", scramble(ui) % 1000000);
        if (sasl && rng_below(100) < 80)
            snprintf(sender, sizeof sender, "user%u@isp.example", scramble(ui) % 1000000);
        else if (rng_below(100) < 2)
            sender[0] = '\0';   /* bounces: the null sender */
        else
            snprintf(sender, sizeof sender, "s%u@%s", scramble(si) % 1000000,
                     load_domains[scramble(si + 7) % LOAD_N_DOMAINS]);
        /* Spam traps are hit by the rare clients (bots), not the busy
         * ones: one request in a thousand from the quieter nine tenths. */
        if (rng_below(1000) == 0 && crank >= L.n_clients / 10)
            snprintf(rcpt, sizeof rcpt, "trap@honeypot.example");
        else
            snprintf(rcpt, sizeof rcpt, "r%u@%s", scramble(ri) % 1000000,
                     load_domains[(scramble(ri) >> 8) % LOAD_N_DOMAINS]);
        unsigned rcount = eom ? 1 + rng_below(5) : 0;
        unsigned size = 2000 + rng_below(200000);
        int n = snprintf(L.pool + used, cap - used,
                         "request=smtpd_access_policy\n"
                         "protocol_state=%s\n"
                         "protocol_name=ESMTP\n"
                         "client_address=%s\n"
                         "client_name=%s\n"
                         "reverse_client_name=%s\n"
                         "client_port=%u\n"
                         "helo_name=pc%u.customer.example\n"
                         "sender=%s\n"
                         "recipient=%s\n"
                         "recipient_count=%u\n"
                         "queue_id=%s\n"
                         "instance=%x.%x.%x.0\n"
                         "size=%u\n"
                         "etrn_domain=\n"
                         "stress=\n"
                         "sasl_method=%s\n"
                         "sasl_username=%s\n"
                         "sasl_sender=\n"
                         "ccert_subject=\n"
                         "ccert_issuer=\n"
                         "ccert_fingerprint=\n"
                         "ccert_pubkey_fingerprint=\n"
                         "encryption_protocol=TLSv1.3\n"
                         "encryption_cipher=TLS_AES_256_GCM_SHA384\n"
                         "encryption_keysize=256\n"
                         "policy_context=\n"
                         "server_address=192.0.2.25\n"
                         "server_port=587\n"
                         "compatibility_level=3.6\n"
                         "mail_version=3.7.11\n"
                         "\n",
                         eom ? "END-OF-MESSAGE" : "RCPT", client,
                         ci % 3 ? "unknown" : "pc.customer.example",
                         ci % 3 ? "unknown" : "pc.customer.example", 1024 + rng_below(60000),
                         ci, sender, rcpt, rcount, eom ? "4Xk1Qz2abc" : "",
                         (unsigned)rng_next() & 0xfffff, (unsigned)rng_next() & 0xfffff,
                         (unsigned)rng_next() & 0xfffff, size, sasl ? "plain" : "",
                         sasl ? user : "");
        if (n < 0 || (size_t)n >= cap - used) {
            fprintf(stderr, "sgload: request pool overflow\n");
            exit(2);
        }
        L.pool_off[k] = used;
        used += (size_t)n;
    }
    L.pool_off[L.pool_size] = used;
    free(zc.cdf);
    free(zs.cdf);
    free(zu.cdf);
    free(zr.cdf);
}

/* ---- target ---- */

/* load_parse_target - accept loopback and unix sockets only. */
static int load_parse_target(const char *t)
{
    char host[128];
    const char *port_s;

    snprintf(L.target, sizeof L.target, "%s", t);
    if (strncmp(t, "unix:", 5) == 0) {
        if (t[5] != '/') {
            fprintf(stderr, "sgload: %s: want unix:/absolute/path\n", t);
            return -1;
        }
        L.is_pipe = true;
        L.pipe_path = strdup(t + 5);
        return 0;
    }
    if (t[0] == '[') {
        const char *end = strchr(t, ']');
        if (!end || end[1] != ':' || (size_t)(end - t - 1) >= sizeof host)
            goto bad;
        memcpy(host, t + 1, (size_t)(end - t - 1));
        host[end - t - 1] = '\0';
        port_s = end + 2;
    } else {
        const char *colon = strrchr(t, ':');
        if (!colon || (size_t)(colon - t) >= sizeof host || strchr(t, ':') != colon)
            goto bad;
        memcpy(host, t, (size_t)(colon - t));
        host[colon - t] = '\0';
        port_s = colon + 1;
    }
    char *end;
    long port = strtol(port_s, &end, 10);
    if (*port_s == '\0' || *end || port < 1 || port > 65535)
        goto bad;
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof host, "127.0.0.1");
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1) {
        if ((ntohl(a4.s_addr) >> 24) != 127) {
            fprintf(stderr, "sgload: refusing %s: not a loopback address\n", t);
            return -1;
        }
        uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&L.addr);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6) == 1) {
        bool v4mapped_lo = IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
        if (!IN6_IS_ADDR_LOOPBACK(&a6) && !v4mapped_lo) {
            fprintf(stderr, "sgload: refusing %s: not a loopback address\n", t);
            return -1;
        }
        uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&L.addr);
        return 0;
    }
    fprintf(stderr, "sgload: refusing %s: give a loopback IP address, localhost or unix:/path\n",
            t);
    return -1;
bad:
    fprintf(stderr, "sgload: %s: want IP:PORT, [IPv6]:PORT or unix:/path\n", t);
    return -1;
}

/* ---- statistics ---- */

static size_t hist_index(uint64_t v)
{
    if (v < 2 * LOAD_HIST_SUB)
        return (size_t)v;
    unsigned e = 63 - (unsigned)__builtin_clzll(v);
    unsigned shift = e - 6;     /* v >> shift is in [64, 127] */
    size_t i = (size_t)shift * LOAD_HIST_SUB + (size_t)(v >> shift);
    return i < LOAD_HIST_SIZE ? i : LOAD_HIST_SIZE - 1;
}

/* hist_value - the middle of bucket i, in ns. */
static double hist_value(size_t i)
{
    if (i < 2 * LOAD_HIST_SUB)
        return (double)i;
    size_t shift = i / LOAD_HIST_SUB - 1;
    size_t m = i - shift * LOAD_HIST_SUB;
    return ((double)m + 0.5) * (double)(1ULL << shift);
}

static double hist_percentile(double p)
{
    uint64_t total = 0, rank, seen = 0;
    for (size_t i = 0; i < LOAD_HIST_SIZE; i++)
        total += L.hist[i];
    if (total == 0)
        return 0;
    rank = (uint64_t)ceil(p / 100.0 * (double)total);
    if (rank == 0)
        rank = 1;
    for (size_t i = 0; i < LOAD_HIST_SIZE; i++) {
        seen += L.hist[i];
        if (seen >= rank) {
            double v = hist_value(i);
            return v > (double)L.max_ns ? (double)L.max_ns : v;
        }
    }
    return (double)L.max_ns;
}

static void verdict_add(const char *name)
{
    for (size_t i = 0; i < L.n_verdicts; i++)
        if (strcmp(L.verdicts[i].name, name) == 0) {
            L.verdicts[i].n++;
            return;
        }
    if (L.n_verdicts < LOAD_MAX_VERDICTS) {
        snprintf(L.verdicts[L.n_verdicts].name, sizeof L.verdicts[0].name, "%s", name);
        L.verdicts[L.n_verdicts++].n = 1;
    }
}

/* load_classify - the verdict of "action=TEXT", or NULL when TEXT is not
 * a Postfix access(5) action. */
static const char *load_classify(const char *text, size_t len, char *word, size_t cap)
{
    static const char *const words[] = {
        "OK",   "DUNNO", "REJECT",   "DEFER",  "DEFER_IF_REJECT", "DEFER_IF_PERMIT",
        "BCC",  "DISCARD", "FILTER", "HOLD",   "PREPEND",         "REDIRECT",
        "INFO", "WARN",  "SLEEP",    "PERMIT",
    };
    size_t n = 0;
    while (n < len && text[n] != ' ' && n + 1 < cap) {
        word[n] = (char)toupper((unsigned char)text[n]);
        n++;
    }
    word[n] = '\0';
    if (n == 3 && (word[0] == '4' || word[0] == '5') && isdigit((unsigned char)word[1]) &&
        isdigit((unsigned char)word[2])) {
        word[1] = word[2] = 'x';
        return word;
    }
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (strcmp(word, words[i]) == 0)
            return word;
    return NULL;
}

/* ---- connections ---- */

static void load_send(struct lconn *c);
static void load_conn_start(struct lconn *c);
static void load_maybe_finish(void);

static void load_error(struct lconn *c, uint64_t *kind, const char *what)
{
    (*kind)++;
    L.errors++;
    if (!L.quiet && L.errors <= 5)
        fprintf(stderr, "sgload: connection %u: %s\n", c->id, what);
}

static void load_on_close(uv_handle_t *h)
{
    struct lconn *c = h->data;
    c->closing = false;
    c->connected = false;
    c->busy = false;
    c->rlen = 0;
    L.open_conns--;
    if (!L.stopping && !c->dead && L.reconnects++ < 10 * (uint64_t)L.n_conns) {
        load_conn_start(c);     /* replace a connection the server dropped */
        return;
    }
    if (L.open_conns == 0 && !L.stopping) {
        /* Nobody left to send: stop now rather than wait for the clock. */
        L.stopping = true;
        L.stop_at_ns = uv_hrtime();
    }
    load_maybe_finish();
}

static void load_conn_close(struct lconn *c)
{
    if (c->closing || !c->h.handle.loop || uv_is_closing(&c->h.handle))
        return;
    c->closing = true;
    uv_close(&c->h.handle, load_on_close);
}

static void load_idle_push(struct lconn *c)
{
    if (c->idle_listed)
        return;
    c->idle_listed = true;
    c->next_idle = L.idle;
    L.idle = c;
}

static void load_ready(struct lconn *c)
{
    if (L.stopping) {
        load_conn_close(c);
        return;
    }
    if (L.idle_mode)
        return;
    if (L.rate > 0)
        load_idle_push(c);
    else
        load_send(c);
}

static void load_answer(struct lconn *c, size_t end)
{
    uint64_t now = uv_hrtime();
    char word[32];
    const char *v = NULL;

    c->busy = false;
    if (end > 7 && memcmp(c->rbuf, "action=", 7) == 0) {
        /* Only the first line is the action; end points past "\n\n". */
        const char *text = c->rbuf + 7;
        const char *nl = memchr(text, '\n', end - 7);
        v = load_classify(text, nl ? (size_t)(nl - text) : end - 9, word, sizeof word);
    }
    bool measured = c->sent_ns >= L.measure_from_ns && c->sent_ns < L.stop_at_ns &&
                    L.answered < L.max_count;
    if (!v) {
        load_error(c, &L.err_invalid, "answer is not a Postfix action");
    } else if (measured) {
        uint64_t lat = now - c->sent_ns;
        L.hist[hist_index(lat)]++;
        if (lat > L.max_ns)
            L.max_ns = lat;
        L.answered++;
        verdict_add(v);
        if (L.answered >= L.max_count && !L.stopping) {
            L.stop_at_ns = now;
            L.stopping = true;
        }
    }
    memmove(c->rbuf, c->rbuf + end, c->rlen - end);
    c->rlen -= end;
    if (c->rlen) {
        load_error(c, &L.err_invalid, "bytes after the answer");
        c->rlen = 0;
    }
    load_ready(c);
}

static void load_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct lconn *c = h->data;
    buf->base = c->rbuf + c->rlen;
    buf->len = sizeof c->rbuf - c->rlen;
}

static void load_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct lconn *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        if (!L.stopping || c->busy)
            load_error(c, &L.err_closed, "closed by the server");
        load_conn_close(c);
        return;
    }
    c->rlen += (size_t)nread;
    if (!c->busy) {
        load_error(c, &L.err_invalid, "bytes without a request");
        load_conn_close(c);
        return;
    }
    /* The answer ends with an empty line. */
    for (size_t i = 1; i < c->rlen; i++)
        if (c->rbuf[i] == '\n' && c->rbuf[i - 1] == '\n') {
            load_answer(c, i + 1);
            return;
        }
    if (c->rlen == sizeof c->rbuf) {
        load_error(c, &L.err_invalid, "answer too long");
        load_conn_close(c);
    }
}

static void load_on_written(uv_write_t *w, int status)
{
    struct lconn *c = w->data;
    if (status < 0) {
        load_error(c, &L.err_closed, uv_strerror(status));
        load_conn_close(c);
    }
}

static void load_send(struct lconn *c)
{
    if (!c->connected || c->busy || c->closing || L.stopping)
        return;
    uv_buf_t b;
    if (L.fill) {
        /* Every request a new client address (100.64.0.0/10 holds 4M)
         * and a new SASL user: each one makes new counter keys. */
        uint64_t k = L.sent_total;
        int n = snprintf(c->wbuf, sizeof c->wbuf,
                         "request=smtpd_access_policy\nprotocol_state=RCPT\n"
                         "client_address=100.%u.%u.%u\nclient_name=unknown\n"
                         "helo_name=fill.example\nsender=fill%" PRIu64 "@isp.example\n"
                         "recipient=r@dest.example\nsasl_method=plain\n"
                         "sasl_username=fill%" PRIu64 "@isp.example\n\n",
                         (unsigned)(64 + ((k >> 16) & 63)), (unsigned)((k >> 8) & 255),
                         (unsigned)(k & 255), k, k);
        b = uv_buf_init(c->wbuf, (unsigned)n);
    } else {
        unsigned k = L.next_req++ % L.pool_size;
        b = uv_buf_init(L.pool + L.pool_off[k], (unsigned)(L.pool_off[k + 1] - L.pool_off[k]));
    }
    c->busy = true;
    c->sent_ns = uv_hrtime();
    L.sent_total++;
    int rc = uv_try_write(&c->h.stream, &b, 1);
    if (rc == (int)b.len)
        return;
    if (rc < 0 && rc != UV_EAGAIN) {
        load_error(c, &L.err_closed, uv_strerror(rc));
        load_conn_close(c);
        return;
    }
    if (rc > 0) {
        b.base += rc;
        b.len -= (unsigned)rc;
    }
    c->write_req.data = c;
    rc = uv_write(&c->write_req, &c->h.stream, &b, 1, load_on_written);
    if (rc < 0) {
        load_error(c, &L.err_closed, uv_strerror(rc));
        load_conn_close(c);
    }
}

static void load_on_connect(uv_connect_t *req, int status)
{
    struct lconn *c = req->data;
    if (status < 0) {
        load_error(c, &L.err_connect, uv_strerror(status));
        /* Do not hammer a server that refuses: this connection is done. */
        c->closing = true;
        c->dead = true;
        uv_close(&c->h.handle, load_on_close);
        return;
    }
    c->connected = true;
    if (!L.is_pipe)
        uv_tcp_nodelay(&c->h.tcp, 1);
    uv_read_start(&c->h.stream, load_alloc, load_on_read);
    load_ready(c);
}

static void load_conn_start(struct lconn *c)
{
    if (L.stopping)
        return;
    c->idle_listed = false;
    c->connect_req.data = c;
    c->h.handle.data = c;
    L.open_conns++;
    if (L.is_pipe) {
        uv_pipe_init(L.loop, &c->h.pipe, 0);
        c->h.handle.data = c;
        uv_pipe_connect(&c->connect_req, &c->h.pipe, L.pipe_path, load_on_connect);
        return;
    }
    uv_tcp_init(L.loop, &c->h.tcp);
    c->h.handle.data = c;
    int rc = uv_tcp_connect(&c->connect_req, &c->h.tcp, (const struct sockaddr *)&L.addr,
                            load_on_connect);
    if (rc < 0) {
        load_error(c, &L.err_connect, uv_strerror(rc));
        c->closing = true;
        c->dead = true;
        uv_close(&c->h.handle, load_on_close);
    }
}

/* ---- the clock: tokens, timeouts, the end ---- */

static void load_close_all(void)
{
    if (L.closed_all)
        return;
    L.closed_all = true;
    uv_timer_stop(&L.tick);
    uv_close((uv_handle_t *)&L.tick, NULL);
    uv_close((uv_handle_t *)&L.sigint, NULL);
    for (unsigned i = 0; i < L.n_conns; i++)
        if (L.conns[i].h.handle.loop && !uv_is_closing(&L.conns[i].h.handle))
            load_conn_close(&L.conns[i]);
}

/* load_maybe_finish - once stopping, end when nothing is in flight. */
static void load_maybe_finish(void)
{
    if (!L.stopping || L.closed_all)
        return;
    for (unsigned i = 0; i < L.n_conns; i++)
        if (L.conns[i].busy && !L.conns[i].closing)
            return;
    load_close_all();
}

static void load_on_tick(uv_timer_t *t)
{
    (void)t;
    uint64_t now = uv_hrtime();
    uint64_t tmo = (uint64_t)(L.timeout * 1e9);

    if (!L.stopping && now >= L.stop_at_ns)
        L.stopping = true;
    if (L.stopping) {
        if (!L.measure_end_ns)
            L.measure_end_ns = now < L.stop_at_ns ? now : L.stop_at_ns;
        L.idle = NULL;
        if (now >= L.stop_at_ns + tmo) {
            load_close_all();
            return;
        }
        load_maybe_finish();
    }
    /* Timeouts: a connection waiting longer than --timeout is an error,
     * and it is replaced (its late answer would be out of step). */
    if (now - L.last_tick_ns >= 100000000ULL || L.stopping) {
        for (unsigned i = 0; i < L.n_conns; i++) {
            struct lconn *c = &L.conns[i];
            if (c->busy && !c->closing && now - c->sent_ns > tmo) {
                load_error(c, &L.err_timeout, "no answer within the timeout");
                c->busy = false;
                load_conn_close(c);
            }
        }
    }
    if (L.rate > 0 && !L.stopping) {
        double dt = (double)(now - L.last_tick_ns) / 1e9;
        L.tokens += L.rate * dt;
        if (L.tokens > L.n_conns)
            L.tokens = L.n_conns; /* behind: the achieved rate says so */
        while (L.tokens >= 1 && L.idle) {
            struct lconn *c = L.idle;
            L.idle = c->next_idle;
            c->idle_listed = false;
            L.tokens -= 1;
            load_send(c);
        }
    }
    L.last_tick_ns = now;
}

static void load_on_sigint(uv_signal_t *s, int signum)
{
    (void)s;
    (void)signum;
    if (!L.stopping) {
        L.stopping = true;
        L.stop_at_ns = uv_hrtime();
    }
}

/* ---- main ---- */

static void usage(FILE *fp)
{
    fprintf(fp,
            "usage: sgload -t TARGET [options]\n"
            "  -t, --target ADDR   127.0.0.1:PORT, [::1]:PORT, localhost:PORT or unix:/path\n"
            "  -c, --conns N       concurrent connections (default 16)\n"
            "  -d, --duration S    seconds measured (default 10, at most 3600)\n"
            "  -w, --warmup S      seconds before measuring (default 1)\n"
            "  -n, --count N       stop after N measured answers (default 100000000)\n"
            "  -r, --rate R        requests per second in total (default: as fast as answered)\n"
            "  -s, --seed N        seed of the request mix (default 1)\n"
            "      --clients N     distinct client addresses (default 20000)\n"
            "      --senders N     distinct senders (default 20000)\n"
            "      --users N       distinct SASL users (default 5000)\n"
            "      --eom PCT       END-OF-MESSAGE requests (default 10)\n"
            "      --ipv6 PCT      IPv6 clients (default 10)\n"
            "      --sasl PCT      requests with a SASL user (default 60)\n"
            "      --pool N        distinct requests prepared (default 65536)\n"
            "      --timeout S     seconds an answer may take (default 5)\n"
            "      --idle          connect and send nothing (per-connection memory)\n"
            "      --fill N        N requests, each from a new client and SASL user, then stop\n"
            "      --check         exit 1 on any error or invalid answer\n"
            "  -q, --quiet         only the RESULT line\n");
}

static double arg_num(const char *opt, const char *s, double min, double max)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= min && v <= max)) {
        fprintf(stderr, "sgload: %s %s: want a number from %g to %g\n", opt, s, min, max);
        exit(2);
    }
    return v;
}

static int cmp_verdict(const void *a, const void *b)
{
    const struct verdict_count *x = a, *y = b;
    return x->n < y->n ? 1 : x->n > y->n ? -1 : strcmp(x->name, y->name);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"target", required_argument, NULL, 't'},  {"conns", required_argument, NULL, 'c'},
        {"duration", required_argument, NULL, 'd'}, {"warmup", required_argument, NULL, 'w'},
        {"count", required_argument, NULL, 'n'},   {"rate", required_argument, NULL, 'r'},
        {"seed", required_argument, NULL, 's'},    {"clients", required_argument, NULL, 1},
        {"senders", required_argument, NULL, 2},   {"users", required_argument, NULL, 3},
        {"eom", required_argument, NULL, 4},       {"ipv6", required_argument, NULL, 5},
        {"sasl", required_argument, NULL, 6},      {"pool", required_argument, NULL, 7},
        {"timeout", required_argument, NULL, 8},   {"check", no_argument, NULL, 9},
        {"idle", no_argument, NULL, 10},           {"fill", required_argument, NULL, 11},
        {"quiet", no_argument, NULL, 'q'},         {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *target = NULL;
    int ch;

    L.n_conns = 16;
    L.duration = 10;
    L.warmup = 1;
    L.max_count = 100000000;
    L.seed = 1;
    L.n_clients = 20000;
    L.n_senders = 20000;
    L.n_users = 5000;
    L.pct_eom = 10;
    L.pct_ipv6 = 10;
    L.pct_sasl = 60;
    L.pool_size = 65536;
    L.timeout = 5;
    while ((ch = getopt_long(argc, argv, "t:c:d:w:n:r:s:qh", opts, NULL)) != -1) {
        switch (ch) {
        case 't': target = optarg; break;
        case 'c': L.n_conns = (unsigned)arg_num("-c", optarg, 1, LOAD_MAX_CONNS); break;
        case 'd': L.duration = arg_num("-d", optarg, 0.01, LOAD_MAX_SECONDS); break;
        case 'w': L.warmup = arg_num("-w", optarg, 0, 600); break;
        case 'n': L.max_count = (uint64_t)arg_num("-n", optarg, 1, 1e10); break;
        case 'r': L.rate = arg_num("-r", optarg, 0, 1e7); break;
        case 's': L.seed = (uint64_t)arg_num("-s", optarg, 0, 1e15); break;
        case 1: L.n_clients = (unsigned)arg_num("--clients", optarg, 1, 1e7); break;
        case 2: L.n_senders = (unsigned)arg_num("--senders", optarg, 1, 1e7); break;
        case 3: L.n_users = (unsigned)arg_num("--users", optarg, 1, 1e7); break;
        case 4: L.pct_eom = (unsigned)arg_num("--eom", optarg, 0, 100); break;
        case 5: L.pct_ipv6 = (unsigned)arg_num("--ipv6", optarg, 0, 100); break;
        case 6: L.pct_sasl = (unsigned)arg_num("--sasl", optarg, 0, 100); break;
        case 7: L.pool_size = (unsigned)arg_num("--pool", optarg, 1, 1 << 20); break;
        case 8: L.timeout = arg_num("--timeout", optarg, 0.01, 600); break;
        case 9: L.check = true; break;
        case 10: L.idle_mode = true; break;
        case 11: L.fill = (uint64_t)arg_num("--fill", optarg, 1, 4194304); break;
        case 'q': L.quiet = true; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!target || optind < argc) {
        usage(stderr);
        return 2;
    }
    if (load_parse_target(target) < 0)
        return 2;
    if (L.fill) {
        /* Filling is counted from the first request and ends with it. */
        L.max_count = L.fill;
        L.warmup = 0;
        L.duration = LOAD_MAX_SECONDS;
        L.pool_size = 1;
    }
    signal(SIGPIPE, SIG_IGN);
    load_build_pool();

    L.loop = uv_default_loop();
    L.conns = calloc(L.n_conns, sizeof *L.conns);
    if (!L.conns) {
        fprintf(stderr, "sgload: out of memory\n");
        return 2;
    }
    L.t0_ns = uv_hrtime();
    L.measure_from_ns = L.t0_ns + (uint64_t)(L.warmup * 1e9);
    L.stop_at_ns = L.measure_from_ns + (uint64_t)(L.duration * 1e9);
    L.last_tick_ns = L.t0_ns;
    uv_timer_init(L.loop, &L.tick);
    uv_timer_start(&L.tick, load_on_tick, LOAD_TICK_MS, LOAD_TICK_MS);
    uv_signal_init(L.loop, &L.sigint);
    uv_signal_start(&L.sigint, load_on_sigint, SIGINT);
    for (unsigned i = 0; i < L.n_conns; i++) {
        L.conns[i].id = i;
        load_conn_start(&L.conns[i]);
    }
    uv_run(L.loop, UV_RUN_DEFAULT);
    if (!L.measure_end_ns)
        L.measure_end_ns = L.stop_at_ns;
    int lrc = uv_loop_close(L.loop);

    double window = (double)(L.measure_end_ns - L.measure_from_ns) / 1e9;
    if (L.measure_end_ns <= L.measure_from_ns)
        window = 0;
    double rps = window > 0 ? (double)L.answered / window : 0;
    double p50 = hist_percentile(50) / 1e3, p90 = hist_percentile(90) / 1e3;
    double p99 = hist_percentile(99) / 1e3, p999 = hist_percentile(99.9) / 1e3;
    double mx = (double)L.max_ns / 1e3;

    qsort(L.verdicts, L.n_verdicts, sizeof L.verdicts[0], cmp_verdict);
    if (!L.quiet) {
        printf("target %s, %u connections, %.2f s measured after %.1f s warm-up, seed %" PRIu64
               "%s\n",
               L.target, L.n_conns, window, L.warmup, L.seed, L.rate > 0 ? ", paced" : "");
        if (L.rate > 0)
            printf("rate asked %.0f req/s\n", L.rate);
        printf("requests %" PRIu64 "  %.0f req/s\n", L.answered, rps);
        printf("latency  p50 %.1f us  p90 %.1f us  p99 %.1f us  p99.9 %.1f us  max %.1f us\n",
               p50, p90, p99, p999, mx);
        printf("verdicts");
        for (size_t i = 0; i < L.n_verdicts; i++)
            printf("  %s %" PRIu64, L.verdicts[i].name, L.verdicts[i].n);
        printf("\nerrors   %" PRIu64 " (connect %" PRIu64 ", closed %" PRIu64 ", invalid %" PRIu64
               ", timeout %" PRIu64 ")\n",
               L.errors, L.err_connect, L.err_closed, L.err_invalid, L.err_timeout);
    }
    printf("RESULT conns=%u seconds=%.3f requests=%" PRIu64 " rps=%.0f p50_us=%.1f p90_us=%.1f "
           "p99_us=%.1f p999_us=%.1f max_us=%.1f errors=%" PRIu64,
           L.n_conns, window, L.answered, rps, p50, p90, p99, p999, mx, L.errors);
    for (size_t i = 0; i < L.n_verdicts; i++)
        printf(" v_%s=%" PRIu64, L.verdicts[i].name, L.verdicts[i].n);
    printf("\n");
    free(L.pool);
    free(L.pool_off);
    free(L.conns);
    free(L.pipe_path);
    if (lrc != 0)
        fprintf(stderr, "sgload: handles left open at exit\n");
    if (L.check && (L.errors > 0 || L.answered == 0))
        return 1;
    return 0;
}
