/*
 * replay - `smtpguard replay -c FILE RECORDING [--compare OTHER]`: run a
 * recording (record.h) through a rule set offline and report what the
 * rules would have done.
 *
 * Each request goes through the engine exactly as in the daemon, against
 * an empty memory store of this run, in simulated time: the store's clock
 * is the request's recorded time, so decay behaves as it did on the day
 * and a day of traffic replays in seconds. The report gives
 *   - the verdicts per rule (how many requests each rule decided),
 *   - per enforcing rule, the keys it hit (the key of the first counter
 *     its condition reads, else the client address), when each first
 *     crossed the rule's threshold and how many requests it decided,
 *   - the peak score of every counter, with its key and time.
 * With --compare OTHER, the same requests go through OTHER's rules too
 * (its own memory store, same clock) and the report adds how many requests
 * change verdict, by transition, and which keys change most.
 *
 * Memory is bounded: the recording is streamed line by line; the store is
 * capped by the config's store.memory.max_keys; key tables stop taking new
 * keys at REPLAY_MAX_KEYS (counted as "untracked"). A line that is not a
 * request is reported as FILE:LINE: problem on stderr and skipped.
 * Exit status: 0, 1 on a config or file error, 2 on a usage error.
 */
#ifndef SMTPGUARD_REPLAY_H
#define SMTPGUARD_REPLAY_H

#define REPLAY_MAX_KEYS 200000      /* keys per table, at most */
#define REPLAY_DEFAULT_KEYS 20      /* keys listed per rule without --keys */

/* replay_main - argv[0] is "replay". */
int replay_main(int argc, char **argv);

#endif
