"""The Redis store against a real redis-server: shared scores, key layout,
decay, fail-open when Redis is down or frozen, recovery."""

import re
import time

import harness as h

FLOOD = "550 5.7.1 %s sent too much"


class RedisStoreTest(h.SGTestCase):

    def setUp(self):
        super().setUp()
        self.redis = self.start_redis()

    def config(self, port=None, **over):
        port = port or h.free_port()
        store = h.redis_store(self.redis.port, **over.pop("store_over", {}))
        return h.base_config(port, store=store, **over)

    def test_counts_and_key_layout(self):
        d = self.start_daemon(self.config())
        c = self.client(d)
        acts = [c.request(h.policy_request(client_address="198.51.100.7")) for _ in range(5)]
        self.assertEqual(acts, ["DUNNO"] * 4 + [FLOOD % "198.51.100.7"])
        v = self.redis.counter("sg:ip:198.51.100.7")
        self.assertIsNotNone(v, "no key sg:ip:198.51.100.7; keys: %r" % self.redis.cmd("KEYS", "*"))
        score, t = v
        self.assertAlmostEqual(score, 5.0, delta=0.05)
        self.assertAlmostEqual(t, time.time(), delta=30)
        ttl = self.redis.cmd("PTTL", "sg:ip:198.51.100.7")
        self.assertGreater(ttl, 0, "counter key has no expiry")
        # Empty SASL user: no user key at all.
        self.assertEqual(self.redis.cmd("KEYS", "sg:user:*"), [])
        c.request(h.policy_request(client_address="198.51.100.8", sasl_username="carol"))
        self.assertIsNotNone(self.redis.cmd("GET", "sg:user:carol"))
        # Nothing outside our prefix.
        for k in self.redis.cmd("KEYS", "*"):
            self.assertTrue(k.startswith("sg:"), "key %r outside the prefix" % k)

    def test_db_and_prefix(self):
        d = self.start_daemon(self.config(store_over={"redis": {
            "address": "127.0.0.1:%d" % self.redis.port, "db": 3, "prefix": "other:",
            "timeout": "100ms"}}))
        c = self.client(d)
        c.request(h.policy_request(client_address="198.51.100.9"))
        self.assertEqual(self.redis.cmd("KEYS", "*"), [], "db 0 should stay empty")
        with self.redis.client() as rc:
            rc.cmd("SELECT", 3)
            self.assertEqual(rc.cmd("KEYS", "*"), ["other:ip:198.51.100.9"])

    def test_password_file(self):
        self.redis.cmd("CONFIG", "SET", "requirepass", "s3cret-test-pw")
        pw = self.tmp.write("redis.pw", "s3cret-test-pw\n", mode=0o600)
        d = self.start_daemon(self.config(store_over={"redis": {
            "address": "127.0.0.1:%d" % self.redis.port, "db": 0, "prefix": "sg:",
            "timeout": "100ms", "password_file": pw}}))
        c = self.client(d)
        acts = [c.request(h.policy_request(client_address="198.51.100.10")) for _ in range(5)]
        self.assertEqual(acts[-1], FLOOD % "198.51.100.10", "counting with AUTH failed")
        self.assertNotIn("s3cret-test-pw", d.log(), "the Redis password was logged")

    def test_two_daemons_share_one_score(self):
        d1 = self.start_daemon(self.config(), name="sg1")
        d2 = self.start_daemon(self.config(), name="sg2")
        c1, c2 = self.client(d1), self.client(d2)
        acts = []
        for i in range(6):
            c = (c1, c2)[i % 2]
            acts.append(c.request(h.policy_request(client_address="198.51.100.20")))
        self.assertEqual(acts[:4], ["DUNNO"] * 4, acts)
        self.assertEqual(acts[4], FLOOD % "198.51.100.20", "the 5th (on daemon 1) must trip")
        self.assertEqual(acts[5], FLOOD % "198.51.100.20", "daemon 2 sees the shared score")
        # SASL user counted across both too.
        acts = [(c1, c2)[i % 2].request(h.policy_request(client_address="203.0.113.%d" % (i + 1),
                                                         sasl_username="dave"))
                for i in range(3)]
        self.assertEqual(acts, ["DUNNO", "DUNNO", "450 4.7.1 slow down dave"])

    def test_decay_in_redis(self):
        counters = {"ip": {"key": "client_address", "half_life": "1s"},
                    "user": {"key": "sasl_username", "leak": "1/s"}}
        d = self.start_daemon(self.config(counters=counters))
        c = self.client(d)
        acts = [c.request(h.policy_request(client_address="198.51.100.30")) for _ in range(4)]
        self.assertEqual(acts, ["DUNNO"] * 4)
        time.sleep(3)
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.30")), "DUNNO",
                         "half_life 1s did not decay the Redis score")
        v = self.redis.counter("sg:ip:198.51.100.30")[0]
        self.assertLess(v, 2.5)
        acts = [c.request(h.policy_request(client_address="203.0.113.%d" % (i + 1),
                                           sasl_username="erin")) for i in range(2)]
        self.assertEqual(acts, ["DUNNO", "DUNNO"])
        time.sleep(2.5)
        acts = [c.request(h.policy_request(client_address="203.0.113.%d" % (i + 10),
                                           sasl_username="erin")) for i in range(2)]
        self.assertEqual(acts, ["DUNNO", "DUNNO"], "leak 1/s did not drain the Redis bucket")

    def _over_threshold(self, c, ip):
        acts = [c.request(h.policy_request(client_address=ip)) for _ in range(5)]
        self.assertEqual(acts[-1], FLOOD % ip)

    def test_fail_open_redis_stopped(self):
        d = self.start_daemon(self.config())
        c = self.client(d)
        self._over_threshold(c, "198.51.100.40")
        self.redis.stop()
        for i in range(10):
            t0 = time.monotonic()
            act = c.request(h.policy_request(client_address="198.51.100.40"), timeout=5)
            dt = time.monotonic() - t0
            self.assertEqual(act, "DUNNO", "request %d with Redis down: %r" % (i + 1, act))
            self.assertLess(dt, 0.1 + 1.0 * h.SLOW, "answer took %.2fs with Redis down" % dt)
        self.assertTrue(d.running())

    def test_fail_open_redis_paused(self):
        d = self.start_daemon(self.config())
        c = self.client(d)
        self._over_threshold(c, "198.51.100.41")
        self.redis.pause()
        try:
            for i in range(5):
                t0 = time.monotonic()
                act = c.request(h.policy_request(client_address="198.51.100.41"), timeout=5)
                dt = time.monotonic() - t0
                self.assertEqual(act, "DUNNO", "request %d with Redis frozen: %r" % (i + 1, act))
                # timeout is 100ms: answer within it plus slack, never Postfix's 100 s.
                self.assertLess(dt, 0.1 + 1.0 * h.SLOW, "answer took %.2fs with Redis frozen" % dt)
            # Another connection at the same time is answered too.
            with d.client() as c2:
                t0 = time.monotonic()
                self.assertEqual(c2.request(h.policy_request(client_address="198.51.100.42")), "DUNNO")
                self.assertLess(time.monotonic() - t0, 0.1 + 1.0 * h.SLOW)
        finally:
            self.redis.resume()
        # Once Redis thaws, counting resumes (the score kept in Redis is still over).
        def tripped():
            return c.request(h.policy_request(client_address="198.51.100.41")) == FLOOD % "198.51.100.41"
        h.wait_until(tripped, 10 * h.SLOW, interval=0.2, what="counting to resume after SIGCONT")

    def test_on_error_custom_verdict(self):
        d = self.start_daemon(self.config(store_over={"on_error": "defer",
                                                      "redis": {"address": "127.0.0.1:%d" % self.redis.port,
                                                                "prefix": "sg:", "timeout": "100ms"}}))
        c = self.client(d)
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.43")), "DUNNO")
        self.redis.stop()
        act = c.request(h.policy_request(client_address="198.51.100.43"), timeout=5)
        self.assertRegex(act, r"^(DEFER|DEFER_IF_PERMIT|4\d\d)\b", "on_error: defer gave %r" % act)

    def test_store_error_logged_once_per_interval(self):
        d = self.start_daemon(self.config())
        c = self.client(d)
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.44")), "DUNNO")
        m = d.mark()
        self.redis.stop()
        for i in range(30):
            c.request(h.policy_request(client_address="198.51.100.44"), timeout=5)
        time.sleep(0.3)
        text = d.log_since(m)
        # Warnings about the store, not the per-request decision lines.
        lines = [l for l in text.splitlines()
                 if not re.search(r"\br=\d", l) and re.search(r"(?i)redis|store", l)
                 and re.search(r"(?i)err|fail|down|timeout|unavail|refused|lost", l)]
        self.assertGreaterEqual(len(lines), 1, "store failure not logged:\n" + text[-2000:])
        self.assertLessEqual(len(lines), 6, "store failure logged per request (%d lines):\n%s"
                             % (len(lines), "\n".join(lines[:10])))

    def test_recovery_after_restart(self):
        d = self.start_daemon(self.config())
        c = self.client(d)
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.50")), "DUNNO")
        self.redis.stop()
        for _ in range(3):
            self.assertEqual(c.request(h.policy_request(client_address="198.51.100.50"), timeout=5), "DUNNO")
        self.redis.start()   # same port, empty data set

        def counting():
            c.request(h.policy_request(client_address="198.51.100.51"), timeout=5)
            return self.redis.cmd("GET", "sg:ip:198.51.100.51") is not None
        h.wait_until(counting, 15 * h.SLOW, interval=0.25, what="smtpguard to reconnect to Redis")
        acts = [c.request(h.policy_request(client_address="198.51.100.52")) for _ in range(5)]
        self.assertEqual(acts, ["DUNNO"] * 4 + [FLOOD % "198.51.100.52"])

    def test_start_with_redis_down(self):
        port = self.redis.port
        self.redis.stop()
        d = self.start_daemon(self.config())
        c = self.client(d)
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.60"), timeout=5), "DUNNO")
        self.redis.start()
        self.assertEqual(self.redis.port, port)

        def counting():
            c.request(h.policy_request(client_address="198.51.100.61"), timeout=5)
            return self.redis.cmd("GET", "sg:ip:198.51.100.61") is not None
        h.wait_until(counting, 15 * h.SLOW, interval=0.25, what="smtpguard to connect to Redis")
