"""Alert mail, message tracking and the event record, against the real
daemon: alerts arrive at an SMTP catcher on a loopback port (or a fake
sendmail), one per (rule, key) per interval, across two daemons sharing
a Redis too; a dead or silent relay never slows an answer; one tracking
record per message in the JSON log and the Redis stream; the query
command finds a sender's messages; config mistakes are reported with
file:line:col."""

import json
import os
import re
import subprocess
import sys
import time

import harness as h

QUERY = os.path.join(h.ROOT, "scripts", "smtpguard-log")
# The de-dup interval of the tests: long enough for a slow (sanitized)
# daemon to show a duplicate within it, short enough to wait out.
EVERY = 3 * h.SLOW


def alert_config(port, relay_port=None, every="1h", store=None, **alerts):
    cfg = h.base_config(port)
    if store:
        cfg["store"] = store
    cfg["points"] = [
        {"name": "per-rcpt", "when": {"protocol_state": "RCPT"}, "add": {"ip": 1}},
    ]
    cfg["actions"] = [
        {"name": "flood", "when": {"ip": ">= 5"}, "do": ["reject", "mail"],
         "message": "550 5.7.1 %{client_address} sent too much"},
    ]
    al = {"from": "smtpguard@isp.example", "to": ["abuse@isp.example", "noc@isp.example"],
          "every": every, "timeout": "2s", "retry_delay": "200ms", "retries": 2}
    if relay_port:
        al["smtp"] = "127.0.0.1:%d" % relay_port
    al.update(alerts)
    cfg["alerts"] = al
    return cfg


def message(c, client, rcpts, instance, sender="sender@example.org", size="1000", qid="",
            data=True, **extra):
    """One message's requests on one policy connection; the answers."""
    answers = []
    for r in rcpts:
        answers.append(c.request(h.policy_request(state="RCPT", client_address=client,
                                                  sender=sender, recipient=r,
                                                  instance=instance, **extra)))
    if data:
        answers.append(c.request(h.policy_request(
            state="END-OF-MESSAGE", client_address=client, sender=sender, instance=instance,
            size=size, queue_id=qid, recipient_count=str(len(rcpts)), **extra)))
    return answers


def json_records(path, kind=None):
    try:
        with open(path) as f:
            recs = [json.loads(l) for l in f if l.strip()]
    except FileNotFoundError:
        return []
    return [r for r in recs if kind is None or r.get("type", "decision") == kind]


class AlertTest(h.SGTestCase):

    def setUp(self):
        super().setUp()
        self.catcher = h.SMTPCatcher()
        self.addCleanup(self.catcher.stop)

    def test_one_alert_per_interval_with_evidence_and_suppressed_count(self):
        d = self.start_daemon(alert_config(h.free_port(), self.catcher.port, every="%gs" % EVERY))
        c = self.client(d)
        # Two clean messages, then a flood of recipients from the same IP.
        message(c, "198.51.100.9", ["a1@example.net"], "i.1", qid="QA1", size="1111")
        message(c, "198.51.100.9", ["a2@example.net", "a3@example.net"], "i.2", qid="QA2",
                size="2222")
        answers = message(c, "198.51.100.9", ["f%d@example.net" % i for i in range(6)], "i.3",
                          data=False)
        self.assertEqual(answers[:1], ["DUNNO"])
        self.assertEqual(answers[1:], ["550 5.7.1 198.51.100.9 sent too much"] * 5)
        mails = self.catcher.wait_mails(1)
        t_first = time.monotonic()
        time.sleep(0.5)
        self.assertEqual(len(self.catcher.mails), 1, "one alert per interval")
        m = mails[0]
        self.assertEqual(m.mail_from, "smtpguard@isp.example")
        self.assertEqual(m.rcpts, ["abuse@isp.example", "noc@isp.example"])
        msg = m.message()
        self.assertEqual(msg["Subject"], "smtpguard: flood reject ip:198.51.100.9")
        self.assertEqual(msg["Auto-Submitted"], "auto-generated")
        body = m.body()
        self.assertIn("Rule:        flood (reject)", body)
        self.assertIn("Scores:      ip=5", body)
        self.assertIn("Answer:      550 5.7.1 198.51.100.9 sent too much", body)
        self.assertIn("Suppressed:  0 more", body)
        # Evidence: the open transaction first, then the two messages.
        ev = body.split("Last messages of ip:198.51.100.9:\n", 1)[1].strip().splitlines()
        self.assertEqual(len(ev), 3, body)
        self.assertRegex(ev[0], r"from=<sender@example.org> to=<f0@example.net> refused=1 open "
                                r"\(RCPT reject by flood\)")
        self.assertRegex(ev[1], r" QA2 from=<sender@example.org> "
                                r"to=<a2@example.net>,<a3@example.net> size=2222 complete$")
        self.assertRegex(ev[2], r" QA1 from=<sender@example.org> to=<a1@example.net> "
                                r"size=1111 complete$")
        # After the interval the next trip alerts again, counting the 4
        # swallowed ones.
        time.sleep(max(0, EVERY + 0.2 - (time.monotonic() - t_first)))
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.9",
                                                    instance="i.4")),
                         "550 5.7.1 198.51.100.9 sent too much")
        mails = self.catcher.wait_mails(2)
        self.assertIn("Suppressed:  4 more", mails[1].body())
        # Another key has its own interval.
        for _ in range(5):
            c.request(h.policy_request(client_address="198.51.100.10", instance="j.1"))
        mails = self.catcher.wait_mails(3)
        self.assertEqual(mails[2].message()["Subject"], "smtpguard: flood reject ip:198.51.100.10")

    def test_alert_counters_in_metrics(self):
        import test_admin as ta
        admin = "127.0.0.1:%d" % h.free_port()
        cfg = alert_config(h.free_port(), self.catcher.port)
        cfg["admin"] = {"listen": admin}
        d = self.start_daemon(cfg)
        c = self.client(d)
        for _ in range(7):
            c.request(h.policy_request(client_address="198.51.100.11", instance="m.1"))
        self.catcher.wait_mails(1)

        def counters():
            st, _, body = ta.http(admin, "GET", "/metrics")
            self.assertEqual(st, 200)
            f = ta.parse_metrics(body)
            return (ta.sample(f, "smtpguard_alerts_sent_total"),
                    ta.sample(f, "smtpguard_alerts_suppressed_total"))
        # Three trips: one mail, two swallowed by the interval.
        got = h.wait_until(lambda: counters() if counters()[0] == 1 else None, 5 * h.SLOW,
                           what="the sent alert counted")
        self.assertEqual(got, (1, 2))

    def test_two_daemons_one_redis_send_exactly_one(self):
        r = self.start_redis()
        store = h.redis_store(r.port)
        cfgs = [alert_config(h.free_port(), self.catcher.port, every="%gs" % EVERY, store=store)
                for _ in range(2)]
        d1 = self.start_daemon(cfgs[0], name="sg1")
        d2 = self.start_daemon(cfgs[1], name="sg2")
        c1, c2 = self.client(d1), self.client(d2)
        # Both see the shared score; both trip the rule, one by one, 10 times.
        for i in range(14):
            c = c1 if i % 2 == 0 else c2
            c.request(h.policy_request(client_address="203.0.113.5", instance="k.%d" % i))
        self.catcher.wait_mails(1)
        t_first = time.monotonic()
        time.sleep(0.5)
        self.assertEqual(len(self.catcher.mails), 1,
                         "two daemons on one Redis sent %d alerts" % len(self.catcher.mails))
        self.assertIsNotNone(r.cmd("GET", "sg:alert:flood:ip:203.0.113.5"))
        # The next interval's alert counts what both hosts swallowed: 10
        # trips (score 5..14), one of which alerted.
        time.sleep(max(0, EVERY + 0.2 - (time.monotonic() - t_first)))
        c2.request(h.policy_request(client_address="203.0.113.5", instance="k.99"))
        mails = self.catcher.wait_mails(2)
        time.sleep(0.5)
        self.assertEqual(len(self.catcher.mails), 2)
        self.assertIn("Suppressed:  9 more", mails[1].body())
        self.assertIsNone(r.cmd("GET", "sg:alert-suppressed:flood:ip:203.0.113.5"))

    def _answers_stay_fast(self, d, n=40):
        c = self.client(d)
        worst = 0.0
        t_all = time.monotonic()
        for i in range(n):
            # A different client each time: every request is a new alert.
            t0 = time.monotonic()
            for _ in range(5):
                c.request(h.policy_request(client_address="192.0.2.%d" % (100 + i),
                                           instance="m.%d" % i))
            worst = max(worst, time.monotonic() - t0)
        total = time.monotonic() - t_all
        self.assertLess(worst, 0.5 * h.SLOW, "5 answers took %.2fs with a dead relay" % worst)
        self.assertLess(total, 4 * h.SLOW, "%d answers took %.2fs" % (5 * n, total))

    def test_dead_relay_does_not_slow_answers(self):
        dead = h.free_port()   # nobody listens there
        d = self.start_daemon(alert_config(h.free_port(), dead, queue=10))
        m = d.mark()
        self._answers_stay_fast(d)
        # The queue is bounded and the failures are retried, then given up.
        d.wait_log(r"alert rule=flood key=ip:192\.0\.2\.\d+ dropped: 10 mails already wait",
                   since=m)
        d.wait_log(r"failed \(try 1 of 3\), retrying in 0\.2s: connect: connection refused", since=m)
        d.wait_log(r"given up after 3 tries: connect: connection refused", since=m, timeout=10)

    def test_silent_relay_does_not_slow_answers(self):
        hang = h.SMTPCatcher(mode="hang")
        self.addCleanup(hang.stop)
        d = self.start_daemon(alert_config(h.free_port(), hang.port, timeout="1s", retries=0))
        m = d.mark()
        self._answers_stay_fast(d)
        d.wait_log(r"given up after 1 tries: no answer within 1000 ms", since=m, timeout=10)

    def test_relay_tempfail_retried_then_delivered(self):
        tf = h.SMTPCatcher(mode="tempfail")
        d = self.start_daemon(alert_config(h.free_port(), tf.port, retry_delay="500ms"))
        m = d.mark()
        c = self.client(d)
        for _ in range(5):
            c.request(h.policy_request(client_address="198.51.100.44", instance="t.1"))
        d.wait_log(r"failed \(try 1 of 3\), retrying in 0\.5s: 451 4\.3\.0 try later", since=m)
        # The relay recovers on the same port: the retry delivers.
        port = tf.port
        tf.stop()
        ok = h.SMTPCatcher(port=port)
        self.addCleanup(ok.stop)
        mails = ok.wait_mails(1, timeout=10)
        self.assertIn("ip:198.51.100.44", mails[0].message()["Subject"])

    def test_recipient_refused_for_now_gets_a_retry(self):
        # One recipient refused with 4xx while another took the mail: the
        # mail counted as sent, and the refused one never got it.
        relay = h.SMTPCatcher(refuse_once=["abuse@isp.example"])
        self.addCleanup(relay.stop)
        d = self.start_daemon(alert_config(h.free_port(), relay.port))
        c = self.client(d)
        for _ in range(5):
            c.request(h.policy_request(client_address="198.51.100.69"))
        mails = relay.wait_mails(2)
        self.assertEqual([m.rcpts for m in mails], [["noc@isp.example"], ["abuse@isp.example"]])
        self.assertEqual(relay.sessions, 2)

    def test_slow_final_dot_reply_is_waited_for(self):
        # The step timeout covered the reply to the data's final dot too: a
        # relay that took 3 s to queue the mail got it three times.
        slow = h.SMTPCatcher(dot_delay=3)
        self.addCleanup(slow.stop)
        d = self.start_daemon(alert_config(h.free_port(), slow.port, timeout="1s", retries=2))
        c = self.client(d)
        for _ in range(5):
            c.request(h.policy_request(client_address="198.51.100.68"))
        d.wait_log(r"alert rule=flood key=\S+ (sent to|[^\n]*given up)", timeout=15 * h.SLOW)
        self.assertRegex(d.log(), r"alert rule=flood key=\S+ sent to abuse@isp.example")
        self.assertNotIn("failed (try", d.log())
        self.assertEqual(len(slow.mails), 1)
        self.assertEqual(slow.sessions, 1)

    def test_hung_sendmail_killed_with_its_children(self):
        # A sendmail that hangs was killed alone: what it had started (a
        # real one's postdrop) was left running, one more at every retry.
        pids = self.tmp.join("children")
        fake = self.tmp.write("hung-sendmail", "#!/bin/sh\n"
                              "sleep 100 &\n"
                              "echo $! >> %s\n"
                              "cat > /dev/null\n"
                              "wait\n" % pids, mode=0o755)
        d = self.start_daemon(alert_config(h.free_port(), sendmail=fake, timeout="1s",
                                           retries=1, retry_delay="200ms"))
        c = self.client(d)
        for _ in range(5):
            c.request(h.policy_request(client_address="198.51.100.67"))
        d.wait_log("given up", timeout=10 * h.SLOW)

        def gone(pid):
            try:
                with open("/proc/%d/stat" % pid) as f:
                    return f.read().rsplit(")", 1)[1].split()[0] == "Z"
            except FileNotFoundError:
                return True
        with open(pids) as f:
            children = [int(x) for x in f.read().split()]
        self.assertEqual(len(children), 2)     # the try and its retry
        h.wait_until(lambda: all(gone(p) for p in children), 5, what="the children killed")

    def test_sendmail_and_digest(self):
        spool = self.tmp.mkdir("spool")
        fake = self.tmp.write("fake-sendmail", "#!/bin/sh\n"
                              "f=$(mktemp %s/mail.XXXXXX)\n"
                              "printf '%%s\\n' \"$@\" > $f.args\n"
                              "cat > $f.eml\n" % spool, mode=0o755)
        cfg = alert_config(h.free_port(), every="2s", sendmail=fake, digest=True)
        d = self.start_daemon(cfg)
        c = self.client(d)
        t0 = time.monotonic()
        for ip in ("198.51.100.61", "198.51.100.62"):
            for _ in range(6):
                c.request(h.policy_request(client_address=ip, instance="s." + ip))

        def mails():
            return sorted(os.path.join(spool, f) for f in os.listdir(spool) if f.endswith(".eml"))
        h.wait_until(lambda: mails() and os.path.getsize(mails()[0]) > 0, 10 * h.SLOW,
                     what="the digest from the fake sendmail")
        self.assertGreater(time.monotonic() - t0, 1.0, "a digest waits for its interval")
        time.sleep(0.5)
        self.assertEqual(len(mails()), 1, "one digest, not one mail per alert")
        with open(mails()[0][:-4] + ".args") as f:
            self.assertEqual(f.read().split("\n")[:-1],
                             ["-i", "-f", "smtpguard@isp.example", "--", "abuse@isp.example",
                              "noc@isp.example"])
        with open(mails()[0], "rb") as f:
            raw = f.read()
        self.assertNotIn(b"\r\n", raw, "sendmail gets local line ends")
        import email
        import email.policy
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(msg["Subject"], "smtpguard digest: 2 alerts")
        body = msg.get_content()
        self.assertIn("Key:         ip:198.51.100.61", body)
        self.assertIn("Key:         ip:198.51.100.62", body)


    def test_digest_too_big_for_one_mail_stays_whole(self):
        # 200 alerts whose text holds a 3,000-byte HELO (quoted-printable
        # triples it): the digest's text was cut at half the mail's cap,
        # then the mail inside an escape, and the entries past the cut
        # vanished without a word. Whole entries, a note for the rest.
        spool = self.tmp.mkdir("spool")
        fake = self.tmp.write("fake-sendmail", "#!/bin/sh\n"
                              "f=$(mktemp %s/mail.XXXXXX)\n"
                              "cat > $f.eml\n" % spool, mode=0o755)
        cfg = alert_config(h.free_port(), every="2s", sendmail=fake, digest=True,
                           body="Rule: %{rule}\nKey: %{key}\nHelo: %{helo_name}\n")
        cfg["actions"] = [{"name": "any", "when": {"ip": ">= 1"}, "do": ["dunno", "mail"]}]
        d = self.start_daemon(cfg)
        c = self.client(d)
        helo = "\u00e9" * 1500
        for i in range(200):
            c.request(h.policy_request(client_address="198.51.%d.%d" % (100 + i // 250, i % 250),
                                       helo_name=helo))

        def mails():
            return sorted(os.path.join(spool, f) for f in os.listdir(spool) if f.endswith(".eml"))
        h.wait_until(lambda: mails() and os.path.getsize(mails()[0]) > 0, 15 * h.SLOW,
                     what="the digest from the fake sendmail")
        time.sleep(0.5)
        import email
        import email.policy
        with open(mails()[0], "rb") as f:
            raw = f.read()
        self.assertLessEqual(len(raw), 1 << 20)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        self.assertEqual(msg["Content-Transfer-Encoding"], "quoted-printable")
        body = msg.get_content()
        self.assertIn("200 alerts in the last", body)
        # (No body in the messages: it is half a megabyte.)
        self.assertFalse("\ufffd" in body, "a character cut in the middle")
        listed = body.count("Rule: any")
        self.assertEqual(len(re.findall(r"Helo: \u00e9+\s", body)), listed,
                         "an entry cut in the middle")
        m = re.search(r"\((\d+) more not listed: the mail's size limit\)", body)
        self.assertIsNotNone(m, "no word of the entries left out")
        self.assertEqual(listed + int(m.group(1)), 200)
        self.assertGreater(listed, 10)

    def test_reload_turns_alerts_on_and_off(self):
        port = h.free_port()
        cfg = alert_config(port, self.catcher.port)
        plain = dict(cfg)
        del plain["alerts"]
        plain["actions"] = [{"name": "flood", "when": {"ip": ">= 5"}, "do": "reject"}]
        d = self.start_daemon(plain)
        c = self.client(d)
        ok, text = d.reload(cfg)
        self.assertTrue(ok, text)
        for _ in range(5):
            c.request(h.policy_request(client_address="198.51.100.77", instance="r.1"))
        self.catcher.wait_mails(1)
        # A silent relay holds a delivery in progress across the next
        # reload and the stop: both must stay clean (the harness checks
        # exit 0 and no sanitizer report).
        hang = h.SMTPCatcher(mode="hang")
        self.addCleanup(hang.stop)
        ok, text = d.reload(alert_config(port, hang.port))
        self.assertTrue(ok, text)
        for _ in range(5):
            c.request(h.policy_request(client_address="198.51.100.78", instance="r.2"))
        h.wait_until(lambda: hang.sessions >= 1, 5 * h.SLOW, what="a session at the silent relay")
        ok, text = d.reload(plain)
        self.assertTrue(ok, text)
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.79")), "DUNNO")
        self.assertEqual(len(self.catcher.mails), 1)


class TrackingTest(h.SGTestCase):

    def config(self, **extra):
        cfg = h.base_config(h.free_port())
        cfg["log"]["json"] = self.tmp.join("events.jsonl")
        cfg.update(extra)
        return cfg

    def test_multi_recipient_message_one_record(self):
        cfg = self.config(tracking={"idle": "1s"})
        cfg["actions"] = cfg["actions"][:1]     # no per-user limit: all 3 recipients pass
        d = self.start_daemon(cfg)
        c = self.client(d)
        c.request(h.policy_request(state="MAIL", client_address="198.51.100.20", recipient="",
                                   instance="T.1", size="500"))
        message(c, "198.51.100.20", ["x1@example.net", "x2@example.net", "x3@example.net"],
                "T.1", qid="3Q9k1", size="4242", sasl_username="carol")
        msgs = h.wait_until(lambda: json_records(self.tmp.join("events.jsonl"), "message"),
                            5, what="a message record")
        self.assertEqual(len(msgs), 1, msgs)
        m = msgs[0]
        self.assertEqual(m["recipients"], ["x1@example.net", "x2@example.net", "x3@example.net"])
        self.assertEqual(m["size"], 4242)
        self.assertEqual(m["queue_id"], "3Q9k1")
        self.assertEqual(m["status"], "complete")
        self.assertEqual(m["sasl_username"], "carol")
        self.assertEqual(m["client_address"], "198.51.100.20")
        self.assertEqual(m["recipient_count"], 3)
        self.assertIn("ip:198.51.100.20", m["keys"])
        self.assertIn("user:carol", m["keys"])
        self.assertEqual(m["rules"], ["per-rcpt"])
        for k in ("time", "start", "host", "instance", "helo_name", "sender", "verdicts"):
            self.assertIn(k, m)
        # Decisions are records too, beside it.
        self.assertEqual(len(json_records(self.tmp.join("events.jsonl"), "decision")), 5)

    def test_aborted_transactions_are_closed_and_recorded(self):
        d = self.start_daemon(self.config(tracking={"idle": "1s", "max_open": 100}))
        c = self.client(d)
        # A transaction that never ends, then the same connection moves on.
        message(c, "198.51.100.21", ["y1@example.net"], "U.1", data=False)
        message(c, "198.51.100.21", ["y2@example.net"], "U.2", data=False)
        recs = h.wait_until(lambda: json_records(self.tmp.join("events.jsonl"), "message"), 5,
                            what="the first aborted record")
        self.assertEqual([(r["instance"], r["status"]) for r in recs], [("U.1", "aborted")])
        # The second is closed by the idle sweep.
        recs = h.wait_until(lambda: len(json_records(self.tmp.join("events.jsonl"),
                                                     "message")) == 2 and
                            json_records(self.tmp.join("events.jsonl"), "message"),
                            5 * h.SLOW, what="the idle record")
        self.assertEqual((recs[1]["instance"], recs[1]["status"]), ("U.2", "aborted"))
        self.assertEqual(recs[1]["recipients"], ["y2@example.net"])
        # Many transactions from many connections: memory stays under
        # max_open (the least recently used are closed as aborted).
        clients = [self.client(d) for _ in range(3)]
        for i in range(150):
            message(clients[i % 3], "198.51.100.22", ["z@example.net"], "V.%d" % i, data=False)
        recs = h.wait_until(lambda: len(json_records(self.tmp.join("events.jsonl"),
                                                     "message")) >= 152 and
                            json_records(self.tmp.join("events.jsonl"), "message"),
                            5 * h.SLOW, what="all 150 records")
        self.assertTrue(all(r["status"] == "aborted" for r in recs))
        self.assertEqual(len({r["instance"] for r in recs}), 152, "one record per transaction")

    def test_open_transactions_recorded_at_stop(self):
        # At SIGTERM the open transactions were freed without a record,
        # and so when a reload switched tracking off.
        d = self.start_daemon(self.config(tracking={"idle": "1h"}))
        c = self.client(d)
        message(c, "198.51.100.23", ["w1@example.net"], "S.1", data=False)
        self.assertEqual(d.stop(), 0)
        recs = json_records(self.tmp.join("events.jsonl"), "message")
        self.assertEqual([(r["instance"], r["status"], r["recipients"]) for r in recs],
                         [("S.1", "aborted", ["w1@example.net"])])
        cfg = self.config(tracking={"idle": "1h"})
        d2 = self.start_daemon(cfg, name="sg2")
        c2 = self.client(d2)
        message(c2, "198.51.100.24", ["w2@example.net"], "S.2", data=False)
        cfg.pop("tracking")
        ok, _ = d2.reload(cfg)
        self.assertTrue(ok)
        recs = json_records(self.tmp.join("events.jsonl"), "message")
        self.assertIn(("S.2", "aborted"), [(r["instance"], r["status"]) for r in recs])

    def test_tracking_rule_chooses_messages(self):
        d = self.start_daemon(self.config(tracking={"when": {"sender": {"re": "@customer-x\\.example$"}}}))
        c = self.client(d)
        message(c, "198.51.100.30", ["a@example.net"], "W.1", sender="boss@customer-x.example")
        message(c, "198.51.100.30", ["b@example.net"], "W.2", sender="other@example.org")
        message(c, "198.51.100.30", ["c@example.net"], "W.3", sender="ceo@customer-x.example")
        time.sleep(0.3 * h.SLOW)
        recs = json_records(self.tmp.join("events.jsonl"), "message")
        self.assertEqual([r["instance"] for r in recs], ["W.1", "W.3"])

    def test_smtpguard_log_takes_odd_lines_and_arguments(self):
        # Lines that are JSON but no record, a time that is no number, and
        # arguments out of range gave tracebacks (exit 1).
        path = self.tmp.write("odd.jsonl", "[1,2]\n\"x\"\n"
                              '{"time":"yesterday","rule":"r1","client_address":"192.0.2.1"}\n'
                              '{"time":1796000000,"rule":"r2","client_address":"192.0.2.2"}\n')

        def run(*args):
            p = subprocess.run([sys.executable, QUERY] + list(args), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=20)
            return p.returncode, p.stdout.decode(), p.stderr.decode()
        rc, out, err = run("--file", path, "--json")
        self.assertEqual(rc, 0, err)
        self.assertEqual([r.get("rule") for r in json.loads(out)], ["r2", "r1"])
        rc, out, err = run("--file", path, "--since", "1d", "--json")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out), [])
        for bad in (["--limit", "0"], ["--redis", "127.0.0.1:abc"]):
            rc, out, err = run(*(["--file", path] if bad[0] == "--limit" else []) + bad)
            self.assertEqual(rc, 2, (bad, err))
            self.assertNotIn("Traceback", err)
        # Records of ours in shape, with fields of other types: a time out
        # of range, recipients that are no list, a sender that is a number.
        odd = self.tmp.write("odd2.jsonl",
                             '{"time":1e20,"client_address":"192.0.2.3"}\n'
                             '{"type":"message","recipients":"abc","recipients_total":"9"}\n'
                             '{"sender":5,"verdicts":[1]}\n'
                             '{"type":"message","recipients":[1,"a@x"],"verdicts":[1,{"rule":2}]}\n')
        for args in ([], ["--sender", "x"], ["--user", "u"], ["--ip", "192.0.2.3"]):
            rc, out, err = run("--file", odd, *args)
            self.assertEqual(rc, 0, (args, err))
            self.assertNotIn("Traceback", err)
        rc, out, err = run("--file", odd, "--ip", "192.0.2.3")
        self.assertIn("192.0.2.3", out)

    def test_stream_events_refused_by_redis_are_counted(self):
        # An XADD that Redis refuses (the key holds a string) lost the
        # event without a word: its error reply was thrown away.
        r = self.start_redis()
        r.cmd("SET", "sg:events", "i am a string")
        cfg = self.config(tracking={},
                          log={"stderr": True, "level": "info",
                               "stream": {"key": "sg:events", "maxlen": 1000}},
                          store=h.redis_store(r.port))
        d = self.start_daemon(cfg)
        c = self.client(d)
        message(c, "198.51.100.42", ["q1@example.net"], "E.1", qid="QE1")
        d.wait_log(r"event stream sg:events: Redis said .*WRONGTYPE.*events dropped so far")
        self.assertEqual(r.cmd("GET", "sg:events"), "i am a string")

    def test_stream_and_json_records_and_the_query_command(self):
        r = self.start_redis()
        cfg = self.config(tracking={},
                          log={"stderr": True, "level": "info", "json": self.tmp.join("events.jsonl"),
                               "stream": {"key": "sg:events", "maxlen": 1000}},
                          store=h.redis_store(r.port))
        d = self.start_daemon(cfg)
        c = self.client(d)
        message(c, "198.51.100.40", ["q1@example.net", "q2@example.net"], "S.1",
                sender="alice@customer.example", qid="QQ1", size="3000", sasl_username="alice")
        message(c, "198.51.100.41", ["q3@example.net"], "S.2", sender="bob@other.example",
                qid="QQ2", size="10")
        message(c, "198.51.100.40", ["q4@example.net"], "S.3", sender="alice@customer.example",
                qid="QQ3", size="20", sasl_username="alice")
        entries = h.wait_until(lambda: (lambda e: len(e) >= 10 and e)(
            r.cmd("XRANGE", "sg:events", "-", "+")), 5, what="10 stream entries")
        types = []
        for entry_id, fields in entries:
            f = dict(zip(fields[0::2], fields[1::2]))
            rec = json.loads(f["json"])     # complete and parseable
            types.append(f["type"])
            self.assertIn(f["type"], ("decision", "message"))
            self.assertTrue(f["host"])
            if f["type"] == "message":
                self.assertEqual(rec["type"], "message")
                self.assertIn("recipients", rec)
        self.assertEqual(types.count("message"), 3)
        self.assertEqual(types.count("decision"), 7)
        # The stream's length stays capped (approximately).
        self.assertLessEqual(r.cmd("XLEN", "sg:events"), 1000)

        for src in (["--file", self.tmp.join("events.jsonl")],
                    ["--redis", "127.0.0.1:%d" % r.port, "--key", "sg:events"]):
            p = subprocess.run([sys.executable, QUERY] + src +
                               ["--sender", "Alice@Customer.example", "--messages", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
            self.assertEqual(p.returncode, 0, p.stderr)
            found = json.loads(p.stdout)
            self.assertEqual([m["queue_id"] for m in found], ["QQ3", "QQ1"], src)
            self.assertEqual(found[1]["recipients"], ["q1@example.net", "q2@example.net"])
            # The table: a header and one line per record.
            p = subprocess.run([sys.executable, QUERY] + src + ["--net", "198.51.100.40/31",
                                                                 "--since", "1h"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
            self.assertEqual(p.returncode, 0, p.stderr)
            lines = p.stdout.decode().splitlines()
            self.assertTrue(lines[0].startswith("TIME"), lines)
            self.assertEqual(len(lines), 1 + 10, p.stdout.decode())
            self.assertTrue(any("QQ2" in l and "bob@other.example" in l for l in lines))
            p = subprocess.run([sys.executable, QUERY] + src + ["--user", "alice", "--decisions",
                                                                 "--json", "--limit", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=20)
            found = json.loads(p.stdout)
            self.assertEqual(len(found), 2)
            self.assertTrue(all(f["sasl_username"] == "alice" and f["type"] == "decision"
                                for f in found))


class AlertConfigTest(h.SGTestCase):

    def check(self, text):
        d = h.Daemon(self.tmp, text)
        rc, err, out = d.check_config()
        return rc, err

    def test_mail_needs_alerts(self):
        rc, err = self.check(
            "counters:\n  ip: { key: client_address, half_life: 10m }\n"
            "actions:\n  - name: flood\n    when: { ip: \">= 5\" }\n    do: [reject, mail]\n")
        self.assertEqual(rc, 1)
        self.assertRegex(err, r"sg\.yaml:6:18: actions\[0\]\.do\[1\]: mail needs a top-level "
                              r"alerts: section")

    def test_alerts_mistakes_reported_with_position(self):
        rc, err = self.check(
            "alerts:\n"
            "  smtp: mail.example:25\n"
            "  sendmail: /usr/sbin/sendmail\n"
            "  from: not-an-address\n"
            "  to: [abuse@isp.example, \"bad <x@y>\"]\n"
            "  every: 1x\n"
            "  subject: \"%{nope}\"\n"
            "  colour: red\n"
            "counters:\n  ip: { key: client_address, half_life: 10m }\n"
            "actions:\n  - { name: flood, when: { ip: \">= 5\" }, do: [reject, \"mail nosuch\"] }\n")
        self.assertEqual(rc, 1)
        for want in (r"sg\.yaml:2:9: alerts\.smtp: expected an IP address and port",
                     r"sg\.yaml:3:13: alerts: smtp: and sendmail: exclude each other",
                     r"sg\.yaml:4:9: alerts\.from: expected a mail address",
                     r"sg\.yaml:5:27: alerts\.to\[1\]: expected a mail address",
                     r"sg\.yaml:6:10: alerts\.every: expected a duration",
                     r"sg\.yaml:7:12: alerts\.subject: unknown variable %\{nope\}",
                     r"sg\.yaml:8:3: alerts: unknown setting \"colour\"",
                     r"sg\.yaml:12:55: actions\[0\]\.do\[1\]: mail: no counter named \"nosuch\""):
            self.assertRegex(err, want)

    def test_good_alerts_config_is_accepted(self):
        rc, err = self.check(
            "alerts: { smtp: \"127.0.0.1:25\", from: sg@isp.example, to: [abuse@isp.example],"
            " every: 1h, digest: false, subject: \"%{rule} %{key}\", evidence: 5 }\n"
            "tracking: { when: { sasl_username: { not: \"\" } }, max_open: 1000, idle: 5m }\n"
            "log: { stream: { key: \"sg:events\", maxlen: 100000 } }\n"
            "counters:\n  ip: { key: client_address, half_life: 10m }\n"
            "actions:\n  - { name: flood, when: { ip: \">= 5\" }, do: [reject, mail ip] }\n")
        self.assertEqual(rc, 0, err)


class HoldingProxy:
    """A TCP proxy on loopback in front of a Redis that holds back, for
    `delay` seconds, every client chunk that contains `match` (and what
    follows it on that connection): one command made slow, the rest not."""

    def __init__(self, target_port, match, delay):
        import socket
        import threading
        self.target_port, self.match, self.delay = target_port, match, delay
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.srv.settimeout(0.2)
        self.port = self.srv.getsockname()[1]
        self.held = 0
        self._stop = False
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _pipe(self, src, dst, upstream):
        while not self._stop:
            try:
                data = src.recv(65536)
            except OSError:
                break
            if not data:
                break
            if upstream and self.match in data:
                self.held += 1
                time.sleep(self.delay)
            try:
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def _accept(self):
        import socket
        import threading
        while not self._stop:
            try:
                c, _ = self.srv.accept()
            except OSError:
                continue
            c.settimeout(None)
            up = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b, u in ((c, up, True), (up, c, False)):
                t = threading.Thread(target=self._pipe, args=(a, b, u), daemon=True)
                t.start()
                self._threads.append(t)

    def close(self):
        self._stop = True
        self.srv.close()


class AlertReloadTest(h.SGTestCase):

    def test_alerts_switched_off_while_a_dedup_question_is_out(self):
        # The event stream keeps the side Redis connection across a reload
        # that switches alerts off; the de-dup question still out then got
        # its answer into freed memory (a crash).
        catcher = h.SMTPCatcher()
        self.addCleanup(catcher.stop)
        redis = self.start_redis()
        proxy = HoldingProxy(redis.port, b"alert-suppressed", 2.0 * h.SLOW)
        self.addCleanup(proxy.close)
        store = h.redis_store(proxy.port)
        store["redis"]["timeout"] = "1s"
        cfg = alert_config(h.free_port(), catcher.port, store=store)
        cfg["log"] = {"stderr": True, "level": "info", "stream": {"key": "sg:events"}}
        d = self.start_daemon(cfg)
        c = self.client(d)
        for _ in range(5):
            c.request(h.policy_request(client_address="198.51.100.66"))
        h.wait_until(lambda: proxy.held > 0, 5, what="the de-dup question held by the proxy")
        cfg.pop("alerts")
        cfg["actions"][0]["do"] = "reject"
        ok, _ = d.reload(cfg)
        self.assertTrue(ok)
        time.sleep(2.5 * h.SLOW)    # the held question is answered now
        self.assertTrue(d.running(), "the daemon died: %s" % d.log_tail())
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.66")),
                         "550 5.7.1 198.51.100.66 sent too much")
