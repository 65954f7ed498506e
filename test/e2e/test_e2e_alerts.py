"""End to end: SMTP client -> real Postfix 3.7 -> smtpguard -> alert mail
to an SMTP catcher on a loopback port, with tracking records in the JSON
log. A flood through Postfix trips a `mail` action: exactly one alert per
interval, whose evidence is the messages Postfix really took (queue ids
and sizes from END-OF-MESSAGE); two MTAs with one smtpguard each on one
Redis still send one alert; a dead relay does not slow the SMTP session.
"""

import json
import time

import harness as h


def config(port, relay_port, store, json_path, every="1h"):
    return {
        "listen": ["127.0.0.1:%d" % port],
        "clients": ["127.0.0.0/8"],
        "store": store,
        "log": {"stderr": True, "level": "info", "json": json_path},
        "counters": {"ip": {"key": "client_address", "half_life": "10m"}},
        "points": [{"name": "per-rcpt", "when": {"protocol_state": "RCPT"}, "add": {"ip": 1}}],
        "actions": [
            {"name": "flood", "when": {"ip": ">= 5"}, "do": ["defer", "mail"],
             "message": "450 4.7.1 %{client_address} sent too much"},
        ],
        "tracking": {"idle": "1m"},
        "alerts": {"smtp": "127.0.0.1:%d" % relay_port, "from": "smtpguard@isp.example",
                   "to": ["abuse@isp.example"], "every": every, "timeout": "2s",
                   "retries": 1, "retry_delay": "1s"},
    }


def rcpts(n, tag):
    return ["%s%d@example.net" % (tag, i) for i in range(1, n + 1)]


def message_records(path):
    try:
        with open(path) as f:
            return [r for r in (json.loads(l) for l in f if l.strip()) if r.get("type") == "message"]
    except FileNotFoundError:
        return []


class PostfixAlertTest(h.SGTestCase):

    @classmethod
    def setUpClass(cls):
        h.require_postfix(None)
        h.require_redis(None)
        cls.ctmp = h.TempDir(prefix="sge2e.alerts.")
        cls.pf = cls.redis = None
        try:
            cls.redis = h.Redis(cls.ctmp).start()
            cls.policy_port = h.free_port()
            cls.pf = h.Postfix(cls.ctmp, cls.policy_port)
            cls.pf.start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.pf:
            cls.pf.stop()
        if cls.redis:
            cls.redis.stop()
        cls.ctmp.cleanup()

    def setUp(self):
        super().setUp()
        self.redis.cmd("FLUSHALL")
        self.catcher = h.SMTPCatcher()
        self.addCleanup(self.catcher.stop)
        self.json = self.tmp.join("events.jsonl")

    def diagnostics(self):
        return super().diagnostics() + "\n--- postfix maillog (class):\n" + self.pf.log_tail(3000)

    def smtp(self, port, addr, rcpt_list, **kw):
        s = h.smtp_session(port, rcpt_list, addr=addr, name="dsl-%s.isp.example" % addr.split(".")[-1],
                           **kw)
        self.assertEqual(s.mail.code, 250, s)
        return s

    def test_flood_one_alert_with_evidence_from_postfix(self):
        d = self.start_daemon(config(self.policy_port, self.catcher.port,
                                     h.redis_store(self.redis.port), self.json))
        port = self.pf.smtp_port
        s1 = self.smtp(port, "198.51.100.7", rcpts(2, "a"), data=True)
        s2 = self.smtp(port, "198.51.100.7", ["b1@example.net"], data=True,
                       body="Subject: second\r\n\r\n" + "x" * 5000 + "\r\n")
        self.assertEqual((s1.data.code, s2.data.code), (250, 250))
        # One record per message, with all its recipients and Postfix's
        # final size and queue id.
        recs = h.wait_until(lambda: (lambda r: len(r) == 2 and r)(message_records(self.json)), 5,
                            what="two message records")
        self.assertEqual(recs[0]["recipients"], ["a1@example.net", "a2@example.net"])
        self.assertEqual(recs[0]["recipient_count"], 2)
        self.assertEqual(recs[1]["recipients"], ["b1@example.net"])
        self.assertGreater(recs[1]["size"], 5000)
        self.assertGreater(recs[1]["size"], recs[0]["size"])
        qids = [r["queue_id"] for r in recs]
        self.assertTrue(all(q for q in qids), recs)
        self.assertEqual(recs[0]["client_name"], "dsl-7.isp.example")

        # The flood: 3 recipients so far, the 5th (f2) trips the rule.
        s3 = self.smtp(port, "198.51.100.7", rcpts(6, "f"))
        self.assertEqual(s3.codes(), [250] + [450] * 5, s3)
        self.assertEqual(s3.rcpts[1][1].text, "450 4.7.1 <f2@example.net>: Recipient address "
                                              "rejected: 198.51.100.7 sent too much")
        mails = self.catcher.wait_mails(1)
        # More trips in a new session: still one alert this interval.
        s4 = self.smtp(port, "198.51.100.7", rcpts(2, "g"))
        self.assertEqual(s4.codes(), [450, 450])
        time.sleep(1.0 * h.SLOW)
        self.assertEqual(len(self.catcher.mails), 1, self.catcher.mails)
        msg = mails[0].message()
        self.assertEqual(msg["Subject"], "smtpguard: flood defer ip:198.51.100.7")
        body = mails[0].body()
        self.assertIn("Client:      dsl-7.isp.example[198.51.100.7]", body)
        self.assertIn("Recipient:   <f2@example.net>", body)
        ev = body.split("Last messages of ip:198.51.100.7:\n", 1)[1].strip().splitlines()
        self.assertEqual(len(ev), 3, body)
        self.assertRegex(ev[0], r"to=<f1@example.net> refused=1 open \(RCPT defer by flood\)")
        self.assertRegex(ev[1], r" %s from=<sender@example.org> to=<b1@example.net> size=%d "
                                r"complete$" % (qids[1], recs[1]["size"]))
        self.assertRegex(ev[2], r" %s from=<sender@example.org> "
                                r"to=<a1@example.net>,<a2@example.net> size=%d complete$"
                         % (qids[0], recs[0]["size"]))
        # The queue ids are Postfix's own.
        for q in qids:
            self.assertIn(q, self.pf.log())

    def test_two_mtas_one_redis_one_alert(self):
        store = h.redis_store(self.redis.port)
        p2 = h.free_port()
        pf2 = self.start_postfix(p2, name="postfix2")
        d1 = self.start_daemon(config(self.policy_port, self.catcher.port, store, self.json),
                               name="sg1")
        d2 = self.start_daemon(config(p2, self.catcher.port, store, self.tmp.join("e2.jsonl")),
                               name="sg2")
        codes = []
        for i in range(4):
            port = self.pf.smtp_port if i % 2 == 0 else pf2.smtp_port
            codes += self.smtp(port, "203.0.113.50", rcpts(3, "m%d-" % i)).codes()
        self.assertEqual(codes[:4], [250] * 4)
        self.assertEqual(codes[4:], [450] * 8)
        self.catcher.wait_mails(1)
        time.sleep(1.5 * h.SLOW)
        self.assertEqual(len(self.catcher.mails), 1,
                         "two MTAs sharing Redis sent %d alerts" % len(self.catcher.mails))
        # Both daemons tripped the rule.
        self.assertRegex(d1.log(), r"rule=flood verdict=defer")
        self.assertRegex(d2.log(), r"rule=flood verdict=defer")

    def test_dead_relay_does_not_slow_postfix(self):
        dead = h.free_port()
        self.start_daemon(config(self.policy_port, dead, h.redis_store(self.redis.port),
                                 self.json))
        t0 = time.monotonic()
        for i in range(4):
            s = self.smtp(self.pf.smtp_port, "198.51.100.%d" % (80 + i), rcpts(8, "d"))
            self.assertEqual(s.codes(), [250] * 4 + [450] * 4, s)
        dt = time.monotonic() - t0
        self.assertLess(dt, 5 * h.SLOW, "4 flooding sessions took %.1fs with a dead relay" % dt)
