"""workers: N against a real redis-server: connections spread over the
worker processes, counting shared through Redis, SIGHUP reaching every
worker, SIGTERM stopping all of them, a killed worker started again,
/metrics summed over the workers, and the configs that workers: N
refuses."""

import os
import re
import signal
import socket
import time

import harness as h

FLOOD = "550 5.7.1 %s sent too much"
N_CONNS = 20


def children(pid):
    """The PIDs of pid's child processes (Linux /proc)."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return sorted(int(x) for x in f.read().split())
    except OSError:
        return []


class WorkersTest(h.SGTestCase):

    def setUp(self):
        super().setUp()
        self.redis = self.start_redis()

    def config(self, **over):
        cfg = h.base_config(h.free_port(), store=h.redis_store(self.redis.port),
                            workers=2, log={"stderr": True, "level": "debug"})
        cfg.update(over)
        return cfg

    def start_workers(self, cfg):
        d = self.start_daemon(cfg)
        self.wait_workers_ready(d, 0)
        return d

    def wait_workers_ready(self, d, since, n=2):
        """n workers said ready, and the parent logged their PIDs (the two
        lines come from different processes, in either order)."""
        def ready():
            log = d.log()[since:]
            return (len(set(re.findall(r"w=(\d+) smtpguard \S+ ready", log))) == n
                    and len(set(re.findall(r"worker (\d+) started: pid=", log))) == n)
        h.wait_until(ready, 10, what="%d workers ready" % n)

    def reload_all(self, d, cfg=None):
        """SIGHUP (with cfg written first, if given), and wait until both
        workers have reloaded to generation 2."""
        mark = d.mark()
        if cfg is not None:
            d.write_config(cfg)
        d.signal(signal.SIGHUP)
        h.wait_until(lambda: len(re.findall(r"w=\d config reloaded generation=2",
                                            d.log()[mark:])) == 2,
                     10, what="both workers reloaded")

    def worker_pids(self, d):
        """{worker number: pid} of the latest start of each worker."""
        pids = {}
        for n, pid in re.findall(r"worker (\d+) started: pid=(\d+)", d.log()):
            pids[int(n)] = int(pid)
        return pids

    def connect_all(self, d):
        """N_CONNS connections, held open, each answered once so that it is
        surely accepted by some worker."""
        conns = [self.client(d) for _ in range(N_CONNS)]
        for i, c in enumerate(conns):
            self.assertEqual(c.request(h.policy_request(state="HELO",
                                                        client_address="192.0.2.200")),
                             "DUNNO")
        return conns

    def served_by(self, d, since=0):
        return set(re.findall(r"w=(\d+) c=\S+ connect from", d.log()[since:]))

    def test_spread_and_shared_exact_counting(self):
        d = self.start_workers(self.config())
        pids = self.worker_pids(d)
        self.assertEqual(sorted(pids), [0, 1])
        self.assertEqual(children(d.pid), sorted(pids.values()),
                         "the parent's children are not the two workers")
        conns = self.connect_all(d)
        self.assertEqual(self.served_by(d), {"0", "1"},
                         "%d connections all went to one worker:\n%s" % (N_CONNS, d.log_tail()))
        # One client, one request per connection: the 5th is the one that
        # trips, whichever worker serves it.
        acts = [c.request(h.policy_request(client_address="198.51.100.7")) for c in conns]
        want = ["DUNNO"] * 4 + [FLOOD % "198.51.100.7"] * (N_CONNS - 4)
        self.assertEqual(acts, want)
        # Both workers answered scoring requests (not only the HELO).
        scored = set(re.findall(r"w=(\d+) c=\S+ r=2 ", d.log()))
        self.assertEqual(scored, {"0", "1"}, "requests not answered by both workers")

    def test_metrics_sum_every_worker(self):
        # /metrics is served by worker 0 and counts what both answered.
        from test_admin import http, sample, scrape
        admin = "127.0.0.1:%d" % h.free_port()
        cfg = self.config(admin={"listen": admin})
        d = self.start_workers(cfg)

        conns = self.connect_all(d)
        self.assertEqual(self.served_by(d), {"0", "1"})
        acts = [c.request(h.policy_request(client_address="198.51.100.9")) for c in conns]
        self.assertEqual(acts.count("DUNNO"), 4)
        m = scrape(admin)
        self.assertEqual(sample(m, "smtpguard_requests_total", protocol_state="HELO"), N_CONNS)
        self.assertEqual(sample(m, "smtpguard_requests_total", protocol_state="RCPT"), N_CONNS)
        self.assertEqual(sample(m, "smtpguard_verdicts_total", rule="flood", verdict="reject"),
                         N_CONNS - 4)
        self.assertEqual(sample(m, "smtpguard_answer_duration_seconds", "_count"), 2 * N_CONNS)
        self.assertEqual(sample(m, "smtpguard_connections"), N_CONNS)
        self.assertEqual(sample(m, "smtpguard_connections_total"), N_CONNS)
        # One SIGHUP: every worker reloads, and that is one reload.
        self.reload_all(d)
        self.assertEqual(sample(scrape(admin), "smtpguard_config_reloads_total"), 1)
        # A killed worker's connections are gone; what it counted stays.
        victim = self.worker_pids(d)[1]
        mark = d.mark()
        os.kill(victim, signal.SIGKILL)
        self.wait_workers_ready(d, mark, n=1)
        m = scrape(admin)
        self.assertLess(sample(m, "smtpguard_connections"), N_CONNS)
        self.assertEqual(sample(m, "smtpguard_requests_total", protocol_state="RCPT"), N_CONNS)
        for c in conns:
            c.close()
        h.wait_until(lambda: sample(scrape(admin), "smtpguard_connections") == 0, 5,
                     what="connections closed")

    def test_sighup_reaches_every_worker(self):
        cfg = self.config()
        d = self.start_workers(cfg)
        conns = self.connect_all(d)
        self.assertEqual(self.served_by(d), {"0", "1"})
        cfg["actions"][0]["when"] = {"ip": ">= 1"}
        cfg["actions"][0]["message"] = "550 5.7.1 reloaded %{client_address}"
        self.reload_all(d, cfg)
        for i, c in enumerate(conns):
            ip = "203.0.113.%d" % (i + 1)
            self.assertEqual(c.request(h.policy_request(client_address=ip)),
                             "550 5.7.1 reloaded %s" % ip, "connection %d" % i)
        # A broken config is reported once, by the parent, and kept from
        # the workers.
        mark = d.mark()
        with open(d.conf_path, "a") as f:
            f.write("\nbogus_setting: 1\n")
        d.signal(signal.SIGHUP)
        h.wait_until(lambda: "reload failed" in d.log()[mark:], 10, what="reload failure logged")
        time.sleep(0.5)
        tail = d.log()[mark:]
        self.assertEqual(len(re.findall(r"reload failed", tail)), 1, tail)
        self.assertNotRegex(tail, r"w=\d (config reloaded|reload failed)", tail)
        self.assertEqual(conns[0].request(h.policy_request(client_address="203.0.113.99")),
                         "550 5.7.1 reloaded 203.0.113.99")

    def test_sigterm_stops_everything(self):
        d = self.start_workers(self.config())
        pids = list(self.worker_pids(d).values())
        self.connect_all(d)
        rc = d.stop()
        self.assertEqual(rc, 0)
        for pid in pids:
            h.wait_until(lambda: not h.pid_alive(pid), 5, what="worker %d gone" % pid)

    def test_workers_die_with_the_parent(self):
        d = self.start_workers(self.config())
        pids = list(self.worker_pids(d).values())
        d.proc.kill()   # SIGKILL: the parent cannot pass anything on
        self.assertEqual(d.wait_exit(5), -signal.SIGKILL)
        for pid in pids:
            h.wait_until(lambda: not h.pid_alive(pid), 10, what="worker %d gone" % pid)

    def test_killed_worker_is_restarted(self):
        d = self.start_workers(self.config())
        old = self.worker_pids(d)
        mark = d.mark()
        os.kill(old[1], signal.SIGKILL)
        h.wait_until(lambda: re.search(r"worker 1 \(pid %d\) died: signal 9" % old[1],
                                       d.log()[mark:]), 5, what="death logged")
        self.wait_workers_ready(d, mark, n=1)
        new = self.worker_pids(d)
        self.assertEqual(new[0], old[0])
        self.assertNotEqual(new[1], old[1])
        self.assertFalse(h.pid_alive(old[1]))
        self.assertEqual(children(d.pid), sorted(new.values()))
        mark = d.mark()
        conns = self.connect_all(d)
        self.assertEqual(self.served_by(d, mark), {"0", "1"})
        acts = [c.request(h.policy_request(client_address="198.51.100.8")) for c in conns]
        self.assertEqual(acts, ["DUNNO"] * 4 + [FLOOD % "198.51.100.8"] * (N_CONNS - 4))

    def test_reload_changing_workers_is_refused(self):
        cfg = self.config()
        d = self.start_workers(cfg)
        conns = self.connect_all(d)
        # workers: 1 with the memory store is a valid config on its own,
        # but not for the two workers running now.
        bad = dict(cfg, workers=1, store={"backend": "memory"})
        bad["actions"] = [dict(cfg["actions"][0], message="550 5.7.1 split %{client_address}")]
        mark = d.mark()
        d.write_config(bad)
        d.signal(signal.SIGHUP)
        h.wait_until(lambda: "reload refused" in d.log()[mark:], 10, what="refusal logged")
        time.sleep(0.3)
        self.assertNotRegex(d.log()[mark:], r"config reloaded|store changed")
        acts = [c.request(h.policy_request(client_address="198.51.100.9")) for c in conns]
        self.assertEqual(acts, ["DUNNO"] * 4 + [FLOOD % "198.51.100.9"] * (N_CONNS - 4))

    def test_refused_reloads_are_counted_once(self):
        # A reload the supervisor refuses never reaches a worker, nor does
        # one the admin API refuses: /metrics counted neither before.
        from test_admin import http, sample, scrape
        admin = "127.0.0.1:%d" % h.free_port()
        token = self.tmp.write("admin.token", "workers-test-token\n", mode=0o600)
        cfg = self.config(admin={"listen": admin, "token_file": token})
        d = self.start_workers(cfg)

        def failures():
            return sample(scrape(admin), "smtpguard_config_reload_failures_total")

        self.assertEqual(failures(), 0)
        mark = d.mark()
        d.write_config("listen: [oops\n")
        d.signal(signal.SIGHUP)
        h.wait_until(lambda: "reload failed" in d.log()[mark:], 10, what="failure logged")
        self.assertEqual(failures(), 1)
        mark = d.mark()
        d.write_config(dict(cfg, workers=3))
        d.signal(signal.SIGHUP)
        h.wait_until(lambda: "reload refused" in d.log()[mark:], 10, what="refusal logged")
        self.assertEqual(failures(), 2)
        d.write_config("listen: [oops\n")
        st, _, _ = http(admin, "POST", "/reload",
                        headers={"Authorization": "Bearer workers-test-token"})
        self.assertEqual(st, 500)
        self.assertEqual(failures(), 3)
        # A good one: every worker reloads, and nothing more failed.
        self.reload_all(d, cfg)
        self.assertEqual(failures(), 3)

    def test_admin_in_worker_zero_only(self):
        admin = "127.0.0.1:%d" % h.free_port()
        token = self.tmp.write("admin.token", "workers-test-token\n", mode=0o600)
        d = self.start_workers(self.config(admin={"listen": admin, "token_file": token}))
        self.assertEqual(len(re.findall(r"admin", d.log())), 1, d.log())
        self.assertRegex(d.log(), r"w=0 [^\n]*admin")
        host, port = admin.rsplit(":", 1)
        self.assertTrue(h.port_open(host, int(port)))
        # A reload asked through the admin API reaches every worker.
        mark = d.mark()
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"POST /reload HTTP/1.1\r\nHost: x\r\n"
                  b"Authorization: Bearer workers-test-token\r\nContent-Length: 0\r\n\r\n")
        self.assertIn(b" 200 ", s.recv(4096))
        s.close()
        h.wait_until(lambda: len(re.findall(r"w=\d config reloaded generation=2",
                                            d.log()[mark:])) == 2,
                     10, what="both workers reloaded")

    def test_worker_that_cannot_start_fails_the_start(self):
        cfg = self.config()
        port = int(cfg["listen"][0].rsplit(":", 1)[1])
        # Held without SO_REUSEPORT: no worker can bind the port.
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.listen(1)
        self.addCleanup(s.close)
        d = self.start_daemon(cfg, wait_ready=False)
        rc = d.wait_exit(10)
        self.assertEqual(rc, 1, d.log_tail())
        self.assertRegex(d.log(), r"worker \d could not start")
        for pid in self.worker_pids(d).values():
            h.wait_until(lambda: not h.pid_alive(pid), 5, what="worker %d gone" % pid)


class WorkersConfigTest(h.SGTestCase):

    def check(self, cfg):
        d = h.Daemon(self.tmp, cfg)
        rc, err, out = d.check_config()
        return rc, err, d.conf_path

    def test_memory_store_refused(self):
        text = ('listen: ["127.0.0.1:%d"]\n'
                'store: { backend: memory }\n'
                'workers: 2\n' % h.free_port())
        rc, err, path = self.check(text)
        self.assertNotEqual(rc, 0, err)
        self.assertRegex(err, re.escape(path) + r":3:10: workers: workers: 2 needs "
                         r"store.backend: redis")
        # The default store is the memory store too.
        rc, err, path = self.check('listen: ["127.0.0.1:%d"]\nworkers: 2\n' % h.free_port())
        self.assertNotEqual(rc, 0, err)
        self.assertRegex(err, re.escape(path) + r":2:10: workers: ")

    def test_unix_listener_and_range_refused(self):
        rc, err, path = self.check('listen: ["unix:%s"]\n'
                                   'store: { backend: redis, redis: { address: "127.0.0.1:1" } }\n'
                                   'workers: 2\n' % self.tmp.join("sg.sock"))
        self.assertNotEqual(rc, 0, err)
        self.assertRegex(err, re.escape(path) + r":3:10: workers: .*unix socket")
        rc, err, path = self.check('workers: 0\n')
        self.assertRegex(err, re.escape(path) + r":1:10: workers: expected a whole number")

    def test_one_worker_is_the_default_process(self):
        d = self.start_daemon(h.base_config(h.free_port(), workers=1))
        c = self.client(d)
        self.assertEqual(c.request(h.policy_request()), "DUNNO")
        self.assertNotIn("w=0", d.log())
        self.assertEqual(children(d.pid), [])
