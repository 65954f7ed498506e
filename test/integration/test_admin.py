"""The admin API, smtpguardctl and /metrics against a running daemon with
a real Redis: score, top, reset, reload, status; state changes refused
without the token; bad HTTP answered 400 with the daemon unharmed; the
metrics text checked by a strict Prometheus text-format parser (and by
promtool when installed) and its counters moving as requests are sent."""

import json
import math
import os
import re
import signal
import socket
import subprocess

import harness as h

CTL = os.path.join(h.ROOT, "scripts", "smtpguardctl")
TOKEN = "t0ken-for-tests"


def http(address, method, path, headers=None, body=b"", timeout=5.0):
    """(status, headers dict, body text) of one raw HTTP/1.1 exchange."""
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(address[5:])
    else:
        host, port = address.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=timeout)
    try:
        hdr = "".join("%s: %s\r\n" % kv for kv in (headers or {}).items())
        if body:
            hdr += "Content-Length: %d\r\nContent-Type: application/x-www-form-urlencoded\r\n" % len(body)
        s.sendall(("%s %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (method, path, hdr)).encode() + body)
        return read_response(s)
    finally:
        s.close()


def read_response(s):
    data = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        data += d
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    assert int(headers["content-length"]) == len(body), "Content-Length does not match the body"
    return status, headers, body.decode()


# ---- a strict parser of the Prometheus text format (0.0.4) ----

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def parse_labels(text, where):
    labels, i = {}, 0
    while i < len(text):
        m = re.match(r"([a-zA-Z_][a-zA-Z0-9_]*)=\"", text[i:])
        if not m:
            raise AssertionError("%s: bad label at %r" % (where, text[i:]))
        name = m.group(1)
        i += m.end()
        val = ""
        while True:
            if i >= len(text):
                raise AssertionError("%s: unterminated label value" % where)
            c = text[i]
            if c == "\\":
                nxt = text[i + 1]
                if nxt not in "\\\"n":
                    raise AssertionError("%s: bad escape \\%s" % (where, nxt))
                val += {"n": "\n"}.get(nxt, nxt)
                i += 2
            elif c == '"':
                i += 1
                break
            else:
                val += c
                i += 1
        if name in labels:
            raise AssertionError("%s: label %s twice" % (where, name))
        labels[name] = val
        if i < len(text):
            if text[i] != ",":
                raise AssertionError("%s: want ',' between labels" % where)
            i += 1
    return labels


def parse_metrics(text):
    """{family: {"type", "help", "samples": [(name, labels, value)]}}; raises on
    anything the format does not allow, and on what Prometheus conventions
    require here (HELP and TYPE before samples, counters named _total,
    cumulative histogram buckets ending in +Inf equal to _count, no
    duplicate series)."""
    assert text.endswith("\n"), "exposition must end with a newline"
    fams, seen, current = {}, set(), None
    for n, ln in enumerate(text.split("\n")[:-1], 1):
        where = "line %d" % n
        if ln.startswith("# HELP ") or ln.startswith("# TYPE "):
            parts = ln.split(" ", 3)
            name = parts[2]
            assert METRIC_NAME.match(name), "%s: bad metric name %r" % (where, name)
            fam = fams.setdefault(name, {"samples": []})
            key = "help" if parts[1] == "HELP" else "type"
            assert key not in fam, "%s: second %s for %s" % (where, parts[1], name)
            assert not fam["samples"], "%s: %s after samples of %s" % (where, parts[1], name)
            fam[key] = parts[3] if len(parts) > 3 else ""
            if key == "type":
                assert fam["type"] in ("counter", "gauge", "histogram", "summary", "untyped"), where
            current = name
            continue
        assert ln and not ln.startswith("#"), "%s: unexpected %r" % (where, ln)
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", ln)
        assert m, "%s: not a sample: %r" % (where, ln)
        assert current is not None, "%s: sample before any # TYPE" % where
        name, labels = m.group(1), parse_labels(m.group(3) or "", where)
        value = float(m.group(4))           # accepts +Inf, NaN as Prometheus does
        fam_name = current
        if fams[current].get("type") == "histogram":
            assert name in (current + "_bucket", current + "_sum", current + "_count"), where
        else:
            assert name == current, "%s: sample %s outside its family %s" % (where, name, current)
        assert "type" in fams[fam_name] and "help" in fams[fam_name], where
        series = (name, tuple(sorted(labels.items())))
        assert series not in seen, "%s: duplicate series %r" % (where, series)
        seen.add(series)
        fams[fam_name]["samples"].append((name, labels, value))
    for name, fam in fams.items():
        if fam["type"] == "counter":
            assert name.endswith("_total"), "counter %s must end in _total" % name
            assert all(v >= 0 for _, _, v in fam["samples"]), name
        if fam["type"] == "histogram":
            assert name.endswith("_seconds"), "histogram %s must be in seconds" % name
            buckets = [(float(lb["le"]), v) for s, lb, v in fam["samples"] if s.endswith("_bucket")]
            assert buckets and math.isinf(buckets[-1][0]), "%s: no +Inf bucket" % name
            les, counts = [b[0] for b in buckets], [b[1] for b in buckets]
            assert les == sorted(les), "%s: buckets out of order" % name
            assert counts == sorted(counts), "%s: buckets not cumulative" % name
            count = [v for s, _, v in fam["samples"] if s.endswith("_count")][0]
            assert buckets[-1][1] == count, "%s: +Inf bucket != _count" % name
    return fams


def scrape(admin):
    """The parsed /metrics of the admin listener at admin (a 200 or an
    AssertionError)."""
    st, _, body = http(admin, "GET", "/metrics")
    if st != 200:
        raise AssertionError("GET /metrics: HTTP %d: %s" % (st, body[:200]))
    return parse_metrics(body)


def sample(fams, family, suffix="", **labels):
    for name, lb, v in fams[family]["samples"]:
        if name == family + suffix and all(lb.get(k) == str(x) for k, x in labels.items()):
            return v
    return 0.0


class AdminTest(h.SGTestCase):

    def start(self, admin_listen=None, token=True, redis=True, redis_timeout=None):
        self.port = h.free_port()
        self.admin = admin_listen or "127.0.0.1:%d" % h.free_port()
        admin = {"listen": self.admin}
        if token:
            self.token_file = self.tmp.write("admin.token", TOKEN + "\n", mode=0o600)
            admin["token_file"] = self.token_file
        over = {"admin": admin}
        if redis:
            self.redis = self.start_redis()
            # The floor compares unrounded scores: 2 recipients a moment
            # apart make 1.9999, so "2 points" is a floor of 1.5.
            over["store"] = h.redis_store(self.redis.port, top={"floor": 1.5, "size": 10})
            if redis_timeout:
                over["store"]["redis"]["timeout"] = redis_timeout
        self.d = self.start_daemon(h.base_config(self.port, **over))
        self.c = self.client(self.d)
        return self.d

    def ctl(self, *args, token=True):
        cmd = [CTL, "-a", self.admin]
        if token:
            cmd += ["--token-file", self.token_file]
        env = dict(os.environ)
        env.pop("SMTPGUARD_ADMIN_TOKEN", None)
        p = subprocess.run(cmd + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, timeout=20 * h.SLOW, env=env)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def rcpt(self, ip, user=""):
        return self.c.request(h.policy_request(client_address=ip, sasl_username=user))

    def test_score_top_reset_with_smtpguardctl(self):
        self.start()
        for _ in range(4):
            self.rcpt("198.51.100.7", "Erin")
        for _ in range(2):
            self.rcpt("198.51.100.8")
        self.rcpt("198.51.100.9")            # 1 point: under the top floor
        rc, out, err = self.ctl("--json", "score", "ip", "198.51.100.7")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)["score"], 4)
        # The key is folded as the counter folds it: user keys are lower case.
        rc, out, err = self.ctl("score", "user", "ERIN")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"\nuser +erin +4\n?$")
        rc, out, err = self.ctl("--json", "top", "ip")
        self.assertEqual(rc, 0, err)
        top = json.loads(out)["keys"]
        self.assertEqual([(k["key"], k["score"]) for k in top],
                         [("198.51.100.7", 4), ("198.51.100.8", 2)])
        rc, out, _ = self.ctl("top", "ip", "-n", "1")
        self.assertEqual(rc, 0)
        self.assertRegex(out, r"^# +KEY +SCORE\n1 +198\.51\.100\.7 +4\n?$")
        # The sorted set in Redis is bounded and holds only keys above the floor.
        self.assertEqual(sorted(self.redis.cmd("ZRANGE", "sg:@top:ip", 0, -1)),
                         ["sg:ip:198.51.100.7", "sg:ip:198.51.100.8"])
        # Reset: the key is gone from Redis and counting starts over.
        rc, out, err = self.ctl("reset", "ip", "198.51.100.7")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.strip(), "reset ip 198.51.100.7")
        self.assertIsNone(self.redis.cmd("GET", "sg:ip:198.51.100.7"))
        rc, out, _ = self.ctl("--json", "score", "ip", "198.51.100.7")
        self.assertEqual(json.loads(out)["score"], 0)
        self.assertEqual(self.rcpt("198.51.100.7"), "DUNNO")
        rc, out, _ = self.ctl("--json", "top", "ip")
        self.assertEqual([k["key"] for k in json.loads(out)["keys"]], ["198.51.100.8"])
        # Reading a score wrote nothing.
        self.assertIsNone(self.redis.cmd("GET", "sg:ip:192.0.2.200"))
        self.ctl("score", "ip", "192.0.2.200")
        self.assertIsNone(self.redis.cmd("GET", "sg:ip:192.0.2.200"))

    def test_request_at_the_size_cap_is_answered_as_carried_out(self):
        # A request of exactly 8192 bytes was carried out (the reset
        # happened) and then answered 413, as if refused.
        self.start()
        for _ in range(3):
            self.rcpt("198.51.100.21")
            self.rcpt("198.51.100.22")

        def reset_of_size(ip, total):
            head = ("POST /reset HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                    "Content-Type: application/x-www-form-urlencoded\r\n"
                    "Content-Length: %%05d\r\n\r\n" % TOKEN)
            body = "counter=ip&key=%s&pad=" % ip
            body += "x" * (total - len(head % 0) - len(body))
            raw = (head % len(body) + body).encode()
            self.assertEqual(len(raw), total)
            host, port = self.admin.rsplit(":", 1)
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(raw)
            st, _, body = read_response(s)
            s.close()
            return st, body

        st, body = reset_of_size("198.51.100.21", 8192)
        self.assertEqual(st, 200, body)
        self.assertIsNone(self.redis.cmd("GET", "sg:ip:198.51.100.21"))
        def admin_requests():
            return sample(scrape(self.admin), "smtpguard_admin_requests_total")
        seen = admin_requests()
        st, body = reset_of_size("198.51.100.22", 8193)
        self.assertEqual(st, 413, body)
        self.assertIsNotNone(self.redis.cmd("GET", "sg:ip:198.51.100.22"))
        # Refused before it was read whole, and counted all the same (+1
        # for the scrape).
        self.assertEqual(admin_requests(), seen + 2)
        # n= that does not decode is a 400, not a read of whatever the
        # buffer held.
        for bad in ("%zz", "12345678901234567", "%3", ""):
            st, _, _ = http(self.admin, "GET", "/top?counter=ip&n=" + bad)
            self.assertEqual(st, 400, "n=" + bad)

    def test_key_with_odd_bytes_listed_escaped_and_reset(self):
        # A SASL name with a control byte and one that is not UTF-8: /top
        # showed it as "mal??[31m", which reset nothing, and the bytes
        # themselves made smtpguardctl fail as "cannot reach" (exit 3).
        self.start()
        user = b"mal\xff\x1b[31m"
        for _ in range(3):
            self.c.send_raw(b"request=smtpd_access_policy\nprotocol_state=RCPT\n"
                            b"client_address=198.51.100.24\nsasl_username=" + user + b"\n\n")
            self.assertIn("action=", self.c.read_answer())
        self.assertEqual(self.redis.cmd("EXISTS", b"sg:user:" + user), 1)
        rc, out, err = self.ctl("--json", "top", "user")
        self.assertEqual(rc, 0, err)
        keys = json.loads(out)["keys"]
        self.assertEqual([k.get("key_escaped") for k in keys], ["mal\\xff\\x1b[31m"])
        rc, out, err = self.ctl("top", "user")
        self.assertIn("mal\\xff\\x1b[31m", out)
        rc, out, err = self.ctl("reset", "user", os.fsdecode(user))
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.redis.cmd("EXISTS", b"sg:user:" + user), 0)

    def test_token_file_blanks_and_bytes(self):
        # A blank after the token in its file locked every change out
        # (HTTP drops it from the header); bytes no header can carry are
        # refused at the config check.
        self.start()
        for _ in range(2):
            self.rcpt("198.51.100.23")
        with open(self.token_file, "w") as f:
            f.write("  " + TOKEN + " \t\n")
        mark = self.d.mark()
        self.d.signal(signal.SIGHUP)
        h.wait_until(lambda: "config reloaded" in self.d.log()[mark:], 10, what="reload")
        rc, out, err = self.ctl("reset", "ip", "198.51.100.23")
        self.assertEqual(rc, 0, err)
        self.assertIsNone(self.redis.cmd("GET", "sg:ip:198.51.100.23"))
        with open(self.token_file, "wb") as f:
            f.write(b"\xfftoken\n")
        rc, err, _ = self.d.check_config()
        self.assertEqual(rc, 1, err)
        self.assertIn("the token must be printable ASCII without blanks", err)

    def test_state_changes_need_the_token(self):
        self.start()
        for _ in range(3):
            self.rcpt("198.51.100.20")
        rc, out, err = self.ctl("reset", "ip", "198.51.100.20", token=False)
        self.assertEqual(rc, 1)
        self.assertIn("needs the admin token", err)
        st, hd, body = http(self.admin, "POST", "/reset?counter=ip&key=198.51.100.20",
                            {"Authorization": "Bearer wrong-token"})
        self.assertEqual(st, 401)
        self.assertEqual(hd.get("www-authenticate"), "Bearer")
        st, _, _ = http(self.admin, "POST", "/reload")
        self.assertEqual(st, 401)
        # Nothing changed.
        self.assertIsNotNone(self.redis.cmd("GET", "sg:ip:198.51.100.20"))
        rc, out, _ = self.ctl("--json", "status")
        self.assertEqual(json.loads(out)["config_generation"], 1)
        # GET cannot change state, POST cannot read.
        st, hd, _ = http(self.admin, "GET", "/reset?counter=ip&key=198.51.100.20")
        self.assertEqual(st, 405)
        self.assertEqual(hd.get("allow"), "POST")
        st, hd, _ = http(self.admin, "POST", "/status", {"Authorization": "Bearer " + TOKEN})
        self.assertEqual(st, 405)
        self.assertEqual(hd.get("allow"), "GET")
        # The Allow header names the route's method, whatever was asked
        # (it was picked by the first letter of the method asked).
        for method, path, allow in (("PUT", "/reset", "POST"), ("PATCH", "/reload", "POST"),
                                    ("DELETE", "/health", "GET"), ("HEAD", "/metrics", "GET")):
            st, hd, _ = http(self.admin, method, path)
            self.assertEqual((st, hd.get("allow")), (405, allow), "%s %s" % (method, path))
        # With the token, in an urlencoded body this time.
        st, _, body = http(self.admin, "POST", "/reset", {"Authorization": "Bearer " + TOKEN},
                           b"counter=ip&key=198.51.100.20")
        self.assertEqual(st, 200, body)
        self.assertIsNone(self.redis.cmd("GET", "sg:ip:198.51.100.20"))

    def test_ctl_token_config_and_address_edge_cases(self):
        self.start()
        for _ in range(3):
            self.rcpt("198.51.100.22")

        def run(args, env_token=None, cfg=None):
            env = dict(os.environ)
            env.pop("SMTPGUARD_ADMIN_TOKEN", None)
            env.pop("SMTPGUARD_ADMIN", None)
            if env_token is not None:
                env["SMTPGUARD_ADMIN_TOKEN"] = env_token
            cmd = [CTL] + (["-c", cfg] if cfg else ["-c", "/nonexistent"]) + args
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, timeout=20 * h.SLOW, env=env)
            return p.returncode, p.stdout.decode(), p.stderr.decode()

        # A token from the environment with a line end (echo > file; export
        # $(cat file)) is stripped, as one from a file is; it was sent as
        # it was, and the error quoted it in full.
        rc, out, err = run(["-a", self.admin, "reset", "ip", "198.51.100.22"], env_token=TOKEN + "\n")
        self.assertEqual(rc, 0, err)
        rc, out, err = run(["-a", self.admin, "reload"], env_token="two words")
        self.assertEqual(rc, 2)
        self.assertNotIn("two words", err)
        # The admin block read from a config with a blank line, a comment
        # at column 0 and a commented-out listen in it.
        cfg = self.tmp.write("ctl.yaml", "listen: [\"127.0.0.1:1\"]\nadmin:\n"
                             "  # listen: \"127.0.0.1:1\"\n\n#  a note\n"
                             "  listen: \"%s\"\n\n  token_file: %s\n" % (self.admin, self.token_file))
        rc, out, err = run(["reload"], cfg=cfg)
        self.assertEqual(rc, 0, err)
        # Bad addresses are usage errors (2), not a daemon out of reach (3).
        for bad in ("bogus", "127.0.0.1:82577"):
            rc, out, err = run(["-a", bad, "status"])
            self.assertEqual(rc, 2, (bad, err))
        # A config that is not UTF-8 (a Latin-1 comment) and a token file
        # of bytes no header can carry: tracebacks before.
        latin1 = self.tmp.join("latin1.yaml")
        with open(latin1, "wb") as f:
            f.write(b"# M\xfcller\nadmin: { listen: \"%s\" }\n" % self.admin.encode())
        rc, out, err = run(["health"], cfg=latin1)
        self.assertEqual(rc, 0, err)
        badtok = self.tmp.join("bad.token")
        with open(badtok, "wb") as f:
            f.write(b"\xffbinarytoken\n")
        rc, out, err = run(["-a", self.admin, "--token-file", badtok, "reload"])
        self.assertEqual(rc, 2, err)
        self.assertNotIn("Traceback", err)

    def test_request_runs_once_while_its_store_call_is_out(self):
        # Bytes after a complete request, while its Redis call is out,
        # ran the request again: one reset per extra chunk.
        self.start(redis_timeout="3s")
        for _ in range(3):
            self.rcpt("198.51.100.21")
        host, port = self.admin.rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=5)
        self.addCleanup(s.close)
        self.redis.pause()
        try:
            s.sendall(("POST /reset?counter=ip&key=198.51.100.21 HTTP/1.1\r\nHost: x\r\n"
                       "Authorization: Bearer %s\r\n\r\n" % TOKEN).encode())
            for _ in range(3):
                h.time.sleep(0.1)
                s.sendall(b"x")
        finally:
            self.redis.resume()
        st, _, body = read_response(s)
        self.assertEqual(st, 200, body)
        self.d.wait_log(r"admin: reset ip:198\.51\.100\.21")
        h.time.sleep(0.3)
        self.assertEqual(len(re.findall(r"admin: reset ip:198\.51\.100\.21", self.d.log())), 1,
                         self.d.log_tail())

    def test_no_token_configured_refuses_changes_on_tcp(self):
        self.start(token=False, redis=False)
        st, _, body = http(self.admin, "POST", "/reload")
        self.assertEqual(st, 403)
        self.assertIn("admin.token_file", body)

    def test_unix_socket_peer_check(self):
        sock = self.tmp.join("admin.sock")
        self.start(admin_listen="unix:" + sock, token=False, redis=False)
        self.assertEqual(os.stat(sock).st_mode & 0o777, 0o660)
        # We run as the daemon's user (or root): trusted without a token.
        st, _, body = http("unix:" + sock, "POST", "/reload")
        self.assertEqual(st, 200, body)
        self.assertEqual(json.loads(body), {"reloaded": True, "generation": 2})

    def test_reload_and_status(self):
        self.start()
        rc, out, err = self.ctl("status")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"config +\S+sg\.yaml \(generation 1\)")
        self.assertRegex(out, r"store +redis, up")
        rc, out, err = self.ctl("reload")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.strip(), "reloaded: generation 2")
        # A broken config is refused; the old one keeps serving.
        self.d.write_config("counters: [\n")
        rc, out, err = self.ctl("reload")
        self.assertEqual(rc, 1)
        self.assertIn("refused", err)
        rc, out, _ = self.ctl("--json", "status")
        st = json.loads(out)
        self.assertEqual(st["config_generation"], 2)
        self.assertEqual(st["counters"], ["ip", "user"])
        self.assertEqual(self.rcpt("198.51.100.40"), "DUNNO")

    def test_bad_requests_get_400_and_the_daemon_goes_on(self):
        self.start(redis=False)
        cases = [
            ("garbage", b"\x00\x01\x02 hello\r\n\r\n", 400),
            ("no version", b"GET /status\r\n\r\n", 400),
            ("unknown path", b"GET /../../etc/passwd HTTP/1.1\r\n\r\n", 404),
            ("unknown counter", b"GET /score?counter=nope&key=x HTTP/1.1\r\n\r\n", 404),
            ("missing key", b"GET /score?counter=ip HTTP/1.1\r\n\r\n", 400),
            ("bad n", b"GET /top?counter=ip&n=0 HTTP/1.1\r\n\r\n", 400),
            ("malformed n", b"GET /top?counter=ip&n=%zz HTTP/1.1\r\n\r\n", 400),
            ("n too long", b"GET /top?counter=ip&n=12345678901234567 HTTP/1.1\r\n\r\n", 400),
            ("bad escape", b"GET /score?counter=ip&key=%zz HTTP/1.1\r\n\r\n", 400),
            ("huge body", b"POST /reload HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
            ("negative length", b"POST /reload HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            ("oversized headers", b"GET /status HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 413),
        ]
        host, port = self.admin.rsplit(":", 1)
        for label, raw, want in cases:
            with self.subTest(case=label):
                s = socket.create_connection((host, int(port)), timeout=5)
                try:
                    try:
                        s.sendall(raw)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    st, _, body = read_response(s)
                finally:
                    s.close()
                self.assertEqual(st, want, "%s: %s" % (label, body))
                self.assertIn("error", json.loads(body))
        # A client that connects and says nothing does not block others.
        idle = socket.create_connection((host, int(port)), timeout=5)
        try:
            st, _, body = http(self.admin, "GET", "/health")
            self.assertEqual((st, body), (200, "ok\n"))
        finally:
            idle.close()
        self.assertEqual(self.rcpt("198.51.100.50"), "DUNNO")
        self.assertTrue(self.d.running())

    def test_config_errors(self):
        bad = h.base_config(h.free_port(), admin={"listen": "0.0.0.0:10041", "tokn": "x"})
        d = h.Daemon(self.tmp, bad)
        rc, err, out = d.check_config()
        self.assertEqual(rc, 1)
        self.assertRegex(err, r"sg\.yaml:\d+:\d+: admin\.listen: the admin API listens on loopback")
        self.assertRegex(err, r"sg\.yaml:\d+:\d+: admin: unknown setting \"tokn\"")


class MetricsTest(h.SGTestCase):

    def test_metrics_parse_and_move(self):
        r = self.start_redis()
        port, aport = h.free_port(), h.free_port()
        admin = "127.0.0.1:%d" % aport
        d = self.start_daemon(h.base_config(port, admin={"listen": admin},
                                            store=h.redis_store(r.port)))
        c = self.client(d)

        def checked_scrape():
            st, hd, body = http(admin, "GET", "/metrics")
            self.assertEqual(st, 200)
            self.assertTrue(hd["content-type"].startswith("text/plain; version=0.0.4"))
            promtool = h.find_tool("promtool")
            if promtool:
                p = subprocess.run([promtool, "check", "metrics"], input=body.encode(),
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
                self.assertEqual(p.returncode, 0, "promtool: %s" % p.stdout.decode())
            elif h.in_ci():
                raise AssertionError("promtool missing (CI=true; scripts/install-deps installs it)")
            return parse_metrics(body)

        m0 = checked_scrape()
        for i in range(6):
            c.request(h.policy_request(client_address="198.51.100.60"))
        c.request(h.policy_request(state="END-OF-MESSAGE", client_address="198.51.100.61"))
        c.request(h.policy_request(client_address="10.0.0.1"))
        m1 = checked_scrape()
        delta = lambda fam, suffix="", **lb: sample(m1, fam, suffix, **lb) - sample(m0, fam, suffix, **lb)  # noqa: E731
        self.assertEqual(delta("smtpguard_requests_total", protocol_state="RCPT"), 7)
        self.assertEqual(delta("smtpguard_requests_total", protocol_state="END-OF-MESSAGE"), 1)
        self.assertEqual(delta("smtpguard_verdicts_total", rule="flood", verdict="reject"), 2)
        self.assertEqual(delta("smtpguard_verdicts_total", rule="trusted", verdict="dunno"), 1)
        self.assertEqual(delta("smtpguard_verdicts_total", rule="none", verdict="dunno"), 5)
        self.assertEqual(delta("smtpguard_answer_duration_seconds", "_count"), 8)
        # Store round trips: the 7 counted requests (not the whitelisted one).
        self.assertEqual(delta("smtpguard_store_duration_seconds", "_count"), 7)
        self.assertGreater(delta("smtpguard_store_duration_seconds", "_sum"), 0)
        self.assertEqual(sample(m1, "smtpguard_connections"), 1)
        self.assertEqual(sample(m1, "smtpguard_store_up", backend="redis"), 1)

        # Redis stopped: errors counted, store reported down.
        r.stop()
        for _ in range(3):
            self.assertEqual(c.request(h.policy_request(client_address="198.51.100.62")), "DUNNO")
        h.wait_until(lambda: sample(checked_scrape(), "smtpguard_store_up", backend="redis") == 0, 5,
                     what="store_up 0")
        m2 = checked_scrape()
        self.assertEqual(sample(m2, "smtpguard_store_errors_total")
                         - sample(m1, "smtpguard_store_errors_total"), 3)
        self.assertEqual(sample(m2, "smtpguard_verdicts_total", rule="none", verdict="on_error")
                         - sample(m1, "smtpguard_verdicts_total", rule="none", verdict="on_error"), 3)

        # Reloads and refused reloads.
        ok, _ = d.reload()
        self.assertTrue(ok)
        d.write_config("counters: {ip: {key: nothing}}\n")
        ok, _ = d.reload()
        self.assertFalse(ok)
        m3 = checked_scrape()
        self.assertEqual(sample(m3, "smtpguard_config_reloads_total"), 1)
        self.assertEqual(sample(m3, "smtpguard_config_reload_failures_total"), 1)
        self.assertEqual(sample(m3, "smtpguard_config_generation"), 2)
        self.assertGreater(sample(m3, "smtpguard_admin_requests_total"), 3)

        # The Grafana dashboard graphs only metrics that exist.
        with open(os.path.join(h.ROOT, "contrib", "grafana-smtpguard.json")) as f:
            dash = json.load(f)
        exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
        self.assertGreater(len(exprs), 10)
        names = set(re.findall(r"smtpguard_[a-z_]+", " ".join(exprs)))
        for n in sorted(names):
            fam = re.sub(r"_(bucket|sum|count)$", "", n)
            self.assertIn(fam, m3, "dashboard uses %s, which /metrics does not have" % n)

    def test_memory_store_keys_and_evictions(self):
        # A cap of 100 keys and 80 clients (an ip and a user key each):
        # the store stays at its cap and says how many live keys it dropped.
        port, aport = h.free_port(), h.free_port()
        admin = "127.0.0.1:%d" % aport
        cfg = h.base_config(port, admin={"listen": admin})
        cfg["store"] = {"backend": "memory", "memory": {"max_keys": 100}}
        d = self.start_daemon(cfg)
        c = self.client(d)

        self.assertEqual(sample(scrape(admin), "smtpguard_store_evictions_total"), 0)
        for i in range(80):
            c.request(h.policy_request(client_address="198.51.100.%d" % (i + 1),
                                       sasl_username="u%d" % i))
        m = scrape(admin)
        self.assertEqual(sample(m, "smtpguard_store_keys"), 100)
        self.assertEqual(sample(m, "smtpguard_store_evictions_total"), 2 * 80 - 100)

    def test_memory_store_frees_expired_keys_without_traffic(self):
        # Expired keys were freed only by the sweep inside requests: after
        # a burst and no traffic, memory and the keys gauge stayed up.
        port, aport = h.free_port(), h.free_port()
        admin = "127.0.0.1:%d" % aport
        cfg = h.base_config(port, admin={"listen": admin})
        cfg["counters"] = {"ip": {"key": "client_address", "half_life": "100ms"}}
        cfg["points"] = [{"name": "p", "when": {"protocol_state": "RCPT"}, "add": {"ip": 1}}]
        cfg["actions"] = []
        d = self.start_daemon(cfg)
        c = self.client(d)
        for i in range(3000):
            c.request(h.policy_request(client_address="10.%d.%d.%d" % (1 + i // 65536,
                                                                     (i // 256) % 256, i % 256)))
        self.assertGreater(sample(scrape(admin), "smtpguard_store_keys"), 1000)
        # Each key lives a second; a few idle seconds later none is held.
        h.wait_until(lambda: sample(scrape(admin), "smtpguard_store_keys") == 0, 8 * h.SLOW,
                     interval=0.5, what="the expired keys freed without traffic")

    def test_counters_survive_a_reload_that_replaces_store_and_resolver(self):
        # A reload that changed store: or dns: replaced the memory store or
        # the resolver, and their counters in /metrics started over at 0.
        port, aport = h.free_port(), h.free_port()
        admin = "127.0.0.1:%d" % aport
        dead = self.dead_dns()
        cfg = h.base_config(port, admin={"listen": admin},
                            dns={"servers": [dead.address], "timeout": "200ms"})
        cfg["store"] = {"backend": "memory", "memory": {"max_keys": 100}}
        cfg["actions"] = [{"name": "bl", "when": {"dnsbl": ["bl.test"]}, "do": "reject"}] + \
            cfg["actions"]
        d = self.start_daemon(cfg)
        c = self.client(d)

        for i in range(80):
            c.request(h.policy_request(client_address="198.51.100.%d" % (i + 1),
                                       sasl_username="u%d" % i), timeout=5)
        before = scrape(admin)
        evicted = sample(before, "smtpguard_store_evictions_total")
        queries = sample(before, "smtpguard_dns_queries_total")
        errors = sample(before, "smtpguard_dns_timeouts_total")
        self.assertEqual(evicted, 2 * 80 - 100)
        self.assertGreater(queries, 0)
        cfg["store"]["memory"]["max_keys"] = 200
        cfg["dns"]["timeout"] = "300ms"
        d.write_config(cfg)
        mark = d.mark()
        d.signal(signal.SIGHUP)
        d.wait_log("config reloaded", since=mark)
        self.assertIn("store changed", d.log()[mark:])
        self.assertIn("dns resolver settings changed", d.log()[mark:])
        after = scrape(admin)
        self.assertEqual(sample(after, "smtpguard_store_evictions_total"), evicted)
        self.assertGreaterEqual(sample(after, "smtpguard_dns_queries_total"), queries)
        self.assertGreaterEqual(sample(after, "smtpguard_dns_timeouts_total"), errors)

    def test_strict_parser_rejects(self):
        # The parser used above must fail on what Prometheus refuses.
        bad = [
            "x 1\n",                                                    # no TYPE/HELP
            "# HELP a_total h\n# TYPE a_total counter\na_total{l=\"x} 1\n",
            "# HELP a h\n# TYPE a counter\na 1\n",                      # counter without _total
            "# HELP a_total h\n# TYPE a_total counter\na_total 1\na_total 2\n",
            "# HELP h_seconds h\n# TYPE h_seconds histogram\nh_seconds_bucket{le=\"1\"} 2\n"
            "h_seconds_bucket{le=\"+Inf\"} 1\nh_seconds_sum 1\nh_seconds_count 1\n",
            "# HELP a_total h\n# TYPE a_total counter\na_total 1",       # no final newline
        ]
        for text in bad:
            with self.subTest(text=text):
                with self.assertRaises((AssertionError, ValueError)):
                    parse_metrics(text)
