/*
 * explain - `smtpguard explain -c FILE [--fresh]`: why a request gets its
 * verdict, without changing any stored counter.
 *
 * Reads requests in Postfix's wire format on stdin (name=value lines, an
 * empty line after each; blank lines and lines starting with '#' between
 * requests are skipped) and prints, for each:
 *   - every points rule in order: matched or not, each condition with the
 *     value it looked at, the points it adds to which counter and key;
 *   - every counter concerned: its key, the score before, the points, the
 *     score after (rounded to the counter's precision, as thresholds
 *     compare them);
 *   - every action rule in order: each condition and its outcome, until
 *     the first enforcing match (log-only matches are shown and testing
 *     goes on, as in the daemon);
 *   - the verdict and the exact answer Postfix would get.
 *
 * Scores: against the configured store, read with store_peek (nothing is
 * written; each request is explained against the scores as they are now,
 * so several requests do not add up). With --fresh, against an empty
 * memory store private to this run, where the requests do add up in
 * order, so "the 5th recipient trips >= 5" can be shown from a file; they
 * are taken as arriving at one instant (no decay between them), so the
 * same input always gives the same transcript.
 *
 * Exit status: 0, 1 on a config or input error, 2 on a usage error,
 * 3 when the store cannot be reached (try --fresh).
 */
#ifndef SMTPGUARD_EXPLAIN_H
#define SMTPGUARD_EXPLAIN_H

/* explain_main - argv[0] is "explain". */
int explain_main(int argc, char **argv);

#endif
