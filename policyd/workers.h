/*
 * workers - workers: N: the parent process forks N workers, each a whole
 * daemon of its own (event loop, listeners bound with SO_REUSEPORT, Redis
 * connection, DNS resolver), and only supervises them.
 *
 * At the first start the parent waits until every worker serves; if one
 * cannot (a port taken, say), the others are stopped and workers_run
 * fails, as a single process would. Then it never starts an event loop:
 * it waits for signals with sigtimedwait() and
 *   SIGHUP         loads the config itself first: a broken one is logged
 *                  once, here, and not passed on; a good one is passed to
 *                  every worker, which reloads it as a single daemon does,
 *                  and becomes the config a restarted worker starts with.
 *   SIGTERM/INT    passed on; the workers drain and exit; the parent waits
 *                  for all of them (bounded, then SIGKILL) and returns.
 *   SIGUSR1        passed on (each worker reopens its JSON log).
 *   SIGCHLD        a worker that died unexpectedly is logged and started
 *                  again after a back-off that doubles while it keeps
 *                  dying young (250 ms up to 30 s).
 * Workers log with "w=N " (log_worker) and die with the parent
 * (PR_SET_PDEATHSIG), so a killed parent leaves no process behind.
 */
#ifndef SMTPGUARD_WORKERS_H
#define SMTPGUARD_WORKERS_H

#include "config.h"

/* workers_main_cb - what a worker runs; returns its exit code. Runs in
 * the child with cfg (a reference of its own) and log_worker set. */
typedef int (*workers_main_cb)(struct config *cfg);

/* workers_run - fork cfg->workers workers running fn and supervise them
 * until SIGTERM or SIGINT. Takes over cfg's reference. Returns the
 * parent's exit code: 0 if every worker stopped cleanly. */
int workers_run(struct config *cfg, workers_main_cb fn);

/* workers_ready - in a worker, once it serves (its signal handlers are
 * installed): let the signals in (they are blocked from the fork on, and
 * any that came meanwhile are delivered now) and, at the first start,
 * tell the parent. Does nothing outside a worker. */
void workers_ready(void);

#endif
