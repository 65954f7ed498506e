#!/usr/bin/env python3
"""run.py - run smtpguard's integration and end-to-end tests.

    python3 test/run.py [--bin PATH] [-k PATTERN]... [-v] [--list] [--only integration|e2e]

Discovers test/integration/test_*.py and test/e2e/test_*.py (unittest),
prints one progress line per test, the daemon/Postfix logs of each failed
test, and ends with exactly "N passed, N failed" (", N skipped" follows
when some were skipped). Exits 1 if anything failed, 2 on a usage error.

Under CI=true a missing redis-server or postfix fails the tests that need
it; elsewhere they are skipped with the reason.
"""

import argparse
import os
import sys
import time
import unittest

TEST_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TEST_DIR)
SUITES = ("integration", "e2e")


class ProgressResult(unittest.TestResult):
    def __init__(self, total, stream, verbose):
        super().__init__()
        self.total = total
        self.n = 0
        self.stream = stream
        self.verbose = verbose
        self.passed = 0
        self.failed_ids = []
        self.t0 = 0.0

    def startTest(self, test):
        super().startTest(test)
        self.n += 1
        self.t0 = time.monotonic()

    def _line(self, test, status, detail=""):
        dt = time.monotonic() - self.t0
        self.stream.write("[%3d/%d] %-70s %s (%.1fs)%s\n"
                          % (self.n, self.total, test.id(), status, dt, detail))
        self.stream.flush()

    def _diag(self, test, err_text):
        self.stream.write("    " + err_text.rstrip().replace("\n", "\n    ") + "\n")
        diag = getattr(test, "diagnostics", None)
        if diag:
            try:
                d = diag()
            except Exception as e:   # noqa: BLE001 - diagnostics are best effort
                d = "(diagnostics failed: %s)" % e
            if d:
                self.stream.write("    " + d.rstrip().replace("\n", "\n    ") + "\n")
        self.stream.flush()

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1
        self._line(test, "ok")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.failed_ids.append(test.id())
        self._line(test, "FAIL")
        self._diag(test, self.failures[-1][1])

    def addError(self, test, err):
        super().addError(test, err)
        # An error in setUpClass & co. comes with a _ErrorHolder, not a test.
        self.failed_ids.append(test.id())
        self._line(test, "ERROR")
        self._diag(test, self.errors[-1][1])

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._line(test, "skipped", ": " + reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self.passed += 1
        self._line(test, "expected failure")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.failed_ids.append(test.id())
        self._line(test, "UNEXPECTED SUCCESS")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self.failed_ids.append(subtest.id())
            self._line(subtest, "FAIL")
            self._diag(test, self._exc_info_to_string(err, test))


def iter_tests(suite):
    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", help="smtpguard binary (default: $SMTPGUARD_BIN or policyd/smtpguard)")
    ap.add_argument("-k", action="append", default=[], metavar="PATTERN",
                    help="only tests whose id contains PATTERN (fnmatch; repeatable)")
    ap.add_argument("--only", choices=SUITES, help="run one suite only")
    ap.add_argument("--list", action="store_true", help="list the tests and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="harness chatter on stderr")
    ap.add_argument("-x", "--failfast", action="store_true", help="stop at the first failure")
    args = ap.parse_args(argv)

    binary = args.bin or os.environ.get("SMTPGUARD_BIN") or os.path.join(ROOT, "policyd", "smtpguard")
    binary = os.path.abspath(binary)
    os.environ["SMTPGUARD_BIN"] = binary
    if args.verbose:
        os.environ["SG_VERBOSE"] = "1"
    sys.path.insert(0, TEST_DIR)

    suite = unittest.TestSuite()
    for name in SUITES:
        if args.only and name != args.only:
            continue
        d = os.path.join(TEST_DIR, name)
        if not os.path.isdir(d):
            continue
        loader = unittest.TestLoader()
        if args.k:
            loader.testNamePatterns = ["*%s*" % k if "*" not in k else k for k in args.k]
        suite.addTests(loader.discover(d, pattern="test_*.py", top_level_dir=d))

    tests = list(iter_tests(suite))
    if args.list:
        for t in tests:
            print(t.id())
        return 0

    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        sys.stderr.write("run.py: daemon binary %s is missing or not executable "
                         "(build it first, or pass --bin)\n" % binary)
        print("0 passed, %d failed" % max(len(tests), 1))
        return 1

    print("smtpguard tests: %d tests, binary %s, CI=%s" % (len(tests), binary,
                                                           os.environ.get("CI", "")))
    sys.stdout.flush()
    t0 = time.monotonic()
    result = ProgressResult(len(tests), sys.stdout, args.verbose)
    result.failfast = args.failfast
    suite.run(result)
    dt = time.monotonic() - t0

    # Loader errors (a test module that does not import) count as failures.
    failed = len(set(result.failed_ids))
    skipped = len(result.skipped)
    if failed:
        print("\nfailed:")
        for i in sorted(set(result.failed_ids)):
            print("  " + i)
    print("time: %.1fs" % dt)
    line = "%d passed, %d failed" % (result.passed, failed)
    if skipped:
        line += ", %d skipped" % skipped
    print(line)
    return 1 if failed or not tests else 0


if __name__ == "__main__":
    sys.exit(main())
