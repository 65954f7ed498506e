"""End to end: SMTP client -> real Postfix 3.7 -> smtpguard (-> Redis).

One Postfix instance (and Redis) per class, one smtpguard per test on
the port Postfix asks. Clients are posed with XCLIENT, one identity per
SMTP session. Reply texts are what Postfix makes of smtpguard's actions:
  RCPT:           450 4.7.1 <rcpt>: Recipient address rejected: TEXT
  END-OF-MESSAGE: 554 5.7.1 <END-OF-MESSAGE>: End-of-data rejected: TEXT
"""

import time

import harness as h

CUSTOMERS = "# customer networks\n198.51.100.0/24\n203.0.113.0/24\n2001:db8:c::/48\n"


def e2e_config(port, store):
    return {
        "listen": ["127.0.0.1:%d" % port],
        "clients": ["127.0.0.0/8"],
        "store": store,
        "log": {"stderr": True, "level": "info"},
        "counters": {
            "ip": {"key": "client_address", "half_life": "10m"},
            "user": {"key": "sasl_username", "leak": "100/h"},
            "msgs": {"key": "client_address", "leak": "100/h"},
        },
        "lists": {
            "trusted": ["10.0.0.0/8", "192.0.2.0/28"],
            "customers": {"file": "customers.cidr"},
        },
        "points": [
            {"name": "trusted", "when": {"client_address": {"in": "trusted"}}, "then": "ok"},
            {"name": "per-rcpt", "when": {"protocol_state": "RCPT"}, "add": {"ip": 1, "user": 1}},
            {"name": "per-msg", "when": {"protocol_state": "END-OF-MESSAGE"}, "add": {"msgs": 1}},
        ],
        "actions": [
            {"name": "flood", "when": {"ip": ">= 5", "client_address": {"in": "customers"}},
             "do": ["defer", "log"],
             "message": "450 4.7.1 %{client_address} sent too much, contact abuse@isp.example"},
            {"name": "slow", "when": {"user": ">= 3"}, "do": "defer",
             "message": "450 4.7.1 slow down %{sasl_username}"},
            {"name": "msgflood", "when": {"msgs": ">= 3", "protocol_state": "END-OF-MESSAGE"},
             "do": "reject", "message": "554 5.7.1 too many messages from %{client_address}"},
        ],
    }


def rcpts(n, tag="r"):
    return ["%s%d@example.net" % (tag, i) for i in range(1, n + 1)]


class PostfixMemoryTest(h.SGTestCase):
    backend = "memory"

    @classmethod
    def setUpClass(cls):
        h.require_postfix(None)
        cls.ctmp = h.TempDir(prefix="sge2e.%s." % cls.backend)
        cls.redis = None
        cls.pf = None
        try:
            if cls.backend == "redis":
                h.require_redis(None)
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
        if self.redis:
            self.redis.cmd("FLUSHALL")
            store = h.redis_store(self.redis.port)
        else:
            store = {"backend": "memory", "on_error": "dunno"}
        self.tmp.write("customers.cidr", CUSTOMERS)
        self.d = self.start_daemon(e2e_config(self.policy_port, store))

    def diagnostics(self):
        return super().diagnostics() + "\n--- postfix maillog (class):\n" + self.pf.log_tail(3000)

    def smtp(self, addr, rcpt_list, **kw):
        s = h.smtp_session(self.pf.smtp_port, rcpt_list, addr=addr, **kw)
        self.assertEqual(s.mail.code, 250, "MAIL FROM refused: %r" % s)
        return s

    def test_customer_flood_rcpt_threshold(self):
        m = self.d.mark()
        t0 = time.monotonic()
        s = self.smtp("198.51.100.7", rcpts(6), name="dsl-7.isp.example")
        self.assertEqual(s.codes()[:4], [250] * 4, s)
        want = ("450 4.7.1 <r5@example.net>: Recipient address rejected: "
                "198.51.100.7 sent too much, contact abuse@isp.example")
        self.assertEqual(s.rcpts[4][1].text, want)
        self.assertEqual(s.rcpts[5][1].code, 450, s)
        # Another customer is unaffected, the flooder still is in a new session.
        s2 = self.smtp("198.51.100.8", rcpts(3, "o"))
        self.assertEqual(s2.codes(), [250, 250, 250], s2)
        s3 = self.smtp("198.51.100.7", ["again@example.net"])
        self.assertEqual(s3.rcpts[0][1].text,
                         "450 4.7.1 <again@example.net>: Recipient address rejected: "
                         "198.51.100.7 sent too much, contact abuse@isp.example")
        self.assertLess(time.monotonic() - t0, 10, "three short SMTP sessions were slow")
        line = self.d.wait_log(r"[^\n]*rule=flood[^\n]*", since=m).group(0)
        self.assertRegex(line, r"verdict=defer\b")
        if self.redis:
            self.assertIsNotNone(self.redis.cmd("GET", "sg:ip:198.51.100.7"))

    def test_threshold_spread_over_sessions(self):
        codes = []
        for i in range(3):
            s = self.smtp("203.0.113.77", rcpts(2, "s%d-" % i), data=True)
            codes += s.codes()
            if i < 2:
                self.assertEqual(s.data.code, 250, s)
        self.assertEqual(codes, [250, 250, 250, 250, 450, 450])

    def test_non_customer_not_limited_by_flood_rule(self):
        # 192.0.2.100 is neither trusted nor a customer: the flood rule has
        # client_address in customers, so 8 recipients pass.
        s = self.smtp("192.0.2.100", rcpts(8))
        self.assertEqual(s.codes(), [250] * 8, s)

    def test_sasl_user_limit(self):
        results = []
        for i in range(4):
            s = self.smtp("203.0.113.%d" % (10 + i), ["u%d@example.net" % i],
                          login="alice@example.org")
            results.append(s.rcpts[0][1])
        self.assertEqual([r.code for r in results[:2]], [250, 250], results)
        self.assertEqual(results[2].text, "450 4.7.1 <u2@example.net>: Recipient address rejected: "
                                          "slow down alice@example.org")
        self.assertEqual(results[3].code, 450)
        s = self.smtp("203.0.113.20", ["b@example.net"], login="bob@example.org")
        self.assertEqual(s.codes(), [250], s)
        # Without LOGIN there is no user: not counted.
        for i in range(3):
            s = self.smtp("203.0.113.%d" % (30 + i), ["n%d@example.net" % i])
            self.assertEqual(s.codes(), [250], s)

    def test_trusted_network_never_limited(self):
        for addr in ("10.20.30.40", "192.0.2.5"):
            for i in range(2):
                s = self.smtp(addr, rcpts(8, "t%d-" % i), login="trusted-relay", data=True)
                self.assertEqual(s.codes(), [250] * 8, s)
                self.assertEqual(s.data.code, 250, s)

    def test_message_count_end_of_data(self):
        replies = []
        for i in range(4):
            s = self.smtp("198.51.100.30", ["m%d@example.net" % i], data=True)
            self.assertEqual(s.codes(), [250], s)
            replies.append(s.data)
        self.assertEqual([r.code for r in replies[:2]], [250, 250], replies)
        self.assertEqual(replies[2].text, "554 5.7.1 <END-OF-MESSAGE>: End-of-data rejected: "
                                          "too many messages from 198.51.100.30")
        self.assertEqual(replies[3].code, 554)
        # Another client still gets its message through.
        s = self.smtp("198.51.100.31", ["x@example.net"], data=True)
        self.assertEqual(s.data.code, 250, s)

    def test_ipv6_client(self):
        if not h.ipv6_loopback():
            self.skipTest("no IPv6 loopback: Postfix cannot take XCLIENT ADDR=IPV6:")
        s = self.smtp("2001:db8:c::7", rcpts(6))
        self.assertEqual(s.codes()[:4], [250] * 4, s)
        self.assertEqual(s.rcpts[4][1].text,
                         "450 4.7.1 <r5@example.net>: Recipient address rejected: "
                         "2001:db8:c::7 sent too much, contact abuse@isp.example")


class PostfixRedisTest(PostfixMemoryTest):
    backend = "redis"

    def test_two_daemons_one_redis_via_postfix(self):
        # A second smtpguard sharing the Redis, asked directly: it sees the
        # points that Postfix's requests added through the first one.
        s = self.smtp("198.51.100.60", rcpts(3))
        self.assertEqual(s.codes(), [250] * 3)
        p2 = h.free_port()
        store = h.redis_store(self.redis.port)
        d2 = self.start_daemon(dict(e2e_config(p2, store)), name="sg2")
        with d2.client() as c:
            self.assertEqual(c.request(h.policy_request(client_address="198.51.100.60")), "DUNNO")
            self.assertEqual(c.request(h.policy_request(client_address="198.51.100.60")),
                             "450 4.7.1 198.51.100.60 sent too much, contact abuse@isp.example")
        s = self.smtp("198.51.100.60", ["z@example.net"])
        self.assertEqual(s.rcpts[0][1].code, 450, s)

    def test_fail_open_through_postfix(self):
        s = self.smtp("198.51.100.70", rcpts(5))
        self.assertEqual(s.codes(), [250] * 4 + [450], s)
        self.redis.stop()
        try:
            t0 = time.monotonic()
            s = self.smtp("198.51.100.70", rcpts(3, "fo"), data=True)
            dt = time.monotonic() - t0
            self.assertEqual(s.codes(), [250] * 3, "Redis down must fail open: %r" % s)
            self.assertEqual(s.data.code, 250, s)
            self.assertLess(dt, 3 * h.SLOW, "fail-open session took %.1fs" % dt)
        finally:
            self.redis.start()
