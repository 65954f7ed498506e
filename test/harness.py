"""harness - helpers for smtpguard's integration and end-to-end tests.

Python 3 standard library only. Everything here binds to loopback only,
starts its processes from its own temporary directories, stops them by
PID, and bounds every wait with a deadline: a hung daemon fails a test,
it never hangs the run.

What it offers:
  TempDir            mktemp -d, chmod 0755 (Postfix daemons must traverse it)
  free_port()        a free loopback TCP port (never 6379 / 10040)
  wait_until()       poll a predicate until a deadline
  Redis              redis-server on its own port and dir; stop/pause/resume/restart
  DnsServer          unbound serving test zones on a loopback UDP/TCP port
  DeadDns            a UDP socket that takes DNS queries and never answers
  dns_query()        one raw DNS question (rcode, answer count), for readiness checks
  RedisClient        a tiny RESP client (GET, KEYS, FLUSHALL ...)
  yaml_dump()        dict -> YAML text, for smtpguard configs
  Daemon             write a config, start smtpguard, wait for "ready", log file,
                     SIGHUP reload, SIGTERM stop, sanitizer-report check
  PolicyClient       one persistent policy-protocol connection
  policy_request()   a Postfix-like request dict
  Postfix            a throwaway Postfix instance (see shared/POSTFIX-TESTING.md)
  smtp_session()     smtplib + XCLIENT; per-recipient reply codes and texts
  SMTPCatcher        a small SMTP server on a loopback port that keeps what it
                     receives (alert mail); modes: accept, tempfail, hang
  require_*()        skip (outside CI) or fail (under CI=true) when a tool is missing

Environment:
  SMTPGUARD_BIN      daemon binary (test/run.py --bin sets it)
  SG_KEEP=1          keep temporary directories for post-mortem
  SG_VERBOSE=1       print daemon logs of failed tests (run.py does it anyway)
  CI=true            missing redis-server/postfix is a failure, not a skip
"""

import os
import random
import re
import shutil
import signal
import smtplib
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

TEST_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TEST_DIR)

# Ports that a system service may own: never hand them out.
RESERVED_PORTS = {25, 587, 6379, 10040, 10023}

# How long a daemon may take to say "ready" (ASan builds are slower).
READY_TIMEOUT = float(os.environ.get("SG_READY_TIMEOUT", "15"))
# Slack factor for timing assertions under sanitizers / loaded CI.
SLOW = float(os.environ.get("SG_SLOW", "1"))


def in_ci():
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def log(msg):
    if os.environ.get("SG_VERBOSE"):
        sys.stderr.write("# %s\n" % msg)


# ---------------------------------------------------------------- tools

def find_tool(name, extra_dirs=("/usr/sbin", "/usr/bin", "/sbin", "/usr/local/sbin")):
    p = shutil.which(name)
    if p:
        return p
    for d in extra_dirs:
        c = os.path.join(d, name)
        if os.access(c, os.X_OK):
            return c
    return None


def _missing(testcase, what):
    """Skip outside CI; under CI=true a missing tool is a failure.

    testcase may be None (from setUpClass)."""
    if in_ci():
        raise AssertionError("%s (CI=true: required, not skipped)" % what)
    raise unittest.SkipTest(what)


def require_redis(testcase):
    if not find_tool("redis-server"):
        _missing(testcase, "redis-server not installed (scripts/install-deps installs it)")


def require_unbound(testcase):
    if not find_tool("unbound"):
        _missing(testcase, "unbound not installed (scripts/install-deps installs it)")


def require_postfix(testcase):
    if not find_tool("postfix"):
        _missing(testcase, "postfix not installed (scripts/install-deps installs it)")
    if os.geteuid() != 0:
        _missing(testcase, "a throwaway Postfix instance needs root (postfix -c DIR start)")


def ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            s.bind(("::1", 0))
        finally:
            s.close()
        return True
    except OSError:
        return False


def daemon_bin():
    b = os.environ.get("SMTPGUARD_BIN") or os.path.join(ROOT, "policyd", "smtpguard")
    return os.path.abspath(b)


# ---------------------------------------------------------------- basics

class TempDir:
    """A mktemp -d directory made 0755; removed by cleanup() unless SG_KEEP."""

    def __init__(self, prefix="sgtest."):
        self.path = tempfile.mkdtemp(prefix=prefix)
        os.chmod(self.path, 0o755)

    def join(self, *parts):
        return os.path.join(self.path, *parts)

    def write(self, name, text, mode=0o644):
        p = self.join(name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, mode)
        return p

    def mkdir(self, name, mode=0o755):
        p = self.join(name)
        os.makedirs(p, exist_ok=True)
        os.chmod(p, mode)
        return p

    def cleanup(self):
        if os.environ.get("SG_KEEP"):
            sys.stderr.write("# kept %s\n" % self.path)
            return
        shutil.rmtree(self.path, ignore_errors=True)


_handed_out = set()


def free_port(host="127.0.0.1"):
    """A currently free TCP port on a loopback address, never reused by us."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Prefer a port outside the usual ephemeral range, so outgoing
            # connections are less likely to take it before we bind it.
            port = random.randint(20000, 32000)
            try:
                s.bind((host, port))
            except OSError:
                continue
        finally:
            s.close()
        if port in RESERVED_PORTS or port in _handed_out:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port found")


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Call pred() until it returns a true value; raise TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise TimeoutError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def port_open(host, port, timeout=0.5):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


# ---------------------------------------------------------------- redis

class RedisClient:
    """Minimal RESP client: enough to inspect smtpguard's keys."""

    def __init__(self, port, host="127.0.0.1", timeout=3.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def _line(self):
        while b"\r\n" not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                raise ConnectionError("redis closed the connection")
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n):
        while len(self.buf) < n + 2:
            d = self.sock.recv(65536)
            if not d:
                raise ConnectionError("redis closed the connection")
            self.buf += d
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def _reply(self, raw=False):
        line = self._line()
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RuntimeError("redis error: " + rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self._exact(n)
            # A counter value is binary: as str, its bytes that are not
            # UTF-8 stay (surrogates) and compare exactly.
            return data if raw else data.decode(errors="surrogateescape")
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply(raw) for _ in range(n)]
        raise RuntimeError("bad redis reply %r" % line)

    def cmd(self, *args, raw=False):
        """One command; bulk strings as str, or as bytes with raw=True."""
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(out)
        return self._reply(raw)

    def counter(self, key):
        """(score, time) a counter key holds (policyd/counter_wire.h: the
        byte 2, then the score, the time and the expiry bound as
        little-endian doubles), or None if it is gone."""
        v = self.cmd("GET", key, raw=True)
        if v is None:
            return None
        if len(v) != 25 or v[0] != 2:
            raise AssertionError("%s holds %r, not a counter value" % (key, v))
        return struct.unpack("<dd", v[1:17])


class Redis:
    """redis-server on 127.0.0.1:PORT in its own directory, stopped by PID."""

    def __init__(self, tmp, port=None, name="redis"):
        self.tmp = tmp
        self.port = port or free_port()
        self.dir = tmp.mkdir(name)
        self.proc = None
        self.paused = False
        self.exe = find_tool("redis-server")

    def start(self, timeout=10):
        assert self.proc is None, "redis already running"
        logf = open(os.path.join(self.dir, "redis.log"), "ab")
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--daemonize", "no", "--protected-mode", "yes",
             "--pidfile", os.path.join(self.dir, "redis.pid"),
             "--databases", "16", "--loglevel", "warning"],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=self.dir)
        logf.close()

        def ping():
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited (rc=%s): %s"
                                   % (self.proc.returncode, self.log_tail()))
            try:
                with RedisClient(self.port, timeout=0.5) as c:
                    return c.cmd("PING") == "PONG"
            except OSError:
                return False
        wait_until(ping, timeout, what="redis-server on port %d" % self.port)
        return self

    def log_tail(self, n=2000):
        try:
            with open(os.path.join(self.dir, "redis.log"), "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def client(self):
        return RedisClient(self.port)

    def cmd(self, *args, raw=False):
        with RedisClient(self.port) as c:
            return c.cmd(*args, raw=raw)

    def counter(self, key):
        with RedisClient(self.port) as c:
            return c.counter(key)

    def pause(self):
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self):
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def stop(self, timeout=10):
        if self.proc is None:
            return
        p, self.proc = self.proc, None
        if p.poll() is None:
            if self.paused:
                os.kill(p.pid, signal.SIGCONT)
                self.paused = False
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def restart(self, timeout=10):
        """Stop and start again on the same port (data is gone: no persistence)."""
        self.stop()
        wait_until(lambda: not port_open("127.0.0.1", self.port), 5,
                   what="redis port %d to close" % self.port)
        self.start(timeout)


# ---------------------------------------------------------------- DNS

def free_udp_port(host="127.0.0.1"):
    """A loopback port free for both TCP and UDP (a DNS server takes both)."""
    for _ in range(200):
        port = free_port(host)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            u.close()
    raise RuntimeError("no free UDP port found")


def dns_query(port, name, qtype=1, timeout=1.0, host="127.0.0.1"):
    """Ask one question over UDP; return (rcode, answer count) or None on timeout."""
    qid = random.randint(1, 65535)
    pkt = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        pkt += bytes([len(label)]) + label.encode()
    pkt += b"\0" + struct.pack(">HH", qtype, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(pkt, (host, port))
        data = s.recv(4096)
    except OSError:
        return None
    finally:
        s.close()
    if len(data) < 12:
        return None
    return data[3] & 15, struct.unpack(">H", data[6:8])[0]


def reverse_name(ip, zone):
    """198.51.100.7 + zone -> 7.100.51.198.zone; IPv6 by nibbles."""
    import ipaddress
    a = ipaddress.ip_address(ip)
    if a.version == 4:
        return ".".join(reversed(ip.split("."))) + "." + zone
    nib = a.exploded.replace(":", "")
    return ".".join(reversed(nib)) + "." + zone


class DnsServer:
    """unbound on 127.0.0.1:PORT serving records (zone-file lines) from
    local zones, nothing else: it never asks the Internet. Stopped by PID.

    records: ["host.test. 60 IN A 192.0.2.1", ...]; zones: local zones
    (static: NXDOMAIN with an SOA whose TTL/minimum is negative_ttl)."""

    ZONES = ("test.", "in-addr.arpa.", "ip6.arpa.")

    def __init__(self, tmp, records, port=None, name="dns", negative_ttl=60):
        self.tmp = tmp
        self.port = port or free_udp_port()
        self.dir = tmp.mkdir(name)
        self.proc = None
        self.exe = find_tool("unbound")
        self.negative_ttl = negative_ttl
        self.write(records)

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def write(self, records):
        lines = [
            "server:",
            "  interface: 127.0.0.1",
            "  port: %d" % self.port,
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            '  directory: "%s"' % self.dir,
            '  pidfile: "%s"' % os.path.join(self.dir, "unbound.pid"),
            "  use-syslog: no",
            '  logfile: ""',
            "  verbosity: 1",
            "  do-ip6: no",
            "  num-threads: 1",
            "  so-reuseport: no",
            "  outgoing-range: 16",
            "  access-control: 127.0.0.0/8 allow",
            '  module-config: "iterator"',
            # Anything outside the test zones is refused: no recursion.
            '  local-zone: "." refuse',
        ]
        for z in self.ZONES:
            lines.append('  local-zone: "%s" static' % z)
            lines.append("  local-data: '%s %d IN SOA ns.test. hostmaster.test. 1 3600 600 86400 %d'"
                         % (z, self.negative_ttl, self.negative_ttl))
        for r in records:
            lines.append("  local-data: '%s'" % r)
        lines += ["remote-control:", "  control-enable: no", ""]
        with open(os.path.join(self.dir, "unbound.conf"), "w") as f:
            f.write("\n".join(lines))

    def start(self, timeout=10):
        assert self.proc is None, "unbound already running"
        logf = open(os.path.join(self.dir, "unbound.log"), "ab")
        self.proc = subprocess.Popen(
            [self.exe, "-d", "-c", os.path.join(self.dir, "unbound.conf")],
            stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir)
        logf.close()

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError("unbound exited (rc=%s): %s" % (self.proc.returncode,
                                                                  self.log_tail()))
            return dns_query(self.port, "test.", 6, timeout=0.3) is not None
        wait_until(ready, timeout, what="unbound on port %d" % self.port)
        return self

    def log_tail(self, n=2000):
        try:
            with open(os.path.join(self.dir, "unbound.log"), "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout=10):
        if self.proc is None:
            return
        p, self.proc = self.proc, None
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def restart(self, records, timeout=10):
        """Serve other records on the same port (the daemon's cache is not told)."""
        self.stop()
        self.write(records)
        self.start(timeout)


class DeadDns:
    """A UDP socket on loopback that takes queries and never answers."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def close(self):
        self.sock.close()


class SlowDns:
    """A UDP DNS server on loopback that answers every query NXDOMAIN,
    each after `delay` seconds (a thread per query); with a_record, every
    A question with that IPv4 address instead (and any other question
    with no record)."""

    def __init__(self, delay, bind=("127.0.0.1", 0), a_record=None, rcode=3):
        self.delay = delay
        self.rcode = rcode
        self.a_record = socket.inet_aton(a_record) if a_record else None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(bind)
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def _answer(self, q, addr):
        time.sleep(self.delay)
        # Same id and question; QR, RD, RA; rcode (3: NXDOMAIN); no records.
        reply = q[:2] + bytes([0x81, 0x80 | self.rcode]) + q[4:6] + b"\0\0\0\0\0\0" + q[12:]
        if self.a_record:
            end = 12
            while end < len(q) and q[end] != 0:
                end += q[end] + 1
            question = q[12:end + 5]
            if question[-4:-2] == b"\0\1":   # A: one record, the name by pointer
                reply = (q[:2] + b"\x81\x80\0\1\0\1\0\0\0\0" + question +
                         b"\xc0\x0c\0\1\0\1\0\0\0\x3c\0\4" + self.a_record)
            else:                             # anything else: NOERROR, no record
                reply = q[:2] + b"\x81\x80\0\1\0\0\0\0\0\0" + question
        try:
            self.sock.sendto(reply, addr)
        except OSError:
            pass

    def _serve(self):
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                q, addr = self.sock.recvfrom(2048)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(q) < 12:
                continue
            self.queries += 1
            threading.Thread(target=self._answer, args=(q, addr), daemon=True).start()

    def close(self):
        self._stop = True
        self._thread.join(2)
        self.sock.close()


# ---------------------------------------------------------------- YAML

_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


def _scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return str(v)
    s = str(v)
    if _PLAIN.match(s) and s.lower() not in _YAML_WORDS and not _looks_numeric(s):
        return s
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _looks_numeric(s):
    try:
        float(s)
        return True
    except ValueError:
        return False


def _flow(v):
    if isinstance(v, dict):
        return "{ " + ", ".join("%s: %s" % (_scalar(k), _flow(x)) for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_flow(x) for x in v) + "]"
    return _scalar(v)


def yaml_dump(cfg):
    """Block style at the top two levels, flow style below: readable in logs."""
    out = []
    for k, v in cfg.items():
        if isinstance(v, dict) and v:
            out.append("%s:" % _scalar(k))
            for k2, v2 in v.items():
                out.append("  %s: %s" % (_scalar(k2), _flow(v2)))
        elif isinstance(v, (list, tuple)) and v and isinstance(v[0], dict):
            out.append("%s:" % _scalar(k))
            for item in v:
                out.append("  - %s" % _flow(item))
        else:
            out.append("%s: %s" % (_scalar(k), _flow(v)))
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- policy client

def parse_listen(entry):
    """'127.0.0.1:P' / '[::1]:P' / 'unix:/path' -> (family, sockaddr)."""
    if entry.startswith("unix:"):
        return socket.AF_UNIX, entry[5:]
    m = re.match(r"^\[([0-9a-fA-F:.]+)\]:(\d+)$", entry)
    if m:
        return socket.AF_INET6, (m.group(1), int(m.group(2)))
    host, port = entry.rsplit(":", 1)
    return socket.AF_INET, (host, int(port))


class PolicyClosed(Exception):
    """The daemon closed the connection (EOF or reset) before answering."""


class PolicyClient:
    """One persistent policy-protocol connection."""

    def __init__(self, listen, timeout=5.0, source=None):
        family, addr = parse_listen(listen) if isinstance(listen, str) else listen
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.connect(addr)
        self.timeout = timeout
        self.buf = b""

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    @staticmethod
    def encode(attrs):
        return b"".join(("%s=%s\n" % (k, v)).encode() for k, v in attrs.items()) + b"\n"

    def send_raw(self, data):
        self.sock.sendall(data)

    def read_answer(self, timeout=None):
        """Read one answer up to the empty line; return the whole answer text."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\n\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no policy answer within %.1fs (got %r)"
                                   % (timeout or self.timeout, self.buf[:200]))
            self.sock.settimeout(left)
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError) as e:
                raise PolicyClosed("connection reset: %s" % e)
            if not d:
                raise PolicyClosed("connection closed by daemon (pending %r)" % self.buf[:200])
            self.buf += d
        ans, self.buf = self.buf.split(b"\n\n", 1)
        return ans.decode(errors="replace")

    def read_action(self, timeout=None):
        ans = self.read_answer(timeout)
        first = ans.split("\n", 1)[0]
        if not first.startswith("action="):
            raise AssertionError("answer without action=: %r" % ans)
        return first[len("action="):]

    def request(self, attrs, timeout=None):
        """Send one request dict, return the action text (after 'action=')."""
        try:
            self.send_raw(self.encode(attrs))
        except (BrokenPipeError, ConnectionResetError) as e:
            raise PolicyClosed("send failed: %s" % e)
        return self.read_action(timeout)

    def is_closed(self, timeout=2.0):
        """True once the peer closed the connection (EOF/reset) within timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                d = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not d:
                return True
            self.buf += d


_instance = [0]


def policy_request(state="RCPT", client_address="198.51.100.7", sender="sender@example.org",
                   recipient="rcpt@example.net", sasl_username="", **extra):
    """A request shaped like what Postfix 3.7 sends; extra keys override/add."""
    _instance[0] += 1
    r = {
        "request": "smtpd_access_policy",
        "protocol_state": state,
        "protocol_name": "ESMTP",
        "helo_name": "client.example.org",
        "queue_id": "",
        "sender": sender,
        "recipient": recipient if state != "END-OF-MESSAGE" else "",
        "recipient_count": "0" if state == "RCPT" else "1",
        "client_address": client_address,
        "client_name": "unknown",
        "client_port": "54321",
        "reverse_client_name": "unknown",
        "instance": "1a2b.%x.%d.0" % (os.getpid(), _instance[0]),
        "sasl_method": "PLAIN" if sasl_username else "",
        "sasl_username": sasl_username,
        "sasl_sender": "",
        "size": "0",
        "ccert_subject": "",
        "ccert_issuer": "",
        "ccert_fingerprint": "",
        "ccert_pubkey_fingerprint": "",
        "encryption_protocol": "",
        "encryption_cipher": "",
        "encryption_keysize": "0",
        "etrn_domain": "",
        "stress": "",
        "server_address": "127.0.0.1",
        "server_port": "25",
        "policy_context": "",
        "compatibility_level": "3.6",
        "mail_version": "3.7.11",
    }
    r.update(extra)
    return r


# ---------------------------------------------------------------- daemon

SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer)"
                          r"|runtime error: |SUMMARY: \w+Sanitizer")


def base_config(port, **over):
    """A small valid config: memory store, one TCP listener, ip/user counters."""
    cfg = {
        "listen": ["127.0.0.1:%d" % port],
        "clients": ["127.0.0.0/8", "::1"],
        "limits": {"max_line": 4096, "max_request": 65536, "max_attrs": 128,
                   "idle_timeout": "300s", "max_connections": 1000},
        "store": {"backend": "memory", "on_error": "dunno"},
        "log": {"stderr": True, "level": "info"},
        "counters": {
            "ip": {"key": "client_address", "half_life": "10m"},
            "user": {"key": "sasl_username", "leak": "100/h"},
        },
        "lists": {"trusted": ["10.0.0.0/8", "192.0.2.0/28"]},
        "points": [
            {"name": "trusted", "when": {"client_address": {"in": "trusted"}}, "then": "ok"},
            {"name": "per-rcpt", "when": {"protocol_state": "RCPT"}, "add": {"ip": 1, "user": 1}},
        ],
        "actions": [
            {"name": "flood", "when": {"ip": ">= 5"}, "do": ["reject", "log"],
             "message": "550 5.7.1 %{client_address} sent too much"},
            {"name": "slow", "when": {"user": ">= 3"}, "do": "defer",
             "message": "450 4.7.1 slow down %{sasl_username}"},
        ],
    }
    cfg.update(over)
    return cfg


def redis_store(port, **over):
    st = {"backend": "redis",
          "redis": {"address": "127.0.0.1:%d" % port, "db": 0, "prefix": "sg:",
                    "timeout": "100ms"},
          "on_error": "dunno"}
    st.update(over)
    return st


class DaemonError(AssertionError):
    pass


class Daemon:
    """One smtpguard process: config file, log file, signals, clean-exit check."""

    def __init__(self, tmp, config, name="sg", binary=None):
        self.tmp = tmp
        self.name = name
        self.binary = binary or daemon_bin()
        self.conf_path = tmp.join(name + ".yaml")
        self.log_path = tmp.join(name + ".log")
        self.proc = None
        self.config = None
        self.write_config(config)

    # config
    def write_config(self, config):
        self.config = config
        text = config if isinstance(config, str) else yaml_dump(config)
        tmpname = self.conf_path + ".new"
        with open(tmpname, "w") as f:
            f.write(text)
        os.rename(tmpname, self.conf_path)
        return self.conf_path

    @property
    def listen(self):
        if isinstance(self.config, dict):
            return self.config["listen"][0]
        m = re.search(r'listen:\s*\[\s*"?([^",\]]+)', self.config)
        return m.group(1)

    # process
    def start(self, wait_ready=True, timeout=READY_TIMEOUT):
        assert self.proc is None
        if not os.access(self.binary, os.X_OK):
            raise DaemonError("daemon binary %s not found or not executable "
                              "(build it, or pass --bin / SMTPGUARD_BIN)" % self.binary)
        self.logf = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        self.proc = subprocess.Popen([self.binary, "-c", self.conf_path],
                                     stdout=self.logf, stderr=self.logf,
                                     stdin=subprocess.DEVNULL, cwd=self.tmp.path,
                                     env=env)
        # For .ci/run's safety net: it stops leftovers by PID from these files.
        with open(self.tmp.join(self.name + ".pid"), "w") as f:
            f.write("%d\n" % self.proc.pid)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=READY_TIMEOUT):
        def ready():
            if self.proc.poll() is not None:
                raise DaemonError("smtpguard exited during start-up (rc=%s):\n%s"
                                  % (self.proc.returncode, self.log_tail()))
            return re.search(r"\bready\b", self.log())
        wait_until(ready, timeout, what="smtpguard 'ready' in %s" % self.log_path)

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=10, check=True):
        """SIGTERM, wait (bounded), return the exit code; check: assert exit 0 and no sanitizer report."""
        if self.proc is None:
            return None
        p = self.proc
        rc = p.poll()
        timed_out = False
        if rc is None:
            p.send_signal(signal.SIGTERM)
            try:
                rc = p.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                timed_out = True
                p.kill()
                rc = p.wait(5)
        self.proc = None
        self.logf.close()
        if check:
            if timed_out:
                raise DaemonError("smtpguard did not exit within %ss of SIGTERM (killed)\n%s"
                                  % (timeout, self.log_tail()))
            self.check_log()
            if rc != 0:
                raise DaemonError("smtpguard exited with %s after SIGTERM, want 0\n%s"
                                  % (rc, self.log_tail()))
        return rc

    def wait_exit(self, timeout=10):
        """For a daemon expected to exit by itself: its exit code, or None if
        it was still running at the deadline (then it is killed)."""
        if self.proc is None:
            return None
        try:
            rc = self.proc.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self.proc = None
        self.logf.close()
        return rc

    def kill(self):
        """Hard stop without checks (cleanup path)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            self.proc = None
            self.logf.close()

    def check_log(self):
        m = SANITIZER_RE.search(self.log())
        if m:
            raise DaemonError("sanitizer report in the daemon log:\n%s" % self.log_tail(6000))

    # log
    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n=4000):
        t = self.log()
        return t[-n:]

    def mark(self):
        """Current log size: pass to wait_log/log_since to look only at newer lines."""
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, mark):
        return self.log().encode()[mark:].decode(errors="replace")

    def wait_log(self, pattern, since=0, timeout=5.0):
        """Wait for a regex in the log after `since`; return the match."""
        rx = re.compile(pattern)

        def found():
            if self.proc is not None and self.proc.poll() is not None:
                m = rx.search(self.log_since(since))
                if m:
                    return m
                raise DaemonError("smtpguard exited (rc=%s) while waiting for /%s/:\n%s"
                                  % (self.proc.returncode, pattern, self.log_tail()))
            return rx.search(self.log_since(since))
        try:
            return wait_until(found, timeout * SLOW, what="/%s/ in the daemon log" % pattern)
        except TimeoutError as e:
            raise DaemonError("%s\n--- log since mark:\n%s" % (e, self.log_since(since)[-3000:]))

    def reload(self, config=None, timeout=5.0):
        """Write a new config (if given), SIGHUP, wait for the outcome.

        Returns (ok, log text written since the signal)."""
        if config is not None:
            self.write_config(config)
        m = self.mark()
        self.signal(signal.SIGHUP)
        self.wait_log(r"config reloaded generation=\d+|reload failed", since=m, timeout=timeout)
        time.sleep(0.1 * SLOW)   # let the rest of a multi-line failure report land
        text = self.log_since(m)
        return ("config reloaded" in text and "reload failed" not in text), text

    # clients
    def client(self, listen=None, timeout=5.0, source=None):
        return PolicyClient(listen or self.listen, timeout=timeout, source=source)

    def check_config(self, path=None, timeout=10):
        """Run `smtpguard -c FILE -t`; return (rc, stdout+stderr)."""
        p = subprocess.run([self.binary, "-c", path or self.conf_path, "-t"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, timeout=timeout * SLOW,
                           cwd=self.tmp.path)
        return p.returncode, p.stderr.decode(errors="replace"), p.stdout.decode(errors="replace")


# ---------------------------------------------------------------- postfix

MASTER_CF = """\
# Throwaway instance for smtpguard tests: no chroot anywhere.
{smtp_listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# Client ranges the tests pose with XCLIENT (all inside mynetworks so that
# relay control lets them through to the policy check).
TEST_NETWORKS = ("127.0.0.0/8 10.0.0.0/8 192.0.2.0/24 198.51.100.0/24 203.0.113.0/24 "
                 "[::1]/128 [2001:db8::]/32")


def policy_hook(policy_port, timeout="10s", default_action="DUNNO"):
    if " " in default_action:
        da = "{ default_action = %s }" % default_action
    else:
        da = "default_action=%s" % default_action
    return "check_policy_service { inet:127.0.0.1:%d, timeout=%s, %s }" % (
        policy_port, timeout, da)


class Postfix:
    """A throwaway Postfix instance under tmp/NAME (etc, queue, data, log)."""

    def __init__(self, tmp, policy_port, smtp_port=None, name="postfix", extra_main=None,
                 ipv6=None, default_action="DUNNO", policy_timeout="10s"):
        self.tmp = tmp
        self.exe = find_tool("postfix")
        self.smtp_port = smtp_port or free_port()
        self.policy_port = policy_port
        self.top = tmp.mkdir(name)
        self.etc = tmp.mkdir(name + "/etc")
        self.queue = tmp.mkdir(name + "/queue")
        self.data = tmp.mkdir(name + "/data", mode=0o700)
        # data_directory belongs to mail_owner (master.lock, caches).
        try:
            import pwd
            pw = pwd.getpwnam("postfix")
            os.chown(self.data, pw.pw_uid, pw.pw_gid)
        except (KeyError, PermissionError):
            pass
        self.logdir = tmp.mkdir(name + "/log")
        self.maillog = os.path.join(self.logdir, "maillog")
        self.started = False
        if ipv6 is None:
            # XCLIENT ADDR=IPV6:... is "Bad ADDR syntax" unless inet_protocols has ipv6.
            ipv6 = ipv6_loopback()
        hook = policy_hook(policy_port, policy_timeout, default_action)
        main = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue,
            "data_directory": self.data,
            "maillog_file": self.maillog,
            "maillog_file_prefixes": "/var, /dev/stdout, " + self.logdir,
            "myhostname": "mx.smtpguard.test",
            "mydomain": "smtpguard.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "all" if ipv6 else "ipv4",
            "mynetworks": TEST_NETWORKS,
            "local_transport": "error:local delivery disabled",
            "default_transport": "discard:",
            "relay_transport": "discard:",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "smtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            "notify_classes": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "readme_directory": "no",
            "smtputf8_enable": "no",
            "smtpd_banner": "$myhostname ESMTP smtpguard-test",
            "smtpd_authorized_xclient_hosts": "127.0.0.0/8, [::1]/128",
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "smtpd_relay_restrictions":
                "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination",
            "smtpd_recipient_restrictions": hook,
            "smtpd_end_of_data_restrictions": hook,
            "smtpd_soft_error_limit": "1000",
            "smtpd_hard_error_limit": "1000",
            "smtpd_error_sleep_time": "0",
            "smtpd_junk_command_limit": "1000",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_event_limit_exceptions": "0.0.0.0/0 [::]/0",
        }
        if extra_main:
            main.update(extra_main)
        self.main = main
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            for k, v in main.items():
                f.write("%s = %s\n" % (k, v))
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(smtp_listen="127.0.0.1:%d" % self.smtp_port))

    def _postfix(self, *args, timeout=30):
        return subprocess.run([self.exe, "-c", self.etc] + list(args),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, timeout=timeout)

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def start(self, timeout=20):
        p = self._postfix("start")
        if p.returncode != 0:
            raise RuntimeError("postfix -c %s start failed (rc=%d): %s\n%s"
                               % (self.etc, p.returncode, p.stdout.decode(errors="replace"),
                                  self.log_tail()))
        self.started = True
        wait_until(lambda: port_open("127.0.0.1", self.smtp_port), timeout,
                   what="postfix smtpd on 127.0.0.1:%d" % self.smtp_port)
        return self

    def reload(self):
        p = self._postfix("reload")
        if p.returncode != 0:
            raise RuntimeError("postfix reload failed: %s" % p.stdout.decode(errors="replace"))

    def stop(self, timeout=20):
        if not self.started:
            return
        self.started = False
        pid = self.master_pid()
        self._postfix("stop", timeout=timeout)
        if pid:
            try:
                wait_until(lambda: not pid_alive(pid), timeout, what="postfix master to exit")
            except TimeoutError:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def log(self):
        try:
            with open(self.maillog, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, n=4000):
        return self.log()[-n:]


# ---------------------------------------------------------------- SMTP client

def xtext(s):
    out = []
    for ch in s.encode():
        if ch < 33 or ch > 126 or ch in (ord("+"), ord("=")):
            out.append("+%02X" % ch)
        else:
            out.append(chr(ch))
    return "".join(out)


class Reply:
    def __init__(self, code, msg):
        self.code = code
        self.msg = msg.decode(errors="replace") if isinstance(msg, bytes) else msg
        self.text = "%d %s" % (code, self.msg.replace("\n", " "))

    def __repr__(self):
        return "Reply(%r)" % self.text


class Session:
    def __init__(self):
        self.xclient = None
        self.mail = None
        self.rcpts = []          # [(rcpt, Reply)]
        self.data = None
        self.elapsed = 0.0

    def codes(self):
        return [r.code for _, r in self.rcpts]

    def accepted(self):
        return [a for a, r in self.rcpts if r.code // 100 == 2]

    def __repr__(self):
        return "Session(mail=%r rcpts=%r data=%r)" % (self.mail, self.rcpts, self.data)


def smtp_session(port, rcpts, sender="sender@example.org", addr=None, name=None,
                 helo="client.example.org", login=None, data=False, host="127.0.0.1",
                 body=None, timeout=30):
    """One SMTP session; XCLIENT first when addr/login given; returns a Session.

    data=True sends a message when at least one recipient was accepted, so
    END-OF-MESSAGE policy checks run; session.data holds the final reply."""
    t0 = time.monotonic()
    sess = Session()
    s = smtplib.SMTP(host, port, local_hostname=helo, timeout=timeout)
    try:
        s.ehlo(helo)
        if addr is not None or login is not None:
            parts = []
            if addr is not None:
                a = "IPV6:" + addr if ":" in addr else addr
                parts.append("ADDR=" + xtext(a))
                parts.append("NAME=" + xtext(name or "[UNAVAILABLE]"))
                parts.append("REVERSE_NAME=" + xtext(name or "[UNAVAILABLE]"))
            parts.append("HELO=" + xtext(helo))
            if login is not None:
                parts.append("LOGIN=" + xtext(login))
            code, msg = s.docmd("XCLIENT", " ".join(parts))
            sess.xclient = Reply(code, msg)
            if code != 220:
                raise AssertionError("XCLIENT refused: %r" % sess.xclient)
            # XCLIENT restarts the session: forget the old EHLO, say it again.
            s.helo_resp = s.ehlo_resp = None
            s.esmtp_features = {}
            s.does_esmtp = False
            s.ehlo(helo)
        code, msg = s.mail(sender)
        sess.mail = Reply(code, msg)
        if code // 100 == 2:
            for r in rcpts:
                code, msg = s.rcpt(r)
                sess.rcpts.append((r, Reply(code, msg)))
            if data and sess.accepted():
                code, msg = s.docmd("DATA")
                if code == 354:
                    text = body or ("From: <%s>\r\nTo: <%s>\r\nSubject: smtpguard test\r\n"
                                    "\r\nhello\r\n" % (sender, sess.accepted()[0]))
                    q = smtplib.quotedata(text)
                    if not q.endswith("\r\n"):
                        q += "\r\n"
                    s.send(q.encode() + b".\r\n")
                    code, msg = s.getreply()
                sess.data = Reply(code, msg)
            else:
                s.rset()
        try:
            s.quit()
        except smtplib.SMTPServerDisconnected:
            pass
    finally:
        s.close()
    sess.elapsed = time.monotonic() - t0
    return sess


# ---------------------------------------------------------------- SMTP catcher

class CaughtMail:
    def __init__(self, mail_from, rcpts, data):
        self.mail_from = mail_from
        self.rcpts = rcpts
        self.data = data            # bytes as received, dot-unstuffed, CRLF

    def message(self):
        """The mail parsed with the email package (policy default: decoded headers)."""
        import email
        import email.policy
        return email.message_from_bytes(self.data, policy=email.policy.default)

    def body(self):
        """The decoded text, with \\n line ends."""
        return self.message().get_content().replace("\r\n", "\n")

    def __repr__(self):
        return "CaughtMail(from=%r rcpts=%r %d bytes)" % (self.mail_from, self.rcpts,
                                                         len(self.data))


class SMTPCatcher:
    """An SMTP server thread on 127.0.0.1:PORT that stores what it receives.

    mode: "accept" (250 to everything), "tempfail" (451 at MAIL FROM),
    "hang" (accepts the connection, never says a word). dot_delay: seconds
    before the reply to the data's final dot. Every session has a
    deadline; stop() closes the socket and joins the threads."""

    def __init__(self, mode="accept", port=None, dot_delay=0, refuse_once=()):
        import threading
        self.mode = mode
        self.dot_delay = dot_delay
        # Recipients answered 451 the first time they are given, then 250.
        self.refuse_once = set(refuse_once)
        self.port = port or free_port()
        self.mails = []
        self.sessions = 0
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.stopping = False
        self.threads = []
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self):
        import threading
        while not self.stopping:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.sessions += 1
            th = threading.Thread(target=self._session, args=(conn,), daemon=True)
            self.threads.append(th)
            th.start()

    def _session(self, conn):
        conn.settimeout(30)
        f = conn.makefile("rb")
        try:
            if self.mode == "hang":
                deadline = time.monotonic() + 30
                while not self.stopping and time.monotonic() < deadline:
                    time.sleep(0.05)
                return
            conn.sendall(b"220 catcher.test ESMTP\r\n")
            mail_from, rcpts = None, []
            while not self.stopping:
                line = f.readline(4096)
                if not line:
                    return
                cmd = line.strip().decode(errors="replace")
                verb = cmd[:4].upper()
                if verb in ("EHLO", "HELO"):
                    conn.sendall(b"250-catcher.test\r\n250 8BITMIME\r\n")
                elif verb == "MAIL":
                    if self.mode == "tempfail":
                        conn.sendall(b"451 4.3.0 try later\r\n")
                        continue
                    mail_from = cmd[10:].strip().strip("<>")
                    rcpts = []
                    conn.sendall(b"250 ok\r\n")
                elif verb == "RCPT":
                    rcpt = cmd[8:].strip().strip("<>")
                    with self.lock:
                        refuse = rcpt in self.refuse_once
                        self.refuse_once.discard(rcpt)
                    if refuse:
                        conn.sendall(b"451 4.2.0 mailbox temporarily unavailable\r\n")
                        continue
                    rcpts.append(rcpt)
                    conn.sendall(b"250 ok\r\n")
                elif verb == "DATA":
                    conn.sendall(b"354 go ahead\r\n")
                    lines = []
                    while True:
                        l = f.readline(100000)
                        if not l or l == b".\r\n":
                            break
                        if l.startswith(b".."):
                            l = l[1:]
                        lines.append(l)
                    with self.lock:
                        self.mails.append(CaughtMail(mail_from, rcpts, b"".join(lines)))
                    time.sleep(self.dot_delay)
                    conn.sendall(b"250 2.0.0 queued as CATCHED\r\n")
                elif verb == "QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                elif verb == "RSET":
                    conn.sendall(b"250 ok\r\n")
                else:
                    conn.sendall(b"502 unknown\r\n")
        except OSError:
            return
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def wait_mails(self, n, timeout=10.0):
        wait_until(lambda: len(self.mails) >= n, timeout * SLOW, what="%d mails at the catcher" % n)
        return list(self.mails)

    def stop(self):
        self.stopping = True
        try:
            self.sock.close()
        except OSError:
            pass
        self.t.join(5)
        for th in self.threads:
            th.join(5)


# ---------------------------------------------------------------- test base

class SGTestCase(unittest.TestCase):
    """Per-test temp dir and cleanup of every process a test started."""

    def setUp(self):
        self.tmp = TempDir(prefix="sgtest.%s." % self._testMethodName[:40])
        self._daemons = []
        self._redis = []
        self._dns = []
        self._postfix = []
        self._clients = []
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        first = None
        for c in self._clients:
            c.close()
        # Every daemon a test leaves running must still stop cleanly:
        # SIGTERM -> exit 0, no sanitizer report. A failure here is
        # reported as an error of the test.
        for d in self._daemons:
            if d.proc is None:
                continue
            try:
                if d.proc.poll() is None:
                    d.stop()
                else:
                    rc = d.proc.returncode
                    d.kill()
                    raise DaemonError("smtpguard %s died during the test (rc=%s):\n%s"
                                      % (d.name, rc, d.log_tail()))
            except Exception as e:   # noqa: BLE001 - clean up the rest first
                d.kill()
                first = first or e
        for pf in self._postfix:
            try:
                pf.stop()
            except Exception as e:   # noqa: BLE001 - cleanup must go on
                sys.stderr.write("# postfix stop failed: %s\n" % e)
        for r in self._redis:
            r.stop()
        for x in self._dns:
            x.stop() if isinstance(x, DnsServer) else x.close()
        if first is not None:
            # Keep the evidence of a failed stop.
            sys.stderr.write("# daemon stop failed; logs kept in %s\n" % self.tmp.path)
            raise first
        self.tmp.cleanup()

    # builders that register cleanup
    def start_daemon(self, config, name="sg", wait_ready=True):
        d = Daemon(self.tmp, config, name=name)
        self._daemons.append(d)
        d.start(wait_ready=wait_ready)
        return d

    def stop_daemon(self, d):
        d.stop()

    def start_redis(self, port=None, name="redis"):
        require_redis(self)
        r = Redis(self.tmp, port=port, name=name)
        self._redis.append(r)
        r.start()
        return r

    def start_dns(self, records, **kw):
        require_unbound(self)
        d = DnsServer(self.tmp, records, **kw)
        self._dns.append(d)
        d.start()
        return d

    def dead_dns(self):
        d = DeadDns()
        self._dns.append(d)
        return d

    def start_postfix(self, policy_port, **kw):
        require_postfix(self)
        pf = Postfix(self.tmp, policy_port, **kw)
        self._postfix.append(pf)
        pf.start()
        return pf

    def client(self, daemon, **kw):
        c = daemon.client(**kw)
        self._clients.append(c)
        return c

    def diagnostics(self):
        """Text run.py prints when this test fails."""
        out = []
        for d in self._daemons:
            out.append("--- %s log (%s):\n%s" % (d.name, d.log_path, d.log_tail(3000)))
        for pf in self._postfix:
            out.append("--- postfix maillog:\n%s" % pf.log_tail(3000))
        return "\n".join(out)

    def assertAction(self, got, want, msg=None):
        self.assertEqual(got, want, msg or "got action=%r, want action=%r" % (got, want))
