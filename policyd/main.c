/*
 * main - command line, start-up, the event loop.
 *
 *   smtpguard -c FILE        run in the foreground (systemd style)
 *   smtpguard -c FILE -t     check config and rules, print every error
 *   smtpguard explain -c FILE [--fresh] < requests     (explain.h)
 *   smtpguard replay -c FILE RECORDING [--compare OTHER] (replay.h)
 *   smtpguard --version | --help
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "actions.h"
#include "config.h"
#include "explain.h"
#include "log.h"
#include "replay.h"
#include "server.h"
#include "workers.h"

#ifndef SMTPGUARD_VERSION
#define SMTPGUARD_VERSION "0.1.0"
#endif
#define DEFAULT_CONFIG "/etc/smtpguard/smtpguard.yaml"

static void usage(FILE *fp)
{
    fprintf(fp,
            "usage: smtpguard [-c FILE] [-t] [-v]\n"
            "       smtpguard explain -c FILE [--fresh] < requests\n"
            "       smtpguard replay -c FILE RECORDING [--compare OTHER] [--keys N]\n"
            "\n"
            "Postfix policy server that scores clients, senders and SASL users with\n"
            "decaying counters and answers ok, defer, reject ... per its rules.\n"
            "\n"
            "  -c, --config FILE    configuration (default " DEFAULT_CONFIG ")\n"
            "  -t, --check-config   check the configuration and rules, print every\n"
            "                       error as file:line:col, exit 0 if all is well\n"
            "  -v, --verbose        debug logging\n"
            "      --version        print the version\n"
            "  -h, --help           this text\n"
            "\n"
            "Signals: HUP reloads, TERM/INT stop gracefully, USR1 reopens the JSON log.\n");
}

/* main_serve - run the daemon on cfg (takes over its reference) until
 * SIGTERM: the whole process with workers: 1, one worker otherwise. */
static int main_serve(struct config *cfg)
{
    if (log_worker >= 0 && server_apply_log(cfg, server_verbose) == -EINVAL) {
        log_error("cannot open syslog");
        config_unref(cfg);
        return 1;
    }
    uv_loop_t *loop = uv_default_loop();
    struct server srv;
    if (server_start(&srv, loop, cfg) < 0) {
        uv_run(loop, UV_RUN_DEFAULT); /* let the handles close */
        config_unref(srv.cfg);
        uv_loop_close(loop);
        return 1;
    }
    log_info("smtpguard %s ready: generation=%u store=%s counters=%zu points=%zu actions=%zu",
             SMTPGUARD_VERSION, cfg->generation, store_name(srv.store), cfg->rules->n_counters,
             cfg->rules->n_points, cfg->rules->n_actions);
    workers_ready();
    uv_run(loop, UV_RUN_DEFAULT);
    log_info("stopped after %lu requests", srv.requests);
    config_unref(srv.cfg);
    actions_json_close();
    int rc = uv_loop_close(loop);
    if (rc != 0)
        log_error("handles left open at exit (%s)", uv_strerror(rc));
    log_close();
    return rc == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 't'},
        {"verbose", no_argument, NULL, 'v'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    /* Offline tools: their own options. */
    if (argc > 1 && strcmp(argv[1], "explain") == 0)
        return explain_main(argc - 1, argv + 1);
    if (argc > 1 && strcmp(argv[1], "replay") == 0)
        return replay_main(argc - 1, argv + 1);
    const char *path = DEFAULT_CONFIG;
    bool check = false;
    int ch;
    while ((ch = getopt_long(argc, argv, "c:tvfh", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            path = optarg;
            break;
        case 't':
            check = true;
            break;
        case 'v':
            server_verbose = true;
            break;
        case 'f':
            break; /* always in the foreground; accepted for habit */
        case 'V':
            printf("smtpguard %s\n", SMTPGUARD_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "smtpguard: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    struct config_errors errs = {0};
    struct config *cfg = config_load(path, &errs);
    if (!cfg) {
        for (size_t i = 0; i < errs.n; i++)
            fprintf(stderr, "%s\n", errs.msgs[i]);
        fprintf(stderr, "smtpguard: %s: %zu error%s, not %s\n", path, errs.n, errs.n == 1 ? "" : "s",
                check ? "valid" : "starting");
        config_errors_fini(&errs);
        return 1;
    }
    if (check) {
        printf("%s: ok (%zu counters, %zu lists, %zu points rules, %zu action rules)\n", path,
               cfg->rules->n_counters, cfg->rules->n_lists, cfg->rules->n_points,
               cfg->rules->n_actions);
        config_unref(cfg);
        return 0;
    }

    /* A peer that goes away mid-answer must not kill us, nor a file
     * size limit (ulimit -f) on the recording or the JSON log: the write
     * fails (EFBIG) and is reported like a full disk. */
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);
    if (server_apply_log(cfg, server_verbose) == -EINVAL) {
        fprintf(stderr, "smtpguard: cannot open syslog\n");
        config_unref(cfg);
        return 1;
    }

    if (cfg->workers > 1)
        return workers_run(cfg, main_serve);
    return main_serve(cfg);
}
