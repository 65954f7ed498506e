"""The shipped configuration: smtpguard.yaml.example with rules.d/*.yaml,
as `make install` puts them in place, answers what each file's comments
promise (memory store, one daemon, Postfix-shaped requests)."""

import glob
import os
import re

import harness as h

RULES_D = os.path.join(h.ROOT, "rules.d")


class ShippedRulesTest(h.SGTestCase):

    def setUp(self):
        super().setUp()
        for path in glob.glob(os.path.join(RULES_D, "*.yaml")):
            with open(path) as f:
                self.tmp.write("rules.d/" + os.path.basename(path), f.read())
        with open(os.path.join(h.ROOT, "smtpguard.yaml.example")) as f:
            text = f.read()
        port = h.free_port()
        # Only where it listens and logs differs from the shipped file.
        text, n = re.subn(r'(?m)^listen: .*$', 'listen: ["127.0.0.1:%d"]' % port, text)
        self.assertEqual(n, 1, "smtpguard.yaml.example: no listen: line")
        text = re.sub(r'(?m)^(\s*syslog:) mail', r'\1 none', text)
        self.d = self.start_daemon(text)
        self.c = self.client(self.d)

    def ask(self, n, **attrs):
        """n requests; the list of answers."""
        return [self.c.request(h.policy_request(**attrs)) for _ in range(n)]

    def first_not_dunno(self, answers):
        for i, a in enumerate(answers):
            if a != "DUNNO":
                return i + 1, a
        return None, None

    def test_trusted_relays_are_never_counted(self):
        # 00-trusted.yaml: the ISP's own relays (192.0.2.0/28) pass any volume.
        answers = self.ask(250, client_address="192.0.2.5")
        self.assertEqual(set(answers), {"DUNNO"})

    def test_customer_deferred_at_300_recipients_and_not_its_neighbour(self):
        # 10-outbound-flood.yaml: user_rcpt leaks 300/h, user-fast defers
        # at 300; the count is per SASL user, so a second customer behind
        # the same (NAT) address is not held with the first.
        answers = self.ask(302, client_address="198.51.100.20", sasl_username="alice")
        n, a = self.first_not_dunno(answers)
        # The 300th, or the 301st if the run was slow enough for the leak
        # (300/h) to take half a point meanwhile.
        self.assertIn(n, (300, 301))
        self.assertEqual(a, "450 4.7.1 alice: sending too fast, try again later")
        self.assertEqual(self.ask(3, client_address="198.51.100.20", sasl_username="bob"),
                         ["DUNNO"] * 3)

    def test_unauthenticated_client_deferred_at_200_recipients(self):
        answers = self.ask(201, client_address="198.51.100.40")
        n, a = self.first_not_dunno(answers)
        self.assertEqual((n, a), (200, "450 4.7.1 198.51.100.40: sending too fast, try again later"))

    def test_spam_trap_bans_the_client(self):
        # 20-honeypot.yaml: one hit bans the client for all mail; an
        # entry without '@' is a whole trap domain.
        ban = "554 5.7.1 %s is blocked for sending to a spam trap"
        self.assertEqual(self.ask(1, client_address="203.0.113.9")[0], "DUNNO")
        self.assertEqual(self.ask(1, client_address="203.0.113.9",
                                  recipient="spamtrap@example.net")[0], ban % "203.0.113.9")
        self.assertEqual(self.ask(1, client_address="203.0.113.9")[0], ban % "203.0.113.9")
        self.assertEqual(self.ask(1, client_address="203.0.113.10",
                                  recipient="anyone@traps.example.org")[0], ban % "203.0.113.10")
        self.assertEqual(self.ask(1, client_address="203.0.113.11")[0], "DUNNO")

    def test_from_equals_to_counts_only_outside_recipients(self):
        # 30-oddities.yaml: From = To to an outside domain adds 3 to the
        # recipient's 1, so an unauthenticated client reaches ip-fast's
        # 200 at its 50th; an authenticated one reaches user-fast's 300
        # at its 75th. Mail to oneself at an own domain costs nothing extra.
        ip_forged = self.ask(51, client_address="198.51.100.60",
                             sender="victim@elsewhere.example", recipient="victim@elsewhere.example")
        self.assertEqual(self.first_not_dunno(ip_forged)[0], 50)
        user_forged = self.ask(76, client_address="198.51.100.61", sasl_username="carol",
                               sender="victim@elsewhere.example",
                               recipient="victim@elsewhere.example")
        self.assertEqual(self.first_not_dunno(user_forged),
                         (75, "450 4.7.1 carol: sending too fast, try again later"))
        to_self = self.ask(80, client_address="198.51.100.62", sasl_username="dave",
                           sender="dave@mail.example.net", recipient="dave@mail.example.net")
        self.assertEqual(set(to_self), {"DUNNO"})
        # An authenticated customer's forgeries are not charged to the
        # address it shares: a neighbour there is not held.
        self.assertEqual(self.ask(1, client_address="198.51.100.61")[0], "DUNNO")

    def test_null_sender_from_customer_weighs_six(self):
        answers = self.ask(51, client_address="198.51.100.70", sasl_username="erin", sender="")
        self.assertEqual(self.first_not_dunno(answers)[0], 50)

    def test_daily_volume(self):
        # 40-size.yaml: 500 MB a day per SASL user, counted at END-OF-MESSAGE.
        eom = dict(state="END-OF-MESSAGE", client_address="198.51.100.80", sasl_username="frank")
        self.assertEqual(self.ask(1, size="300000000", **eom), ["DUNNO"])
        self.assertEqual(self.ask(1, size="250000000", **eom),
                         ["452 4.5.3 frank: daily volume of 500 MB reached"])
        # Held at RCPT too, so a retried message is not counted again.
        self.assertEqual(self.ask(1, client_address="198.51.100.80", sasl_username="frank"),
                         ["452 4.5.3 frank: daily volume of 500 MB reached"])
