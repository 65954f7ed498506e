"""Config checking (-t), SIGHUP reload, SIGTERM, command-line basics."""

import os
import re
import signal
import subprocess
import time

import harness as h

BROKEN = """\
listen: ["127.0.0.1:{port}"]
clients: ["127.0.0.0/8"]
store: {{ backend: memory }}
bogus_key: 1
counters:
  ip: {{ key: client_address, half_life: banana }}
points:
  - {{ name: per-rcpt, when: {{ protocol_state: RCPT }}, add: {{ nosuchcounter: 1 }} }}
actions:
  - {{ name: flood, when: {{ ip: ">= 5" }}, do: reject }}
"""


def run(args, timeout=10):
    p = subprocess.run([h.daemon_bin()] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, timeout=timeout * h.SLOW)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


class CommandLineTest(h.SGTestCase):

    def test_install_keeps_tuned_rules(self):
        # rules.d/*.yaml is live configuration: a second `make install`
        # rewrote tuned files and brought back deleted ones.
        dest = self.tmp.mkdir("dest")

        def install():
            p = subprocess.run(["make", "-s", "install", "DESTDIR=" + dest, "PREFIX=/usr",
                                "SYSCONFDIR=/etc"], cwd=h.ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, timeout=300)
            self.assertEqual(p.returncode, 0, p.stdout.decode(errors="replace"))
            return p.stdout.decode(errors="replace")
        install()
        rules = dest + "/etc/smtpguard/rules.d"
        with open(rules + "/00-trusted.yaml", "a") as f:
            f.write("# tuned by the operator\n")
        os.remove(rules + "/40-size.yaml")
        out = install()
        self.assertIn("left as they are", out)
        with open(rules + "/00-trusted.yaml") as f:
            self.assertTrue(f.read().endswith("# tuned by the operator\n"))
        self.assertFalse(os.path.exists(rules + "/40-size.yaml"))
        self.assertTrue(os.path.exists(dest + "/usr/share/doc/smtpguard/rules.d/40-size.yaml"))
        # What is installed loads.
        rc, out, err = run(["-c", dest + "/etc/smtpguard/smtpguard.yaml.example", "-t"])
        self.assertEqual(rc, 0, err + out)

    def test_version_and_help(self):
        rc, out, err = run(["--version"])
        self.assertEqual(rc, 0, err)
        self.assertRegex(out + err, r"smtpguard\s+\S*\d")
        rc, out, err = run(["--help"])
        self.assertEqual(rc, 0, err)
        self.assertIn("-c", out + err)

    def test_check_good_config(self):
        port = h.free_port()
        d = h.Daemon(self.tmp, h.base_config(port))
        rc, err, out = d.check_config()
        self.assertEqual(rc, 0, "smtpguard -t on a good config: rc=%d\n%s%s" % (rc, out, err))
        # -t does not start serving.
        self.assertFalse(h.port_open("127.0.0.1", port))

    def test_check_broken_config_reports_every_error(self):
        port = h.free_port()
        d = h.Daemon(self.tmp, BROKEN.format(port=port))
        rc, err, out = d.check_config()
        self.assertNotEqual(rc, 0, "smtpguard -t accepted a broken config:\n" + err)
        path = re.escape(d.conf_path)
        # Each problem as file:line:col, columns counted from 1.
        self.assertRegex(err, path + r":4:1: [^\n]*bogus_key", "unknown top-level key")
        self.assertRegex(err, path + r":6:\d+: [^\n]*", "bad half_life value")
        self.assertRegex(err, path + r":6:\d+: [^\n]*(half_life|banana)")
        self.assertRegex(err, path + r":8:\d+: [^\n]*nosuchcounter", "unknown counter")
        self.assertFalse(h.port_open("127.0.0.1", port))

    def test_check_yaml_syntax_error(self):
        d = h.Daemon(self.tmp, 'listen: ["127.0.0.1:1"\nclients: [\n')
        rc, err, out = d.check_config()
        self.assertNotEqual(rc, 0)
        self.assertRegex(err, re.escape(d.conf_path) + r":\d+:\d+: ")

    def test_start_with_broken_config_fails(self):
        d = h.Daemon(self.tmp, BROKEN.format(port=h.free_port()))
        self._daemons.append(d)
        d.start(wait_ready=False)
        rc = d.wait_exit(10)
        self.assertIsNotNone(rc, "smtpguard kept running with a broken config")
        self.assertNotEqual(rc, 0)
        self.assertRegex(d.log(), re.escape(d.conf_path) + r":4:1: ")

    def test_include_relative_to_config(self):
        port = h.free_port()
        self.tmp.write("rules.d/10-flood.yaml",
                       'actions:\n  - { name: inc, when: { ip: ">= 2" }, do: reject, '
                       'message: "550 5.7.1 from include" }\n')
        cfg = h.base_config(port, include=["rules.d/*.yaml"], actions=[])
        d = self.start_daemon(cfg)
        c = self.client(d)
        acts = [c.request(h.policy_request(client_address="198.51.100.5")) for _ in range(2)]
        self.assertEqual(acts, ["DUNNO", "550 5.7.1 from include"])

    def test_list_file(self):
        port = h.free_port()
        self.tmp.write("customers.cidr", "# customers\n198.51.100.0/25\n2001:db8:aa::/48\n")
        cfg = h.base_config(port)
        cfg["lists"] = {"customers": {"file": "customers.cidr"}}
        cfg["points"] = [{"name": "cust", "when": {"client_address": {"in": "customers"}},
                          "add": {"ip": 10}}]
        cfg["actions"] = [{"name": "flood", "when": {"ip": ">= 5"}, "do": "reject",
                           "message": "550 5.7.1 customer"}]
        d = self.start_daemon(cfg)
        c = self.client(d)
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.5")), "550 5.7.1 customer")
        self.assertEqual(c.request(h.policy_request(client_address="2001:db8:aa:1::5")), "550 5.7.1 customer")
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.200")), "DUNNO")


class ReloadTest(h.SGTestCase):

    def setUp(self):
        super().setUp()
        self.port = h.free_port()
        self.d = self.start_daemon(h.base_config(self.port))

    def test_reload_good_config_changes_behaviour(self):
        c = self.client(self.d)
        self.assertEqual([c.request(h.policy_request(client_address="198.51.100.10"))
                          for _ in range(2)], ["DUNNO", "DUNNO"])
        cfg = h.base_config(self.port)
        cfg["actions"] = [{"name": "strict", "when": {"ip": ">= 2"}, "do": "defer",
                           "message": "450 4.7.1 new rules for %{client_address}"}]
        ok, text = self.d.reload(cfg)
        self.assertTrue(ok, "reload of a good config failed:\n" + text)
        self.assertRegex(text, r"config reloaded generation=2\b")
        # The open connection keeps working and uses the new rules.
        acts = [c.request(h.policy_request(client_address="198.51.100.11")) for _ in range(2)]
        self.assertEqual(acts, ["DUNNO", "450 4.7.1 new rules for 198.51.100.11"])
        with self.d.client() as c2:
            acts = [c2.request(h.policy_request(client_address="198.51.100.12")) for _ in range(2)]
        self.assertEqual(acts, ["DUNNO", "450 4.7.1 new rules for 198.51.100.12"])
        # A second reload bumps the generation again.
        ok, text = self.d.reload()
        self.assertTrue(ok, text)
        self.assertRegex(text, r"config reloaded generation=3\b")

    def test_reload_broken_config_keeps_old(self):
        c = self.client(self.d)
        ok, text = self.d.reload(BROKEN.format(port=self.port))
        self.assertFalse(ok, "a broken config was accepted on reload:\n" + text)
        self.assertIn("reload failed", text)
        self.assertRegex(text, re.escape(self.d.conf_path) + r":4:1: ")
        self.assertTrue(self.d.running())
        # The old rules (>= 5, 550 text) still serve, on old and new connections.
        acts = [c.request(h.policy_request(client_address="198.51.100.13")) for _ in range(5)]
        self.assertEqual(acts, ["DUNNO"] * 4 + ["550 5.7.1 198.51.100.13 sent too much"])
        with self.d.client() as c2:
            self.assertEqual(c2.request(h.policy_request(client_address="198.51.100.13")),
                             "550 5.7.1 198.51.100.13 sent too much")
        # Fixing the file and reloading again works.
        cfg = h.base_config(self.port)
        cfg["actions"] = [{"name": "x", "when": {"client_address": "198.51.100.14"}, "do": "reject",
                           "message": "550 5.7.1 fixed"}]
        ok, text = self.d.reload(cfg)
        self.assertTrue(ok, text)
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.14")), "550 5.7.1 fixed")

    def test_reload_under_load(self):
        c = self.client(self.d)
        for i in range(5):
            self.d.signal(signal.SIGHUP)
            for j in range(20):
                ip = "203.0.113.%d" % (i * 20 + j + 1)
                self.assertEqual(c.request(h.policy_request(client_address=ip)), "DUNNO")
        self.d.wait_log(r"config reloaded generation=6\b", timeout=10)

    def test_sigterm_graceful_exit(self):
        idle = self.client(self.d)
        self.assertEqual(idle.request(h.policy_request(client_address="198.51.100.15")), "DUNNO")
        t0 = time.monotonic()
        rc = self.d.stop(timeout=10)     # asserts exit 0 and a clean log
        self.assertEqual(rc, 0)
        self.assertLess(time.monotonic() - t0, 10 * h.SLOW)
        self.assertFalse(h.port_open("127.0.0.1", self.port), "listener still open after exit")
        self.assertTrue(idle.is_closed(2))
