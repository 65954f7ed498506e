/*
 * admin - the HTTP admin API and the Prometheus /metrics, on a loopback
 * port or a unix socket (admin: { listen: ... }); off unless configured.
 *
 *   GET  /health                    200 "ok"
 *   GET  /status                    uptime, config generation, store, connections (JSON)
 *   GET  /score?counter=C&key=K     the score of one key now, read-only (JSON)
 *   GET  /top?counter=C[&n=N]       the highest scores of a counter now (JSON)
 *   POST /reset?counter=C&key=K     delete that key (JSON)
 *   POST /reload                    what SIGHUP does (JSON)
 *   GET  /metrics                   Prometheus text format 0.0.4
 *
 * Parameters come from the query string or an urlencoded POST body. K is
 * the key's value as logged ("192.0.2.7", "alice", "alice|example.org"
 * for a two-part key); it is lower-cased where the counter's key is.
 *
 * State changes (POST) need "Authorization: Bearer TOKEN" when
 * admin.token_file (or $SMTPGUARD_ADMIN_TOKEN) gives a token; on a unix
 * socket a peer running as root or as the daemon's user is let in without
 * it (SO_PEERCRED). Without a token, POST on a TCP port is refused.
 * Reads need nothing: the listener is loopback or a socket file.
 *
 * One request per connection (Connection: close); requests are capped in
 * size (ADMIN_MAX_REQUEST), connections in number and in time; a
 * malformed request gets a 400 and is closed. Score, top and reset answer
 * from the store's callback; if the client has gone by then, the answer
 * is dropped. admin_close() closes the listener and every connection; the
 * struct is freed when the last handle has closed.
 */
#ifndef SMTPGUARD_ADMIN_H
#define SMTPGUARD_ADMIN_H

#include <stddef.h>

struct server;
struct admin;

#define ADMIN_MAX_REQUEST 8192      /* bytes of request line, headers and body */
#define ADMIN_MAX_CONNS 32          /* admin connections open at once */
#define ADMIN_TIMEOUT_MS 10000      /* a connection's whole life, at most */

/* admin_open - listen on address for srv. Returns 0 (and *out) or a
 * negative libuv error (logged). */
int admin_open(struct admin **out, struct server *srv, const char *address);
/* admin_close - stop listening, close connections, free when done. */
void admin_close(struct admin *ad);
/* admin_address - what it listens on. */
const char *admin_address(const struct admin *ad);

/* admin_query_get - the value of name in an urlencoded query (pure, for
 * tests): decoded into out (cap bytes), returns its length, -1 when
 * absent, or -2 when malformed (a bad %-escape, a NUL) or too long. */
int admin_query_get(const char *query, size_t qlen, const char *name, char *out, size_t cap);

#endif
