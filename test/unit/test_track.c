/*
 * test_track - joining a message's policy requests by instance:
 * recipients across RCPT, size and queue id at END-OF-MESSAGE, one record
 * per message; aborted transactions closed by a new instance on the same
 * connection, by the idle sweep and by the cap; which records are emitted
 * (wanted), the history ring and evidence lookup by counter key, and the
 * JSON shape of a record.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "textbuf.h"
#include "track.h"

/* What the emit callback saw. */
struct seen {
    int n;
    char json[8][4096];
    enum track_status status[8];
    char instance[8][64];
};

static void on_emit(void *arg, const struct track_msg *m)
{
    struct seen *s = arg;
    if (s->n < 8) {
        struct textbuf b;
        textbuf_init(&b, 4095);
        track_format_json(m, "mx1", &b);
        snprintf(s->json[s->n], sizeof s->json[0], "%s", textbuf_cstr(&b));
        textbuf_fini(&b);
        s->status[s->n] = m->status;
        snprintf(s->instance[s->n], sizeof s->instance[0], "%s", m->instance);
    }
    s->n++;
}

static struct track_event ev_base(unsigned long conn, const char *state, const char *inst,
                                  double now)
{
    static const char *const keys[] = {"ip:192.0.2.7", "user:alice"};
    static const size_t lens[] = {12, 10};
    struct track_event ev = {
        .conn_id = conn, .now = now, .state = state, .instance = inst,
        .client_address = "192.0.2.7", .client_name = "pc.example", .helo_name = "pc",
        .sasl_username = "alice", .sender = "alice@example.org",
        .keys = keys, .key_lens = lens, .n_keys = 2, .wanted = true,
    };
    return ev;
}

static void test_track_multi_recipient_one_record(void **state)
{
    (void)state;
    struct seen s = {0};
    struct track_config cfg = {.max_open = 10, .idle = 60, .history = 10};
    struct track *t = track_new(&cfg, on_emit, &s);
    /* A MAIL-stage request carries the previous instance: not joined. */
    struct track_event ev = ev_base(1, "MAIL", "A.0", 99);
    assert_false(track_note(t, &ev));
    ev = ev_base(1, "DATA", "A.1", 100);
    assert_true(track_note(t, &ev));
    const char *rcpts[] = {"r1@example.net", "r2@example.net", "r3@example.net"};
    for (int i = 0; i < 3; i++) {
        ev = ev_base(1, "RCPT", "A.1", 101 + i);
        ev.recipient = rcpts[i];
        ev.size = "100"; /* declared size: not the final one */
        assert_true(track_note(t, &ev));
    }
    assert_int_equal(s.n, 0);
    assert_int_equal(track_open_count(t), 1);
    ev = ev_base(1, "END-OF-MESSAGE", "A.1", 110);
    ev.queue_id = "4XyZ1";
    ev.size = "2048";
    ev.recipient_count = "3";
    assert_true(track_note(t, &ev));
    assert_int_equal(s.n, 1);
    assert_int_equal(s.status[0], TRACK_COMPLETE);
    assert_int_equal(track_open_count(t), 0);
    assert_non_null(strstr(s.json[0], "\"recipients\":[\"r1@example.net\",\"r2@example.net\",\"r3@example.net\"]"));
    assert_non_null(strstr(s.json[0], "\"size\":2048"));
    assert_non_null(strstr(s.json[0], "\"queue_id\":\"4XyZ1\""));
    assert_non_null(strstr(s.json[0], "\"recipient_count\":3"));
    assert_non_null(strstr(s.json[0], "\"status\":\"complete\""));
    assert_non_null(strstr(s.json[0], "\"host\":\"mx1\""));
    assert_non_null(strstr(s.json[0], "\"keys\":[\"ip:192.0.2.7\",\"user:alice\"]"));
    assert_non_null(strstr(s.json[0], "\"start\":100.000"));
    assert_null(strstr(s.json[0], "A.0"));
    track_free(t);
}

/* Postfix's policy client reconnects in the middle of a message: the
 * END-OF-MESSAGE comes on a new connection with the same instance. One
 * record, complete, with every recipient (it came out as an "aborted"
 * half with the recipients and a "complete" half without them). */
static void test_track_message_follows_a_reconnect(void **state)
{
    (void)state;
    struct seen s = {0};
    struct track_config cfg = {.max_open = 10, .idle = 60, .history = 10};
    struct track *t = track_new(&cfg, on_emit, &s);
    const char *rcpts[] = {"r1@y.org", "r2@y.org"};
    struct track_event ev;
    for (int i = 0; i < 2; i++) {
        ev = ev_base(1, "RCPT", "4a3b.1.2.0", 100 + i);
        ev.recipient = rcpts[i];
        assert_true(track_note(t, &ev));
    }
    /* Connection 2 had a transaction of its own open: it ends. */
    ev = ev_base(2, "RCPT", "other.1", 101);
    ev.recipient = "x@z.org";
    assert_true(track_note(t, &ev));
    ev = ev_base(2, "END-OF-MESSAGE", "4a3b.1.2.0", 103);
    ev.queue_id = "918F4A74051";
    ev.size = "359";
    ev.recipient_count = "2";
    assert_true(track_note(t, &ev));
    assert_int_equal(s.n, 2);
    assert_string_equal(s.instance[0], "other.1");
    assert_int_equal(s.status[0], TRACK_ABORTED);
    assert_string_equal(s.instance[1], "4a3b.1.2.0");
    assert_int_equal(s.status[1], TRACK_COMPLETE);
    assert_non_null(strstr(s.json[1], "\"recipients\":[\"r1@y.org\",\"r2@y.org\"]"));
    assert_non_null(strstr(s.json[1], "\"queue_id\":\"918F4A74051\""));
    assert_int_equal(track_open_count(t), 0);
    /* Connection 1 goes on with a new message: nothing of the old one
     * is left on it to abort. */
    ev = ev_base(1, "RCPT", "4a3b.1.3.0", 110);
    ev.recipient = "r3@y.org";
    assert_true(track_note(t, &ev));
    assert_int_equal(s.n, 2);
    track_free(t);
}

static void test_track_verdicts_and_refused(void **state)
{
    (void)state;
    struct seen s = {0};
    struct track_config cfg = {.max_open = 10, .idle = 60, .history = 0};
    struct track *t = track_new(&cfg, on_emit, &s);
    struct track_event ev = ev_base(1, "RCPT", "B.1", 100);
    ev.recipient = "ok@example.net";
    track_note(t, &ev);
    ev = ev_base(1, "RCPT", "B.1", 101);
    ev.recipient = "no@example.net";
    ev.rule = "flood";
    ev.verdict = "defer";
    ev.refused = true;
    const char *points[] = {"per-rcpt"};
    ev.rules = points;
    ev.n_rules = 1;
    track_note(t, &ev);
    ev = ev_base(1, "END-OF-MESSAGE", "B.1", 102);
    track_note(t, &ev);
    assert_int_equal(s.n, 1);
    assert_non_null(strstr(s.json[0], "\"recipients\":[\"ok@example.net\"]"));
    assert_non_null(strstr(s.json[0], "\"refused\":1"));
    assert_non_null(strstr(s.json[0],
        "\"verdicts\":[{\"state\":\"RCPT\",\"rule\":\"flood\",\"verdict\":\"defer\",\"recipient\":\"no@example.net\"}]"));
    assert_non_null(strstr(s.json[0], "\"rules\":[\"per-rcpt\",\"flood\"]"));
    track_free(t);
}

static void test_track_new_instance_aborts_previous(void **state)
{
    (void)state;
    struct seen s = {0};
    struct track_config cfg = {.max_open = 10, .idle = 60, .history = 10};
    struct track *t = track_new(&cfg, on_emit, &s);
    struct track_event ev = ev_base(7, "RCPT", "C.1", 100);
    ev.recipient = "a@example.net";
    track_note(t, &ev);
    /* Another connection's transaction does not end this one. */
    ev = ev_base(8, "RCPT", "D.1", 100);
    ev.recipient = "b@example.net";
    track_note(t, &ev);
    assert_int_equal(s.n, 0);
    ev = ev_base(7, "RCPT", "C.2", 101);
    ev.recipient = "c@example.net";
    track_note(t, &ev);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.instance[0], "C.1");
    assert_int_equal(s.status[0], TRACK_ABORTED);
    assert_int_equal(track_open_count(t), 2);
    track_free(t);
}

static void test_track_idle_sweep_and_cap(void **state)
{
    (void)state;
    struct seen s = {0};
    struct track_config cfg = {.max_open = 3, .idle = 30, .history = 2};
    struct track *t = track_new(&cfg, on_emit, &s);
    char inst[16];
    for (int i = 0; i < 5; i++) {
        snprintf(inst, sizeof inst, "E.%d", i);
        struct track_event ev = ev_base((unsigned long)(100 + i), "RCPT", inst, 100 + i);
        ev.recipient = "x@example.net";
        track_note(t, &ev);
        assert_true(track_open_count(t) <= 3);
    }
    /* The cap closed the two least recently used ones. */
    assert_int_equal(s.n, 2);
    assert_string_equal(s.instance[0], "E.0");
    assert_string_equal(s.instance[1], "E.1");
    /* Idle: E.2 was last seen at 102, E.3 at 103, E.4 at 104. */
    assert_int_equal(track_expire(t, 133.5, 100), 2);
    assert_int_equal(track_open_count(t), 1);
    assert_int_equal(track_expire(t, 133.5, 100), 0);
    /* Bounded work per call. */
    assert_int_equal(track_expire(t, 1000, 0), 0);
    assert_int_equal(track_expire(t, 1000, 1), 1);
    assert_int_equal(track_open_count(t), 0);
    assert_int_equal(s.n, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(s.status[i], TRACK_ABORTED);
    track_free(t);
}

static void test_track_wanted_only_emitted(void **state)
{
    (void)state;
    struct seen s = {0};
    struct track_config cfg = {.max_open = 10, .idle = 60, .history = 10};
    struct track *t = track_new(&cfg, on_emit, &s);
    struct track_event ev = ev_base(1, "RCPT", "F.1", 100);
    ev.wanted = false;
    ev.recipient = "a@example.net";
    track_note(t, &ev);
    ev = ev_base(1, "END-OF-MESSAGE", "F.1", 101);
    ev.wanted = false;
    track_note(t, &ev);
    assert_int_equal(s.n, 0);
    /* One wanted request makes the message wanted. */
    ev = ev_base(1, "RCPT", "F.2", 102);
    ev.wanted = false;
    ev.recipient = "a@example.net";
    track_note(t, &ev);
    ev = ev_base(1, "RCPT", "F.2", 102);
    ev.recipient = "customer@example.net";
    track_note(t, &ev);
    ev = ev_base(1, "END-OF-MESSAGE", "F.2", 103);
    ev.wanted = false;
    track_note(t, &ev);
    assert_int_equal(s.n, 1);
    assert_string_equal(s.instance[0], "F.2");
    /* Unwanted ones still serve as evidence. */
    const struct track_msg *out[8];
    assert_int_equal(track_recent(t, "ip:192.0.2.7", 12, out, 8), 2);
    track_free(t);
}

static void test_track_ignored_requests(void **state)
{
    (void)state;
    struct track_config cfg = {.max_open = 10, .idle = 60, .history = 10};
    struct track *t = track_new(&cfg, NULL, NULL);
    struct track_event ev = ev_base(1, "CONNECT", "G.1", 100);
    assert_false(track_note(t, &ev));
    ev = ev_base(1, "RCPT", "", 100);
    assert_false(track_note(t, &ev));
    ev = ev_base(1, "RCPT", NULL, 100);
    assert_false(track_note(t, &ev));
    ev = ev_base(1, NULL, "G.1", 100);
    assert_false(track_note(t, &ev));
    assert_int_equal(track_open_count(t), 0);
    track_free(t);
}

static void test_track_recent_by_key(void **state)
{
    (void)state;
    struct track_config cfg = {.max_open = 10, .idle = 60, .history = 3};
    struct track *t = track_new(&cfg, NULL, NULL);
    static const char *const other_keys[] = {"ip:203.0.113.9"};
    static const size_t other_lens[] = {14};
    char inst[16];
    for (int i = 0; i < 5; i++) {
        snprintf(inst, sizeof inst, "H.%d", i);
        struct track_event ev = ev_base(1, "END-OF-MESSAGE", inst, 100 + i);
        if (i == 3) {
            ev.keys = other_keys;
            ev.key_lens = other_lens;
            ev.n_keys = 1;
        }
        track_note(t, &ev);
    }
    /* An open one comes first. */
    struct track_event ev = ev_base(2, "RCPT", "H.9", 200);
    ev.recipient = "now@example.net";
    track_note(t, &ev);
    const struct track_msg *out[8];
    /* History keeps 3: H.2, H.3, H.4; H.3 has another key. */
    size_t n = track_recent(t, "ip:192.0.2.7", 12, out, 8);
    assert_int_equal(n, 3);
    assert_string_equal(out[0]->instance, "H.9");
    assert_int_equal(out[0]->status, TRACK_OPEN);
    assert_string_equal(out[1]->instance, "H.4");
    assert_string_equal(out[2]->instance, "H.2");
    assert_int_equal(track_recent(t, "ip:192.0.2.7", 12, out, 1), 1);
    assert_int_equal(track_recent(t, "ip:192.0.2.7", 11, out, 8), 0);
    /* Shrinking the history on reload keeps the newest. */
    struct track_config smaller = {.max_open = 10, .idle = 60, .history = 1};
    track_configure(t, &smaller, 201);
    n = track_recent(t, "ip:192.0.2.7", 12, out, 8);
    assert_int_equal(n, 2);
    assert_string_equal(out[1]->instance, "H.4");
    track_free(t);
}

static void test_track_caps_and_escaping(void **state)
{
    (void)state;
    struct seen s = {0};
    struct track_config cfg = {.max_open = 10, .idle = 60, .history = 0};
    struct track *t = track_new(&cfg, on_emit, &s);
    char rcpt[64];
    for (int i = 0; i < TRACK_MAX_RCPTS + 10; i++) {
        snprintf(rcpt, sizeof rcpt, "r%d@example.net", i);
        struct track_event ev = ev_base(1, "RCPT", "I.1", 100);
        ev.recipient = rcpt;
        track_note(t, &ev);
    }
    char longname[1000];
    memset(longname, 'a', sizeof longname - 1);
    longname[sizeof longname - 1] = '\0';
    struct track_event ev = ev_base(1, "END-OF-MESSAGE", "I.1", 101);
    ev.sender = "we\"ird\\\x01\xff@example.org";
    ev.helo_name = longname;
    track_note(t, &ev);
    assert_int_equal(s.n, 1);
    char want[64];
    snprintf(want, sizeof want, "\"recipients_total\":%d", TRACK_MAX_RCPTS + 10);
    assert_non_null(strstr(s.json[0], want));
    assert_non_null(strstr(s.json[0], "\"sender\":\"we\\\"ird\\\\??@example.org\""));
    /* The HELO was cut at TRACK_FIELD_MAX bytes. */
    char *h = strstr(s.json[0], "\"helo_name\":\"");
    assert_non_null(h);
    h += strlen("\"helo_name\":\"");
    assert_int_equal(strcspn(h, "\""), TRACK_FIELD_MAX);
    track_free(t);
}

static void test_track_format_line(void **state)
{
    (void)state;
    struct track_config cfg = {.max_open = 10, .idle = 60, .history = 5};
    struct track *t = track_new(&cfg, NULL, NULL);
    struct track_event ev = ev_base(1, "RCPT", "J.1", 1700000000);
    ev.recipient = "a@example.net";
    track_note(t, &ev);
    ev = ev_base(1, "END-OF-MESSAGE", "J.1", 1700000001);
    ev.queue_id = "QID1";
    ev.size = "512";
    ev.rule = "flood";
    ev.verdict = "reject";
    ev.refused = true;
    track_note(t, &ev);
    const struct track_msg *out[1];
    assert_int_equal(track_recent(t, "user:alice", 10, out, 1), 1);
    struct textbuf b;
    textbuf_init(&b, 1000);
    track_format_line(out[0], &b);
    assert_string_equal(textbuf_cstr(&b),
                        "2023-11-14 22:13:20Z QID1 from=<alice@example.org> to=<a@example.net> "
                        "size=512 complete (END-OF-MESSAGE reject by flood)");
    textbuf_fini(&b);
    track_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_track_multi_recipient_one_record),
        cmocka_unit_test(test_track_message_follows_a_reconnect),
        cmocka_unit_test(test_track_verdicts_and_refused),
        cmocka_unit_test(test_track_new_instance_aborts_previous),
        cmocka_unit_test(test_track_idle_sweep_and_cap),
        cmocka_unit_test(test_track_wanted_only_emitted),
        cmocka_unit_test(test_track_ignored_requests),
        cmocka_unit_test(test_track_recent_by_key),
        cmocka_unit_test(test_track_caps_and_escaping),
        cmocka_unit_test(test_track_format_line),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
