"""The Redis store against a real redis-server: shared scores, key layout,
decay, fail-open when Redis is down or frozen, recovery."""

import os
import re
import socket
import subprocess
import threading
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

    def test_recovery_logged_once_the_outage_was(self):
        # A second outage within a minute has its loss line suppressed; its
        # "cannot connect" lines were printed all the same, and then the
        # recovery was not: the log ended on the outage.
        d = self.start_daemon(self.config())
        c = self.client(d)
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.80")), "DUNNO")
        # A first loss, logged, that reconnects at once (Redis stays up):
        # no "cannot connect" line yet, so the next one is not held back.
        self.redis.cmd("CLIENT", "KILL", "TYPE", "normal")
        h.wait_until(lambda: d.log().count("connected") >= 2, 10 * h.SLOW,
                     what="the reconnection after the kill")
        self.assertIn("connection lost", d.log())
        self.assertNotIn("cannot connect", d.log())
        mark = d.mark()
        self.redis.stop()
        h.wait_until(lambda: "cannot connect" in d.log()[mark:], 10 * h.SLOW,
                     what="a failed reconnection logged")
        self.redis.start()

        def counting():
            c.request(h.policy_request(client_address="198.51.100.81"), timeout=5)
            return self.redis.cmd("GET", "sg:ip:198.51.100.81") is not None
        h.wait_until(counting, 15 * h.SLOW, interval=0.25, what="smtpguard to reconnect")
        self.assertRegex(d.log()[mark:], r"cannot connect[^\n]*\n(.*\n)*.*redis \S+: connected")

    def test_backoff_grows_while_calls_fail(self):
        # A server that answers SELECT and then hangs up: the backoff was
        # reset by every SELECT, so it was reconnected to at the shortest
        # delay forever (a connection every ~100 ms).
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        srv.settimeout(0.2)
        self.addCleanup(srv.close)
        accepted = [0]
        stop = threading.Event()

        def serve():
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except OSError:
                    continue
                accepted[0] += 1
                conn.settimeout(1)
                try:
                    conn.recv(4096)
                    conn.sendall(b"+OK\r\n")
                    time.sleep(0.05)
                except OSError:
                    pass
                conn.close()
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        self.addCleanup(lambda: (stop.set(), t.join(2)))
        store = h.redis_store(self.redis.port)
        store["redis"]["address"] = "127.0.0.1:%d" % srv.getsockname()[1]
        d = self.start_daemon(h.base_config(h.free_port(), store=store))
        c = self.client(d)
        t0 = time.time()
        while time.time() - t0 < 3:
            self.assertEqual(c.request(h.policy_request(client_address="198.51.100.82"),
                                       timeout=5), "DUNNO")
            time.sleep(0.05)
        # 100, 200, 400, 800, 1600 ms apart: at most ~6 in 3 s (30 before).
        self.assertLessEqual(accepted[0], 7, "%d connections in 3 s" % accepted[0])
        self.assertGreaterEqual(accepted[0], 2)

    def test_damaged_top_set_starts_over(self):
        # A key that is no sorted set where a counter's top set lives made
        # the script fail after the counts were written: the flooder's
        # request that crossed the threshold got on_error (DUNNO), and so
        # did every request batched with it.
        self.redis.cmd("SET", "sg:@top:ip", "not a sorted set")
        d = self.start_daemon(self.config())
        c = self.client(d)
        acts = [c.request(h.policy_request(client_address="198.51.100.90")) for _ in range(14)]
        self.assertEqual(acts, ["DUNNO"] * 4 + [FLOOD % "198.51.100.90"] * 10)
        self.assertNotIn("on_error", d.log())
        self.assertEqual(self.redis.cmd("TYPE", "sg:@top:ip"), "zset")
        self.assertIn("sg:ip:198.51.100.90", self.redis.cmd("ZRANGE", "sg:@top:ip", 0, -1))

    def test_store_up_follows_a_frozen_redis_without_traffic(self):
        # With no calls out nothing noticed a Redis that stopped answering:
        # smtpguard_store_up said 1 for as long as no request came.
        from test_admin import sample, scrape
        admin = "127.0.0.1:%d" % h.free_port()
        d = self.start_daemon(self.config(admin={"listen": admin}))
        c = self.client(d)
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.95")), "DUNNO")

        def up():
            return sample(scrape(admin), "smtpguard_store_up", backend="redis")
        self.assertEqual(up(), 1)
        self.redis.pause()
        try:
            h.wait_until(lambda: up() == 0, 5 * h.SLOW, interval=0.2,
                         what="store_up to fall with Redis frozen and no traffic")
        finally:
            self.redis.resume()
        h.wait_until(lambda: up() == 1, 10 * h.SLOW, interval=0.2, what="store_up back")

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


class RedisByNameTest(h.SGTestCase):
    """A Redis given by host name. The daemon runs in a mount namespace of
    its own (unshare -m) where /etc/hosts or /etc/resolv.conf is a file of
    the test's: nothing of the machine's is changed."""

    def setUp(self):
        super().setUp()
        if os.geteuid() != 0 or not h.find_tool("unshare"):
            self.skipTest("needs root and unshare(1) for a private /etc/hosts")
        probe = subprocess.run(["unshare", "-m", "true"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        if probe.returncode != 0:
            self.skipTest("unshare -m is not permitted here")
        self.redis = self.start_redis()    # listens on 127.0.0.1 only

    def daemon_with(self, etc_file, text, address):
        """The daemon, with /etc/ETC_FILE replaced by text in its namespace."""
        mine = self.tmp.write(etc_file + ".test", text)
        wrapper = self.tmp.write(
            "in-namespace.sh",
            "#!/bin/sh\nexec unshare -m sh -c 'mount --bind \"$0\" /etc/%s && exec \"$@\"' "
            "%s %s \"$@\"\n" % (etc_file, mine, h.daemon_bin()), mode=0o755)
        store = h.redis_store(self.redis.port)
        store["redis"]["address"] = address
        d = h.Daemon(self.tmp, h.base_config(h.free_port(), store=store), binary=wrapper)
        self._daemons.append(d)
        d.start()
        return d

    def wait_counting(self, d, ip):
        c = self.client(d)

        def counting():
            c.request(h.policy_request(client_address=ip), timeout=5)
            return self.redis.cmd("GET", "sg:ip:" + ip) is not None
        h.wait_until(counting, 10 * h.SLOW, interval=0.2, what="smtpguard to reach Redis")

    def test_every_address_of_a_name_is_tried(self):
        # The name's first address (::1) has no Redis; only the first was
        # ever tried, so the store stayed down for good.
        d = self.daemon_with("hosts", "::1 dual.test\n127.0.0.1 dual.test\n",
                             "dual.test:%d" % self.redis.port)
        self.wait_counting(d, "198.51.100.70")
        self.assertIn("redis dual.test:%d: connected" % self.redis.port, d.log())

    def test_slow_resolver_does_not_keep_the_store_down(self):
        # A DNS answer slower than the 100 ms timeout counted against the
        # connect: every attempt timed out before connecting.
        dns = h.SlowDns(0.3, bind=("127.0.0.2", 53), a_record="127.0.0.1")
        self.addCleanup(dns.close)
        d = self.daemon_with("resolv.conf", "nameserver 127.0.0.2\noptions timeout:2 attempts:1\n",
                             "slow-redis.test:%d" % self.redis.port)
        self.wait_counting(d, "198.51.100.71")
        self.assertGreater(dns.queries, 0)

