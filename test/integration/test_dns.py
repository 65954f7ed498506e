"""DNS checks against a real DNS server (unbound on a loopback port with
test zones): DNSBL/RHSBL/DNSWL with return codes, weights and min:,
reverse DNS, sender MX (null MX too), HELO, country zones, TTL expiry and
negative caching, a server that never answers, lazy lookups, -t."""

import re
import time

import harness as h

V6_LISTED = "2001:db8::bad"
V6_CLEAN = "2001:db8::600d"

RECORDS = [
    # bl.test: .10 in both lists, .11 with another code, .12 only in bl2
    h.reverse_name("198.51.100.10", "bl.test.") + " 60 IN A 127.0.0.2",
    h.reverse_name("198.51.100.11", "bl.test.") + " 60 IN A 127.0.0.4",
    h.reverse_name(V6_LISTED, "bl.test.") + " 60 IN A 127.0.0.2",
    h.reverse_name("198.51.100.10", "bl2.test.") + " 60 IN A 127.0.0.2",
    h.reverse_name("198.51.100.12", "bl2.test.") + " 60 IN A 127.0.0.3",
    # a public resolver's "you may not ask" answer: not a listing by default
    h.reverse_name("198.51.100.13", "bl.test.") + " 60 IN A 127.255.255.254",
    # multi.test: bit-mask codes
    h.reverse_name("198.51.100.14", "multi.test.") + " 60 IN A 127.0.0.6",
    h.reverse_name("198.51.100.15", "multi.test.") + " 60 IN A 127.0.0.2",
    # wl.test: .10 is allow-listed too, .20 only allow-listed
    h.reverse_name("198.51.100.10", "wl.test.") + " 60 IN A 127.0.10.1",
    h.reverse_name("198.51.100.20", "wl.test.") + " 60 IN A 127.0.10.1",
    # rhsbl
    "spam.example.rhs.test. 60 IN A 127.0.0.2",
    # reverse DNS: .30 confirmed, .31 PTR to a name elsewhere, .32 no PTR
    h.reverse_name("198.51.100.30", "in-addr.arpa.") + " 60 IN PTR host30.test.",
    "host30.test. 60 IN A 198.51.100.30",
    h.reverse_name("198.51.100.31", "in-addr.arpa.") + " 60 IN PTR host31.test.",
    "host31.test. 60 IN A 192.0.2.99",
    # sender MX
    "good.test. 60 IN MX 10 mx.good.test.",
    "mx.good.test. 60 IN A 192.0.2.25",
    "nullmx.test. 60 IN MX 0 .",
    "aonly.test. 60 IN A 192.0.2.26",
    "v6only.test. 60 IN AAAA 2001:db8::26",
    # HELO
    "helo.test. 60 IN A 192.0.2.5",
    "v6helo.test. 60 IN AAAA 2001:db8::5",
    # country zones: TXT and A (ISO 3166 numeric: 156 = CN)
    h.reverse_name("198.51.100.40", "cc.test.") + ' 60 IN TXT "cn"',
    h.reverse_name("198.51.100.41", "cc.test.") + ' 60 IN TXT "US"',
    h.reverse_name("198.51.100.40", "ccn.test.") + " 60 IN A 127.0.0.156",
]


class DnsTest(h.SGTestCase):

    def start(self, dns_addr, points=None, actions=None, dns=None, **over):
        self.port = h.free_port()
        cfg = h.base_config(self.port, **over)
        cfg["dns"] = {"servers": [dns_addr], "timeout": "500ms"}
        cfg["dns"].update(dns or {})
        if points is not None:
            cfg["points"] = points
        if actions is not None:
            cfg["actions"] = actions
        self.d = self.start_daemon(cfg)
        self.c = self.client(self.d)
        return self.d

    def ask(self, ip="198.51.100.99", client=None, **kw):
        return (client or self.c).request(h.policy_request(client_address=ip, **kw))

    def stats(self):
        """Stop the daemon and return its closing DNS counters."""
        self.d.stop()
        m = re.search(r"dns stats: ([^\n]*)", self.d.log())
        self.assertIsNotNone(m, "no 'dns stats' line at stop:\n" + self.d.log_tail())
        return dict(kv.split("=", 1) for kv in m.group(1).split())

    # ---- lists

    def test_dnsbl_listed_and_unlisted_ipv4_ipv6(self):
        dns = self.start_dns(RECORDS)
        self.start(dns.address, actions=[
            {"name": "bl", "when": {"dnsbl": ["bl.test"]}, "do": "reject",
             "message": "550 5.7.1 listed %{dnsbl.hits} %{dnsbl.zones} %{dnsbl.codes}"}])
        self.assertEqual(self.ask("198.51.100.10"), "550 5.7.1 listed 1 bl.test 127.0.0.2")
        self.assertEqual(self.ask("198.51.100.99"), "DUNNO")
        self.assertEqual(self.ask(V6_LISTED), "550 5.7.1 listed 1 bl.test 127.0.0.2")
        self.assertEqual(self.ask(V6_CLEAN), "DUNNO")
        # 127.255.255.x answers are errors of the list, not listings.
        self.assertEqual(self.ask("198.51.100.13"), "DUNNO")
        # Postfix's "unknown" address asks nothing and matches nothing.
        self.assertEqual(self.ask("unknown"), "DUNNO")
        # The decision line names the zone and code.
        self.d.wait_log(r"rule=bl verdict=reject[^\n]*dnsbl=bl\.test:127\.0\.0\.2")

    def test_return_codes_ranges_and_bitmask(self):
        dns = self.start_dns(RECORDS)
        self.start(dns.address, actions=[
            {"name": "range", "when": {"dnsbl": {"zones": ["bl.test"], "codes": "127.0.0.2-127.0.0.3"}},
             "do": "reject", "message": "550 5.7.1 range"},
            {"name": "mask", "when": {"dnsbl": {"zones": {"multi.test": {"codes": ["&4"]}}}},
             "do": "reject", "message": "550 5.7.1 mask"}])
        self.assertEqual(self.ask("198.51.100.10"), "550 5.7.1 range")
        self.assertEqual(self.ask("198.51.100.11"), "DUNNO", "127.0.0.4 is outside the range")
        self.assertEqual(self.ask("198.51.100.14"), "550 5.7.1 mask", "127.0.0.6 has bit 4")
        self.assertEqual(self.ask("198.51.100.15"), "DUNNO", "127.0.0.2 lacks bit 4")

    def test_weights_and_min_hits_across_two_zones(self):
        dns = self.start_dns(RECORDS)
        points = [{"name": "dnsbl", "when": {"dnsbl": {"zones": {"bl.test": 3, "bl2.test": 2}}},
                   "add": {"ip": "weight"}}]
        actions = [
            {"name": "two", "when": {"dnsbl": {"zones": ["bl.test", "bl2.test"], "min": 2}},
             "do": "reject", "message": "550 5.7.1 in %{dnsbl.hits} lists: %{dnsbl.zones}"},
            {"name": "score", "when": {"ip": ">= 3"}, "do": "defer",
             "message": "450 4.7.1 score %{score.ip}"}]
        self.start(dns.address, points=points, actions=actions)
        self.assertEqual(self.ask("198.51.100.10"), "550 5.7.1 in 2 lists: bl.test,bl2.test")
        self.assertEqual(self.ask("198.51.100.11"), "450 4.7.1 score 3")     # bl.test only
        self.assertEqual(self.ask("198.51.100.12"), "DUNNO")                 # bl2.test only: 2
        self.assertEqual(self.ask("198.51.100.12"), "450 4.7.1 score 4")     # 2 + 2
        self.assertEqual(self.ask("198.51.100.99"), "DUNNO")

    def test_dnswl_overrides_dnsbl(self):
        dns = self.start_dns(RECORDS)
        points = [{"name": "wl", "when": {"dnswl": ["wl.test"]}, "then": "ok"},
                  {"name": "bl", "when": {"dnsbl": ["bl.test"]}, "add": {"ip": 10}}]
        actions = [{"name": "bad", "when": {"ip": ">= 10"}, "do": "reject",
                    "message": "550 5.7.1 bad"}]
        self.start(dns.address, points=points, actions=actions)
        self.assertEqual(self.ask("198.51.100.10"), "DUNNO", "allow-listed beats block-listed")
        self.assertEqual(self.ask("198.51.100.11"), "550 5.7.1 bad")
        self.assertEqual(self.ask("198.51.100.20"), "DUNNO")

    def test_rhsbl_sender_domain(self):
        dns = self.start_dns(RECORDS)
        self.start(dns.address, actions=[
            {"name": "rhs", "when": {"rhsbl": ["rhs.test"]}, "do": "reject",
             "message": "550 5.7.1 %{rhsbl.zones}"},
            {"name": "helo-rhs", "when": {"rhsbl": {"zones": ["rhs.test"], "of": "helo_name"}},
             "do": "reject", "message": "550 5.7.1 helo listed"}])
        self.assertEqual(self.ask(sender="a@spam.example"), "550 5.7.1 rhs.test")
        self.assertEqual(self.ask(sender="a@SPAM.Example."), "550 5.7.1 rhs.test")
        self.assertEqual(self.ask(sender="a@good.example"), "DUNNO")
        self.assertEqual(self.ask(sender=""), "DUNNO")
        # Raw UTF-8 is not a name we ask about: no crash, not listed.
        self.assertEqual(self.ask(sender="a@b\u00fccher.example"), "DUNNO")
        self.assertEqual(self.ask(helo_name="spam.example"), "550 5.7.1 helo listed")

    # ---- rdns, MX, HELO, country

    def test_rdns_fresh_ptr_and_fcrdns(self):
        dns = self.start_dns(RECORDS)
        self.start(dns.address, actions=[
            {"name": "noptr", "when": {"rdns": {"is": "none", "fresh": True}}, "do": "reject",
             "message": "550 5.7.1 no PTR"},
            {"name": "nofc", "when": {"not": {"rdns": {"is": "fcrdns", "fresh": True}}},
             "do": "reject", "message": "550 5.7.1 not confirmed"}])
        self.assertEqual(self.ask("198.51.100.30"), "DUNNO")
        self.assertEqual(self.ask("198.51.100.31"), "550 5.7.1 not confirmed")
        self.assertEqual(self.ask("198.51.100.32"), "550 5.7.1 no PTR")

    def test_rdns_from_postfix_attributes_asks_nothing(self):
        dead = self.dead_dns()
        self.start(dead.address, actions=[
            {"name": "noptr", "when": {"rdns": "none"}, "do": "reject", "message": "550 5.7.1 no PTR"},
            {"name": "nofc", "when": {"not": {"rdns": "fcrdns"}}, "do": "reject",
             "message": "550 5.7.1 not confirmed"}])
        t0 = time.monotonic()
        self.assertEqual(self.ask(reverse_client_name="unknown", client_name="unknown"),
                         "550 5.7.1 no PTR")
        self.assertEqual(self.ask(reverse_client_name="a.test", client_name="unknown"),
                         "550 5.7.1 not confirmed")
        self.assertEqual(self.ask(reverse_client_name="a.test", client_name="a.test"), "DUNNO")
        self.assertLess(time.monotonic() - t0, 0.4, "Postfix's attributes need no DNS")
        self.assertEqual(self.stats()["queries"], "0")

    def test_sender_mx_present_absent_null(self):
        dns = self.start_dns(RECORDS)
        self.start(dns.address, actions=[
            {"name": "nullmx", "when": {"sender_mx": "null_mx"}, "do": "reject",
             "message": "550 5.7.1 null MX"},
            {"name": "nomx", "when": {"sender_mx": False}, "do": "reject",
             "message": "550 5.7.1 no MX"}])
        self.assertEqual(self.ask(sender="a@good.test"), "DUNNO")
        self.assertEqual(self.ask(sender="a@aonly.test"), "DUNNO", "A fallback (RFC 5321)")
        self.assertEqual(self.ask(sender="a@v6only.test"), "DUNNO", "AAAA fallback")
        self.assertEqual(self.ask(sender="a@nullmx.test"), "550 5.7.1 null MX")
        self.assertEqual(self.ask(sender="a@nx.test"), "550 5.7.1 no MX")
        self.assertEqual(self.ask(sender=""), "DUNNO", "the null sender has no domain")

    def test_helo_resolves(self):
        dns = self.start_dns(RECORDS)
        self.start(dns.address, actions=[
            {"name": "helo", "when": {"helo_resolves": False}, "do": "reject",
             "message": "550 5.7.1 HELO %{helo_name} does not resolve"}])
        self.assertEqual(self.ask(helo_name="helo.test"), "DUNNO")
        self.assertEqual(self.ask(helo_name="v6helo.test"), "DUNNO")
        self.assertEqual(self.ask(helo_name="nohost.test"),
                         "550 5.7.1 HELO nohost.test does not resolve")
        self.assertEqual(self.ask(helo_name="[192.0.2.1]"),
                         "550 5.7.1 HELO [192.0.2.1] does not resolve")

    def test_country_txt_and_a_zones(self):
        dns = self.start_dns(RECORDS)
        self.start(dns.address, dns={"country_zone": "cc.test"}, actions=[
            {"name": "cn", "when": {"country": ["CN", "RU"]}, "do": "reject",
             "message": "550 5.7.1 from %{country}"},
            {"name": "cn-num", "when": {"country": {"zone": "ccn.test", "type": "a", "is": ["156"]}},
             "do": "reject", "message": "550 5.7.1 numeric"}])
        self.assertEqual(self.ask("198.51.100.40"), "550 5.7.1 from CN")
        self.assertEqual(self.ask("198.51.100.41"), "DUNNO")
        self.assertEqual(self.ask("198.51.100.42"), "DUNNO")

    def test_country_a_zone(self):
        dns = self.start_dns(RECORDS)
        self.start(dns.address, actions=[
            {"name": "cn-num", "when": {"country": {"zone": "ccn.test", "type": "a", "is": ["156"]}},
             "do": "reject", "message": "550 5.7.1 numeric %{country}"}])
        self.assertEqual(self.ask("198.51.100.40"), "550 5.7.1 numeric 156")
        self.assertEqual(self.ask("198.51.100.41"), "DUNNO")

    # ---- cache

    def test_ttl_expiry_and_negative_caching(self):
        a, b = "198.51.100.50", "198.51.100.51"
        listed = lambda ip: h.reverse_name(ip, "bl.test.") + " 2 IN A 127.0.0.2"   # noqa: E731
        dns = self.start_dns([listed(a)], negative_ttl=2)
        self.start(dns.address, dns={"ttl_floor": "0s"}, actions=[
            {"name": "bl", "when": {"dnsbl": ["bl.test"]}, "do": "reject", "message": "550 5.7.1 bl"}])
        self.assertEqual(self.ask(a), "550 5.7.1 bl")
        self.assertEqual(self.ask(b), "DUNNO")
        t0 = time.monotonic()
        dns.restart([listed(b)])          # the listing moves from a to b
        # Within the TTL both answers come from the cache.
        if time.monotonic() - t0 < 1.5:
            self.assertEqual(self.ask(a), "550 5.7.1 bl", "positive answer cached")
            self.assertEqual(self.ask(b), "DUNNO", "negative answer cached")
        h.wait_until(lambda: time.monotonic() - t0 > 2.2, 5, what="TTL to pass")
        self.assertEqual(self.ask(a), "DUNNO", "expired: asked again")
        self.assertEqual(self.ask(b), "550 5.7.1 bl", "expired: asked again")
        st = self.stats()
        self.assertGreaterEqual(int(st["queries"]), 4)
        self.assertEqual(st["hits.bl.test"], "2" if int(st["cache_hits"]) == 0 else "3")

    def test_ttl_ceiling_caps_a_long_ttl(self):
        ip = "198.51.100.52"
        rec = h.reverse_name(ip, "bl.test.") + " 86400 IN A 127.0.0.2"
        dns = self.start_dns([rec])
        self.start(dns.address, dns={"ttl_floor": "0s", "ttl_ceiling": "1s"}, actions=[
            {"name": "bl", "when": {"dnsbl": ["bl.test"]}, "do": "reject", "message": "550 5.7.1 bl"}])
        self.assertEqual(self.ask(ip), "550 5.7.1 bl")
        self.assertEqual(self.ask(ip), "550 5.7.1 bl")
        dns.restart([])
        time.sleep(1.3)
        self.assertEqual(self.ask(ip), "DUNNO", "the 1 s ceiling beats the 1 d TTL")
        st = self.stats()
        self.assertEqual(st["cache_hits"], "1")

    # ---- failures

    def test_dead_dns_server_does_not_stall_others(self):
        dead = self.dead_dns()
        self.start(dead.address, dns={"timeout": "400ms"}, actions=[
            {"name": "bl", "when": {"dnsbl": ["bl.test"]}, "do": "reject", "message": "550 5.7.1 bl"}])
        c1, c2, c3 = self.client(self.d), self.client(self.d), self.client(self.d)
        gone = self.client(self.d)
        t0 = time.monotonic()
        c1.send_raw(c1.encode(h.policy_request(client_address="198.51.100.60")))
        c3.send_raw(c3.encode(h.policy_request(client_address="198.51.100.60")))
        # A client that goes away while its question is out.
        gone.send_raw(gone.encode(h.policy_request(client_address="198.51.100.64")))
        gone.close()
        # A trusted client asks nothing and is answered at once meanwhile.
        self.assertEqual(self.ask("10.0.0.1", client=c2), "DUNNO")
        self.assertLess(time.monotonic() - t0, 0.3 * h.SLOW, "stalled behind a dead DNS server")
        self.assertEqual(c1.read_action(timeout=3), "DUNNO")
        self.assertEqual(c3.read_action(timeout=3), "DUNNO")
        dt = time.monotonic() - t0
        self.assertGreater(dt, 0.3, "answered before the deadline: was DNS asked at all?")
        self.assertLess(dt, 1.5 * h.SLOW, "held past the deadline")
        self.d.wait_log(r"dns: no answer within 400ms")
        st = self.stats()
        self.assertEqual(st["queries"], "2", "identical questions are asked once")
        self.assertEqual(st["coalesced"], "1")
        self.assertEqual(st["timeouts"], "3")

    def test_stop_while_an_answer_is_owed_to_a_client_gone(self):
        # The client leaves while its DNS question is out, SIGTERM comes,
        # then the answer: the last connection goes from inside c-ares's
        # callback, and closing the resolver right there freed the query
        # c-ares was still answering (a crash at every such stop).
        slow = h.SlowDns(delay=1.0)
        self.addCleanup(slow.close)
        # Not listed, and no action reads a counter: no store round trip,
        # the decision comes straight out of the DNS answer.
        self.start(slow.address, dns={"timeout": "3s"}, points=[
            {"name": "bl", "when": {"dnsbl": ["bl.test"]}, "add": {"ip": 1}}], actions=[
            {"name": "bad", "when": {"sender": "bad@x.example"}, "do": "reject",
             "message": "554 5.7.1 no"}])
        gone = self.client(self.d)
        gone.send_raw(gone.encode(h.policy_request(client_address="198.51.100.70")))
        h.wait_until(lambda: slow.queries >= 1, 2 * h.SLOW, what="the DNS question")
        gone.close()
        time.sleep(0.2)
        t0 = time.monotonic()
        self.assertEqual(self.d.stop(), 0)  # exit 0, no sanitizer report
        self.assertGreater(time.monotonic() - t0, 0.4, "stopped before the answer came")

    def test_on_error_defer_and_ignore(self):
        dead = self.dead_dns()
        admin = "127.0.0.1:%d" % h.free_port()
        self.start(dead.address, dns={"timeout": "200ms"}, admin={"listen": admin}, actions=[
            {"name": "bl", "when": {"dnsbl": {"zones": ["bl.test"], "on_error": "defer"}},
             "do": "reject", "message": "550 5.7.1 bl"}])
        self.assertEqual(self.ask("198.51.100.61"),
                         "DEFER_IF_PERMIT 4.4.3 DNS lookup failed, try again later")
        self.d.wait_log(r"verdict=dns_defer")
        # /metrics counts it under the same verdict (it said dunno).
        import urllib.request
        text = urllib.request.urlopen("http://%s/metrics" % admin, timeout=5).read().decode()
        self.assertTrue('smtpguard_verdicts_total{rule="none",verdict="dns_defer"} 1' in text,
                        [ln for ln in text.splitlines() if "verdicts_total{" in ln])
        self.assertFalse('verdict="dunno"} 1' in text)

    def test_refused_counts_as_not_listed(self):
        dns = self.start_dns(RECORDS)
        # unbound refuses anything outside its test zones: an error answer.
        self.start(dns.address, actions=[
            {"name": "bl", "when": {"dnsbl": ["bl.example.org"]}, "do": "reject",
             "message": "550 5.7.1 bl"}])
        t0 = time.monotonic()
        self.assertEqual(self.ask("198.51.100.10"), "DUNNO")
        self.assertLess(time.monotonic() - t0, 0.4, "an error answer needs no deadline")
        self.assertGreaterEqual(int(self.stats()["errors"]), 1)

    def test_inflight_cap(self):
        dead = self.dead_dns()
        self.start(dead.address, dns={"timeout": "300ms", "max_inflight": 1}, actions=[
            {"name": "bl", "when": {"dnsbl": ["bl.test"]}, "do": "reject", "message": "550 5.7.1 bl"}])
        c1, c2 = self.client(self.d), self.client(self.d)
        c1.send_raw(c1.encode(h.policy_request(client_address="198.51.100.62")))
        t0 = time.monotonic()
        self.assertEqual(self.ask("198.51.100.63", client=c2), "DUNNO")
        self.assertLess(time.monotonic() - t0, 0.25 * h.SLOW, "over the cap: not asked, not waited")
        self.assertEqual(c1.read_action(timeout=3), "DUNNO")
        st = self.stats()
        self.assertEqual((st["queries"], st["dropped"]), ("1", "1"))

    def reload_while_asking(self, delay, timeout_s, ip):
        """A request whose DNSBL answer (listed) comes after delay s, and a
        reload that changes dns: (timeout_s, then 0.1 s less) meanwhile."""
        slow = h.SlowDns(delay, a_record="127.0.0.2")
        self.addCleanup(slow.close)
        self.start(slow.address, dns={"timeout": "%gs" % timeout_s}, actions=[
            {"name": "bl", "when": {"dnsbl": ["bl.test"]}, "do": "reject", "message": "550 5.7.1 bl"}])
        self.c.send_raw(self.c.encode(h.policy_request(client_address=ip)))
        h.wait_until(lambda: slow.queries >= 1, 2 * h.SLOW, what="the question")
        cfg = dict(self.d.config)
        cfg["dns"] = dict(cfg["dns"], timeout="%dms" % (timeout_s * 1000 - 100))
        ok, _ = self.d.reload(cfg)
        self.assertTrue(ok)

    def test_reload_lets_checks_in_flight_finish(self):
        # A reload that changed dns: closed the resolver under the requests
        # waiting on it: a listed client's check was cut short (DUNNO).
        self.reload_while_asking(0.4, 2, "198.51.100.66")
        self.assertEqual(self.c.read_action(timeout=3), "550 5.7.1 bl")
        # New requests use the new resolver, and the old one is gone.
        self.assertEqual(self.ask("198.51.100.67"), "550 5.7.1 bl")
        self.assertEqual(self.d.stop(), 0)

    def test_stop_while_a_replaced_resolver_still_waits(self):
        # A stop right after such a reload is still bounded by its 5-s
        # drain: the old resolver, still waiting, was left to its own
        # timeout (here an answer 8 s away) instead of being closed.
        self.reload_while_asking(8.0, 12, "198.51.100.68")
        t0 = time.monotonic()
        self.assertEqual(self.d.stop(timeout=20), 0)
        self.assertLess(time.monotonic() - t0, 7.0, "the stop waited for the old resolver")

    def test_cap_and_failure_warnings_do_not_hide_each_other(self):
        # One rate limiter served both warnings: the cap's line hid the
        # SERVFAIL's for a minute (or the other way round).
        slow = h.SlowDns(0.3, rcode=2)
        self.addCleanup(slow.close)
        self.start(slow.address, dns={"timeout": "1s", "max_inflight": 1}, actions=[
            {"name": "bl", "when": {"dnsbl": ["bl.test"]}, "do": "reject", "message": "550 5.7.1 bl"}])
        c1, c2 = self.client(self.d), self.client(self.d)
        c1.send_raw(c1.encode(h.policy_request(client_address="198.51.100.64")))
        h.wait_until(lambda: slow.queries >= 1, 2 * h.SLOW, what="the first question")
        self.assertEqual(self.ask("198.51.100.65", client=c2), "DUNNO")   # over the cap
        self.assertEqual(c1.read_action(timeout=3), "DUNNO")             # its SERVFAIL
        log = self.d.log()
        self.assertIn("queries in flight, not asking", log)
        self.assertIn("(counted as not listed)", log)

    # ---- laziness

    def test_lazy_whitelisted_or_decided_requests_ask_nothing(self):
        dead = self.dead_dns()
        points = [{"name": "trusted", "when": {"client_address": {"in": "trusted"}}, "then": "ok"},
                  {"name": "bl", "when": {"protocol_state": "RCPT", "dnsbl": ["bl.test"]},
                   "add": {"ip": 5}}]
        actions = [{"name": "sasl", "when": {"sasl_username": "alice"}, "do": "permit"},
                   {"name": "bl", "when": {"ip": ">= 5"}, "do": "reject", "message": "550 5.7.1 bl"},
                   {"name": "bl2", "when": {"protocol_state": "MAIL", "dnsbl": ["bl2.test"]}, "do": "reject",
                    "message": "550 5.7.1 bl2"}]
        self.start(dead.address, dns={"timeout": "300ms"}, points=points, actions=actions)
        t0 = time.monotonic()
        self.assertEqual(self.ask("10.0.0.7"), "DUNNO")                       # whitelisted
        self.assertEqual(self.ask("198.51.100.70", state="DATA"), "DUNNO")   # rule cannot match
        # Decided by an earlier action: the later DNS action is not asked.
        self.assertEqual(self.ask("198.51.100.71", sasl_username="alice", state="MAIL"), "OK")
        self.assertLess(time.monotonic() - t0, 0.25 * h.SLOW)
        # A request that needs the answer does ask (and waits the deadline).
        self.assertEqual(self.ask("198.51.100.72"), "DUNNO")
        self.assertEqual(self.stats()["queries"], "1")

    def test_reload_changes_servers(self):
        dead = self.dead_dns()
        dns = self.start_dns(RECORDS)
        self.start(dead.address, dns={"timeout": "200ms"}, actions=[
            {"name": "bl", "when": {"dnsbl": ["bl.test"]}, "do": "reject", "message": "550 5.7.1 bl"}])
        self.assertEqual(self.ask("198.51.100.10"), "DUNNO")
        cfg = dict(self.d.config)
        cfg["dns"] = {"servers": [dns.address], "timeout": "500ms"}
        self.d.reload(cfg)
        self.assertEqual(self.ask("198.51.100.10"), "550 5.7.1 bl")


BAD_DNS = """\
listen: ["127.0.0.1:{port}"]
dns: {{ servers: ["127.0.0.1:99999", "resolver.example"], timeout: 500ms, ttl_floor: 2h, ttl_ceiling: 1h }}
counters:
  ip: {{ key: client_address, half_life: 10m }}
points:
  - {{ name: a, when: {{ dnsbl: [zen..example] }}, add: {{ ip: 1 }} }}
  - {{ name: b, when: {{ dnsbl: {{ zones: [bl.example], codes: "127.0.0.9-127.0.0.2" }} }}, add: {{ ip: 1 }} }}
  - {{ name: c, when: {{ dnsbl: {{ zones: [a.example, b.example], min: 3 }} }}, add: {{ ip: 1 }} }}
  - {{ name: d, when: {{ rhsbl: {{ zones: [r.example], of: client_address }} }}, add: {{ ip: 1 }} }}
  - {{ name: e, when: {{ country: [CN] }}, add: {{ ip: 1 }} }}
  - {{ name: f, when: {{ sender_mx: maybe }}, add: {{ ip: 1 }} }}
  - {{ name: g, when: {{ protocol_state: RCPT }}, add: {{ ip: weight }} }}
  - {{ name: h, when: {{ dnsbl: {{ zones: {{ b\u00fccher.example: 2 }}, codes: "&0" }} }}, add: {{ ip: weight }} }}
"""


class DnsConfigTest(h.SGTestCase):

    def test_check_config_reports_dns_errors(self):
        port = h.free_port()
        d = h.Daemon(self.tmp, BAD_DNS.format(port=port))
        rc, err, out = d.check_config()
        self.assertNotEqual(rc, 0, "smtpguard -t accepted a broken DNS config:\n" + err)
        p = re.escape(d.conf_path)
        want = [
            (r":2:\d+: dns\.servers\[0\]: expected \"IP\"", "bad port"),
            (r":2:\d+: dns\.servers\[1\]: ", "a name is not a server address"),
            (r":2:\d+: dns: ttl_floor \(7200s\) is above ttl_ceiling", "floor above ceiling"),
            (r":6:\d+: points\[0\]\.when\.dnsbl\[0\]: expected a DNS zone", "empty label"),
            (r":7:\d+: points\[1\]\.when\.dnsbl\.codes: the first address", "reversed range"),
            (r":8:\d+: points\[2\]\.when\.dnsbl\.min: expected a whole number from 1 to 2", "min > zones"),
            (r":9:\d+: points\[3\]\.when\.rhsbl\.of: expected sender_domain", "rhsbl of an IP"),
            (r":10:\d+: points\[4\]\.when\.country: a country check needs a zone", "no zone"),
            (r":11:\d+: points\[5\]\.when\.sender_mx: expected true", "bad sender_mx"),
            (r":12:\d+: points\[6\]: add: weight needs a dnsbl", "weight without a list"),
            (r":13:\d+: points\[7\]\.when\.dnsbl\.codes: a bit mask", "zero mask"),
            (r":13:\d+: points\[7\]\.when\.dnsbl\.zones\.b\u00fccher\.example: expected a DNS zone",
             "raw UTF-8 zone"),
        ]
        for pattern, what in want:
            self.assertRegex(err, p + pattern, what)

    def test_check_config_accepts_the_dns_example(self):
        d = h.Daemon(self.tmp, open(h.ROOT + "/rules.d/inbound/50-dnsbl-weighted.yaml").read()
                     .replace("counters:", 'listen: ["127.0.0.1:%d"]\ndns: { servers: ["127.0.0.1:5353"], timeout: 500ms }\ncounters:' % h.free_port(), 1))
        rc, err, out = d.check_config()
        self.assertEqual(rc, 0, err + out)


class DnsMetricsTest(h.SGTestCase):
    # DnsTest's helpers, without running DnsTest's tests a second time.
    start = DnsTest.start
    ask = DnsTest.ask

    def test_dns_counters_in_metrics(self):
        # /metrics shows what the resolver did: a question asked once,
        # then answered from the cache, and which zone listed the client.
        import test_admin as ta
        dns = self.start_dns(RECORDS)
        admin = "127.0.0.1:%d" % h.free_port()
        self.start(dns.address, admin={"listen": admin}, actions=[
            {"name": "bl", "when": {"dnsbl": ["bl.test"]}, "do": "reject",
             "message": "550 5.7.1 listed"}])

        self.assertEqual(self.ask("198.51.100.10"), "550 5.7.1 listed")
        first = ta.scrape(admin)
        self.assertEqual(ta.sample(first, "smtpguard_dns_queries_total"), 1)
        self.assertEqual(ta.sample(first, "smtpguard_dns_zone_hits_total", zone="bl.test"), 1)
        self.assertEqual(self.ask("198.51.100.10"), "550 5.7.1 listed")
        second = ta.scrape(admin)
        self.assertEqual(ta.sample(second, "smtpguard_dns_queries_total"), 1, "asked again, not cached")
        self.assertGreaterEqual(ta.sample(second, "smtpguard_dns_cache_hits_total"), 1)
        self.assertEqual(ta.sample(second, "smtpguard_dns_zone_hits_total", zone="bl.test"), 2)
