"""The load generator (test/bench/sgload.c) against a real smtpguard: a
short, bounded smoke run that asserts correctness, never speed.

Every answer must be a valid Postfix action and no request may fail; the
run is bounded by count and by time (2 s), so a slow (ASan) build only
answers fewer requests. sgload must also refuse any target that is not
loopback or a unix socket.
"""

import os
import re
import subprocess

import harness as h
from test_admin import http, parse_metrics, sample

BENCH_RULES = os.path.join(h.ROOT, "test", "bench", "rules.yaml")
VALID = {"DUNNO", "OK", "PREPEND", "4xx", "5xx", "DEFER", "REJECT", "HOLD"}


def sgload_bin():
    return os.path.join(os.path.dirname(os.path.realpath(h.daemon_bin())), "sgload")


def parse_result(out):
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:
        raise AssertionError("no RESULT line in sgload output:\n" + out)
    return dict(kv.split("=", 1) for kv in m.group(1).split())


class LoadSmokeTest(h.SGTestCase):

    def setUp(self):
        super().setUp()
        if not os.access(sgload_bin(), os.X_OK):
            self.fail("sgload not built next to the daemon: %s" % sgload_bin())

    def run_load(self, target, *args, timeout=60):
        p = subprocess.run([sgload_bin(), "-t", target] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout)
        return p.returncode, p.stdout, p.stderr

    def bench_config(self, port, store):
        with open(BENCH_RULES) as f:
            rules = f.read()
        return rules + ('listen: ["127.0.0.1:%d"]\nstore: %s\nlog: { stderr: true, level: info }\n'
                        % (port, store))

    def check_run(self, port, conns):
        rc, out, err = self.run_load("127.0.0.1:%d" % port, "-c", str(conns), "-d", "2",
                                     "-w", "0", "-n", "20000", "--check", "--timeout", "10")
        self.assertEqual(rc, 0, "sgload --check failed (rc %d):\n%s%s" % (rc, out, err))
        res = parse_result(out)
        n = int(res["requests"])
        self.assertGreater(n, 0, "no answers:\n" + out)
        self.assertLessEqual(n, 20000, "count bound not kept:\n" + out)
        self.assertEqual(res["errors"], "0", out)
        verdicts = {k[2:]: int(v) for k, v in res.items() if k.startswith("v_")}
        self.assertTrue(set(verdicts) <= VALID, "unexpected verdicts %s" % verdicts)
        self.assertEqual(sum(verdicts.values()), n, "answers by verdict do not add up:\n" + out)
        self.assertIn("DUNNO", verdicts, out)
        return res

    def test_memory_store_smoke(self):
        port = h.free_port()
        self.start_daemon(self.bench_config(port, "{ backend: memory }"))
        self.check_run(port, 8)

    def test_redis_store_smoke(self):
        r = self.start_redis()
        port, aport = h.free_port(), h.free_port()
        admin = "127.0.0.1:%d" % aport
        self.start_daemon(self.bench_config(
            port, '{ backend: redis, redis: { address: "127.0.0.1:%d", timeout: 2s } }\n'
            'admin: { listen: "%s" }' % (r.port, admin)))
        self.check_run(port, 32)
        # With 32 connections, requests read in one loop turn share a
        # script call: fewer calls than requests, and every request that
        # reached the store went in one.
        st, _, body = http(admin, "GET", "/metrics")
        self.assertEqual(st, 200)
        m = parse_metrics(body)
        calls = sample(m, "smtpguard_store_script_calls_total")
        carried = sample(m, "smtpguard_store_script_requests_total")
        self.assertEqual(carried, sample(m, "smtpguard_store_duration_seconds", "_count"))
        self.assertGreater(calls, 0)
        self.assertLess(calls, carried, "no call carried more than one request")

    def test_unix_socket_and_ipv6_mix(self):
        path = self.tmp.join("policy.sock")
        port = h.free_port()
        cfg = self.bench_config(port, "{ backend: memory }").replace(
            'listen: ["127.0.0.1:%d"]' % port, 'listen: ["unix:%s"]' % path)
        self.start_daemon(cfg)
        rc, out, err = self.run_load("unix:" + path, "-c", "4", "-d", "1", "-w", "0", "-n",
                                     "2000", "--ipv6", "100", "--check")
        self.assertEqual(rc, 0, out + err)
        self.assertGreater(int(parse_result(out)["requests"]), 0, out)

    def test_check_fails_without_a_server(self):
        # --check must be able to fail: nobody listens on this port.
        port = h.free_port()
        rc, out, err = self.run_load("127.0.0.1:%d" % port, "-c", "2", "-d", "1", "-w", "0",
                                     "--check")
        self.assertEqual(rc, 1, "got rc %d, want 1:\n%s%s" % (rc, out, err))
        self.assertNotEqual(parse_result(out)["errors"], "0", out)

    def test_refuses_targets_off_this_host(self):
        for target in ("192.0.2.1:10040", "10.0.0.1:10040", "[2001:db8::1]:10040",
                       "mail.example.com:10040", "0.0.0.0:10040", "[::]:10040"):
            rc, out, err = self.run_load(target, "-d", "1")
            self.assertEqual(rc, 2, "%s: got rc %d, want 2 (refused)" % (target, rc))
            self.assertIn("refusing", err, "%s: %s" % (target, err))
            self.assertNotIn("RESULT", out, target)
