"""Policy protocol basics against a real smtpguard (memory store)."""

import socket
import time

import harness as h


class ProtocolTest(h.SGTestCase):

    def setUp(self):
        super().setUp()
        self.port = h.free_port()
        self.d = self.start_daemon(h.base_config(self.port))

    def test_persistent_connection_many_requests(self):
        c = self.client(self.d)
        # 200 requests on one connection, each from its own address: all answered.
        for i in range(200):
            ip = "198.51.100.%d" % (i % 250 + 1) if i < 100 else "203.0.113.%d" % (i % 250 + 1)
            act = c.request(h.policy_request(client_address=ip))
            self.assertEqual(act, "DUNNO", "request %d: got %r" % (i, act))
        # ...and the connection is still usable for a counted request.
        for n in range(1, 6):
            act = c.request(h.policy_request(client_address="198.51.100.222"))
        self.assertEqual(act, "550 5.7.1 198.51.100.222 sent too much")

    def test_request_in_one_write_then_next(self):
        # A whole request in one segment, answer, the next: what Postfix does.
        c = self.client(self.d)
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        acts = []
        for _ in range(6):
            c.send_raw(c.encode(h.policy_request(client_address="198.51.100.50")))
            acts.append(c.read_action())
        self.assertEqual(acts, ["DUNNO"] * 4 + ["550 5.7.1 198.51.100.50 sent too much"] * 2)
        self.assertFalse(c.is_closed(0.3))
        self.assertEqual(c.buf, b"", "extra bytes after the answers")

    def test_pipelined_requests(self):
        # Postfix never sends a request before the previous answer, but a
        # client that does is served: every answer, in order. 60 requests
        # of ~600 bytes overflow the initial read buffer, so reading must
        # pause while a request is in flight and resume after its answer.
        c = self.client(self.d)
        pad = "x" * 500
        reqs = [h.policy_request(client_address="198.51.100.51", ccert_subject=pad)
                for _ in range(60)]
        c.send_raw(b"".join(c.encode(r) for r in reqs))
        want = ["DUNNO"] * 4 + ["550 5.7.1 198.51.100.51 sent too much"] * 56
        got = [c.read_action() for _ in reqs]
        self.assertEqual(got, want, "answers out of order or wrong")
        with self.d.client() as c2:
            self.assertEqual(c2.request(h.policy_request(client_address="198.51.100.52")), "DUNNO")

    def test_split_writes(self):
        c = self.client(self.d)
        raw = c.encode(h.policy_request(client_address="198.51.100.51"))
        # Byte-sized pieces around the tricky spots, then the rest.
        cut = raw.index(b"client_address=")
        pieces = [raw[:3], raw[3:cut + 5], raw[cut + 5:cut + 16], raw[cut + 16:-2],
                  raw[-2:-1], raw[-1:]]
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for p in pieces[:-1]:
            c.send_raw(p)
            time.sleep(0.05)
        # No answer before the empty line arrived.
        with self.assertRaises(TimeoutError):
            c.read_answer(timeout=0.3)
        c.send_raw(pieces[-1])
        self.assertEqual(c.read_action(), "DUNNO")

    def test_answer_format(self):
        c = self.client(self.d)
        c.send_raw(c.encode(h.policy_request(client_address="198.51.100.52")))
        deadline = time.monotonic() + 5
        while b"\n\n" not in c.buf and time.monotonic() < deadline:
            c.buf += c.sock.recv(4096)
        self.assertEqual(c.buf, b"action=DUNNO\n\n")

    def test_unknown_attributes_ignored(self):
        c = self.client(self.d)
        for i in range(5):
            r = h.policy_request(client_address="198.51.100.53")
            r["x_future_attribute"] = "some value %d" % i
            r["another_one"] = ""
            act = c.request(r)
        # Still counted: the 5th is over the limit.
        self.assertEqual(act, "550 5.7.1 198.51.100.53 sent too much")

    def test_minimal_request(self):
        c = self.client(self.d)
        act = c.request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                         "client_address": "198.51.100.54"})
        self.assertEqual(act, "DUNNO")

    def test_overlong_line_closes_only_that_connection(self):
        good = self.client(self.d)
        self.assertEqual(good.request(h.policy_request(client_address="198.51.100.60")), "DUNNO")
        bad = self.client(self.d)
        try:
            bad.send_raw(b"request=smtpd_access_policy\nclient_address=" + b"9" * 20000 + b"\n\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.assertTrue(bad.is_closed(5 * h.SLOW),
                        "a 20000-byte line (max_line 4096) did not close the connection")
        # The other connection, and new ones, keep working.
        self.assertEqual(good.request(h.policy_request(client_address="198.51.100.60")), "DUNNO")
        with self.d.client() as fresh:
            self.assertEqual(fresh.request(h.policy_request(client_address="198.51.100.61")), "DUNNO")
        self.assertTrue(self.d.running())

    def test_overlong_line_without_newline(self):
        bad = self.client(self.d)
        try:
            bad.send_raw(b"client_address=" + b"1" * 8192)
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.assertTrue(bad.is_closed(5 * h.SLOW),
                        "an unterminated 8 KiB line did not close the connection")
        with self.d.client() as c:
            self.assertEqual(c.request(h.policy_request(client_address="198.51.100.62")), "DUNNO")

    def test_too_many_attributes_closes(self):
        bad = self.client(self.d)
        r = h.policy_request(client_address="198.51.100.63")
        for i in range(300):
            r["x%d" % i] = "v"
        try:
            bad.send_raw(bad.encode(r))
        except (BrokenPipeError, ConnectionResetError):
            pass
        # Either an answer with a safe action or a closed connection; never a crash.
        try:
            act = bad.read_action(timeout=5)
            self.assertIn(act.split()[0].upper(), ("DUNNO", "DEFER_IF_PERMIT", "451", "450"),
                          "unsafe answer to an over-limit request: %r" % act)
        except h.PolicyClosed:
            pass
        with self.d.client() as c:
            self.assertEqual(c.request(h.policy_request(client_address="198.51.100.64")), "DUNNO")

    def test_many_connections(self):
        cs = [self.client(self.d) for _ in range(50)]
        for i, c in enumerate(cs):
            c.send_raw(c.encode(h.policy_request(client_address="203.0.113.%d" % (i + 1))))
        for c in cs:
            self.assertEqual(c.read_action(), "DUNNO")

    def test_client_disconnect_mid_request(self):
        for _ in range(20):
            c = self.d.client()
            c.send_raw(b"request=smtpd_access_policy\nclient_addr")
            c.close()
        with self.d.client() as c:
            self.assertEqual(c.request(h.policy_request(client_address="198.51.100.65")), "DUNNO")
        self.assertTrue(self.d.running())
