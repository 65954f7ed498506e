"""Counting and deciding with the memory store: thresholds, SASL users,
trusted networks, log-only rules, decay, IPv6 networks, wait."""

import threading
import time

import harness as h

FLOOD = "550 5.7.1 %s sent too much"


class MemoryCountingTest(h.SGTestCase):

    def start(self, **over):
        self.port = h.free_port()
        self.d = self.start_daemon(h.base_config(self.port, **over))
        self.c = self.client(self.d)
        return self.d

    def rcpt(self, ip, **kw):
        return self.c.request(h.policy_request(client_address=ip, **kw))

    def test_flood_threshold_fifth_rcpt(self):
        self.start()
        m = self.d.mark()
        acts = [self.rcpt("198.51.100.7") for _ in range(6)]
        self.assertEqual(acts[:4], ["DUNNO"] * 4, acts)
        self.assertEqual(acts[4], FLOOD % "198.51.100.7", acts)
        self.assertEqual(acts[5], FLOOD % "198.51.100.7", acts)
        # Another IP is not affected.
        self.assertEqual(self.rcpt("198.51.100.8"), "DUNNO")
        # The decision is logged with the rule and the verdict.
        line = self.d.wait_log(r"[^\n]*rule=flood[^\n]*", since=m).group(0)
        self.assertRegex(line, r"verdict=reject\b")

    def test_counting_is_per_recipient_state_only(self):
        self.start()
        # Only RCPT adds points: many END-OF-MESSAGE/DATA requests do not trip.
        for state in ["DATA", "END-OF-MESSAGE"] * 5 + ["CONNECT", "MAIL"]:
            self.assertEqual(self.rcpt("198.51.100.9", state=state), "DUNNO", state)
        acts = [self.rcpt("198.51.100.9") for _ in range(5)]
        self.assertEqual(acts, ["DUNNO"] * 4 + [FLOOD % "198.51.100.9"])

    def test_ipv6_client_counted(self):
        self.start()
        acts = [self.rcpt("2001:db8::7") for i in range(5)]
        self.assertEqual(acts, ["DUNNO"] * 4 + [FLOOD % "2001:db8::7"])
        self.assertEqual(self.rcpt("2001:db8::8"), "DUNNO")

    def test_matchers_case_insensitive_for_addresses(self):
        actions = [
            {"name": "ip6", "when": {"client_address": "2001:DB8::77"}, "do": "reject",
             "message": "550 5.7.1 ip6"},
            {"name": "snd", "when": {"sender": "Bob@Example.ORG"}, "do": "reject",
             "message": "550 5.7.1 sender"},
            {"name": "any", "when": {"recipient": ["x@example.net", "Y@EXAMPLE.NET"]}, "do": "reject",
             "message": "550 5.7.1 any-of"},
        ]
        self.start(actions=actions)
        self.assertEqual(self.rcpt("2001:db8::77"), "550 5.7.1 ip6")
        self.assertEqual(self.rcpt("198.51.100.1", sender="bob@example.org"), "550 5.7.1 sender")
        self.assertEqual(self.rcpt("198.51.100.1", sender="bobby@example.org"), "DUNNO")
        self.assertEqual(self.rcpt("198.51.100.2", recipient="y@example.net"), "550 5.7.1 any-of")
        self.assertEqual(self.rcpt("198.51.100.3", recipient="z@example.net"), "DUNNO")

    def test_trusted_never_limited(self):
        self.start()
        for ip in ("10.1.2.3", "192.0.2.7"):
            for i in range(20):
                self.assertEqual(self.rcpt(ip, sasl_username="trusteduser"), "DUNNO",
                                 "trusted %s request %d" % (ip, i + 1))
        # 'then: ok' stops counting: the user counter was not fed either.
        acts = [self.rcpt("198.51.100.%d" % (20 + i), sasl_username="trusteduser") for i in range(3)]
        self.assertEqual(acts[:2], ["DUNNO", "DUNNO"], acts)
        self.assertEqual(acts[2], "450 4.7.1 slow down trusteduser", acts)
        # Just outside 192.0.2.0/28 is counted.
        acts = [self.rcpt("192.0.2.16") for _ in range(5)]
        self.assertEqual(acts[4], FLOOD % "192.0.2.16", acts)

    def test_sasl_user_limit(self):
        self.start()
        # A different client address per request: only the user counter grows.
        acts = [self.rcpt("203.0.113.%d" % (i + 1), sasl_username="alice@example.org")
                for i in range(4)]
        self.assertEqual(acts[:2], ["DUNNO", "DUNNO"], acts)
        self.assertEqual(acts[2], "450 4.7.1 slow down alice@example.org", acts)
        self.assertEqual(acts[3], "450 4.7.1 slow down alice@example.org", acts)
        self.assertEqual(self.rcpt("203.0.113.50", sasl_username="bob@example.org"), "DUNNO")

    def test_empty_key_not_counted(self):
        self.start()
        # No SASL user: the user counter must not lump all of them together.
        for i in range(10):
            self.assertEqual(self.rcpt("203.0.113.%d" % (100 + i), sasl_username=""), "DUNNO",
                             "request %d without sasl_username" % (i + 1))
        r = h.policy_request(client_address="203.0.113.120")
        del r["sasl_username"]
        for i in range(3):
            r["client_address"] = "203.0.113.%d" % (120 + i)
            self.assertEqual(self.c.request(r), "DUNNO")

    def test_log_only_rule(self):
        actions = [
            {"name": "flood", "mode": "log", "when": {"ip": ">= 3"}, "do": "reject",
             "message": "550 5.7.1 %{client_address} sent too much"},
            {"name": "later", "when": {"ip": ">= 5"}, "do": "defer",
             "message": "450 4.7.1 later rule %{client_address}"},
        ]
        self.start(actions=actions)
        m = self.d.mark()
        acts = [self.rcpt("198.51.100.30") for _ in range(5)]
        # The log-only rule answers as if it had not matched: DUNNO, and the
        # next rule is still tried.
        self.assertEqual(acts[:4], ["DUNNO"] * 4, acts)
        self.assertEqual(acts[4], "450 4.7.1 later rule 198.51.100.30", acts)
        line = self.d.wait_log(r"[^\n]*rule=flood[^\n]*", since=m).group(0)
        self.assertRegex(line, r"verdict=dunno\b")
        self.assertRegex(line, r"would=reject\b")
        self.assertNotRegex(self.d.log_since(m), r"rule=flood[^\n]*verdict=reject")

    def test_message_template_and_default_texts(self):
        actions = [
            {"name": "r1", "when": {"client_address": "198.51.100.41"}, "do": "reject"},
            {"name": "d1", "when": {"client_address": "198.51.100.42"}, "do": "defer"},
            {"name": "h1", "when": {"client_address": "198.51.100.43"}, "do": "hold"},
            {"name": "p1", "when": {"client_address": "198.51.100.44"}, "do": "permit"},
            {"name": "x1", "when": {"client_address": "198.51.100.45"}, "do": "discard"},
            {"name": "t1", "when": {"client_address": "198.51.100.46"}, "do": "reject",
             "message": "554 5.7.1 rule %{rule} for <%{sender}> from %{client_address}"},
            {"name": "re1", "when": {"sender": {"re": "^spam[0-9]+@"}}, "do": "reject",
             "message": "550 5.7.1 regex"},
            {"name": "no1", "when": {"client_address": "198.51.100.47",
                                     "sender": {"not": "ok@example.org"}}, "do": "reject",
             "message": "550 5.7.1 not"},
        ]
        self.start(actions=actions)
        self.assertRegex(self.rcpt("198.51.100.41"), r"^REJECT\b")
        self.assertRegex(self.rcpt("198.51.100.42"), r"^(DEFER|DEFER_IF_PERMIT|4\d\d)\b")
        self.assertRegex(self.rcpt("198.51.100.43"), r"^HOLD\b")
        self.assertEqual(self.rcpt("198.51.100.44"), "OK")
        self.assertRegex(self.rcpt("198.51.100.45"), r"^DISCARD\b")
        self.assertEqual(self.rcpt("198.51.100.46", sender="Bob@Example.org"),
                         "554 5.7.1 rule t1 for <Bob@Example.org> from 198.51.100.46")
        self.assertEqual(self.rcpt("198.51.100.48", sender="spam42@example.org"), "550 5.7.1 regex")
        self.assertEqual(self.rcpt("198.51.100.48", sender="ham@example.org"), "DUNNO")
        self.assertEqual(self.rcpt("198.51.100.47", sender="ok@example.org"), "DUNNO")
        self.assertEqual(self.rcpt("198.51.100.47", sender="other@example.org"), "550 5.7.1 not")

    def test_decay_half_life(self):
        counters = {"ip": {"key": "client_address", "half_life": "1s"},
                    "user": {"key": "sasl_username", "leak": "100/h"}}
        self.start(counters=counters)
        # Control: 5 quick ones trip the limit.
        acts = [self.rcpt("198.51.100.70") for _ in range(5)]
        self.assertEqual(acts[4], FLOOD % "198.51.100.70", acts)
        # 4 quick ones, then 3 s (3 half-lives): 4 -> 0.5, +1 = 1.5, far below 5.
        acts = [self.rcpt("198.51.100.71") for _ in range(4)]
        self.assertEqual(acts, ["DUNNO"] * 4)
        time.sleep(3)
        self.assertEqual(self.rcpt("198.51.100.71"), "DUNNO",
                         "score did not decay with half_life 1s")
        # It still counts after decay: 1.5 + 3 quick ones ~ 4.5 -> rounds to 5 at most
        # on the 4th; with 5 more it must trip.
        acts = [self.rcpt("198.51.100.71") for _ in range(5)]
        self.assertIn(FLOOD % "198.51.100.71", acts)

    def test_decay_leaky_bucket(self):
        counters = {"ip": {"key": "client_address", "leak": "1/s"},
                    "user": {"key": "sasl_username", "leak": "100/h"}}
        self.start(counters=counters)
        acts = [self.rcpt("198.51.100.72") for _ in range(4)]
        self.assertEqual(acts, ["DUNNO"] * 4)
        time.sleep(3)   # leaks 3 points: 4 -> 1, +1 = 2
        acts = [self.rcpt("198.51.100.72") for _ in range(2)]
        self.assertEqual(acts, ["DUNNO", "DUNNO"], "leak 1/s did not drain the bucket")
        # Still counting after the drain (1..3 points left + quick ones).
        acts = [self.rcpt("198.51.100.72") for _ in range(5)]
        self.assertIn(FLOOD % "198.51.100.72", acts)

    def test_network_counter_ipv4_24_and_ipv6_64(self):
        counters = {"ip": {"key": "client_address", "half_life": "10m"},
                    "net": {"key": "client_address/24", "half_life": "10m"}}
        points = [{"name": "per-rcpt", "when": {"protocol_state": "RCPT"}, "add": {"ip": 1, "net": 1}}]
        actions = [{"name": "netflood", "when": {"net": ">= 3"}, "do": "reject",
                    "message": "550 5.7.1 network of %{client_address} limited"}]
        self.start(counters=counters, points=points, actions=actions)
        # IPv4 /24: three addresses of one /24 share the counter.
        self.assertEqual(self.rcpt("198.51.100.1"), "DUNNO")
        self.assertEqual(self.rcpt("198.51.100.2"), "DUNNO")
        self.assertEqual(self.rcpt("198.51.100.3"), "550 5.7.1 network of 198.51.100.3 limited")
        self.assertEqual(self.rcpt("198.51.101.3"), "DUNNO")
        # IPv6: the same /64, different interface ids.
        self.assertEqual(self.rcpt("2001:db8:1:2::a"), "DUNNO")
        self.assertEqual(self.rcpt("2001:db8:1:2:ffff::b"), "DUNNO")
        self.assertEqual(self.rcpt("2001:db8:1:2::c"),
                         "550 5.7.1 network of 2001:db8:1:2::c limited")
        # The neighbouring /64 is another network.
        self.assertEqual(self.rcpt("2001:db8:1:3::a"), "DUNNO")

    def test_wait_does_not_block_others(self):
        actions = [{"name": "tarpit", "when": {"client_address": "198.51.100.90"},
                    "do": "wait 2s"}]
        self.start(actions=actions)
        slow = self.client(self.d)
        t0 = time.monotonic()
        slow.send_raw(slow.encode(h.policy_request(client_address="198.51.100.90")))
        # Meanwhile another connection is answered at once.
        t1 = time.monotonic()
        self.assertEqual(self.rcpt("198.51.100.91"), "DUNNO")
        self.assertLess(time.monotonic() - t1, 1.0, "wait on one connection blocked another")
        act = slow.read_action(timeout=10)
        dt = time.monotonic() - t0
        self.assertGreaterEqual(dt, 1.8, "wait 2s answered after %.2fs" % dt)
        self.assertLess(dt, 5 * h.SLOW, "wait 2s answered after %.2fs" % dt)
        self.assertEqual(act, "DUNNO")

    def test_delete_resets_counter(self):
        actions = [
            {"name": "flood", "when": {"ip": ">= 3"}, "do": ["reject", "delete ip", "log"],
             "message": "550 5.7.1 reset"},
        ]
        self.start(actions=actions)
        acts = [self.rcpt("198.51.100.95") for _ in range(5)]
        # 1, 2, 3 -> reject and reset; then 1, 2 again.
        self.assertEqual(acts, ["DUNNO", "DUNNO", "550 5.7.1 reset", "DUNNO", "DUNNO"])

    def test_concurrent_clients_count_exactly(self):
        actions = [{"name": "flood", "when": {"ip": ">= 41"}, "do": "reject",
                    "message": "550 5.7.1 forty-one"}]
        self.start(actions=actions)
        results = []
        lock = threading.Lock()

        def worker():
            with self.d.client() as c:
                for _ in range(10):
                    a = c.request(h.policy_request(client_address="198.51.100.99"))
                    with lock:
                        results.append(a)
        ts = [threading.Thread(target=worker) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        self.assertEqual(len(results), 40)
        self.assertEqual(results.count("DUNNO"), 40, "40 points must stay below >= 41")
        self.assertEqual(self.rcpt("198.51.100.99"), "550 5.7.1 forty-one")
