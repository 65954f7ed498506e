"""scripts/redis-replay: the counter script's cost in Redis, replayed.

A short capture from a real daemon and Redis, then replays under
callgrind: the capture holds the daemon's real script calls, the same
script replayed twice counts the same instructions (within the few keys
Redis's clock decides), and a script that does more counts more. Slow
under valgrind, so the capture is small (300 requests).
"""

import json
import os
import re
import subprocess

import harness as h

TOOL = os.path.join(h.ROOT, "scripts", "redis-replay")
SCRIPT = os.path.join(h.ROOT, "policyd", "store_redis.lua")
LINE = re.compile(r"^(\S+)\s+([\d,]+) instructions:\s+(\d+) a request, +(\d+) a key, +(\d+) a call$",
                  re.M)


class RedisReplayTest(h.SGTestCase):

    def setUp(self):
        super().setUp()
        h.require_redis(self)
        if not h.find_tool("valgrind"):
            h._missing(self, "valgrind not installed (scripts/install-deps installs it)")

    def tool(self, *args, timeout=300):
        p = subprocess.run([TOOL] + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout)
        self.assertEqual(p.returncode, 0, "redis-replay %s failed:\n%s%s"
                         % (" ".join(args), p.stdout, p.stderr))
        return p.stdout

    def test_capture_and_replay(self):
        tmp = self.tmp.mkdir("replay")
        cap = os.path.join(tmp, "calls.jsonl")
        self.tool("capture", cap, "--requests", "300", "--conns", "4", "--bin", h.daemon_bin())
        with open(cap) as f:
            head = json.loads(f.readline())
            calls = [json.loads(ln) for ln in f]
        self.assertEqual(head["requests"], 300)
        self.assertEqual(head["calls"], len(calls))
        self.assertGreater(len(calls), 0)
        # 4 connections: at most 4 requests a call, so at least 75 calls.
        self.assertGreaterEqual(len(calls), 75)
        for c in calls:
            self.assertIn(c[0].upper(), ("EVALSHA", "EVAL"))
            n = int(c[2])
            self.assertGreater(n, 0)
            # KEYS, now, one update per key, and the top set's 3 arguments.
            self.assertEqual(len(c), 3 + n + 1 + n + 3, c)
            self.assertTrue(all(k.startswith("sg:") for k in c[3:3 + n]), c)

        heavier = os.path.join(tmp, "heavier.lua")
        with open(SCRIPT) as src, open(heavier, "w") as out:
            out.write("for _ = 1, 20000 do end\n" + src.read())
        out = self.tool("run", cap, SCRIPT, SCRIPT, heavier)
        rows = LINE.findall(out)
        self.assertEqual(len(rows), 3, out)
        per_call = [int(r[4]) for r in rows]
        per_req = [int(r[2]) for r in rows]
        # A real count: every call runs the whole script on its keys.
        self.assertGreater(per_req[0], 20000, out)
        # The same calls and script: the same count, within 3 %.
        self.assertLess(abs(per_call[0] - per_call[1]), 0.03 * per_call[0], out)
        # 20,000 empty loop turns more a call: at least 60,000 instructions.
        self.assertGreater(per_call[2] - per_call[0], 60000, out)
