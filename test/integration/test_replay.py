"""Recording and replay: the daemon records what it is asked (redacted,
rotated); `smtpguard replay` runs a synthetic recording with a known flood
and reports the exact first crossing time and verdict counts; --compare
counts the requests that change verdict; corrupt lines are reported and
skipped; a recording replays to the verdicts the daemon gave."""

import json
import math
import os
import re
import subprocess
import time

import harness as h

T0 = 1700000000.0
FLOOD_IP = "198.51.100.66"

RULES = """
counters:
  ip: { key: client_address, half_life: 10m }
points:
  - { name: per-rcpt, when: { protocol_state: RCPT }, add: { ip: 1 } }
actions:
  - { name: flood, when: { ip: ">= %(flood)d" }, do: reject }
  - { name: slow, when: { ip: ">= 6" }, do: defer }
"""


def round_half_up(v):
    # decay_round() at precision 0.
    return math.floor(v + 0.5 + abs(v) * 1e-9)


def synthetic():
    """(records, flood request times): 20 quiet clients, one RCPT every
    5 minutes each for an hour, and one client sending 50 RCPT 2 s apart
    from T0 + 600 s."""
    recs = []
    for k in range(12):
        for i in range(20):
            recs.append((T0 + k * 300 + i, "203.0.113.%d" % (i + 1)))
    flood = [T0 + 600 + 2 * k for k in range(50)]
    recs += [(t, FLOOD_IP) for t in flood]
    recs.sort()
    return recs, flood


def expected(flood_times, flood_threshold):
    """Verdict of each flood request under the rules, computed here with
    the decay formula, independently of the C code."""
    score, last, out = 0.0, None, []
    for t in flood_times:
        score = (score * 2 ** (-(t - last) / 600.0) if last is not None else 0.0) + 1
        last = t
        r = round_half_up(score)
        out.append("reject" if r >= flood_threshold else "defer" if r >= 6 else "dunno")
    return out


def line(t, ip, **extra):
    a = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "client_address": ip,
         "sender": "s@example.org", "recipient": "r@example.net"}
    a.update(extra)
    return json.dumps({"t": round(t, 3), "a": a}, separators=(",", ":")) + "\n"


def replay(args, cwd, timeout=60):
    p = subprocess.run([h.daemon_bin(), "replay"] + args, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=cwd,
                       timeout=timeout * h.SLOW)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def verdict_counts(report, section):
    """{(rule, verdict): n} from the 'verdicts by rule' table of one rules section."""
    part = report.split("## rules " + section, 1)[1].split("\n## ", 1)[0]
    table = part.split("verdicts by rule:", 1)[1].split("\n\n", 1)[0]
    out = {}
    for ln in table.splitlines()[2:]:
        f = ln.split()
        out[(f[0], f[1])] = int(f[2])
    return out


class ReplayTest(h.SGTestCase):

    def setUp(self):
        super().setUp()
        self.a = self.tmp.write("a.yaml", RULES % {"flood": 10})
        self.b = self.tmp.write("b.yaml", RULES % {"flood": 20})
        recs, self.flood = synthetic()
        self.n = len(recs)
        self.rec = self.tmp.write("rec.jsonl", "".join(line(t, ip) for t, ip in recs))

    def test_known_flood(self):
        rc, out, err = replay(["-c", self.a, self.rec], self.tmp.path)
        self.assertEqual(rc, 0, err)
        want = expected(self.flood, 10)
        first_reject = want.index("reject")
        first_defer = want.index("defer")
        n_reject, n_defer = want.count("reject"), want.count("defer")
        # Sanity of the scenario itself: the flood crosses both thresholds.
        self.assertTrue(0 < first_defer < first_reject < 50 and n_reject > 20)
        self.assertIn("# smtpguard replay: %s: %d requests, 2023-11-14T22:13:20.000Z (+0.000s)"
                      % (self.rec, self.n), out)
        counts = verdict_counts(out, self.a)
        self.assertEqual(counts, {("flood", "reject"): n_reject, ("slow", "defer"): n_defer,
                                  ("(none)", "dunno"): self.n - n_reject - n_defer})
        # When the flooder first crossed each threshold, to the millisecond.
        for rule, idx, n, score in (("flood", first_reject, n_reject, 10),
                                    ("slow", first_defer, n_defer, 6)):
            rel = self.flood[idx] - T0
            m = re.search(r"  %s \(\w+\): 1 key\n    ip:%s +first \S+ \(\+%.3fs\) score %d, "
                          r"%d requests" % (rule, re.escape(FLOOD_IP), rel, score, n), out)
            self.assertIsNotNone(m, "want %s first crossed at +%.3fs with %d requests in:\n%s"
                                 % (rule, rel, n, out))
        # Peak: the flooder's last score, rounded.
        score, last = 0.0, None
        for t in self.flood:
            score = (score * 2 ** (-(t - last) / 600.0) if last is not None else 0.0) + 1
            last = t
        self.assertRegex(out, r"\n  ip +%d  ip:%s +at \S+ \(\+%.3fs\)"
                         % (round_half_up(score), re.escape(FLOOD_IP), self.flood[-1] - T0))

    def test_compare_counts_changed_verdicts(self):
        rc, out, err = replay(["-c", self.a, self.rec, "--compare", self.b], self.tmp.path)
        self.assertEqual(rc, 0, err)
        va, vb = expected(self.flood, 10), expected(self.flood, 20)
        changed = sum(1 for x, y in zip(va, vb) if x != y)
        self.assertGreater(changed, 5)
        self.assertIn("requests with another verdict: %d of %d" % (changed, self.n), out)
        self.assertRegex(out, r"\n  reject -> defer +%d\n" % changed)
        self.assertRegex(out, r"keys whose requests change verdict: 1\n  ip:%s +%d requests"
                         % (re.escape(FLOOD_IP), changed))
        # Both rule sets are reported in full.
        self.assertEqual(verdict_counts(out, self.b)[("slow", "defer")], vb.count("defer"))

    def test_same_rules_change_nothing(self):
        rc, out, err = replay(["-c", self.a, "--compare", self.a, self.rec], self.tmp.path)
        self.assertEqual(rc, 0, err)
        self.assertIn("requests with another verdict: 0 of %d" % self.n, out)

    def test_corrupt_lines_are_reported_and_skipped(self):
        with open(self.rec) as f:
            lines = f.readlines()
        lines.insert(4, "this is not json\n")
        lines.insert(9, '{"t":1700000001,"a":{"sender":"x"\n')
        lines.append("\n")
        bad = self.tmp.write("bad.jsonl", "".join(lines))
        rc, out, err = replay(["-c", self.a, bad], self.tmp.path)
        self.assertEqual(rc, 0, err)
        self.assertIn("%s:5: not a JSON object, line skipped" % bad, err)
        self.assertIn("%s:10: expected ',' or '}' in \"a\", line skipped" % bad, err)
        self.assertIn("# 2 bad lines skipped", out)
        self.assertIn(": %d requests" % self.n, out)

    def test_errors(self):
        rc, _, err = replay(["-c", self.a, self.tmp.join("missing.jsonl")], self.tmp.path)
        self.assertEqual(rc, 1)
        self.assertIn("No such file", err)
        empty = self.tmp.write("empty.jsonl", "")
        rc, _, err = replay(["-c", self.a, empty], self.tmp.path)
        self.assertEqual(rc, 1)
        self.assertIn("no request in the recording", err)
        rc, _, err = replay(["-c", self.a], self.tmp.path)
        self.assertEqual(rc, 2)
        self.assertIn("usage: smtpguard replay", err)

    def test_long_line_skipped_without_holding_it(self):
        # A line longer than any the daemon writes was read whole before
        # it was refused: memory grew with it (100 MB for a 100 MB line).
        good = '{"t":1700000000.000,"a":{"protocol_state":"RCPT","client_address":"192.0.2.1"}}\n'
        p = subprocess.Popen([h.daemon_bin(), "replay", "-c", self.a, "-"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.tmp.path)
        chunk = b"x" * (1 << 20)
        p.stdin.write(good.encode())
        for _ in range(96):
            p.stdin.write(chunk)
        p.stdin.write(b"\n" + good.encode())
        p.stdin.flush()
        time.sleep(0.5)
        with open("/proc/%d/status" % p.pid) as f:
            hwm_kb = int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1))
        out, err = p.communicate(timeout=60 * h.SLOW)
        self.assertEqual(p.returncode, 0, err)
        self.assertIn(b"line too long", err)
        self.assertLess(hwm_kb, 64 * 1024, "replay held %d kB for a 96 MB line" % hwm_kb)


class RecordTest(h.SGTestCase):

    def test_delete_held_by_wait_replays_as_the_daemon_ran_it(self):
        # The daemon resets a `delete`d counter when the answer held by
        # `wait` goes out; replay reset it at once, so a request counted
        # meanwhile scored from 0 there and not in the daemon.
        port = h.free_port()
        rec = self.tmp.join("rec.jsonl")
        cfg = h.base_config(port, record={"file": rec})
        cfg["counters"] = {"ip": {"key": "client_address", "half_life": "1h"}}
        cfg["points"] = [{"name": "p", "when": {"protocol_state": "RCPT"}, "add": {"ip": 1}}]
        cfg["actions"] = [{"name": "ban", "when": {"ip": ">= 3"},
                           "do": ["defer", "wait 2s", "delete ip"],
                           "message": "450 4.7.1 held (%{score.ip})"}]
        conf = self.tmp.write("replay.yaml", h.yaml_dump({k: v for k, v in cfg.items()
                                                          if k != "record"}))
        d = self.start_daemon(cfg)
        a, b = self.client(d), self.client(d)
        ask = h.policy_request
        self.assertEqual([a.request(ask(client_address="192.0.2.9")) for _ in range(2)],
                         ["DUNNO"] * 2)
        a.send_raw(a.encode(ask(client_address="192.0.2.9")))     # held 2 s
        time.sleep(0.4)
        daemon = [b.request(ask(client_address="192.0.2.9"), timeout=10) for _ in range(2)]
        daemon.append(a.read_action(timeout=5))
        d.stop()
        # B's first: 4, held, deferred; its second comes after both deletes.
        self.assertEqual(daemon, ["450 4.7.1 held (4)", "DUNNO", "450 4.7.1 held (3)"])
        rc, out, err = replay(["-c", conf, rec], self.tmp.path)
        self.assertEqual(rc, 0, err)
        self.assertEqual(verdict_counts(out, conf), {("ban", "defer"): 2, ("(none)", "dunno"): 3},
                         out)

    def test_daemon_records_and_replay_agrees(self):
        port = h.free_port()
        rec = self.tmp.join("rec.jsonl")
        cfg = h.base_config(port, record={"file": rec})
        d = self.start_daemon(cfg)
        c = self.client(d)
        answers = []
        for i in range(8):
            answers.append(c.request(h.policy_request(client_address="198.51.100.30",
                                                      sasl_username="dave")))
        answers.append(c.request(h.policy_request(client_address="10.1.2.3")))
        answers.append(c.request(h.policy_request(state="END-OF-MESSAGE",
                                                  client_address="198.51.100.31", sender="")))
        d.stop()
        with open(rec) as f:
            recs = [json.loads(x) for x in f]
        self.assertEqual(len(recs), 10)
        self.assertEqual(recs[0]["a"]["client_address"], "198.51.100.30")
        self.assertEqual(recs[0]["a"]["sasl_username"], "dave")
        self.assertEqual(recs[9]["a"]["sender"], "")           # the null sender, kept
        self.assertEqual(recs[9]["a"]["recipient"], "")        # sent empty, kept empty
        self.assertNotIn("ccert_issuer_x", recs[9]["a"])
        self.assertTrue(all(abs(r["t"] - time.time()) < 120 for r in recs))
        # Replaying the recording with the same rules gives the same verdicts.
        rc, out, err = replay(["-c", d.conf_path, rec], self.tmp.path)
        self.assertEqual(rc, 0, err)
        counts = verdict_counts(out, d.conf_path)
        self.assertEqual(counts.get(("slow", "defer"), 0),
                         sum(1 for a in answers if a.startswith("450 ")))
        self.assertEqual(counts.get(("flood", "reject"), 0),
                         sum(1 for a in answers if a.startswith("550 ")))
        self.assertEqual(counts.get(("trusted", "dunno")), 1)

    def test_a_write_cut_short_leaves_whole_lines(self):
        # A file size limit (or a full disk) cut a line short, and the
        # next line was glued to the half written: both lost to replay,
        # and the loss counted nowhere. Lines are whole, losses counted;
        # and the limit's SIGXFSZ does not kill the daemon. (The limit is
        # per file and the daemon's log is a file too: it is set well
        # above the log's size, and the recording grows past it.)
        port = h.free_port()
        rec = self.tmp.join("rec.jsonl")
        d = self.start_daemon(h.base_config(port, record={"file": rec}))
        c = self.client(d)
        c.request(h.policy_request(client_address="198.51.100.60"))
        limit = max(os.path.getsize(rec), os.path.getsize(d.log_path)) + 4096
        subprocess.run(["prlimit", "--pid", str(d.pid), "--fsize=%d:" % limit], check=True)
        sent = 1
        while sent < 40 and "write failed" not in d.log():
            self.assertEqual(c.request(h.policy_request(client_address="198.51.100.%d" % (60 + sent))),
                             "DUNNO")
            sent += 1
        d.wait_log(r"record .*: write failed: File too large; 1 requests not recorded so far")
        subprocess.run(["prlimit", "--pid", str(d.pid), "--fsize=unlimited:"], check=True)
        c.request(h.policy_request(client_address="198.51.100.200"))
        d.stop()
        with open(rec) as f:
            lines = f.read().splitlines()
        addrs = [json.loads(x)["a"]["client_address"] for x in lines]   # each line whole
        self.assertLessEqual(os.path.getsize(rec) - len(lines[-1]) - 1, limit)
        # The requests before the limit, in order, then none until it was
        # lifted (which of the last ones hit it depends on the log's
        # timing), then the one after.
        kept = len(addrs) - 1
        self.assertGreaterEqual(kept, 3)
        self.assertLess(kept, sent)
        self.assertEqual(addrs[:-1], ["198.51.100.%d" % (60 + i) for i in range(kept)])
        self.assertEqual(addrs[-1], "198.51.100.200")

    def test_held_answers_replay_as_the_daemon_counted(self):
        # Request a is held 2 s by wait; b, from the same client, comes a
        # moment later and is rejected at once. The recording had b's line
        # first and a's stamped 2 s later, and replay rejected a and
        # tarpitted b: lines now come at the decision, in counting order.
        port = h.free_port()
        rec = self.tmp.join("rec.jsonl")
        cfg = h.base_config(port, record={"file": rec})
        cfg["points"] = [{"name": "per-rcpt", "when": {"protocol_state": "RCPT"}, "add": {"ip": 1}}]
        cfg["actions"] = [
            {"name": "block", "when": {"ip": ">= 2"}, "do": "reject", "message": "550 5.7.1 too many"},
            {"name": "tarpit", "when": {"ip": ">= 1"}, "do": ["dunno", "wait 2s"]}]
        d = self.start_daemon(cfg)
        a, b = self.client(d), self.client(d)
        a.send_raw(a.encode(h.policy_request(client_address="198.51.100.90")))
        time.sleep(0.3)
        self.assertEqual(b.request(h.policy_request(client_address="198.51.100.90")),
                         "550 5.7.1 too many")
        self.assertEqual(a.read_action(timeout=5 * h.SLOW), "DUNNO")
        d.stop()
        with open(rec) as f:
            recs = [json.loads(x) for x in f]
        self.assertEqual(len(recs), 2)
        self.assertLess(recs[0]["t"], recs[1]["t"])
        self.assertLess(recs[1]["t"] - recs[0]["t"], 1.5, "a stamped at its answer, not its decision")
        rc, out, err = replay(["-c", d.conf_path, rec], self.tmp.path)
        self.assertEqual(rc, 0, err)
        counts = verdict_counts(out, d.conf_path)
        self.assertEqual(counts.get(("tarpit", "dunno")), 1, out)
        self.assertEqual(counts.get(("block", "reject")), 1, out)

    def test_redaction_and_rotation(self):
        port = h.free_port()
        rec = self.tmp.join("rec.jsonl")
        cfg = h.base_config(port, record={"file": rec, "redact": "hash", "max_size": "4k",
                                          "keep": 2})
        d = self.start_daemon(cfg)
        c = self.client(d)
        for i in range(60):
            c.request(h.policy_request(client_address="198.51.100.%d" % (i % 50 + 1),
                                       sender="alice.secret@example.org",
                                       recipient="bob.private@example.net",
                                       sasl_username="alice.secret"))
        d.stop()
        files = sorted(f for f in os.listdir(self.tmp.path) if f.startswith("rec.jsonl"))
        self.assertEqual(files, ["rec.jsonl", "rec.jsonl.1", "rec.jsonl.2"])
        total = 0
        for name in files:
            with open(self.tmp.join(name)) as f:
                text = f.read()
            self.assertLessEqual(len(text), 4096, name)
            self.assertNotIn("secret", text)
            self.assertNotIn("private", text)
            for x in text.splitlines():
                a = json.loads(x)["a"]
                self.assertRegex(a["sender"], r"^h[0-9a-f]{16}@example\.org$")
                self.assertRegex(a["sasl_username"], r"^h[0-9a-f]{16}$")
                total += 1
        # Older files were rotated away: fewer lines kept than sent.
        self.assertLess(total, 60)
        self.assertGreater(total, 10)

    def test_bad_record_settings(self):
        d = h.Daemon(self.tmp, h.base_config(h.free_port(), record={
            "file": "x.jsonl", "redact": "blur", "max_size": "12Q"}))
        rc, err, out = d.check_config()
        self.assertEqual(rc, 1, out)
        self.assertRegex(err, r"sg\.yaml:\d+:\d+: record\.redact: expected none, localpart or hash")
        self.assertRegex(err, r"sg\.yaml:\d+:\d+: record\.max_size: expected a size")
