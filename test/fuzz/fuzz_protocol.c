/*
 * fuzz_protocol - libFuzzer target for the policy protocol scanner and
 * parser (policyd/protocol.c) and the request it fills (policyd/request.c).
 *
 * The input is the byte stream a client sends. It is delivered to the
 * scanner the way conn.c does it: in reads of varying sizes (derived from
 * the input itself, so a crash replays exactly), every complete request
 * is parsed in place, its attributes (derived ones too) are read and an
 * answer is formatted, then the buffer moves on to the next request.
 *
 * Besides the sanitizers, the target checks invariants and aborts when one
 * breaks, so libFuzzer reports it as a crash:
 *   - the stream read in pieces gives exactly the same sequence of
 *     requests and the same final status as the stream read in one piece
 *     (the incremental scanner must not depend on how reads fall);
 *   - a request never exceeds max_request, a value never exceeds max_line,
 *     values hold no NUL, and no more than max_attrs lines are accepted;
 *   - client_address parses as inet_pton parses it, and its IPv6 /64
 *     prints as inet_ntop prints it (cidr.c does both by hand).
 * Each input runs twice: with the default limits and with tiny ones, so
 * that the limit paths are reached by short inputs.
 *
 * Built with -DFUZZ_LIBFUZZER by clang for fuzzing; without it (gcc) a
 * main() replays the files or directories named on the command line, so
 * the corpus doubles as a regression test.
 */
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cidr.h"
#include "protocol.h"
#include "request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Requests per input we keep track of for the one-piece/pieces comparison. */
#define FUZZ_MAX_REQS 4096

struct fuzz_run {
    size_t req_len[FUZZ_MAX_REQS]; /* bytes of each complete request */
    size_t nreqs;               /* complete requests seen */
    enum protocol_status last;  /* NEED_MORE at the end of input, or ERROR */
};

static void fuzz_check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_protocol: invariant broken: %s\n", what);
        abort();
    }
}

/* fuzz_piece - the size of the next read, from the input's own bytes. */
static size_t fuzz_piece(const uint8_t *data, size_t size, size_t at, unsigned step)
{
    unsigned seed = size ? data[(at + step) % size] : 0;
    /* Mostly small pieces (split lines and "\r\n"), now and then a big one. */
    switch (seed % 4) {
    case 0:
        return 1;
    case 1:
        return 1 + seed % 7;
    case 2:
        return 1 + (seed * 13u + step) % 97;
    default:
        return 1 + (size_t)seed * 64;
    }
}

/* fuzz_check_address - the hand-written dotted-quad parser and IPv6
 * prefix formatter (cidr.c) against inet_pton and inet_ntop. */
static void fuzz_check_address(struct request *req)
{
    size_t len;
    const char *v = request_get(req, ATTR_CLIENT_ADDRESS, &len);
    char z[64], text[INET6_ADDRSTRLEN], want[64], got[64];
    unsigned char b4[4];
    struct ipaddr ip;

    if (!v || len >= sizeof z)
        return;
    memcpy(z, v, len);
    z[len] = '\0';
    bool ok = ipaddr_parse(v, len, &ip) == 0;
    if (inet_pton(AF_INET, z, b4) == 1)
        fuzz_check(ok && ip.family == AF_INET && memcmp(ip.bytes, b4, 4) == 0,
                   "an IPv4 address reads as inet_pton reads it");
    else if (ok && ip.family == AF_INET)
        fuzz_check(strchr(z, ':') || z[0] == '[',
                   "what inet_pton refuses is IPv4 only as [a.b.c.d] or a mapped IPv6");
    if (ok && ip.family == AF_INET6) {
        struct ipaddr net = ip;
        memset(net.bytes + 8, 0, 8);
        fuzz_check(inet_ntop(AF_INET6, net.bytes, text, sizeof text) != NULL, "inet_ntop");
        snprintf(want, sizeof want, "%s/64", text);
        size_t n = ipaddr_format_prefix(&ip, 24, 64, got, sizeof got);
        fuzz_check(n == strlen(want) && strcmp(got, want) == 0, "a /64 reads as inet_ntop writes it");
    }
}

/* fuzz_use_request - everything a rule evaluation could ask of a request. */
static void fuzz_use_request(struct request *req, const struct protocol_limits *lim)
{
    char out[256];
    unsigned present = 0;

    for (int a = 0; a < ATTR_COUNT; a++) {
        size_t len;
        const char *v = request_get(req, (enum attr)a, &len);
        if (!v)
            continue;
        fuzz_check(strlen(v) == len, "value length matches its NUL");
        if (a < ATTR_WIRE_COUNT) {
            fuzz_check(len <= lim->max_line, "value within max_line");
            present++;
        }
        if (a >= ATTR_WIRE_COUNT && a != ATTR_SENDER_LOCALPART && a != ATTR_RECIPIENT_LOCALPART)
            for (size_t i = 0; i < len; i++)
                fuzz_check(!(v[i] >= 'A' && v[i] <= 'Z'), "derived domain lower-cased");
        fuzz_check(attr_lookup(attr_name((enum attr)a), strlen(attr_name((enum attr)a))) == a,
                   "attr_lookup(attr_name(a)) == a");
        (void)attr_is_case_insensitive((enum attr)a);
    }
    fuzz_check(present + req->unknown_count <= lim->max_attrs, "no more than max_attrs lines");

    double n;
    (void)request_number(req, ATTR_SIZE, &n);
    (void)request_number(req, ATTR_RECIPIENT_COUNT, &n);
    (void)request_number(req, ATTR_CLIENT_PORT, &n);
    size_t plen;
    const char *prefix = request_client_prefix(req, 24, 64, &plen);
    if (prefix)
        fuzz_check(strlen(prefix) == plen, "prefix length");
    (void)request_client_prefix(req, 32, 128, &plen);
    (void)request_client_prefix(req, 0, 0, NULL);
    fuzz_check_address(req);

    /* Echo a peer value as the action: CR/LF/NUL must be refused, not sent. */
    size_t len;
    const char *v = request_get(req, ATTR_SENDER, &len);
    if (v) {
        size_t an = protocol_format_answer(out, sizeof out, v, len);
        if (an) {
            fuzz_check(an == len + 9, "answer length");
            fuzz_check(memcmp(out, "action=", 7) == 0 && out[an - 2] == '\n' &&
                           out[an - 1] == '\n' && !memchr(out, '\n', an - 2),
                       "answer is one line and an empty line");
        }
    }
    fuzz_check(protocol_format_answer(out, sizeof out, "DUNNO", 5) == 14, "DUNNO fits");
}

/*
 * fuzz_stream - deliver data[0..size) as a connection would, in pieces
 * (or in one piece), recording where requests end.
 */
static void fuzz_stream(const uint8_t *data, size_t size, const struct protocol_limits *lim,
                        int pieces, struct request *req, struct fuzz_run *run)
{
    /* An exact-size heap copy: ASan catches a read one past the data. */
    char *buf = malloc(size ? size : 1);
    struct protocol_scan scan;
    size_t have = 0, start = 0;
    unsigned step = 0;

    if (!buf)
        abort();
    if (size)
        memcpy(buf, data, size);
    run->nreqs = 0;
    run->last = PROTOCOL_NEED_MORE;
    protocol_scan_reset(&scan);

    while (have < size) {
        size_t piece = pieces ? fuzz_piece(data, size, have, step++) : size;
        have = size - have < piece ? size : have + piece;

        for (;;) {
            size_t req_len = 0;
            const char *why = NULL;
            enum protocol_status st =
                protocol_scan(&scan, lim, buf + start, have - start, &req_len, &why);
            if (st == PROTOCOL_NEED_MORE) {
                fuzz_check(have - start <= lim->max_request, "no more than max_request buffered");
                break;
            }
            if (st == PROTOCOL_ERROR) {
                fuzz_check(why && *why, "an error says why");
                run->last = PROTOCOL_ERROR;
                goto out;
            }
            fuzz_check(req_len >= 1 && req_len <= have - start, "request within the buffer");
            fuzz_check(req_len <= lim->max_request, "request within max_request");
            fuzz_check(buf[start + req_len - 1] == '\n', "request ends with a line end");
            if (run->nreqs < FUZZ_MAX_REQS)
                run->req_len[run->nreqs] = req_len;
            run->nreqs++;

            if (pieces) {
                /* Parsing writes NULs; the one-piece run only scans. */
                if (protocol_parse(buf + start, req_len, req, &why) == 0)
                    fuzz_use_request(req, lim);
                else
                    fuzz_check(why && *why, "a parse error says why");
            }
            start += req_len;
        }
    }
out:
    free(buf);
}

static void fuzz_compare(const struct fuzz_run *a, const struct fuzz_run *b)
{
    fuzz_check(a->nreqs == b->nreqs, "same number of requests in pieces and in one piece");
    fuzz_check(a->last == b->last, "same final status in pieces and in one piece");
    size_t n = a->nreqs < FUZZ_MAX_REQS ? a->nreqs : FUZZ_MAX_REQS;
    for (size_t i = 0; i < n; i++)
        fuzz_check(a->req_len[i] == b->req_len[i], "same request lengths");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct protocol_limits limits[] = {
        {PROTOCOL_DEFAULT_MAX_LINE, PROTOCOL_DEFAULT_MAX_REQUEST, PROTOCOL_DEFAULT_MAX_ATTRS},
        {24, 96, 5},
    };
    /* Static: 2 x 32 KiB is too much for libFuzzer's stack in ASan. */
    static struct fuzz_run whole, split;
    /* One request object for all inputs, as a connection keeps one. */
    static struct request req;
    static int ready;

    if (!ready) {
        request_init(&req);
        ready = 1;
    }
    for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
        fuzz_stream(data, size, &limits[i], 0, &req, &whole);
        fuzz_stream(data, size, &limits[i], 1, &req, &split);
        fuzz_compare(&whole, &split);
    }
    return 0;
}
