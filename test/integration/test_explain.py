"""smtpguard explain: golden transcripts (test/golden/NAME.in -> NAME.ref,
with test/golden/rules.yaml and --fresh), the read-only promise against a
real Redis, and clear errors for bad input.

SG_GOLDEN_UPDATE=1 rewrites the .ref files from the current binary (then
read the diff before committing it)."""

import glob
import os
import subprocess

import harness as h

GOLDEN = os.path.join(h.ROOT, "test", "golden")


def explain(args, stdin, cwd, timeout=20):
    p = subprocess.run([h.daemon_bin(), "explain"] + args, input=stdin.encode(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
                       timeout=timeout * h.SLOW)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def wire(attrs):
    return "".join("%s=%s\n" % kv for kv in attrs.items()) + "\n"


class ExplainGoldenTest(h.SGTestCase):

    def test_golden_transcripts(self):
        cases = sorted(glob.glob(os.path.join(GOLDEN, "*.in")))
        names = [os.path.basename(c)[:-3] for c in cases]
        # The four: whitelists, several counters, log-only rules,
        # first-match actions.
        for want in ("whitelist", "multi-counter", "log-only", "first-match"):
            self.assertIn(want, names)
        for path in cases:
            name = os.path.basename(path)[:-3]
            with self.subTest(golden=name):
                with open(path) as f:
                    rc, out, err = explain(["-c", "rules.yaml", "--fresh"], f.read(), GOLDEN)
                self.assertEqual(rc, 0, "explain %s: rc=%d stderr=%s" % (name, rc, err))
                ref = path[:-3] + ".ref"
                if os.environ.get("SG_GOLDEN_UPDATE"):
                    with open(ref, "w") as f:
                        f.write(out)
                with open(ref) as f:
                    want = f.read()
                self.assertEqual(out, want, "explain %s differs from %s" % (name, ref))

    def test_transcripts_say_what_the_daemon_answers(self):
        # The answers in first-match.ref are what a daemon with the same
        # rules answers to the same requests.
        port = h.free_port()
        with open(os.path.join(GOLDEN, "rules.yaml")) as f:
            rules = f.read()
        cfg = 'listen: ["127.0.0.1:%d"]\n' % port + rules
        d = self.start_daemon(cfg)
        c = self.client(d)
        with open(os.path.join(GOLDEN, "first-match.in")) as f:
            text = f.read()
        with open(os.path.join(GOLDEN, "first-match.ref")) as f:
            want = [line.split("action=", 1)[1] for line in f.read().splitlines()
                    if line.startswith("  answer: action=")]
        got = []
        for block in text.split("\n\n"):
            attrs = dict(line.split("=", 1) for line in block.splitlines()
                         if line and not line.startswith("#"))
            if attrs:
                got.append(c.request(attrs))
        self.assertEqual(got, want)


    def test_fresh_runs_delete_as_the_daemon_does(self):
        # A rule that deletes its counter: the daemon starts the client
        # over after the reject; explain --fresh kept counting, and
        # answered the third request with a reject the daemon never gave.
        port = h.free_port()
        rules = ("counters:\n  ip: { key: client_address, half_life: 10m }\n"
                 "points:\n  - { name: r, when: { protocol_state: RCPT }, add: { ip: 1 } }\n"
                 "actions:\n  - { name: block, when: { ip: \">= 2\" }, do: [reject, delete ip],"
                 " message: \"550 5.7.1 reset\" }\n")
        conf = self.tmp.write("del.yaml", rules)
        reqs = [h.policy_request(client_address="198.51.100.77") for _ in range(3)]
        rc, out, err = explain(["-c", conf, "--fresh"], "".join(wire(r) for r in reqs),
                               self.tmp.path)
        self.assertEqual(rc, 0, err)
        got = [ln.split("action=", 1)[1] for ln in out.splitlines()
               if ln.startswith("  answer: action=")]
        self.assertIn("  delete: key ip:198.51.100.77\n", out)
        d = self.start_daemon('listen: ["127.0.0.1:%d"]\n' % port + rules)
        c = self.client(d)
        want = [c.request(r) for r in reqs]
        self.assertEqual(want, ["DUNNO", "550 5.7.1 reset", "DUNNO"])
        self.assertEqual(got, want)


    def test_shipped_outbound_rules_count_customers_not_their_shared_address(self):
        # 100 authenticated customers behind one carrier-NAT address, 5
        # recipients each: counted per user, none deferred or rejected
        # for the address they share (ip-fast deferred from the 200th
        # recipient and ip-flood rejected from the 500th). An
        # unauthenticated client at that rate is still stopped by address.
        cfg = os.path.join(h.ROOT, "smtpguard.yaml.example")
        reqs = [h.policy_request(client_address="198.51.100.10", sasl_username="user%d" % u,
                                 recipient="r%d@dest.example" % r)
                for u in range(100) for r in range(5)]
        rc, out, err = explain(["-c", cfg, "--fresh"], "".join(wire(r) for r in reqs), h.ROOT)
        self.assertEqual(rc, 0, err)
        verdicts = [ln for ln in out.splitlines() if ln.startswith("  verdict:")]
        self.assertEqual(len(verdicts), 500)
        self.assertFalse([v for v in verdicts if "ip-" in v or "net-" in v], verdicts[-1])
        reqs = [h.policy_request(client_address="198.51.100.11", recipient="r%d@dest.example" % r)
                for r in range(250)]
        rc, out, err = explain(["-c", cfg, "--fresh"], "".join(wire(r) for r in reqs), h.ROOT)
        self.assertEqual(rc, 0, err)
        self.assertIn("  verdict: defer by ip-fast", out)


class ExplainStoreTest(h.SGTestCase):

    def test_read_only_against_redis(self):
        r = self.start_redis()
        port = h.free_port()
        cfg = h.base_config(port, store=h.redis_store(r.port))
        d = self.start_daemon(cfg)
        c = self.client(d)
        for _ in range(2):
            self.assertEqual(c.request(h.policy_request(client_address="198.51.100.70",
                                                        sasl_username="carol")), "DUNNO")
        before = {k: r.cmd("GET", k) for k in ("sg:ip:198.51.100.70", "sg:user:carol")}
        self.assertTrue(all(before.values()), before)
        keys_before = sorted(r.cmd("KEYS", "*"))
        req = h.policy_request(client_address="198.51.100.70", sasl_username="carol")
        rc, out, err = explain(["-c", d.conf_path], wire(req) + wire(req), self.tmp.path)
        self.assertEqual(rc, 0, err)
        self.assertIn("store redis (read only)", out)
        # Scores as stored: 2 before, 3 after, for both requests (they do
        # not add up against the real store), and the user trips "slow".
        self.assertEqual(out.count("ip key ip:198.51.100.70: before 2, +1, after 3"), 2, out)
        self.assertEqual(out.count("user key user:carol: before 2, +1, after 3"), 2, out)
        self.assertIn("answer: action=450 4.7.1 slow down carol", out)
        # Nothing written: same values, same keys.
        after = {k: r.cmd("GET", k) for k in before}
        self.assertEqual(after, before)
        self.assertEqual(sorted(r.cmd("KEYS", "*")), keys_before)

    def test_store_down_is_an_error(self):
        port = h.free_port()
        dead = h.free_port()
        conf = self.tmp.write("sg.yaml", h.yaml_dump(h.base_config(
            port, store=h.redis_store(dead))))
        rc, out, err = explain(["-c", conf], wire(h.policy_request()), self.tmp.path)
        self.assertEqual(rc, 3, out + err)
        self.assertIn("did not answer (try --fresh)", err)

    def test_memory_store_without_fresh_is_refused(self):
        # The memory store's scores live in the daemon: explain read an
        # empty private one and showed every request as a first, exit 0.
        conf = self.tmp.write("mem.yaml", h.yaml_dump(h.base_config(h.free_port())))
        rc, out, err = explain(["-c", conf], wire(h.policy_request()), self.tmp.path)
        self.assertEqual(rc, 3, out + err)
        self.assertIn("use --fresh", err)
        rc, out, err = explain(["-c", conf, "--fresh"], wire(h.policy_request()), self.tmp.path)
        self.assertEqual(rc, 0, err)


class ExplainInputTest(h.SGTestCase):

    def conf(self):
        return self.tmp.write("sg.yaml", h.yaml_dump(h.base_config(h.free_port())))

    def test_bad_input_is_reported(self):
        cases = [
            ("line without =", "protocol_state=RCPT\nnonsense\n\n", "request 1: "),
            ("empty input", "", "no request on stdin"),
            ("comments only", "# nothing\n\n", "no request on stdin"),
        ]
        conf = self.conf()
        for label, text, want in cases:
            with self.subTest(case=label):
                rc, out, err = explain(["-c", conf, "--fresh"], text, self.tmp.path)
                self.assertEqual(rc, 1, "%s: rc=%d out=%s" % (label, rc, out))
                self.assertIn(want, err)

    def test_last_request_needs_no_empty_line(self):
        rc, out, err = explain(["-c", self.conf(), "--fresh"],
                               "protocol_state=RCPT\nclient_address=198.51.100.1", self.tmp.path)
        self.assertEqual(rc, 0, err)
        self.assertIn("request 1: RCPT client=<198.51.100.1>", out)
        self.assertIn("answer: action=DUNNO", out)

    def test_usage_and_config_errors(self):
        rc, _, err = explain(["--bogus"], "", self.tmp.path)
        self.assertEqual(rc, 2)
        self.assertIn("usage: smtpguard explain", err)
        bad = self.tmp.write("bad.yaml", "counters:\n  ip: { key: client_address }\n")
        rc, _, err = explain(["-c", bad, "--fresh"], wire(h.policy_request()), self.tmp.path)
        self.assertEqual(rc, 1)
        self.assertRegex(err, r"bad\.yaml:2:\d+: counters\.ip")
