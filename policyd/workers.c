/*
 * workers - see workers.h.
 *
 * Processes rather than threads: the daemon has process-wide state (the
 * log, the JSON log, the config pointer, the list timer), so forking after
 * the config is loaded is the small change. The parent keeps no libuv
 * loop, so a child forked at any time starts from a clean libuv state.
 * Signals are blocked in the parent and taken with sigtimedwait(): no
 * handler runs at an awkward moment, and the wait's timeout is the next
 * restart that is due.
 */
#include "workers.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "actions.h"
#include "log.h"
#include "metrics.h"
#include "xalloc.h"

#define WORKERS_BACKOFF_MIN_MS 250    /* first restart of a worker that died */
#define WORKERS_BACKOFF_MAX_MS 30000  /* cap: at most one restart per 30 s per worker */
#define WORKERS_STABLE_MS 30000       /* a worker that lived this long starts the back-off over */
#define WORKERS_STOP_MS 15000         /* bound on a graceful stop, then SIGKILL */
#define WORKERS_START_MS 60000        /* bound on the first start of every worker */

struct worker {
    pid_t pid;                  /* 0 when not running */
    uint64_t started_ms;        /* log_now_ms() at fork */
    uint64_t restart_ms;        /* when to start it again (pid == 0) */
    unsigned backoff_ms;        /* delay before the next restart */
};

static sigset_t workers_sigs;   /* the signals the parent takes */
static int workers_ready_fd[2] = {-1, -1}; /* start-up only: workers write a byte when ready */

/* workers_spawn - fork worker n; the child never returns. */
static void workers_spawn(struct worker *w, unsigned n, struct config *cfg, workers_main_cb fn)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        log_error("cannot fork worker %u: %s; trying again in %u ms", n, strerror(errno),
                  w->backoff_ms);
        w->restart_ms = log_now_ms() + w->backoff_ms;
        w->backoff_ms = w->backoff_ms * 2 > WORKERS_BACKOFF_MAX_MS ? WORKERS_BACKOFF_MAX_MS
                                                                   : w->backoff_ms * 2;
        return;
    }
    if (pid == 0) {
        /* Die with the parent, whatever kills it; if it died before
         * this line, go now. (Not "getppid() == 1": the parent may be
         * a container's process 1.) */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(1);
        log_worker = (int)n;
        metrics_use_slot(n);
        signal(SIGCHLD, SIG_DFL);
        /* The signals stay blocked until the worker's handlers are in
         * place (workers_ready): a SIGHUP or SIGTERM that comes during
         * its start waits instead of killing it. */
        exit(fn(cfg));
    }
    w->pid = pid;
    w->started_ms = log_now_ms();
    log_info("worker %u started: pid=%d", n, (int)pid);
}

static void workers_signal_all(struct worker *ws, unsigned n, int signum)
{
    for (unsigned i = 0; i < n; i++)
        if (ws[i].pid > 0)
            kill(ws[i].pid, signum);
}

static unsigned workers_alive(const struct worker *ws, unsigned n)
{
    unsigned alive = 0;
    for (unsigned i = 0; i < n; i++)
        alive += ws[i].pid > 0;
    return alive;
}

/* workers_describe - "exit 3" or "signal 9" for a wait status. */
static void workers_describe(int status, char *buf, size_t cap)
{
    if (WIFEXITED(status))
        snprintf(buf, cap, "exit %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, cap, "signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
    else
        snprintf(buf, cap, "status 0x%x", (unsigned)status);
}

/* workers_reap - collect dead workers; schedule restarts unless stopping.
 * Returns false if a worker did not stop cleanly while stopping. */
static bool workers_reap(struct worker *ws, unsigned n, bool stopping)
{
    bool clean = true;
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        unsigned i;
        for (i = 0; i < n && ws[i].pid != pid; i++)
            ;
        if (i == n)
            continue;
        struct worker *w = &ws[i];
        w->pid = 0;
        char how[64];
        workers_describe(status, how, sizeof how);
        if (stopping) {
            bool ok = (WIFEXITED(status) && WEXITSTATUS(status) == 0) ||
                      (WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
            if (ok) {
                log_info("worker %u stopped", i);
            } else {
                log_error("worker %u (pid %d) stopped with %s", i, (int)pid, how);
                clean = false;
            }
            continue;
        }
        uint64_t now = log_now_ms();
        if (now - w->started_ms >= WORKERS_STABLE_MS)
            w->backoff_ms = WORKERS_BACKOFF_MIN_MS;
        w->restart_ms = now + w->backoff_ms;
        log_error("worker %u (pid %d) died: %s; restarting in %u ms", i, (int)pid, how,
                  w->backoff_ms);
        w->backoff_ms = w->backoff_ms * 2 > WORKERS_BACKOFF_MAX_MS ? WORKERS_BACKOFF_MAX_MS
                                                                   : w->backoff_ms * 2;
    }
    return clean;
}

void workers_ready(void)
{
    if (log_worker < 0)
        return;
    sigprocmask(SIG_UNBLOCK, &workers_sigs, NULL);
    if (workers_ready_fd[1] >= 0) {
        char b = 1;
        if (write(workers_ready_fd[1], &b, 1) != 1)
            log_warn("cannot tell the parent that this worker is ready: %s", strerror(errno));
        close(workers_ready_fd[1]);
        close(workers_ready_fd[0]);
        workers_ready_fd[0] = workers_ready_fd[1] = -1;
    }
}

/*
 * workers_wait_ready - the first start: wait until every worker is
 * serving, so that a worker that cannot start (a port taken, Redis
 * settings it cannot use) fails the whole start, as one process would,
 * rather than restart for ever. Signals wait (blocked) meanwhile.
 * Returns 0, or -1 with the reason logged.
 */
static int workers_wait_ready(struct worker *ws, unsigned n)
{
    unsigned ready = 0;
    uint64_t deadline = log_now_ms() + WORKERS_START_MS;
    for (unsigned i = 0; i < n; i++)
        if (ws[i].pid == 0)
            return -1; /* fork failed, logged */
    while (ready < n) {
        struct pollfd pfd = {.fd = workers_ready_fd[0], .events = POLLIN};
        if (poll(&pfd, 1, 100) > 0) {
            char buf[64];
            ssize_t got = read(workers_ready_fd[0], buf, sizeof buf);
            if (got > 0)
                ready += (unsigned)got;
        }
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid > 0) {
            for (unsigned i = 0; i < n; i++) {
                if (ws[i].pid == pid) {
                    char how[64];
                    workers_describe(status, how, sizeof how);
                    log_error("worker %u could not start (%s): not starting", i, how);
                    ws[i].pid = 0;
                }
            }
            return -1;
        }
        if (log_now_ms() >= deadline) {
            log_error("only %u of %u workers ready after %d s: not starting", ready, n,
                      WORKERS_START_MS / 1000);
            return -1;
        }
    }
    return 0;
}

/* workers_reload - SIGHUP: check the config here, pass it on if good. */
static void workers_reload(struct config **cfgp, struct worker *ws, unsigned n)
{
    struct config *old = *cfgp;
    struct config_errors errs = {0};
    struct config *cfg = config_load(old->path, &errs);
    if (!cfg) {
        log_error("reload failed, workers keep generation %u: %zu error%s in %s",
                  old->generation, errs.n, errs.n == 1 ? "" : "s", old->path);
        for (size_t i = 0; i < errs.n; i++)
            log_error("%s", errs.msgs[i]);
        config_errors_fini(&errs);
        metrics_own->reload_refusals++;
        return;
    }
    if (cfg->workers != old->workers) {
        /* The new config was checked for its own worker count, not for
         * this one (a memory store is fine with workers: 1). */
        log_error("reload refused, workers keep generation %u: workers: changed from %u to %u, "
                  "which needs a restart", old->generation, old->workers, cfg->workers);
        config_unref(cfg);
        metrics_own->reload_refusals++;
        return;
    }
    cfg->generation = old->generation + 1;
    *cfgp = cfg;
    config_unref(old);
    log_info("reload: config is valid, passing SIGHUP to %u workers", workers_alive(ws, n));
    workers_signal_all(ws, n, SIGHUP);
}

int workers_run(struct config *cfg, workers_main_cb fn)
{
    unsigned n = cfg->workers;
    struct worker *ws = xcalloc(n, sizeof *ws);
    sigemptyset(&workers_sigs);
    int sigs[] = {SIGHUP, SIGTERM, SIGINT, SIGUSR1, SIGCHLD};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaddset(&workers_sigs, sigs[i]);
    sigprocmask(SIG_BLOCK, &workers_sigs, NULL);
    /* The workers open their own JSON log. */
    actions_json_close();
    log_info("starting %u workers: pid=%d", n, (int)getpid());
    if (pipe(workers_ready_fd) < 0) {
        log_error("cannot start workers: pipe: %s", strerror(errno));
        free(ws);
        config_unref(cfg);
        return 1;
    }
    /* The workers' counters, in memory they all see: /metrics (worker 0)
     * sums them. */
    int rc = metrics_share(n);
    if (rc < 0) {
        log_error("cannot start workers: shared metrics: %s", strerror(-rc));
        close(workers_ready_fd[0]);
        close(workers_ready_fd[1]);
        free(ws);
        config_unref(cfg);
        return 1;
    }
    for (unsigned i = 0; i < n; i++) {
        ws[i].backoff_ms = WORKERS_BACKOFF_MIN_MS;
        workers_spawn(&ws[i], i, cfg, fn);
    }
    bool stopping = false, clean = true;
    uint64_t stop_deadline = 0;
    if (workers_wait_ready(ws, n) < 0) {
        /* Stop the ones that did start; the exit code says it failed. */
        stopping = true;
        clean = false;
        stop_deadline = log_now_ms() + WORKERS_STOP_MS;
        workers_signal_all(ws, n, SIGTERM);
    } else {
        log_info("all %u workers serving", n);
    }
    /* Restarted workers do not report. */
    close(workers_ready_fd[0]);
    close(workers_ready_fd[1]);
    workers_ready_fd[0] = workers_ready_fd[1] = -1;
    for (;;) {
        if (!stopping) {
            uint64_t now = log_now_ms();
            for (unsigned i = 0; i < n; i++)
                if (ws[i].pid == 0 && ws[i].restart_ms <= now)
                    workers_spawn(&ws[i], i, cfg, fn);
        } else if (workers_alive(ws, n) == 0) {
            break;
        }
        /* Sleep until a signal, the next restart or the stop deadline. */
        uint64_t now = log_now_ms(), wake = now + 1000;
        for (unsigned i = 0; !stopping && i < n; i++)
            if (ws[i].pid == 0 && ws[i].restart_ms < wake)
                wake = ws[i].restart_ms;
        if (stopping && stop_deadline < wake)
            wake = stop_deadline;
        uint64_t ms = wake > now ? wake - now : 0;
        struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000};
        siginfo_t info;
        int sig = sigtimedwait(&workers_sigs, &info, &ts);
        switch (sig) {
        case SIGHUP:
            if (!stopping)
                workers_reload(&cfg, ws, n);
            break;
        case SIGUSR1:
            workers_signal_all(ws, n, SIGUSR1);
            break;
        case SIGTERM:
        case SIGINT:
            if (!stopping) {
                log_info("signal %d: stopping %u workers", sig, workers_alive(ws, n));
                stopping = true;
                stop_deadline = log_now_ms() + WORKERS_STOP_MS;
                workers_signal_all(ws, n, SIGTERM);
            }
            break;
        default:
            break; /* SIGCHLD or the timeout: reaped below */
        }
        if (!workers_reap(ws, n, stopping))
            clean = false;
        if (stopping && log_now_ms() >= stop_deadline && workers_alive(ws, n) > 0) {
            log_error("stop: %u workers still running after %d s, killing them",
                      workers_alive(ws, n), WORKERS_STOP_MS / 1000);
            workers_signal_all(ws, n, SIGKILL);
            clean = false;
            stop_deadline = UINT64_MAX;
        }
    }
    log_info("all workers stopped");
    free(ws);
    config_unref(cfg);
    return clean ? 0 : 1;
}
