"""Listeners: several at once, IPv6, unix socket, client ACL, connection cap."""

import os
import socket
import stat
import struct
import time
import unittest

import harness as h


class ListenerTest(h.SGTestCase):

    def test_ipv4_ipv6_and_unix_at_once(self):
        if not h.ipv6_loopback():
            raise unittest.SkipTest("no IPv6 loopback (::1) on this host")
        p4, p6 = h.free_port(), h.free_port("::1")
        sock = self.tmp.join("sg.sock")
        cfg = h.base_config(p4, listen=["127.0.0.1:%d" % p4, "[::1]:%d" % p6, "unix:" + sock])
        d = self.start_daemon(cfg)
        self.assertTrue(stat.S_ISSOCK(os.stat(sock).st_mode), "no unix socket at %s" % sock)
        c4 = self.client(d, listen="127.0.0.1:%d" % p4)
        c6 = self.client(d, listen="[::1]:%d" % p6)
        cu = self.client(d, listen="unix:" + sock)
        # One counter behind all three listeners.
        acts = [(c4, c6, cu)[i % 3].request(h.policy_request(client_address="198.51.100.7"))
                for i in range(6)]
        self.assertEqual(acts, ["DUNNO"] * 4 + ["550 5.7.1 198.51.100.7 sent too much"] * 2)
        d.stop()
        self.assertFalse(os.path.exists(sock), "unix socket left behind after SIGTERM")

    def test_peers_reset_before_accept_are_not_refusals(self):
        # A peer that resets right after connecting is gone before its
        # address is read: it was logged as "refused connection from ?
        # ... not in clients", using up the once-a-minute line that a
        # real refusal needs.
        d = self.start_daemon(h.base_config(h.free_port()))
        host, port = d.listen.rsplit(":", 1)
        for _ in range(300):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.connect((host, int(port)))
            s.close()
        with d.client() as c:
            self.assertEqual(c.request(h.policy_request()), "DUNNO")
        self.assertNotIn("refused connection from ?", d.log())

    def test_ipv6_listener(self):
        if not h.ipv6_loopback():
            raise unittest.SkipTest("no IPv6 loopback (::1) on this host")
        p6 = h.free_port("::1")
        d = self.start_daemon(h.base_config(p6, listen=["[::1]:%d" % p6]))
        c = self.client(d)
        self.assertEqual(c.sock.family, socket.AF_INET6)
        acts = [c.request(h.policy_request(client_address="2001:db8:5::1")) for _ in range(5)]
        self.assertEqual(acts[:4], ["DUNNO"] * 4)
        self.assertEqual(acts[4], "550 5.7.1 2001:db8:5::1 sent too much")

    def test_unix_listener_only(self):
        sock = self.tmp.join("run/policy.sock")
        self.tmp.mkdir("run")
        d = self.start_daemon(h.base_config(0, listen=["unix:" + sock]))
        c = self.client(d)
        acts = [c.request(h.policy_request(client_address="198.51.100.8")) for _ in range(5)]
        self.assertEqual(acts[4], "550 5.7.1 198.51.100.8 sent too much")

    def test_stale_unix_socket_replaced(self):
        sock = self.tmp.join("stale.sock")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(sock)
        s.close()           # leaves a dead socket file, as after a crash
        d = self.start_daemon(h.base_config(0, listen=["unix:" + sock]))
        with d.client() as c:
            self.assertEqual(c.request(h.policy_request(client_address="198.51.100.9")), "DUNNO")

    def test_live_unix_socket_not_taken_over(self):
        # A second daemon on the socket of a running one (a test run next
        # to the service) took the path over: the running one could no
        # longer be reached, and the file vanished when either stopped.
        sock = self.tmp.join("live.sock")
        admin = self.tmp.join("admin.sock")
        cfg = h.base_config(0, listen=["unix:" + sock], admin={"listen": "unix:" + admin})
        first = self.start_daemon(cfg)
        second = self.start_daemon(cfg, name="second", wait_ready=False)
        rc = second.wait_exit(10)
        self.assertIsNotNone(rc, "a second daemon started on a live socket")
        self.assertNotEqual(rc, 0)
        self.assertIn("a running process listens on that socket", second.log())
        for path in (sock, admin):
            self.assertTrue(os.path.exists(path), "%s removed by the second daemon" % path)
        with first.client() as c:
            self.assertEqual(c.request(h.policy_request(client_address="198.51.100.11")), "DUNNO")
        # The admin socket was refused as well, and still answers the first.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(admin)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b" 200 ", s.recv(4096))
        s.close()
        # A file that replaced ours (another daemon's, once we had gone)
        # is not ours to remove at stop.
        os.unlink(sock)
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(sock)
        other.listen(1)
        first.stop()
        self.assertTrue(os.path.exists(sock), "the stop removed a socket file it had not made")
        other.close()

    def test_client_outside_acl_refused(self):
        port = h.free_port()
        d = self.start_daemon(h.base_config(port, clients=["127.0.0.2/32", "::1"]))
        allowed = self.client(d, source="127.0.0.2")
        self.assertEqual(allowed.request(h.policy_request(client_address="198.51.100.10")), "DUNNO")
        refused = d.client(source="127.0.0.3")
        self._clients.append(refused)
        try:
            refused.send_raw(refused.encode(h.policy_request(client_address="198.51.100.10")))
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.assertTrue(refused.is_closed(3 * h.SLOW), "a client outside clients: was not closed")
        self.assertNotIn(b"action=", refused.buf, "a refused client got an answer")
        # The allowed one is unaffected.
        self.assertEqual(allowed.request(h.policy_request(client_address="198.51.100.10")), "DUNNO")

    def test_listener_busy_port_fails_startup(self):
        blocker = socket.socket()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        port = h.free_port()
        blocker.bind(("127.0.0.1", port))
        blocker.listen(1)
        try:
            d = h.Daemon(self.tmp, h.base_config(port))
            self._daemons.append(d)
            d.start(wait_ready=False)
            rc = d.wait_exit(10)
            self.assertIsNotNone(rc, "smtpguard did not exit although its port was taken")
            self.assertNotEqual(rc, 0)
            self.assertNotRegex(d.log(), r"\bready\b")
        finally:
            blocker.close()

    def test_max_connections(self):
        port = h.free_port()
        cfg = h.base_config(port)
        cfg["limits"] = dict(cfg["limits"], max_connections=5)
        d = self.start_daemon(cfg)
        cs = [self.client(d) for _ in range(5)]
        for i, c in enumerate(cs):
            self.assertEqual(c.request(h.policy_request(client_address="198.51.100.%d" % (i + 1))),
                             "DUNNO")
        extra = d.client()
        self._clients.append(extra)
        try:
            extra.send_raw(extra.encode(h.policy_request(client_address="198.51.100.20")))
            got = extra.read_action(timeout=2)
            self.fail("6th connection answered (%r) with max_connections 5" % got)
        except (h.PolicyClosed, TimeoutError, BrokenPipeError, ConnectionResetError):
            pass
        cs[0].close()
        # A slot frees up: a new connection is served again.
        def served():
            try:
                with d.client(timeout=2) as c:
                    return c.request(h.policy_request(client_address="198.51.100.12")) == "DUNNO"
            except (h.PolicyClosed, TimeoutError, OSError):
                return False
        h.wait_until(served, 5 * h.SLOW, interval=0.2, what="a free connection slot")

    def test_idle_timeout(self):
        port = h.free_port()
        cfg = h.base_config(port)
        cfg["limits"] = dict(cfg["limits"], idle_timeout="1s")
        d = self.start_daemon(cfg)
        c = self.client(d)
        self.assertEqual(c.request(h.policy_request(client_address="198.51.100.13")), "DUNNO")
        self.assertTrue(c.is_closed(4 * h.SLOW), "idle connection not closed after idle_timeout 1s")
        # A busy connection is not closed while it talks.
        c2 = self.client(d)
        for i in range(6):
            self.assertEqual(c2.request(h.policy_request(client_address="203.0.113.%d" % (i + 1))),
                             "DUNNO")
            time.sleep(0.4)
