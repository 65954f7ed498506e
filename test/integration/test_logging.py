"""What operators read: decision lines, the JSON decision log (and its
reopen on SIGUSR1 for logrotate), and file lists that reload by
themselves when they change."""

import json
import os
import signal
import time

import harness as h


def flood_config(port, **extra):
    cfg = h.base_config(port)
    cfg["points"] = [{"name": "per-rcpt", "when": {"protocol_state": "RCPT"}, "add": {"ip": 1}}]
    cfg["actions"] = [
        {"name": "watch", "mode": "log", "when": {"ip": ">= 2"}, "do": "reject"},
        {"name": "flood", "when": {"ip": ">= 3"}, "do": ["defer", "log"],
         "message": "450 4.7.1 %{client_address} slow down"},
    ]
    cfg.update(extra)
    return cfg


def read_records(path, n):
    """The JSON records of path once there are n of them, else None."""
    try:
        with open(path) as f:
            lines = f.readlines()
    except FileNotFoundError:
        return None
    if len(lines) < n or not lines[-1].endswith("\n"):
        return None
    return [json.loads(l) for l in lines]


class DecisionLogTest(h.SGTestCase):

    def test_decision_line_names_everything_that_decided(self):
        d = self.start_daemon(flood_config(h.free_port()))
        c = self.client(d)
        m = d.mark()
        req = h.policy_request(client_address="198.51.100.9", sender="Eve@Example.ORG",
                               recipient="r@example.net", sasl_username="eve")
        answers = [c.request(req) for _ in range(3)]
        self.assertEqual(answers[:2], ["DUNNO", "DUNNO"])
        self.assertEqual(answers[2], "450 4.7.1 198.51.100.9 slow down")
        d.wait_log(r"verdict=defer", since=m)
        log = d.log_since(m)
        line = [l for l in log.splitlines() if "verdict=defer" in l][0]
        for want in ("client=", "[198.51.100.9]", "sender=<Eve@Example.ORG>",
                     "recipient=<r@example.net>", "sasl_username=eve", "rule=flood",
                     "score.ip=3", 'action="450 4.7.1 198.51.100.9 slow down"'):
            self.assertIn(want, line)
        # The log-only rule before it is recorded as what it would have done.
        self.assertRegex(log, r"verdict=dunno would=reject would_rule=watch score\.ip=2")
        # A plain DUNNO with nothing to say is not logged.
        self.assertNotRegex(log, r"score\.ip=1\b")

    def test_peer_values_cannot_forge_fields(self):
        # A HELO (Postfix joins its words) or a SASL name with spaces wrote
        # " rule=trusted verdict=permit" into the line, ahead of the real
        # fields: each value is now one token, its spaces and <> escaped.
        d = self.start_daemon(flood_config(h.free_port()))
        c = self.client(d)
        m = d.mark()
        req = h.policy_request(client_address="198.51.100.10",
                               helo_name='pc1> rule=trusted verdict=permit x=<y',
                               sasl_username="bob rule=allow verdict=dunno")
        answers = [c.request(req) for _ in range(3)]
        self.assertEqual(answers[2], "450 4.7.1 198.51.100.10 slow down")
        d.wait_log(r"verdict=defer", since=m)
        line = [l for l in d.log_since(m).splitlines() if "verdict=defer" in l][0]
        fields = [t.split("=", 1) for t in line.split(" ") if "=" in t]
        rules = [v for k, v in fields if k == "rule"]
        verdicts = [v for k, v in fields if k == "verdict"]
        self.assertEqual((rules, verdicts), (["flood"], ["defer"]), line)
        self.assertIn(r"helo=<pc1\x3e\x20rule=trusted\x20verdict=permit\x20x=\x3cy>", line)
        self.assertIn(r"sasl_username=bob\x20rule=allow\x20verdict=dunno", line)

    def test_json_log_every_decision_and_reopen_on_usr1(self):
        port = h.free_port()
        path = self.tmp.join("decisions.jsonl")
        d = self.start_daemon(flood_config(port, log={"stderr": True, "json": path}))
        c = self.client(d)
        req = h.policy_request(client_address="198.51.100.10", recipient="a@example.net")
        for _ in range(3):
            c.request(req)
        # Records are written right after the answer: wait for them.
        recs = h.wait_until(lambda: read_records(path, 3), 5 * h.SLOW, what="3 JSON records")
        self.assertEqual(len(recs), 3, "one JSON record per decision, DUNNO included")
        self.assertEqual([r["verdict"] for r in recs], ["dunno", "dunno", "defer"])
        self.assertEqual(recs[2]["rule"], "flood")
        self.assertEqual(recs[2]["scores"], {"ip": 3})
        self.assertEqual(recs[2]["client_address"], "198.51.100.10")
        self.assertEqual(recs[1]["would"], ["watch"])
        self.assertEqual(recs[0]["points"], ["per-rcpt"])

        # logrotate: move the file away, SIGUSR1, the next record goes to a new file.
        os.rename(path, path + ".1")
        m = d.mark()
        d.signal(signal.SIGUSR1)
        d.wait_log(r"decision log .* reopened", since=m)
        c.request(req)
        recs = h.wait_until(lambda: read_records(path, 1), 5 * h.SLOW, what="a record in the new file")
        self.assertEqual(len(recs), 1)
        with open(path + ".1") as f:
            self.assertEqual(len(f.readlines()), 3)


class ListFileReloadTest(h.SGTestCase):

    def test_list_file_reloads_by_itself(self):
        port = h.free_port()
        self.tmp.write("blocked.cidr", "# nothing yet\n192.0.2.200/32\n")
        cfg = h.base_config(port)
        cfg["lists"]["blocked"] = {"file": "blocked.cidr"}
        cfg["actions"] = [{"name": "blocked", "when": {"client_address": {"in": "blocked"}},
                           "do": "reject", "message": "554 5.7.1 blocked"}]
        d = self.start_daemon(cfg)
        c = self.client(d)
        req = h.policy_request(client_address="198.51.100.77")
        self.assertEqual(c.request(req), "DUNNO")
        m = d.mark()
        # A bad line: refused, old contents kept, the error names the line.
        self.tmp.write("blocked.cidr", "192.0.2.200/32\n198.51.100.0/24\n10.0.0.0/99\n")
        d.wait_log(r"list blocked: keeping the old contents: .*blocked\.cidr:3", since=m, timeout=15)
        self.assertEqual(c.request(req), "DUNNO")
        m = d.mark()
        self.tmp.write("blocked.cidr", "192.0.2.200/32\n198.51.100.0/24  # the new customer\n")
        d.wait_log(r"list blocked reloaded .*: 2 entries", since=m, timeout=15)
        self.assertEqual(c.request(req), "554 5.7.1 blocked")
