/*
 * test_smtpc - the SMTP client's pure parts (reply parser, dot-stuffing,
 * relay addresses) and, on a real loop, the guarantees of its callback:
 * exactly once, never from inside smtpc_start, -EAGAIN for a relay that
 * refuses connections, -ECANCELED after smtpc_cancel, -EAGAIN after the
 * step timeout for a relay that accepts and says nothing, and a complete
 * delivery to a scripted relay on the same loop. Every test ends with
 * uv_loop_close() == 0.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "smtpc.h"
#include "textbuf.h"

static void test_smtpc_reply_parse(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        const char *in;
        int want;
        int code;
        size_t used;
    } cases[] = {
        {"one line", "250 ok\r\n", 1, 250, 8},
        {"bare LF", "354 go\n", 1, 354, 7},
        {"code only", "221\r\n", 1, 221, 5},
        {"multi-line", "250-a\r\n250-b\r\n250 c\r\nXX", 1, 250, 21},
        {"incomplete line", "250 o", 0, 0, 0},
        {"incomplete multi-line", "250-a\r\n250-b\r\n", 0, 0, 0},
        {"not a code", "hello\r\n", -1, 0, 0},
        {"codes differ", "250-a\r\n251 b\r\n", -1, 0, 0},
        {"short line", "25\r\n", -1, 0, 0},
        {"1xx is not SMTP", "100 x\r\n", -1, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t used = 0;
        int code = 0;
        int rc = smtpc_reply_parse(cases[i].in, strlen(cases[i].in), &used, &code);
        int got = rc > 0 ? 1 : rc < 0 ? -1 : 0;
        if (got != cases[i].want)
            fail_msg("%s: got %d, want %d", cases[i].label, got, cases[i].want);
        if (got == 1 && (code != cases[i].code || used != cases[i].used))
            fail_msg("%s: got code %d used %zu, want %d %zu", cases[i].label, code, used,
                     cases[i].code, cases[i].used);
    }
}

static void test_smtpc_dot_stuff(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        const char *in;
        const char *want;
    } cases[] = {
        {"plain", "a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
        {"no final line end", "a\r\nb", "a\r\nb\r\n.\r\n"},
        {"bare LF", "a\nb\n", "a\r\nb\r\n.\r\n"},
        {"leading dots", ".\r\n..x\r\nmid.dle\r\n.", "..\r\n...x\r\nmid.dle\r\n..\r\n.\r\n"},
        {"empty", "", ".\r\n"},
        {"bare CR", "a\rb", "a\r\nb\r\n.\r\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct textbuf b;
        textbuf_init(&b, 1000);
        smtpc_dot_stuff(cases[i].in, strlen(cases[i].in), &b);
        if (strcmp(textbuf_cstr(&b), cases[i].want) != 0)
            fail_msg("%s: got \"%s\", want \"%s\"", cases[i].label, textbuf_cstr(&b), cases[i].want);
        textbuf_fini(&b);
    }
}

static void test_smtpc_parse_address(void **state)
{
    (void)state;
    static const struct {
        const char *in;
        int ok;
        int port;
    } cases[] = {
        {"127.0.0.1:25", 1, 25},      {"192.0.2.1:2525", 1, 2525}, {"192.0.2.1", 1, 25},
        {"[::1]:587", 1, 587},        {"[2001:db8::1]", 1, 25},    {"::1", 0, 0},
        {"mail.example:25", 0, 0},    {"127.0.0.1:0", 0, 0},       {"127.0.0.1:99999", 0, 0},
        {"127.0.0.1:", 0, 0},         {"", 0, 0},                  {"[::1", 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct sockaddr_storage ss;
        int rc = smtpc_parse_address(cases[i].in, &ss);
        if ((rc == 0) != cases[i].ok)
            fail_msg("%s: got %d, want %s", cases[i].in, rc, cases[i].ok ? "ok" : "error");
        if (rc == 0) {
            int port = ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                                               : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
            if (port != cases[i].port)
                fail_msg("%s: got port %d, want %d", cases[i].in, port, cases[i].port);
        }
    }
}

/* ---- on a loop ---- */

struct result {
    int calls;
    int status;
    char detail[256];
    bool in_start;              /* smtpc_start is on the stack */
    bool called_in_start;
};

static void on_done(void *arg, int status, const char *detail)
{
    struct result *r = arg;
    r->calls++;
    r->status = status;
    snprintf(r->detail, sizeof r->detail, "%s", detail);
    if (r->in_start)
        r->called_in_start = true;
}

static char *rcpt_list[] = {(char *)"abuse@isp.example", (char *)"noc@isp.example"};

static struct smtpc_job job(void)
{
    struct smtpc_job j = {
        .helo = "mx1.test", .from = "sg@isp.example", .to = rcpt_list, .n_to = 2,
        .data = "Subject: x\r\n\r\n.dot\r\n", .len = 20,
    };
    return j;
}

/* A listening socket on loopback: its port, and whether to accept. */
struct relay {
    uv_tcp_t server;
    uv_tcp_t client;
    bool accepted;
    bool speak;                 /* run the scripted dialogue */
    bool mute_at_quit;          /* take the message, then never answer QUIT */
    const char *blurt;          /* say this on connect, then read nothing */
    char in[4096];              /* what the client sent */
    size_t in_len;
    int step;
    uv_write_t wreq;
};

static void relay_say(struct relay *rl, const char *s)
{
    uv_buf_t b = uv_buf_init((char *)s, (unsigned)strlen(s));
    uv_try_write((uv_stream_t *)&rl->client, &b, 1);
}

static void relay_alloc(uv_handle_t *h, size_t sz, uv_buf_t *buf)
{
    (void)sz;
    struct relay *rl = h->data;
    *buf = uv_buf_init(rl->in + rl->in_len, (unsigned)(sizeof rl->in - 1 - rl->in_len));
}

static void relay_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    struct relay *rl = s->data;
    if (n <= 0)
        return;
    rl->in_len += (size_t)n;
    rl->in[rl->in_len] = '\0';
    /* Answer each complete command line (and the data's final dot). */
    static const char *const replies[] = {"250-relay\r\n250 SIZE\r\n", "250 ok\r\n",
                                          "250 ok\r\n", "550 no such user\r\n",
                                          "354 go\r\n", "250 queued as X\r\n", "221 bye\r\n"};
    size_t lines = 0;
    for (size_t i = 0; i < rl->in_len; i++)
        if (rl->in[i] == '\n')
            lines++;
    /* EHLO, MAIL, RCPT, RCPT, DATA, 3 data lines and ".", QUIT */
    size_t want_lines[] = {1, 2, 3, 4, 5, 9, 10};
    int last = rl->mute_at_quit ? 6 : 7;
    while (rl->step < last && lines >= want_lines[rl->step])
        relay_say(rl, replies[rl->step++]);
}

static void relay_on_conn(uv_stream_t *server, int status)
{
    struct relay *rl = server->data;
    if (status < 0 || rl->accepted)
        return;
    uv_tcp_init(server->loop, &rl->client);
    rl->client.data = rl;
    uv_accept(server, (uv_stream_t *)&rl->client);
    rl->accepted = true;
    if (rl->blurt)
        relay_say(rl, rl->blurt);
    if (rl->speak) {
        relay_say(rl, "220 relay ESMTP\r\n");
        uv_read_start((uv_stream_t *)&rl->client, relay_alloc, relay_read);
    }
}

static int relay_open(uv_loop_t *loop, struct relay *rl, bool listen_too, struct sockaddr_in *addr)
{
    memset(rl, 0, sizeof *rl);
    uv_tcp_init(loop, &rl->server);
    rl->server.data = rl;
    uv_ip4_addr("127.0.0.1", 0, addr);
    assert_int_equal(uv_tcp_bind(&rl->server, (struct sockaddr *)addr, 0), 0);
    int len = sizeof *addr;
    uv_tcp_getsockname(&rl->server, (struct sockaddr *)addr, &len);
    if (listen_too)
        assert_int_equal(uv_listen((uv_stream_t *)&rl->server, 8, relay_on_conn), 0);
    return 0;
}

static void relay_close(struct relay *rl)
{
    uv_close((uv_handle_t *)&rl->server, NULL);
    if (rl->accepted)
        uv_close((uv_handle_t *)&rl->client, NULL);
}

static void test_smtpc_refused(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct relay rl;
    struct sockaddr_in addr;
    relay_open(&loop, &rl, false, &addr); /* bound, not listening: refused */
    struct result r = {0};
    struct smtpc_job j = job();
    r.in_start = true;
    smtpc_start(&loop, (struct sockaddr *)&addr, &j, 1000, on_done, &r);
    r.in_start = false;
    assert_int_equal(r.calls, 0);
    relay_close(&rl);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(r.calls, 1);
    assert_false(r.called_in_start);
    assert_int_equal(r.status, -EAGAIN);
    assert_non_null(strstr(r.detail, "connect"));
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void on_cancel_timer(uv_timer_t *t)
{
    smtpc_cancel(t->data);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_smtpc_silent_relay_times_out_and_cancel(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct relay rl;
    struct sockaddr_in addr;
    relay_open(&loop, &rl, true, &addr); /* accepts, never speaks */
    struct result r = {0};
    struct smtpc_job j = job();
    uint64_t t0 = uv_now(&loop);
    smtpc_start(&loop, (struct sockaddr *)&addr, &j, 200, on_done, &r);
    while (r.calls == 0 && uv_run(&loop, UV_RUN_ONCE))
        ;
    uv_update_time(&loop);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.status, -EAGAIN);
    assert_non_null(strstr(r.detail, "no answer within 200 ms"));
    assert_true(uv_now(&loop) - t0 >= 190);
    assert_true(uv_now(&loop) - t0 < 2000);

    /* Cancelled while it waits for the greeting. */
    struct result r2 = {0};
    struct smtpc *c = smtpc_start(&loop, (struct sockaddr *)&addr, &j, 5000, on_done, &r2);
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    t.data = c;
    uv_timer_start(&t, on_cancel_timer, 50, 0);
    while (r2.calls == 0 && uv_run(&loop, UV_RUN_ONCE))
        ;
    assert_int_equal(r2.calls, 1);
    assert_int_equal(r2.status, -ECANCELED);
    relay_close(&rl);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r2.calls, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* One job against a listening relay on a loop of its own. */
struct relay_run {
    uv_loop_t loop;
    struct relay rl;
    struct sockaddr_in addr;
    struct result r;
};

static void relay_run_open(struct relay_run *t)
{
    uv_loop_init(&t->loop);
    relay_open(&t->loop, &t->rl, true, &t->addr);
    memset(&t->r, 0, sizeof t->r);
}

/* relay_run_job - the standard job, run until its callback (once). */
static void relay_run_job(struct relay_run *t, unsigned timeout_ms)
{
    struct smtpc_job j = job();
    smtpc_start(&t->loop, (struct sockaddr *)&t->addr, &j, timeout_ms, on_done, &t->r);
    while (t->r.calls == 0 && uv_run(&t->loop, UV_RUN_ONCE))
        ;
    assert_int_equal(t->r.calls, 1);
}

static void relay_run_close(struct relay_run *t)
{
    relay_close(&t->rl);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&t->loop), 0);
}

static void test_smtpc_delivers(void **state)
{
    (void)state;
    struct relay_run t;
    relay_run_open(&t);
    t.rl.speak = true;
    relay_run_job(&t, 2000);
    assert_int_equal(t.r.status, 0);
    /* The second recipient was refused: said, not fatal. */
    assert_string_equal(t.r.detail, "250 queued as X (1 of 2 recipients refused)");
    assert_string_equal(t.rl.in, "EHLO mx1.test\r\nMAIL FROM:<sg@isp.example>\r\n"
                                 "RCPT TO:<abuse@isp.example>\r\nRCPT TO:<noc@isp.example>\r\n"
                                 "DATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n");
    relay_run_close(&t);
}

/* The relay takes the message and then never answers QUIT: delivered
 * all the same (a failure there had the alert sent again, once per try). */
static void test_smtpc_delivered_when_quit_goes_unanswered(void **state)
{
    (void)state;
    struct relay_run t;
    relay_run_open(&t);
    t.rl.speak = true;
    t.rl.mute_at_quit = true;
    relay_run_job(&t, 300);
    assert_int_equal(t.r.status, 0);
    assert_string_equal(t.r.detail, "250 queued as X (1 of 2 recipients refused)");
    assert_non_null(strstr(t.rl.in, "QUIT\r\n"));
    relay_run_close(&t);
}

/* A peer that sends a whole dialogue's replies at once, before any
 * command: not a delivery (it was reported as one, "250 e"). */
static void test_smtpc_replies_ahead_are_refused(void **state)
{
    (void)state;
    struct relay_run t;
    relay_run_open(&t);
    t.rl.blurt = "220 hi\r\n250 a\r\n250 b\r\n250 c\r\n354 d\r\n250 e\r\n221 f\r\n";
    relay_run_job(&t, 1000);
    assert_int_equal(t.r.status, -EAGAIN);
    assert_non_null(strstr(t.r.detail, "ahead of the commands"));
    relay_run_close(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_smtpc_reply_parse),
        cmocka_unit_test(test_smtpc_dot_stuff),
        cmocka_unit_test(test_smtpc_parse_address),
        cmocka_unit_test(test_smtpc_refused),
        cmocka_unit_test(test_smtpc_silent_relay_times_out_and_cancel),
        cmocka_unit_test(test_smtpc_delivers),
        cmocka_unit_test(test_smtpc_delivered_when_quit_goes_unanswered),
        cmocka_unit_test(test_smtpc_replies_ahead_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
