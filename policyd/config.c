/*
 * config - YAML to a validated, immutable struct config. See config.h.
 *
 * How it works: every file (main, then includes) is parsed into a libyaml
 * document and kept until the end, because rules in one file may use
 * counters and lists defined in another. Pass one reads the settings of
 * the main file and the counters and lists of every file; pass two
 * compiles the points and action rules of every file. Each diagnostic
 * names file:line:col (libyaml counts from 0; we add 1) and the setting's
 * path ("points[2].when.client_address"), and loading carries on after an
 * error so that all of them are reported at once.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "config.h"

#include <errno.h>
#include <ctype.h>
#include <glob.h>
#include <limits.h>
#include <math.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <yaml.h>

#include "alertmsg.h"
#include "decay.h"
#include "dnsname.h"
#include "list.h"
#include "smtpc.h"
#include "template.h"
#include "xalloc.h"

#define CONFIG_MAX_FILES 256
#define CONFIG_MAX_DEPTH 16         /* nesting of when: conditions */
/* wait/sleep at most this many seconds: Postfix gives up on a policy
 * server after its timeout (100 s by default, often set to 10 s). */
#define CONFIG_MAX_HOLD 90

struct config_file {
    char *name;                 /* as shown in diagnostics */
    yaml_document_t doc;
    bool loaded;                /* doc must be deleted */
};

struct loader {
    struct config_errors *errs;
    struct config *cfg;
    struct rules *r;
    struct config_file files[CONFIG_MAX_FILES];
    size_t n_files;
    struct config_file *cur;    /* file being read */
    char *basedir;              /* directory of the main file, for relative paths */
};

bool config_allow_files = true;

/* ---- diagnostics ---- */

static void config_error_add(struct config_errors *errs, char *msg)
{
    errs->msgs = xreallocarray(errs->msgs, errs->n + 1, sizeof *errs->msgs);
    errs->msgs[errs->n++] = msg;
}

void config_errors_fini(struct config_errors *errs)
{
    for (size_t i = 0; i < errs->n; i++)
        free(errs->msgs[i]);
    free(errs->msgs);
    errs->msgs = NULL;
    errs->n = 0;
}

__attribute__((format(printf, 4, 5))) static void
config_err(struct loader *ld, const yaml_node_t *node, const char *path, const char *fmt, ...)
{
    char what[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    unsigned long line = node ? (unsigned long)node->start_mark.line + 1 : 1;
    unsigned long col = node ? (unsigned long)node->start_mark.column + 1 : 1;
    const char *file = ld->cur ? ld->cur->name : ld->cfg->path;
    if (path && *path)
        config_error_add(ld->errs, xasprintf("%s:%lu:%lu: %s: %s", file, line, col, path, what));
    else
        config_error_add(ld->errs, xasprintf("%s:%lu:%lu: %s", file, line, col, what));
}

/* ---- YAML node helpers ---- */

static yaml_node_t *config_node(struct loader *ld, int index)
{
    return yaml_document_get_node(&ld->cur->doc, index);
}

static bool config_is_scalar(const yaml_node_t *n)
{
    return n && n->type == YAML_SCALAR_NODE;
}

static const char *config_scalar(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

/* A plain (unquoted) empty, "~" or "null" scalar is YAML's null. */
static bool config_is_null(const yaml_node_t *n)
{
    if (!config_is_scalar(n))
        return false;
    if (n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = config_scalar(n);
    return !*s || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 || strcmp(s, "Null") == 0;
}

static const char *config_node_kind(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_SCALAR_NODE:
        return "a scalar";
    case YAML_SEQUENCE_NODE:
        return "a list";
    case YAML_MAPPING_NODE:
        return "a mapping";
    default:
        return "nothing";
    }
}

static bool config_expect(struct loader *ld, const yaml_node_t *n, yaml_node_type_t type,
                          const char *path)
{
    if (n && n->type == type)
        return true;
    static const char *const want[] = {"nothing", "a scalar", "a list", "a mapping"};
    config_err(ld, n, path, "expected %s, got %s", want[type], n ? config_node_kind(n) : "nothing");
    return false;
}

static char *config_path(const char *base, const char *key)
{
    if (!base || !*base)
        return xstrdup(key);
    return xasprintf("%s.%s", base, key);
}

static char *config_path_index(const char *base, size_t i)
{
    return xasprintf("%s[%zu]", base, i);
}

static bool config_parse_bool(struct loader *ld, const yaml_node_t *n, const char *path, bool *out)
{
    if (config_is_scalar(n)) {
        const char *s = config_scalar(n);
        if (!strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on")) {
            *out = true;
            return true;
        }
        if (!strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off")) {
            *out = false;
            return true;
        }
    }
    config_err(ld, n, path, "expected true or false");
    return false;
}

static bool config_parse_uint(struct loader *ld, const yaml_node_t *n, const char *path,
                              unsigned long min, unsigned long max, unsigned long *out)
{
    if (!config_expect(ld, n, YAML_SCALAR_NODE, path))
        return false;
    const char *s = config_scalar(n);
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (!*s || *end || errno || s[0] == '-' || v < min || v > max) {
        config_err(ld, n, path, "expected a whole number from %lu to %lu, got \"%s\"", min, max, s);
        return false;
    }
    *out = v;
    return true;
}

static bool config_parse_duration(struct loader *ld, const yaml_node_t *n, const char *path,
                                  double min, double *out)
{
    if (!config_expect(ld, n, YAML_SCALAR_NODE, path))
        return false;
    double v;
    if (decay_parse_duration(config_scalar(n), &v) < 0) {
        config_err(ld, n, path, "expected a duration such as 500ms, 30s, 10m, 1h or 2d, got \"%s\"",
                   config_scalar(n));
        return false;
    }
    if (v < min) {
        config_err(ld, n, path, "duration must be at least %gs", min);
        return false;
    }
    *out = v;
    return true;
}

/* Resolve a path from the config relative to the main file's directory. */
static char *config_resolve_path(struct loader *ld, const char *p)
{
    if (p[0] == '/' || !ld->basedir)
        return xstrdup(p);
    return xasprintf("%s/%s", ld->basedir, p);
}

/* Iterate a mapping: calls fn(key, value node, key node) for each pair. */
#define CONFIG_FOR_PAIRS(ld, map, pair)                                                            \
    for (yaml_node_pair_t *pair = (map)->data.mapping.pairs.start;                                 \
         pair < (map)->data.mapping.pairs.top; pair++)
#define CONFIG_FOR_ITEMS(ld, seq, item)                                                            \
    for (yaml_node_item_t *item = (seq)->data.sequence.items.start;                                \
         item < (seq)->data.sequence.items.top; item++)

/* The key of a pair as a string, or NULL (with an error) if not a scalar. */
static const char *config_pair_key(struct loader *ld, yaml_node_pair_t *pair, const char *path,
                                   yaml_node_t **key_node)
{
    yaml_node_t *k = config_node(ld, pair->key);
    *key_node = k;
    if (!config_is_scalar(k)) {
        config_err(ld, k, path, "keys must be plain names");
        return NULL;
    }
    /* Settings are compared as C strings: a key with a NUL in it would
     * pass the duplicate check and then stand for the key before it. */
    if (strlen(config_scalar(k)) != k->data.scalar.length) {
        config_err(ld, k, path, "a key with a NUL byte in it");
        return NULL;
    }
    return config_scalar(k);
}

static void config_unknown_key(struct loader *ld, yaml_node_t *k, const char *path,
                               const char *key, const char *known)
{
    config_err(ld, k, path, "unknown setting \"%s\" (known: %s)", key, known);
}

/* The `when:` keys of DNS checks. */
static const char *const config_dns_keys[] = {"dnsbl", "rhsbl", "dnswl", "rdns", "sender_mx",
                                              "helo_resolves", "country", NULL};

static bool config_is_dns_key(const char *key)
{
    for (size_t i = 0; config_dns_keys[i]; i++)
        if (!strcmp(key, config_dns_keys[i]))
            return true;
    return false;
}

/* ---- file loading ---- */

/* config_check_duplicates - YAML lets a mapping repeat a key and keeps
 * the last; for a config that hides a typo or a half-edited rule, so
 * every repeated key of every mapping is an error. */
static void config_check_duplicates(struct loader *ld, struct config_file *f)
{
    for (yaml_node_t *n = f->doc.nodes.start; n < f->doc.nodes.top; n++) {
        if (n->type != YAML_MAPPING_NODE)
            continue;
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
            yaml_node_t *k = yaml_document_get_node(&f->doc, p->key);
            if (!k || k->type != YAML_SCALAR_NODE)
                continue;
            for (yaml_node_pair_t *q = n->data.mapping.pairs.start; q < p; q++) {
                yaml_node_t *e = yaml_document_get_node(&f->doc, q->key);
                if (e && e->type == YAML_SCALAR_NODE && e->data.scalar.length == k->data.scalar.length &&
                    memcmp(e->data.scalar.value, k->data.scalar.value, k->data.scalar.length) == 0) {
                    config_error_add(ld->errs,
                                     xasprintf("%s:%lu:%lu: \"%s\" is given twice in this mapping (first at line %lu)",
                                               f->name, (unsigned long)k->start_mark.line + 1,
                                               (unsigned long)k->start_mark.column + 1,
                                               (const char *)k->data.scalar.value,
                                               (unsigned long)e->start_mark.line + 1));
                    break;
                }
            }
        }
    }
}

/*
 * config_expanded - how many nodes the loader visits from node index when
 * aliases are followed (an alias is the anchored node itself, visited
 * again at each use), counting no further than limit; limit + 1 for a
 * nesting deeper than CONFIG_MAX_NESTING.
 */
#define CONFIG_MAX_NESTING 100
#define CONFIG_MAX_ALIAS_NODES 100000 /* nodes that aliases may add */
static size_t config_expanded(yaml_document_t *doc, int index, size_t limit, int depth)
{
    yaml_node_t *n = yaml_document_get_node(doc, index);
    size_t count = 1;

    if (!n)
        return 0;
    if (depth > CONFIG_MAX_NESTING)
        return limit + 1;
    if (n->type == YAML_SEQUENCE_NODE) {
        for (yaml_node_item_t *i = n->data.sequence.items.start;
             i < n->data.sequence.items.top && count <= limit; i++)
            count += config_expanded(doc, *i, limit - count, depth + 1);
    } else if (n->type == YAML_MAPPING_NODE) {
        for (yaml_node_pair_t *p = n->data.mapping.pairs.start;
             p < n->data.mapping.pairs.top && count <= limit; p++) {
            count += config_expanded(doc, p->key, limit - count, depth + 1);
            if (count <= limit)
                count += config_expanded(doc, p->value, limit - count, depth + 1);
        }
    }
    return count;
}

/* config_check_size - aliases (*name) may not multiply the document past
 * CONFIG_MAX_ALIAS_NODES more nodes than it holds: a few hundred bytes of
 * nested aliases expand to millions of rules (gigabytes, and a reload
 * that stalls the daemon). */
static void config_check_size(struct loader *ld, struct config_file *f)
{
    size_t held = (size_t)(f->doc.nodes.top - f->doc.nodes.start);
    size_t limit = held + CONFIG_MAX_ALIAS_NODES;

    if (config_expanded(&f->doc, 1, limit, 0) > limit)
        config_error_add(ld->errs,
                         xasprintf("%s: too large once its aliases are expanded (more than %zu "
                                   "nodes, or nested more than %d deep): refer to a list by "
                                   "name (lists:) rather than repeat it through aliases",
                                   f->name, limit, CONFIG_MAX_NESTING));
}

/* config_yaml_error - the parser's syntax error, at its place in f. */
static void config_yaml_error(struct loader *ld, const struct config_file *f,
                              const yaml_parser_t *parser)
{
    config_error_add(ld->errs,
                     xasprintf("%s:%lu:%lu: YAML syntax error: %s%s%s", f->name,
                               (unsigned long)parser->problem_mark.line + 1,
                               (unsigned long)parser->problem_mark.column + 1,
                               parser->problem ? parser->problem : "unknown problem",
                               parser->context ? " " : "", parser->context ? parser->context : ""));
}

static int config_parse_yaml(struct loader *ld, struct config_file *f, const char *text, size_t len)
{
    yaml_parser_t parser;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    int ok = yaml_parser_load(&parser, &f->doc);
    if (!ok) {
        config_yaml_error(ld, f, &parser);
        yaml_parser_delete(&parser);
        return -EINVAL;
    }
    f->loaded = true;
    /* A second document in one file would be ignored silently: refuse. */
    yaml_document_t extra;
    if (yaml_parser_load(&parser, &extra)) {
        yaml_node_t *root = yaml_document_get_root_node(&extra);
        if (root)
            config_error_add(ld->errs,
                             xasprintf("%s:%lu:%lu: a second YAML document (after \"---\"); put everything in one",
                                       f->name, (unsigned long)root->start_mark.line + 1,
                                       (unsigned long)root->start_mark.column + 1));
        yaml_document_delete(&extra);
    } else {
        /* A broken second document is an error too, not ignored. */
        config_yaml_error(ld, f, &parser);
    }
    yaml_parser_delete(&parser);
    config_check_duplicates(ld, f);
    config_check_size(ld, f);
    return 0;
}

static char *config_read_file(const char *path, size_t *len, int *err)
{
    if (!config_allow_files) {
        *err = EPERM;
        return NULL;
    }
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        *err = errno;
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = xmalloc(cap);
    for (;;) {
        size_t got = fread(buf + n, 1, cap - n, fp);
        n += got;
        if (n < cap)
            break;
        if (cap >= (size_t)64 << 20) { /* a 64 MiB config is a mistake */
            free(buf);
            fclose(fp);
            *err = EFBIG;
            return NULL;
        }
        cap *= 2;
        buf = xrealloc(buf, cap);
    }
    if (ferror(fp)) {
        *err = errno ? errno : EIO;
        free(buf);
        fclose(fp);
        return NULL;
    }
    fclose(fp);
    *len = n;
    return buf;
}

static struct config_file *config_add_file(struct loader *ld, const char *name, const char *text,
                                           size_t len)
{
    if (ld->n_files >= CONFIG_MAX_FILES) {
        config_error_add(ld->errs, xasprintf("%s: more than %d included files", name,
                                             CONFIG_MAX_FILES));
        return NULL;
    }
    struct config_file *f = &ld->files[ld->n_files++];
    memset(f, 0, sizeof *f);
    f->name = xstrdup(name);
    if (config_parse_yaml(ld, f, text, len) < 0)
        return NULL;
    return f;
}

static struct config_file *config_load_file(struct loader *ld, const char *path,
                                            const yaml_node_t *from, const char *from_path)
{
    size_t len;
    int err = 0;
    char *text = config_read_file(path, &len, &err);
    if (!text) {
        if (from)
            config_err(ld, from, from_path, "cannot read %s: %s", path, strerror(err));
        else
            config_error_add(ld->errs, xasprintf("%s: cannot read: %s", path, strerror(err)));
        return NULL;
    }
    struct config_file *f = config_add_file(ld, path, text, len);
    free(text);
    return f;
}

/* The root mapping of the current file, or NULL for an empty file. */
static yaml_node_t *config_root(struct loader *ld)
{
    yaml_node_t *root = yaml_document_get_root_node(&ld->cur->doc);
    if (!root || config_is_null(root))
        return NULL;
    if (!config_expect(ld, root, YAML_MAPPING_NODE, ""))
        return NULL;
    return root;
}

/* ---- settings of the main file ---- */

static void config_parse_listen(struct loader *ld, yaml_node_t *n, const char *path)
{
    struct config *cfg = ld->cfg;
    /* One address may be written without a list. */
    if (!config_is_scalar(n) && !config_expect(ld, n, YAML_SEQUENCE_NODE, path))
        return;
    yaml_node_t *single = config_is_scalar(n) ? n : NULL;
    size_t count = single ? 1 : (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (count == 0) {
        config_err(ld, n, path, "at least one address is needed");
        return;
    }
    if (count > CONFIG_MAX_LISTEN) {
        config_err(ld, n, path, "at most %d addresses", CONFIG_MAX_LISTEN);
        return;
    }
    for (size_t i = 0; i < cfg->n_listen; i++)
        free(cfg->listen[i]);
    cfg->n_listen = 0;
    for (size_t i = 0; i < count; i++) {
        yaml_node_t *item = single ? single : config_node(ld, n->data.sequence.items.start[i]);
        char *ipath = config_path_index(path, i);
        if (config_expect(ld, item, YAML_SCALAR_NODE, ipath)) {
            const char *s = config_scalar(item);
            bool ok;
            if (strncmp(s, "unix:", 5) == 0) {
                ok = s[5] == '/' && strlen(s + 5) < 100; /* sun_path */
            } else {
                const char *colon = strrchr(s, ':');
                struct ipaddr ip;
                ok = colon && colon[1];
                if (ok) {
                    char *end;
                    long port = strtol(colon + 1, &end, 10);
                    ok = !*end && port > 0 && port < 65536 &&
                         ipaddr_parse(s, (size_t)(colon - s), &ip) == 0;
                }
            }
            if (ok)
                cfg->listen[cfg->n_listen++] = xstrdup(s);
            else
                config_err(ld, item, ipath,
                           "expected \"IP:PORT\", \"[IPv6]:PORT\" or \"unix:/absolute/path\", got \"%s\"",
                           s);
        }
        free(ipath);
    }
}

static void config_parse_clients(struct loader *ld, yaml_node_t *n, const char *path)
{
    if (!config_expect(ld, n, YAML_SEQUENCE_NODE, path))
        return;
    struct cidr_set *set = cidr_set_new();
    size_t i = 0;
    CONFIG_FOR_ITEMS(ld, n, it) {
        yaml_node_t *item = config_node(ld, *it);
        char *ipath = config_path_index(path, i++);
        if (config_expect(ld, item, YAML_SCALAR_NODE, ipath)) {
            struct cidr net;
            bool host_bits = false;
            const char *s = config_scalar(item);
            if (cidr_parse(s, strlen(s), &net, &host_bits) < 0)
                config_err(ld, item, ipath, "expected an IP address or network, got \"%s\"", s);
            else
                cidr_set_add(set, &net);
            if (host_bits)
                log_warn("%s:%lu: %s: host bits set in \"%s\"", ld->cur->name,
                         (unsigned long)item->start_mark.line + 1, ipath, s);
        }
        free(ipath);
    }
    cidr_set_finish(set);
    if (ld->cfg->clients)
        cidr_set_free(ld->cfg->clients);
    ld->cfg->clients = set;
}

/* A row of the scalar-settings table of limits. */
struct config_limit_row {
    const char *name;
    enum { LIMIT_SIZE, LIMIT_UINT, LIMIT_DURATION } type;
    size_t offset;              /* into struct config_limits */
    unsigned long min;
    unsigned long max;
};

static const struct config_limit_row config_limit_rows[] = {
    {"max_line", LIMIT_SIZE, offsetof(struct config_limits, protocol.max_line), 64, 1 << 20},
    {"max_request", LIMIT_SIZE, offsetof(struct config_limits, protocol.max_request), 256, 16 << 20},
    {"max_attrs", LIMIT_UINT, offsetof(struct config_limits, protocol.max_attrs), 8, 10000},
    {"idle_timeout", LIMIT_DURATION, offsetof(struct config_limits, idle_timeout), 1, 86400},
    {"max_connections", LIMIT_UINT, offsetof(struct config_limits, max_connections), 1, 1000000},
};

static void config_parse_limits(struct loader *ld, yaml_node_t *n, const char *path)
{
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key)
            continue;
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        const struct config_limit_row *row = NULL;
        for (size_t i = 0; i < sizeof config_limit_rows / sizeof config_limit_rows[0]; i++)
            if (!strcmp(config_limit_rows[i].name, key))
                row = &config_limit_rows[i];
        char *field = row ? (char *)&ld->cfg->limits + row->offset : NULL;
        unsigned long u;
        double d;
        if (!row)
            config_unknown_key(ld, k, path, key,
                               "max_line, max_request, max_attrs, idle_timeout, max_connections");
        else if (row->type == LIMIT_SIZE && config_parse_uint(ld, v, kpath, row->min, row->max, &u))
            *(size_t *)(void *)field = u;
        else if (row->type == LIMIT_UINT && config_parse_uint(ld, v, kpath, row->min, row->max, &u))
            *(unsigned *)(void *)field = (unsigned)u;
        else if (row->type == LIMIT_DURATION && config_parse_duration(ld, v, kpath, (double)row->min, &d)) {
            if (d > (double)row->max)
                config_err(ld, v, kpath, "at most %lus", row->max);
            else
                *(double *)(void *)field = d;
        }
        free(kpath);
    }
    if (ld->cfg->limits.protocol.max_line + 1 > ld->cfg->limits.protocol.max_request)
        config_err(ld, n, path, "max_line must be smaller than max_request");
}

static char *config_read_password(struct loader *ld, yaml_node_t *n, const char *path)
{
    char *file = config_resolve_path(ld, config_scalar(n));
    struct stat st;
    char *pw = NULL;
    if (!config_allow_files) {
        config_err(ld, n, path, "password files are disabled here");
    } else if (stat(file, &st) < 0) {
        config_err(ld, n, path, "cannot read %s: %s", file, strerror(errno));
    } else if (st.st_mode & S_IRWXO) {
        config_err(ld, n, path,
                   "%s is accessible to other users; chmod o-rwx it (a password must stay secret)",
                   file);
    } else {
        size_t len;
        int err = 0;
        pw = config_read_file(file, &len, &err);
        if (!pw) {
            config_err(ld, n, path, "cannot read %s: %s", file, strerror(err));
        } else {
            /* The first line is the password; a trailing newline is not part of it. */
            pw = xrealloc(pw, len + 1);
            pw[len] = '\0';
            pw[strcspn(pw, "\r\n")] = '\0';
        }
    }
    free(file);
    return pw;
}

static void config_parse_redis(struct loader *ld, yaml_node_t *n, const char *path)
{
    struct store_config *sc = &ld->cfg->store;
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return;
    const char *password_env = NULL;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key)
            continue;
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        unsigned long u;
        double d;
        if (!strcmp(key, "address")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                const char *s = config_scalar(v);
                if ((strncmp(s, "unix:/", 6) != 0 && !strchr(s, ':')) || !*s)
                    config_err(ld, v, kpath, "expected \"host:port\" or \"unix:/path\", got \"%s\"", s);
                free(sc->redis_address);
                sc->redis_address = xstrdup(s);
            }
        } else if (!strcmp(key, "db")) {
            if (config_parse_uint(ld, v, kpath, 0, 1000000, &u))
                sc->redis_db = (int)u;
        } else if (!strcmp(key, "password_file")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                char *pw = config_read_password(ld, v, kpath);
                if (pw) {
                    free(sc->redis_password);
                    sc->redis_password = pw;
                }
            }
        } else if (!strcmp(key, "password_env")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath))
                password_env = config_scalar(v);
        } else if (!strcmp(key, "prefix")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                free(sc->prefix);
                sc->prefix = xstrdup(config_scalar(v));
            }
        } else if (!strcmp(key, "timeout")) {
            if (config_parse_duration(ld, v, kpath, 0.001, &d)) {
                if (d > 60)
                    config_err(ld, v, kpath, "at most 60s (Postfix waits for the answer)");
                sc->timeout_ms = (unsigned)ceil(d * 1000);
            }
        } else {
            config_unknown_key(ld, k, path, key,
                               "address, db, password_file, password_env, prefix, timeout");
        }
        free(kpath);
    }
    if (!sc->redis_password) {
        const char *env = getenv(password_env ? password_env : "SMTPGUARD_REDIS_PASSWORD");
        if (env && *env)
            sc->redis_password = xstrdup(env);
        else if (password_env)
            config_err(ld, n, path, "password_env: environment variable %s is not set", password_env);
    }
}

/* on_error: a verdict word or a Postfix action text with a 4xx code. */
static void config_parse_on_error(struct loader *ld, yaml_node_t *n, const char *path)
{
    if (!config_expect(ld, n, YAML_SCALAR_NODE, path))
        return;
    const char *s = config_scalar(n);
    char *action = NULL;
    if (!strcasecmp(s, "dunno"))
        action = xstrdup("DUNNO");
    else if (!strcasecmp(s, "defer"))
        action = xstrdup("DEFER_IF_PERMIT 4.3.0 Policy service temporarily unavailable");
    else if (!strcasecmp(s, "permit") || !strcasecmp(s, "ok"))
        action = xstrdup("OK");
    else if (s[0] == '4' && strlen(s) > 4 && s[1] >= '0' && s[1] <= '9' && s[2] >= '0' &&
             s[2] <= '9' && s[3] == ' ') {
        char clean[512];
        template_sanitize(s, strlen(s), clean, sizeof clean);
        action = xstrdup(clean);
    } else {
        config_err(ld, n, path, "expected dunno, defer, permit or \"4NN text\", got \"%s\"", s);
        return;
    }
    free(ld->cfg->on_error);
    ld->cfg->on_error = action;
}

/* store.top: { floor: POINTS, size: N } - the top set behind "top keys". */
static void config_parse_top(struct loader *ld, yaml_node_t *n, const char *path)
{
    struct store_config *sc = &ld->cfg->store;
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key)
            continue;
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        unsigned long u;
        if (!strcmp(key, "floor")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                char *end;
                double d = strtod(config_scalar(v), &end);
                if (!*config_scalar(v) || *end || !(d >= 0) || d > 1e12)
                    config_err(ld, v, kpath, "expected points, 0 (off) or more, got \"%s\"",
                               config_scalar(v));
                else
                    sc->top_floor = d;
            }
        } else if (!strcmp(key, "size")) {
            if (config_parse_uint(ld, v, kpath, 1, STORE_MAX_TOP, &u))
                sc->top_size = (unsigned)u;
        } else {
            config_unknown_key(ld, k, path, key, "floor, size");
        }
        free(kpath);
    }
}

static void config_parse_store(struct loader *ld, yaml_node_t *n, const char *path)
{
    struct store_config *sc = &ld->cfg->store;
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return;
    yaml_node_t *redis = NULL;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key)
            continue;
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        if (!strcmp(key, "backend")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                if (!strcmp(config_scalar(v), "memory"))
                    sc->backend = STORE_BACKEND_MEMORY;
                else if (!strcmp(config_scalar(v), "redis"))
                    sc->backend = STORE_BACKEND_REDIS;
                else
                    config_err(ld, v, kpath, "expected memory or redis, got \"%s\"", config_scalar(v));
            }
        } else if (!strcmp(key, "redis")) {
            redis = v;
            config_parse_redis(ld, v, kpath);
        } else if (!strcmp(key, "memory")) {
            if (config_expect(ld, v, YAML_MAPPING_NODE, kpath)) {
                CONFIG_FOR_PAIRS(ld, v, mp) {
                    yaml_node_t *mk;
                    const char *mkey = config_pair_key(ld, mp, kpath, &mk);
                    if (!mkey)
                        continue;
                    char *mpath = config_path(kpath, mkey);
                    unsigned long u;
                    if (!strcmp(mkey, "max_keys")) {
                        if (config_parse_uint(ld, config_node(ld, mp->value), mpath, 100, 100000000, &u))
                            sc->memory_max_keys = u;
                    } else {
                        config_unknown_key(ld, mk, kpath, mkey, "max_keys");
                    }
                    free(mpath);
                }
            }
        } else if (!strcmp(key, "on_error")) {
            config_parse_on_error(ld, v, kpath);
        } else if (!strcmp(key, "top")) {
            config_parse_top(ld, v, kpath);
        } else {
            config_unknown_key(ld, k, path, key, "backend, redis, memory, on_error, top");
        }
        free(kpath);
    }
    if (sc->backend == STORE_BACKEND_REDIS && !redis && !sc->redis_address)
        config_err(ld, n, path, "backend redis needs a redis: { address: ... } section");
}

/* log.stream: a key name, or { key:, maxlen:, decisions: }. The
 * connection is store.redis's (address, db, password), whatever the
 * backend. */
static void config_parse_stream(struct loader *ld, yaml_node_t *n, const char *path)
{
    struct config_log *lg = &ld->cfg->log;
    if (config_is_scalar(n)) {
        free(lg->stream_key);
        lg->stream_key = config_is_null(n) || !*config_scalar(n) ? NULL : xstrdup(config_scalar(n));
        return;
    }
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return;
    free(lg->stream_key);
    lg->stream_key = xstrdup("smtpguard:events");
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key)
            continue;
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        unsigned long u;
        bool b;
        if (!strcmp(key, "key")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                if (!*config_scalar(v))
                    config_err(ld, v, kpath, "a stream key may not be empty");
                free(lg->stream_key);
                lg->stream_key = xstrdup(config_scalar(v));
            }
        } else if (!strcmp(key, "maxlen")) {
            if (config_parse_uint(ld, v, kpath, 100, 1000000000, &u))
                lg->stream_maxlen = u;
        } else if (!strcmp(key, "decisions")) {
            if (config_parse_bool(ld, v, kpath, &b))
                lg->stream_decisions = b;
        } else {
            config_unknown_key(ld, k, path, key, "key, maxlen, decisions");
        }
        free(kpath);
    }
}

static void config_parse_log(struct loader *ld, yaml_node_t *n, const char *path)
{
    struct config_log *lg = &ld->cfg->log;
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key)
            continue;
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        bool b;
        if (!strcmp(key, "syslog")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                const char *s = config_scalar(v);
                free(lg->syslog);
                lg->syslog = NULL;
                if (!strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "none") ||
                    config_is_null(v))
                    ;
                else if (!log_facility_valid(s))
                    config_err(ld, v, kpath,
                               "unknown syslog facility \"%s\" (mail, daemon, user, local0-local7, or none)",
                               s);
                else
                    lg->syslog = xstrdup(s);
            }
        } else if (!strcmp(key, "stderr")) {
            if (config_parse_bool(ld, v, kpath, &b))
                lg->to_stderr = b;
        } else if (!strcmp(key, "level")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath) &&
                log_level_parse(config_scalar(v), &lg->level) < 0)
                config_err(ld, v, kpath, "expected error, warn, info or debug");
        } else if (!strcmp(key, "json")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                free(lg->json);
                lg->json = config_is_null(v) ? NULL : config_resolve_path(ld, config_scalar(v));
            }
        } else if (!strcmp(key, "stream")) {
            config_parse_stream(ld, v, kpath);
        } else {
            config_unknown_key(ld, k, path, key, "syslog, stderr, level, json, stream");
        }
        free(kpath);
    }
}

/* ---- dns: ---- */

/* "IP", "IP:port", "[v6]:port" or a bare IPv6 address: what c-ares's
 * ares_set_servers_ports_csv takes. */
static bool config_valid_dns_server(const char *s)
{
    struct ipaddr ip;
    size_t len = strlen(s);
    if (ipaddr_parse(s, len, &ip) == 0 && s[0] != '[')
        return true;
    const char *colon = s[0] == '[' ? strstr(s, "]:") : strrchr(s, ':');
    if (!colon)
        return false;
    const char *port = colon + (s[0] == '[' ? 2 : 1);
    char *end;
    long p = strtol(port, &end, 10);
    if (!*port || *end || p <= 0 || p > 65535)
        return false;
    size_t hlen = (size_t)(colon - s) + (s[0] == '[' ? 1 : 0);
    /* "[IPv6]:port" or "IPv4:port": c-ares takes no other form. */
    return ipaddr_parse(s, hlen, &ip) == 0 && ip.family == (s[0] == '[' ? AF_INET6 : AF_INET);
}

/* A DNS zone as written in the config: a valid name with at least one
 * dot, lower-cased; NULL (with an error) otherwise. */
static char *config_dns_zone(struct loader *ld, yaml_node_t *n, const char *path)
{
    if (!config_expect(ld, n, YAML_SCALAR_NODE, path))
        return NULL;
    char name[DNSNAME_MAX + 1];
    const char *s = config_scalar(n);
    struct ipaddr ip;
    int len = dnsname_normalize(s, n->data.scalar.length, name, sizeof name);
    if (len < 0 || !strchr(name, '.') || ipaddr_parse(s, strlen(s), &ip) == 0) {
        config_err(ld, n, path,
                   "expected a DNS zone such as zen.example.org (letters, digits, '-', dots; A-labels for international names), got \"%s\"",
                   s);
        return NULL;
    }
    /* The longest reversed IPv6 address (63 characters + '.') must fit. */
    if (len > DNSNAME_MAX - 64) {
        config_err(ld, n, path, "zone name too long for reversed IPv6 addresses");
        return NULL;
    }
    return xstrdup(name);
}

static void config_parse_dns(struct loader *ld, yaml_node_t *n, const char *path)
{
    struct dns_config *dc = &ld->cfg->dns;
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key)
            continue;
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        unsigned long u;
        double d;
        if (!strcmp(key, "servers")) {
            yaml_node_t *single = config_is_scalar(v) ? v : NULL;
            if (single || config_expect(ld, v, YAML_SEQUENCE_NODE, kpath)) {
                /* The servers only: dns_config_fini would also drop a
                 * country_zone written before them. */
                for (size_t i = 0; i < dc->n_servers; i++)
                    free(dc->servers[i]);
                dc->n_servers = 0;
                size_t count = single ? 1 : (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
                if (count > DNS_MAX_SERVERS)
                    config_err(ld, v, kpath, "at most %d servers", DNS_MAX_SERVERS);
                for (size_t i = 0; i < count && i < DNS_MAX_SERVERS; i++) {
                    yaml_node_t *item = single ? single : config_node(ld, v->data.sequence.items.start[i]);
                    char *ipath = config_path_index(kpath, i);
                    if (config_expect(ld, item, YAML_SCALAR_NODE, ipath)) {
                        if (config_valid_dns_server(config_scalar(item)))
                            dc->servers[dc->n_servers++] = xstrdup(config_scalar(item));
                        else
                            config_err(ld, item, ipath,
                                       "expected \"IP\", \"IP:PORT\" or \"[IPv6]:PORT\", got \"%s\"",
                                       config_scalar(item));
                    }
                    free(ipath);
                }
            }
        } else if (!strcmp(key, "timeout")) {
            if (config_parse_duration(ld, v, kpath, 0.001, &d)) {
                if (d > 30)
                    config_err(ld, v, kpath, "at most 30s (Postfix waits for the answer)");
                else
                    dc->timeout_ms = (unsigned)ceil(d * 1000);
            }
        } else if (!strcmp(key, "tries")) {
            if (config_parse_uint(ld, v, kpath, 1, 5, &u))
                dc->tries = (unsigned)u;
        } else if (!strcmp(key, "ttl_floor") || !strcmp(key, "ttl_ceiling") ||
                   !strcmp(key, "negative_ttl")) {
            if (config_parse_duration(ld, v, kpath, 0, &d)) {
                if (d > 7 * 86400)
                    config_err(ld, v, kpath, "at most 7d");
                /* Whole seconds, rounded up: 900ms must not become 0
                 * (no caching at all). */
                else if (!strcmp(key, "ttl_floor"))
                    dc->ttl_floor_s = (uint32_t)ceil(d);
                else if (!strcmp(key, "ttl_ceiling"))
                    dc->ttl_ceiling_s = (uint32_t)ceil(d);
                else
                    dc->negative_ttl_s = (uint32_t)ceil(d);
            }
        } else if (!strcmp(key, "cache_size")) {
            if (config_parse_uint(ld, v, kpath, 16, 10000000, &u))
                dc->cache_size = u;
        } else if (!strcmp(key, "max_inflight")) {
            if (config_parse_uint(ld, v, kpath, 1, 100000, &u))
                dc->max_inflight = (unsigned)u;
        } else if (!strcmp(key, "country_zone")) {
            char *z = config_dns_zone(ld, v, kpath);
            if (z) {
                free(dc->country_zone);
                dc->country_zone = z;
            }
        } else {
            config_unknown_key(ld, k, path, key,
                               "servers, timeout, tries, ttl_floor, ttl_ceiling, negative_ttl, cache_size, max_inflight, country_zone");
        }
        free(kpath);
    }
    if (dc->ttl_floor_s > dc->ttl_ceiling_s)
        config_err(ld, n, path, "ttl_floor (%us) is above ttl_ceiling (%us)", dc->ttl_floor_s,
                   dc->ttl_ceiling_s);
    /* Questions in flight hold cache slots; eviction needs some left. */
    if (dc->max_inflight >= dc->cache_size)
        config_err(ld, n, path, "max_inflight (%u) must be below cache_size (%zu)",
                   dc->max_inflight, dc->cache_size);
}

/* admin: { listen: ADDRESS, token_file: PATH } */
static void config_parse_admin(struct loader *ld, yaml_node_t *n, const char *path)
{
    struct config_admin *ad = &ld->cfg->admin;
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key)
            continue;
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        if (!strcmp(key, "listen")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                const char *s = config_scalar(v);
                free(ad->listen);
                ad->listen = NULL;
                if (config_is_null(v))
                    ;
                else if (!strncmp(s, "unix:/", 6))
                    ad->listen = xstrdup(s);
                else if (!strncmp(s, "127.", 4) || !strncmp(s, "[::1]:", 6)) {
                    const char *colon = strrchr(s, ':');
                    char *end;
                    long port = colon ? strtol(colon + 1, &end, 10) : 0;
                    if (!colon || !colon[1] || *end || port < 1 || port > 65535)
                        config_err(ld, v, kpath, "expected \"127.0.0.1:PORT\", \"[::1]:PORT\" or "
                                   "\"unix:/path\", got \"%s\"", s);
                    else
                        ad->listen = xstrdup(s);
                } else
                    config_err(ld, v, kpath,
                               "the admin API listens on loopback (127.0.0.0/8, [::1]) or a unix "
                               "socket only, got \"%s\"", s);
            }
        } else if (!strcmp(key, "token_file")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                char *tok = config_read_password(ld, v, kpath);
                /* HTTP drops the blanks around a header's value, and a
                 * Bearer token is printable ASCII without blanks: a token
                 * that is not could never be sent, and would lock every
                 * change out. */
                size_t tlen = tok ? strlen(tok) : 0;
                while (tlen > 0 && (tok[tlen - 1] == ' ' || tok[tlen - 1] == '\t'))
                    tok[--tlen] = '\0';
                size_t lead = tok ? strspn(tok, " \t") : 0;
                if (tok && lead)
                    memmove(tok, tok + lead, tlen - lead + 1);
                bool printable = true;
                for (const char *q = tok; q && *q; q++)
                    printable &= *q > ' ' && *q < 0x7f;
                if (tok && !*tok) {
                    config_err(ld, v, kpath, "the token file is empty");
                    free(tok);
                } else if (tok && !printable) {
                    config_err(ld, v, kpath,
                               "the token must be printable ASCII without blanks (as a Bearer "
                               "token in an HTTP header)");
                    free(tok);
                } else if (tok) {
                    free(ad->token);
                    ad->token = tok;
                }
            }
        } else {
            config_unknown_key(ld, k, path, key, "listen, token_file");
        }
        free(kpath);
    }
    if (!ad->token) {
        const char *env = getenv("SMTPGUARD_ADMIN_TOKEN");
        if (env && *env)
            ad->token = xstrdup(env);
    }
}

/* config_parse_size - "100M", "1G", "512k", bytes. */
static bool config_parse_size(struct loader *ld, yaml_node_t *v, const char *path,
                              unsigned long long *out)
{
    if (!config_expect(ld, v, YAML_SCALAR_NODE, path))
        return false;
    const char *s = config_scalar(v);
    char *end;
    errno = 0;
    unsigned long long n = strtoull(s, &end, 10);
    unsigned long long mult = 1;
    if (*end == 'k' || *end == 'K')
        mult = 1024, end++;
    else if (*end == 'M')
        mult = 1024ull * 1024, end++;
    else if (*end == 'G')
        mult = 1024ull * 1024 * 1024, end++;
    if (end == s || *end || errno || s[0] == '-' || n > (1ull << 50) / mult) {
        config_err(ld, v, path, "expected a size such as 512k, 100M or 2G, got \"%s\"", s);
        return false;
    }
    *out = n * mult;
    return true;
}

/* record: { file: PATH, redact: none|localpart|hash, max_size: SIZE, keep: N } */
static void config_parse_record(struct loader *ld, yaml_node_t *n, const char *path)
{
    struct record_settings *rs = &ld->cfg->record;
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key)
            continue;
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        unsigned long u;
        if (!strcmp(key, "file")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                free(rs->file);
                rs->file = config_is_null(v) ? NULL : config_resolve_path(ld, config_scalar(v));
            }
        } else if (!strcmp(key, "redact")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath) &&
                record_redact_parse(config_scalar(v), &rs->redact) < 0)
                config_err(ld, v, kpath, "expected none, localpart or hash, got \"%s\"",
                           config_scalar(v));
        } else if (!strcmp(key, "max_size")) {
            unsigned long long sz;
            if (config_parse_size(ld, v, kpath, &sz)) {
                if (sz && sz < 4096)
                    config_err(ld, v, kpath, "at least 4k (or 0 for no cap)");
                else
                    rs->max_size = sz;
            }
        } else if (!strcmp(key, "keep")) {
            if (config_parse_uint(ld, v, kpath, 0, 1000, &u))
                rs->keep = (unsigned)u;
        } else {
            config_unknown_key(ld, k, path, key, "file, redact, max_size, keep");
        }
        free(kpath);
    }
    if (!rs->file)
        config_err(ld, n, path, "record needs a file: PATH");
}

/* ---- counters and lists (pass one, every file) ---- */

static bool config_valid_name(const char *s)
{
    if (!*s || strlen(s) > 64)
        return false;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            return false;
    return true;
}

static bool config_parse_key_part(struct loader *ld, yaml_node_t *n, const char *path,
                                  struct key_part *kp)
{
    if (!config_expect(ld, n, YAML_SCALAR_NODE, path))
        return false;
    const char *s = config_scalar(n);
    const char *slash = strchr(s, '/');
    size_t nlen = slash ? (size_t)(slash - s) : strlen(s);
    int a = attr_lookup(s, nlen);
    if (a < 0) {
        config_err(ld, n, path, "unknown attribute \"%.*s\" in counter key", (int)nlen, s);
        return false;
    }
    kp->attr = (enum attr)a;
    kp->v4_bits = -1;
    kp->v6_bits = -1;
    if (!slash)
        return true;
    if (a != ATTR_CLIENT_ADDRESS) {
        config_err(ld, n, path, "only client_address can be cut to a network (/N)");
        return false;
    }
    /* client_address/V4 or client_address/V4/V6; IPv6 defaults to /64. */
    char *end;
    long v4 = strtol(slash + 1, &end, 10);
    long v6 = 64;
    if (slash[1] < '0' || slash[1] > '9' || v4 > 32) {
        config_err(ld, n, path, "expected client_address/N with N from 0 to 32 (IPv4), optionally /M (IPv6, default 64)");
        return false;
    }
    if (*end == '/') {
        const char *p6 = end + 1;
        v6 = strtol(p6, &end, 10);
        if (*p6 < '0' || *p6 > '9' || v6 > 128) {
            config_err(ld, n, path, "IPv6 prefix must be from 0 to 128");
            return false;
        }
    }
    if (*end) {
        config_err(ld, n, path, "unexpected \"%s\" after the prefix length", end);
        return false;
    }
    kp->v4_bits = (int)v4;
    kp->v6_bits = (int)v6;
    return true;
}

static void config_parse_counter(struct loader *ld, const char *name, yaml_node_t *kn,
                                 yaml_node_t *n, const char *path)
{
    struct rules *r = ld->r;
    if (!config_valid_name(name)) {
        config_err(ld, kn, path, "a counter name uses letters, digits, '_' and '-' only");
        return;
    }
    if (rules_find_counter(r, name, strlen(name)) >= 0) {
        config_err(ld, kn, path, "counter \"%s\" is defined twice", name);
        return;
    }
    if (attr_lookup(name, strlen(name)) >= 0 || !strcmp(name, "any") || !strcmp(name, "all") ||
        !strcmp(name, "not") || config_is_dns_key(name)) {
        config_err(ld, kn, path, "\"%s\" is an attribute or keyword; pick another counter name", name);
        return;
    }
    if (r->n_counters >= RULES_MAX_COUNTERS) {
        config_err(ld, kn, path, "at most %d counters", RULES_MAX_COUNTERS);
        return;
    }
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return;
    struct counter c = {.precision = 0};
    bool have_key = false, have_decay = false, ok = true;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key) {
            ok = false;
            continue;
        }
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        if (!strcmp(key, "key")) {
            have_key = true;
            if (v->type == YAML_SEQUENCE_NODE) {
                size_t i = 0;
                CONFIG_FOR_ITEMS(ld, v, it) {
                    char *ipath = config_path_index(kpath, i);
                    if (c.n_parts >= RULES_MAX_KEY_PARTS) {
                        config_err(ld, v, kpath, "at most %d attributes in a key", RULES_MAX_KEY_PARTS);
                        ok = false;
                    } else if (!config_parse_key_part(ld, config_node(ld, *it), ipath,
                                                      &c.parts[c.n_parts++])) {
                        ok = false;
                    }
                    free(ipath);
                    i++;
                    if (!ok)
                        break;
                }
                if (c.n_parts == 0) {
                    config_err(ld, v, kpath, "a key needs at least one attribute");
                    ok = false;
                }
            } else if (c.n_parts >= RULES_MAX_KEY_PARTS ||
                       !config_parse_key_part(ld, v, kpath, &c.parts[c.n_parts++])) {
                ok = false;
            }
        } else if (!strcmp(key, "half_life") || !strcmp(key, "leak")) {
            if (have_decay) {
                config_err(ld, k, path, "give either half_life or leak, not both");
                ok = false;
            }
            have_decay = true;
            if (!strcmp(key, "half_life")) {
                c.decay.kind = DECAY_HALF_LIFE;
                if (!config_parse_duration(ld, v, kpath, 0.001, &c.decay.param))
                    ok = false;
            } else {
                c.decay.kind = DECAY_LEAK;
                if (!config_expect(ld, v, YAML_SCALAR_NODE, kpath) ||
                    decay_parse_rate(config_scalar(v), &c.decay.param) < 0 || c.decay.param <= 0) {
                    if (v->type == YAML_SCALAR_NODE)
                        config_err(ld, v, kpath,
                                   "expected a rate such as 100/h, 5/m, 2/s or 100/10m, got \"%s\"",
                                   config_scalar(v));
                    ok = false;
                }
            }
        } else if (!strcmp(key, "precision")) {
            unsigned long u;
            if (config_parse_uint(ld, v, kpath, 0, 6, &u))
                c.precision = (int)u;
            else
                ok = false;
        } else {
            config_unknown_key(ld, k, path, key, "key, half_life, leak, precision");
            ok = false;
        }
        free(kpath);
    }
    if (!have_key) {
        config_err(ld, n, path, "a counter needs a key (e.g. key: client_address)");
        ok = false;
    }
    if (!have_decay) {
        config_err(ld, n, path, "a counter needs half_life: DURATION or leak: N/PERIOD");
        ok = false;
    }
    if (!ok)
        return;
    c.name = xstrdup(name);
    c.name_len = strlen(c.name);
    r->counters = xreallocarray(r->counters, r->n_counters + 1, sizeof *r->counters);
    r->counters[r->n_counters++] = c;
}

static void config_list_add_entries(struct loader *ld, struct list_data *d, yaml_node_t *seq,
                                    const char *path)
{
    size_t i = 0;
    CONFIG_FOR_ITEMS(ld, seq, it) {
        yaml_node_t *item = config_node(ld, *it);
        char *ipath = config_path_index(path, i++);
        if (config_expect(ld, item, YAML_SCALAR_NODE, ipath)) {
            const char *why = NULL;
            const char *s = config_scalar(item);
            if (list_data_add(d, s, strlen(s), &why) < 0)
                config_err(ld, item, ipath, "%s", why ? why : "bad entry");
        }
        free(ipath);
    }
}

static void config_parse_list(struct loader *ld, const char *name, yaml_node_t *kn, yaml_node_t *n,
                              const char *path)
{
    struct rules *r = ld->r;
    if (!config_valid_name(name)) {
        config_err(ld, kn, path, "a list name uses letters, digits, '_' and '-' only");
        return;
    }
    if (rules_find_list(r, name, strlen(name)) >= 0) {
        config_err(ld, kn, path, "list \"%s\" is defined twice", name);
        return;
    }
    struct list l = {0};
    struct list_data *d = NULL;
    if (n->type == YAML_SEQUENCE_NODE) {
        d = list_data_new();
        config_list_add_entries(ld, d, n, path);
    } else if (config_expect(ld, n, YAML_MAPPING_NODE, path)) {
        yaml_node_t *entries = NULL, *file = NULL;
        CONFIG_FOR_PAIRS(ld, n, pair) {
            yaml_node_t *k;
            const char *key = config_pair_key(ld, pair, path, &k);
            if (!key)
                continue;
            yaml_node_t *v = config_node(ld, pair->value);
            char *kpath = config_path(path, key);
            if (!strcmp(key, "file")) {
                if (config_expect(ld, v, YAML_SCALAR_NODE, kpath))
                    file = v;
            } else if (!strcmp(key, "entries")) {
                if (config_expect(ld, v, YAML_SEQUENCE_NODE, kpath))
                    entries = v;
            } else if (!strcmp(key, "subdomains")) {
                config_parse_bool(ld, v, kpath, &l.subdomains);
            } else {
                config_unknown_key(ld, k, path, key, "file, entries, subdomains");
            }
            free(kpath);
        }
        if (file && entries) {
            config_err(ld, n, path, "give either file or entries, not both");
        } else if (file && !config_allow_files) {
            config_err(ld, file, path, "file lists are disabled here");
        } else if (file) {
            char err[2048];
            l.file = config_resolve_path(ld, config_scalar(file));
            /* Note the file's identity before reading it: a change made
             * while we read is then seen by the next list_refresh. */
            struct stat st;
            if (stat(l.file, &st) == 0) {
                l.mtime = st.st_mtim;
                l.size = st.st_size;
                l.ino = st.st_ino;
            }
            int rc = list_load_file(l.file, &d, err, sizeof err);
            if (rc < 0) {
                /* One error per bad line, each with its own prefix; the
                 * list stays defined (empty: the config is refused
                 * anyway) so that its uses are not reported as well. */
                char *kpath = config_path(path, "file");
                for (char *line = err, *nl; line && *line; line = nl ? nl + 1 : NULL) {
                    nl = strchr(line, '\n');
                    if (nl)
                        *nl = '\0';
                    config_err(ld, file, kpath, "%s", line);
                }
                free(kpath);
                d = list_data_new();
            }
        } else if (entries) {
            d = list_data_new();
            char *kpath = config_path(path, "entries");
            config_list_add_entries(ld, d, entries, kpath);
            free(kpath);
        } else {
            config_err(ld, n, path, "a list needs file: PATH or entries: [...]");
        }
    }
    if (!d) {
        free(l.file);
        return;
    }
    list_data_finish(d);
    l.data = d;
    l.name = xstrdup(name);
    r->lists = xreallocarray(r->lists, r->n_lists + 1, sizeof *r->lists);
    r->lists[r->n_lists++] = l;
}

static void config_parse_definitions(struct loader *ld, yaml_node_t *n, const char *section)
{
    if (!config_expect(ld, n, YAML_MAPPING_NODE, section))
        return;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, section, &k);
        if (!key)
            continue;
        char *kpath = config_path(section, key);
        if (!strcmp(section, "counters"))
            config_parse_counter(ld, key, k, config_node(ld, pair->value), kpath);
        else
            config_parse_list(ld, key, k, config_node(ld, pair->value), kpath);
        free(kpath);
    }
}

/* ---- conditions ---- */

static struct cond *config_cond_new(enum cond_kind kind, struct subject subject)
{
    struct cond *c = xcalloc(1, sizeof *c);
    c->kind = kind;
    c->subject = subject;
    c->list = -1;
    c->dnsq = -1;
    return c;
}

static void config_cond_add_child(struct cond *parent, struct cond *child)
{
    parent->children = xreallocarray(parent->children, parent->n_children + 1,
                                     sizeof *parent->children);
    parent->children[parent->n_children++] = child;
}

static void config_cond_free(struct cond *c)
{
    rules_cond_free(c);
}

/* config_decimal - s as a plain decimal number: an optional '-', digits,
 * optionally '.' and digits; nothing else. strtod() alone would also take
 * "0x10", "1e3", "+5", " 5" and "infinity", which in a rule are typos or
 * surprises (the durations of decay.c are as strict). Returns true and
 * *out. */
static bool config_decimal(const char *s, double *out)
{
    const char *p = s + (*s == '-');
    const char *digits = p;
    while (*p >= '0' && *p <= '9')
        p++;
    if (p == digits)
        return false;
    if (*p == '.') {
        const char *frac = ++p;
        while (*p >= '0' && *p <= '9')
            p++;
        if (p == frac)
            return false;
    }
    if (*p || p - s > 40)
        return false;
    *out = strtod(s, NULL);
    return isfinite(*out);
}

/* ">= 5", "<10", "== 0": returns true and fills op/number. */
static bool config_parse_comparison(const char *s, enum cmp_op *op, double *number)
{
    static const struct {
        const char *text;
        enum cmp_op op;
    } ops[] = {{">=", CMP_GE}, {"<=", CMP_LE}, {"==", CMP_EQ}, {"!=", CMP_NE},
               {">", CMP_GT},  {"<", CMP_LT}};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        size_t n = strlen(ops[i].text);
        if (strncmp(s, ops[i].text, n) == 0) {
            const char *p = s + n;
            while (*p == ' ')
                p++;
            char num[48];
            size_t len = strlen(p);
            while (len > 0 && p[len - 1] == ' ')
                len--;
            if (len >= sizeof num)
                return false;
            memcpy(num, p, len);
            num[len] = '\0';
            double v;
            if (!config_decimal(num, &v))
                return false;
            *op = ops[i].op;
            *number = v;
            return true;
        }
    }
    return false;
}

static bool config_is_ip_attr(int a)
{
    return a == ATTR_CLIENT_ADDRESS || a == ATTR_SERVER_ADDRESS;
}

static const char *const config_protocol_states[] = {"CONNECT", "EHLO", "HELO", "MAIL", "RCPT",
                                                     "DATA", "END-OF-MESSAGE", "VRFY", "ETRN"};

static struct cond *config_parse_matcher(struct loader *ld, struct subject subj, yaml_node_t *n,
                                         const char *path, int depth);

static struct cond *config_parse_scalar_matcher(struct loader *ld, struct subject subj,
                                                yaml_node_t *n, const char *path)
{
    const char *s = config_scalar(n);
    size_t len = n->data.scalar.length;
    enum cmp_op op;
    double number;
    if (subj.is_counter) {
        if (!config_parse_comparison(s, &op, &number)) {
            config_err(ld, n, path, "compare a counter with \">= N\", \"> N\", \"<= N\", \"< N\", \"== N\" or \"!= N\", got \"%s\"", s);
            return NULL;
        }
        struct cond *c = config_cond_new(COND_CMP, subj);
        c->op = op;
        c->number = number;
        return c;
    }
    if (config_parse_comparison(s, &op, &number)) {
        struct cond *c = config_cond_new(COND_CMP, subj);
        c->op = op;
        c->number = number;
        return c;
    }
    if (len > 0 && strchr("<>=!", s[0])) {
        /* ">= 10M", "=> 5": a comparison mistyped would otherwise be
         * compared as text, and never match. */
        config_err(ld, n, path,
                   "\"%s\" is no comparison: write \">= N\", \"> N\", \"<= N\", \"< N\", \"== N\" or "
                   "\"!= N\" with N a plain number (text that starts with '%c': { re: ... })",
                   s, s[0]);
        return NULL;
    }
    if (config_is_null(n) || len == 0)
        return config_cond_new(COND_EMPTY, subj);
    if (config_is_ip_attr(subj.index)) {
        struct cond *c = config_cond_new(COND_CIDR, subj);
        bool host_bits = false;
        if (cidr_parse(s, len, &c->net, &host_bits) < 0) {
            config_err(ld, n, path, "expected an IP address or network, got \"%s\"", s);
            config_cond_free(c);
            return NULL;
        }
        if (host_bits)
            log_warn("%s:%lu: %s: host bits set in \"%s\"", ld->cur->name,
                     (unsigned long)n->start_mark.line + 1, path, s);
        return c;
    }
    if (subj.index == ATTR_PROTOCOL_STATE) {
        bool known = false;
        for (size_t i = 0; i < sizeof config_protocol_states / sizeof config_protocol_states[0]; i++)
            if (!strcasecmp(s, config_protocol_states[i]))
                known = true;
        if (!known) {
            config_err(ld, n, path,
                       "unknown protocol_state \"%s\" (CONNECT, EHLO, HELO, MAIL, RCPT, DATA, END-OF-MESSAGE, VRFY, ETRN)",
                       s);
            return NULL;
        }
    }
    struct cond *c = config_cond_new(COND_EQUALS, subj);
    c->text = xstrndup(s, len);
    c->text_len = len;
    return c;
}

static struct cond *config_parse_regex(struct loader *ld, struct subject subj, yaml_node_t *v,
                                       const char *path)
{
    if (!config_expect(ld, v, YAML_SCALAR_NODE, path))
        return NULL;
    int errcode;
    PCRE2_SIZE erroff;
    uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
    if (attr_is_case_insensitive((enum attr)subj.index))
        opts |= PCRE2_CASELESS;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)config_scalar(v), v->data.scalar.length, opts,
                                   &errcode, &erroff, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(errcode, msg, sizeof msg);
        config_err(ld, v, path, "bad regular expression at offset %zu: %s", (size_t)erroff,
                   (const char *)msg);
        return NULL;
    }
    /* JIT makes a regex test a few hundred nanoseconds; fall back silently. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    struct cond *c = config_cond_new(COND_REGEX, subj);
    c->regex = re;
    /* Kept for explain, which shows the pattern it tested. */
    c->text = xstrndup(config_scalar(v), v->data.scalar.length);
    c->text_len = v->data.scalar.length;
    return c;
}

static struct cond *config_parse_matcher_map(struct loader *ld, struct subject subj,
                                             yaml_node_t *n, const char *path, int depth)
{
    struct cond *all = config_cond_new(COND_ALL, subj);
    bool ok = true;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key) {
            ok = false;
            continue;
        }
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        struct cond *child = NULL;
        if (subj.is_counter && strcmp(key, "not") && strcmp(key, "any")) {
            config_err(ld, k, path, "a counter is compared with \">= N\" style strings; \"%s\" does not apply", key);
        } else if (!strcmp(key, "in")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                int li = rules_find_list(ld->r, config_scalar(v), v->data.scalar.length);
                if (li < 0) {
                    config_err(ld, v, kpath, "no list named \"%s\" (define it under lists:)",
                               config_scalar(v));
                } else {
                    child = config_cond_new(COND_IN_LIST, subj);
                    child->list = li;
                }
            }
        } else if (!strcmp(key, "re")) {
            child = config_parse_regex(ld, subj, v, kpath);
        } else if (!strcmp(key, "not")) {
            struct cond *inner = config_parse_matcher(ld, subj, v, kpath, depth + 1);
            if (inner) {
                child = config_cond_new(COND_NOT, subj);
                config_cond_add_child(child, inner);
            }
        } else if (!strcmp(key, "any")) {
            if (config_expect(ld, v, YAML_SEQUENCE_NODE, kpath))
                child = config_parse_matcher(ld, subj, v, kpath, depth + 1);
        } else if (!strcmp(key, "same_as")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                int ai = attr_lookup(config_scalar(v), v->data.scalar.length);
                if (ai < 0) {
                    config_err(ld, v, kpath, "unknown attribute \"%s\"", config_scalar(v));
                } else {
                    child = config_cond_new(COND_SAME_AS, subj);
                    child->other = (enum attr)ai;
                }
            }
        } else if (!strcmp(key, "empty")) {
            bool b;
            if (config_parse_bool(ld, v, kpath, &b)) {
                child = config_cond_new(COND_EMPTY, subj);
                if (!b) {
                    struct cond *neg = config_cond_new(COND_NOT, subj);
                    config_cond_add_child(neg, child);
                    child = neg;
                }
            }
        } else {
            config_unknown_key(ld, k, path, key, "in, re, not, any, empty, same_as");
        }
        if (child)
            config_cond_add_child(all, child);
        else
            ok = false;
        free(kpath);
    }
    if (!ok || all->n_children == 0) {
        if (ok)
            config_err(ld, n, path, "empty matcher");
        config_cond_free(all);
        return NULL;
    }
    if (all->n_children == 1) {
        /* { in: list } is its one test: no group to walk per request. */
        struct cond *only = all->children[0];
        all->n_children = 0;
        config_cond_free(all);
        return only;
    }
    return all;
}

static struct cond *config_parse_matcher(struct loader *ld, struct subject subj, yaml_node_t *n,
                                         const char *path, int depth)
{
    if (depth > CONFIG_MAX_DEPTH) {
        config_err(ld, n, path, "conditions nested more than %d deep", CONFIG_MAX_DEPTH);
        return NULL;
    }
    if (n->type == YAML_SCALAR_NODE)
        return config_parse_scalar_matcher(ld, subj, n, path);
    if (n->type == YAML_MAPPING_NODE)
        return config_parse_matcher_map(ld, subj, n, path, depth);
    if (n->type == YAML_SEQUENCE_NODE) {
        struct cond *any = config_cond_new(COND_ANY, subj);
        size_t i = 0;
        bool ok = true;
        CONFIG_FOR_ITEMS(ld, n, it) {
            char *ipath = config_path_index(path, i++);
            struct cond *c = config_parse_matcher(ld, subj, config_node(ld, *it), ipath, depth + 1);
            if (c)
                config_cond_add_child(any, c);
            else
                ok = false;
            free(ipath);
        }
        if (!ok || any->n_children == 0) {
            if (ok)
                config_err(ld, n, path, "empty list of alternatives");
            config_cond_free(any);
            return NULL;
        }
        return any;
    }
    config_err(ld, n, path, "expected a value, a list of values or a mapping");
    return NULL;
}

/* ---- DNS conditions ---- */

/* What a DNS condition asks; config_dns_question() finds or adds it. */
struct config_dnsq_spec {
    enum dnsq_kind kind;
    enum dnslist_type list;
    enum attr subject;
    const char *zone;
    const struct dnscode *codes;
    size_t n_codes;
    bool defer;                 /* on_error: defer */
};

static int config_dns_question(struct loader *ld, yaml_node_t *n, const char *path,
                               const struct config_dnsq_spec *sp)
{
    struct rules *r = ld->r;
    for (size_t i = 0; i < r->n_dnsqs; i++) {
        const struct dnsq *q = &r->dnsqs[i];
        if (q->kind == sp->kind && q->list == sp->list && q->subject == sp->subject &&
            q->defer_on_error == sp->defer && q->n_codes == sp->n_codes &&
            ((!q->zone && !sp->zone) || (q->zone && sp->zone && !strcmp(q->zone, sp->zone))) &&
            (sp->n_codes == 0 || !memcmp(q->codes, sp->codes, sp->n_codes * sizeof *sp->codes)))
            return (int)i;
    }
    if (r->n_dnsqs >= RULES_MAX_DNS) {
        config_err(ld, n, path, "at most %d different DNS checks in a rule set", RULES_MAX_DNS);
        return -1;
    }
    r->dnsqs = xreallocarray(r->dnsqs, r->n_dnsqs + 1, sizeof *r->dnsqs);
    struct dnsq *q = &r->dnsqs[r->n_dnsqs];
    memset(q, 0, sizeof *q);
    q->kind = sp->kind;
    q->list = sp->list;
    q->subject = sp->subject;
    q->zone = sp->zone ? xstrdup(sp->zone) : NULL;
    q->defer_on_error = sp->defer;
    if (sp->n_codes) {
        q->codes = xreallocarray(NULL, sp->n_codes, sizeof *q->codes);
        memcpy(q->codes, sp->codes, sp->n_codes * sizeof *q->codes);
        q->n_codes = sp->n_codes;
    }
    return (int)r->n_dnsqs++;
}

#define CONFIG_MAX_CODES 16         /* return codes of one zone */

/* codes: one code or a list of them. Returns false on error. */
static bool config_parse_codes(struct loader *ld, yaml_node_t *n, const char *path,
                               struct dnscode *codes, size_t *n_codes)
{
    yaml_node_t *single = config_is_scalar(n) ? n : NULL;
    if (!single && !config_expect(ld, n, YAML_SEQUENCE_NODE, path))
        return false;
    size_t count = single ? 1 : (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    if (count == 0 || count > CONFIG_MAX_CODES) {
        config_err(ld, n, path, "give 1 to %d return codes", CONFIG_MAX_CODES);
        return false;
    }
    bool ok = true;
    *n_codes = 0;
    for (size_t i = 0; i < count; i++) {
        yaml_node_t *item = single ? single : config_node(ld, n->data.sequence.items.start[i]);
        char *ipath = single ? xstrdup(path) : config_path_index(path, i);
        const char *why = "bad return code";
        if (!config_expect(ld, item, YAML_SCALAR_NODE, ipath)) {
            ok = false;
        } else if (dnscode_parse(config_scalar(item), &codes[*n_codes], &why) < 0) {
            config_err(ld, item, ipath, "%s, got \"%s\"", why, config_scalar(item));
            ok = false;
        } else {
            (*n_codes)++;
        }
        free(ipath);
    }
    return ok;
}

static bool config_parse_on_error_dns(struct loader *ld, yaml_node_t *v, const char *path,
                                      bool *defer)
{
    if (config_is_scalar(v) && !strcmp(config_scalar(v), "ignore")) {
        *defer = false;
        return true;
    }
    if (config_is_scalar(v) && !strcmp(config_scalar(v), "defer")) {
        *defer = true;
        return true;
    }
    config_err(ld, v, path, "expected ignore (a failed lookup is \"not listed\") or defer (answer a temporary failure)");
    return false;
}

/* One zone of a list: its question, weight and codes. */
static bool config_dns_member(struct loader *ld, struct cond *c, yaml_node_t *zn, yaml_node_t *spec,
                              const char *path, struct config_dnsq_spec *sp,
                              const struct dnscode *codes, size_t n_codes)
{
    char *zone = config_dns_zone(ld, zn, path);
    if (!zone)
        return false;
    struct dnscode own[CONFIG_MAX_CODES];
    size_t n_own = 0;
    double weight = 1;
    bool ok = true;
    if (spec && config_is_scalar(spec)) {
        /* zone: WEIGHT */
        if (!config_decimal(config_scalar(spec), &weight)) {
            config_err(ld, spec, path, "expected a weight (a number) or { weight: N, codes: [...] }");
            ok = false;
        }
    } else if (spec && config_expect(ld, spec, YAML_MAPPING_NODE, path)) {
        CONFIG_FOR_PAIRS(ld, spec, pair) {
            yaml_node_t *k;
            const char *key = config_pair_key(ld, pair, path, &k);
            if (!key) {
                ok = false;
                continue;
            }
            yaml_node_t *v = config_node(ld, pair->value);
            char *kpath = config_path(path, key);
            if (!strcmp(key, "weight")) {
                if (!config_is_scalar(v) || !config_decimal(config_scalar(v), &weight)) {
                    config_err(ld, v, kpath, "expected a number");
                    ok = false;
                }
            } else if (!strcmp(key, "codes")) {
                if (!config_parse_codes(ld, v, kpath, own, &n_own))
                    ok = false;
            } else {
                config_unknown_key(ld, k, path, key, "weight, codes");
                ok = false;
            }
            free(kpath);
        }
    } else if (spec) {
        ok = false;
    }
    if (ok) {
        sp->zone = zone;
        sp->codes = n_own ? own : codes;
        sp->n_codes = n_own ? n_own : n_codes;
        int qi = config_dns_question(ld, zn, path, sp);
        for (size_t i = 0; qi >= 0 && i < c->n_members; i++)
            if (c->members[i].dnsq == qi) {
                /* One question, two members: min: and weights would
                 * count its listing twice. */
                config_err(ld, zn, path, "zone \"%s\" is listed twice in this check", zone);
                qi = -1;
            }
        if (qi < 0) {
            ok = false;
        } else {
            c->members = xreallocarray(c->members, c->n_members + 1, sizeof *c->members);
            c->members[c->n_members].dnsq = qi;
            c->members[c->n_members].weight = weight;
            c->n_members++;
        }
    }
    free(zone);
    return ok;
}

/* The attribute a list is asked for (of:). */
static bool config_dns_subject(struct loader *ld, yaml_node_t *v, const char *path,
                               enum dnslist_type list, enum attr *out)
{
    if (!config_expect(ld, v, YAML_SCALAR_NODE, path))
        return false;
    int a = attr_lookup(config_scalar(v), v->data.scalar.length);
    bool ip = a == ATTR_CLIENT_ADDRESS;
    bool name = a == ATTR_SENDER_DOMAIN || a == ATTR_HELO_NAME || a == ATTR_CLIENT_NAME ||
                a == ATTR_REVERSE_CLIENT_NAME || a == ATTR_RECIPIENT_DOMAIN || a == ATTR_SASL_DOMAIN;
    if ((list == DNSLIST_BL && !ip) || (list == DNSLIST_RHSBL && !name) ||
        (list == DNSLIST_WL && !ip && !name)) {
        config_err(ld, v, path, "%s", list == DNSLIST_BL
                   ? "a dnsbl is asked for client_address (use rhsbl: for names)"
                   : "expected sender_domain, helo_name, client_name, reverse_client_name, recipient_domain or sasl_domain");
        return false;
    }
    *out = (enum attr)a;
    return true;
}

/* dnsbl:, rhsbl:, dnswl: - a zone, a list of zones, or
 * { zones: ..., codes: ..., min: N, of: ATTR, on_error: ignore|defer }. */
static struct cond *config_parse_dnslist(struct loader *ld, enum dnslist_type list,
                                         yaml_node_t *n, const char *path)
{
    struct subject none = {false, 0};
    struct cond *c = config_cond_new(COND_DNSLIST, none);
    c->min_hits = 1;
    struct config_dnsq_spec sp = {
        .kind = list == DNSLIST_RHSBL ? DNSQ_LIST_NAME : DNSQ_LIST_IP,
        .list = list,
        .subject = list == DNSLIST_RHSBL ? ATTR_SENDER_DOMAIN : ATTR_CLIENT_ADDRESS,
    };
    yaml_node_t *zones = n, *min = NULL;
    struct dnscode codes[CONFIG_MAX_CODES];
    size_t n_codes = 0;
    bool ok = true;
    if (n->type == YAML_MAPPING_NODE) {
        zones = NULL;
        CONFIG_FOR_PAIRS(ld, n, pair) {
            yaml_node_t *k;
            const char *key = config_pair_key(ld, pair, path, &k);
            if (!key) {
                ok = false;
                continue;
            }
            yaml_node_t *v = config_node(ld, pair->value);
            char *kpath = config_path(path, key);
            if (!strcmp(key, "zones"))
                zones = v;
            else if (!strcmp(key, "codes"))
                ok &= config_parse_codes(ld, v, kpath, codes, &n_codes);
            else if (!strcmp(key, "min"))
                min = v;
            else if (!strcmp(key, "on_error"))
                ok &= config_parse_on_error_dns(ld, v, kpath, &sp.defer);
            else if (!strcmp(key, "of")) {
                ok &= config_dns_subject(ld, v, kpath, list, &sp.subject);
                sp.kind = sp.subject == ATTR_CLIENT_ADDRESS ? DNSQ_LIST_IP : DNSQ_LIST_NAME;
            } else {
                config_unknown_key(ld, k, path, key, "zones, codes, min, of, on_error");
                ok = false;
            }
            free(kpath);
        }
        if (!zones) {
            config_err(ld, n, path, "a list check needs zones: [ZONE, ...]");
            ok = false;
        }
    }
    /* Zones are checked even after an error above: every mistake is
     * reported in one go. */
    char *zpath = zones == n ? xstrdup(path) : config_path(path, "zones");
    if (!zones) {
        ;
    } else if (zones->type == YAML_SCALAR_NODE) {
        ok &= config_dns_member(ld, c, zones, NULL, zpath, &sp, codes, n_codes);
    } else if (zones->type == YAML_SEQUENCE_NODE) {
        size_t i = 0;
        CONFIG_FOR_ITEMS(ld, zones, it) {
            char *ipath = config_path_index(zpath, i++);
            ok &= config_dns_member(ld, c, config_node(ld, *it), NULL, ipath, &sp, codes, n_codes);
            free(ipath);
        }
    } else if (zones->type == YAML_MAPPING_NODE) {
        /* zone: WEIGHT, or zone: { weight: N, codes: [...] } */
        CONFIG_FOR_PAIRS(ld, zones, pair) {
            yaml_node_t *zk = config_node(ld, pair->key);
            const char *zname = config_is_scalar(zk) ? config_scalar(zk) : "?";
            char *ipath = config_path(zpath, zname);
            ok &= config_dns_member(ld, c, zk, config_node(ld, pair->value), ipath, &sp, codes,
                                    n_codes);
            free(ipath);
        }
    } else {
        config_err(ld, zones, zpath, "expected a zone, a list of zones or zone: weight pairs");
        ok = false;
    }
    free(zpath);
    if (ok && c->n_members == 0) {
        config_err(ld, n, path, "no zones given");
        ok = false;
    }
    if (ok && min) {
        unsigned long u;
        char *mpath = config_path(path, "min");
        if (config_parse_uint(ld, min, mpath, 1, c->n_members, &u))
            c->min_hits = (unsigned)u;
        else
            ok = false;
        free(mpath);
    }
    if (!ok) {
        config_cond_free(c);
        return NULL;
    }
    return c;
}

/* The value of rdns:/sender_mx:/helo_resolves:/country: and its options:
 * a scalar or list, or a mapping { is: VALUE, on_error: ..., ... }. */
static struct cond *config_parse_dns_check(struct loader *ld, const char *key, yaml_node_t *n,
                                           const char *path)
{
    struct subject none = {false, 0};
    yaml_node_t *is = n, *zone_node = NULL;
    bool fresh = false, defer = false, ok = true;
    enum dnsq_kind country_kind = DNSQ_COUNTRY_TXT;
    bool is_country = !strcmp(key, "country");
    if (n->type == YAML_MAPPING_NODE) {
        is = NULL;
        CONFIG_FOR_PAIRS(ld, n, pair) {
            yaml_node_t *k;
            const char *mkey = config_pair_key(ld, pair, path, &k);
            if (!mkey) {
                ok = false;
                continue;
            }
            yaml_node_t *v = config_node(ld, pair->value);
            char *kpath = config_path(path, mkey);
            if (!strcmp(mkey, "is")) {
                is = v;
            } else if (!strcmp(mkey, "on_error")) {
                ok &= config_parse_on_error_dns(ld, v, kpath, &defer);
            } else if (!strcmp(mkey, "fresh") && !strcmp(key, "rdns")) {
                ok &= config_parse_bool(ld, v, kpath, &fresh);
            } else if (!strcmp(mkey, "zone") && is_country) {
                zone_node = v;
            } else if (!strcmp(mkey, "type") && is_country) {
                if (config_is_scalar(v) && !strcasecmp(config_scalar(v), "txt")) {
                    country_kind = DNSQ_COUNTRY_TXT;
                } else if (config_is_scalar(v) && !strcasecmp(config_scalar(v), "a")) {
                    country_kind = DNSQ_COUNTRY_A;
                } else {
                    config_err(ld, v, kpath, "expected txt or a");
                    ok = false;
                }
            } else {
                config_unknown_key(ld, k, path, mkey,
                                   !strcmp(key, "rdns") ? "is, fresh, on_error"
                                   : is_country         ? "is, zone, type, on_error"
                                                        : "is, on_error");
                ok = false;
            }
            free(kpath);
        }
        if (ok && !is) {
            config_err(ld, n, path, "give the value to test as is: ...");
            ok = false;
        }
    }
    if (!ok)
        return NULL;
    char *ipath = is == n ? xstrdup(path) : config_path(path, "is");
    struct cond *c = NULL;
    struct config_dnsq_spec sp = {.defer = defer, .list = DNSLIST_NONE};
    if (!strcmp(key, "rdns")) {
        const char *s = config_is_scalar(is) ? config_scalar(is) : "";
        int want = !strcmp(s, "ptr") ? RDNS_PTR : !strcmp(s, "fcrdns") ? RDNS_FCRDNS
                   : !strcmp(s, "none") ? RDNS_NONE : -1;
        if (want < 0) {
            config_err(ld, is, ipath, "expected ptr (has a PTR name), fcrdns (forward-confirmed) or none (no PTR)");
        } else {
            c = config_cond_new(COND_RDNS, none);
            c->dns_want = want;
            if (fresh) {
                sp.kind = DNSQ_RDNS;
                sp.subject = ATTR_CLIENT_ADDRESS;
                c->dnsq = config_dns_question(ld, is, ipath, &sp);
            }
        }
    } else if (!strcmp(key, "sender_mx") || !strcmp(key, "helo_resolves")) {
        bool mx = !strcmp(key, "sender_mx");
        bool b;
        int want = -1;
        if (mx && config_is_scalar(is) && !strcmp(config_scalar(is), "null_mx"))
            want = MX_WANT_NULL;
        else if (config_is_scalar(is) && !config_is_null(is)) {
            const char *s = config_scalar(is);
            if (!strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on"))
                want = 1, b = true;
            else if (!strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off"))
                want = 0, b = false;
            if (want >= 0 && mx)
                want = b ? MX_WANT_OK : MX_WANT_BAD;
        }
        if (want < 0) {
            config_err(ld, is, ipath, "%s", mx ? "expected true (the sender domain accepts mail), false (it does not) or null_mx"
                                               : "expected true or false");
        } else {
            c = config_cond_new(mx ? COND_SENDER_MX : COND_HELO_RESOLVES, none);
            c->dns_want = want;
            sp.kind = mx ? DNSQ_MX : DNSQ_RESOLVES;
            sp.subject = mx ? ATTR_SENDER_DOMAIN : ATTR_HELO_NAME;
            c->dnsq = config_dns_question(ld, is, ipath, &sp);
        }
    } else { /* country */
        char *zone = NULL;
        if (zone_node) {
            char *zp = config_path(path, "zone");
            zone = config_dns_zone(ld, zone_node, zp);
            free(zp);
        } else if (ld->cfg->dns.country_zone) {
            zone = xstrdup(ld->cfg->dns.country_zone);
        } else {
            config_err(ld, n, path, "a country check needs a zone: set dns.country_zone or write { zone: ZONE, is: [CC, ...] }");
        }
        yaml_node_t *single = config_is_scalar(is) ? is : NULL;
        if (zone && (single || config_expect(ld, is, YAML_SEQUENCE_NODE, ipath))) {
            c = config_cond_new(COND_COUNTRY, none);
            size_t count = single ? 1 : (size_t)(is->data.sequence.items.top - is->data.sequence.items.start);
            for (size_t i = 0; i < count; i++) {
                yaml_node_t *item = single ? single : config_node(ld, is->data.sequence.items.start[i]);
                const char *s = config_is_scalar(item) ? config_scalar(item) : "";
                size_t len = strlen(s);
                bool good = country_kind == DNSQ_COUNTRY_TXT
                                ? len == 2 && isalpha((unsigned char)s[0]) && isalpha((unsigned char)s[1])
                                : len >= 1 && len <= 3 && strspn(s, "0123456789") == len;
                if (!good) {
                    char *cp = single ? xstrdup(ipath) : config_path_index(ipath, i);
                    config_err(ld, item, cp, "%s, got \"%s\"", country_kind == DNSQ_COUNTRY_TXT
                               ? "expected a two-letter country code such as CN"
                               : "expected an ISO 3166 numeric code such as 156 (type: a)", s);
                    free(cp);
                    ok = false;
                    continue;
                }
                /* Numeric codes as three digits ("36" and "036" are
                 * Australia), as the answer is written (dnsname.c). */
                char *code = country_kind == DNSQ_COUNTRY_TXT ? xstrdup(s)
                                                              : xasprintf("%03u", (unsigned)atoi(s));
                for (char *p = code; *p; p++)
                    *p = (char)toupper((unsigned char)*p);
                c->countries = xreallocarray(c->countries, c->n_countries + 1, sizeof *c->countries);
                c->countries[c->n_countries++] = code;
            }
            sp.kind = country_kind;
            sp.subject = ATTR_CLIENT_ADDRESS;
            sp.zone = zone;
            c->dnsq = config_dns_question(ld, is, ipath, &sp);
            if (c->n_countries == 0)
                ok = false;
        }
        free(zone);
    }
    free(ipath);
    if (c && (!ok || (c->dnsq < 0 && (c->kind != COND_RDNS || fresh)))) {
        config_cond_free(c);
        c = NULL;
    }
    return c;
}

static struct cond *config_parse_dns_cond(struct loader *ld, const char *key, yaml_node_t *v,
                                          const char *path)
{
    if (!strcmp(key, "dnsbl"))
        return config_parse_dnslist(ld, DNSLIST_BL, v, path);
    if (!strcmp(key, "rhsbl"))
        return config_parse_dnslist(ld, DNSLIST_RHSBL, v, path);
    if (!strcmp(key, "dnswl"))
        return config_parse_dnslist(ld, DNSLIST_WL, v, path);
    return config_parse_dns_check(ld, key, v, path);
}

/* A when: mapping. counters_ok: counter names may be tested (actions). */
static struct cond *config_parse_when(struct loader *ld, yaml_node_t *n, const char *path,
                                      bool counters_ok, int depth)
{
    if (depth > CONFIG_MAX_DEPTH) {
        config_err(ld, n, path, "conditions nested more than %d deep", CONFIG_MAX_DEPTH);
        return NULL;
    }
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return NULL;
    struct subject none = {false, 0};
    struct cond *all = config_cond_new(COND_ALL, none);
    bool ok = true;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key) {
            ok = false;
            continue;
        }
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        struct cond *child = NULL;
        if (!strcmp(key, "any") || !strcmp(key, "all")) {
            if (config_expect(ld, v, YAML_SEQUENCE_NODE, kpath)) {
                child = config_cond_new(!strcmp(key, "any") ? COND_ANY : COND_ALL, none);
                size_t i = 0;
                CONFIG_FOR_ITEMS(ld, v, it) {
                    char *ipath = config_path_index(kpath, i++);
                    struct cond *c = config_parse_when(ld, config_node(ld, *it), ipath, counters_ok,
                                                       depth + 1);
                    if (c)
                        config_cond_add_child(child, c);
                    else
                        ok = false;
                    free(ipath);
                }
                if (child->n_children == 0) {
                    if (ok)
                        config_err(ld, v, kpath, "an empty list matches nothing; remove it or add conditions");
                    config_cond_free(child);
                    child = NULL;
                }
            }
        } else if (!strcmp(key, "not")) {
            struct cond *inner = config_parse_when(ld, v, kpath, counters_ok, depth + 1);
            if (inner) {
                child = config_cond_new(COND_NOT, none);
                config_cond_add_child(child, inner);
            }
        } else if (config_is_dns_key(key)) {
            child = config_parse_dns_cond(ld, key, v, kpath);
        } else {
            struct subject subj = {false, -1};
            int ci = rules_find_counter(ld->r, key, strlen(key));
            int ai = attr_lookup(key, strlen(key));
            if (ci >= 0) {
                if (!counters_ok)
                    config_err(ld, k, kpath,
                               "counter scores can be tested in actions only (points rules run before the score is known)");
                else {
                    subj.is_counter = true;
                    subj.index = ci;
                    ld->r->counter_read[ci] = true;
                }
            } else if (ai >= 0) {
                subj.index = ai;
            } else {
                config_err(ld, k, kpath,
                           "\"%s\" is neither a request attribute, a counter nor a DNS check (attributes: client_address, sender, sender_domain, recipient, sasl_username, protocol_state, ...; DNS: dnsbl, rhsbl, dnswl, rdns, sender_mx, helo_resolves, country)",
                           key);
            }
            if (subj.index >= 0)
                child = config_parse_matcher(ld, subj, v, kpath, depth + 1);
        }
        if (child)
            config_cond_add_child(all, child);
        else
            ok = false;
        free(kpath);
    }
    if (!ok) {
        config_cond_free(all);
        return NULL;
    }
    if (depth == 0)
        rules_cond_plan(all);
    return all;
}

/* ---- points and actions (pass two, every file) ---- */

static char *config_where(struct loader *ld, yaml_node_t *n)
{
    return xasprintf("%s:%lu", ld->cur->name, (unsigned long)n->start_mark.line + 1);
}

static bool config_parse_mode(struct loader *ld, yaml_node_t *v, const char *path, bool *log_only)
{
    if (!config_expect(ld, v, YAML_SCALAR_NODE, path))
        return false;
    if (!strcmp(config_scalar(v), "log")) {
        *log_only = true;
        return true;
    }
    if (!strcmp(config_scalar(v), "enforce")) {
        *log_only = false;
        return true;
    }
    config_err(ld, v, path, "expected log or enforce, got \"%s\"", config_scalar(v));
    return false;
}

static bool config_parse_add(struct loader *ld, yaml_node_t *n, const char *path,
                             struct points_rule *pr)
{
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return false;
    bool ok = true;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key) {
            ok = false;
            continue;
        }
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        int ci = rules_find_counter(ld->r, key, strlen(key));
        struct add a = {.counter = ci};
        if (ci < 0) {
            config_err(ld, k, kpath, "no counter named \"%s\" (define it under counters:)", key);
            ok = false;
        } else if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
            const char *s = config_scalar(v);
            double num;
            if (config_decimal(s, &num)) {
                a.kind = ADD_CONST;
                a.value = num;
            } else if (!strcmp(s, "weight")) {
                /* Checked against the rule's when: once it is parsed. */
                a.kind = ADD_WEIGHT;
                a.value = 1;
            } else {
                /* ATTR or ATTR/UNIT: count recipients, messages, bytes ... */
                const char *slash = strchr(s, '/');
                size_t alen = slash ? (size_t)(slash - s) : strlen(s);
                int ai = attr_lookup(s, alen);
                a.kind = ADD_ATTR;
                a.value = 1;
                if (ai != ATTR_RECIPIENT_COUNT && ai != ATTR_SIZE && ai != ATTR_ENCRYPTION_KEYSIZE) {
                    config_err(ld, v, kpath,
                               "expected a number, weight (of the listing DNS zones), recipient_count or size (optionally /UNIT, e.g. size/1000000), got \"%s\"",
                               s);
                    ok = false;
                } else {
                    a.attr = (enum attr)ai;
                    if (slash) {
                        if (!config_decimal(slash + 1, &a.value) || !(a.value > 0)) {
                            config_err(ld, v, kpath, "the unit after '/' must be a positive number");
                            ok = false;
                        }
                    }
                }
            }
            if (ok) {
                pr->adds = xreallocarray(pr->adds, pr->n_adds + 1, sizeof *pr->adds);
                pr->adds[pr->n_adds++] = a;
            }
        } else {
            ok = false;
        }
        free(kpath);
    }
    return ok;
}

static bool config_cond_has_dnslist(const struct cond *c)
{
    if (!c)
        return false;
    if (c->kind == COND_DNSLIST)
        return true;
    for (size_t i = 0; i < c->n_children; i++)
        if (config_cond_has_dnslist(c->children[i]))
            return true;
    return false;
}

/* config_parse_rule_field - name:, when: and mode:, which points and
 * action rules share. Returns true if key was one of them; clears *ok
 * on a problem (already reported). */
static bool config_parse_rule_field(struct loader *ld, const char *key, yaml_node_t *v,
                                    const char *kpath, bool counters_ok, char **name,
                                    struct cond **when, bool *log_only, bool *ok)
{
    if (!strcmp(key, "name")) {
        if (config_expect(ld, v, YAML_SCALAR_NODE, kpath) && config_valid_name(config_scalar(v))) {
            free(*name);
            *name = xstrdup(config_scalar(v));
        } else {
            if (v->type == YAML_SCALAR_NODE)
                config_err(ld, v, kpath, "a rule name uses letters, digits, '_' and '-' only");
            *ok = false;
        }
        return true;
    }
    if (!strcmp(key, "when")) {
        config_cond_free(*when);
        *when = config_parse_when(ld, v, kpath, counters_ok, 0);
        if (!*when)
            *ok = false;
        return true;
    }
    if (!strcmp(key, "mode")) {
        if (!config_parse_mode(ld, v, kpath, log_only))
            *ok = false;
        return true;
    }
    return false;
}

static void config_parse_points_rule(struct loader *ld, yaml_node_t *n, const char *path)
{
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return;
    struct points_rule pr = {0};
    bool ok = true, have_add = false;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key) {
            ok = false;
            continue;
        }
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        if (config_parse_rule_field(ld, key, v, kpath, false, &pr.name, &pr.when, &pr.log_only,
                                    &ok)) {
            ; /* name, when, mode */
        } else if (!strcmp(key, "add")) {
            have_add = true;
            if (!config_parse_add(ld, v, kpath, &pr))
                ok = false;
        } else if (!strcmp(key, "then")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                const char *s = config_scalar(v);
                if (!strcasecmp(s, "ok") || !strcasecmp(s, "dunno")) {
                    pr.then = VERDICT_DUNNO;
                    pr.then_set = true;
                } else if (!strcasecmp(s, "permit")) {
                    pr.then = VERDICT_PERMIT;
                    pr.then_set = true;
                } else {
                    config_err(ld, v, kpath,
                               "expected ok (stop counting, answer DUNNO) or permit (stop, answer OK), got \"%s\"",
                               s);
                    ok = false;
                }
            } else {
                ok = false;
            }
        } else {
            config_unknown_key(ld, k, path, key, "name, when, add, then, mode");
            ok = false;
        }
        free(kpath);
    }
    if (ok && !pr.name) {
        config_err(ld, n, path, "a rule needs a name (it is logged with every decision)");
        ok = false;
    }
    if (ok && !have_add && !pr.then_set) {
        config_err(ld, n, path, "a points rule needs add: or then:");
        ok = false;
    }
    for (size_t i = 0; ok && i < pr.n_adds; i++) {
        if (pr.adds[i].kind != ADD_WEIGHT)
            continue;
        pr.adds_weight = true;
        if (!config_cond_has_dnslist(pr.when)) {
            config_err(ld, n, path, "add: weight needs a dnsbl:, rhsbl: or dnswl: condition in when:");
            ok = false;
        }
    }
    if (!ok) {
        free(pr.name);
        config_cond_free(pr.when);
        free(pr.adds);
        return;
    }
    pr.where = config_where(ld, n);
    struct rules *r = ld->r;
    r->points = xreallocarray(r->points, r->n_points + 1, sizeof *r->points);
    r->points[r->n_points++] = pr;
}

static struct template *config_compile_template(struct loader *ld, yaml_node_t *v, const char *text,
                                                const char *path)
{
    struct template *t = NULL;
    char err[256];
    if (template_compile(text, rules_template_resolve, ld->r, &t, err, sizeof err) < 0) {
        config_err(ld, v, path, "%s (variables: request attributes, score.COUNTER, key.COUNTER, rule, dnsbl.hits, dnsbl.zones, dnsbl.codes, rhsbl.hits, rhsbl.zones, dnswl.hits, dnswl.zones, country)", err);
        return NULL;
    }
    return t;
}

/* A header as Postfix's PREPEND wants it: a name of printable
 * characters other than ':', optional blanks, then ':'. */
static bool config_is_header(const char *s)
{
    const char *p = s;
    while (*p > ' ' && *p < 0x7f && *p != ':')
        p++;
    if (p == s)
        return false;
    while (*p == ' ' || *p == '\t')
        p++;
    return *p == ':';
}

/* config_verdict_arg_problem - why Postfix would ignore this verdict's
 * literal argument (it logs a warning and goes on as with DUNNO), or
 * NULL. An argument with %{...} is checked when it is expanded
 * (actions_format) as far as its literal start cannot tell. */
static const char *config_verdict_arg_problem(enum verdict v, const char *arg)
{
    const char *var = strstr(arg, "%{");
    size_t lit = var ? (size_t)(var - arg) : strlen(arg);
    if (v == VERDICT_REDIRECT && !var && !strchr(arg, '@'))
        return "redirect needs an address (user@domain): Postfix ignores any other target";
    if (v == VERDICT_FILTER && !var && !strchr(arg, ':'))
        return "filter needs transport:destination (e.g. smtp:[127.0.0.1]:10025): Postfix "
               "ignores any other target";
    if (v == VERDICT_PREPEND) {
        /* With %{...}, what comes before it must still fit a header. */
        bool blank_first = false;
        for (size_t i = 0; i < lit && arg[i] != ':'; i++)
            blank_first |= arg[i] <= ' ' || arg[i] == 0x7f;
        if (var ? blank_first : !config_is_header(arg))
            return "prepend needs a header, \"Name: value\" (in do: or message:): Postfix "
                   "ignores any other text";
    }
    return NULL;
}

/* One item of do:. Returns false on error. */
static bool config_parse_do_item(struct loader *ld, yaml_node_t *item, const char *path,
                                 struct action_rule *ar, bool *have_verdict)
{
    if (!config_expect(ld, item, YAML_SCALAR_NODE, path))
        return false;
    const char *s = config_scalar(item);
    size_t wlen = strcspn(s, " \t");
    const char *arg = s + wlen;
    while (*arg == ' ' || *arg == '\t')
        arg++;
    char word[32];
    if (wlen >= sizeof word) {
        config_err(ld, item, path, "unknown action \"%s\"", s);
        return false;
    }
    memcpy(word, s, wlen);
    word[wlen] = '\0';
    for (char *p = word; *p; p++)
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');

    if (!strcmp(word, "log")) {
        ar->side_log = true;
        return !*arg || (config_err(ld, item, path, "log takes no argument"), false);
    }
    if (!strcmp(word, "delete")) {
        ar->side_delete = true;
        /* "delete ip user": the counters to reset (a bare "delete" is
         * refused once the rule is read, with a hint). */
        char names[512];
        snprintf(names, sizeof names, "%s", arg);
        for (char *save = NULL, *tok = strtok_r(names, " ,\t", &save); tok;
             tok = strtok_r(NULL, " ,\t", &save)) {
            int ci = rules_find_counter(ld->r, tok, strlen(tok));
            if (ci < 0) {
                config_err(ld, item, path, "delete: no counter named \"%s\"", tok);
                return false;
            }
            ar->delete_counters = xreallocarray(ar->delete_counters, ar->n_delete + 1, sizeof(int));
            ar->delete_counters[ar->n_delete++] = ci;
            ld->r->counter_read[ci] = true; /* its key must be known */
        }
        return true;
    }
    if (!strcmp(word, "wait")) {
        double d;
        if (!*arg || decay_parse_duration(arg, &d) < 0 || d <= 0 || d > CONFIG_MAX_HOLD) {
            config_err(ld, item, path,
                       "wait needs a duration up to %ds (keep it below Postfix's policy timeout), e.g. \"wait 5s\"",
                       CONFIG_MAX_HOLD);
            return false;
        }
        ar->wait = d;
        return true;
    }
    if (!strcmp(word, "mail")) {
        /* "mail" alone: the key of the first counter the rule tests;
         * "mail COUNTER": that counter's key. */
        if (!ld->cfg->alerts.enabled) {
            config_err(ld, item, path,
                       "mail needs a top-level alerts: section (smtp: or sendmail:, from:, to:)");
            return false;
        }
        ar->side_mail = true;
        if (*arg) {
            int ci = rules_find_counter(ld->r, arg, strlen(arg));
            if (ci < 0) {
                config_err(ld, item, path, "mail: no counter named \"%s\"", arg);
                return false;
            }
            ar->mail_counter = ci;
            ld->r->counter_read[ci] = true; /* its key must be known */
        }
        return true;
    }
    enum verdict v;
    if (verdict_parse(word, wlen, &v) < 0) {
        config_err(ld, item, path,
                   "unknown action \"%s\" (verdicts: dunno, permit, defer, reject, hold, discard, redirect ADDR, prepend HEADER, filter TRANSPORT, warn, sleep DURATION; side effects: log, mail [COUNTER], delete [COUNTERS], wait DURATION)",
                   word);
        return false;
    }
    if (*have_verdict) {
        config_err(ld, item, path, "only one verdict per rule (already %s)", verdict_name(ar->verdict));
        return false;
    }
    *have_verdict = true;
    ar->verdict = v;
    bool needs_arg = v == VERDICT_REDIRECT || v == VERDICT_FILTER || v == VERDICT_SLEEP;
    bool takes_arg = needs_arg || v == VERDICT_PREPEND;
    if (needs_arg && !*arg) {
        config_err(ld, item, path, "%s needs an argument, e.g. \"%s\"", word,
                   v == VERDICT_REDIRECT ? "redirect abuse@example.net"
                   : v == VERDICT_FILTER ? "filter smtp:[127.0.0.1]:10025"
                                          : "sleep 5s");
        return false;
    }
    if (*arg && !takes_arg) {
        config_err(ld, item, path, "%s takes no argument here; put the text in message:", word);
        return false;
    }
    if (v == VERDICT_SLEEP) {
        double d;
        if (decay_parse_duration(arg, &d) < 0 || d < 1 || d > CONFIG_MAX_HOLD || d != floor(d)) {
            /* Postfix's SLEEP takes whole seconds. */
            config_err(ld, item, path, "sleep needs whole seconds from 1s to %ds", CONFIG_MAX_HOLD);
            return false;
        }
        ar->sleep = (unsigned)d;
        return true;
    }
    /* A prepend's header may come from message:, checked with the rule. */
    const char *why = v == VERDICT_PREPEND ? NULL : config_verdict_arg_problem(v, arg);
    if (why) {
        config_err(ld, item, path, "%s", why);
        return false;
    }
    if (*arg) {
        ar->arg = config_compile_template(ld, item, arg, path);
        if (!ar->arg)
            return false;
    }
    return true;
}

/* A reject/defer message that starts with an SMTP code must use the
 * right class: Postfix would otherwise turn a "defer" into a 5xx. */
static void config_check_message_code(struct loader *ld, yaml_node_t *v, const char *path,
                                      const struct action_rule *ar, const char *text)
{
    bool coded = strlen(text) >= 4 && text[0] >= '2' && text[0] <= '5' && text[1] >= '0' &&
                 text[1] <= '9' && text[2] >= '0' && text[2] <= '9' && text[3] == ' ';
    if (!coded)
        return;
    if (ar->verdict == VERDICT_REJECT && text[0] != '5')
        config_err(ld, v, path, "a reject message must start with a 5xx code, got %.3s", text);
    else if (ar->verdict == VERDICT_DEFER && text[0] != '4')
        config_err(ld, v, path, "a defer message must start with a 4xx code, got %.3s", text);
    else if (ar->verdict != VERDICT_REJECT && ar->verdict != VERDICT_DEFER)
        config_err(ld, v, path, "only reject and defer messages may start with an SMTP code");
}

/* config_first_counter - the first counter a condition tests, or -1:
 * whose key an alert names by default. */
static int config_first_counter(const struct cond *c)
{
    if (!c)
        return -1;
    if (c->subject.is_counter && c->kind != COND_ALL && c->kind != COND_ANY && c->kind != COND_NOT)
        return c->subject.index;
    for (size_t i = 0; i < c->n_children; i++) {
        int ci = config_first_counter(c->children[i]);
        if (ci >= 0)
            return ci;
    }
    return -1;
}

static void config_parse_action_rule(struct loader *ld, yaml_node_t *n, const char *path)
{
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return;
    struct action_rule ar = {.verdict = VERDICT_DUNNO, .mail_counter = -1};
    bool ok = true, have_do = false, have_verdict = false;
    yaml_node_t *message = NULL;
    char *mpath = NULL;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key) {
            ok = false;
            continue;
        }
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        if (config_parse_rule_field(ld, key, v, kpath, true, &ar.name, &ar.when, &ar.log_only,
                                    &ok)) {
            ; /* name, when, mode */
        } else if (!strcmp(key, "do")) {
            have_do = true;
            if (v->type == YAML_SEQUENCE_NODE) {
                size_t i = 0;
                CONFIG_FOR_ITEMS(ld, v, it) {
                    char *ipath = config_path_index(kpath, i++);
                    if (!config_parse_do_item(ld, config_node(ld, *it), ipath, &ar, &have_verdict))
                        ok = false;
                    free(ipath);
                }
            } else if (!config_parse_do_item(ld, v, kpath, &ar, &have_verdict)) {
                ok = false;
            }
        } else if (!strcmp(key, "message")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                message = v;
                free(mpath);
                mpath = xstrdup(kpath);
            } else {
                ok = false;
            }
        } else {
            config_unknown_key(ld, k, path, key, "name, when, do, message, mode");
            ok = false;
        }
        free(kpath);
    }
    if (ok && !ar.name) {
        config_err(ld, n, path, "a rule needs a name (it is logged with every decision)");
        ok = false;
    }
    if (ok && !have_do) {
        config_err(ld, n, path, "an action rule needs do: (e.g. do: reject)");
        ok = false;
    }
    if (ok && message) {
        config_check_message_code(ld, message, mpath, &ar, config_scalar(message));
        /* Only the operator's literal text may carry the SMTP code: a
         * message starting with %{...} must not let a client's value
         * ("550 ...") turn a defer into a reject. */
        const char *m = config_scalar(message);
        ar.message_coded = strlen(m) >= 4 && m[0] >= '2' && m[0] <= '5' && m[1] >= '0' &&
                           m[1] <= '9' && m[2] >= '0' && m[2] <= '9' && m[3] == ' ';
        ar.message = config_compile_template(ld, message, config_scalar(message), mpath);
        if (!ar.message)
            ok = false;
    }
    if (ok && ar.verdict == VERDICT_PREPEND) {
        yaml_node_t *at = message ? message : n;
        const char *header = ar.arg ? template_source(ar.arg) : message ? config_scalar(message) : "";
        const char *why = config_verdict_arg_problem(VERDICT_PREPEND, header);
        if (why) {
            config_err(ld, at, message ? mpath : path, "%s", why);
            ok = false;
        }
    }
    free(mpath);
    if (ok && ar.side_mail && ar.mail_counter < 0)
        ar.mail_counter = config_first_counter(ar.when);
    if (ok && ar.side_delete && ar.n_delete == 0) {
        /* Plain "delete": reset the counters the rule tests. */
        config_err(ld, n, path, "delete needs the counters to reset, e.g. \"delete ip user\"");
        ok = false;
    }
    if (!ok) {
        free(ar.name);
        config_cond_free(ar.when);
        if (ar.arg)
            template_free(ar.arg);
        if (ar.message)
            template_free(ar.message);
        free(ar.delete_counters);
        return;
    }
    ar.where = config_where(ld, n);
    struct rules *r = ld->r;
    r->actions = xreallocarray(r->actions, r->n_actions + 1, sizeof *r->actions);
    r->actions[r->n_actions++] = ar;
}

static void config_parse_rule_section(struct loader *ld, yaml_node_t *n, const char *section)
{
    if (!config_expect(ld, n, YAML_SEQUENCE_NODE, section))
        return;
    size_t i = 0;
    CONFIG_FOR_ITEMS(ld, n, it) {
        char *ipath = config_path_index(section, i++);
        if (!strcmp(section, "points"))
            config_parse_points_rule(ld, config_node(ld, *it), ipath);
        else
            config_parse_action_rule(ld, config_node(ld, *it), ipath);
        free(ipath);
    }
}

/* ---- alerts and tracking (main file only) ---- */

/* A mail address in the config: plain ASCII local@domain, nothing that
 * could break an SMTP command or a header. */
static bool config_valid_address(const char *s)
{
    const char *at = strrchr(s, '@');
    size_t n = strlen(s);
    if (!at || at == s || !at[1] || n > 254)
        return false;
    for (const char *p = s; *p; p++)
        if (*p <= ' ' || *p >= 0x7f || strchr("<>,;\"()[]\\", *p))
            return false;
    return true;
}

static char *config_template_text(struct loader *ld, yaml_node_t *v, const char *path)
{
    if (!config_expect(ld, v, YAML_SCALAR_NODE, path))
        return NULL;
    char err[512];
    if (alertmsg_check(config_scalar(v), err, sizeof err) < 0) {
        config_err(ld, v, path, "%s", err);
        return NULL;
    }
    return xstrdup(config_scalar(v));
}

static void config_parse_alerts(struct loader *ld, yaml_node_t *n, const char *path)
{
    struct config_alerts *al = &ld->cfg->alerts;
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return;
    al->enabled = true;
    yaml_node_t *smtp = NULL, *sendmail = NULL;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key)
            continue;
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        unsigned long u;
        double d;
        bool b;
        if (!strcmp(key, "smtp")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                struct sockaddr_storage ss;
                smtp = v;
                if (smtpc_parse_address(config_scalar(v), &ss) < 0)
                    config_err(ld, v, kpath,
                               "expected an IP address and port, e.g. \"127.0.0.1:25\" or \"[::1]:25\", got \"%s\"",
                               config_scalar(v));
                free(al->smtp);
                al->smtp = xstrdup(config_scalar(v));
            }
        } else if (!strcmp(key, "sendmail")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                sendmail = v;
                if (config_scalar(v)[0] != '/')
                    config_err(ld, v, kpath, "expected an absolute path, e.g. /usr/sbin/sendmail");
                free(al->sendmail);
                al->sendmail = xstrdup(config_scalar(v));
            }
        } else if (!strcmp(key, "from")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                if (!config_valid_address(config_scalar(v)))
                    config_err(ld, v, kpath, "expected a mail address like smtpguard@isp.example, got \"%s\"",
                               config_scalar(v));
                free(al->from);
                al->from = xstrdup(config_scalar(v));
            }
        } else if (!strcmp(key, "to")) {
            yaml_node_t *single = config_is_scalar(v) ? v : NULL;
            if (single || config_expect(ld, v, YAML_SEQUENCE_NODE, kpath)) {
                size_t count = single ? 1 : (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
                for (size_t i = 0; i < count; i++) {
                    yaml_node_t *item = single ? single : config_node(ld, v->data.sequence.items.start[i]);
                    char *ipath = single ? xstrdup(kpath) : config_path_index(kpath, i);
                    if (config_expect(ld, item, YAML_SCALAR_NODE, ipath)) {
                        if (!config_valid_address(config_scalar(item)))
                            config_err(ld, item, ipath, "expected a mail address like abuse@isp.example, got \"%s\"",
                                       config_scalar(item));
                        else if (al->n_to >= 100)
                            config_err(ld, item, ipath, "at most 100 addresses");
                        else {
                            al->to = xreallocarray(al->to, al->n_to + 1, sizeof *al->to);
                            al->to[al->n_to++] = xstrdup(config_scalar(item));
                        }
                    }
                    free(ipath);
                }
            }
        } else if (!strcmp(key, "helo")) {
            if (config_expect(ld, v, YAML_SCALAR_NODE, kpath)) {
                const char *h = config_scalar(v);
                if (!*h || strlen(h) > 255 || strpbrk(h, " \t\r\n<>"))
                    config_err(ld, v, kpath, "expected a host name");
                free(al->helo);
                al->helo = xstrdup(h);
            }
        } else if (!strcmp(key, "every")) {
            if (config_parse_duration(ld, v, kpath, 1, &d)) {
                if (d > 7 * 86400)
                    config_err(ld, v, kpath, "at most 7d");
                al->every = d;
            }
        } else if (!strcmp(key, "digest")) {
            if (config_parse_bool(ld, v, kpath, &b))
                al->digest = b;
        } else if (!strcmp(key, "subject")) {
            char *t = config_template_text(ld, v, kpath);
            if (t) {
                free(al->subject);
                al->subject = t;
            }
        } else if (!strcmp(key, "body")) {
            char *t = config_template_text(ld, v, kpath);
            if (t) {
                free(al->body);
                al->body = t;
            }
        } else if (!strcmp(key, "timeout")) {
            if (config_parse_duration(ld, v, kpath, 0.1, &d)) {
                if (d > 600)
                    config_err(ld, v, kpath, "at most 600s");
                al->timeout = d;
            }
        } else if (!strcmp(key, "retries")) {
            if (config_parse_uint(ld, v, kpath, 0, 100, &u))
                al->retries = (unsigned)u;
        } else if (!strcmp(key, "retry_delay")) {
            if (config_parse_duration(ld, v, kpath, 0.1, &d)) {
                if (d > 86400)
                    config_err(ld, v, kpath, "at most 1d");
                al->retry_delay = d;
            }
        } else if (!strcmp(key, "queue")) {
            if (config_parse_uint(ld, v, kpath, 1, 100000, &u))
                al->queue = (unsigned)u;
        } else if (!strcmp(key, "evidence")) {
            if (config_parse_uint(ld, v, kpath, 0, 1000, &u))
                al->evidence = (unsigned)u;
        } else {
            config_unknown_key(ld, k, path, key,
                               "smtp, sendmail, from, to, every, digest, subject, body, helo, timeout, retries, retry_delay, queue, evidence");
        }
        free(kpath);
    }
    if (smtp && sendmail)
        config_err(ld, sendmail, path, "smtp: and sendmail: exclude each other; choose one");
    else if (!smtp && !sendmail)
        config_err(ld, n, path, "alerts need smtp: \"IP:port\" (a relay) or sendmail: PATH");
    if (!al->from)
        config_err(ld, n, path, "alerts need from: (the sender address)");
    if (!al->n_to)
        config_err(ld, n, path, "alerts need to: (one or more addresses)");
}

static void config_parse_tracking(struct loader *ld, yaml_node_t *n, const char *path)
{
    struct config_tracking *tr = &ld->cfg->tracking;
    tr->enabled = tr->emit = true;
    if (config_is_null(n))
        return; /* "tracking:" alone: every message, defaults */
    if (!config_expect(ld, n, YAML_MAPPING_NODE, path))
        return;
    CONFIG_FOR_PAIRS(ld, n, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, path, &k);
        if (!key)
            continue;
        yaml_node_t *v = config_node(ld, pair->value);
        char *kpath = config_path(path, key);
        unsigned long u;
        double d;
        if (!strcmp(key, "when")) {
            config_cond_free(tr->when);
            tr->when = config_parse_when(ld, v, kpath, true, 0);
        } else if (!strcmp(key, "max_open")) {
            if (config_parse_uint(ld, v, kpath, 1, 10000000, &u))
                tr->max_open = (unsigned)u;
        } else if (!strcmp(key, "idle")) {
            if (config_parse_duration(ld, v, kpath, 1, &d)) {
                if (d > 86400)
                    config_err(ld, v, kpath, "at most 1d");
                tr->idle = d;
            }
        } else if (!strcmp(key, "history")) {
            if (config_parse_uint(ld, v, kpath, 0, 10000000, &u))
                tr->history = (unsigned)u;
        } else {
            config_unknown_key(ld, k, path, key, "when, max_open, idle, history");
        }
        free(kpath);
    }
}

/* ---- the driver ---- */

static const char *const config_rule_sections = "counters, lists, points, actions";

static bool config_is_rule_section(const char *key)
{
    return !strcmp(key, "counters") || !strcmp(key, "lists") || !strcmp(key, "points") ||
           !strcmp(key, "actions");
}

static void config_parse_includes(struct loader *ld, yaml_node_t *n)
{
    yaml_node_t *single = config_is_scalar(n) ? n : NULL;
    if (!single && !config_expect(ld, n, YAML_SEQUENCE_NODE, "include"))
        return;
    size_t count = single ? 1 : (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    struct config_file *main_file = ld->cur;
    for (size_t i = 0; i < count; i++) {
        yaml_node_t *item = single ? single : config_node(ld, n->data.sequence.items.start[i]);
        char *ipath = config_path_index("include", i);
        if (!config_expect(ld, item, YAML_SCALAR_NODE, ipath)) {
            free(ipath);
            continue;
        }
        char *pattern = config_resolve_path(ld, config_scalar(item));
        glob_t g;
        int rc = config_allow_files ? glob(pattern, GLOB_ERR, NULL, &g) : GLOB_ABORTED;
        if (rc == GLOB_NOMATCH) {
            /* A pattern may match nothing (an empty rules.d); a plain
             * file name must exist. */
            if (!strpbrk(pattern, "*?["))
                config_err(ld, item, ipath, "cannot read %s: no such file", pattern);
        } else if (rc != 0) {
            config_err(ld, item, ipath, "cannot expand %s", pattern);
        } else {
            for (size_t k = 0; k < g.gl_pathc; k++) {
                struct config_file *f = config_load_file(ld, g.gl_pathv[k], item, ipath);
                ld->cur = main_file; /* diagnostics of this loop stay on the main file */
                (void)f;
            }
        }
        if (rc == 0)
            globfree(&g);
        free(pattern);
        free(ipath);
    }
}

static void config_defaults(struct config *cfg)
{
    cfg->listen[0] = xstrdup(CONFIG_DEFAULT_PORT_HINT);
    cfg->n_listen = 1;
    cfg->workers = 1;
    cfg->limits.protocol.max_line = PROTOCOL_DEFAULT_MAX_LINE;
    cfg->limits.protocol.max_request = PROTOCOL_DEFAULT_MAX_REQUEST;
    cfg->limits.protocol.max_attrs = PROTOCOL_DEFAULT_MAX_ATTRS;
    cfg->limits.idle_timeout = 300; /* Postfix drops idle policy connections after 300 s */
    cfg->limits.max_connections = 1000;
    cfg->store.backend = STORE_BACKEND_MEMORY;
    cfg->store.redis_address = xstrdup("127.0.0.1:6379");
    cfg->store.prefix = xstrdup("sg:");
    cfg->store.timeout_ms = 100;
    cfg->store.memory_max_keys = 1000000;
    cfg->store.top_floor = 10;
    cfg->store.top_size = 100;
    cfg->record.max_size = 100ull * 1024 * 1024;
    cfg->record.keep = 5;
    cfg->on_error = xstrdup("DUNNO");
    cfg->log.to_stderr = true;
    cfg->log.level = LOG_LEVEL_INFO;
    cfg->log.stream_maxlen = 100000;
    cfg->log.stream_decisions = true;
    cfg->alerts.every = 3600;
    cfg->alerts.timeout = 30;
    cfg->alerts.retries = 5;
    cfg->alerts.retry_delay = 60;
    cfg->alerts.queue = 100;
    cfg->alerts.evidence = 10;
    cfg->alerts.subject = xstrdup(alertmsg_default_subject);
    cfg->alerts.body = xstrdup(alertmsg_default_body);
    cfg->tracking.max_open = 10000;
    cfg->tracking.idle = 600;
    cfg->tracking.history = 1000;
    dns_config_defaults(&cfg->dns);
}

/*
 * config_check_workers - what workers: N > 1 rules out. Each worker is a
 * process of its own: the memory store would split every counter between
 * them; a unix socket cannot be bound N times the way SO_REUSEPORT binds
 * a TCP port; N processes rotating one recording would tear it.
 */
static void config_check_workers(struct loader *ld, yaml_node_t *n)
{
    struct config *cfg = ld->cfg;
    if (cfg->workers <= 1)
        return;
    if (cfg->store.backend == STORE_BACKEND_MEMORY)
        config_err(ld, n, "workers",
                   "workers: %u needs store.backend: redis: the memory store lives in one "
                   "process, and counters would split between the workers",
                   cfg->workers);
    for (size_t i = 0; i < cfg->n_listen; i++)
        if (!strncmp(cfg->listen[i], "unix:", 5))
            config_err(ld, n, "workers",
                       "workers: %u needs TCP listeners: a unix socket (%s) cannot be shared "
                       "with SO_REUSEPORT; listen on 127.0.0.1:PORT instead",
                       cfg->workers, cfg->listen[i]);
    if (cfg->record.file)
        config_err(ld, n, "workers",
                   "workers: %u and record: do not go together: the workers would write and "
                   "rotate one file at once", cfg->workers);
}

static void config_main_settings(struct loader *ld, yaml_node_t *root)
{
    yaml_node_t *workers = NULL;
    CONFIG_FOR_PAIRS(ld, root, pair) {
        yaml_node_t *k;
        const char *key = config_pair_key(ld, pair, "", &k);
        if (!key)
            continue;
        yaml_node_t *v = config_node(ld, pair->value);
        if (!strcmp(key, "listen"))
            config_parse_listen(ld, v, key);
        else if (!strcmp(key, "clients"))
            config_parse_clients(ld, v, key);
        else if (!strcmp(key, "limits"))
            config_parse_limits(ld, v, key);
        else if (!strcmp(key, "store"))
            config_parse_store(ld, v, key);
        else if (!strcmp(key, "log"))
            config_parse_log(ld, v, key);
        else if (!strcmp(key, "dns"))
            config_parse_dns(ld, v, key);
        else if (!strcmp(key, "admin"))
            config_parse_admin(ld, v, key);
        else if (!strcmp(key, "record"))
            config_parse_record(ld, v, key);
        else if (!strcmp(key, "alerts"))
            config_parse_alerts(ld, v, key);
        else if (!strcmp(key, "workers")) {
            unsigned long w;
            if (config_parse_uint(ld, v, key, 1, CONFIG_MAX_WORKERS, &w)) {
                ld->cfg->workers = (unsigned)w;
                workers = v;
            }
        } else if (!strcmp(key, "include") || !strcmp(key, "tracking"))
            ; /* include: read before the rules; tracking: after them (config_run) */
        else if (!config_is_rule_section(key))
            config_unknown_key(ld, k, "", key,
                               "listen, clients, limits, store, dns, include, log, admin, record, alerts, tracking, workers, counters, lists, points, actions");
    }
    if (workers)
        config_check_workers(ld, workers);
}

/* Run one pass over the rule sections of every file. */
static void config_rule_pass(struct loader *ld, bool definitions)
{
    for (size_t i = 0; i < ld->n_files; i++) {
        ld->cur = &ld->files[i];
        yaml_node_t *root = config_root(ld);
        if (!root) {
            /* An included file that parsed to nothing (empty, or only
             * comments) would drop its rules without a word; the main
             * file gets the same error in config_run. */
            yaml_node_t *top = yaml_document_get_root_node(&ld->cur->doc);
            if (definitions && i > 0 && ld->cur->loaded && (!top || config_is_null(top)))
                config_error_add(ld->errs,
                                 xasprintf("%s:1:1: the file is empty (a truncated copy?); an "
                                           "included file needs rules (remove it if it has none)",
                                           ld->cur->name));
            continue;
        }
        CONFIG_FOR_PAIRS(ld, root, pair) {
            yaml_node_t *k = config_node(ld, pair->key);
            if (!config_is_scalar(k))
                continue; /* reported by config_main_settings or below */
            const char *key = config_scalar(k);
            yaml_node_t *v = config_node(ld, pair->value);
            if (definitions && (!strcmp(key, "counters") || !strcmp(key, "lists")))
                config_parse_definitions(ld, v, key);
            else if (!definitions && (!strcmp(key, "points") || !strcmp(key, "actions")))
                config_parse_rule_section(ld, v, key);
            else if (definitions && i > 0 && !config_is_rule_section(key))
                config_err(ld, k, "", "an included file may hold only %s, not \"%s\"",
                           config_rule_sections, key);
        }
    }
}

static struct config *config_run(struct loader *ld)
{
    struct config *cfg = ld->cfg;
    ld->cur = &ld->files[0];
    yaml_node_t *root = config_root(ld);
    if (!root && ld->errs->n == 0)
        config_error_add(ld->errs, xasprintf("%s:1:1: the file is empty (a truncated copy?); "
                                             "a config needs at least its rules or settings",
                                             ld->files[0].name));
    if (root) {
        config_main_settings(ld, root);
        CONFIG_FOR_PAIRS(ld, root, pair) {
            yaml_node_t *k = config_node(ld, pair->key);
            if (config_is_scalar(k) && !strcmp(config_scalar(k), "include"))
                config_parse_includes(ld, config_node(ld, pair->value));
        }
    }
    config_rule_pass(ld, true);
    ld->r->counter_read = xcalloc(ld->r->n_counters ? ld->r->n_counters : 1, sizeof(bool));
    config_rule_pass(ld, false);
    if (root) {
        /* Its when: may test counters, known only now. */
        ld->cur = &ld->files[0];
        CONFIG_FOR_PAIRS(ld, root, pair) {
            yaml_node_t *k = config_node(ld, pair->key);
            if (config_is_scalar(k) && !strcmp(config_scalar(k), "tracking"))
                config_parse_tracking(ld, config_node(ld, pair->value), "tracking");
        }
    }
    if (cfg->alerts.enabled)
        cfg->tracking.enabled = true; /* alerts take their evidence from it */

    if (!cfg->clients) {
        /* Default: loopback only; an operator opens it up explicitly. */
        struct cidr net;
        cfg->clients = cidr_set_new();
        cidr_parse("127.0.0.0/8", 11, &net, NULL);
        cidr_set_add(cfg->clients, &net);
        cidr_parse("::1", 3, &net, NULL);
        cidr_set_add(cfg->clients, &net);
        cidr_set_finish(cfg->clients);
    }
    cfg->rules = ld->r;
    ld->r = NULL;
    for (size_t i = 0; i < ld->n_files; i++) {
        if (ld->files[i].loaded)
            yaml_document_delete(&ld->files[i].doc);
        free(ld->files[i].name);
    }
    free(ld->basedir);
    if (ld->errs->n) {
        config_unref(cfg);
        return NULL;
    }
    return cfg;
}

static void config_loader_init(struct loader *ld, const char *path, struct config_errors *errs)
{
    memset(ld, 0, sizeof *ld);
    ld->errs = errs;
    ld->cfg = xcalloc(1, sizeof *ld->cfg);
    ld->cfg->refs = 1;
    ld->cfg->generation = 1;
    ld->cfg->path = xstrdup(path);
    config_defaults(ld->cfg);
    ld->r = xcalloc(1, sizeof *ld->r);
}

static void config_loader_fail(struct loader *ld)
{
    for (size_t i = 0; i < ld->n_files; i++) {
        if (ld->files[i].loaded)
            yaml_document_delete(&ld->files[i].doc);
        free(ld->files[i].name);
    }
    free(ld->basedir);
    rules_free(ld->r);
    config_unref(ld->cfg);
}

struct config *config_load(const char *path, struct config_errors *errs)
{
    struct loader ld;
    config_loader_init(&ld, path, errs);
    const char *slash = strrchr(path, '/');
    ld.basedir = slash ? xstrndup(path, (size_t)(slash - path) + (slash == path)) : xstrdup(".");
    if (!config_load_file(&ld, path, NULL, NULL)) {
        config_loader_fail(&ld);
        return NULL;
    }
    return config_run(&ld);
}

struct config *config_load_string(const char *name, const char *text, size_t len,
                                  struct config_errors *errs)
{
    struct loader ld;
    config_loader_init(&ld, name, errs);
    ld.basedir = xstrdup(".");
    if (!config_add_file(&ld, name, text, len)) {
        config_loader_fail(&ld);
        return NULL;
    }
    return config_run(&ld);
}

struct config *config_ref(struct config *cfg)
{
    cfg->refs++;
    return cfg;
}

void config_unref(struct config *cfg)
{
    if (!cfg || --cfg->refs > 0)
        return;
    free(cfg->path);
    for (size_t i = 0; i < cfg->n_listen; i++)
        free(cfg->listen[i]);
    if (cfg->clients)
        cidr_set_free(cfg->clients);
    store_config_fini(&cfg->store);
    free(cfg->log.stream_key);
    free(cfg->alerts.smtp);
    free(cfg->alerts.sendmail);
    free(cfg->alerts.from);
    for (size_t i = 0; i < cfg->alerts.n_to; i++)
        free(cfg->alerts.to[i]);
    free(cfg->alerts.to);
    free(cfg->alerts.helo);
    free(cfg->alerts.subject);
    free(cfg->alerts.body);
    config_cond_free(cfg->tracking.when);
    dns_config_fini(&cfg->dns);
    free(cfg->on_error);
    free(cfg->log.syslog);
    free(cfg->log.json);
    free(cfg->admin.listen);
    if (cfg->admin.token) {
        memset(cfg->admin.token, 0, strlen(cfg->admin.token));
        free(cfg->admin.token);
    }
    free(cfg->record.file);
    rules_free(cfg->rules);
    free(cfg);
}

int config_refresh_lists(struct config *cfg)
{
    int reloaded = 0;
    if (!cfg->rules)
        return 0;
    for (size_t i = 0; i < cfg->rules->n_lists; i++) {
        struct list *l = &cfg->rules->lists[i];
        char err[1024];
        int rc = list_refresh(l, err, sizeof err);
        if (rc > 0) {
            reloaded++;
            log_info("list %s reloaded from %s: %zu entries", l->name, l->file,
                     list_data_count(l->data));
        } else if (rc < 0) {
            log_error("list %s: keeping the old contents: %s", l->name, err);
        }
    }
    return reloaded;
}
