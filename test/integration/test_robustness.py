"""Clients and operators doing awkward things at awkward moments: a
client that writes without reading, an answer held by `wait` across an
idle timeout, a reload that swaps the store under a held request, and a
stop while an answer is held."""

import signal
import socket
import time

import harness as h


def wait_config(port, hold="2s", **extra):
    cfg = h.base_config(port)
    cfg["points"] = [{"name": "per-rcpt", "when": {"protocol_state": "RCPT"}, "add": {"ip": 1}}]
    cfg["actions"] = [{"name": "tarpit", "when": {"ip": ">= 1"},
                       "do": ["defer", "wait %s" % hold, "delete ip"],
                       "message": "450 4.7.1 held"}]
    cfg.update(extra)
    return cfg


def read_to_eof(s):
    """Everything the peer sends until it closes."""
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return data
        data += chunk


class RobustnessTest(h.SGTestCase):

    def test_client_that_writes_without_reading(self):
        # Thousands of requests written ahead with a tiny receive buffer:
        # the daemon's answers back up, it must stop taking new requests
        # until they drain, and never corrupt its write queue.
        # Long answers, so that they fill the socket buffers quickly.
        cfg = h.base_config(h.free_port())
        text = "550 5.7.1 " + "x" * 900
        cfg["actions"] = [{"name": "all", "when": {"protocol_state": "CONNECT"}, "do": "reject",
                           "message": text}]
        d = self.start_daemon(cfg)
        host, port = d.listen.rsplit(":", 1)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, int(port)))
        self.addCleanup(s.close)
        one = b"request=smtpd_access_policy\nprotocol_state=CONNECT\nclient_address=198.51.100.3\n\n"
        n = 4000    # ~3.6 MB of answers: far beyond the socket buffers
        s.setblocking(False)
        data = one * n
        sent = 0
        deadline = time.monotonic() + 20 * h.SLOW
        answers = b""
        blocked_since = None
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += s.send(data[sent:sent + 65536])
                blocked_since = None
                continue
            except BlockingIOError:
                pass
            # Our send is blocked. Read only once it has stayed blocked a
            # while: until then the daemon's answers pile up unread,
            # which is the case that matters.
            now = time.monotonic()
            if blocked_since is None:
                blocked_since = now
            if now - blocked_since < 0.1:
                time.sleep(0.01)
                continue
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        self.fail("closed after %d answers" % answers.count(b"\n\n"))
                    answers += chunk
            except BlockingIOError:
                pass
            blocked_since = None
        self.assertEqual(sent, len(data), "could not send every request")
        s.setblocking(True)
        s.settimeout(10 * h.SLOW)
        while answers.count(b"\n\n") < n:
            chunk = s.recv(65536)
            self.assertTrue(chunk, "connection closed after %d answers" % answers.count(b"\n\n"))
            answers += chunk
        self.assertEqual(answers, ("action=%s\n\n" % text).encode() * n)
        with d.client() as c2:
            self.assertEqual(c2.request(h.policy_request(client_address="198.51.100.4")), "DUNNO")

    def test_requests_near_the_size_limit_are_read_whole(self):
        # A buffer at its cap (max_request + 1) paused reading when less
        # than 512 bytes were free, even with a request still unfinished:
        # with max_request 700, a request of ~600 bytes arriving in two
        # pieces was never answered (151 bytes free after the first).
        cfg = h.base_config(h.free_port())
        cfg["limits"]["max_request"] = 700
        cfg["limits"]["max_line"] = 200
        d = self.start_daemon(cfg)
        c = self.client(d)
        for i in range(3):
            req = c.encode(h.policy_request(client_address="198.51.100.%d" % (30 + i)))
            c.send_raw(req[:550])       # leaves 151 of 701 bytes free
            time.sleep(0.05)
            c.send_raw(req[550:])
            self.assertEqual(c.read_action(timeout=3 * h.SLOW), "DUNNO", "request %d" % (i + 1))

    def test_request_just_under_the_default_limit_in_pieces(self):
        # The same with the default limit (65,536): a request within 512
        # bytes of it, its end arriving in pieces, was never answered.
        d = self.start_daemon(h.base_config(h.free_port()))
        c = self.client(d)
        # Lines under max_line (4096): attributes Postfix may add later
        # are taken and ignored.
        pad = {"x_pad%d" % i: "y" * 3800 for i in range(17)}
        big = c.encode(h.policy_request(client_address="198.51.100.40", **pad))
        self.assertLess(len(big), 65536)
        self.assertGreater(len(big), 65536 - 512)
        c.send_raw(big[:-300])
        time.sleep(0.1)
        for k in range(300, 0, -100):
            c.send_raw(big[-k:len(big) - k + 100])
            time.sleep(0.05)
        self.assertEqual(c.read_action(timeout=3 * h.SLOW), "DUNNO")

    def test_decision_of_a_client_gone_during_wait_is_recorded(self):
        # The wait timer closed with the connection, and with it the
        # decision: no log line, no record, no side effects, although the
        # points were counted.
        cfg = h.base_config(h.free_port())
        cfg["points"] = [{"name": "per-rcpt", "when": {"protocol_state": "RCPT"}, "add": {"ip": 1}}]
        cfg["actions"] = [{"name": "tarpit", "when": {"ip": ">= 1"},
                           "do": ["defer", "log", "wait 1s"], "message": "450 4.7.1 held"}]
        d = self.start_daemon(cfg)
        stays, leaves = self.client(d), self.client(d)
        stays.send_raw(stays.encode(h.policy_request(client_address="198.51.100.50")))
        leaves.send_raw(leaves.encode(h.policy_request(client_address="198.51.100.51")))
        time.sleep(0.2)
        leaves.close()
        self.assertEqual(stays.read_action(timeout=5 * h.SLOW), "450 4.7.1 held")
        d.wait_log(r"client=unknown\[198\.51\.100\.51\] .*rule=tarpit verdict=defer")
        d.wait_log(r"client=unknown\[198\.51\.100\.50\] .*rule=tarpit verdict=defer")

    def test_half_closed_client_gets_every_answer(self):
        # A client that sends its requests and then shuts its side down
        # (printf ... | nc -N) lost the answers still to come: EOF closed
        # the connection at once. 40 pipelined requests, then a held one.
        d = self.start_daemon(h.base_config(h.free_port()))
        host, port = d.listen.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=10 * h.SLOW)
        self.addCleanup(s.close)
        one = b"request=smtpd_access_policy\nprotocol_state=CONNECT\nclient_address=198.51.100.8\n\n"
        s.sendall(one * 40)
        s.shutdown(socket.SHUT_WR)
        data = read_to_eof(s)
        self.assertEqual(data, b"action=DUNNO\n\n" * 40)

    def test_half_closed_client_gets_its_held_answer(self):
        d = self.start_daemon(wait_config(h.free_port(), hold="1s"))
        host, port = d.listen.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=10 * h.SLOW)
        self.addCleanup(s.close)
        c = h.PolicyClient.encode(h.policy_request(client_address="198.51.100.9"))
        s.sendall(c)
        s.shutdown(socket.SHUT_WR)
        t0 = time.monotonic()
        data = read_to_eof(s)
        self.assertEqual(data, b"action=450 4.7.1 held\n\n")
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)

    def test_held_answer_outlives_idle_timeout(self):
        # The idle timeout counts the client's silence, not ours.
        cfg = wait_config(h.free_port(), hold="2s")
        cfg["limits"]["idle_timeout"] = "1s"
        d = self.start_daemon(cfg)
        c = self.client(d)
        t0 = time.monotonic()
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.5"), timeout=10 * h.SLOW),
                         "450 4.7.1 held")
        self.assertGreaterEqual(time.monotonic() - t0, 1.9)
        # ... and after the answer the connection is idle again: closed.
        self.assertTrue(c.is_closed(timeout=5 * h.SLOW), "idle connection not closed")

    def test_bytes_sent_ahead_do_not_start_the_idle_clock_during_wait(self):
        # A client that sends the first line of its next request while
        # its answer is held: each read restarted the idle timer, which
        # then closed the connection under the held answer.
        cfg = wait_config(h.free_port(), hold="2s")
        cfg["limits"]["idle_timeout"] = "1s"
        d = self.start_daemon(cfg)
        c = self.client(d)
        t0 = time.monotonic()
        c.send_raw(c.encode(h.policy_request(client_address="198.51.100.7")))
        time.sleep(0.3)
        c.send_raw(b"request=smtpd_access_policy\n")
        self.assertEqual(c.read_action(timeout=10 * h.SLOW), "450 4.7.1 held")
        self.assertGreaterEqual(time.monotonic() - t0, 1.9)

    def test_reload_swaps_store_under_held_request(self):
        # A request held by `wait` with a `delete` side effect, then a
        # reload that replaces the store: the delete must go to the new
        # store, not to the freed old one (ASan would see that).
        port = h.free_port()
        d = self.start_daemon(wait_config(port, hold="1s"))
        c = self.client(d)
        c.send_raw(c.encode(h.policy_request(client_address="198.51.100.6")))
        time.sleep(0.2)
        new = wait_config(port, hold="1s")
        new["store"]["memory"] = {"max_keys": 5000}
        ok, text = d.reload(new)
        self.assertTrue(ok, text)
        self.assertIn("store changed", text)
        self.assertEqual(c.read_action(timeout=5 * h.SLOW), "450 4.7.1 held")
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.6"),
                                   timeout=5 * h.SLOW), "450 4.7.1 held")

    def test_stop_answers_held_requests(self):
        d = self.start_daemon(wait_config(h.free_port(), hold="60s"))
        c = self.client(d)
        c.send_raw(c.encode(h.policy_request(client_address="198.51.100.7")))
        time.sleep(0.3)
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        self.assertEqual(c.read_action(timeout=5 * h.SLOW), "450 4.7.1 held")
        self.assertLess(time.monotonic() - t0, 3 * h.SLOW, "held answer not released at stop")
        self.assertEqual(d.wait_exit(timeout=10), 0)
